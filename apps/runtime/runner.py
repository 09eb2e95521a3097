"""One runner per conversation: a lease taken by compare-and-swap, turns in arrival order.

``conversation_process`` may be called any number of times for a conversation (every ingest
enqueues it, the sweep re-enqueues): only the caller that wins the lease answers messages; the
others return at once (after handling any /stop, which must not wait behind the turn it stops).

No lost wake-up (ORM path, the embedded default's SQLite): the runner releases the lease only
inside a transaction that holds the conversation row lock (SELECT ... FOR UPDATE) and sees no
pending message. Ingest inserts the message and bumps ``conversation.last_activity_at`` in one
transaction, so it either committed before the check (the runner sees the message and carries on)
or it waits for the release and its on-commit enqueue then wins the free lease. Even without the
bump, the enqueue's CAS on the runner token blocks on the row lock and re-checks after the release.

On PostgreSQL the runner's steps are single statements (apps.runtime.store): taking the lease and
claiming the first message are one, claiming the next message or releasing is one. That release
does not lock the row before it checks, so a message committed meanwhile can be missed by its
NOT EXISTS; right after releasing, the runner therefore looks again with a fresh snapshot, taking
the lease back if a message is pending. Any message committed before that second look is seen by
it; any committed after it was committed after the release too, so its own enqueue finds the lease
free. (No reliance on the activity bump there.) Whether the lease is still ours is what those
statements find, not the watchdog's flag (see _next).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.runtime import store
from apps.runtime.commands import NOTHING_TO_STOP_TEXT, STOPPED_TEXT, stop_commands_take
from apps.runtime.pipeline import TurnDone, db_release, message_process, notice_send
from apps.runtime.watch import ActiveTurn, watchdog
from apps.transcripts.models import Conversation, Message, Turn
from omniagent.gate import turn_slot

logger = structlog.get_logger(__name__)

ANSWERABLE = [Message.Status.PENDING, Message.Status.PROCESSING]


def lease_take(*, conversation_id: int, token: str) -> str:
    """Compare-and-swap the runner lease: "free" (nobody had it), "expired" (a dead runner had it) or ""."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.TURN_LEASE_SECONDS)
    conversations = Conversation.objects.filter(pk=conversation_id)
    if conversations.filter(runner_token="").update(runner_token=token, runner_lease_until=until):
        return "free"
    expired = Q(runner_lease_until__lt=now) | Q(runner_lease_until__isnull=True)
    if conversations.filter(expired).update(runner_token=token, runner_lease_until=until):
        return "expired"
    return ""


def lease_acquire(*, conversation_id: int, token: str) -> bool:
    return bool(lease_take(conversation_id=conversation_id, token=token))


def lease_release_if_idle(*, conversation_id: int, token: str) -> bool:
    """Release the lease unless user messages are pending; True when released (or no longer ours)."""
    if store.fast():
        return store.lease_release(conversation_id=conversation_id, token=token)
    with transaction.atomic():
        owned = (
            Conversation.objects.select_for_update()
            .filter(pk=conversation_id, runner_token=token)
            .values_list("pk", flat=True)
            .first()
        )
        if owned is None:
            return True
        if Message.objects.filter(
            conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PENDING
        ).exists():
            return False
        Conversation.objects.filter(pk=conversation_id).update(runner_token="", runner_lease_until=None)
        return True


def lease_release(*, conversation_id: int, token: str) -> None:
    Conversation.objects.filter(pk=conversation_id, runner_token=token).update(runner_token="", runner_lease_until=None)


def _recover(*, conversation_id: int) -> None:
    """Work a dead runner left half-done (we hold the lease, so nobody else is on it)."""
    requeued = Message.objects.filter(
        conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PROCESSING
    ).update(status=Message.Status.PENDING)
    lost = Turn.objects.filter(
        conversation_id=conversation_id, status__in=[Turn.Status.QUEUED, Turn.Status.RUNNING]
    ).update(status=Turn.Status.FAILED, error_detail="runner lost (worker stopped)", finished_at=timezone.now())
    Message.objects.filter(
        conversation_id=conversation_id, role=Message.Role.ASSISTANT, status=Message.Status.PROCESSING
    ).update(status=Message.Status.FAILED)
    if requeued or lost:
        # Re-answering may repeat a reply: its Feishu uuid is deterministic, so Feishu dedupes it.
        logger.warning("runner.recovered", conversation_id=conversation_id, requeued=requeued, lost_turns=lost)


