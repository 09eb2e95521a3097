"""The runner's and the turn's fixed reads and writes, each one statement on PostgreSQL.

A plain turn used to cost ~21 ORM queries plus two transactions; the ORM's query compilation and
each round trip are worker CPU under the GIL, which is what limits how many turns one process
answers per second. On PostgreSQL the fixed steps below are one statement each (data-modifying
CTEs are atomic without BEGIN/COMMIT), written by hand with every value a parameter:

- ``claim``: take the runner lease if it is free *and* a user message is pending, claim the oldest
  pending message, and return it with its conversation and the time of the message before it (for
  the session's idle TTL).
- ``claim_next``: after a turn, claim the next pending message while we still hold the lease, or
  release the lease when none is pending; writes the finished turn's timings on the way.
- ``lease_take_if_pending``: the fresh look right after a release (runner.py: no lost wake-up).
- ``TurnRows.write``: the Turn row, the user message linked to it, the assistant message row, and a
  new session when one starts; with ids the claim reserved, so it can wait until the LLM request left.
- ``turn_close``: the user and assistant messages' final state, tool rows, LLM call rows and the
  Turn's outcome.

SQLite (the embedded default) has none of this: callers keep their ORM path there (``fast()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Model
from django.utils import timezone

from apps.transcripts.models import Conversation, Message, Turn
from omniagent.pg import explicit_prepare_allow

# Set to False to force the ORM path on PostgreSQL too (tests run both).
SINGLE_STATEMENTS = True


def fast() -> bool:
    return SINGLE_STATEMENTS and connection.vendor == "postgresql"


@cache
def _fields(model: type[Model]) -> tuple[list[str], list[tuple[int, Any, list]]]:
    """(attnames, the from-database converters by position) of ``model``'s concrete fields."""
    fields = list(model._meta.concrete_fields)
    converters = [(i, f, f.get_db_converters(connection)) for i, f in enumerate(fields)]  # type: ignore[attr-defined]
    return [f.attname for f in fields], [c for c in converters if c[2]]


