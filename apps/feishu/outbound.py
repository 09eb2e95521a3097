"""Logged sends: every message the product sends to Feishu gets an OutboundMessage row first.

The row is keyed by (bot, uuid) where the uuid is derived from what the message answers, so
- a repeated call (retried task, replayed event) finds the row already sent and sends nothing;
- a send that reached Feishu but whose answer got lost is deduplicated by Feishu on the same uuid;
- a failed send stays visible (status, attempts, last error) and `outbound_retry` re-sends it with the
  same uuid, within RETRY_WINDOW of the first attempt: Feishu drops a repeated uuid only for an hour.
"""

from __future__ import annotations

import json
import uuid as uuid_lib
from datetime import timedelta

import structlog
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from apps.feishu.client import FeishuClient, FeishuError
from apps.feishu.models import OutboundMessage

logger = structlog.get_logger(__name__)

# Fixed namespace: the same parts give the same uuid in every process, forever.
_NAMESPACE = uuid_lib.UUID("6f1d3c1e-5b0a-4f57-9a53-0e7f4a1c2b90")
OPERATIONS = ("reply", "create")
# Feishu sends at most one message per uuid within an hour of the first. A failed row may have
# reached Feishu (its answer lost on the way back), so past that hour a retry could post it twice.
RETRY_WINDOW = timedelta(minutes=55)


class RetryTooLate(Exception):  # noqa: N818 - a refusal, not a failure
    """The send is older than RETRY_WINDOW: Feishu would no longer deduplicate a retry."""


