"""Ingest one verified Feishu event (webhook or long connection): persist, dedupe, enqueue, in one transaction.

Nothing inbound is lost: the caller acknowledges Feishu only after this returns (the rows are committed);
a database error propagates so the webhook answers 503 and Feishu retries.
Nothing is answered twice: (bot, event_id) and (bot, message_id) are unique in the database, so a second
delivery by any path fails its insert, rolls back and is answered 200 without doing anything else.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.utils import timezone

from apps.bindings.models import Binding
from apps.bindings.selectors import binding_pick, binding_resolve
from apps.bots.models import Bot
from apps.feishu.ingest_store import rows_write_orm, rows_write_pg
from apps.feishu.normalize import InboundMessage, message_normalize, needs_bot_open_id
from apps.runtime.commands import command_parse
from apps.runtime.dispatch import stop_enqueue, turn_enqueue
from apps.transcripts.models import Conversation, InboundEvent, Message, Origin
from omniagent.metrics import INBOUND_EVENTS

logger = structlog.get_logger(__name__)

MESSAGE_RECEIVE = "im.message.receive_v1"
BOT_ADDED = "im.chat.member.bot.added_v1"
CARD_ACTION = "card.action.trigger"

# Bot.last_event_at is informational (admin): write it at most this often per bot and process.
LAST_EVENT_WRITE_EVERY = 5.0
_last_event_written: dict[int, float] = {}

# Routing changes rarely and resolving it per message was the most expensive read on the hot path: keep
# each bot's enabled bindings per process briefly and pick among them in memory, with the same rules
# as apps.bindings.selectors.binding_resolve (a test holds the two equal). Admin edits take effect
# within this delay.
BINDING_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class _Candidate:
    pk: int
    agent_id: int
    chat_type: str
    chat_id: str
    user_open_id: str
    require_mention: bool
    priority: int


_bindings_by_bot: dict[int, tuple[float, list[_Candidate]]] = {}

FEEDBACK_THANKS = "感谢反馈"
FEEDBACK_MISSING = "未找到这条回答"


class InvalidEvent(ValueError):
    """The event is structurally unusable (missing ids, wrong types): a 4xx, never a 500."""


class RetryLater(RuntimeError):
    """A dependency needed to classify the event is unavailable: answer 5xx so Feishu retries."""


@dataclass
class IngestResult:
    """What happened to one event and what to answer Feishu with."""

    outcome: str  # accepted | duplicate | ignored | stale
    response: dict[str, Any] = field(default_factory=lambda: {"msg": "success"})
    inbound_event_id: int | None = None
    reason: str = ""


def conversation_key(*, bot_id: int, chat_type: str, chat_id: str, thread_id: str = "") -> str:
    """p2p: one conversation per (bot, chat); groups: per (bot, chat), or per thread inside a thread."""
    if chat_type != "p2p" and thread_id:
        return f"feishu:{bot_id}:{chat_id}:{thread_id}"
    return f"feishu:{bot_id}:{chat_id}"


def _header(payload: dict) -> dict:
    header = payload.get("header")
    if not isinstance(header, dict):
        raise InvalidEvent("header missing")
    if not isinstance(header.get("event_id"), str) or not header["event_id"]:
        raise InvalidEvent("header.event_id missing")
    if not isinstance(header.get("event_type"), str) or not header["event_type"]:
        raise InvalidEvent("header.event_type missing")
    event = payload.get("event")
    if event is not None and not isinstance(event, dict):
        raise InvalidEvent("event is not an object")
    return header


def _stored_payload(payload: dict) -> dict:
    # The verification token rides in every header; it is a credential, so it is not kept at rest.
    header = payload.get("header")
    if isinstance(header, dict) and "token" in header:
        payload = {**payload, "header": {k: v for k, v in header.items() if k != "token"}}
    return payload


def _age_seconds(header: dict) -> float | None:
    raw: Any = header.get("create_time")  # a string of milliseconds, when Feishu sends it
    try:
        created_ms = int(raw)
    except (TypeError, ValueError):
        return None
    return time.time() - created_ms / 1000


def _is_stale(header: dict) -> bool:
    age = _age_seconds(header)
    return age is not None and age > settings.FEISHU_EVENT_MAX_AGE


def _bot_touch(bot: Bot) -> None:
    now = time.monotonic()
    if now - _last_event_written.get(bot.pk, float("-inf")) < LAST_EVENT_WRITE_EVERY:
        return
    _last_event_written[bot.pk] = now
    try:
        Bot.objects.filter(pk=bot.pk).update(last_event_at=timezone.now())
    except Exception:  # the event is committed already; this timestamp is only informational
        logger.warning("feishu.bot_touch_failed", bot_id=bot.pk, exc_info=True)


def bot_open_id_ensure(*, bot: Bot) -> str:
    """The bot's own open_id: stored on the row, fetched once from /open-apis/bot/v3/info when empty."""
    if bot.bot_open_id:
        return bot.bot_open_id
    from apps.feishu.client import FeishuClient

    try:
        open_id = (FeishuClient.for_bot(bot).bot_info() or {}).get("open_id") or ""
    except Exception as exc:
        logger.warning("feishu.bot_info_failed", bot_id=bot.pk, error=str(exc)[:200])
        raise RetryLater("bot open_id unknown and /bot/v3/info failed") from exc
    if not open_id:
        raise RetryLater("bot open_id unknown: /bot/v3/info returned none")
    Bot.objects.filter(pk=bot.pk).update(bot_open_id=open_id)
    bot.bot_open_id = open_id
    return open_id


