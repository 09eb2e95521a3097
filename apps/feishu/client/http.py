"""A small keep-alive HTTP/1.1 client for the Feishu Open API: the cheapest way we measured to make a call.

Per call, requests + urllib3 + http.client cost ~0.3–0.6 ms of CPU; the plain-socket HTTP/1.1 of
omniagent.http1 costs ~0.04 ms. The Open API needs little of HTTP: JSON or multipart
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
import ssl
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

import certifi
import urllib3

from omniagent.http1 import (
    BadAnswer,
    Connection,
    Headers,
    IdleConnections,
    NotSent,
    connect,
    content_length,
    exchange,
    has_no_body,
    is_chunked,
    iter_chunked,
    keeps_alive,
    request_head,
)

__all__ = ["Answer", "BadAnswer", "HttpPool", "NotSent", "pool_for"]

_IDLE_SECONDS = 30.0  # drop connections idle longer than this (Feishu's gateway closes idle ones)
_MAX_IDLE = 32  # idle connections kept per pool


@dataclass
class Answer:
    status: int
    headers: Headers
    content: bytes


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
        self._idle = IdleConnections(limit=_MAX_IDLE, idle_seconds=_IDLE_SECONDS)
        self._proxy = _proxy_for(base_url, parts.scheme, self.host, ca_bundle)

    # --- one exchange ---------------------------------------------------------------------------

    def request(
        self, method: str, target: str, *, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> Answer:
        """`target` is the path with its query string; returns the whole answer (body read)."""
        if self._proxy is not None:
            return self._via_proxy(self._proxy, method, target, headers=headers, body=body, timeout=timeout)
        head = self._head(method, target, headers, body)
        conn, (version, status, _, answer_headers) = exchange(
            self._checkout(timeout[0]),
            head + body if body else head,
            reconnect=lambda: self._connect(timeout[0]),
            write_timeout=timeout[1],
            read_timeout=timeout[1],
        )
        try:
            answer, keep = _read_body(conn.rfile, method, version, status, answer_headers)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return answer

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        pairs = list(headers.items())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            pairs.append(("Content-Length", str(len(body or b""))))
        return request_head(method, f"{self.prefix}{target}", self.host_header, pairs)

    # --- the pool ---------------------------------------------------------------------------

    def _checkout(self, connect_timeout: float) -> Connection:
        return self._idle.take() or self._connect(connect_timeout)

    def _checkin(self, conn: Connection) -> None:
        self._idle.put(conn)

    def _connect(self, timeout: float) -> Connection:
        return connect(self.host, self.port, timeout=timeout, tls=self._ssl)

    def close(self) -> None:
        self._idle.close()

    # --- through a proxy ---------------------------------------------------------------------------

    def _via_proxy(
        self,
        proxy: urllib3.ProxyManager,
        method: str,
        target: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: tuple[float, float],
    ) -> Answer:
        try:
            raw = proxy.urlopen(
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
    return urllib3.ProxyManager(proxy, maxsize=_MAX_IDLE, ca_certs=ca_bundle)


def _read_body(rfile, method: str, version: bytes, status: int, headers: Headers) -> tuple[Answer, bool]:
    """Read the answer's body; returns the answer and whether the connection can carry another request."""
    keep = keeps_alive(version, headers)
    if has_no_body(method, status):
        content = b""
    elif is_chunked(headers):
        content = b"".join(iter_chunked(rfile))
    elif (length := content_length(headers)) is not None:
        content = rfile.read(length)
        if len(content) != length:
            raise BadAnswer(f"answer cut short: {len(content)} of {length} bytes")
    else:  # until the server closes
        content = rfile.read()
        keep = False
    return Answer(status, headers, content), keep


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