def _columns(model: type[Model], alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def _instance(model: type[Model], values: tuple | list):
    """A model instance from a row of its concrete columns (as a queryset would build it)."""
    names, converters = _fields(model)
    if values[0] is None:
        return None
    values = list(values)
    for index, field, funcs in converters:
        for func in funcs:
            values[index] = func(values[index], field, connection)
    return model.from_db(DEFAULT_DB_ALIAS, names, values)


def _execute(sql: str, params: dict[str, Any] | tuple, *, many: bool = False):
    """Run one of this module's statements and return its first row.

    As a prepared statement with server-side parameter binding: PostgreSQL parses these CTEs once
    per connection (and, after a few runs, keeps a generic plan) instead of every turn, and Python
    stops quoting values into the text. Django turns psycopg's automatic preparing
    off (prepare_threshold None), so the cursor asks for it. It goes through Django's cursor wrapper,
    so execute wrappers, query logging and error translation still apply.
    """
    connection.ensure_connection()
    explicit_prepare_allow(connection.connection)
    raw = _PreparedCursor(connection.connection)
    # (django-stubs type these as taking a CursorWrapper; Django wraps the raw cursor it is given)
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    cursor = wrap(raw)  # type: ignore[arg-type]
    with cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if many else cursor.fetchone()


def fetch_all(sql: str, params: dict[str, Any] | tuple) -> list[tuple]:
    """All rows of a fixed, hand-written statement, prepared like this module's own (PostgreSQL only)."""
    return _execute(sql, params, many=True)


class _PreparedCursor(psycopg.Cursor):
    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


@dataclass
class Claim:
    """What a claim statement found. ``message`` (with ``.conversation`` and ``.previous_at`` set)
    when one was claimed."""

    leased: bool = False  # we hold the lease (took it now, or still had it)
    pending: bool = False  # a user message was pending when the statement ran
    runner_token: str = ""
    runner_lease_until: datetime | None = None
    message: Message | None = None
    released: bool = False

    @property
    def expired(self) -> bool:
        """Another runner holds the lease but it has run out (it died)."""
        return bool(self.runner_token) and (self.runner_lease_until is None or self.runner_lease_until < timezone.now())


_USER_PENDING = "conversation_id = %(c)s AND role = 'user' AND status = 'pending'"


def _claim_select(ours: str, released: str) -> str:
    """The row both claim statements return: (lease ours, a message pending, lease released), the
    conversation, the claimed message (NULLs if none), when the message before it was written, and
    the ids its turn and answer will have (reserved now, so the rows can be written later: see
    TurnRows)."""
    return f"""SELECT {ours}, EXISTS (SELECT 1 FROM pending), {released},
    {_columns(Conversation, "c")}, {_columns(Message, "claimed")},
    (SELECT p.created_at FROM transcripts_message p
     WHERE p.conversation_id = %(c)s AND p.id < claimed.id AND p.role IN ('user', 'assistant')
     ORDER BY p.id DESC LIMIT 1),
    CASE WHEN claimed.id IS NOT NULL THEN nextval(pg_get_serial_sequence('transcripts_turn', 'id')) END,
    CASE WHEN claimed.id IS NOT NULL THEN nextval(pg_get_serial_sequence('transcripts_message', 'id')) END
FROM transcripts_conversation c LEFT JOIN claimed ON TRUE
WHERE c.id = %(c)s
"""  # noqa: S608 - only column lists from the models are interpolated


@cache
def _claim_sql() -> str:
    return f"""
WITH pending AS (
    SELECT id FROM transcripts_message WHERE {_USER_PENDING} ORDER BY id LIMIT 1
), lease AS (
    UPDATE transcripts_conversation SET runner_token = %(token)s, runner_lease_until = %(until)s
    WHERE id = %(c)s AND runner_token = '' AND EXISTS (SELECT 1 FROM pending)
    RETURNING id
), claimed AS (
    UPDATE transcripts_message SET status = 'processing'
    WHERE id = (SELECT id FROM pending) AND status = 'pending' AND EXISTS (SELECT 1 FROM lease)
    RETURNING *
)
{_claim_select("EXISTS (SELECT 1 FROM lease)", "FALSE")}"""  # noqa: S608 - only column lists from the models are interpolated


@cache
def _claim_next_sql() -> str:
    return f"""
WITH owned AS (
    SELECT id FROM transcripts_conversation WHERE id = %(c)s AND runner_token = %(token)s
), pending AS (
    SELECT id FROM transcripts_message WHERE {_USER_PENDING} ORDER BY id LIMIT 1
), released AS (
    UPDATE transcripts_conversation SET runner_token = '', runner_lease_until = NULL
    WHERE id = %(c)s AND runner_token = %(token)s AND NOT EXISTS (SELECT 1 FROM pending)
    RETURNING id
), claimed AS (
    UPDATE transcripts_message SET status = 'processing'
    WHERE id = (SELECT id FROM pending) AND status = 'pending' AND EXISTS (SELECT 1 FROM owned)
    RETURNING *
), timed AS (
    UPDATE transcripts_turn SET timings = %(timings)s::jsonb, duration_ms = %(duration)s
    WHERE id = %(turn)s
)
{_claim_select("EXISTS (SELECT 1 FROM owned)", "EXISTS (SELECT 1 FROM released)")}"""  # noqa: S608 - only column lists from the models are interpolated


def _claim_result(row: tuple | None) -> Claim:
    if row is None:  # the conversation is gone
        return Claim()
    n_conv = len(Conversation._meta.concrete_fields)
    n_msg = len(Message._meta.concrete_fields)
    leased, pending, released = row[0], row[1], row[2]
    conversation = _instance(Conversation, row[3 : 3 + n_conv])
    message = _instance(Message, row[3 + n_conv : 3 + n_conv + n_msg])
    if message is not None:
        message.conversation = conversation
        message.previous_at = row[3 + n_conv + n_msg]
        message.reserved_ids = (row[4 + n_conv + n_msg], row[5 + n_conv + n_msg])
    return Claim(
        leased=leased,
        pending=pending,
        released=released,
        runner_token=conversation.runner_token,
        runner_lease_until=conversation.runner_lease_until,
        message=message,
    )


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.TURN_LEASE_SECONDS)


