"""One watchdog thread per process for every turn running in it.

Per turn we need three things while the worker thread is blocked reading an LLM stream: notice a
cancel request (the API or /stop sets ``Turn.cancel_requested`` from any process), enforce the
LLM deadline, and keep the conversation's runner lease alive. A thread per turn would double the
thread count, and a DB query per stream chunk would multiply queries by the token rate; instead one
daemon thread polls the cancel flags of all local turns in one query every ``POLL_SECONDS``, renews
their leases every third of the lease, and interrupts a blocked stream by shutting down its socket
(closing an httpx response from another thread does not wake a blocked read; shutdown does).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

logger = structlog.get_logger(__name__)

POLL_SECONDS = 0.25


class ActiveTurn:
    """A turn running in this process: its cancel signal, LLM deadline and open stream."""

    def __init__(self, *, conversation_id: int, token: str) -> None:
        self.conversation_id = conversation_id
        self.token = token
        self.turn_id: int | None = None
        self.cancelled = threading.Event()
        self.timed_out = threading.Event()
        self.lease_lost = False
        self.deadline: float | None = None  # time.monotonic() value, while an LLM call runs
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def reset(self) -> None:
        """Before the next turn of the same runner."""
        self.turn_id = None
        self.cancelled.clear()
        self.timed_out.clear()
        self.deadline = None

    # -- used by the LLM client ------------------------------------------------------------
    def attach_response(self, response) -> socket.socket | None:
        """Remember the socket of a streaming response so a cancel can interrupt a blocked read."""
        try:
            sock = response.extensions["network_stream"].get_extra_info("socket")
        except (AttributeError, KeyError, TypeError):
            return None
        if sock is None:
            return None
        with self._lock:
            self._sockets.add(sock)
        if self.cancelled.is_set() or self.timed_out.is_set():
            self._interrupt()
        return sock

    def detach(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)

    # -- signals ---------------------------------------------------------------------------
    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            self._interrupt()

    def expire(self) -> None:
        if not self.timed_out.is_set():
            self.timed_out.set()
            self._interrupt()

    def _interrupt(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, ActiveTurn] = {}  # id(active) -> active
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._last_renew = 0.0

    def register(self, active: ActiveTurn) -> None:
        with self._lock:
            self._active[id(active)] = active
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="turn-watchdog", daemon=True)
                self._thread.start()

    def unregister(self, active: ActiveTurn) -> None:
        with self._lock:
            self._active.pop(id(active), None)

    def find(self, turn_id: int) -> ActiveTurn | None:
        with self._lock:
            return next((a for a in self._active.values() if a.turn_id == turn_id), None)

    def _registered(self, active: ActiveTurn) -> bool:
        with self._lock:
            return id(active) in self._active

    def _snapshot(self) -> list[ActiveTurn]:
        with self._lock:
            return list(self._active.values())

    def _run(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            actives = self._snapshot()
            if not actives:
                continue
            try:
                self._tick(actives)
            except Exception:
                logger.exception("watchdog.tick_failed")
            finally:
                close_old_connections()
                connection.close()

    def _tick(self, actives: list[ActiveTurn]) -> None:
        now = time.monotonic()
        for active in actives:
            if active.deadline is not None and now >= active.deadline:
                active.expire()
        turn_ids = [a.turn_id for a in actives if a.turn_id and not a.cancelled.is_set()]
        if turn_ids:
            flagged = _cancel_requested(turn_ids)
            for active in actives:
                if active.turn_id in flagged:
                    logger.info("turn.cancel_seen", turn_id=active.turn_id)
                    active.cancel()
        lease = settings.TURN_LEASE_SECONDS
        if now - self._last_renew >= lease / 3:
            self._last_renew = now
            until = timezone.now() + timedelta(seconds=lease)
            renewed = _leases_renew(actives, until=until)
            for active in actives:
                if active.token not in renewed and not active.lease_lost and self._registered(active):
                    # (A runner that has just released its lease and is leaving is not "lost".)
                    active.lease_lost = True
                    logger.warning("runner.lease_lost", conversation_id=active.conversation_id)


_RENEW = """
UPDATE transcripts_conversation c SET runner_lease_until = %s
FROM unnest(%s::bigint[], %s::text[]) AS mine(id, token)
WHERE c.id = mine.id AND c.runner_token = mine.token
RETURNING c.runner_token
"""


def _leases_renew(actives: list[ActiveTurn], *, until) -> set[str]:
    """Extend the leases still held by these runners; the tokens renewed. One statement on PostgreSQL
    (hundreds of turns in flight renew together every third of the lease)."""
    from apps.transcripts.models import Conversation

    if connection.vendor != "postgresql":
        return {
            a.token
            for a in actives
            if Conversation.objects.filter(pk=a.conversation_id, runner_token=a.token).update(runner_lease_until=until)
        }
    from apps.runtime.store import fetch_all

    rows = fetch_all(_RENEW, (until, [a.conversation_id for a in actives], [a.token for a in actives]))
    return {row[0] for row in rows}


_CANCEL_REQUESTED = "SELECT id FROM transcripts_turn WHERE id = ANY(%s) AND cancel_requested"


def _cancel_requested(turn_ids: list[int]) -> set[int]:
    """Which of these turns were asked to stop. Runs 4x a second with every local turn's id: on
    PostgreSQL one array parameter (no IN list of hundreds of quoted values compiled each time)."""
    from apps.transcripts.models import Turn

    if connection.vendor != "postgresql":
        return set(Turn.objects.filter(pk__in=turn_ids, cancel_requested=True).values_list("pk", flat=True))
    from apps.runtime.store import fetch_all

    return {row[0] for row in fetch_all(_CANCEL_REQUESTED, (turn_ids,))}


watchdog = Watchdog()
