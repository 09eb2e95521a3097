"""A small keep-alive HTTP/1.1 client for the Feishu Open API: the cheapest way we measured to make a call.

Per call, requests + urllib3 + http.client cost ~0.3–0.6 ms of CPU (header objects, email-parser
header parsing, URL re-parsing, adapter bookkeeping); writing the request in one `sendall` and reading
the answer with a few `readline`s costs ~0.04 ms. The Open API needs little of HTTP: JSON or multipart
bodies with Content-Length, answers with Content-Length or chunked, no redirects, no cookies, no
compression (we never ask for it). Connections are pooled per process and base URL; one that sat idle
too long or that the server closed is dropped before it is used. Through an HTTP(S) proxy from the
environment, calls go through urllib3's ProxyManager instead (rare; not worth a second hand-written path).

Errors: `NotSent` when the request certainly never left (no connection could be made), `TimeoutError`
when an answer was not read in time, any other `OSError` (including `BadAnswer`) when the exchange broke
midway. The caller decides what is retryable and whether an attempt may have been applied.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import certifi
import urllib3

_IDLE_SECONDS = 30.0  # drop connections idle longer than this (Feishu's gateway closes idle ones)
_MAX_IDLE = 32  # idle connections kept per pool
_MAX_LINE = 65536
_MAX_HEADERS = 100


class NotSent(OSError):  # noqa: N818 - a condition, not a failure of ours
    """No connection could be made: the request never reached the server."""


class BadAnswer(OSError):  # noqa: N818
    """The server's answer was not HTTP/1.x we can read (or the connection closed before it)."""


class ClosedBeforeAnswer(BadAnswer):
    """The server closed (or reset) the connection before sending a single byte of an answer."""


class Headers(dict):
    """Response headers with lower-cased names; `get`/`[]` accept any case."""

    def get(self, key: str, default=None):  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


@dataclass
class Answer:
    status: int
    headers: Headers
    content: bytes


class _Connection:
    __slots__ = ("sock", "rfile", "idle_since", "reused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.idle_since = 0.0
        self.reused = False

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def usable(self, now: float) -> bool:
        """Idle not too long and nothing to read: a readable idle socket was closed (or spoke out of turn)."""
        if now - self.idle_since > _IDLE_SECONDS:
            return False
        try:
            poller = select.poll()  # not select.select: a busy worker may hold descriptors past 1024
            poller.register(self.sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False


class HttpPool:
    """Keep-alive connections to one base URL (scheme://host[:port][/prefix]). Thread-safe."""

    def __init__(self, base_url: str, *, ca_bundle: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default_port = self.port == (443 if self.https else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:  # IPv6 literal
            self.host_header = f"[{self.host}]:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.base_url = base_url.rstrip("/")
        # like requests: the bundle from the environment, else certifi's
        self._ssl = ssl.create_default_context(cafile=ca_bundle or certifi.where()) if self.https else None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._proxy = _proxy_for(base_url, parts.scheme, self.host, ca_bundle)

    # --- one exchange ---------------------------------------------------------------------------

    def request(
        self, method: str, target: str, *, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> Answer:
        """`target` is the path with its query string; returns the whole answer (body read)."""
        if self._proxy is not None:
            return self._via_proxy(method, target, headers=headers, body=body, timeout=timeout)
        head = self._head(method, target, headers, body)
        conn = self._checkout(timeout[0])
        while True:
            try:
                conn.sock.settimeout(timeout[1])
                conn.sock.sendall(head + body if body else head)
                answer, keep = _read_answer(conn.rfile, method)
                break
            except (ClosedBeforeAnswer, BrokenPipeError, ConnectionResetError):
                conn.close()
                # A kept connection the server closed while it sat idle (the close crossed our request;
                # the readability check cannot see a FIN still in flight): the request was not read,
                # so it goes once more on a new connection, as browsers and urllib3's pools do.
                if not conn.reused:
                    raise
                conn = self._connect(timeout[0])
            except BaseException:
                conn.close()
                raise
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return answer

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    # --- the pool ---------------------------------------------------------------------------

    def _checkout(self, connect_timeout: float) -> _Connection:
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(connect_timeout)
            if conn.usable(now):
                conn.reused = True
                return conn
            conn.close()

    def _checkin(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, timeout: float) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:  # refused, unreachable, DNS, connect timeout: nothing was sent
            raise NotSent(f"{exc.__class__.__name__}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # TLS handshake failed: no request bytes were sent either
            sock.close()
            raise NotSent(f"{exc.__class__.__name__}: {exc}") from exc
        return _Connection(sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- through a proxy ---------------------------------------------------------------------------

    def _via_proxy(
        self, method: str, target: str, *, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> Answer:
        try:
            raw = self._proxy.urlopen(
                method, self.base_url + target, body=body, headers=headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]), preload_content=True,
            )  # fmt: skip
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            raise NotSent(str(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise TimeoutError(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise BadAnswer(f"{exc.__class__.__name__}: {exc}") from exc
        return Answer(raw.status, Headers((k.lower(), v) for k, v in raw.headers.items()), raw.data)


def _proxy_for(base_url: str, scheme: str, host: str, ca_bundle: str | None) -> urllib3.ProxyManager | None:
    """The environment's proxy for this base URL (HTTPS_PROXY / HTTP_PROXY minus NO_PROXY), read once."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    kwargs = {"ca_certs": ca_bundle} if ca_bundle else {}
    return urllib3.ProxyManager(proxy, maxsize=_MAX_IDLE, **kwargs)


def _read_answer(rfile, method: str) -> tuple[Answer, bool]:
    """Read one answer; returns it and whether the connection can carry another request."""
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        raise ClosedBeforeAnswer("connection closed before an answer")
    try:
        version, status_text = line.split(None, 2)[:2]
        status = int(status_text)
    except ValueError:
        raise BadAnswer(f"bad status line {line[:80]!r}") from None
    if not version.startswith(b"HTTP/1."):
        raise BadAnswer(f"bad status line {line[:80]!r}")
    headers = Headers()
    for _ in range(_MAX_HEADERS + 1):
        line = rfile.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise BadAnswer("connection closed in the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadAnswer(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    else:
        raise BadAnswer("too many headers")
    if status == 100:  # a stray "100 Continue": the real answer follows
        return _read_answer(rfile, method)
    keep = version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        content = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        content = _read_chunked(rfile)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise BadAnswer("bad Content-Length") from None
        content = rfile.read(length)
        if len(content) != length:
            raise BadAnswer(f"answer cut short: {len(content)} of {length} bytes")
    else:  # until the server closes
        content = rfile.read()
        keep = False
    return Answer(status, headers, content), keep


def _read_chunked(rfile) -> bytes:
    parts = []
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            raise BadAnswer("connection closed in a chunked answer")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise BadAnswer("chunked answer cut short")
        parts.append(chunk)


_pools: dict[tuple[int, str], HttpPool] = {}
_pools_lock = threading.Lock()


def pool_for(base_url: str) -> HttpPool:
    """The process's pool for `base_url` (a forked worker must not share its parent's sockets)."""
    key = (os.getpid(), base_url)
    pool = _pools.get(key)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None:
                bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None
                pool = _pools[key] = HttpPool(base_url, ca_bundle=bundle)
    return pool
