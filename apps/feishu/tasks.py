"""Feishu side effects that must not run inside the webhook request: the welcome message on bot-added.

Real mode: a Celery task (ids only). Embedded default / tests: a small thread pool in this process.
Both are started only after the InboundEvent row is committed.
"""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import structlog
from celery import shared_task
from django.conf import settings
from django.db import close_old_connections, transaction

from apps.bindings.selectors import binding_resolve
from apps.transcripts.models import InboundEvent

logger = structlog.get_logger(__name__)


def welcome_send(*, inbound_event_id: int) -> None:
    """Post the binding's welcome message into the chat the bot was added to (once per event)."""
    from apps.feishu.outbound import outbound_send, outbound_uuid

    event = InboundEvent.objects.select_related("bot").filter(pk=inbound_event_id).first()
    if event is None:
        logger.info("feishu.welcome_event_gone", inbound_event_id=inbound_event_id)
        return
    chat_id = (event.payload.get("event") or {}).get("chat_id") or ""
    binding = binding_resolve(bot=event.bot, chat_type="group", chat_id=chat_id, user_open_id="")
    if binding is None or not binding.welcome_message.strip():
        logger.info("feishu.welcome_none", inbound_event_id=inbound_event_id, chat_id=chat_id)
        return
    outbound_send(
        bot=event.bot,
        # Deterministic: a redelivered task (or a retried send) is deduplicated, here and by Feishu.
        uuid=outbound_uuid("welcome", event.bot_id, event.event_id),
        operation="create",
        receive_id=chat_id,
        receive_id_type="chat_id",
        msg_type="text",
        content={"text": binding.welcome_message.strip()},
        trace_id=event.trace_id,
    )


@shared_task(name="feishu.welcome_send", ignore_result=True)
def welcome_send_task(inbound_event_id: int) -> None:
    welcome_send(inbound_event_id=inbound_event_id)


@cache
def _pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="feishu-side")
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def _run_inprocess(inbound_event_id: int) -> None:
    close_old_connections()
    try:
        welcome_send(inbound_event_id=inbound_event_id)
    except Exception:
        logger.exception("feishu.welcome_failed", inbound_event_id=inbound_event_id)
    finally:
        close_old_connections()


def _dispatch(inbound_event_id: int) -> None:
    if settings.TASK_RUNNER == "celery":
        welcome_send_task.delay(inbound_event_id)
    else:
        _pool().submit(_run_inprocess, inbound_event_id)


def welcome_enqueue(*, inbound_event_id: int) -> None:
    """Send the welcome message after the surrounding transaction commits."""
    transaction.on_commit(lambda: _dispatch(inbound_event_id), robust=True)
