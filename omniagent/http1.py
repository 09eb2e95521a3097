"""The little of HTTP/1.1 our hot outbound calls need, on plain sockets: connect, read an answer's head,
read a chunked body. Shared by the Feishu client (apps.feishu.client.http) and the LLM clients'
transport (apps.runtime.llm_http).

Per call, the general-purpose stacks (requests + urllib3 + http.client; httpx + httpcore + h11) cost
~0.3-0.6 ms of CPU in header objects, parsers and bookkeeping; writing the request in one `sendall`
and reading the answer with a few `readline`s costs a tenth of that.

Errors: `NotSent` when no connection could be made (the request certainly never left), `BadAnswer`
(an OSError) when the answer is not HTTP/1.x we can read, `ClosedBeforeAnswer` when the server closed
the connection before sending a byte of it.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

MAX_LINE = 65536
MAX_HEADERS = 100


class NotSent(OSError):  # noqa: N818 - a condition, not a failure of ours
    """No connection could be made: the request never reached the server."""


class BadAnswer(OSError):  # noqa: N818
    """The server's answer was not HTTP/1.x we can read (or the connection closed before it)."""


class ClosedBeforeAnswer(BadAnswer):
    """The server closed (or reset) the connection before sending a single byte of an answer."""


class Headers(dict):
    """Response headers with lower-cased names; `get`/`[]` accept any case."""

    def get(self, key: str, default=None):
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class Connection:
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

    def usable(self, now: float, idle_limit: float) -> bool:
        """Idle not too long and nothing to read: a readable idle socket was closed (or spoke out of turn)."""
        if now - self.idle_since > idle_limit:
            return False
        try:
            poller = select.poll()  # not select.select: a busy worker may hold descriptors past 1024
            poller.register(self.sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False


class IdleConnections:
    """Kept-alive connections waiting for their next request, newest first. Thread-safe."""

    def __init__(self, *, limit: int, idle_seconds: float) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def take(self) -> Connection | None:
        """A usable idle connection (marked reused), or None; unusable ones are closed on the way."""
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return None
            if conn.usable(now, self.idle_seconds):
                conn.reused = True
                return conn
            conn.close()

    def put(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self.limit:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def connect(host: str, port: int, *, timeout: float | None, tls: ssl.SSLContext | None) -> Connection:
    """A new connection (TLS with `tls`); `NotSent` if it could not be made."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:  # refused, unreachable, DNS, connect timeout: nothing was sent
        raise NotSent(f"{exc.__class__.__name__}: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
    except OSError as exc:  # TLS handshake failed: no request bytes were sent either
        sock.close()
        raise NotSent(f"{exc.__class__.__name__}: {exc}") from exc
    return Connection(sock)


def request_head(method: str, target: str, host: str, headers) -> bytes:
    """The request line and headers (`headers`: (name, value) pairs), refusing line breaks in them."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def read_head(rfile) -> tuple[bytes, int, str, Headers]:
    """An answer's status line and headers: (version, status, reason, headers); skips "100 Continue"."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        raise ClosedBeforeAnswer("connection closed before an answer")
    try:
        version, status_text, *rest = line.split(None, 2)
        status = int(status_text)
    except ValueError:
        raise BadAnswer(f"bad status line {line[:80]!r}") from None
    if not version.startswith(b"HTTP/1."):
        raise BadAnswer(f"bad status line {line[:80]!r}")
    headers = Headers()
    for _ in range(MAX_HEADERS + 1):
        line = rfile.readline(MAX_LINE + 1)
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
        return read_head(rfile)
    reason = rest[0].decode("latin-1").strip() if rest else ""
    return version, status, reason, headers


def exchange(
    conn: Connection,
    wire: bytes,
    *,
    reconnect: Callable[[], Connection],
    write_timeout: float | None,
    read_timeout: float | None,
) -> tuple[Connection, tuple[bytes, int, str, Headers]]:
    """Send `wire` (head and body) on `conn` and read the answer's head: (the connection used, head).

    A kept connection the server closed while it sat idle (the close crossed our request; the
    readability check cannot see a FIN still in flight) did not read the request, so it goes once
    more on a new connection from `reconnect()`, as browsers and urllib3's pools do. The connection
    is closed on any failure; the exception is raised as it came.
    """
    while True:
        try:
            conn.sock.settimeout(write_timeout)
            conn.sock.sendall(wire)
            conn.sock.settimeout(read_timeout)
            return conn, read_head(conn.rfile)
        except (ClosedBeforeAnswer, BrokenPipeError, ConnectionResetError):
            conn.close()
            if not conn.reused:
                raise
            conn = reconnect()
        except BaseException:
            conn.close()
            raise


def keeps_alive(version: bytes, headers: Headers) -> bool:
    return version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()


def has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


def content_length(headers: Headers) -> int | None:
    """The declared length of a body that is not chunked (check `is_chunked` first); None when it runs
    until the server closes."""
    if "content-length" not in headers:
        return None
    try:
        length = int(headers["content-length"])
    except ValueError:
        raise BadAnswer("bad Content-Length") from None
    if length < 0:
        raise BadAnswer("bad Content-Length")
    return length


def is_chunked(headers: Headers) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def iter_chunked(rfile) -> Iterator[bytes]:
    """The chunks of a chunked body as they arrive (trailers read and dropped)."""
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            raise BadAnswer("connection closed in a chunked answer")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise BadAnswer("chunked answer cut short")
        yield chunk
