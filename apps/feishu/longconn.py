"""Feishu long connection: one child process per bot running lark-oapi's ws client, under a supervisor.

Why processes: lark_oapi.ws grabs a module-global asyncio loop at import and `Client.start()` blocks
forever (there is no stop() in 1.7.5), so each connection lives in its own spawned process.

The child only feeds events to the same ingest service as the webhook (source=long_connection). It
publishes the time of the last frame it received (events, pongs, anything) and the ping interval the
server configured through shared memory; the parent restarts a child whose connection went silent for
longer than the ping interval allows (a reconnect that failed on credentials can leave the SDK
silently dead), restarts crashed children with backoff, picks up bots added or deactivated meanwhile,
and on SIGTERM/SIGINT terminates the children and exits.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.db import close_old_connections
from django.utils import timezone

# No model import at module level: a spawned child unpickles `_child_entry` from this module before
# it has called django.setup().
logger = structlog.get_logger(__name__)

DEFAULT_PING_INTERVAL = 120.0  # lark-oapi's default until the server's ClientConfig says otherwise


def _bot_model():
    from apps.bots.models import Bot

    return Bot


def bot_state_set(*, bot_id: int, state: str, detail: str = "") -> None:
    """Record the connection state shown in the admin."""
    Bot = _bot_model()
    Bot.objects.filter(pk=bot_id).update(
        connection_state=state, connection_detail=detail[:300], connection_updated_at=timezone.now()
    )


# --- child side -------------------------------------------------------------------------------


class IngestEventHandler:
    """Stands in for lark's EventDispatcherHandler: lark-oapi's ws client calls
    `_do_without_validation(payload)` for every event frame and sends back what it returns.

    The ORM runs on one dedicated thread (Django refuses sync DB access on a thread with a running
    event loop); the loop waits for it, so the ack goes out only after the rows are committed.
    """

    def __init__(self, *, bot_id: int) -> None:
        self.bot_id = bot_id
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self.current_state = ""

    def _ingest(self, payload: dict) -> dict | None:
        from apps.bots.models import Bot
        from apps.feishu.ingest import CARD_ACTION, InvalidEvent, event_ingest
        from apps.transcripts.models import InboundEvent

        try:
            bot = Bot.objects.get(pk=self.bot_id)
            header = payload.get("header")
            if not isinstance(header, dict):
                header = {}
            if payload.get("schema") != "2.0" or header.get("app_id") not in (None, "", bot.app_id):
                logger.warning("feishu.longconn_event_rejected", bot_id=self.bot_id, reason="schema or app_id")
                return None
            try:
                result = event_ingest(bot=bot, payload=payload, source=InboundEvent.Source.LONG_CONNECTION)
            except InvalidEvent as exc:
                # Acknowledged anyway: redelivering a malformed event would not make it valid.
                logger.warning("feishu.longconn_event_rejected", bot_id=self.bot_id, reason=str(exc))
                return None
            return result.response if header.get("event_type") == CARD_ACTION else None
        finally:
            close_old_connections()  # hand the connection back to the pool; a dead one is not reused

    def _do_without_validation(self, payload: bytes) -> Any:
        data = json.loads(payload.decode("utf-8"))
        # Errors (database down, ...) propagate: lark-oapi then answers 500 and Feishu redelivers.
        return self.db.submit(self._ingest, data).result()

    def state(self, state: str, detail: str = "") -> None:
        self.current_state = state
        self.db.submit(bot_state_set, bot_id=self.bot_id, state=state, detail=detail)

    def lost(self) -> None:
        # A failed connect already showed its error; keep it visible while lark-oapi retries.
        if self.current_state != "error":
            self.state("connecting", "connection lost; reconnecting")


def _tracked_client_class():
    from apps.feishu.client.lark_light import lark_full

    lark = lark_full()

    from apps.bots.models import Bot

    class TrackedClient(lark.ws.Client):
        """lark-oapi ws client that reports every received frame and its connection state."""

        def __init__(self, *args, last_frame, ping_interval, handler: IngestEventHandler, **kwargs):
            super().__init__(*args, event_handler=handler, **kwargs)
            self._last_frame = last_frame
            self._ping_shared = ping_interval
            self._handler = handler
            self.on_reconnecting = handler.lost

        def _beat(self) -> None:
            self._last_frame.value = time.time()
            self._ping_shared.value = float(self._ping_interval or DEFAULT_PING_INTERVAL)

        async def _connect(self) -> None:
            try:
                await super()._connect()
            except Exception as exc:  # shown in the admin; lark-oapi itself decides whether to retry
                self._handler.state(Bot.ConnectionState.ERROR, f"connect failed: {type(exc).__name__}: {exc}")
                raise
            if self._conn is not None:
                self._beat()
                self._handler.state(Bot.ConnectionState.CONNECTED, f"connected ({self._conn_id})")

        async def _handle_message(self, msg: bytes) -> None:
            self._beat()
            await super()._handle_message(msg)

    return TrackedClient


def bot_connection_run(*, bot_id: int, last_frame, ping_interval) -> None:
    """Hold one bot's long connection until the process is terminated."""
    from apps.feishu.client.lark_light import lark_full

    lark = lark_full()

    from apps.bots.models import Bot

    bot = Bot.objects.get(pk=bot_id)
    close_old_connections()
    handler = IngestEventHandler(bot_id=bot_id)
    handler.state(Bot.ConnectionState.CONNECTING, "starting")
    if not bot.bot_open_id:
        try:  # needed to recognise @mentions of the bot; the ingest fetches it lazily otherwise
            from apps.feishu.ingest import bot_open_id_ensure

            handler.db.submit(bot_open_id_ensure, bot=bot).result()
        except Exception as exc:
            logger.warning("feishu.longconn_bot_info_failed", bot_id=bot_id, error=str(exc)[:200])
    client = _tracked_client_class()(
        bot.app_id,
        bot.app_secret,
        domain=bot.base_url.rstrip("/"),
        auto_reconnect=True,
        log_level=lark.LogLevel.INFO,
        last_frame=last_frame,
        ping_interval=ping_interval,
        handler=handler,
    )
    try:
        client.start()
    except Exception as exc:
        handler.db.submit(
            bot_state_set, bot_id=bot_id, state=Bot.ConnectionState.ERROR, detail=f"{type(exc).__name__}: {exc}"
        ).result()
        raise


