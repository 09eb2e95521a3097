"""The turn gate (omniagent.gate): a few turn threads compute at once, served in arrival order."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
from django.db import connection

from omniagent import gate
from omniagent.gate import Slots, remote_wait, turn_slot


def _wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_released_slot_goes_to_the_waiter_with_the_lowest_ticket():
    slots = Slots(1)
    slots.acquire(0)
    order: list[int] = []
    threads = []
    for ticket in (5, 2, 9, 1):  # queue up in this order; they must be served by ticket
        t = threading.Thread(target=lambda n=ticket: (slots.acquire(n), order.append(n), slots.release()))
        t.start()
        threads.append(t)
        queued = len(threads)
        _wait_for(lambda k=queued: len(slots._waiting) == k)
    slots.release()
    for t in threads:
        t.join(5)
    assert order == [1, 2, 5, 9]


def test_turn_slots_bound_how_many_turns_compute_at_once(settings):
    settings.TURN_ACTIVE_SLOTS = 2
    inside = peak = 0
    lock = threading.Lock()

    def turn() -> None:
        nonlocal inside, peak
        with turn_slot():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=turn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak == 2


def test_a_turn_waiting_on_a_remote_service_lets_another_turn_in(settings):
    settings.TURN_ACTIVE_SLOTS = 1
    remote_started, second_ran, finish_remote = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with turn_slot(), remote_wait():
            remote_started.set()
            finish_remote.wait(5)

    def second() -> None:
        with turn_slot():
            second_ran.set()

    a = threading.Thread(target=first)
    a.start()
    assert remote_started.wait(5)
    b = threading.Thread(target=second)
    b.start()
    assert second_ran.wait(5), "the only slot stayed with a thread that was waiting on the network"
    finish_remote.set()
    a.join(5)
    b.join(5)


def _start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args)
    thread.start()
    return thread


def _holding_the_slot() -> tuple[threading.Thread, threading.Event]:
    """A thread that holds a slot (the only one, in these tests) until the returned event is set."""
    ready, go = threading.Event(), threading.Event()

    def hold() -> None:
        with turn_slot():
            ready.set()
            go.wait(5)

    thread = _start(hold)
    assert ready.wait(5)
    return thread, go


def _in_remote_wait(
    order: list[str], label: str, *, answered: bool = False
) -> tuple[threading.Thread, threading.Event]:
    """A turn (its answer out if ``answered``) waiting on a remote service until the returned event is
    set; it then queues for a slot again and appends ``label`` once it has one."""
    in_remote, back = threading.Event(), threading.Event()

    def run() -> None:
        with turn_slot():
            if answered:
                gate.answered()
            with remote_wait():
                in_remote.set()
                back.wait(5)
            order.append(label)

    thread = _start(run)
    assert in_remote.wait(5)
    return thread, back


def _queued(n: int) -> None:
    _wait_for(lambda: len(gate._slots._waiting) == n)


def _turn(order: list[str], label: str) -> None:
    with turn_slot():
        order.append(label)


def test_a_turn_coming_back_from_the_llm_goes_ahead_of_turns_that_started_later(settings):
    settings.TURN_ACTIVE_SLOTS = 1
    order: list[str] = []
    old, back = _in_remote_wait(order, "old turn resumed")
    holder, release = _holding_the_slot()
    newer = []
    for i in range(3):
        newer.append(_start(_turn, order, f"new turn {i}"))
        _queued(i + 1)
    back.set()  # the old turn's answer is in: it queues behind the three new turns...
    _queued(4)
    release.set()  # ...and is served first
    for t in [old, holder, *newer]:
        t.join(5)
    assert order == ["old turn resumed", "new turn 0", "new turn 1", "new turn 2"]


@pytest.mark.django_db(transaction=True)
def test_a_turn_holding_a_database_connection_keeps_its_slot(settings):
    """A connection holder never waits for a slot: a slot holder waiting on the pool can then always
    count on the connection coming back (no deadlock)."""
    settings.TURN_ACTIVE_SLOTS = 1
    connection.close()
    with turn_slot():
        connection.ensure_connection()
        with remote_wait():
            assert gate.holding()
        connection.close()
        with remote_wait():
            assert not gate.holding()
        assert gate.holding()
    assert not gate.holding()


def test_no_gate_when_the_setting_is_zero(settings):
    settings.TURN_ACTIVE_SLOTS = 0
    with turn_slot():
        assert not gate.holding()


def test_a_side_call_carries_the_callers_context_and_runs_beside_it(settings):
    settings.TURN_ACTIVE_SLOTS = 2
    trace = contextvars.ContextVar("trace", default="")
    trace.set("trace-1")
    seen: list[tuple[str, bool, str]] = []
    with turn_slot():
        done = gate.aside(lambda: seen.append((trace.get(), gate.holding(), threading.current_thread().name)))
        done.result(5)
    assert seen == [("trace-1", True, seen[0][2])] and seen[0][2].startswith("aside")


def test_answering_turns_go_first_then_side_calls_then_answered_turns_bookkeeping(settings):
    settings.TURN_ACTIVE_SLOTS = 1
    order: list[str] = []
    answered, back = _in_remote_wait(order, "bookkeeping of an answered turn", answered=True)
    holder, release = _holding_the_slot()
    back.set()
    _queued(1)
    side = gate.aside(lambda: order.append("side call"))
    _queued(2)
    later = _start(_turn, order, "a later turn's answer")
    _queued(3)
    release.set()
    for t in (answered, holder, later):
        t.join(5)
    side.result(5)
    assert order == ["a later turn's answer", "side call", "bookkeeping of an answered turn"]


def test_waiters_with_equal_tickets_are_served_in_arrival_order():
    slots = Slots(1)
    slots.acquire(0)
    order: list[str] = []
    threads = []
    for ticket, label in ((7, "first 7"), (3, "3"), (7, "second 7")):
        threads.append(_start(lambda n=ticket, lbl=label: (slots.acquire(n), order.append(lbl), slots.release())))
        queued = len(threads)
        _wait_for(lambda k=queued: len(slots._waiting) == k)
    slots.release()
    for t in threads:
        t.join(5)
    assert order == ["3", "first 7", "second 7"]


def test_a_turns_side_work_waits_behind_turns_still_answering(settings):
    """What a turn does while its LLM request is out (writing its rows) lets a later turn's answer go first."""
    settings.TURN_ACTIVE_SLOTS = 1
    order: list[str] = []
    ready, go = threading.Event(), threading.Event()

    def early_turn() -> None:
        with turn_slot():
            ready.set()
            go.wait(5)
            gate.wait_behind_answering()
            order.append("the early turn's side work")

    early = _start(early_turn)
    assert ready.wait(5)
    later = _start(_turn, order, "a later turn's answer")
    _queued(1)
    go.set()
    early.join(5)
    later.join(5)
    assert order == ["a later turn's answer", "the early turn's side work"]
