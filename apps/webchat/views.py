"""The web chat page in the admin: pick one of your tenants' agents and chat with it."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from .events import MAX_MESSAGE_CHARS
from .selectors import agent_info, webchat_agents_for_user


def _render(request: HttpRequest, *, agent=None) -> HttpResponse:
    agents = list(webchat_agents_for_user(user=request.user))
    context = {
        **admin.site.each_context(request),
        "title": f"Web chat · {agent.name or agent.slug}" if agent else "Web chat",
        "agents": agents,
        "agent": agent,
        "agent_info": agent_info(agent) if agent else None,
        "max_message_chars": MAX_MESSAGE_CHARS,
    }
    return render(request, "webchat/chat.html", context)


@staff_member_required
def webchat_index(request: HttpRequest) -> HttpResponse:
    return _render(request)


@staff_member_required
def webchat_chat(request: HttpRequest, agent_id: int) -> HttpResponse:
    # Looked up inside the user's tenants: a foreign agent is a 404 like a missing one.
    agent = get_object_or_404(webchat_agents_for_user(user=request.user), pk=agent_id)
    return _render(request, agent=agent)
