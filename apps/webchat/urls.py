"""Mounted at /admin/webchat/ (before admin.site.urls) by omniagent/urls.py."""

from django.urls import path

from . import views

app_name = "webchat"

urlpatterns = [
    path("", views.webchat_index, name="index"),
    path("<int:agent_id>/", views.webchat_chat, name="chat"),
]
