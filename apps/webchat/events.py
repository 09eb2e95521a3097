"""Typed WebSocket payloads of the admin web chat, and the Channels group they travel in.

Browser -> server: ``ClientEvent``. Server -> browser: ``ServerEvent``. The web responder
(apps/runtime/responders/web.py) publishes turn events to ``conversation_group(id)`` wrapped in a
channel-layer message ``{"type": "webchat.event", "event": <ServerEvent>}``; every consumer joined
to that group forwards ``event`` as JSON to its browser.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

# Largest message a user may send from the web chat (characters, after stripping).
MAX_MESSAGE_CHARS = 8000
# Channel-layer message type; maps to WebChatConsumer.webchat_event.
LAYER_EVENT_TYPE = "webchat.event"


def conversation_group(conversation_id: int) -> str:
    return f"webchat.conversation.{conversation_id}"


# --- browser -> server ----------------------------------------------------------------------------
class SendMessage(TypedDict):
    type: Literal["message"]
    text: str


class StopTurn(TypedDict):
    type: Literal["stop"]


class NewSession(TypedDict):
    type: Literal["reset"]


ClientEvent = SendMessage | StopTurn | NewSession


# --- server -> browser ----------------------------------------------------------------------------
class AgentInfo(TypedDict):
    id: int
    name: str
    slug: str
    model: str
    tenant: str
    demo: bool


class HistoryItem(TypedDict):
    id: int
    role: str  # user | assistant | tool | system (a command's reply)
    status: str
    text: str
    tool_name: NotRequired[str]
    error_code: NotRequired[str]
    error_message: NotRequired[str]  # the product's message for error_code (assistant rows)


class Ready(TypedDict):
    type: Literal["ready"]
    conversation_id: int
    session: int
    agent: AgentInfo
    history: list[HistoryItem]
    busy: bool


class Session(TypedDict):
    type: Literal["session"]
    conversation_id: int
    session: int


class UserMessage(TypedDict):
    type: Literal["user.message"]
    message_id: int
    text: str


class TurnStart(TypedDict):
    type: Literal["turn.start"]
    turn_id: int


class TextDelta(TypedDict):
    type: Literal["text.delta"]
    turn_id: int
    delta: str


class TextReplace(TypedDict):
    """The answer so far no longer extends what was sent (rare): the browser replaces it."""

    type: Literal["text.replace"]
    turn_id: int
    text: str


class ToolStart(TypedDict):
    type: Literal["tool.start"]
    turn_id: int
    name: str
    arguments: dict[str, Any]


class ToolEnd(TypedDict):
    type: Literal["tool.end"]
    turn_id: int
    name: str
    ok: bool
    summary: str


class Final(TypedDict):
    type: Literal["final"]
    turn_id: int
    text: str
    message_id: int | None


class Error(TypedDict):
    """A turn failed (``code`` from DESIGN §6) or a request was refused (``code`` BAD_REQUEST)."""

    type: Literal["error"]
    turn_id: int | None
    code: str
    message: str


class Notice(TypedDict):
    """A command's reply or a system notice (/help, /reset typed in the chat) instead of an answer."""

    type: Literal["notice"]
    turn_id: int | None
    text: str


class Cancelled(TypedDict):
    type: Literal["cancelled"]
    turn_id: int | None


ServerEvent = (
    Ready
    | Session
    | UserMessage
    | TurnStart
    | TextDelta
    | TextReplace
    | ToolStart
    | ToolEnd
    | Final
    | Error
    | Notice
    | Cancelled
)


def layer_message(event: ServerEvent) -> dict[str, Any]:
    """Wrap an event for ``channel_layer.group_send``."""
    return {"type": LAYER_EVENT_TYPE, "event": event}
