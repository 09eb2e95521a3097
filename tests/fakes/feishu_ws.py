"""Feishu playing the other side of ingress: event payloads as Feishu pushes them, and a fake long-connection
server that lark-oapi 1.7.5's real ws client connects to.

Long connection wire (lark_oapi/ws/client.py):
- `POST {domain}/callback/ws/endpoint` {"AppID", "AppSecret"} → {"code": 0, "data": {"URL": "ws://..?device_id=..
  &service_id=..", "ClientConfig": {...}}}
- a WebSocket of binary `pbbp2.Frame`s: method=0 control (`type=ping` from the client, we answer
  `type=pong`), method=1 data (`type=event` with `message_id`, `trace_id`, `sum`, `seq` headers, JSON
  payload); the client acks a data frame by sending it back with payload `{"code": 200, "data": b64(result)}`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from apps.feishu.events import event_encrypt, event_sign

DEFAULT_TOKEN = "verification-token-plaintext"  # tests.factories.BotFactory's verification_token

# --- event payloads ---------------------------------------------------------------------------


def _header(*, app_id: str, event_type: str, event_id: str | None, token: str, create_time_ms: int | None) -> dict:
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "event_type": event_type,
        "create_time": str(create_time_ms if create_time_ms is not None else int(time.time() * 1000)),
        "token": token,
        "app_id": app_id,
        "tenant_key": "2ca1d211f64f6438",
    }


def mention(key: str, open_id: str, name: str) -> dict:
    return {
        "key": key,
        "id": {"open_id": open_id, "union_id": f"on_{open_id[3:]}", "user_id": ""},
        "name": name,
        "tenant_key": "2ca1d211f64f6438",
    }


def message_event(
    *,
    app_id: str,
    text: str = "hello",
    message_type: str = "text",
    content: dict | None = None,
    event_id: str | None = None,
    message_id: str | None = None,
    chat_id: str = "oc_chat_p2p_1",
    chat_type: str = "p2p",
    thread_id: str = "",
    mentions: list[dict] | None = None,
    sender_open_id: str = "ou_user_1",
    sender_type: str = "user",
    token: str = DEFAULT_TOKEN,
    create_time_ms: int | None = None,
) -> dict:
    """An im.message.receive_v1 event, schema 2.0, shaped like Feishu's."""
    header = _header(
        app_id=app_id,
        event_type="im.message.receive_v1",
        event_id=event_id,
        token=token,
        create_time_ms=create_time_ms,
    )
    message = {
        "message_id": message_id or f"om_{uuid.uuid4().hex}",
        "root_id": "",
        "parent_id": "",
        "create_time": header["create_time"],
        "update_time": header["create_time"],
        "chat_id": chat_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": json.dumps(content if content is not None else {"text": text}, ensure_ascii=False),
        "mentions": mentions or [],
        "user_agent": "Mozilla/5.0 Lark/7.30.0",
    }
    if thread_id:
        message.update(thread_id=thread_id, root_id="om_root_" + thread_id)
    return {
        "schema": "2.0",
        "header": header,
        "event": {
            "sender": {
                "sender_id": {"open_id": sender_open_id, "union_id": f"on_{sender_open_id[3:]}", "user_id": "u1"},
                "sender_type": sender_type,
                "tenant_key": "2ca1d211f64f6438",
            },
            "message": message,
        },
    }


def bot_added_event(
    *,
    app_id: str,
    chat_id: str = "oc_group_1",
    event_id: str | None = None,
    token: str = DEFAULT_TOKEN,
    create_time_ms: int | None = None,
) -> dict:
    return {
        "schema": "2.0",
        "header": _header(
            app_id=app_id,
            event_type="im.chat.member.bot.added_v1",
            event_id=event_id,
            token=token,
            create_time_ms=create_time_ms,
        ),
        "event": {
            "chat_id": chat_id,
            "operator_id": {"open_id": "ou_user_1", "union_id": "on_user_1", "user_id": "u1"},
            "external": False,
            "operator_tenant_key": "2ca1d211f64f6438",
            "name": "Case team",
            "i18n_names": {"zh_cn": "案件组", "en_us": "Case team"},
        },
    }