def _event_row(*, bot: Bot, header: dict, payload: dict, source: str, status: str, reason: str, trace_id: str):
    return InboundEvent.objects.create(
        tenant_id=bot.tenant_id,
        bot=bot,
        event_id=header["event_id"],
        event_type=header["event_type"][:100],
        source=source,
        payload=_stored_payload(payload),
        status=status,
        status_reason=reason[:300],
        trace_id=trace_id,
    )


def _event_row_once(**fields) -> InboundEvent | None:
    """Store the event unless (bot, event_id) is already there (a re-push); None for a duplicate."""
    try:
        with transaction.atomic():  # a savepoint, so a duplicate leaves the caller's transaction usable
            return _event_row(**fields)
    except IntegrityError:
        return None


def _record_duplicate_message(*, bot: Bot, header: dict, payload: dict, source: str, trace_id: str) -> bool:
    """Same message_id under a new event_id: keep the event for audit, do nothing else. False if the
    event itself was already there."""
    if InboundEvent.objects.filter(bot=bot, event_id=header["event_id"]).exists():
        return False
    row = _event_row_once(
        bot=bot, header=header, payload=payload, source=source, trace_id=trace_id,
        status=InboundEvent.Status.DUPLICATE_MESSAGE, reason="message already received",
    )  # fmt: skip
    return row is not None


def _bot_bindings(bot: Bot) -> list[_Candidate]:
    now = time.monotonic()
    hit = _bindings_by_bot.get(bot.pk)
    if hit is not None and hit[0] > now:
        return hit[1]
    rows = (
        Binding.objects.for_tenant(bot.tenant_id)
        .filter(bot=bot, is_enabled=True, agent__is_active=True)
        .values_list("id", "agent_id", "chat_type", "chat_id", "user_open_id", "require_mention", "priority")
    )
    candidates = [_Candidate(*row) for row in rows]
    if BINDING_CACHE_SECONDS > 0:
        _bindings_by_bot[bot.pk] = (now + BINDING_CACHE_SECONDS, candidates)
    return candidates


def _route(*, bot: Bot, chat_type: str, chat_id: str, user_open_id: str) -> tuple[int, bool] | None:
    """(agent_id, require_mention) of the binding for this chat, or None.

    binding_resolve's rules: a binding for this user beats one for this chat, which beats one for this
    chat type, which beats "any"; then higher priority; then the oldest.
    """
    best = binding_pick(_bot_bindings(bot), chat_type=chat_type, chat_id=chat_id, user_open_id=user_open_id)
    return (best.agent_id, best.require_mention) if best is not None else None


def _classify_message(*, bot: Bot, header: dict, msg: InboundMessage):
    """(event status, reason code, agent id to answer with) for a received message."""
    if _is_stale(header):
        return InboundEvent.Status.STALE, "stale", None
    if msg.sender_type and msg.sender_type != "user":
        return InboundEvent.Status.IGNORED, "sender_is_bot", None
    if bot.bot_open_id and msg.sender_open_id == bot.bot_open_id:
        return InboundEvent.Status.IGNORED, "sender_is_self", None
    route = _route(bot=bot, chat_type=msg.chat_type, chat_id=msg.chat_id, user_open_id=msg.sender_open_id)
    if route is None:
        return InboundEvent.Status.IGNORED, "no_binding", None
    agent_id, require_mention = route
    if msg.chat_type == "group" and require_mention and not msg.bot_mentioned:
        return InboundEvent.Status.IGNORED, "not_mentioned", None
    return InboundEvent.Status.ACCEPTED, "", agent_id