def _claim_next(*, conversation_id: int) -> int | None:
    """Mark the oldest pending user message as processing (compare-and-swap) and return its id."""
    while True:
        message_id = (
            Message.objects.filter(
                conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PENDING
            )
            .order_by("id")
            .values_list("pk", flat=True)
            .first()
        )
        if message_id is None:
            return None
        if Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
            status=Message.Status.PROCESSING
        ):
            return message_id
        # Someone took it (a /stop claimed by another caller): look again.


def stop_commands_handle(*, conversation_id: int) -> None:
    """Act on pending /stop messages now: cancel what runs, drop what waits, say so.

    The runner does this itself when an enqueue finds the conversation busy; an entry point may also
    call it directly (on commit) so /stop does not wait for a free worker thread when all are busy.
    """
    _busy(conversation_id=conversation_id)


def _busy(*, conversation_id: int) -> None:
    """Another runner owns the conversation: act on /stop now instead of queueing it behind the turn."""
    for message, stopped_turn, dropped in stop_commands_take(conversation_id=conversation_id):
        if stopped_turn:
            continue  # the cancelled turn says so itself
        text = STOPPED_TEXT if dropped else NOTHING_TO_STOP_TEXT
        notice_send(message=message, text=text, trace_id=message.trace_id or uuid.uuid4().hex)


def conversation_process(*, conversation_id: int) -> None:
    """Answer the conversation's pending user messages, one turn at a time, in arrival order.

    Holds one of the process's turn slots while it computes (omniagent.gate): in a burst, turns are
    served first come, first served instead of all at once.
    """
    with turn_slot():
        _conversation_process(conversation_id=conversation_id)


def _conversation_process(*, conversation_id: int) -> None:
    token = uuid.uuid4().hex
    message: Message | int | None = None
    if store.fast():
        first = store.claim(conversation_id=conversation_id, token=token)
        message = first.message
        if first.leased:
            taken = "free"
        elif first.expired:
            taken = lease_take(conversation_id=conversation_id, token=token)
        else:
            taken = ""
        if not taken:
            if first.pending:
                _busy(conversation_id=conversation_id)
            return  # nothing pending and nobody to wake: nothing to do
    else:
        taken = lease_take(conversation_id=conversation_id, token=token)
        if not taken:
            _busy(conversation_id=conversation_id)
            return
    active = ActiveTurn(conversation_id=conversation_id, token=token)
    watchdog.register(active)
    state = ""
    done: TurnDone | None = None
    try:
        if taken == "expired":
            _recover(conversation_id=conversation_id)
        claim = True
        while True:
            if message is None:
                message, state, claim = _next(
                    conversation_id=conversation_id, token=token, active=active, claim=claim, done=done
                )
                done = None
                if state in (RELEASED, LOST):
                    return
                if message is None:
                    continue
            active.reset()
            done = message_process(message=message, active=active, defer_timings=store.fast())
            message = None
            db_release()
            claim = False
    finally:
        watchdog.unregister(active)
        if done is not None:  # the loop ended right after a turn: write its timings on their own
            Turn.objects.filter(pk=done.turn_id).update(timings=done.timings, duration_ms=done.duration_ms)
        if state not in (RELEASED, LOST):
            # An unexpected error (e.g. the database went away mid-turn): put the half-done message
            # back in the queue and free the conversation (only if the lease is still ours: it checks
            # under the row lock); the sweep re-enqueues it. If even this fails, the lease expires
            # and the next runner recovers the same way (_recover).
            _release_after_error(conversation_id=conversation_id, token=token)


# What _next found besides a message.
AGAIN = "again"  # nothing claimed this time (a /stop took it first, or the lease was taken back): look again
RELEASED = "released"  # nothing pending: the lease is free
LOST = "lost"  # the lease is no longer ours (it expired and another runner took over)


