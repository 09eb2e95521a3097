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
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.feishu_api import (  # noqa: F401  (codes re-exported for tests)
    BAD_CONTENT,
    CARD_SEQUENCE_CONFLICT,
    FIELD_VALIDATION,
    INVALID_TOKEN,
    MISSING_TOKEN,
    RATE_LIMITED,
    TOKEN_PATHS,
    FeishuAPI,
    FeishuAPIError,
)
from tests.fakes.feishu_data import (
    DEFAULT_BITABLES,
    DEFAULT_DOCS,
)
from tests.fakes.feishu_http import HttpAnswer, HttpRequest, HttpServer, json_answer, parse_multipart, serve
from tests.fakes.llm import fast_event_loop


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


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    handler: Callable
    auth: bool = True


class FakeFeishu(FeishuAPI):
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
        self._server: HttpServer | None = None
        self._ids = itertools.count(1)
        self._log_second, self._log_prefix = 0, ""
        self._routes: list[_Route] = []
        self._routes_by_method: dict[str, list[_Route]] = {}
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
            loop.run_until_complete(self._server.close())
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
        # tests.fakes.feishu_http: a small HTTP/1.1 protocol; aiohttp's server was half the fake's CPU
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await serve(self._dispatch, sock, self.ssl_context)

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
        self._routes_by_method.setdefault(method, []).append(self._routes[-1])

    def _dispatch(self, request: HttpRequest) -> HttpAnswer | Awaitable[HttpAnswer]:
        """Record, apply a matching fault, route. Synchronous unless a fault delays the request or answer."""
        if request.path == "/_fake/stats":  # for benchmarks in another process; not recorded
            with self._lock:
                peers = len({r.peer for r in self._requests})  # client connections seen
                return json_answer({"requests": len(self._requests), "messages": len(self._messages), "peers": peers})
        content_type = request.content_type
        multipart = content_type.startswith("multipart/form-data")
        raw = b"" if multipart else request.body
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=raw,
            time=time.time(),
            log_id=self._log_id(),
            peer=request.peer,
        )
        # lark-oapi's token request carries no Content-Type; Feishu reads it as JSON anyway
        if raw and (content_type.startswith("application/json") or not content_type):
            try:
                rec.json = json.loads(raw)
            except ValueError:
                rec.json = None
        if multipart:
            try:
                rec.form, files = parse_multipart(content_type, request.body)
            except Exception:  # malformed multipart: the handler answers field validation
                files = {}
            for name, upload in files.items():
                rec.files[name] = {**upload, "size": len(upload["data"])}
        with self._lock:
            self._requests.append(rec)
            fault = next((f for f in self._faults if f.matches(rec.method, rec.path)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if fault is not None and (fault.delay or fault.delay_answer):
            return self._dispatch_later(rec, fault)
        if fault is not None and fault.status:
            rec.fault = fault.name
            return self._answer_fault(rec, fault)
        return self._answer(rec, *self._outcome(rec))

    async def _dispatch_later(self, rec: RecordedRequest, fault: Fault) -> HttpAnswer:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status:
            rec.fault = fault.name
            return self._answer_fault(rec, fault)
        outcome = self._outcome(rec)  # applied now; the answer is held back
        if fault.delay_answer:
            rec.fault = fault.name
            await asyncio.sleep(fault.delay_answer)
        return self._answer(rec, *outcome)

    def _outcome(self, rec: RecordedRequest) -> tuple[Any, int, dict]:
        try:
            return self._handle(rec)
        except FeishuAPIError as exc:
            return {"code": exc.code, "msg": exc.msg}, exc.status, {}

    def _answer(self, rec: RecordedRequest, payload: Any, status: int, extra: dict) -> HttpAnswer:
        if isinstance(payload, HttpAnswer):
            rec.status, rec.code = payload.status, 0
            payload.headers["X-Tt-Logid"] = rec.log_id
            return payload
        if payload.get("code"):
            payload.setdefault("error", {"log_id": rec.log_id})
        rec.status, rec.code = status, payload.get("code")
        return json_answer(payload, status, {"X-Tt-Logid": rec.log_id, **extra})

    def _log_id(self) -> str:
        """Feishu-like log id: the second it was made, then a counter (strftime once per second)."""
        now = int(time.time())
        if now != self._log_second:
            self._log_second, self._log_prefix = now, time.strftime("%Y%m%d%H%M%S", time.localtime(now))
        return f"{self._log_prefix}{next(self._ids):010X}"

    def _answer_fault(self, rec: RecordedRequest, fault: Fault) -> HttpAnswer:
        headers = {"X-Tt-Logid": rec.log_id, **fault.headers}
        rec.status = fault.status
        if fault.html:
            rec.code = None
            html = f"<html><body>{fault.status} gateway error</body></html>".encode()
            return HttpAnswer(fault.status, html, "text/html; charset=utf-8", headers)
        rec.code = fault.code
        body = {"code": fault.code, "msg": fault.msg or "injected", "error": {"log_id": rec.log_id}}
        return json_answer(body, fault.status, headers)

    def _handle(self, rec: RecordedRequest) -> tuple[Any, int, dict]:
        for route in self._routes_by_method.get(rec.method, ()):
            m = route.pattern.match(rec.path)
            if m is None:
                continue
            with self._lock:
                auth = self._authenticate(rec) if route.auth else {}
                result = route.handler(rec, auth, **m.groupdict())
            if isinstance(result, HttpAnswer):
                return result, result.status, {}
            return result, 200, {}
        raise FeishuAPIError(404, f"404 page not found: {rec.method} {rec.path}", status=404)


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
    fast_event_loop()
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
