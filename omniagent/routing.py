"""WebSocket routes; apps append theirs here."""

from apps.webchat.routing import websocket_urlpatterns as webchat_websocket_urlpatterns

websocket_urlpatterns: list = [*webchat_websocket_urlpatterns]
