"""Thin Celery tasks: ids in, a service call, nothing returned.

Run the worker with a thread pool: turns wait on the LLM most of the time, so one process keeps
hundreds in flight (``celery -A omniagent worker -P threads -c 200 -Q celery``) while sharing the DB
pool. ``runtime.stop_commands_handle`` goes to the queue ``control``, served by a small worker of its
own (``celery -A omniagent worker -P threads -c 4 -Q control -n control@%h``): see apps.runtime.dispatch.
"""

from celery import shared_task
from celery.signals import worker_ready
from django.db import close_old_connections

from apps.runtime.services import conversation_process, conversations_sweep, stop_commands_handle


@shared_task(name="runtime.conversation_process", ignore_result=True)
def conversation_process_task(conversation_id: int) -> None:
    close_old_connections()
    try:
        conversation_process(conversation_id=conversation_id)
    finally:
        close_old_connections()


@shared_task(name="runtime.stop_commands_handle", ignore_result=True)
def stop_commands_handle_task(conversation_id: int) -> None:
    """Sent to the ``control`` queue (apps.runtime.dispatch.stop_enqueue), so it never waits behind turns."""
    close_old_connections()
    try:
        stop_commands_handle(conversation_id=conversation_id)
    finally:
        close_old_connections()


@shared_task(name="runtime.conversations_sweep", ignore_result=True)
def conversations_sweep_task() -> None:
    close_old_connections()
    try:
        conversations_sweep()
    finally:
        close_old_connections()


@worker_ready.connect
def _warm_up(sender: object = None, **_: object) -> None:
    # A burst of first turns would otherwise pay the imports together, holding the GIL.
    from apps.runtime.warmup import runtime_warm_up, threads_start

    runtime_warm_up()
    executor = getattr(getattr(sender, "pool", None), "executor", None)  # -P threads only
    if executor is not None:
        threads_start(executor)