def outbound_uuid(*parts: object) -> str:
    """Deterministic send uuid (36 chars, within Feishu's 50) from e.g. (inbound message id, part number)."""
    if not parts:
        raise ValueError("outbound_uuid needs at least one part")
    return str(uuid_lib.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def outbound_send(
    *,
    bot,
    uuid: str,
    operation: str,
    receive_id: str,
    receive_id_type: str = "",
    msg_type: str,
    content: dict,
    reply_in_thread: bool = False,
    conversation=None,
    trace_id: str = "",
) -> OutboundMessage:
    """Record then send one message. Never raises FeishuError: a failure is the row's status.

    operation "reply": `receive_id` is the message replied to; "create": a chat/user id of
    `receive_id_type`. Call it outside database transactions (it is the side effect itself).
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
    if operation == "create" and not receive_id_type:
        raise ValueError("operation 'create' needs receive_id_type")
    if not uuid or len(uuid) > 50:
        raise ValueError("uuid must be 1..50 characters (Feishu's limit)")
    content_json = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    fields = {
        "tenant_id": bot.tenant_id,
        "conversation": conversation,
        "operation": operation,
        "receive_id": receive_id,
        "receive_id_type": receive_id_type,
        "msg_type": msg_type,
        "content": content_json,
        "reply_in_thread": reply_in_thread,
        "trace_id": trace_id,
    }
    fresh = _insert_first_attempt(bot=bot, uuid=uuid, fields=fields)
    if fresh is not None:
        return _send(fresh, bot=bot)
    outbound = OutboundMessage.objects.get(bot=bot, uuid=uuid)
    if outbound.status == OutboundMessage.Status.SENT:
        logger.info("feishu.outbound.already_sent", outbound_id=outbound.pk, uuid=uuid, bot=bot.app_id)
        return outbound
    if outbound.content != content_json or outbound.msg_type != msg_type:
        # Feishu would deduplicate on the uuid anyway; keep what the row (and admin) shows truthful
        logger.warning("feishu.outbound.content_changed_on_resend", outbound_id=outbound.pk, uuid=uuid)
    return _deliver(outbound, bot=bot)


def _insert_first_attempt(*, bot, uuid: str, fields: dict) -> OutboundMessage | None:
    """The common case, a new uuid: one INSERT of the row already counting its first attempt.

    That row is committed before the call leaves the process (like _deliver's counted attempt), in
    one round trip instead of get_or_create's SELECT + INSERT and _deliver's locked re-read.
    None when the row exists (a repeat): the caller takes the locked path.
    """
    row = OutboundMessage(bot=bot, uuid=uuid, status=OutboundMessage.Status.PENDING, attempts=1, **fields)
    sql = _statements().insert
    if sql:
        # INSERT ... ON CONFLICT (bot, uuid) DO NOTHING RETURNING id: a repeat returns no row instead of
        # raising, so no savepoint is needed inside a transaction either.
        params = [
            f.get_db_prep_save(f.pre_save(row, True), connection) if adapt else f.pre_save(row, True)
            for f, adapt in _statements().insert_fields
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            found = cursor.fetchone()
        if found is None:
            return None
        row.pk = found[0]
        row._state.adding, row._state.db = False, connection.alias
        return row
    try:
        if connection.in_atomic_block:
            with transaction.atomic():  # a savepoint, so a duplicate does not break the caller's transaction
                row.save(force_insert=True)
        else:
            row.save(force_insert=True)  # autocommit: the single statement is its own transaction
    except IntegrityError:
        if OutboundMessage.objects.filter(bot=bot, uuid=uuid).exists():
            return None
        raise
    return row


class _Statements:
    """The two statements of every logged send, written once per process from the model's metadata.

    The ORM's compilation of this INSERT and UPDATE cost more CPU than their round trips (~0.4 and
    ~0.3 ms per send); the SQL is the same on PostgreSQL and SQLite (both have ON CONFLICT and
    RETURNING). Another database gets empty strings and the ORM path.
    """

    def __init__(self) -> None:
        meta = OutboundMessage._meta
        q = connection.ops.quote_name
        # (field, needs the backend's adaptation): only datetimes do; strings, ints and bools go as they are
        self.insert_fields = [
            (f, isinstance(f, models.DateTimeField)) for f in meta.concrete_fields if not f.primary_key
        ]
        self.insert = self.mark_sent = ""
        if connection.vendor in ("postgresql", "sqlite"):
            columns = ", ".join(q(f.column) for f, _ in self.insert_fields)
            values = ", ".join(["%s"] * len(self.insert_fields))
            column = {f.name: q(f.column) for f in meta.concrete_fields}
            bot, uuid = column["bot"], column["uuid"]
            # only names from the model's _meta are interpolated; every value is a parameter
            self.insert = (
                f"INSERT INTO {q(meta.db_table)} ({columns}) VALUES ({values}) "  # noqa: S608
                f"ON CONFLICT ({bot}, {uuid}) DO NOTHING RETURNING {q(meta.pk.column)}"
            )
            assigned = ("status", "feishu_message_id", "sent_at", "last_error", "updated_at")
            sets = ", ".join(f"{column[name]} = %s" for name in assigned)
            self.mark_sent = f"UPDATE {q(meta.db_table)} SET {sets} WHERE {q(meta.pk.column)} = %s"  # noqa: S608


_statements_cache: dict[str, _Statements] = {}


def _statements() -> _Statements:
    found = _statements_cache.get(connection.vendor)
    if found is None:
        found = _statements_cache[connection.vendor] = _Statements()
    return found


def outbound_retry(*, outbound: OutboundMessage) -> OutboundMessage:
    """Re-send a failed (or stuck pending) message with its original uuid; a sent one is left alone.

    Raises RetryTooLate for a message first tried more than RETRY_WINDOW ago.
    """
    if outbound.status == OutboundMessage.Status.SENT:
        return outbound
    if timezone.now() - outbound.created_at > RETRY_WINDOW:
        raise RetryTooLate(f"first tried at {outbound.created_at:%Y-%m-%d %H:%M} UTC, over {RETRY_WINDOW} ago")
    return _deliver(outbound, bot=outbound.bot)


def _deliver(outbound: OutboundMessage, *, bot) -> OutboundMessage:
    # count the attempt before leaving the process, so a crash mid-send still shows it
    with transaction.atomic():
        locked = OutboundMessage.objects.select_for_update().get(pk=outbound.pk)
        if locked.status == OutboundMessage.Status.SENT:
            return locked
        locked.attempts += 1
        locked.status = OutboundMessage.Status.PENDING
        locked.save(update_fields=["attempts", "status", "updated_at"])
    return _send(locked, bot=bot)


def _send(outbound: OutboundMessage, *, bot) -> OutboundMessage:
    """Make the call for a row whose attempt is already counted, then record the outcome."""
    client = FeishuClient.for_bot(bot)
    content = outbound.content  # already the JSON string Feishu wants
    log = logger.bind(outbound_id=outbound.pk, uuid=outbound.uuid, bot=bot.app_id, trace_id=outbound.trace_id)
    if not connection.in_atomic_block:
        # The attempt is committed: hand the connection back to the pool while Feishu answers
        # (other threads use it meanwhile; and a turn gives its CPU slot up only without one, see
        # omniagent.gate). The outcome's UPDATE takes one again.
        connection.close()
    try:
        if outbound.operation == "reply":
            message_id = client.reply_message(
                message_id=outbound.receive_id,
                msg_type=outbound.msg_type,
                content=content,
                uuid=outbound.uuid,
                reply_in_thread=outbound.reply_in_thread,
            )
        else:
            message_id = client.send_message(
                receive_id=outbound.receive_id,
                receive_id_type=outbound.receive_id_type,
                msg_type=outbound.msg_type,
                content=content,
                uuid=outbound.uuid,
            )
    except FeishuError as exc:
        _record_failure(outbound, str(exc))
        log.error("feishu.outbound.failed", code=exc.code, log_id=exc.log_id, retryable=exc.retryable)
        return outbound
    except Exception as exc:  # a bug or an unreadable answer: still visible in the admin, then surfaced
        _record_failure(outbound, f"{exc.__class__.__name__}: {exc}")
        log.exception("feishu.outbound.crashed")
        raise
    outbound.status = OutboundMessage.Status.SENT
    outbound.feishu_message_id = message_id
    outbound.sent_at = outbound.updated_at = timezone.now()
    outbound.last_error = ""
    sql = _statements().mark_sent
    if sql:
        at = OutboundMessage._meta.get_field("sent_at").get_db_prep_save(outbound.sent_at, connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, [outbound.status, message_id, at, "", at, outbound.pk])
    else:  # update(): one UPDATE without the model save machinery (no signals on this model)
        OutboundMessage.objects.filter(pk=outbound.pk).update(
            status=outbound.status,
            feishu_message_id=message_id,
            sent_at=outbound.sent_at,
            last_error="",
            updated_at=outbound.updated_at,
        )
    log.info("feishu.outbound.sent", feishu_message_id=message_id, attempts=outbound.attempts)
    return outbound


def _record_failure(outbound: OutboundMessage, error: str) -> None:
    """Mark the row failed, unless a concurrent attempt with the same uuid has meanwhile delivered it."""
    error = error[:500]
    changed = (
        OutboundMessage.objects.filter(pk=outbound.pk)
        .exclude(status=OutboundMessage.Status.SENT)
        .update(status=OutboundMessage.Status.FAILED, last_error=error, updated_at=timezone.now())
    )
    if changed:
        outbound.status, outbound.last_error = OutboundMessage.Status.FAILED, error
    else:
        outbound.refresh_from_db()
