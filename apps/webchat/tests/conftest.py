"""Web chat test helpers: session cookies for personas and a WebSocket client on the real ASGI app."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client


def session_cookie(user) -> str:
    """Log the user in through Django's session machinery and return the cookie header value."""
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def ws(agent_id: int | str, cookie: str | None = None) -> WebsocketCommunicator:
    from omniagent.asgi import application

    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, f"/ws/webchat/{agent_id}/", headers=headers)


@pytest.fixture
def login() -> Callable[[object], str]:
    return session_cookie
