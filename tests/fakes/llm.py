"""A scripted OpenAI-compatible LLM server for tests, benchmarks and the offline demo.

It speaks the real wire protocol (``/v1/models``, ``/v1/chat/completions`` with or without SSE
streaming, tool calls, ``stream_options.include_usage``) over real HTTP, so the official ``openai``
client is exercised end to end.

Behaviour is scripted per request with :class:`Reply` objects::

    server.script(Reply(text="Hello!"))                          # next request (any model)
    server.script(Reply(tool_calls=[ToolCall("calc", {"expression": "6*7"})]),
                  Reply(text="The answer is {tool_result}."))     # a tool-call sequence
    server.script(Reply(status=500), model="primary", repeat=True)   # this model always fails
    server.default = Reply(text="ok", first_token_delay=2.0)      # when no script is queued

``{tool_result}`` is replaced by the content of the last tool message in the request and
``{last_user}`` by the last user message. Without a script and with ``default=None`` the server
runs the demo: it streams a sensible answer and calls ``time.now`` when asked for the time.

Run it standalone (the demo model of the run command)::

    python -m tests.fakes.llm --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEMO_MODEL = "omniagent-demo"
DEMO_FOOTER = "（这是离线演示模型的回答，配置 LLM_BASE_URL 等环境变量即可接入真实模型。）"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass
class Reply:
    """What the server does for one request."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Seconds before the first byte of the answer (headers are sent at once when streaming).
    first_token_delay: float = 0.0
    # Seconds between streamed chunks.
    token_delay: float = 0.0
    # Characters per streamed content chunk.
    chunk_chars: int = 4
    # Answer with this HTTP status and an OpenAI-style error body instead (e.g. 500, 503, 429).
    status: int | None = None
    # Never answer (the client times out); streaming sends the headers first, then stalls.
    hang: bool = False
    # Stall after this many chunks (a stream that stops mid-way), used with hang=True.
    hang_after_chunks: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class RecordedRequest:
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    peer: tuple | None = None  # the client's (host, port): the same for requests on one kept-alive connection

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _last(messages: list[dict[str, Any]], role: str) -> str:
    for m in reversed(messages):
        if m.get("role") == role:
            content = m.get("content") or ""
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content
    return ""


def demo_reply(body: dict[str, Any]) -> Reply:
    """The offline demo: answers sensibly, calls a tool when asked for the time or a sum."""
    messages = body.get("messages", [])
    tools = {t.get("function", {}).get("name") for t in body.get("tools") or []}
    last_role = messages[-1].get("role") if messages else "user"
    question = _last(messages, "user")
    if last_role == "tool":
        return Reply(
            text="根据工具返回的结果：{tool_result}\n\n" + DEMO_FOOTER,
            first_token_delay=0.3,
            token_delay=0.03,
        )
    if "time.now" in tools and re.search(r"时间|几点|日期|time|date|clock", question, re.I):
        return Reply(tool_calls=[ToolCall("time.now", {})], first_token_delay=0.3)
    expr = re.search(r"(\d+(?:\.\d+)?\s*[-+*/]\s*\d+(?:\.\d+)?(?:\s*[-+*/]\s*\d+(?:\.\d+)?)*)", question)
    if "calc" in tools and expr:
        return Reply(tool_calls=[ToolCall("calc", {"expression": expr.group(1)})], first_token_delay=0.3)
    if body.get("tools") is None and "摘要" in _last(messages, "system") + question:
        return Reply(text="用户与助手进行了几轮对话（演示摘要）。")
    return Reply(
        text=(
            f"你好！我是 OmniAgent 的**离线演示模型**。你刚才说：\n\n> {question[:200]}\n\n"
            "我可以演示流式输出和工具调用：试试问我「现在几点？」或者「帮我算 12*34」。"
        ),
        first_token_delay=0.3,
        token_delay=0.03,
    )


