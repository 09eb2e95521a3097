"""Feishu responder: a reaction while working, the answer streamed into a CardKit card.

- on_start: an ``OnIt`` reaction on the user's message, sent beside the turn (``gate.aside``) so the
  LLM request does not wait a Feishu round trip for it; removed in close(). An answer delivered
  before the reaction call even started (a burst, a very fast model) gets none: nothing to show.
- First text (after OPEN_DELAY_SECONDS; a tool call at once): a CardKit card (JSON 2.0,
  streaming_mode, one markdown element, 👍/👎 buttons carrying the assistant Message id) is created
  and sent as a reply whose uuid is derived from the inbound message id, so a retried turn cannot
  post a second card. An answer that is complete before then is one reply carrying the finished card.
- Then the element's content is replaced with the whole text so far at most every 300 ms, with a
  strictly increasing per-card sequence; while a tool runs its name is shown under the text.
- The end is one full-card update (CardKit ``PUT /cards/:card_id``) carrying the final text with
  ``streaming_mode: false``, instead of a last element update plus a settings call. An answer longer
  than one card is split at a paragraph/line boundary (a code block cut in two is closed and
  reopened) and continued in further cards. A streamed answer costs five calls (reaction on, card
  create, reply with the card, final update, reaction off); one complete within OPEN_DELAY_SECONDS
  of its first text three (reaction on, reply with the finished card, reaction off).
- If CardKit fails before a card was shown, the full answer goes out as plain (post/md) messages
  instead; once a card shows part of the answer only the part it does not show is sent, so the
  answer never appears twice. Errors show the product's message, never a traceback.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import structlog

from apps.feishu.client import FeishuClient, FeishuError
from apps.feishu.outbound import outbound_send, outbound_uuid
from apps.runtime.responders.base import Responder, ResponderContext, register_responder
from apps.transcripts.models import Origin
from omniagent import gate

logger = structlog.get_logger(__name__)

THROTTLE_SECONDS = 0.3  # CardKit allows ~10 operations/s per card; 300 ms reads as live typing
# The final update only needs CardKit's per-card spacing, not the typing rhythm: waiting the full
# 300 ms after the card opened added that much to every short answer's completion.
CARD_OP_GAP_SECONDS = 0.1
# The first card opens this long after the first text (a tool starting opens it at once). An answer
# complete by then goes out as one reply carrying the finished card: 3 calls instead of 5 (no CardKit
# entity, no final update), which also stretches Feishu's per-app quota (~40 calls/s) further.
OPEN_DELAY_SECONDS = 0.25
# Intermediate card updates this process pays for per second, across all its live cards. Each costs
# ~1 ms of worker CPU (an HTTP call); with a few live cards every card still gets one per 300 ms,
# with hundreds (a burst of conversations) each card updates less often instead of the updates
# eating the CPU that answers. The first text, tool status and the final text are never held back.
UPDATE_BUDGET_PER_SECOND = 50.0
PART_CHARS = 6000  # a card holds 30 KB of JSON; 6000 CJK characters are ~18 KB
PLAIN_PART_CHARS = 8000
ELEMENT_ID = "answer"
REACTION = "OnIt"
STOPPED_NOTE = "⏹ 已停止回答"


def split_point(text: str, limit: int) -> tuple[int, str, str]:
    """Where to cut ``text`` (longer than ``limit``): (index, closing for part 1, opening for part 2).

    Prefers a paragraph break, then a line break, then a sentence end in the last half of the
    window; a cut inside a fenced code block closes the fence and reopens it in the next part.
    """
    window = text[:limit]
    cut = -1
    for sep in ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? "):
        at = window.rfind(sep)
        if at >= limit // 2:
            cut = at + len(sep)
            break
    if cut <= 0:
        cut = limit
    head = text[:cut]
    fences = [line for line in head.split("\n") if line.lstrip().startswith("```")]
    if len(fences) % 2 == 1:
        opening = fences[-1].strip()
        return cut, "\n```", opening + "\n"
    return cut, "", ""


def split_text(text: str, limit: int) -> list[str]:
    parts, carry = [], ""
    rest = text
    while len(carry + rest) > limit:
        segment = carry + rest
        cut, closing, reopen = split_point(segment, limit)
        cut = max(cut, len(carry) + 1)
        parts.append(segment[:cut].rstrip("\n") + closing)
        rest = segment[cut:]
        carry = reopen
    parts.append(carry + rest)
    return [p for p in parts if p.strip()]


def card_json(*, content: str, message_id: int | None, streaming: bool, summary: str = "") -> dict[str, Any]:
    elements: list[dict[str, Any]] = [{"tag": "markdown", "element_id": ELEMENT_ID, "content": content}]
    if message_id is not None:
        elements.append(
            {
                "tag": "column_set",
                "element_id": "feedback",
                "flex_mode": "none",
                "columns": [
                    {
                        "tag": "column",
                        "width": "auto",
                        "elements": [_feedback_button("up", "👍", message_id)],
                    },
                    {
                        "tag": "column",
                        "width": "auto",
                        "elements": [_feedback_button("down", "👎", message_id)],
                    },
                ],
            }
        )
    config: dict[str, Any] = {"update_multi": True, "streaming_mode": streaming}
    if summary:
        config["summary"] = {"content": summary}
    if streaming:
        config["summary"] = {"content": "正在思考…"}
        config["streaming_config"] = {
            "print_frequency_ms": {"default": 30},
            "print_step": {"default": 2},
            "print_strategy": "fast",
        }
    return {"schema": "2.0", "config": config, "body": {"elements": elements}}


def _feedback_button(kind: str, label: str, message_id: int) -> dict[str, Any]:
    return {
        "tag": "button",
        "element_id": f"fb_{kind}",
        "type": "default",
        "size": "small",
        "text": {"tag": "plain_text", "content": label},
        "behaviors": [{"type": "callback", "value": {"feedback": kind, "message_id": message_id}}],
    }


class _LiveCards:
    """How many streaming cards this process has open (sets the adaptive update interval)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count = max(0, self.count + n)


