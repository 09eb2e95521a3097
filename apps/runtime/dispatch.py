"""Hand a conversation's pending messages to a turn runner, after the current transaction commits.

Real mode: a Celery task (ids only). Embedded default: a thread pool in this process. Either way the
runner (apps.runtime.services.conversation_process) serialises turns per conversation itself, so
enqueueing twice is harmless and nothing depends on which runner picks the work up.
"""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import structlog
from django.conf import settings
from django.db import close_old_connections, transaction

logger = structlog.get_logger(__name__)


@cache
def _pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=settings.INPROCESS_TURN_THREADS, thread_name_prefix="turn")
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
        from apps.runtime.tasks import conversation_process_task

        conversation_process_task.delay(conversation_id)
    else:
        _pool().submit(_run_inprocess, conversation_id)


def turn_enqueue(*, conversation_id: int) -> None:
    """Schedule processing of the conversation once the surrounding transaction commits."""
    transaction.on_commit(lambda: _send(conversation_id), robust=True)
