"""Pieces every stage shares: the turn's state, its stopwatch, the guarded responder, DB release."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.db import DEFAULT_DB_ALIAS, connections

from apps.runtime.llm import LLMSession
from apps.runtime.memory import Round
from apps.runtime.responders.base import Responder

logger = structlog.get_logger(__name__)


EMPTY_ANSWER = "抱歉，这次没有得到回答，请换个说法再试。"


def db_release(conn=None) -> None:
    """Give this thread's connection back to the pool (not inside a transaction: tests, callers).

    ``conn``: this thread's ``connections[DEFAULT_DB_ALIAS]`` if the caller holds it (the
    ``connection`` proxy looks the thread's wrapper up on every attribute access).
    """
    conn = conn or connections[DEFAULT_DB_ALIAS]
    if conn.connection is not None and not conn.in_atomic_block:
        conn.close()


class Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0) + int((time.monotonic() - started) * 1000)


class GuardedResponder:
    """Calls the channel's responder; a delivery failure is logged, never ends the turn.

    The wrappers are built once per turn (not per call: on_text_delta runs once per streamed chunk).
    """

    EVENTS = ("on_start", "on_text_delta", "on_tool_start", "on_tool_end", "on_final", "on_error",
              "on_cancelled", "on_notice", "close")  # fmt: skip

    def __init__(self, inner: Responder) -> None:
        self.inner = inner
        conn = connections[DEFAULT_DB_ALIAS]  # this thread's: a responder lives in its turn's thread
        for name in self.EVENTS:
            setattr(self, name, self._guard(name, getattr(inner, name), conn))

    def _guard(self, name: str, method, conn):
        def call(*args: Any) -> None:
            try:
                method(*args)
            except Exception:
                logger.exception("responder.failed", responder_event=name, responder=type(self.inner).__name__)
            finally:
                db_release(conn)

        return call

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@dataclass
class TurnState:
    """What the turn produced so far (kept even when it is cancelled or fails half-way)."""

    visible: str = ""  # the answer text shown so far, across tool rounds
    first_token_at: float | None = None
    tool_records: list[dict[str, Any]] = field(default_factory=list)
    llm: LLMSession | None = None
    # BUILD's history when it folded nothing: every unfolded round of the session (lets the
    # post-answer compaction decide without reading the history again). None: unknown.
    history: list[Round] | None = None
    # Known before BUILD: the session has no earlier rounds to replay (saves reading the history).
    history_empty: bool = False


@dataclass
class TurnDone:
    """A finished turn's stage timings, for the runner to write with its next statement."""

    turn_id: int
    timings: dict[str, int]
    duration_ms: int