def _next(
    *, conversation_id: int, token: str, active: ActiveTurn, claim: bool, done: TurnDone | None
) -> tuple[Message | int | None, str, bool]:
    """(message claimed or None, AGAIN/RELEASED/LOST, whether to claim first on the next call)."""
    if store.fast():
        # The statement itself says whether the lease is still ours; the watchdog's lease_lost flag
        # is not used here: it can be set by a renewal that ran while we had released the lease for
        # a moment, before the look below took it back.
        got = store.claim_next(
            conversation_id=conversation_id,
            token=token,
            turn_id=done.turn_id if done else None,
            timings=done.timings if done else None,
            duration_ms=done.duration_ms if done else None,
        )
        if not got.leased:
            logger.warning("runner.lease_lost", conversation_id=conversation_id)
            active.lease_lost = True
            return None, LOST, True
        if got.message is not None or not got.released:
            return got.message, AGAIN, True  # None: a /stop took the pending message first
        # Released: look again with a fresh snapshot (see the module docstring), taking the lease back
        # if a message is pending (the next claim_next then claims it).
        if store.lease_take_if_pending(conversation_id=conversation_id, token=token):
            return None, AGAIN, True
        return None, RELEASED, True
    if active.lease_lost:  # the watchdog could not renew the lease: another runner may have it
        return None, LOST, True
    # Right after a turn, usually nothing is pending: go straight to the locked release check
    # (it looks for pending messages itself) instead of an unlocked look first.
    message_id = _claim_next(conversation_id=conversation_id) if claim else None
    if message_id is not None:
        return message_id, AGAIN, True
    if lease_release_if_idle(conversation_id=conversation_id, token=token):
        return None, RELEASED, True
    return None, AGAIN, True


def _release_after_error(*, conversation_id: int, token: str) -> None:
    with transaction.atomic():
        owned = Conversation.objects.select_for_update().filter(pk=conversation_id, runner_token=token).exists()
        if not owned:
            return
        Message.objects.filter(
            conversation_id=conversation_id, role=Message.Role.USER, status=Message.Status.PROCESSING
        ).update(status=Message.Status.PENDING)
        Turn.objects.filter(conversation_id=conversation_id, status=Turn.Status.RUNNING).update(
            status=Turn.Status.FAILED, error_detail="runner error", finished_at=timezone.now()
        )
        lease_release(conversation_id=conversation_id, token=token)


def conversations_sweep(*, grace_seconds: int = 15) -> int:
    """Re-enqueue conversations with unanswered messages and no live runner; returns how many."""
    from apps.runtime.dispatch import turn_enqueue

    now = timezone.now()
    ids = list(
        Conversation.objects.filter(
            Q(runner_token="") | Q(runner_lease_until__lt=now) | Q(runner_lease_until__isnull=True)
        )
        .filter(
            messages__role=Message.Role.USER,
            messages__status__in=ANSWERABLE,
            messages__created_at__lt=now - timedelta(seconds=grace_seconds),
        )
        .values_list("pk", flat=True)
        .distinct()[:1000]
    )
    for conversation_id in ids:
        turn_enqueue(conversation_id=conversation_id)
    if ids:
        logger.info("runner.sweep_requeued", conversations=len(ids))
    return len(ids)


SWEEP_INTERVAL_SECONDS = 30
_sweeper_lock = threading.Lock()
_sweeper: threading.Thread | None = None


def inprocess_sweeper_start(*, interval: float = SWEEP_INTERVAL_SECONDS) -> bool:
    """Embedded default (no Celery beat): run the sweep from a daemon thread of this process.

    Call once at server start-up when ``TASK_RUNNER == "inprocess"``; returns False if already running.
    """
    global _sweeper
    with _sweeper_lock:
        if _sweeper is not None and _sweeper.is_alive():
            return False

        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    conversations_sweep()
                except Exception:
                    logger.exception("runner.sweep_failed")
                finally:
                    close_old_connections()
                    connection.close()

        _sweeper = threading.Thread(target=loop, name="turn-sweeper", daemon=True)
        _sweeper.start()
        return True
