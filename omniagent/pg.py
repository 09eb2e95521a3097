"""psycopg details the hand-written hot-path statements (ingest, the turn store) share."""

from __future__ import annotations

# A threshold no statement reaches: psycopg prepares nothing on its own, yet honours prepare=True.
_NEVER_AUTOMATICALLY = 2**62


def explicit_prepare_allow(pg_connection) -> None:
    """Let `cursor.execute(..., prepare=True)` prepare on this psycopg connection.

    Django sets psycopg's prepare_threshold to None (automatic preparing breaks poolers such as
    PgBouncer), and psycopg then ignores prepare=True as well. Every other query stays unprepared, as
    Django wants. (Measured with log_statement_stats: PostgreSQL had parsed the hot statements at every
    run; preparing them about halved its CPU for them.)
    """
    if pg_connection.prepare_threshold is None:
        pg_connection.prepare_threshold = _NEVER_AUTOMATICALLY
