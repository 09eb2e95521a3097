"""Hand a conversation's pending messages to a turn runner, after the current transaction commits.

Real mode: a Celery task (ids only). Embedded default: a thread pool in this process. Either way the
runner (apps.runtime.services.conversation_process) serialises turns per conversation itself, so
enqueueing twice is harmless and nothing depends on which runner picks the work up.

A /stop must not wait behind other conversations' turns when every turn thread is busy, so
``stop_enqueue`` hands it to a path of its own: the Celery queue ``control``, consumed by a small
dedicated worker (a queue of the turn worker would not do: with the threads pool a message is acked
when its thread starts, so a saturated worker keeps reserving messages, ``control`` ones included,
into its executor's FIFO behind the turns), or in the embedded default a tiny executor of its own.
The runner still handles any /stop it finds; claiming is a compare-and-swap, so each /stop acts once.
"""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import structlog
from django.conf import settings
from django.db import close_old_connections, transaction

from apps.runtime.publish import task_publish

logger = structlog.get_logger(__name__)

TURN_TASK = "runtime.conversation_process"  # apps.runtime.tasks.conversation_process_task
CONTROL_QUEUE = "control"  # Celery queue of /stop handling; deploy runs a small worker on it alone
STOP_THREADS = 2  # embedded default: /stop handling is a few queries and one notice


@cache
def _pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=settings.INPROCESS_TURN_THREADS, thread_name_prefix="turn")
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


@cache
def _stop_pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=STOP_THREADS, thread_name_prefix="stop")
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def _run_inprocess(conversation_id: int) -> None:
    from apps.runtime.services import conversation_process

    close_old_connections()
    try:
        conversation_process(conversation_id=conversation_id)
    except Exception:
        logger.exception("turn.inprocess_failed", conversation_id=conversation_id)
    finally:
        close_old_connections()


def _send(conversation_id: int) -> None:
    if settings.TASK_RUNNER == "celery":
        task_publish(TURN_TASK, (conversation_id,))
    else:
        _pool().submit(_run_inprocess, conversation_id)


def turn_enqueue(*, conversation_id: int) -> None:
    """Schedule processing of the conversation once the surrounding transaction commits."""
    transaction.on_commit(lambda: _send(conversation_id), robust=True)


def _stop_inprocess(conversation_id: int) -> None:
    from apps.runtime.services import stop_commands_handle

    close_old_connections()
    try:
        stop_commands_handle(conversation_id=conversation_id)
    except Exception:
        logger.exception("stop.inprocess_failed", conversation_id=conversation_id)
    finally:
        close_old_connections()


def _stop_send(conversation_id: int) -> None:
    if settings.TASK_RUNNER == "celery":
        from apps.runtime.tasks import stop_commands_handle_task

        stop_commands_handle_task.apply_async((conversation_id,), queue=CONTROL_QUEUE)
    else:
        _stop_pool().submit(_stop_inprocess, conversation_id)


def stop_enqueue(*, conversation_id: int) -> None:
    """Act on the conversation's pending /stop once the transaction commits, without waiting for a
    free turn thread (call it in addition to ``turn_enqueue`` for a message that is /stop)."""
    transaction.on_commit(lambda: _stop_send(conversation_id), robust=True)