def _child_entry(bot_id: int, last_frame, ping_interval) -> None:
    import django

    django.setup()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when children stop
    try:
        bot_connection_run(bot_id=bot_id, last_frame=last_frame, ping_interval=ping_interval)
    except Exception:
        logger.exception("feishu.longconn_child_failed", bot_id=bot_id)
        raise SystemExit(2) from None


# --- parent side ------------------------------------------------------------------------------


@dataclass
class _Child:
    bot_id: int
    app_id: str
    process: Any = None
    last_frame: Any = None
    ping_interval: Any = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    restarts: list[str] = field(default_factory=list)


class Supervisor:
    """Keeps one child process per bot alive and talking."""

    def __init__(
        self, *, app_ids: list[str] | None = None, grace: float = 30.0, refresh: float = 30.0, tick: float = 0.5
    ) -> None:
        self.app_ids = app_ids or []
        self.grace = grace
        self.refresh = refresh
        self.tick = tick
        self.ctx = multiprocessing.get_context("spawn")
        self.children: dict[int, _Child] = {}
        self.stopping = threading.Event()
        self._last_refresh = 0.0

    # bots ----------------------------------------------------------------------------------
    def wanted_bots(self) -> dict[int, str]:
        Bot = _bot_model()
        bots = Bot.objects.filter(is_active=True, tenant__is_active=True)
        # Named bots are held whatever their mode; otherwise every long-connection bot.
        bots = bots.filter(app_id__in=self.app_ids) if self.app_ids else bots.filter(mode=Bot.Mode.LONG_CONNECTION)
        return dict(bots.values_list("id", "app_id"))

    def _refresh(self) -> None:
        try:
            wanted = self.wanted_bots()
        except Exception:
            logger.warning("feishu.longconn_refresh_failed", exc_info=True)
            return
        finally:
            close_old_connections()
        for bot_id, app_id in wanted.items():
            if bot_id not in self.children:
                self.children[bot_id] = _Child(bot_id=bot_id, app_id=app_id)
                self._start(self.children[bot_id])
        for bot_id in [b for b in self.children if b not in wanted]:
            logger.info("feishu.longconn_bot_removed", bot_id=bot_id)
            self._stop(self.children.pop(bot_id), detail="bot deactivated or no longer in long-connection mode")

    # children ------------------------------------------------------------------------------
    def _start(self, child: _Child) -> None:
        child.last_frame = self.ctx.Value("d", 0.0, lock=False)
        child.ping_interval = self.ctx.Value("d", DEFAULT_PING_INTERVAL, lock=False)
        child.process = self.ctx.Process(
            target=_child_entry,
            args=(child.bot_id, child.last_frame, child.ping_interval),
            name=f"feishu-ws-{child.app_id}",
            daemon=True,
        )
        child.process.start()
        child.started_at = time.time()
        logger.info("feishu.longconn_child_started", bot_id=child.bot_id, app_id=child.app_id, pid=child.process.pid)

    def _stop(self, child: _Child, *, detail: str) -> None:
        Bot = _bot_model()
        proc = child.process
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        child.process = None
        self._state(child.bot_id, Bot.ConnectionState.DISCONNECTED, detail)

    def _state(self, bot_id: int, state: str, detail: str) -> None:
        try:
            bot_state_set(bot_id=bot_id, state=state, detail=detail)
        except Exception:
            logger.warning("feishu.longconn_state_write_failed", bot_id=bot_id, exc_info=True)
        finally:
            close_old_connections()

    def silence_limit(self, child: _Child) -> float:
        return float(child.ping_interval.value or DEFAULT_PING_INTERVAL) + self.grace

    def check(self, child: _Child, now: float) -> None:
        Bot = _bot_model()
        proc = child.process
        if proc is None:
            if now >= child.restart_at:
                self._start(child)
            return
        if not proc.is_alive():
            child.failures += 1
            delay = min(60.0, 2.0 ** min(child.failures, 6))
            detail = f"connection process exited with code {proc.exitcode}; restarting in {delay:.0f}s"
            logger.warning("feishu.longconn_child_exited", bot_id=child.bot_id, exitcode=proc.exitcode)
            child.process = None
            child.restart_at = now + delay
            child.restarts.append("exited")
            self._state(child.bot_id, Bot.ConnectionState.ERROR, detail)
            return
        last = max(child.last_frame.value, child.started_at)
        silent_for = now - last
        if silent_for > self.silence_limit(child):
            logger.warning("feishu.longconn_silent", bot_id=child.bot_id, silent_for=round(silent_for, 1))
            child.restarts.append("silent")
            self._stop(child, detail=f"no frame for {silent_for:.0f}s; reconnecting")
            self._state(child.bot_id, Bot.ConnectionState.CONNECTING, f"restarted after {silent_for:.0f}s of silence")
            self._start(child)
            return
        if child.last_frame.value > child.started_at:
            child.failures = 0  # it talked to the server: reset the crash backoff

    def request_stop(self, *_args) -> None:
        self.stopping.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            while not self.stopping.is_set():
                now = time.time()
                if now - self._last_refresh >= self.refresh:
                    self._last_refresh = now
                    self._refresh()
                for child in list(self.children.values()):
                    self.check(child, now)
                self.stopping.wait(self.tick)
        finally:
            for child in self.children.values():
                self._stop(child, detail="listener stopped")
            logger.info("feishu.longconn_stopped", bots=len(self.children))
