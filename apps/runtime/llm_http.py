"""The HTTP transport under the openai SDK's clients: keep-alive HTTP/1.1 on plain sockets.

The SDK takes an ``http_client`` (an httpx client) and httpx takes a ``transport``: that is where
this plugs in, so requests are still built, authenticated, retried and mapped to errors by the SDK
and httpx. What it replaces is httpcore + h11, which cost ~0.5 ms of CPU per call in a busy worker
(events, header validation, a pool that scans its connections on every request) for what is here a
``sendall`` of the head and body and a few ``readline``s (omniagent.http1). A burst of turns sends
hundreds of such requests in its first second, when the CPU is what every turn waits for.

What it speaks: HTTP/1.1 with keep-alive, answers with Content-Length, chunked or read until close
(a streamed completion is chunked), TLS with the clients' shared context. No HTTP/2, no proxies:
with an HTTP(S) proxy in the environment the clients use httpx's own transport instead
(``transport_for``). Errors are raised as the httpx exceptions httpcore's would map to, so the SDK
and our callers see the same ones: ConnectError/ConnectTimeout (nothing sent), ReadError/
ReadTimeout, RemoteProtocolError (an answer we cannot read, or a connection
closed mid-answer, as when the watchdog shuts a cancelled turn's socket).
"""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator

import httpx2

from omniagent import http1

IDLE_SECONDS = 60.0  # drop connections idle longer than this
MAX_IDLE = 64  # idle connections kept per host and client
READ_BLOCK = 65536


def transport_for(base_url: str, tls: ssl.SSLContext) -> httpx2.BaseTransport | None:
    """This transport for `base_url`, or None (httpx's default) when the environment sets a proxy for it."""
    url = httpx2.URL(base_url)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.host):
        return None
    return LeanTransport(tls=tls)


class _NetworkStream:
    """What ``response.extensions["network_stream"]`` offers httpx's users: the socket (the watchdog
    shuts it to interrupt a blocked read)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_extra_info(self, name: str):
        return self._sock if name == "socket" else None


def _timeouts(request: httpx2.Request) -> tuple[float | None, float | None, float | None]:
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("connect"), timeout.get("write"), timeout.get("read")


class LeanTransport(httpx2.BaseTransport):
    def __init__(self, *, tls: ssl.SSLContext) -> None:
        self._tls = tls
        self._pools: dict[tuple[str, str, int], http1.IdleConnections] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connect_timeout, write_timeout, read_timeout = _timeouts(request)
        sending = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        head = http1.request_head(
            request.method,
            url.raw_path.decode("ascii"),
            next((v for k, v in sending if k.lower() == "host"), url.netloc.decode("ascii")),
            [(k, v) for k, v in sending if k.lower() != "host"],
        )
        wire = head + request.read()
        try:
            conn, (version, status, reason, headers) = http1.exchange(
                self._checkout(key, connect_timeout, request),
                wire,
                reconnect=lambda: self._connect(key, connect_timeout, request),
                write_timeout=write_timeout,
                read_timeout=read_timeout,
            )
        except OSError as exc:
            raise _mapped(exc, request) from exc
        no_body = http1.has_no_body(request.method, status)
        try:
            body = _Body(self, key, conn, request, headers, keep=http1.keeps_alive(version, headers), no_body=no_body)
        except http1.BadAnswer as exc:  # a Content-Length we cannot read
            conn.close()
            raise _mapped(exc, request) from exc
        return httpx2.Response(
            status_code=status,
            headers=list(headers.items()),
            stream=body,
            extensions={
                "http_version": version,
                "reason_phrase": reason.encode("latin-1"),
                "network_stream": _NetworkStream(conn.sock),
            },
        )

    # --- the pool ---------------------------------------------------------------------------------
    def _idle_for(self, key: tuple[str, str, int]) -> http1.IdleConnections:
        idle = self._pools.get(key)
        if idle is None:
            with self._lock:
                idle = self._pools.setdefault(key, http1.IdleConnections(limit=MAX_IDLE, idle_seconds=IDLE_SECONDS))
        return idle

    def _checkout(self, key: tuple[str, str, int], timeout: float | None, request) -> http1.Connection:
        return self._idle_for(key).take() or self._connect(key, timeout, request)

    def _connect(self, key: tuple[str, str, int], timeout: float | None, request) -> http1.Connection:
        scheme, host, port = key
        try:
            return http1.connect(host, port, timeout=timeout, tls=self._tls if scheme == "https" else None)
        except http1.NotSent as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise httpx2.ConnectTimeout(str(exc), request=request) from exc
            raise httpx2.ConnectError(str(exc), request=request) from exc

    def checkin(self, key: tuple[str, str, int], conn: http1.Connection) -> None:
        self._idle_for(key).put(conn)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        for idle in pools.values():
            idle.close()


class _Body(httpx2.SyncByteStream):
    """The answer's body as it arrives; the connection goes back to the pool once it was read to the end."""

    def __init__(self, transport: LeanTransport, key, conn, request, headers, *, keep: bool, no_body: bool) -> None:
        self._transport = transport
        self._key = key
        self._conn: http1.Connection | None = conn
        self._request = request
        self._chunked = not no_body and http1.is_chunked(headers)
        self._length = 0 if no_body else None if self._chunked else http1.content_length(headers)
        self._keep = keep and (self._chunked or self._length is not None)
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx2.StreamClosed()
        try:
            if self._chunked:
                yield from http1.iter_chunked(conn.rfile)
            elif self._length is not None:
                left = self._length
                while left:
                    block = conn.rfile.read1(min(left, READ_BLOCK))
                    if not block:
                        raise http1.BadAnswer(f"answer cut short: {self._length - left} of {self._length} bytes")
                    left -= len(block)
                    yield block
            else:  # until the server closes
                while block := conn.rfile.read1(READ_BLOCK):
                    yield block
        except OSError as exc:
            raise _mapped(exc, self._request) from exc
        self._done = True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep:
            self._transport.checkin(self._key, conn)
        else:
            conn.close()


def _mapped(exc: OSError, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx exception httpcore's equivalent failure maps to. A failed write shows up as a read
    failure here (one try covers both): the SDK and our callers treat both the same way."""
    if isinstance(exc, TimeoutError):
        return httpx2.ReadTimeout(str(exc) or "timed out", request=request)
    if isinstance(exc, http1.BadAnswer):
        return httpx2.RemoteProtocolError(str(exc), request=request)
    return httpx2.ReadError(str(exc), request=request)
