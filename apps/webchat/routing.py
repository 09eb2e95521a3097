from django.urls import path

from .consumers import WebChatConsumer

websocket_urlpatterns = [
    path("ws/webchat/<int:agent_id>/", WebChatConsumer.as_asgi()),
]
