"""WebSocket consumer of the admin web chat: one socket = one staff user chatting with one agent.

connect() authenticates (session cookie, AuthMiddlewareStack) and resolves the agent inside the
user's tenants; otherwise the socket is accepted only to be closed with 4401 (not logged in) or
4403 (no such agent in your tenants: foreign and missing ids look the same), so the page can tell
the user why. The turn's events come from the web responder through the conversation's group.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.agents.models import Agent
from apps.transcripts.models import Conversation

from . import services
from .events import (
    MAX_MESSAGE_CHARS,
    Cancelled,
    Error,
    Ready,
    ServerEvent,
    Session,
    conversation_group,
    layer_message,
)
from .publisher import publisher
from .selectors import (
    agent_info,
    session_number,
    webchat_agent_get,
    webchat_conversation_busy,
    webchat_history,
)

logger = structlog.get_logger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
STOP_RETRIES, STOP_RETRY_DELAY = 10, 0.1


def _bad_request(message: str) -> Error:
    return Error(type="error", turn_id=None, code="BAD_REQUEST", message=message)


class WebChatConsumer(AsyncJsonWebsocketConsumer):
    user: Any
    agent: Agent
    conversation: Conversation
    group: str = ""

    # --- lifecycle --------------------------------------------------------------------------------
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        opened = await self._open(user, self.scope["url_route"]["kwargs"]["agent_id"])
        if opened is None:
            await self._refuse(CLOSE_FORBIDDEN)
            return
        self.user = user
        self.agent, self.conversation, ready = opened
        # Turns run in this process (embedded default) publish from this loop: see publisher.py.
        publisher.attach(asyncio.get_running_loop())
        await self._join(self.conversation.pk)
        await self.accept()
        await self.send_json(ready)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            publisher.detach(asyncio.get_running_loop())

    async def _refuse(self, code: int) -> None:
        # Accept first so the browser receives the close code (a close before accept is an HTTP 403
        # without a code), then close; nothing is sent in between.
        await self.accept()
        await self.close(code=code)

    async def _join(self, conversation_id: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        self.group = conversation_group(conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)

    # --- browser -> server ------------------------------------------------------------------------
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_json(_bad_request("expected a JSON object with a type"))
            return
        # Membership may have been revoked since connect(): check the scope again on every request.
        if not await self._still_allowed():
            await self.close(code=CLOSE_FORBIDDEN)
            return
        kind = content["type"]
        if kind == "message":
            await self._on_message(content.get("text"))
        elif kind == "stop":
            await self._on_stop()
        elif kind == "reset":
            await self._on_reset()
        else:
            await self.send_json(_bad_request(f"unknown type {kind!r}"))

    async def _on_message(self, text: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            await self.send_json(_bad_request("text must be a non-empty string"))
            return
        text = text.strip()
        if len(text) > MAX_MESSAGE_CHARS:
            await self.send_json(_bad_request(f"message longer than {MAX_MESSAGE_CHARS} characters"))
            return
        # The service echoes the message to the session's group (all tabs) before the turn starts.
        await database_sync_to_async(services.webchat_message_send)(
            user=self.user, agent=self.agent, conversation=self.conversation, text=text
        )

    async def _on_stop(self) -> None:
        result = await database_sync_to_async(services.webchat_turn_stop)(conversation=self.conversation)
        for _ in range(STOP_RETRIES):
            if not result.turn_starting:
                break
            await asyncio.sleep(STOP_RETRY_DELAY)
            result = await database_sync_to_async(services.webchat_turn_stop)(conversation=self.conversation)
        if result.dropped_message_ids and not result.turn_ids:
            # Nothing was running yet, so no responder will say "cancelled": say it here.
            await self._publish(Cancelled(type="cancelled", turn_id=None))
        elif not result.stopped_anything:
            await self.send_json(Cancelled(type="cancelled", turn_id=None))

    async def _on_reset(self) -> None:
        conversation = await database_sync_to_async(services.webchat_session_new)(user=self.user, agent=self.agent)
        self.conversation = conversation
        await self._join(conversation.pk)
        await self.send_json(
            Session(type="session", conversation_id=conversation.pk, session=session_number(conversation))
        )

    # --- server -> browser ------------------------------------------------------------------------
    async def webchat_event(self, message: dict[str, Any]) -> None:
        """A turn event published to this conversation's group (see events.layer_message)."""
        await self.send_json(message["event"])

    async def _publish(self, event: ServerEvent) -> None:
        await self.channel_layer.group_send(self.group, layer_message(event))

    # --- database ---------------------------------------------------------------------------------
    @database_sync_to_async
    def _open(self, user: Any, agent_id: int) -> tuple[Agent, Conversation, Ready] | None:
        try:
            agent = webchat_agent_get(user=user, agent_id=agent_id)
        except Agent.DoesNotExist:
            logger.info("webchat.refused", user_id=user.pk, agent_id=agent_id)
            return None
        conversation = services.webchat_conversation_open(user=user, agent=agent)
        ready = Ready(
            type="ready",
            conversation_id=conversation.pk,
            session=session_number(conversation),
            agent=agent_info(agent),
            history=webchat_history(conversation=conversation),
            busy=webchat_conversation_busy(conversation=conversation),
        )
        return agent, conversation, ready

    @database_sync_to_async
    def _still_allowed(self) -> bool:
        try:
            webchat_agent_get(user=self.user, agent_id=self.agent.pk)
        except Agent.DoesNotExist:
            return False
        return True
