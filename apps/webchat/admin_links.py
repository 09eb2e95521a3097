"""Links into the web chat for admin pages (the agents admin uses ``webchat_link`` in list_display)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html


@admin.display(description="Web chat")
def webchat_link(agent) -> str:
    """A "Chat" link for one agent; the chat page itself checks the user's access again."""
    return format_html('<a href="{}">Chat</a>', reverse("webchat:chat", args=[agent.pk]))