def card_action_event(
    *,
    app_id: str,
    value: dict,
    operator_open_id: str = "ou_user_1",
    event_id: str | None = None,
    token: str = DEFAULT_TOKEN,
    open_message_id: str = "om_card_1",
    chat_id: str = "oc_chat_p2p_1",
) -> dict:
    """card.action.trigger (card JSON 2.0 button click), as pushed to the callback URL."""
    return {
        "schema": "2.0",
        "header": _header(
            app_id=app_id, event_type="card.action.trigger", event_id=event_id, token=token, create_time_ms=None
        ),
        "event": {
            "operator": {
                "tenant_key": "2ca1d211f64f6438",
                "user_id": "u1",
                "open_id": operator_open_id,
                "union_id": "on_user_1",
            },
            "token": "c-" + uuid.uuid4().hex,
            "action": {"value": value, "tag": "button", "timezone": "Asia/Shanghai"},
            "host": "im_message",
            "context": {"open_message_id": open_message_id, "open_chat_id": chat_id},
        },
    }


def url_verification(*, challenge: str = "ajls384kdjx98XX", token: str = DEFAULT_TOKEN) -> dict:
    return {"challenge": challenge, "token": token, "type": "url_verification"}


def webhook_request(
    payload: dict, *, encrypt_key: str = "", timestamp: int | None = None, nonce: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) exactly as Feishu sends them: encrypted and signed when the app has an encrypt key."""
    plaintext = json.dumps(payload, ensure_ascii=False)
    body = (
        json.dumps({"encrypt": event_encrypt(encrypt_key=encrypt_key, plaintext=plaintext)})
        if encrypt_key
        else plaintext
    ).encode()
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = nonce or secrets.token_hex(8)
    headers = {"Content-Type": "application/json", "X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce}
    if encrypt_key:
        headers["X-Lark-Signature"] = event_sign(timestamp=ts, nonce=nonce, encrypt_key=encrypt_key, body=body)
    return body, headers


def django_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers for django.test.Client (HTTP_X_LARK_... meta keys)."""
    return {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items() if k != "Content-Type"}


# --- fake long-connection server --------------------------------------------------------------


@dataclass
class WSConnection:
    """One WebSocket a client opened."""

    app_id: str
    device_id: str
    ws: Any
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    pings: int = 0


