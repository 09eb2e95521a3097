"""Web chat responder: publishes a turn's events to the conversation's Channels group.

Runs in the worker thread of the turn (sync); events go out in order through
apps.webchat.publisher (one event loop per process, not a new loop per token). Text is sent as
deltas (what was added since the last publish); updates closer together than MIN_INTERVAL are
coalesced (on_text_delta gets the whole text so far, so nothing is lost), and the final event
carries the complete answer. Delivery problems are logged, never raised: the transcript is the
source of truth and the page reloads it on reconnect.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from apps.runtime.responders.base import Responder, register_responder
from apps.transcripts.models import Origin
from apps.webchat.events import (
    Cancelled,
    Error,
    Final,
    Notice,
    ServerEvent,
    TextDelta,
    TextReplace,
    ToolEnd,
    ToolStart,
    TurnStart,
    conversation_group,
    layer_message,
)
from apps.webchat.publisher import publisher

logger = structlog.get_logger(__name__)

# Seconds between two text publishes; ~30 updates/s still reads as token by token.
MIN_INTERVAL = 0.03


@register_responder(Origin.WEB)
class WebResponder(Responder):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.group = conversation_group(ctx.conversation.pk)
        self.turn_id: int | None = getattr(ctx.turn, "pk", None)
        self._sent = ""
        self._latest = ""
        self._last_publish = 0.0

    @property
    def _turn(self) -> int:
        """The id a turn's own events carry (only a command's notice comes without a turn)."""
        assert self.turn_id is not None
        return self.turn_id

    def _publish(self, event: ServerEvent, *, last: bool = False) -> None:
        # The last event waits until everything before it went out, so nothing is lost if the
        # worker stops right after the turn.
        try:
            publisher.publish(self.group, layer_message(event), flush=last)
        except Exception as exc:
            logger.warning("webchat.publish_failed", group=self.group, event=event["type"], error=repr(exc))

    def _flush_text(self) -> None:
        text = self._latest
        if text == self._sent:
            return
        if text.startswith(self._sent):
            self._publish(TextDelta(type="text.delta", turn_id=self._turn, delta=text[len(self._sent) :]))
        else:
            self._publish(TextReplace(type="text.replace", turn_id=self._turn, text=text))
        self._sent = text
        self._last_publish = time.monotonic()

    def on_start(self) -> None:
        self._publish(TurnStart(type="turn.start", turn_id=self._turn))

    def on_text_delta(self, text_so_far: str) -> None:
        self._latest = text_so_far
        if time.monotonic() - self._last_publish >= MIN_INTERVAL:
            self._flush_text()

    def on_tool_start(self, name: str, arguments: dict[str, Any]) -> None:
        self._flush_text()
        self._publish(ToolStart(type="tool.start", turn_id=self._turn, name=name, arguments=arguments))

    def on_tool_end(self, name: str, ok: bool, summary: str) -> None:
        self._publish(ToolEnd(type="tool.end", turn_id=self._turn, name=name, ok=ok, summary=summary))

    def on_final(self, text: str) -> None:
        # Send the tail that the throttle held back, so the deltas alone add up to the answer.
        self._latest = text
        self._flush_text()
        self._publish(Final(type="final", turn_id=self._turn, text=text, message_id=self.ctx.assistant_message_id))

    def on_notice(self, text: str) -> None:
        self._publish(Notice(type="notice", turn_id=self.turn_id, text=text), last=True)

    def on_error(self, code: str, user_message: str) -> None:
        self._flush_text()
        self._publish(Error(type="error", turn_id=self.turn_id, code=code, message=user_message), last=True)

    def on_cancelled(self) -> None:
        self._flush_text()
        self._publish(Cancelled(type="cancelled", turn_id=self.turn_id), last=True)