def _rows(
    *,
    bot: Bot,
    header: dict,
    payload: dict,
    source: str,
    trace_id: str,
    msg: InboundMessage,
    status: str,
    reason: str,
    agent_id: int | None,
    now,
) -> tuple[InboundEvent, Conversation, Message]:
    """The three rows one received message produces (unsaved)."""
    answer = status == InboundEvent.Status.ACCEPTED
    event = InboundEvent(
        tenant_id=bot.tenant_id, bot=bot, event_id=header["event_id"], event_type=header["event_type"][:100],
        source=source, payload=_stored_payload(payload), status=status, status_reason=reason[:300],
        trace_id=trace_id, created_at=now, updated_at=now,
    )  # fmt: skip
    conversation = Conversation(
        tenant_id=bot.tenant_id,
        origin=Origin.FEISHU,
        key=conversation_key(bot_id=bot.pk, chat_type=msg.chat_type, chat_id=msg.chat_id, thread_id=msg.thread_id),
        bot=bot,
        agent_id=agent_id if answer else None,
        chat_id=msg.chat_id,
        chat_type=msg.chat_type,
        thread_id=msg.thread_id if msg.chat_type != "p2p" else "",
        user_open_id=msg.sender_open_id if msg.chat_type == "p2p" else "",
        last_activity_at=now,
        created_at=now,
        updated_at=now,
    )
    message = Message(
        tenant_id=bot.tenant_id,
        role=Message.Role.USER,
        status=Message.Status.PENDING if answer else Message.Status.IGNORED,
        content=msg.text,
        attachments=msg.attachments,
        mentions=msg.mentions,
        sender_open_id=msg.sender_open_id,
        bot=bot,
        external_id=msg.message_id,
        trace_id=trace_id,
        error_code=reason,
        created_at=now,
        updated_at=now,
    )
    return event, conversation, message


# Set to False to force the portable path (tests exercise both).
SINGLE_STATEMENT = True


def _message_ingest(*, bot: Bot, header: dict, payload: dict, source: str, trace_id: str) -> IngestResult:
    event = payload.get("event") or {}
    if needs_bot_open_id(event) and not bot.bot_open_id:
        bot_open_id_ensure(bot=bot)
    msg = message_normalize(event=event, bot_open_id=bot.bot_open_id)
    if not msg.message_id or not msg.chat_id:
        raise InvalidEvent("event.message.message_id / chat_id missing")
    status, reason, agent_id = _classify_message(bot=bot, header=header, msg=msg)
    rows = _rows(
        bot=bot, header=header, payload=payload, source=source, trace_id=trace_id, msg=msg, status=status,
        reason=reason, agent_id=agent_id, now=timezone.now(),
    )  # fmt: skip
    fast = SINGLE_STATEMENT and connections[DEFAULT_DB_ALIAS].vendor == "postgresql"
    try:
        event_id, conversation_id = (rows_write_pg if fast else rows_write_orm)(*rows)
    except IntegrityError:
        if _record_duplicate_message(bot=bot, header=header, payload=payload, source=source, trace_id=trace_id):
            return IngestResult(outcome="duplicate", reason="message already received")
        return IngestResult(outcome="duplicate", reason="event already received")
    if status == InboundEvent.Status.ACCEPTED:
        turn_enqueue(conversation_id=conversation_id)  # committed already (or on the caller's commit)
        # /stop must not wait for a free turn thread. The text is stripped, so one cheap check first.
        if msg.text.startswith("/") and command_parse(msg.text) == "stop":
            stop_enqueue(conversation_id=conversation_id)
    outcome = {InboundEvent.Status.ACCEPTED: "accepted", InboundEvent.Status.STALE: "stale"}.get(status, "ignored")
    return IngestResult(outcome=outcome, inbound_event_id=event_id, reason=reason)


def _bot_added_ingest(*, bot: Bot, header: dict, payload: dict, source: str, trace_id: str) -> IngestResult:
    from apps.feishu.tasks import welcome_enqueue

    chat_id = (payload.get("event") or {}).get("chat_id") or ""
    if not isinstance(chat_id, str) or not chat_id:
        raise InvalidEvent("event.chat_id missing")
    if _is_stale(header):
        status, reason, welcome = InboundEvent.Status.STALE, "stale", False
    else:
        binding = binding_resolve(bot=bot, chat_type="group", chat_id=chat_id, user_open_id="")
        welcome = bool(binding and binding.welcome_message.strip())
        status = InboundEvent.Status.ACCEPTED if welcome else InboundEvent.Status.IGNORED
        reason = "" if welcome else ("no_binding" if binding is None else "no_welcome_message")
    try:
        with transaction.atomic():
            row = _event_row(
                bot=bot,
                header=header,
                payload=payload,
                source=source,
                status=status,
                reason=reason,
                trace_id=trace_id,
            )
            if welcome:
                welcome_enqueue(inbound_event_id=row.pk)
    except IntegrityError:
        return IngestResult(outcome="duplicate", reason="event already received")
    outcome = "accepted" if welcome else ("stale" if status == InboundEvent.Status.STALE else "ignored")
    return IngestResult(outcome=outcome, inbound_event_id=row.pk, reason=reason)


