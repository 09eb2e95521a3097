"""The rows of one received message (event, conversation, message), written together.

PostgreSQL: one statement of data-modifying CTEs, compiled once per shape by Django's own INSERT
compiler and prepared on each connection, so a webhook costs one round trip and PostgreSQL neither
parses nor plans it per event. SQLite (the embedded default): the same rows through the ORM in one
transaction. Either way a duplicate event or message fails the whole write (IntegrityError).
"""

from __future__ import annotations

from functools import cache

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import sql
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL

from apps.transcripts.models import Conversation, InboundEvent, Message
from omniagent.pg import explicit_prepare_allow

_CONVERSATION_ID = RawSQL('(SELECT "id" FROM conv)', ())  # the message's FK, set by the statement


def conversation_update_fields(conversation: Conversation) -> list[str]:
    # An existing conversation gets its activity bumped (a row lock, which also orders this insert
    # against the turn runner's release of the conversation); the current binding decides who answers.
    fields = ["last_activity_at", "updated_at"]
    if conversation.agent_id is not None:
        fields.append("agent")
    return fields


def rows_write_orm(event: InboundEvent, conversation: Conversation, message: Message) -> tuple[int, int]:
    """Portable path (SQLite in the embedded default): one transaction, three statements."""
    with transaction.atomic():
        event.save(force_insert=True)
        Conversation.objects.bulk_create(
            [conversation], update_conflicts=True, unique_fields=["key"],
            update_fields=conversation_update_fields(conversation),
        )  # fmt: skip
        message.conversation_id = conversation.pk
        message.save(force_insert=True)
    return event.pk, conversation.pk


def insert_sql(obj, *, update_fields: list[str] | None = None, unique_fields: list[str] | None = None):
    """Django's own INSERT ... RETURNING id for `obj` (defaults, pre_save, field preparation included)."""
    meta = obj._meta
    fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
    query = sql.InsertQuery(
        type(obj),
        on_conflict=OnConflict.UPDATE if update_fields else None,
        update_fields=[meta.get_field(name) for name in update_fields or []],
        unique_fields=[meta.get_field(name) for name in unique_fields or []],
    )
    query.insert_values(fields, [obj])
    compiler = query.get_compiler(using=DEFAULT_DB_ALIAS)
    compiler.returning_fields = [meta.pk]
    [(statement, params)] = compiler.as_sql()
    return statement, params


# Compiling the three INSERTs was a sixth of the webhook's CPU, yet their text only depends on the
# models, the conflict clause and which fields hold an SQL expression (the message's conversation
# subquery). Compile once per such shape; per event only the values are prepared, the way Django's
# compiler prepares them (pre_save, then get_db_prep_save). A test holds both equal.
_compiled: dict[tuple, tuple[str, tuple]] = {}


def insert_sql_cached(obj, *, update_fields: list[str] | None = None, unique_fields: list[str] | None = None):
    meta = obj._meta
    fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
    expressions = tuple(f.attname for f in fields if hasattr(getattr(obj, f.attname), "resolve_expression"))
    key = (type(obj), tuple(update_fields or ()), tuple(unique_fields or ()), expressions)
    hit = _compiled.get(key)
    if hit is None:
        statement, _ = insert_sql(obj, update_fields=update_fields, unique_fields=unique_fields)
        hit = _compiled[key] = (statement, tuple(f for f in fields if f.attname not in expressions))
    statement, value_fields = hit
    connection = connections[DEFAULT_DB_ALIAS]
    return statement, tuple(f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in value_fields)


@cache
def _bound_cursor_class():
    """A psycopg cursor with server-side binding whose query conversion is always cached.

    psycopg caches the %s → $n conversion only for statements under 4096 bytes and 50 parameters; the
    ingest statement has more parameters, so psycopg re-parsed it per event (another sixth of the CPU).
    There is one such statement per shape, so an unbounded cache cannot grow. Relies on psycopg's
    `_query_cls` hook (psycopg is pinned; the ingest tests run through this cursor).
    """
    import psycopg
    from psycopg import _queries

    class _CachedConversionQuery(_queries.PostgresQuery):
        def convert(self, query, vars) -> None:
            query = self._ensure_bytes(query)
            self.query, self._want_formats, self._order, self._parts = _queries._query2pg(query, self._tx.encoding)
            self.dump(vars)

    class _BoundCursor(psycopg.Cursor):
        _query_cls = _CachedConversionQuery

    return _BoundCursor


def _execute_bound(conn, statement: str, params: tuple) -> tuple:
    """Run as a prepared statement with server-side parameter binding, so neither Python (quoting the
    JSON payload into the SQL) nor PostgreSQL (parsing and planning a three-insert statement) redoes
    that work per event. Django turns psycopg's automatic preparation off (prepare_threshold None, for
    poolers such as PgBouncer), so the cursor asks for it. Errors come out as Django's exceptions."""
    conn.ensure_connection()
    explicit_prepare_allow(conn.connection)
    with conn.wrap_database_errors, _bound_cursor_class()(conn.connection) as cursor:
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchone()


def rows_write_pg(event: InboundEvent, conversation: Conversation, message: Message) -> tuple[int, int]:
    """PostgreSQL: the same three writes as one statement (data-modifying CTEs), so one round trip and
    atomic without BEGIN/COMMIT. A duplicate event or message fails the whole statement."""
    message.conversation_id = _CONVERSATION_ID
    ev_sql, ev_params = insert_sql_cached(event)
    conv_sql, conv_params = insert_sql_cached(
        conversation, update_fields=conversation_update_fields(conversation), unique_fields=["key"]
    )
    msg_sql, msg_params = insert_sql_cached(message)
    # Only Django-compiled INSERTs are interpolated; every value is a bound parameter.
    ctes = f"WITH ev AS ({ev_sql}), conv AS ({conv_sql}), msg AS ({msg_sql}) "
    statement = ctes + 'SELECT (SELECT "id" FROM ev), (SELECT "id" FROM conv), (SELECT "id" FROM msg)'  # noqa: S608
    params = (*ev_params, *conv_params, *msg_params)
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.in_atomic_block:
        with transaction.atomic():  # a savepoint: a duplicate must not break the caller's transaction
            row = _execute_bound(conn, statement, params)
    else:
        row = _execute_bound(conn, statement, params)
    event.pk, conversation.pk, message.pk = row
    message.conversation_id = conversation.pk
    return event.pk, conversation.pk