class FakeFeishuWS:
    """A Feishu long-connection endpoint on 127.0.0.1, run in its own thread and event loop.

    `apps` maps app_id → app_secret (others are refused like Feishu does). `push_event` sends an event
    frame to the app's newest connection and returns the client's ack; `mute` stops answering pings,
    so the client goes silent the way a dead connection does.
    """

    def __init__(
        self,
        *,
        upstream: str = "",
        apps: dict[str, str] | None = None,
        ping_interval: int = 120,
        reconnect_interval: int = 1,
        reconnect_nonce: int = 0,
        service_id: int = 1,
    ) -> None:
        self.apps = dict(apps or {})
        # Every other path (the Open API) is forwarded here, e.g. to tests.fakes.feishu's server, so one
        # bot base_url serves both the long connection and the API calls, as on Feishu.
        self.upstream = upstream.rstrip("/")
        self.ping_interval = ping_interval
        self.reconnect_interval = reconnect_interval
        self.reconnect_nonce = reconnect_nonce
        self.service_id = service_id
        self.connections: list[WSConnection] = []
        self.endpoint_calls: list[dict] = []
        self.acks: list[dict] = []
        self.muted: set[str] = set()
        self._devices: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # server --------------------------------------------------------------------------------
    async def _endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.endpoint_calls.append(body)
        app_id, secret = body.get("AppID"), body.get("AppSecret")
        if app_id not in self.apps or self.apps[app_id] != secret:
            return web.json_response({"code": 1000040343, "msg": "app id or secret invalid", "data": None})
        device_id = f"dev{next(self._ids)}"
        self._devices[device_id] = app_id
        return web.json_response(
            {
                "code": 0,
                "msg": "ok",
                "data": {
                    "URL": f"ws://127.0.0.1:{self.port}/ws?device_id={device_id}&service_id={self.service_id}",
                    "ClientConfig": {
                        "ReconnectCount": -1,
                        "ReconnectInterval": self.reconnect_interval,
                        "ReconnectNonce": self.reconnect_nonce,
                        "PingInterval": self.ping_interval,
                    },
                },
            }
        )

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        device_id = request.query.get("device_id", "")
        if device_id not in self._devices:
            raise web.HTTPForbidden(headers={"handshake-status": "403", "handshake-msg": "unknown device"})
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = WSConnection(app_id=self._devices[device_id], device_id=device_id, ws=ws)
        self.connections.append(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                frame = Frame()
                frame.ParseFromString(msg.data)
                headers = {h.key: h.value for h in frame.headers}
                if frame.method == 0 and headers.get("type") == "ping":
                    conn.pings += 1
                    if conn.app_id not in self.muted:
                        await ws.send_bytes(self._frame(0, {"type": "pong"}, b"").SerializeToString())
                elif frame.method == 1:
                    ack = json.loads(frame.payload or b"{}")
                    data = ack.get("data")
                    ack["result"] = json.loads(base64.b64decode(data)) if data else None
                    ack["message_id"] = headers.get("message_id")
                    self.acks.append(ack)
                    waiter = self._waiters.pop(headers.get("message_id", ""), None)
                    if waiter and not waiter.done():
                        waiter.set_result(ack)
        finally:
            conn.closed_at = time.time()
        return ws

    async def _proxy(self, request: web.Request) -> web.Response:
        import aiohttp

        hop = ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers=headers,
                data=await request.read(),
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),  # forward them as they came
            ) as upstream,
        ):
            body = await upstream.read()
            keep = {k: v for k, v in upstream.headers.items() if k.lower().startswith(("content-type", "x-"))}
            return web.Response(status=upstream.status, body=body, headers=keep)

    def _frame(self, method: int, headers: dict[str, str], payload: bytes):
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        frame = Frame()
        frame.SeqID = next(self._ids)
        frame.LogID = 0
        frame.service = self.service_id
        frame.method = method
        for key, value in headers.items():
            h = frame.headers.add()
            h.key, h.value = key, value
        frame.payload = payload
        return frame

    def start(self) -> FakeFeishuWS:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/callback/ws/endpoint", self._endpoint)
            app.router.add_get("/ws", self._ws)
            if self.upstream:
                app.router.add_route("*", "/{tail:.*}", self._proxy)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-feishu-ws", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:

            async def close_all() -> None:
                for conn in self.connections:
                    if conn.closed_at is None:
                        await conn.ws.close()

            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # test API ------------------------------------------------------------------------------
    def open_connections(self, app_id: str) -> list[WSConnection]:
        return [c for c in self.connections if c.app_id == app_id and c.closed_at is None]

    def wait_connected(self, app_id: str, *, count: int = 1, timeout: float = 30.0) -> WSConnection:
        """Wait until `app_id` has opened at least `count` connections in total and one is open."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            opened = [c for c in self.connections if c.app_id == app_id]
            if len(opened) >= count and self.open_connections(app_id):
                return self.open_connections(app_id)[-1]
            time.sleep(0.05)
        raise TimeoutError(f"{app_id}: {len(self.connections)} connection(s), wanted {count}")

    def wait_pinged(self, app_id: str, *, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(c.pings for c in self.open_connections(app_id)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{app_id}: no ping")

    def mute(self, app_id: str) -> None:
        self.muted.add(app_id)

    def unmute(self, app_id: str) -> None:
        self.muted.discard(app_id)

    def push_event(self, app_id: str, payload: dict, *, timeout: float = 15.0) -> dict:
        """Send an event frame to the app's newest connection; return the client's ack
        ({"code": 200|500, "result": <handler return value or None>, ...})."""
        assert self._loop is not None
        message_id = f"msg_{uuid.uuid4().hex}"

        async def send() -> asyncio.Future:
            conn = self.open_connections(app_id)[-1]
            waiter = self._loop.create_future()
            self._waiters[message_id] = waiter
            frame = self._frame(
                1,
                {"type": "event", "message_id": message_id, "trace_id": uuid.uuid4().hex, "sum": "1", "seq": "0"},
                json.dumps(payload, ensure_ascii=False).encode(),
            )
            await conn.ws.send_bytes(frame.SerializeToString())
            return await asyncio.wait_for(waiter, timeout)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout + 1)


# --- observing the dispatch -------------------------------------------------------------------


class CeleryQueue:
    """Tasks waiting on the Celery Redis broker (default queue), as the real dispatch published them."""

    def __init__(self, broker_url: str, queue: str = "celery") -> None:
        import redis

        self.redis = redis.Redis.from_url(broker_url)
        self.queue = queue

    def clear(self) -> None:
        self.redis.delete(self.queue)

    def tasks(self, name: str) -> list[list]:
        """Positional args of every queued task called `name`, oldest first."""
        out = []
        for raw in reversed(self.redis.lrange(self.queue, 0, -1)):
            message = json.loads(raw)
            if message["headers"]["task"] == name:
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                out.append(args)
        return out

    def conversations(self) -> list[int]:
        return [args[0] for args in self.tasks("runtime.conversation_process")]
