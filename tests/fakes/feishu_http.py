"""The fake Feishu server's HTTP/1.1 layer: a small asyncio protocol instead of aiohttp's server.

The fake shares the benchmark machine with the platform it measures, so its CPU per request counts:
aiohttp's request/response objects, payload streams and writer were about half of the fake's work per
call. The Open API clients we serve need little: requests with Content-Length (or chunked) bodies,
JSON / multipart / empty bodies, keep-alive, TLS. Answers always carry Content-Length.

The handler gets an HttpRequest and returns an HttpAnswer, or a coroutine resolving to one (injected
delays); one request per connection is handled at a time, in order.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import http
import inspect
import json
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

_MAX_HEAD = 64 * 1024
_MAX_BODY = 40 * 1024 * 1024
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass
class HttpRequest:
    method: str
    path: str  # URL-decoded, without the query
    query: dict[str, str]
    headers: dict[str, str]  # names as the client sent them
    body: bytes
    content_type: str
    peer: str


@dataclass
class HttpAnswer:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpAnswer:
    return HttpAnswer(status, json.dumps(payload, ensure_ascii=False).encode(), headers=dict(headers or {}))


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, dict]]:
    """(form fields, files) of a multipart/form-data body; files are {"filename", "content_type", "data"}."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    form: dict[str, str] = {}
    files: dict[str, dict] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = {"filename": filename, "content_type": part.get_content_type(), "data": data}
        else:
            form[name] = data.decode(part.get_content_charset() or "utf-8")
    return form, files


Handler = Callable[[HttpRequest], "HttpAnswer | Awaitable[HttpAnswer]"]


class _BadRequest(Exception):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self, handler: Handler, open_set: set) -> None:
        self.handler = handler
        self.open_set = open_set
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        info = transport.get_extra_info("peername")
        self.peer = f"{info[0]}:{info[1]}" if info else ""
        self.open_set.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open_set.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and not self.closed and self.buffer:
            try:
                parsed = _parse(self.buffer, self.peer)
            except _BadRequest as exc:
                self._write(HttpAnswer(400, str(exc).encode(), "text/plain; charset=utf-8"), keep=False)
                return
            if parsed is None:
                return
            request, consumed, keep = parsed
            del self.buffer[:consumed]
            try:
                answer = self.handler(request)
            except Exception as exc:  # a bug in the fake: answer like a server would, keep serving
                answer = HttpAnswer(500, f"fake error: {exc!r}".encode(), "text/plain; charset=utf-8")
            if inspect.isawaitable(answer):
                self.busy = True
                asyncio.ensure_future(self._later(answer, keep))
                return
            self._write(answer, keep)
            if not keep:
                return

    async def _later(self, pending: Awaitable[HttpAnswer], keep: bool) -> None:
        try:
            answer = await pending
        except Exception as exc:
            answer = HttpAnswer(500, f"fake error: {exc!r}".encode(), "text/plain; charset=utf-8")
        self.busy = False
        self._write(answer, keep)
        if keep:
            self._next()

    def _write(self, answer: HttpAnswer, keep: bool) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return  # the client gave up on this answer (e.g. its read timeout)
        head = [
            f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Unknown')}\r\n"
            f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
        ]
        head.extend(f"{name}: {value}\r\n" for name, value in answer.headers.items())
        if not keep:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.transport.write("".join(head).encode("utf-8") + answer.body)
        if not keep:
            self.transport.close()


def _parse(buffer: bytearray, peer: str) -> tuple[HttpRequest, int, bool] | None:
    """One request from the front of `buffer`, the bytes it took and keep-alive; None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise _BadRequest("request head too large")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequest("bad request line") from None
    headers: dict[str, str] = {}
    length, chunked, content_type, connection = 0, False, "", ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest("bad header line")
        name, value = name.strip(), value.strip()
        headers[name] = value
        lower = name.lower()
        if lower == "content-length":
            try:
                length = int(value)
            except ValueError:
                raise _BadRequest("bad Content-Length") from None
        elif lower == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif lower == "content-type":
            content_type = value
        elif lower == "connection":
            connection = value.lower()
    start = end + 4
    if chunked:
        found = _dechunk(buffer, start)
        if found is None:
            return None
        body, consumed = found
    else:
        if length > _MAX_BODY:
            raise _BadRequest("body too large")
        if len(buffer) < start + length:
            return None
        body, consumed = bytes(buffer[start : start + length]), start + length
    path, _, query = target.partition("?")
    keep = version == "HTTP/1.1" and "close" not in connection
    request = HttpRequest(
        method=method.upper(),
        path=urllib.parse.unquote(path),
        query=dict(urllib.parse.parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        body=body,
        content_type=content_type,
        peer=peer,
    )
    return request, consumed, keep


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    parts, at = [], start
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        try:
            size = int(bytes(buffer[at:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise _BadRequest("bad chunk size") from None
        at = eol + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", at)
            while trailer_end > at:  # skip trailers up to the empty line
                at = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", at)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


class HttpServer:
    """The listening server; `close()` also drops open keep-alive connections."""

    def __init__(self, server: asyncio.AbstractServer, open_set: set) -> None:
        self._server = server
        self._open = open_set

    async def close(self) -> None:
        self._server.close()
        for protocol in list(self._open):
            if protocol.transport is not None:
                protocol.transport.close()
        await self._server.wait_closed()


async def serve(handler: Handler, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> HttpServer:
    open_set: set[_Protocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(handler, open_set), sock=sock, ssl=ssl_context)
    return HttpServer(server, open_set)