def _toast(kind: str, content: str) -> dict:
    return {"toast": {"type": kind, "content": content}}


def _card_action_ingest(*, bot: Bot, header: dict, payload: dict, source: str, trace_id: str) -> IngestResult:
    event = payload.get("event") or {}
    action, operator = event.get("action"), event.get("operator")
    value = action.get("value") if isinstance(action, dict) else None
    if not isinstance(value, dict):
        value = {}
    feedback = value.get("feedback")
    operator_open_id = str(operator.get("open_id") or "")[:64] if isinstance(operator, dict) else ""
    raw_id = value.get("message_id")
    try:
        message_pk = int(raw_id) if raw_id is not None else None
    except (TypeError, ValueError):
        message_pk = None
    is_feedback = feedback in (Message.Feedback.UP, Message.Feedback.DOWN) and message_pk is not None
    try:
        with transaction.atomic():
            found = 0
            if is_feedback:
                now = timezone.now()
                # Tenant- and bot-scoped: a button can only rate answers this bot gave in this tenant.
                found = (
                    Message.objects.for_tenant(bot.tenant_id)
                    .filter(pk=message_pk, role=Message.Role.ASSISTANT, conversation__bot=bot)
                    .update(feedback=feedback, feedback_by=operator_open_id, feedback_at=now, updated_at=now)
                )
            status = InboundEvent.Status.ACCEPTED if found else InboundEvent.Status.IGNORED
            reason = "" if found else ("message not found" if is_feedback else "not a feedback action")
            row = _event_row(
                bot=bot,
                header=header,
                payload=payload,
                source=source,
                status=status,
                reason=reason,
                trace_id=trace_id,
            )
    except IntegrityError:
        # A re-pushed click: the first delivery recorded it; answer the same way.
        return IngestResult(outcome="duplicate", response=_toast("success", FEEDBACK_THANKS) if is_feedback else {})
    if not is_feedback:
        return IngestResult(outcome="ignored", response={}, inbound_event_id=row.pk, reason=reason)
    if not found:
        return IngestResult(
            outcome="ignored", response=_toast("error", FEEDBACK_MISSING), inbound_event_id=row.pk, reason=reason
        )
    return IngestResult(outcome="accepted", response=_toast("success", FEEDBACK_THANKS), inbound_event_id=row.pk)


def _other_ingest(*, bot: Bot, header: dict, payload: dict, source: str, trace_id: str) -> IngestResult:
    row = _event_row_once(
        bot=bot, header=header, payload=payload, source=source, trace_id=trace_id,
        status=InboundEvent.Status.IGNORED, reason="event type not handled",
    )  # fmt: skip
    if row is None:
        return IngestResult(outcome="duplicate", reason="event already received")
    return IngestResult(outcome="ignored", inbound_event_id=row.pk, reason="event type not handled")


_HANDLERS = {MESSAGE_RECEIVE: _message_ingest, BOT_ADDED: _bot_added_ingest, CARD_ACTION: _card_action_ingest}


def event_ingest(*, bot: Bot, payload: dict, source: str) -> IngestResult:
    """Persist a verified schema-2.0 event for `bot` and act on it (see module docstring).

    Raises InvalidEvent (→ 400), RetryLater (→ 503) and database errors (→ 503).
    """
    if not isinstance(payload, dict):
        raise InvalidEvent("payload is not an object")
    header = _header(payload)
    trace_id = uuid.uuid4().hex
    handler = _HANDLERS.get(header["event_type"], _other_ingest)
    result = handler(bot=bot, header=header, payload=payload, source=source, trace_id=trace_id)
    _bot_touch(bot)
    INBOUND_EVENTS.labels(source=source, outcome=result.outcome).inc()
    logger.info(
        "feishu.event_ingested",
        bot_id=bot.pk,
        event_id=header["event_id"],
        event_type=header["event_type"],
        source=source,
        outcome=result.outcome,
        reason=result.reason,
        trace_id=trace_id if result.inbound_event_id else "",
    )
    return result