def claim(*, conversation_id: int, token: str) -> Claim:
    """Take the free lease if a user message is pending and claim the oldest one, in one statement.

    Not leased: ``runner_token``/``runner_lease_until`` say who holds it (as of the statement's
    snapshot), ``pending`` whether there was anything to do.
    """
    row = _execute(_claim_sql(), {"c": conversation_id, "token": token, "until": _lease_until()})
    return _claim_result(row)


def claim_next(
    *, conversation_id: int, token: str, turn_id: int | None = None, timings: dict | None = None, duration_ms=None
) -> Claim:
    """While we hold the lease: claim the oldest pending message, or release the lease if none is.

    ``leased`` False: the lease was no longer ours (nothing claimed, nothing released). The release
    does not lock the conversation first, so a message committed while it ran may be missed: the
    caller must look again after a release (``lease_take_if_pending``; runner.py explains why that
    closes the gap).
    ``turn_id``/``timings``/``duration_ms``: the finished turn's stage timings, written on the way.
    """
    params = {
        "c": conversation_id,
        "token": token,
        "turn": turn_id,
        "timings": json.dumps(timings or {}),
        "duration": duration_ms,
    }
    return _claim_result(_execute(_claim_next_sql(), params))


_RELEASE = f"""
WITH owned AS (
    SELECT id FROM transcripts_conversation WHERE id = %(c)s AND runner_token = %(token)s
), released AS (
    UPDATE transcripts_conversation SET runner_token = '', runner_lease_until = NULL
    WHERE id = %(c)s AND runner_token = %(token)s
      AND NOT EXISTS (SELECT 1 FROM transcripts_message WHERE {_USER_PENDING})
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM owned), EXISTS (SELECT 1 FROM released)
"""  # noqa: S608

_LEASE_IF_PENDING = f"""
UPDATE transcripts_conversation SET runner_token = %(token)s, runner_lease_until = %(until)s
WHERE id = %(c)s AND runner_token = '' AND EXISTS (SELECT 1 FROM transcripts_message WHERE {_USER_PENDING})
RETURNING id
"""  # noqa: S608


def lease_release(*, conversation_id: int, token: str) -> bool:
    """Release our lease unless a user message is pending; True when released (or no longer ours).

    The release statement may miss a message committed while it ran (its NOT EXISTS reads the
    snapshot from before it waited for the row lock), so a second statement looks again with a fresh
    snapshot and takes the lease back if something is pending: then it is False, the lease ours.
    """
    owned, released = _execute(_RELEASE, {"c": conversation_id, "token": token})
    if not owned:
        return True
    if not released:
        return False
    return not lease_take_if_pending(conversation_id=conversation_id, token=token)


def lease_take_if_pending(*, conversation_id: int, token: str) -> bool:
    """Take the free lease if a user message is pending (a fresh look right after a release)."""
    params = {"c": conversation_id, "token": token, "until": _lease_until()}
    return _execute(_LEASE_IF_PENDING, params) is not None


