"""How many turn threads of this process compute at once (``TURN_ACTIVE_SLOTS``); the rest queue in order.

A threads worker runs hundreds of turns, which mostly wait on the LLM. When a burst of messages
arrives they all want the CPU at once, and under one GIL every thread then gets a slice of every
turn: each turn's LLM request leaves late (processor sharing: everyone finishes near the end), the
answers come back bunched and queue for the CPU again, the GIL's hand-offs between a hundred
runnable threads cost CPU of their own, and Celery's consumer thread, one among them, picks up the
next wake-up late. With the gate a few threads compute at a time and the others wait; a thread
gives its slot back whenever it waits on something remote (the LLM, a Feishu call, a tool) and asks
again when the answer is in. A free slot goes to the waiting turn that started first, so turns are
served in arrival order: in a burst the first LLM request leaves after one turn's worth of CPU, not
after all of them, and a turn coming back from the LLM goes ahead of turns that started after it.
Once a turn's answer is out (``answered()``), its remaining bookkeeping goes behind every turn
that is still answering. Side calls a turn does not wait for (``aside()``: the processing reaction)
run in a small pool of their own, behind every answering turn but ahead of that bookkeeping; side
work a turn does itself while its LLM request is out (``wait_behind_answering()``: writing its
opening rows) queues at the same priority.

No deadlock: a thread gives its slot up only while it holds no database connection (and a thread
starts queueing for a slot holding none). So every connection holder either has a slot or is
not gated at all, and a slot holder waiting for a connection always waits on someone who can go on.

The threads outside turns (Celery's consumer, the watchdog, /stop handling on the control queue)
never queue here. ``TURN_ACTIVE_SLOTS=0`` turns the gate off. The default, 4 per process, did as well
as 3 and better than 8 or 16 in the 200-conversation benchmark (two worker processes on 2 cores;
bench/RESULTS.md). Waits on remote services do not count against it, so slow real services need no
more slots.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections


class Slots:
    """``size`` slots; a released slot is handed straight to the waiter with the lowest ticket."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        # heap of (ticket, arrival, a lock its waiter blocks on); equal tickets (a turn's side call and
        # its own side work) go in arrival order
        self._waiting: list[tuple[int, int, threading.Lock]] = []
        self._arrivals = itertools.count()

    def acquire(self, ticket: int) -> None:
        with self._lock:
            if self._free:
                self._free -= 1
                return
            handed = threading.Lock()
            handed.acquire()
            heapq.heappush(self._waiting, (ticket, next(self._arrivals), handed))
        handed.acquire()  # released by the release() that hands this waiter the slot

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].release()
            else:
                self._free += 1


_local = threading.local()
_tickets = itertools.count()
# Added to a turn's ticket once its answer is out (answered()): what is left (closing the outbound
# record, removing the reaction, releasing the conversation) waits behind every turn still answering.
_AFTER_ANSWER = 1 << 62
# Added to the ticket of a side call (aside()): behind every answering turn, ahead of bookkeeping.
_ASIDE = 1 << 61
# Threads for side calls. Each mostly waits on the network (a Feishu round trip is 50-150 ms), so
# 16 keep up with Feishu's per-app quota (~50 calls/s) without holding a slot while they wait.
ASIDE_THREADS = 16
_aside_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_slots: Slots | None = None
_size = -1


def _process_slots() -> Slots | None:
    global _slots, _size
    size = settings.TURN_ACTIVE_SLOTS
    if size != _size:  # first use, or a test changed the setting
        with _lock:
            if size != _size:
                _slots, _size = (Slots(size) if size > 0 else None), size
    return _slots


def _holds_connection() -> bool:
    return connections[DEFAULT_DB_ALIAS].connection is not None


def holding() -> bool:
    """Whether this thread holds a slot now."""
    return getattr(_local, "slots", None) is not None


@contextmanager
def turn_slot() -> Iterator[None]:
    """Hold a slot for the block (a turn runner's work), queueing by when the block started.

    Nested use is a no-op.
    """
    slots = _process_slots()
    if slots is None or holding() or _holds_connection():
        yield
        return
    _local.ticket = _local.started = next(_tickets)
    slots.acquire(_local.ticket)
    _local.slots = slots
    try:
        yield
    finally:
        if _local.slots is not None:
            _local.slots.release()
        _local.slots = None


def _slot_give_up() -> Slots | None:
    """Give this thread's slot back and return its Slots; None (slot kept) without one or while a
    database connection is held (see the module docstring)."""
    slots = getattr(_local, "slots", None)
    if slots is None or _holds_connection():
        return None
    slots.release()
    _local.slots = None
    return slots


def _slot_take(slots: Slots, ticket: int) -> None:
    slots.acquire(ticket)
    _local.slots = slots


@contextmanager
def remote_wait() -> Iterator[None]:
    """Give this thread's slot up while the block waits on a remote service, then wait for one again
    (ahead of every turn that started later).

    Kept (no-op) when the thread holds no slot or holds a database connection (see the module docstring).
    """
    slots = _slot_give_up()
    try:
        yield
    finally:
        if slots is not None:
            _slot_take(slots, _local.ticket)


def answering() -> None:
    """This thread starts on an answer (again): it queues by when its turn runner started."""
    if holding():
        _local.ticket = _local.started


def answered() -> None:
    """This thread's answer is delivered: its further waits for a slot go behind turns still answering."""
    if holding():
        _local.ticket = _local.started + _AFTER_ANSWER


def wait_behind_answering() -> None:
    """Queue for this thread's slot again behind every turn still answering (at a side call's
    priority), before side work of its own: writing its opening rows while its LLM request is out.

    Its later waits keep its own place in the order. A no-op without a slot or with a database
    connection held.
    """
    slots = _slot_give_up()
    if slots is not None:
        _slot_take(slots, _local.started + _ASIDE)


def aside(call: Callable[[], object]) -> Future:
    """Run ``call`` in a side thread while this turn goes on (it must not need the database).

    For calls the turn does not wait for before going on: the processing reaction is sent while the
    LLM request leaves instead of a Feishu round trip before it. Under load it queues for a slot
    behind every turn still answering, so it never delays an answer; the caller's context variables
    (trace id, turn id in the logs) go with it. The caller may ``cancel()`` the future if the
    call has become pointless before it started.
    """
    global _aside_pool
    ticket = (getattr(_local, "started", 0) if holding() else next(_tickets)) + _ASIDE
    if _aside_pool is None:
        with _lock:
            if _aside_pool is None:
                _aside_pool = ThreadPoolExecutor(max_workers=ASIDE_THREADS, thread_name_prefix="aside")
    return _aside_pool.submit(contextvars.copy_context().run, _aside_run, call, ticket)


def _aside_run(call: Callable[[], object], ticket: int) -> object:
    slots = _process_slots()
    try:
        if slots is None:
            return call()
        _local.ticket = _local.started = ticket
        slots.acquire(ticket)
        _local.slots = slots
        try:
            return call()
        finally:
            if _local.slots is not None:
                _local.slots.release()
            _local.slots = None
    finally:
        connections.close_all()  # a side call is not meant to open one; if it did, it is not kept


def remote_iter(iterator: Iterator) -> Iterator:
    """``iterator``'s items, each ``next()`` (a network read) run under remote_wait."""
    items = iter(iterator)
    while True:
        with remote_wait():
            try:
                item = next(items)
            except StopIteration:
                return
        yield item
