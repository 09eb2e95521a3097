"""Pay the first-turn import costs at process start instead of inside the first user's turn."""

from __future__ import annotations

import contextlib
import gc
import threading
from concurrent.futures import ThreadPoolExecutor


def runtime_warm_up() -> None:
    # First use imports lark-oapi (responders), the tool modules and the openai SDK's lazy modules:
    # seconds of CPU that the first turns would otherwise pay, holding the GIL.
    from apps.runtime.llm import llm_warm_up
    from apps.runtime.responders import load_responders
    from apps.runtime.tools import tool_get

    load_responders()
    tool_get("calc")
    llm_warm_up()
    heap_freeze()


def heap_freeze() -> None:
    """Keep what start-up created (Django, the SDKs, half a million objects) out of garbage collection.

    A full collection walks every tracked object: about 0.4 s in a worker under load, with the GIL
    held, so every turn thread and the task consumer of the process stood still (the benchmark saw
    each worker go silent for that long in the middle of a burst). Objects created at start-up live
    as long as the process; ``gc.freeze`` moves them to a generation that collections skip.
    """
    gc.collect()
    gc.freeze()


def runtime_warm_up_in_background() -> None:
    """For the embedded default: the web process serves at once while the turn machinery loads."""
    threading.Thread(target=runtime_warm_up, name="runtime-warm-up", daemon=True).start()


def threads_start(executor: ThreadPoolExecutor, *, timeout: float = 5.0) -> int:
    """Start every thread of the pool now; returns how many it has.

    A ThreadPoolExecutor starts a thread per submit until it has ``max_workers``, and the submitting
    thread waits for each new thread to take the GIL and report that it runs. For Celery's thread
    pool the submitter is the worker's one consumer thread, so the first burst after start-up would
    pay for up to 200 thread starts in the thread that hands out its tasks. Called when the worker is
    ready, before it takes a task; if threads are busy after all, it gives up after ``timeout``.
    """
    size = executor._max_workers
    barrier = threading.Barrier(size + 1, timeout=timeout)
    for _ in range(size):  # each blocks a thread on the barrier, so the next submit must start one more
        executor.submit(_wait_quietly, barrier)
    _wait_quietly(barrier)
    return len(executor._threads)


def _wait_quietly(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