class FakeLLM:
    """The server: an aiohttp app in a background thread with scripts and a request log."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.default: Reply | None = None
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str | None, deque[Reply]] = {}
        self._repeat: dict[str | None, Reply] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.port: int = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._generation = 0

    # -- scripting ---------------------------------------------------------------------------
    def script(self, *replies: Reply, model: str | None = None, repeat: bool = False) -> None:
        """Queue replies for the next requests (of ``model``, or any model); ``repeat`` keeps the last."""
        with self._lock:
            if repeat:
                self._repeat[model] = replies[-1]
            else:
                self._scripts.setdefault(model, deque()).extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._repeat.clear()
            self.requests.clear()
            self.default = None
            # Handlers of earlier tests may still hang; they no longer count as in flight.
            self._generation += 1
            self.in_flight = 0
            self.max_in_flight = 0

    def _next_reply(self, model: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            for key in (model, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
                if key in self._repeat:
                    return self._repeat[key]
            default = self.default
        return default if default is not None else demo_reply(body)

    def chat_requests(self, model: str | None = None) -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.path.endswith("/chat/completions") and (model is None or r.model == model)
        ]

    # -- server ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeLLM:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(host, port, ready))
            # Handlers still sleeping in a scripted hang: cancel them so the loop closes quietly.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake LLM did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread:
            self._thread.join(10)

    async def _serve(self, host: str, port: int, ready: threading.Event | None) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if ready:
            ready.set()
        await self._stopping.wait()
        await self._runner.cleanup()

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", "invalid_request_error")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        if denied := self._check_auth(request):
            return denied
        names = sorted({DEMO_MODEL, *(k for k in self._scripts if k), *(k for k in self._repeat if k)})
        return web.json_response(
            {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if denied := self._check_auth(request):
            return denied
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "body is not JSON", "invalid_request_error")
        model = body.get("model", "")
        self.requests.append(
            RecordedRequest(
                request.path,
                model,
                body,
                {k.lower(): v for k, v in request.headers.items()},
                time.time(),
                request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        reply = self._next_reply(model, body)
        generation = self._generation
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body, model, reply)
        finally:
            if generation == self._generation:
                self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict, model: str, reply: Reply) -> web.StreamResponse:
        if reply.status:
            if reply.first_token_delay:
                await asyncio.sleep(reply.first_token_delay)
            return _error(reply.status, f"scripted failure {reply.status}", "server_error")
        if reply.hang and reply.hang_after_chunks is None and not body.get("stream"):
            await asyncio.sleep(3600)
        messages = body.get("messages", [])
        text = reply.text.replace("{tool_result}", _last(messages, "tool")).replace(
            "{last_user}", _last(messages, "user")
        )
        calls = [
            {
                "id": c.id or f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
            }
            for c in reply.tool_calls
        ]
        prompt_tokens = reply.prompt_tokens or sum(
            _estimate_tokens(json.dumps(m, ensure_ascii=False)) for m in messages
        )
        completion_tokens = reply.completion_tokens or _estimate_tokens(text + json.dumps(calls))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        finish = "tool_calls" if calls else "stop"
        cid = f"chatcmpl-{next(self._ids)}"
        created = int(time.time())
        if not body.get("stream"):
            if reply.first_token_delay:
                await asyncio.sleep(reply.first_token_delay)
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        # Without pauses between chunks the whole stream goes out in one write: one HTTP chunk and one
        # network read for the client instead of one per token (this server shares the benchmark's
        # CPUs with the platform). With token_delay or a hang, every chunk is written on its own.
        coalesce = not reply.token_delay and not reply.hang
        pending: list[bytes] = []
        head = json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model})[:-1]

        async def send(choices: list[dict], **extra: Any) -> None:
            body = json.dumps({"choices": choices, **extra}, ensure_ascii=False)
            event = f"data: {head}, {body[1:]}\n\n".encode()
            if coalesce:
                pending.append(event)
            else:
                await resp.write(event)

        if reply.hang and reply.hang_after_chunks is None:
            await asyncio.sleep(3600)
        if reply.first_token_delay:
            await asyncio.sleep(reply.first_token_delay)
        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        step = max(1, reply.chunk_chars)
        for sent, i in enumerate(range(0, len(text), step)):
            if reply.hang and sent >= (reply.hang_after_chunks or 0):
                await asyncio.sleep(3600)
            if sent and reply.token_delay:
                await asyncio.sleep(reply.token_delay)
            await send([{"index": 0, "delta": {"content": text[i : i + step]}, "finish_reason": None}])
        for index, call in enumerate(calls):
            if reply.token_delay:
                await asyncio.sleep(reply.token_delay)
            head_call = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await send([{"index": 0, "delta": {"tool_calls": [head_call]}, "finish_reason": None}])
            args = call["function"]["arguments"]
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                if part:
                    await send(
                        [
                            {
                                "index": 0,
                                "delta": {"tool_calls": [{"index": index, "function": {"arguments": part}}]},
                                "finish_reason": None,
                            }
                        ]
                    )
        await send([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        pending.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(pending))
        await resp.write_eof()
        return resp


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


def fast_event_loop() -> None:
    """uvloop for this process's event loops where it is installed: run as its own process (dev
    server, benchmarks), a fake shares the machine's CPUs with the platform it serves."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible LLM (offline demo model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=None, help="fixed seconds to first token (benchmarks)")
    parser.add_argument("--text", default=None, help="always answer this text instead of the demo")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks (benchmarks)")
    parser.add_argument("--chunk-chars", type=int, default=None, help="characters per streamed chunk (benchmarks)")
    args = parser.parse_args()
    server = FakeLLM()
    if args.text is not None or args.latency is not None:
        server.default = Reply(
            text=args.text if args.text is not None else "ok",
            first_token_delay=args.latency or 0.0,
            token_delay=args.token_delay,
            chunk_chars=args.chunk_chars or Reply.chunk_chars,
        )
    print(f"fake LLM ({DEMO_MODEL}) on http://{args.host}:{args.port}/v1", flush=True)
    fast_event_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server._serve(args.host, args.port, None))


if __name__ == "__main__":
    main()