live_cards = _LiveCards()


def update_interval() -> float:
    """Seconds between intermediate updates of one card: 300 ms, longer when many cards stream."""
    return max(THROTTLE_SECONDS, live_cards.count / UPDATE_BUDGET_PER_SECOND)


@dataclass
class _Card:
    card_id: str
    sequence: int = 0
    shown: str = ""  # the element's content as Feishu has it
    text: str = ""  # the part of the answer that content holds (without the tool line)
    closed: bool = False
    broken: bool = False


@register_responder(Origin.FEISHU)
class FeishuResponder(Responder):
    def __init__(self, ctx: ResponderContext) -> None:
        super().__init__(ctx)
        conversation = ctx.conversation
        self.bot = conversation.bot
        self.reply_to_id = ctx.reply_to.external_id if ctx.reply_to is not None else ""
        self.reaction: Future | None = None  # the reaction call, running beside the turn
        self.card: _Card | None = None
        self.cards_shown = 0  # cards delivered to the chat (each holds one finished or live part)
        self.cardkit_failed = False
        self.latest = ""  # the whole answer so far
        self.offset = 0  # characters of ``latest`` held by finished cards
        self.carry = ""  # a reopened code fence that starts the current card
        self.status_line = ""  # tool running / tool failed, shown under the text
        self.last_push = 0.0
        self.first_text_at: float | None = None
        self.finished = False
        self._client: FeishuClient | None = None

    # -- plumbing --------------------------------------------------------------------------
    @property
    def client(self) -> FeishuClient:
        if self._client is None:
            self._client = FeishuClient.for_bot(self.bot)
        return self._client

    @property
    def usable(self) -> bool:
        return self.bot is not None and bool(self.reply_to_id or self.ctx.conversation.chat_id)

    def _uuid(self, part: str) -> str:
        anchor = self.reply_to_id or f"turn:{getattr(self.ctx.turn, 'pk', '')}:{self.ctx.conversation.pk}"
        return outbound_uuid(anchor, part)

    def _send(self, *, part: str, msg_type: str, content: dict[str, Any]) -> bool:
        conversation = self.ctx.conversation
        if self.reply_to_id:
            target = {"operation": "reply", "receive_id": self.reply_to_id}
        else:
            target = {"operation": "create", "receive_id": conversation.chat_id, "receive_id_type": "chat_id"}
        outbound = outbound_send(
            bot=self.bot,
            uuid=self._uuid(part),
            msg_type=msg_type,
            content=content,
            reply_in_thread=bool(conversation.thread_id),
            conversation=conversation,
            trace_id=self.ctx.trace_id,
            **target,
        )
        return outbound.status == "sent"

    # -- card operations -------------------------------------------------------------------
    def _segment(self) -> str:
        return self.carry + self.latest[self.offset :]

    def _view(self, segment: str) -> str:
        if self.status_line:
            return f"{segment}\n\n{self.status_line}" if segment.strip() else self.status_line
        return segment

    def _open(self, content: str, *, text: str | None = None, streaming: bool = True) -> bool:
        try:
            card_id = self.client.card_create(
                card=card_json(
                    content=content,
                    message_id=self.ctx.assistant_message_id,
                    streaming=streaming,
                    summary="" if streaming else content[:60],
                )
            )
        except Exception as exc:
            logger.warning("feishu.card_create_failed", error=str(exc)[:300])
            self.cardkit_failed = True
            return False
        part = f"card{self.cards_shown + 1}"
        if not self._send(part=part, msg_type="interactive", content={"type": "card", "data": {"card_id": card_id}}):
            self.cardkit_failed = True
            return False
        self.cards_shown += 1
        self.card = _Card(card_id=card_id, shown=content, text=content if text is None else text, closed=not streaming)
        if streaming:
            live_cards.add(1)
        self.last_push = time.monotonic()
        return True

    def _reply_card(self, content: str) -> bool:
        """A finished part as one reply carrying the whole card JSON (no CardKit entity to create or close)."""
        card = card_json(
            content=content, message_id=self.ctx.assistant_message_id, streaming=False, summary=content[:60]
        )
        if not self._send(part=f"card{self.cards_shown + 1}", msg_type="interactive", content=card):
            self.cardkit_failed = True
            return False
        self.cards_shown += 1
        return True

    def _update(self, content: str, *, text: str | None = None) -> bool:
        card = self.card
        if card is None or card.broken or card.closed or content == card.shown:
            return card is not None and not card.broken
        card.sequence += 1
        try:
            self.client.card_element_content(
                card_id=card.card_id, element_id=ELEMENT_ID, content=content, sequence=card.sequence
            )
        except FeishuError as exc:
            logger.warning("feishu.card_update_failed", code=exc.code, card_id=card.card_id)
            if exc.code == 300317:  # sequence conflict: skip ahead, try once more
                card.sequence += 10
                try:
                    self.client.card_element_content(
                        card_id=card.card_id, element_id=ELEMENT_ID, content=content, sequence=card.sequence
                    )
                except FeishuError:
                    card.broken = True
                    return False
            else:
                card.broken = True
                return False
        card.shown = content
        card.text = content if text is None else text
        self.last_push = time.monotonic()
        return True

    def _finalize(self, content: str) -> bool:
        """Show ``content`` and end streaming in one call: a full-card update with streaming_mode off.

        (Element update + settings were two calls for the same result.) False when the card cannot
        take it (broken earlier, or this update failed): the caller closes it and sends the rest as text.
        """
        card = self.card
        if card is None or card.broken or card.closed:
            return False
        new = card_json(
            content=content, message_id=self.ctx.assistant_message_id, streaming=False, summary=content[:60]
        )
        done = False
        for skip in (1, 10):  # a sequence conflict: skip ahead, try once more
            card.sequence += skip
            try:
                self.client.card_update(card_id=card.card_id, card=new, sequence=card.sequence)
                done = True
                break
            except FeishuError as exc:
                logger.warning("feishu.card_finalize_failed", code=exc.code, card_id=card.card_id)
                if exc.code != 300317:
                    break
        if not done:
            card.broken = True
            return False
        card.closed = True
        live_cards.add(-1)
        card.shown = card.text = content
        self.last_push = time.monotonic()
        return True

    def _close(self) -> None:
        card = self.card
        if card is None or card.closed:
            return
        card.closed = True
        live_cards.add(-1)
        card.sequence += 1
        try:
            self.client.card_settings(
                card_id=card.card_id,
                settings={"config": {"streaming_mode": False, "summary": {"content": card.shown[:60]}}},
                sequence=card.sequence,
            )
        except FeishuError as exc:
            logger.warning("feishu.card_close_failed", code=exc.code, card_id=card.card_id)

    def _roll_over(self) -> None:
        """Finish cards whose part is full and move on, so no card grows past PART_CHARS."""
        while len(self._segment()) > PART_CHARS and not self.cardkit_failed:
            segment = self._segment()
            cut, closing, reopen = split_point(segment, PART_CHARS)
            cut = max(cut, len(self.carry) + 1)
            part = segment[:cut].rstrip("\n") + closing
            if self.card is None:
                if not self._reply_card(part):
                    return
            elif not self._finalize(part):
                return
            self.card = None
            self.offset += cut - len(self.carry)
            self.carry = reopen

    def _push(self, *, force: bool = False) -> None:
        if self.cardkit_failed or not self.usable:
            return
        self._roll_over()
        if self.cardkit_failed:
            return
        segment = self._segment()
        view = self._view(segment)
        if not view.strip():
            return
        if self.card is None:
            if self.cards_shown == 0 and not force:
                now = time.monotonic()
                if self.first_text_at is None:
                    self.first_text_at = now
                if now - self.first_text_at < OPEN_DELAY_SECONDS:
                    return  # maybe the whole answer is here before the card would open
            self._open(view, text=segment if view.startswith(segment) else "")
            return
        since = time.monotonic() - self.last_push
        if not force and since < update_interval():
            return
        if since < THROTTLE_SECONDS:  # forced (a tool starts): only Feishu's per-card rate applies
            time.sleep(THROTTLE_SECONDS - since)
        self._update(view, text=segment if view.startswith(segment) else "")

    def _finish(self, text: str, note: str = "") -> None:
        """Show ``text`` (the whole answer) plus ``note`` and close the card; fall back to plain messages."""
        if self.finished or not self.usable:
            return
        self.finished = True
        self.latest = text
        self.status_line = ""
        if not self.cardkit_failed:
            self._roll_over()
        if not self.cardkit_failed:
            final = self._segment() + (f"\n\n{note}" if note and self._segment().strip() else note)
            if self.card is None:
                if final.strip():
                    self._reply_card(final)
            else:
                wait = CARD_OP_GAP_SECONDS - (time.monotonic() - self.last_push)
                if wait > 0:
                    time.sleep(wait)
                shown = self.card.text
                if not self._finalize(final):
                    # The live card is stuck on an older text: send only what it does not show.
                    self._close()
                    rest = final[len(shown) :] if shown.strip() and final.startswith(shown) else final
                    self._plain(("…" + rest) if rest is not final else rest, first_part=f"rest{self.cards_shown}")
                    return
            if not self.cardkit_failed:
                return
        # CardKit failed: cards already shown hold finished parts; send the rest once, as plain text.
        rest = self._segment() + (f"\n\n{note}" if note and self._segment().strip() else note)
        self._plain(rest, first_part="plain")

    def _plain(self, text: str, *, first_part: str) -> None:
        for index, part in enumerate(split_text(text, PLAIN_PART_CHARS)):
            content = {"zh_cn": {"title": "", "content": [[{"tag": "md", "text": part}]]}}
            self._send(part=f"{first_part}{index}", msg_type="post", content=content)

    def _text_message(self, text: str, part: str) -> None:
        self._send(part=part, msg_type="text", content={"text": text})

    # -- events ----------------------------------------------------------------------------
    def on_start(self) -> None:
        if self.usable and self.reply_to_id:
            client = self.client  # built here: the side thread only makes the call
            self.reaction = gate.aside(lambda: _reaction_add(client, self.reply_to_id))

    def on_text_delta(self, text_so_far: str) -> None:
        self.latest = text_so_far
        if self.status_line.startswith("🔧"):
            self.status_line = ""
        self._push()

    def on_tool_start(self, name: str, arguments: dict[str, Any]) -> None:
        self.status_line = f"🔧 正在调用工具 `{name}` …"
        self._push(force=True)

    def on_tool_end(self, name: str, ok: bool, summary: str) -> None:
        self.status_line = "" if ok else f"⚠️ {summary}"
        if not ok:
            self._push(force=True)

    def on_final(self, text: str) -> None:
        self._finish(text)

    def _nothing_shown(self) -> bool:
        """No card was shown, and none is pending (text held back by OPEN_DELAY_SECONDS counts as shown)."""
        return self.card is None and self.cards_shown == 0 and (self.cardkit_failed or not self.latest.strip())

    def on_error(self, code: str, user_message: str) -> None:
        if self._nothing_shown():
            self.finished = True
            if self.usable:
                self._text_message(user_message, "error")
            return
        self._finish(self.latest, f"⚠️ {user_message}")

    def on_cancelled(self) -> None:
        if self._nothing_shown():
            self.finished = True
            if self.usable:
                self._text_message(STOPPED_NOTE, "cancelled")
            return
        self._finish(self.latest, STOPPED_NOTE)

    def on_notice(self, text: str) -> None:
        if self.usable:
            self.finished = True
            self._plain(text, first_part="notice")  # post/md: command help uses markdown

    def close(self) -> None:
        reaction_id = self._reaction_settle()
        held_back = self.card is None and self.cards_shown == 0 and not self._nothing_shown()
        if held_back and not self.finished:  # text waiting for its card, and no final event came
            self._finish(self.latest)
        if self.card is not None and not self.card.closed:
            self._close()
        if reaction_id:
            try:
                self.client.reaction_remove(message_id=self.reply_to_id, reaction_id=reaction_id)
            except FeishuError as exc:
                logger.info("feishu.reaction_remove_failed", code=exc.code)

    def _reaction_settle(self) -> str:
        """The reaction's id once its call is done; "" if there is none to remove (it had not started:
        it is dropped, or it failed). Waits without a slot: the side call may need one to finish."""
        reaction, self.reaction = self.reaction, None
        if reaction is None or reaction.cancel():
            return ""
        with gate.remote_wait():
            return reaction.result()


def _reaction_add(client: FeishuClient, message_id: str) -> str:
    """The processing reaction's id ("" if Feishu refused it: the answer goes on without it)."""
    try:
        return client.reaction_add(message_id=message_id, emoji_type=REACTION)
    except FeishuError as exc:
        logger.info("feishu.reaction_failed", code=exc.code)
        return ""
