"""Publish web chat events to the channel layer from sync code (the turn's worker thread), in order.

Why not ``async_to_sync(layer.group_send)`` per event: from a plain thread it starts a new thread,
a new event loop and a new Redis connection every call (~tens of ms here, once per streamed token),
and with the in-memory layer of the embedded default it would touch ``asyncio.Queue`` objects of
the server's loop from another loop, which is not thread-safe (the socket would see events late).

So events go through one sender per event loop, draining a FIFO queue (order is kept per
process): on the loop that serves the web chat sockets when this process has one (``attach`` is
called by the consumer; that is where the in-memory layer's queues live), otherwise on a
background loop owned by this module (a Celery worker).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from typing import Any

import structlog
from channels.layers import get_channel_layer

logger = structlog.get_logger(__name__)

FLUSH_TIMEOUT = 2.0


class _Sender:
    """A FIFO queue drained by one task on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue  # made on the loop (start)
        started = threading.Event()

        def start() -> None:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._drain())
            started.set()

        if _on_loop_thread(loop):
            start()
        else:
            loop.call_soon_threadsafe(start)
            if not started.wait(FLUSH_TIMEOUT):
                raise RuntimeError("web chat publisher loop is not running")

    async def _drain(self) -> None:
        layer = get_channel_layer()
        while True:
            item = await self.queue.get()
            if item is None:  # detached: everything queued before went out
                return
            group, message, done = item
            try:
                await layer.group_send(group, message)
            except Exception as exc:  # the transcript is the source of truth; the page reloads it
                logger.warning("webchat.publish_failed", group=group, error=repr(exc))
            finally:
                if done is not None:
                    done.set()

    def put(self, item: tuple[str, dict[str, Any], threading.Event | None] | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def close(self) -> None:
        """Send what is queued, then stop the loop (our own loop, at process exit)."""
        if not self.alive:
            return
        finished = threading.Event()

        def watch() -> None:
            self.task.add_done_callback(lambda _: finished.set())

        self.put(None)
        self.loop.call_soon_threadsafe(watch)
        finished.wait(FLUSH_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def alive(self) -> bool:
        return self.loop.is_running() and not self.loop.is_closed() and not self.task.done()


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Publisher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._home: _Sender | None = None  # the loop serving this process's web chat sockets
        self._home_sockets = 0
        self._own: _Sender | None = None  # a background loop of our own
        self._pid = os.getpid()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on ``loop`` by a consumer that connects: events of this process are sent from there."""
        with self._lock:
            self._fork_check()
            if self._home is None or self._home.loop is not loop or not self._home.alive:
                self._home = _Sender(loop)
                self._home_sockets = 0
            self._home_sockets += 1

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on ``loop`` by a consumer that disconnects; the last one stops the sender there."""
        with self._lock:
            if self._home is None or self._home.loop is not loop:
                return
            self._home_sockets -= 1
            if self._home_sockets <= 0:
                self._home.put(None)
                self._home = None

    def publish(self, group: str, message: dict[str, Any], *, flush: bool = False) -> None:
        """Queue ``message`` for ``group``; with ``flush``, wait until it (and all before it) went out."""
        sender = self._sender()
        done = threading.Event() if flush and not _on_loop_thread(sender.loop) else None
        sender.put((group, message, done))
        if done is not None and not done.wait(FLUSH_TIMEOUT):
            logger.warning("webchat.publish_slow", group=group)

    def _sender(self) -> _Sender:
        with self._lock:
            self._fork_check()
            if self._home is not None and self._home.alive:
                return self._home
            if self._own is None or not self._own.alive:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="webchat-publisher", daemon=True)
                thread.start()
                self._own = _Sender(loop)
                atexit.register(self._own.close)
            return self._own

    def _fork_check(self) -> None:
        # A forked child (prefork pool) inherits the objects but not the threads running the loops.
        if os.getpid() != self._pid:
            self._home = self._own = None
            self._pid = os.getpid()


publisher = Publisher()
