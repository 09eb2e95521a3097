"""Process start-up: what a worker does once so that the first burst of turns does not pay for it."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

from apps.runtime.warmup import heap_freeze, threads_start


def test_threads_start_starts_every_thread_of_the_pool_at_once():
    executor = ThreadPoolExecutor(max_workers=12)
    try:
        assert threads_start(executor) == 12
        started = set(executor._threads)
        # Work submitted afterwards runs on those threads: no submit has to start one any more.
        names = {executor.submit(lambda: threading.current_thread().name).result() for _ in range(30)}
        assert set(executor._threads) == started
        assert names <= {t.name for t in started}
    finally:
        executor.shutdown()


def test_threads_start_gives_up_when_threads_are_busy():
    executor = ThreadPoolExecutor(max_workers=2)
    release = threading.Event()
    try:
        executor.submit(release.wait, 10)
        assert threads_start(executor, timeout=0.3) == 2  # returns; the busy thread is still there
    finally:
        release.set()
        executor.shutdown()


def test_heap_freeze_keeps_start_up_objects_out_of_collections():
    before = gc.get_freeze_count()
    try:
        heap_freeze()
        assert gc.get_freeze_count() > before
        # A full collection now walks only what was created since.
        assert len(gc.get_objects(generation=2)) < gc.get_freeze_count()
    finally:
        gc.unfreeze()