# -- the turn's own rows -----------------------------------------------------------------------
# The user message's row is locked first: a /stop that marked it cancelled before this statement
# (commands.stop_commands_take) is seen here and the turn starts with its cancel flag set; a /stop
# after it finds the running turn instead.
_TURN_OPEN = """
WITH asked AS (
    SELECT status FROM transcripts_message WHERE id = %(message)s FOR UPDATE
), turn AS (
    INSERT INTO transcripts_turn (id, tenant_id, created_at, updated_at, conversation_id, agent_id, status, trace_id,
        cancel_requested, started_at, first_token_ms, duration_ms, timings, error_code, error_detail)
    VALUES (COALESCE(%(turn)s, nextval(pg_get_serial_sequence('transcripts_turn', 'id'))), %(tenant)s, %(now)s,
        %(now)s, %(c)s, %(agent)s, 'running', %(trace)s, COALESCE((SELECT status = 'cancelled' FROM asked), FALSE),
        %(now)s, NULL, NULL, '{}'::jsonb, '', '')
    RETURNING id, cancel_requested
), linked AS (
    UPDATE transcripts_message SET turn_id = (SELECT id FROM turn), trace_id = %(trace)s WHERE id = %(message)s
), assistant AS (
    INSERT INTO transcripts_message (id, tenant_id, created_at, updated_at, conversation_id, turn_id, role, status,
        content, attachments, mentions, tool_calls, tool_call_id, tool_name, sender_open_id, bot_id, external_id,
        error_code, trace_id, feedback, feedback_by)
    SELECT COALESCE(%(assistant)s, nextval(pg_get_serial_sequence('transcripts_message', 'id'))), %(tenant)s, %(now)s,
        %(now)s, %(c)s, turn.id, 'assistant', 'processing',
        '', '[]'::jsonb, '[]'::jsonb, '[]'::jsonb, '', '', '', %(bot)s, '', '', %(trace)s, '', ''
    FROM turn WHERE %(with_assistant)s
    RETURNING id
), session AS (
    UPDATE transcripts_conversation SET session_started_at = %(session_at)s, summary = '', summary_upto_id = NULL
    WHERE id = %(c)s AND %(session_at)s::timestamptz IS NOT NULL
)
SELECT (SELECT id FROM turn), (SELECT id FROM assistant), (SELECT cancel_requested FROM turn)
"""


