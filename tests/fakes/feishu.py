"""A fake Feishu Open API: a real HTTP server speaking Feishu's wire format.

Drive the real lark-oapi client (through apps.feishu.client) against it. It issues and checks tenant
tokens, validates request shapes like Feishu (content must be a JSON string, known msg_type, 230001
for bad content), deduplicates sends on `uuid`, enforces strictly increasing CardKit sequences
(300317), records every request, and injects faults on demand (429 with x-ogw-ratelimit-reset, 5xx,
slow answers, token invalidation, error codes per path).

    fake = FakeFeishu().start()        # background thread with its own event loop
    fake.base_url                      # "http://127.0.0.1:<port>": use as Bot.base_url
    fake.inject_rate_limit(times=2, reset=1)
    ...
    fake.messages, fake.requests, fake.requests_to("/im/v1/messages")
    fake.stop()

Local dev / benchmarks: `python -m tests.fakes.feishu --port 9100`.
Not importing Django: usable from any process.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import itertools
import json
import re
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.feishu_data import (
    BITABLE_OPERATORS,
    DEFAULT_BITABLES,
    DEFAULT_DOCS,
    EMOJI_TYPES,
    FILE_TYPES,
    MSG_TYPES,
    POST_LOCALES,
    RECEIVE_ID_TYPES,
    bitable_condition_matches,
)

TOKEN_PATHS = ("/open-apis/auth/v3/tenant_access_token/internal", "/open-apis/auth/v3/app_access_token/internal")

# Feishu error codes used by the fake.
OK = 0
FIELD_VALIDATION = 99992402
MISSING_TOKEN = 99991661
INVALID_TOKEN = 99991663
INVALID_USER_TOKEN = 99991668
RATE_LIMITED = 99991400
INVALID_APP_ID = 10003
INVALID_APP_SECRET = 10014
BAD_CONTENT = 230001
CONTENT_TOO_LONG = 230025
MESSAGE_NOT_FOUND = 230011
REACTION_INVALID = 231001
REACTION_NOT_FOUND = 231003
RESOURCE_NOT_FOUND = 234003
UPLOAD_INVALID = 234001
CARD_INVALID = 300301
CARD_NOT_FOUND = 300302
CARD_ELEMENT_NOT_FOUND = 300303
CARD_STREAMING_CLOSED = 300309
CARD_SEQUENCE_CONFLICT = 300317
BITABLE_TABLE_NOT_FOUND = 1254004
DOC_NOT_FOUND = 1770002

UUID_WINDOW = 3600.0  # Feishu deduplicates a uuid for one hour
MAX_TEXT_BYTES = 150 * 1024
MAX_CARD_BYTES = 30 * 1024


@dataclass
class RecordedRequest:
    """One request as the fake received it (and what it answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)  # field -> {"filename", "size", "content_type"}
    time: float = 0.0
    status: int = 0
    code: int | None = None
    log_id: str = ""
    fault: str = ""  # which injected fault answered it, if any
    deduplicated: bool = False
    peer: str = ""  # client address:port, tells whether connections are reused

    @property
    def token(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


@dataclass
class Fault:
    path: str | None  # regex searched in the path; None: every API path except the token endpoints
    method: str | None
    times: int | None  # None: until cleared
    status: int = 0  # 0: no error answer, only the delay
    code: int = 0
    msg: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    html: bool = False  # answer a gateway-style non-JSON body
    name: str = ""
    delay_answer: float = 0.0  # process the request normally, then hold the answer back this long

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.path is None:
            return path not in TOKEN_PATHS
        return re.search(self.path, path) is not None


class FeishuAPIError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(code, msg)
        self.code, self.msg, self.status = code, msg, status


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    handler: Callable
    auth: bool = True


class FakeFeishu:
    """The fake server and its state. Thread-safe: handlers run on the server thread, tests read."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_expire: int = 7200,
        strict_apps: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.host, self.port = host, port
        self.ssl_context = ssl_context  # serve https (see self_signed_certificate) like the real thing
        self.token_expire = token_expire
        # strict: only apps added with add_app() get tokens; otherwise an unknown app is registered with
        # the secret it first presents (a later different secret is still rejected).
        self.strict_apps = strict_apps
        self.require_user_token_for_search = False
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._routes: list[_Route] = []
        self._add_routes()
        self.reset()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> FakeFeishu:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surface bind errors to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-feishu", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    async def _serve(self) -> None:
        app = web.Application(client_max_size=40 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()

    def reset(self) -> None:
        """Forget everything: requests, messages, tokens, faults, cards; restore canned data."""
        with self._lock:
            self.apps: dict[str, dict] = {}
            self.tokens: dict[str, dict] = {}  # token -> {"app_id", "expires_at", "revoked"}
            self.user_tokens: dict[str, dict] = {}  # token -> {"app_id", "open_id"}
            self._requests: list[RecordedRequest] = []
            self._messages: list[dict] = []
            self._messages_by_id: dict[str, dict] = {}
            self._uuids: dict[tuple[str, str], tuple[str, float]] = {}
            self.known_message_ids: set[str] = set()  # inbound messages replies may target (om_* also accepted)
            self.reactions: dict[str, dict] = {}
            self.resources: dict[tuple[str, str], tuple[bytes, str]] = {}
            self.uploads: dict[str, dict] = {}
            self.cards: dict[str, dict] = {}
            self._faults: list[Fault] = []
            self.docs: list[dict] = copy.deepcopy(DEFAULT_DOCS)
            self.documents: dict[str, str] = {d["token"]: d["text"] for d in self.docs}
            self.bitables: dict[tuple[str, str], list[dict]] = copy.deepcopy(DEFAULT_BITABLES)

    # --- setup helpers ----------------------------------------------------------------------------

    def add_app(self, app_id: str, app_secret: str, *, open_id: str = "", name: str = "") -> dict:
        with self._lock:
            self.apps[app_id] = {
                "app_secret": app_secret,
                "open_id": open_id or "ou_bot_" + hashlib.sha256(app_id.encode()).hexdigest()[:24],
                "name": name or f"Bot {app_id}",
            }
            return self.apps[app_id]

    def add_user_token(self, token: str, *, app_id: str, open_id: str) -> None:
        with self._lock:
            self.user_tokens[token] = {"app_id": app_id, "open_id": open_id}

    def put_resource(self, message_id: str, file_key: str, data: bytes, name: str = "file.bin") -> None:
        """Make an inbound message's attachment downloadable."""
        with self._lock:
            self.resources[(message_id, file_key)] = (data, name)

    # --- fault injection ----------------------------------------------------------------------------

    def inject(
        self,
        path: str | None = None,
        *,
        method: str | None = None,
        times: int | None = 1,
        status: int = 0,
        code: int = 0,
        msg: str = "",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        html: bool = False,
        name: str = "custom",
    ) -> Fault:
        """Generic fault: the next `times` matching requests wait `delay`, then (if status) get this answer."""
        fault = Fault(path, method, times, status, code, msg, dict(headers or {}), delay, html, name)
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject_rate_limit(self, *, times: int = 1, reset: int = 1, path: str | None = None, status: int = 429) -> Fault:
        return self.inject(
            path, times=times, status=status, code=RATE_LIMITED, msg="request trigger frequency limit",
            headers={"x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": str(reset)}, name="rate_limit",
        )  # fmt: skip

    def inject_server_error(self, *, times: int = 1, status: int = 503, path: str | None = None) -> Fault:
        return self.inject(path, times=times, status=status, html=True, name=f"http_{status}")

    def inject_delay(self, seconds: float, *, times: int = 1, path: str | None = None) -> Fault:
        """Slow request: wait `seconds`, then handle it (it is applied late, after a client may have retried)."""
        return self.inject(path, times=times, delay=seconds, name="delay")

    def inject_slow_answer(self, seconds: float, *, times: int = 1, path: str | None = None) -> Fault:
        """Lost answer: the request is applied at once, the answer comes `seconds` later."""
        fault = Fault(path, None, times, name="slow_answer", delay_answer=seconds)
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject_error(
        self, code: int, *, path: str | None = None, times: int | None = None, status: int = 400, msg: str = ""
    ) -> Fault:
        """A Feishu error code for a path (default: until clear_faults())."""
        return self.inject(path, times=times, status=status, code=code, msg=msg or f"injected error {code}",
                           name=f"code_{code}")  # fmt: skip

    def invalidate_tokens(self, app_id: str | None = None) -> None:
        """Revoke every issued tenant token (of one app): the next call with one gets 99991663."""
        with self._lock:
            for info in self.tokens.values():
                if app_id is None or info["app_id"] == app_id:
                    info["revoked"] = True

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # --- what the fake saw ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every request received so far has been answered (e.g. a delayed one a client gave up on)."""
        deadline = time.monotonic() + timeout
        while any(r.status == 0 for r in self.requests):
            if time.monotonic() > deadline:
                raise TimeoutError("fake Feishu still has unanswered requests")
            time.sleep(0.02)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path matches the regex `path` (and method)."""
        return [r for r in self.requests if re.search(path, r.path) and (method is None or r.method == method.upper())]

    @property
    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path in TOKEN_PATHS]

    @property
    def messages(self) -> list[dict]:
        """Messages that exist in the chats (a deduplicated resend adds none)."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def message(self, message_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._messages_by_id[message_id])

    def card(self, card_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.cards[card_id])

    # --- dispatch ----------------------------------------------------------------------------

    def _route(self, method: str, pattern: str, handler: Callable, *, auth: bool = True) -> None:
        regex = "^" + re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern) + "$"
        self._routes.append(_Route(method, re.compile(regex), handler, auth))

    def _add_routes(self) -> None:
        r = self._route
        r("POST", "/open-apis/auth/v3/tenant_access_token/internal", self._h_tenant_token, auth=False)
        r("POST", "/open-apis/auth/v3/app_access_token/internal", self._h_tenant_token, auth=False)
        r("GET", "/open-apis/bot/v3/info", self._h_bot_info)
        r("POST", "/open-apis/im/v1/messages", self._h_message_create)
        r("POST", "/open-apis/im/v1/messages/:message_id/reply", self._h_message_reply)
        r("PATCH", "/open-apis/im/v1/messages/:message_id", self._h_message_patch)
        r("POST", "/open-apis/im/v1/messages/:message_id/reactions", self._h_reaction_create)
        r("DELETE", "/open-apis/im/v1/messages/:message_id/reactions/:reaction_id", self._h_reaction_delete)
        r("GET", "/open-apis/im/v1/messages/:message_id/resources/:file_key", self._h_resource_get)
        r("POST", "/open-apis/im/v1/images", self._h_image_upload)
        r("POST", "/open-apis/im/v1/files", self._h_file_upload)
        r("POST", "/open-apis/cardkit/v1/cards", self._h_card_create)
        r("PUT", "/open-apis/cardkit/v1/cards/:card_id/elements/:element_id/content", self._h_card_content)
        r("PATCH", "/open-apis/cardkit/v1/cards/:card_id/settings", self._h_card_settings)
        r("POST", "/open-apis/search/v2/doc_wiki/search", self._h_doc_search)
        r("POST", "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/search", self._h_bitable_search)
        r("GET", "/open-apis/docx/v1/documents/:document_id/raw_content", self._h_docx_raw)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        multipart_form = None
        if content_type.startswith("multipart/form-data"):
            try:
                multipart_form = await request.post()
            except Exception:  # malformed multipart: the handler answers field validation
                multipart_form = {}
            raw = b""
        else:
            raw = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=raw,
            time=time.time(),
            log_id=f"{time.strftime('%Y%m%d%H%M%S')}{next(self._ids):010X}",
            peer=_peer(request),
        )
        # lark-oapi's token request carries no Content-Type; Feishu reads it as JSON anyway
        if raw and (content_type.startswith("application/json") or not content_type):
            try:
                rec.json = json.loads(raw)
            except ValueError:
                rec.json = None
        if multipart_form is not None:
            for name, value in multipart_form.items():
                if isinstance(value, web.FileField):
                    data = value.file.read()
                    rec.files[name] = {
                        "filename": value.filename, "size": len(data), "content_type": value.content_type,
                        "data": data,
                    }  # fmt: skip
                else:
                    rec.form[name] = str(value)
        with self._lock:
            self._requests.append(rec)
            fault = next((f for f in self._faults if f.matches(rec.method, rec.path)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status:
                rec.fault = fault.name
                return self._answer_fault(rec, fault)
        try:
            payload, status, extra = self._handle(rec)
        except FeishuAPIError as exc:
            payload, status, extra = {"code": exc.code, "msg": exc.msg}, exc.status, {}
        if fault is not None and fault.delay_answer:
            rec.fault = fault.name
            await asyncio.sleep(fault.delay_answer)
        if isinstance(payload, web.Response):
            rec.status, rec.code = payload.status, 0
            payload.headers["X-Tt-Logid"] = rec.log_id
            return payload
        if payload.get("code"):
            payload.setdefault("error", {"log_id": rec.log_id})
        rec.status, rec.code = status, payload.get("code")
        return web.json_response(payload, status=status, headers={"X-Tt-Logid": rec.log_id, **extra})

    def _answer_fault(self, rec: RecordedRequest, fault: Fault) -> web.Response:
        headers = {"X-Tt-Logid": rec.log_id, **fault.headers}
        rec.status = fault.status
        if fault.html:
            rec.code = None
            return web.Response(
                status=fault.status, text=f"<html><body>{fault.status} gateway error</body></html>",
                content_type="text/html", headers=headers,
            )  # fmt: skip
        rec.code = fault.code
        body = {"code": fault.code, "msg": fault.msg or "injected", "error": {"log_id": rec.log_id}}
        return web.json_response(body, status=fault.status, headers=headers)

    def _handle(self, rec: RecordedRequest) -> tuple[Any, int, dict]:
        for route in self._routes:
            if route.method != rec.method:
                continue
            m = route.pattern.match(rec.path)
            if m is None:
                continue
            with self._lock:
                auth = self._authenticate(rec) if route.auth else {}
                result = route.handler(rec, auth, **m.groupdict())
            if isinstance(result, web.Response):
                return result, result.status, {}
            return result, 200, {}
        raise FeishuAPIError(404, f"404 page not found: {rec.method} {rec.path}", status=404)

    def _authenticate(self, rec: RecordedRequest) -> dict:
        header = rec.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise FeishuAPIError(
                MISSING_TOKEN, "Missing access token for authorization. Please make a request with token attached."
            )
        token = header[7:].strip()
        if token in self.user_tokens:
            return {"kind": "user", **self.user_tokens[token]}
        info = self.tokens.get(token)
        if info is None and token.startswith("u-"):
            raise FeishuAPIError(INVALID_USER_TOKEN, "Invalid access token for authorization (user token).")
        if info is None or info["revoked"] or info["expires_at"] < time.time():
            raise FeishuAPIError(
                INVALID_TOKEN, "Invalid access token for authorization. Please make a request with token attached."
            )
        return {"kind": "tenant", "app_id": info["app_id"]}

    # --- handlers: auth and bot ----------------------------------------------------------------------

    def _h_tenant_token(self, rec: RecordedRequest, auth: dict) -> dict:
        body = rec.json if isinstance(rec.json, dict) else {}
        app_id, secret = str(body.get("app_id") or ""), str(body.get("app_secret") or "")
        if not app_id or not secret:
            raise FeishuAPIError(INVALID_APP_ID, "app_id or app_secret is empty")
        app = self.apps.get(app_id)
        if app is None:
            if self.strict_apps:
                raise FeishuAPIError(INVALID_APP_ID, "invalid param: app_id not found")
            app = self.add_app(app_id, secret)
        if app["app_secret"] != secret:
            raise FeishuAPIError(INVALID_APP_SECRET, "app secret invalid")
        now = time.time()
        # like Feishu: the current token is returned again while it has more than 30 minutes left
        for token, info in self.tokens.items():
            if info["app_id"] == app_id and not info["revoked"] and info["expires_at"] - now > 1800:
                return self._token_answer(token, int(info["expires_at"] - now))
        token = "t-" + secrets.token_hex(16)
        self.tokens[token] = {"app_id": app_id, "expires_at": now + self.token_expire, "revoked": False}
        return self._token_answer(token, self.token_expire)

    @staticmethod
    def _token_answer(token: str, expire: int) -> dict:
        return {"code": 0, "msg": "ok", "tenant_access_token": token, "app_access_token": token, "expire": expire}

    def _h_bot_info(self, rec: RecordedRequest, auth: dict) -> dict:
        app = self.apps[auth["app_id"]]
        return {
            "code": 0,
            "msg": "ok",
            "bot": {
                "activate_status": 2, "app_name": app["name"], "avatar_url": "", "ip_white_list": [],
                "open_id": app["open_id"],
            },
        }  # fmt: skip

    # --- handlers: messages ----------------------------------------------------------------------

    def _h_message_create(self, rec: RecordedRequest, auth: dict) -> dict:
        receive_id_type = rec.query.get("receive_id_type", "")
        if receive_id_type not in RECEIVE_ID_TYPES:
            raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: receive_id_type {receive_id_type!r}")
        body = self._json_body(rec)
        receive_id = body.get("receive_id")
        if not isinstance(receive_id, str) or not receive_id:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: receive_id is required")
        if receive_id_type == "chat_id":
            chat_id = receive_id
        else:
            chat_id = "oc_p2p_" + hashlib.sha256(f"{auth['app_id']}:{receive_id}".encode()).hexdigest()[:24]
        return self._send(rec, auth, body, chat_id=chat_id, parent=None)

    def _h_message_reply(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        parent = self._messages_by_id.get(message_id)
        if parent is None and message_id not in self.known_message_ids and not message_id.startswith("om_"):
            raise FeishuAPIError(MESSAGE_NOT_FOUND, f"message {message_id} not found")
        reply_in_thread = bool(body.get("reply_in_thread"))
        chat_id = parent["chat_id"] if parent else "oc_chat_of_" + message_id
        return self._send(rec, auth, body, chat_id=chat_id, parent=message_id, reply_in_thread=reply_in_thread)

    def _send(
        self, rec: RecordedRequest, auth: dict, body: dict, *, chat_id: str, parent: str | None,
        reply_in_thread: bool = False,
    ) -> dict:  # fmt: skip
        msg_type = body.get("msg_type")
        if msg_type not in MSG_TYPES:
            raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: msg_type {msg_type!r}")
        uuid = body.get("uuid") or ""
        if not isinstance(uuid, str) or len(uuid) > 50:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: uuid longer than 50 characters")
        content = self._validate_content(msg_type, body.get("content"))
        now = time.time()
        if uuid:
            seen = self._uuids.get((auth["app_id"], uuid))
            if seen and now - seen[1] < UUID_WINDOW:
                rec.deduplicated = True
                return {"code": 0, "msg": "success", "data": self._message_data(self._messages_by_id[seen[0]])}
        message_id = "om_" + secrets.token_hex(16)
        parent_msg = self._messages_by_id.get(parent) if parent else None
        message = {
            "message_id": message_id,
            "app_id": auth["app_id"],
            "chat_id": chat_id,
            "msg_type": msg_type,
            "content": content,
            "content_raw": body["content"],
            "uuid": uuid,
            "parent_id": parent or "",
            "root_id": (parent_msg or {}).get("root_id") or parent or "",
            "thread_id": ("omt_" + hashlib.sha256((parent or "").encode()).hexdigest()[:16]) if reply_in_thread else "",
            "reply_in_thread": reply_in_thread,
            "create_time": str(int(now * 1000)),
            "updates": [],
        }
        if msg_type == "interactive" and content.get("type") == "card":
            message["card_id"] = content["data"]["card_id"]
        self._messages.append(message)
        self._messages_by_id[message_id] = message
        if uuid:
            self._uuids[(auth["app_id"], uuid)] = (message_id, now)
        return {"code": 0, "msg": "success", "data": self._message_data(message)}

    def _message_data(self, m: dict) -> dict:
        return {
            "message_id": m["message_id"], "root_id": m["root_id"], "parent_id": m["parent_id"],
            "thread_id": m["thread_id"], "msg_type": m["msg_type"], "create_time": m["create_time"],
            "update_time": m["create_time"], "deleted": False, "updated": bool(m["updates"]), "chat_id": m["chat_id"],
            "sender": {"id": m["app_id"], "id_type": "app_id", "sender_type": "app", "tenant_key": "fake-tenant"},
            "body": {"content": m["content_raw"]},
        }  # fmt: skip

    def _h_message_patch(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        message = self._messages_by_id.get(message_id)
        if message is None or message["app_id"] != auth["app_id"]:
            raise FeishuAPIError(MESSAGE_NOT_FOUND, f"message {message_id} not found or not sent by this bot")
        if message["msg_type"] != "interactive":
            raise FeishuAPIError(BAD_CONTENT, "only interactive (card) messages can be patched")
        content = self._validate_content("interactive", body.get("content"))
        message["updates"].append(message["content"])
        message["content"], message["content_raw"] = content, body["content"]
        return {"code": 0, "msg": "success", "data": {}}

    def _validate_content(self, msg_type: str, raw: Any) -> dict:
        if not isinstance(raw, str):
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: content must be a JSON string")
        limit = MAX_CARD_BYTES if msg_type == "interactive" else MAX_TEXT_BYTES
        if len(raw.encode()) > limit:
            raise FeishuAPIError(CONTENT_TOO_LONG, f"message content too long (>{limit} bytes)")
        try:
            content = json.loads(raw)
        except ValueError:
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: not JSON")
        if not isinstance(content, dict):
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: not a JSON object")
        problem = _content_problem(msg_type, content, self.cards, self.uploads)
        if problem:
            raise FeishuAPIError(BAD_CONTENT, f"invalid message content: {problem}")
        return content

    # --- handlers: reactions, resources, uploads -------------------------------------------------------

    def _h_reaction_create(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        emoji = ((body.get("reaction_type") or {}).get("emoji_type")) or ""
        if emoji not in EMOJI_TYPES:
            raise FeishuAPIError(REACTION_INVALID, f"reaction type is invalid: {emoji!r}")
        reaction_id = "ZCaCIjUBVVWSrm5L-" + secrets.token_hex(6)
        self.reactions[reaction_id] = {
            "reaction_id": reaction_id, "message_id": message_id, "emoji_type": emoji, "app_id": auth["app_id"],
            "deleted": False, "action_time": str(int(time.time() * 1000)),
        }  # fmt: skip
        return {"code": 0, "msg": "success", "data": self._reaction_data(self.reactions[reaction_id])}

    def _h_reaction_delete(self, rec: RecordedRequest, auth: dict, message_id: str, reaction_id: str) -> dict:
        reaction = self.reactions.get(reaction_id)
        if reaction is None or reaction["message_id"] != message_id or reaction["deleted"]:
            raise FeishuAPIError(REACTION_NOT_FOUND, "reaction not found")
        reaction["deleted"] = True
        return {"code": 0, "msg": "success", "data": self._reaction_data(reaction)}

    @staticmethod
    def _reaction_data(r: dict) -> dict:
        return {
            "reaction_id": r["reaction_id"], "action_time": r["action_time"],
            "operator": {"operator_id": r["app_id"], "operator_type": "app"},
            "reaction_type": {"emoji_type": r["emoji_type"]},
        }  # fmt: skip

    def _h_resource_get(self, rec: RecordedRequest, auth: dict, message_id: str, file_key: str) -> Any:
        if rec.query.get("type") not in ("image", "file"):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: type must be image or file")
        found = self.resources.get((message_id, file_key))
        if found is None and file_key in self.uploads:
            found = (self.uploads[file_key]["data"], self.uploads[file_key]["name"])
        if found is None:
            raise FeishuAPIError(RESOURCE_NOT_FOUND, "File not in msg.")
        data, name = found
        return web.Response(
            body=data, content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )  # fmt: skip

    def _h_image_upload(self, rec: RecordedRequest, auth: dict) -> dict:
        image = rec.files.get("image")
        if rec.form.get("image_type") not in ("message", "avatar") or image is None:
            raise FeishuAPIError(UPLOAD_INVALID, "invalid request: multipart image_type (message|avatar) and image")
        if image["size"] == 0 or image["size"] > 10 * 1024 * 1024:
            raise FeishuAPIError(UPLOAD_INVALID, "image must be 1 byte .. 10 MiB")
        key = "img_v3_" + secrets.token_hex(12)
        self.uploads[key] = {
            "kind": "image",
            "data": image["data"],
            "name": image["filename"],
            "app_id": auth["app_id"],
        }
        return {"code": 0, "msg": "success", "data": {"image_key": key}}

    def _h_file_upload(self, rec: RecordedRequest, auth: dict) -> dict:
        upload = rec.files.get("file")
        if rec.form.get("file_type") not in FILE_TYPES or not rec.form.get("file_name") or upload is None:
            raise FeishuAPIError(UPLOAD_INVALID, "invalid request: multipart file_type, file_name and file")
        if upload["size"] == 0 or upload["size"] > 30 * 1024 * 1024:
            raise FeishuAPIError(UPLOAD_INVALID, "file must be 1 byte .. 30 MiB")
        key = "file_v3_" + secrets.token_hex(12)
        self.uploads[key] = {
            "kind": "file",
            "data": upload["data"],
            "name": rec.form["file_name"],
            "app_id": auth["app_id"],
        }
        return {"code": 0, "msg": "success", "data": {"file_key": key}}

    # --- handlers: CardKit ----------------------------------------------------------------------

    def _h_card_create(self, rec: RecordedRequest, auth: dict) -> dict:
        body = self._json_body(rec)
        if body.get("type") != "card_json" or not isinstance(body.get("data"), str):
            raise FeishuAPIError(CARD_INVALID, "type must be card_json and data a JSON string")
        try:
            card = json.loads(body["data"])
        except ValueError:
            raise FeishuAPIError(CARD_INVALID, "card data is not JSON")
        if (
            not isinstance(card, dict)
            or card.get("schema") != "2.0"
            or not isinstance((card.get("body") or {}).get("elements"), list)
        ):
            raise FeishuAPIError(CARD_INVALID, 'card JSON 2.0 needs "schema": "2.0" and body.elements')
        card_id = "7" + "".join(secrets.choice("0123456789") for _ in range(18))
        elements: dict[str, dict] = {}
        _collect_elements(card, elements)
        self.cards[card_id] = {
            "card_id": card_id, "app_id": auth["app_id"], "card": card, "sequence": 0, "elements": elements,
            "streaming_mode": bool((card.get("config") or {}).get("streaming_mode")), "operations": [],
            "uuids": set(),
        }  # fmt: skip
        return {"code": 0, "msg": "success", "data": {"card_id": card_id}}

    def _card_operation(self, auth: dict, card_id: str, body: dict) -> dict | None:
        """Common CardKit checks; returns the card, or None when the uuid was already applied."""
        card = self.cards.get(card_id)
        if card is None or card["app_id"] != auth["app_id"]:
            raise FeishuAPIError(CARD_NOT_FOUND, f"card {card_id} not found")
        sequence = body.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: sequence is required")
        uuid = body.get("uuid") or ""
        if uuid and uuid in card["uuids"]:
            return None
        if sequence <= card["sequence"]:
            raise FeishuAPIError(
                CARD_SEQUENCE_CONFLICT, f"sequence number compare failed: {sequence} <= {card['sequence']}"
            )
        return card

    def _h_card_content(self, rec: RecordedRequest, auth: dict, card_id: str, element_id: str) -> dict:
        body = self._json_body(rec)
        card = self._card_operation(auth, card_id, body)
        if card is None:
            return {"code": 0, "msg": "success", "data": {}}
        if element_id not in card["elements"]:
            raise FeishuAPIError(CARD_ELEMENT_NOT_FOUND, f"element {element_id} not found in card")
        if not card["streaming_mode"]:
            raise FeishuAPIError(CARD_STREAMING_CLOSED, "card is not in streaming mode")
        if not isinstance(body.get("content"), str):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: content must be a string")
        card["sequence"] = body["sequence"]
        card["elements"][element_id]["content"] = body["content"]
        card["operations"].append({"op": "content", "element_id": element_id, "sequence": body["sequence"],
                                   "content": body["content"]})  # fmt: skip
        if body.get("uuid"):
            card["uuids"].add(body["uuid"])
        return {"code": 0, "msg": "success", "data": {}}

    def _h_card_settings(self, rec: RecordedRequest, auth: dict, card_id: str) -> dict:
        body = self._json_body(rec)
        card = self._card_operation(auth, card_id, body)
        if card is None:
            return {"code": 0, "msg": "success", "data": {}}
        try:
            settings = json.loads(body.get("settings") or "")
        except ValueError:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: settings must be a JSON string")
        config = settings.get("config") or {}
        if "streaming_mode" in config:
            card["streaming_mode"] = bool(config["streaming_mode"])
        card["card"].setdefault("config", {}).update(config)
        card["sequence"] = body["sequence"]
        card["operations"].append({"op": "settings", "sequence": body["sequence"], "settings": settings})
        if body.get("uuid"):
            card["uuids"].add(body["uuid"])
        return {"code": 0, "msg": "success", "data": {}}

    # --- handlers: docs, bitable ----------------------------------------------------------------------

    def _h_doc_search(self, rec: RecordedRequest, auth: dict) -> dict:
        if self.require_user_token_for_search and auth.get("kind") != "user":
            raise FeishuAPIError(99991672, "Access denied: this API needs a user_access_token", status=400)
        body = self._json_body(rec)
        query = str(body.get("query") or "")
        page_size = body.get("page_size", 20)
        if not isinstance(page_size, int) or not 0 < page_size <= 20:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: page_size must be 1..20")
        offset = int(body.get("page_token") or 0)
        hits = [d for d in self.docs if query.lower() in (d["title"] + " " + d["text"]).lower()]
        page = hits[offset : offset + page_size]
        units = [
            {
                "entity_type": d["entity_type"],
                "title_highlighted": _highlight(d["title"], query),
                "summary_highlighted": _highlight(d["text"][:120], query),
                "result_meta": {
                    "token": d["token"], "url": _doc_url(d),
                    "doc_types": d["doc_type"], "owner_name": d["owner_name"], "update_time": d["update_time"],
                },
            }
            for d in page
        ]  # fmt: skip
        more = offset + page_size < len(hits)
        data = {
            "res_units": units,
            "total": len(hits),
            "has_more": more,
            "page_token": str(offset + page_size) if more else "",
        }
        return {"code": 0, "msg": "success", "data": data}

    def _h_bitable_search(self, rec: RecordedRequest, auth: dict, app_token: str, table_id: str) -> dict:
        records = self.bitables.get((app_token, table_id))
        if records is None:
            raise FeishuAPIError(BITABLE_TABLE_NOT_FOUND, "WrongTableId or base not found")
        page_size = int(rec.query.get("page_size", 20))
        if not 0 < page_size <= 500:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: page_size must be 1..500")
        body = rec.json if isinstance(rec.json, dict) else {}
        flt = body.get("filter") or {}
        conditions = flt.get("conditions") or []
        for c in conditions:
            if c.get("operator") not in BITABLE_OPERATORS:
                raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: operator {c.get('operator')!r}")
        combine = any if flt.get("conjunction") == "or" else all
        hits = [
            r
            for r in records
            if not conditions or combine(bitable_condition_matches(r["fields"], c) for c in conditions)
        ]
        for s in reversed(body.get("sort") or []):
            hits.sort(key=lambda r, s=s: str(r["fields"].get(s.get("field_name"), "")) if not isinstance(
                r["fields"].get(s.get("field_name")), int | float) else r["fields"][s["field_name"]],
                reverse=bool(s.get("desc")))  # fmt: skip
        names = body.get("field_names")
        offset = int(rec.query.get("page_token") or 0)
        page = hits[offset : offset + page_size]
        items = [
            {"record_id": r["record_id"], "fields": {k: v for k, v in r["fields"].items() if not names or k in names}}
            for r in page
        ]
        more = offset + page_size < len(hits)
        data = {
            "items": items,
            "has_more": more,
            "page_token": str(offset + page_size) if more else "",
            "total": len(hits),
        }
        return {"code": 0, "msg": "success", "data": data}

    def _h_docx_raw(self, rec: RecordedRequest, auth: dict, document_id: str) -> dict:
        if document_id not in self.documents:
            raise FeishuAPIError(DOC_NOT_FOUND, "document not found", status=404)
        return {"code": 0, "msg": "success", "data": {"content": self.documents[document_id]}}

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _json_body(rec: RecordedRequest) -> dict:
        if not isinstance(rec.json, dict):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: body must be a JSON object")
        return rec.json


def _peer(request: web.Request) -> str:
    info = request.transport.get_extra_info("peername") if request.transport else None
    return f"{info[0]}:{info[1]}" if info else ""


def _collect_elements(node: Any, out: dict[str, dict]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("element_id"), str):
            out[node["element_id"]] = {"tag": node.get("tag"), "content": node.get("content", "")}
        for value in node.values():
            _collect_elements(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_elements(value, out)


def _doc_url(doc: dict) -> str:
    kind = "wiki" if doc["entity_type"] == "WIKI" else "docx"
    return f"https://fake.feishu.cn/{kind}/{doc['token']}"


def _highlight(text: str, query: str) -> str:
    if not query:
        return text
    return re.sub(re.escape(query), lambda m: f"<h>{m.group(0)}</h>", text, flags=re.IGNORECASE)


def _content_problem(msg_type: str, c: dict, cards: dict, uploads: dict) -> str:
    """Why `c` is not valid content for `msg_type` ("" when it is)."""
    if msg_type == "text":
        return "" if isinstance(c.get("text"), str) and c["text"].strip() else 'text needs a non-empty "text"'
    if msg_type == "post":
        posts = [v for k, v in c.items() if k in POST_LOCALES] or ([c] if "content" in c else [])
        if not posts:
            return "post needs a locale (zh_cn, en_us, ...) with title/content"
        for post in posts:
            rows = post.get("content") if isinstance(post, dict) else None
            if not isinstance(rows, list) or not all(
                isinstance(row, list) and all(isinstance(el, dict) and el.get("tag") for el in row) for row in rows
            ):
                return "post content must be a list of rows of elements with a tag"
        return ""
    if msg_type == "image":
        key = c.get("image_key")
        return "" if isinstance(key, str) and (key in uploads or key.startswith("img_")) else "unknown image_key"
    if msg_type in ("file", "audio", "media", "sticker"):
        return "" if isinstance(c.get("file_key"), str) and c["file_key"] else f"{msg_type} needs file_key"
    if msg_type == "share_chat":
        return "" if c.get("chat_id") else "share_chat needs chat_id"
    if msg_type == "share_user":
        return "" if c.get("user_id") else "share_user needs user_id"
    if msg_type == "interactive":
        if c.get("type") == "card":
            card_id = (c.get("data") or {}).get("card_id")
            return "" if card_id in cards else f"card_id {card_id!r} not found"
        if c.get("type") == "template":
            return "" if (c.get("data") or {}).get("template_id") else "template needs data.template_id"
        if c.get("schema") == "2.0":
            return "" if isinstance((c.get("body") or {}).get("elements"), list) else "card 2.0 needs body.elements"
        if isinstance(c.get("elements"), list) or isinstance(c.get("i18n_elements"), dict) or c.get("header"):
            return ""
        return "not a card (schema 2.0 body.elements, elements, or type card/template)"
    return f"unsupported msg_type {msg_type}"


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """Write a throwaway certificate for 127.0.0.1/localhost; returns (cert.pem, key.pem) paths."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-feishu.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Feishu Open API for local development and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--app", action="append", default=[], metavar="APP_ID:SECRET", help="register an app (strict)")
    parser.add_argument("--tls", metavar="DIR", help="serve https with a self-signed certificate written to DIR")
    args = parser.parse_args()
    context = None
    if args.tls:
        cert, key = self_signed_certificate(args.tls)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    fake = FakeFeishu(host=args.host, port=args.port, strict_apps=bool(args.app), ssl_context=context)
    for pair in args.app:
        app_id, _, secret = pair.partition(":")
        fake.add_app(app_id, secret)
    fake.start()
    print(f"fake Feishu listening on {fake.base_url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    fake.stop()


if __name__ == "__main__":
    main()
