"""Responder interface: how a running turn talks back to wherever the conversation lives.

The turn pipeline (apps.runtime.pipeline) never knows whether it answers in Feishu, a web chat or
the REST API. It calls one Responder per turn, chosen by ``conversation.origin`` from a registry,
with these events, always in this order:

    on_start()                                   once, before the LLM is asked
    on_text_delta(text_so_far)                   0..n times; the FULL answer so far, not a delta
    on_tool_start(name, arguments)               0..n times, each followed by
    on_tool_end(name, ok, summary)               ... (text deltas may come before and after tools)
    then exactly one of:
    on_final(text)                               the complete answer (already saved)
    on_notice(text)                              a short system reply instead of an answer
                                                 (/help, /reset, ...): no on_start before it
    on_error(code, user_message)                 DESIGN §6 code and the message to show, never a traceback
    on_cancelled()                               the user (/stop) or the API cancelled the turn
    finally close()                              always called last, even after an exception

Rules for implementations:
- Methods are called from the worker thread that runs the turn (sync code; a Celery "threads" pool
  or the in-process pool). Do not block for long: the LLM stream waits on you. Throttle expensive
  output yourself (the Feishu responder updates its card at most every 300 ms).
- ``on_text_delta`` receives the whole text so far so that a responder may drop intermediate
  updates freely and still show the right text. It normally grows, but after a retried or fallback
  LLM call it can start over shorter: render it, do not append to what was shown.
- A turn that fails before it starts (no agent for the chat) calls only on_error and close.
- A responder must not raise for delivery problems it can recover from; if it raises anyway, the
  pipeline logs it and carries on (the transcript is the source of truth).
- ``on_final`` gets the text that was stored as the assistant Message. ``ctx.assistant_message_id``
  is set before ``on_start`` (the row exists from the start of the turn), so feedback buttons and
  web clients can refer to it.
- Responders are not reused across turns.

Registering a responder for an origin (e.g. in ``apps/runtime/responders/web.py``)::

    from apps.runtime.responders.base import Responder, register_responder

    @register_responder("web")
    class WebResponder(Responder):
        def on_text_delta(self, text_so_far: str) -> None:
            ...  # publish to Channels group f"webchat.conversation.{self.ctx.conversation.pk}"

and add one import line to ``apps/runtime/responders/__init__.py`` (the ``_load_builtin`` list) so
the module is imported. Unknown origins get the ``NullResponder`` (transcript only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.transcripts.models import Conversation, Message, Turn


@dataclass
class ResponderContext:
    """What a responder may need to deliver one turn's answer."""

    conversation: Conversation
    # None for on_notice replies (commands are answered without a turn).
    turn: Turn | None
    # The user Messages this turn answers (oldest first); the last one is what Feishu replies to.
    user_messages: list[Message] = field(default_factory=list)
    trace_id: str = ""
    # The assistant Message row this turn fills (set before on_start; None for on_notice replies).
    assistant_message_id: int | None = None
    # Anything an entry point wants to pass through (e.g. the web chat's request id).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reply_to(self) -> Message | None:
        return self.user_messages[-1] if self.user_messages else None


class Responder:
    """Base class with no-op events; subclass and override what your channel shows."""

    origin: str = ""

    def __init__(self, ctx: ResponderContext) -> None:
        self.ctx = ctx

    def on_start(self) -> None:
        """The turn starts (e.g. put a 'working on it' reaction on the user's message)."""

    def on_text_delta(self, text_so_far: str) -> None:
        """More answer text arrived; ``text_so_far`` is the whole answer so far."""

    def on_tool_start(self, name: str, arguments: dict[str, Any]) -> None:
        """A tool starts running with these (parsed) arguments."""

    def on_tool_end(self, name: str, ok: bool, summary: str) -> None:
        """A tool finished; ``summary`` is a short, user-safe description of the result or error."""

    def on_final(self, text: str) -> None:
        """The answer is complete; ``text`` is the full answer."""

    def on_error(self, code: str, user_message: str) -> None:
        """The turn failed; show ``user_message`` (the product's message for ``code``)."""

    def on_cancelled(self) -> None:
        """The turn was cancelled (/stop or the API); say so."""

    def on_notice(self, text: str) -> None:
        """A command's reply (/help, /reset, ...) or a system notice; by default shown like an answer."""
        self.on_final(text)

    def close(self) -> None:
        """Always called last: release resources (remove reactions, close streams)."""


class NullResponder(Responder):
    """Delivers nothing: the transcript is the only output (schedules without a target, tests)."""


class RecordingResponder(Responder):
    """Keeps every event in ``events`` (tests and debugging)."""

    def __init__(self, ctx: ResponderContext) -> None:
        super().__init__(ctx)
        self.events: list[tuple[str, tuple]] = []

    def _rec(self, name: str, *args: Any) -> None:
        self.events.append((name, args))

    def on_start(self) -> None:
        self._rec("start")

    def on_text_delta(self, text_so_far: str) -> None:
        self._rec("text", text_so_far)

    def on_tool_start(self, name: str, arguments: dict[str, Any]) -> None:
        self._rec("tool_start", name, arguments)

    def on_tool_end(self, name: str, ok: bool, summary: str) -> None:
        self._rec("tool_end", name, ok, summary)

    def on_final(self, text: str) -> None:
        self._rec("final", text)

    def on_error(self, code: str, user_message: str) -> None:
        self._rec("error", code, user_message)

    def on_cancelled(self) -> None:
        self._rec("cancelled")

    def on_notice(self, text: str) -> None:
        self._rec("notice", text)

    def close(self) -> None:
        self._rec("close")


ResponderFactory = Callable[[ResponderContext], Responder]

# origin ("feishu", "web", "api", "schedule") -> responder class or factory.
RESPONDERS: dict[str, ResponderFactory] = {}


def register_responder(origin: str) -> Callable[[type[Responder]], type[Responder]]:
    """Class decorator: use this responder for conversations of ``origin``."""

    def deco(cls: type[Responder]) -> type[Responder]:
        cls.origin = origin
        RESPONDERS[origin] = cls
        return cls

    return deco


def responder_for(ctx: ResponderContext) -> Responder:
    """The responder for this conversation's origin (NullResponder if none is registered)."""
    from apps.runtime.responders import load_responders

    load_responders()
    factory = RESPONDERS.get(ctx.conversation.origin, NullResponder)
    return factory(ctx)