class TurnRows:
    """A turn's opening rows: the running Turn, the user message linked to it, the assistant row and
    a new session when one starts. Built at once (as model instances, with the ids the claim
    reserved), written by ``write()`` in one statement, as late as the turn allows: the runner
    writes them once its LLM request has left (pipeline.turn), so the request does not wait for them.

    Without reserved ids (a message not claimed by this module's statements) ``write()`` runs at once.
    """

    def __init__(
        self,
        *,
        conversation: Conversation,
        message: Message,
        agent_id: int | None,
        trace_id: str,
        with_assistant: bool,
        session_at: datetime | None,
    ) -> None:
        self.now = now = timezone.now()
        turn_id, assistant_id = getattr(message, "reserved_ids", (None, None))
        self.message, self.session_at, self.written = message, session_at, False
        self.turn = Turn(
            pk=turn_id, tenant_id=conversation.tenant_id, conversation=conversation, agent_id=agent_id,
            status=Turn.Status.RUNNING, trace_id=trace_id, started_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        self.turn._state.adding = False
        self.assistant = None
        if with_assistant:
            self.assistant = Message(
                pk=assistant_id, tenant_id=conversation.tenant_id, conversation=conversation, turn=self.turn,
                role=Message.Role.ASSISTANT, status=Message.Status.PROCESSING, trace_id=trace_id,
                bot_id=conversation.bot_id, created_at=now, updated_at=now,
            )  # fmt: skip
            self.assistant._state.adding = False
        if turn_id is None or (with_assistant and assistant_id is None):
            self.write()

    def write(self) -> bool:
        """Write the rows (once; later calls do nothing). True if a /stop asked to cancel the turn first."""
        if self.written:
            return self.turn.cancel_requested
        turn, message, conversation = self.turn, self.message, self.turn.conversation
        params = {
            "turn": turn.pk,
            "assistant": self.assistant.pk if self.assistant is not None else None,
            "tenant": turn.tenant_id,
            "now": self.now,
            "c": conversation.pk,
            "agent": turn.agent_id,
            "trace": turn.trace_id,
            "message": message.pk,
            "bot": conversation.bot_id,
            "with_assistant": self.assistant is not None,
            "session_at": self.session_at,
        }
        turn_id, assistant_id, cancel_requested = _execute(_TURN_OPEN, params)
        turn.pk, turn.cancel_requested = turn_id, cancel_requested
        if self.assistant is not None:
            self.assistant.pk = assistant_id
        message.turn_id, message.trace_id = turn_id, turn.trace_id
        if self.session_at is not None:
            conversation.session_started_at = self.session_at
            conversation.summary, conversation.summary_upto_id = "", None
        self.written = True
        return cancel_requested


_TURN_CLOSE = """
WITH turn AS (
    UPDATE transcripts_turn SET status = %(outcome)s, finished_at = %(now)s, first_token_ms = %(first_token_ms)s,
        error_code = %(error_code)s, error_detail = %(error_detail)s
    WHERE id = %(turn)s
), user_message AS (
    UPDATE transcripts_message SET status = %(status)s WHERE id = %(message)s
), assistant AS (
    UPDATE transcripts_message SET updated_at = %(now)s, status = %(status)s, content = %(content)s,
        tool_calls = %(tool_calls)s::jsonb, input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s,
        latency_ms = %(latency_ms)s, error_code = %(error_code)s
    WHERE id = %(assistant)s
), tools AS (
    INSERT INTO transcripts_message (tenant_id, created_at, updated_at, conversation_id, turn_id, role, status,
        content, attachments, mentions, tool_calls, tool_call_id, tool_name, sender_open_id, bot_id, external_id,
        latency_ms, error_code, trace_id, feedback, feedback_by)
    SELECT %(tenant)s, %(now)s, %(now)s, %(c)s, %(turn)s, 'tool', r.status, r.content, '[]'::jsonb, '[]'::jsonb,
        r.tool_calls, r.tool_call_id, r.tool_name, '', NULL, '', r.latency_ms, r.error_code, %(trace)s, '', ''
    FROM jsonb_to_recordset(%(tools)s::jsonb) AS r(status text, content text, tool_calls jsonb, tool_call_id text,
        tool_name text, latency_ms integer, error_code text)
), calls AS (
    INSERT INTO transcripts_llmcall (tenant_id, created_at, updated_at, turn_id, model, input_tokens, output_tokens,
        first_token_ms, latency_ms, ok, error, trace_id)
    SELECT %(tenant)s, %(now)s, %(now)s, %(turn)s, r.model, r.input_tokens, r.output_tokens, r.first_token_ms,
        r.latency_ms, r.ok, r.error, %(trace)s
    FROM jsonb_to_recordset(%(calls)s::jsonb) AS r(model text, input_tokens integer, output_tokens integer,
        first_token_ms integer, latency_ms integer, ok boolean, error text)
)
SELECT 1
"""


def turn_close(
    *,
    turn: Turn,
    message: Message,
    assistant: Message | None,
    user_status: str,
    outcome: str,
    error_code: str,
    error_detail: str,
    first_token_ms: int | None,
    tool_rows: list[dict[str, Any]],
    call_rows: list[dict[str, Any]],
) -> None:
    """Write the turn's transcript in one statement (atomic like the transaction it replaces).

    ``assistant`` carries its final fields; ``tool_rows``/``call_rows`` are the Message (role tool)
    and LLMCall fields as dicts (see pipeline.turn_save).
    """
    params = {
        "now": timezone.now(),
        "turn": turn.pk,
        "tenant": turn.tenant_id,
        "c": turn.conversation_id,
        "trace": turn.trace_id,
        "outcome": outcome,
        "first_token_ms": first_token_ms,
        "error_code": error_code,
        "error_detail": error_detail,
        "message": message.pk,
        "status": user_status,
        "assistant": assistant.pk if assistant is not None else None,
        "content": assistant.content if assistant is not None else "",
        "tool_calls": json.dumps(assistant.tool_calls if assistant is not None else []),
        "input_tokens": assistant.input_tokens if assistant is not None else None,
        "output_tokens": assistant.output_tokens if assistant is not None else None,
        "latency_ms": assistant.latency_ms if assistant is not None else None,
        "tools": json.dumps(tool_rows),
        "calls": json.dumps(call_rows),
    }
    _execute(_TURN_CLOSE, params)
