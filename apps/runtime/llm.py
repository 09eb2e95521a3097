"""LLM calls through the official openai SDK: streaming, tool calls, retries, fallback, deadline.

A few ``openai.OpenAI`` clients per (base_url, api_key) per process, so HTTP connections are pooled
across turns (``CLIENT_SHARDS`` says why a few and not one). The SDK's own retries are off: they do
not know the turn's deadline. Here a logical call (primary, its retries, then the fallback model)
must finish within ``agent.timeout`` seconds or it ends with AGENT_001; the watchdog interrupts a
stream that is blocked past its deadline or whose turn was cancelled.
"""

from __future__ import annotations

import inspect
import itertools
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import structlog
from openai._streaming import ServerSentEvent, SSEDecoder

from apps.runtime.errors import LLMTimeout, TurnCancelled, TurnError
from apps.runtime.llm_http import transport_for
from omniagent.gate import remote_iter, remote_wait

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.runtime.watch import ActiveTurn

logger = structlog.get_logger(__name__)

RETRIES = 2  # per model, for transient errors only
BACKOFF_BASE = 0.5

# httpcore's connection pool (httpx's own transport, still used behind a proxy: see llm_http) scans
# every connection it holds on each request and each close (with a readability syscall per idle one):
# one pool serving a process's hundreds of turn threads made that scan a visible share of a turn's
# CPU. Threads are spread over this many clients (pools) instead. The lean transport checks only the
# connection it takes, so for it the shards only spread the pool's lock.
CLIENT_SHARDS = 8

_clients: dict[tuple[str, str, int], openai.OpenAI] = {}
_clients_lock = threading.Lock()
_thread_shard = threading.local()
_next_shard = itertools.count()

try:  # the SDK's generic request path (what chat.completions.create ends in), see _post_stream
    from openai._base_client import make_request_options
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    _DIRECT_POST = hasattr(openai.OpenAI, "post") and "security" in inspect.signature(make_request_options).parameters
except ImportError:  # pragma: no cover - depends on the SDK version
    _DIRECT_POST = False


class _OpenAI(openai.OpenAI):
    """The SDK's client with a faster decoder for the server-sent events of a stream."""

    def _make_sse_decoder(self) -> SSEDecoder:
        return EventBlockDecoder()


_tls: list[ssl.SSLContext] = []
_tls_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client of the process: building one loads the CA bundle (~20 ms of
    CPU). Under a lock: a burst's first turns would otherwise each load it (functools.cache does not
    hold concurrent first callers back), and at start-up (llm_warm_up), not in the first burst."""
    if not _tls:
        with _tls_lock:
            if not _tls:
                _tls.append(httpx2.create_ssl_context())
    return _tls[0]


def llm_client(*, base_url: str, api_key: str) -> openai.OpenAI:
    """This thread's client for the endpoint: one of CLIENT_SHARDS, each thread keeps its own."""
    shard = getattr(_thread_shard, "index", None)
    if shard is None:
        shard = _thread_shard.index = next(_next_shard) % CLIENT_SHARDS
    key = (base_url, api_key, shard)
    client = _clients.get(key)
    if client is None:
        # Built outside the lock: the first construction is slow (imports, TLS context) and threads
        # waiting on a lock here would sit on their DB connections in older code paths.
        # Some self-hosted endpoints take no key; the SDK insists on a non-empty one.
        tls = _tls_context()
        transport = transport_for(base_url, tls)
        fresh = _OpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=transport)
            if transport is not None
            else openai.DefaultHttpxClient(verify=tls),
        )
        with _clients_lock:
            client = _clients.setdefault(key, fresh)
        if client is not fresh:
            fresh.close()
    return client


@dataclass
class CallRecord:
    """One HTTP request to a model (an LLMCall row once saved)."""

    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    first_token_ms: int | None = None
    latency_ms: int | None = None
    ok: bool = True
    error: str = ""


@dataclass
class Completion:
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "name", "arguments"}]
    finish_reason: str = ""
    model: str = ""


def _transient(exc: Exception) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc.message)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class LLMSession:
    """The LLM calls of one turn; ``calls`` collects a record per HTTP request."""

    def __init__(self, *, agent: Agent, active: ActiveTurn | None = None, trace_id: str = "") -> None:
        self.agent = agent
        self.active = active
        self.trace_id = trace_id
        self.calls: list[CallRecord] = []
        self.client = llm_client(base_url=agent.base_url, api_key=agent.api_key or "")
        # Called once, when the first request's answer has started (its request left): work that
        # the request need not wait for (pipeline.turn writes the turn's rows there).
        self.on_sent: Callable[[], None] | None = None

    # -- public ----------------------------------------------------------------------------
    def chat(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        on_text: Callable[[str], None] | None = None,
        stream: bool = True,
        max_tokens: int | None = None,
    ) -> Completion:
        """One logical call: the primary model with retries, then the fallback, within agent.timeout."""
        deadline = time.monotonic() + self.agent.timeout
        models = [self.agent.model]
        if self.agent.fallback_model and self.agent.fallback_model != self.agent.model:
            models.append(self.agent.fallback_model)
        last_error = "no model configured"
        for model in models:
            for attempt in range(RETRIES + 1):
                self._check(deadline)
                try:
                    return self._call(model, messages, tools, on_text, stream, deadline, max_tokens)
                except (TurnCancelled, LLMTimeout):
                    raise
                except openai.OpenAIError as exc:
                    self._check(deadline)  # an interrupted stream surfaces as a connection error
                    last_error = _describe(exc)
                    logger.warning("llm.call_failed", model=model, attempt=attempt, error=last_error)
                    if not _transient(exc) or attempt == RETRIES:
                        break
                    self._sleep(BACKOFF_BASE * (2**attempt) * (0.5 + random.random()), deadline)
            if model != models[-1]:
                logger.info("llm.fallback", model=models[-1], after=model)
        raise TurnError("AGENT_003", last_error)

    # -- internals -------------------------------------------------------------------------
    def _check(self, deadline: float) -> None:
        if self.active is not None and self.active.cancelled.is_set():
            raise TurnCancelled()
        if time.monotonic() >= deadline or (self.active is not None and self.active.timed_out.is_set()):
            raise LLMTimeout(f"no answer within {self.agent.timeout} s")

    def _sleep(self, seconds: float, deadline: float) -> None:
        end = min(time.monotonic() + seconds, deadline)
        while time.monotonic() < end:
            self._check(deadline)
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _call(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: Callable[[str], None] | None,
        stream: bool,
        deadline: float,
        max_tokens: int | None,
    ) -> Completion:
        record = CallRecord(model=model)
        self.calls.append(record)
        started = time.monotonic()
        remaining = max(0.1, deadline - started)
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": self.agent.temperature,
            "max_tokens": max_tokens or self.agent.max_output_tokens,
            "timeout": remaining,
            "extra_headers": {"X-Trace-Id": self.trace_id} if self.trace_id else None,
        }
        if tools:
            kwargs["tools"] = tools
        if self.active is not None:
            self.active.timed_out.clear()
            self.active.deadline = deadline
        try:
            if stream:
                result = self._stream(record, kwargs, on_text, started, deadline)
            else:
                response = self.client.chat.completions.create(**kwargs)
                self._sent()
                choice = response.choices[0]
                result = Completion(
                    text=choice.message.content or "",
                    tool_calls=[
                        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments or "{}"}
                        for c in choice.message.tool_calls or []
                        if getattr(c, "function", None)
                    ],
                    finish_reason=choice.finish_reason or "",
                    model=model,
                )
                if response.usage:
                    record.input_tokens = response.usage.prompt_tokens
                    record.output_tokens = response.usage.completion_tokens
                record.first_token_ms = int((time.monotonic() - started) * 1000)
        except BaseException as exc:
            record.ok = False
            record.error = "cancelled" if isinstance(exc, TurnCancelled) else _describe(exc)[:300]
            if isinstance(exc, openai.OpenAIError):
                try:
                    self._check(deadline)
                except (TurnCancelled, LLMTimeout) as signal:
                    record.error = "cancelled" if isinstance(signal, TurnCancelled) else "timeout"
                    raise signal from exc
            raise
        finally:
            record.latency_ms = int((time.monotonic() - started) * 1000)
            if self.active is not None:
                self.active.deadline = None
        return result

    def _sent(self) -> None:
        hook, self.on_sent = self.on_sent, None
        if hook is not None:
            hook()

    def _post_stream(self, kwargs: dict[str, Any]) -> openai.Stream:
        """``chat.completions.create(stream=True, ...)`` without its parameter transform.

        ``create`` first walks the whole request (every message of the history) against the SDK's
        TypedDict annotations to rename aliased keys and drop omitted ones: ~7 % of a turn's CPU.
        Our messages and tools are plain JSON-ready dicts with no aliased keys, so we hand the same
        body to the client's own ``post`` (same request building, auth, timeout, error mapping and
        SSE stream class as ``create``). Falls back to ``create`` if the SDK changes shape.
        """
        if not _DIRECT_POST:  # pragma: no cover - depends on the SDK version
            return self.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        body = {k: v for k, v in kwargs.items() if k not in ("timeout", "extra_headers")}
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        options = make_request_options(
            extra_headers=kwargs.get("extra_headers"), timeout=kwargs["timeout"], security={"bearer_auth": True}
        )
        return self.client.post(
            "/chat/completions",
            body=body,
            options=options,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        )

    def _stream(
        self,
        record: CallRecord,
        kwargs: dict[str, Any],
        on_text: Callable[[str], None] | None,
        started: float,
        deadline: float,
    ) -> Completion:
        with remote_wait():  # the request leaves and the answer starts: nothing to compute meanwhile
            response = self._post_stream(kwargs)
        sock = self.active.attach_response(response.response) if self.active is not None else None
        text = ""
        calls: dict[int, dict[str, Any]] = {}
        finish = ""
        try:
            self._sent()
            self._check(deadline)  # the hook may have found the turn cancelled
            for chunk in _chunk_dicts(response):
                self._check(deadline)
                usage = chunk.get("usage")
                if usage:
                    record.input_tokens = usage.get("prompt_tokens")
                    record.output_tokens = usage.get("completion_tokens")
                choices = chunk.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                delta = choice.get("delta")
                if not delta:
                    continue
                content = delta.get("content")
                parts = delta.get("tool_calls")
                if (content or parts) and record.first_token_ms is None:
                    record.first_token_ms = int((time.monotonic() - started) * 1000)
                if content:
                    text += content
                    if on_text is not None:
                        on_text(text)
                for part in parts or []:
                    slot = calls.setdefault(part.get("index", 0), {"id": "", "name": "", "arguments": ""})
                    if part.get("id"):
                        slot["id"] = part["id"]
                    function = part.get("function")
                    if function:
                        if function.get("name"):
                            slot["name"] += function["name"]
                        if function.get("arguments"):
                            slot["arguments"] += function["arguments"]
        finally:
            if self.active is not None:
                self.active.detach(sock)
            response.close()
        tool_calls = []
        for index in sorted(calls):
            call = calls[index]
            if not call["name"]:
                continue
            tool_calls.append(
                {"id": call["id"] or f"call_{index}", "name": call["name"], "arguments": call["arguments"] or "{}"}
            )
        return Completion(text=text, tool_calls=tool_calls, finish_reason=finish, model=record.model)


def _chunk_dicts(stream: openai.Stream) -> Iterator[dict[str, Any]]:
    """The stream's chunks as the JSON dicts the server sent, not as SDK models.

    The SDK builds a pydantic ChatCompletionChunk (with nested choices, delta, tool calls) for every
    chunk: ~0.15 ms of CPU each, a quarter of a turn's worker CPU at one chunk per token. We read
    the same server-sent events through the SDK's own decoder (``Stream._iter_events``: its SSE
    parsing and its timeout/connection error mapping) and apply the checks ``Stream.__stream__``
    makes ([DONE], an ``error`` object raises APIError). If a future SDK drops that method, fall
    back to its models.
    """
    events = getattr(stream, "_iter_events", None)
    if events is None:  # pragma: no cover - depends on the SDK version
        for chunk in stream:
            yield chunk.model_dump(exclude_unset=True)
        return
    done = False
    try:
        for sse in events():
            # Read on to the end of the body after [DONE] (normally nothing more): a response closed
            # half-read takes its connection with it, so every call would open (and, over HTTPS,
            # handshake) a new one instead of reusing the client's pooled connection.
            if done:
                continue
            if sse.data.startswith("[DONE]"):
                done = True
                continue
            data = sse.json()
            if not isinstance(data, dict):
                continue
            error = data.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(
                    message=message if isinstance(message, str) and message else "An error occurred during streaming",
                    request=stream.response.request,
                    body=error,
                )
            yield data
    finally:
        stream.response.close()


class EventBlockDecoder(SSEDecoder):
    """The SDK's SSE decoder, with a fast path for what chat completion streams are made of.

    The SDK splits the body into lines through a regular expression and a buffer and runs each line
    through the spec's field parser: about a dozen Python calls per token. Streams separate events
    with a blank line ("\n\n") and carry each chunk in one ``data:`` line, so a whole event block
    is cut out at once and, when it is that single line, becomes its event directly. Anything else
    (CR line ends, comments, ``event:``/``id:`` fields, multi-line data) goes through the SDK's own
    parser, line by line, so the result is the same as the SDK's.
    """

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        buffer = b""
        chunks = remote_iter(iterator)  # each read waits on the model: give the CPU slot up meanwhile
        for chunk in chunks:
            buffer = buffer + chunk if buffer else chunk
            if b"\r" in buffer:  # not the common shape: the SDK's line decoder for the rest
                yield from super().iter_bytes(itertools.chain((buffer,), chunks))
                return
            start = 0
            while (end := buffer.find(b"\n\n", start)) >= 0:
                block = buffer[start:end]
                start = end + 2
                if block.startswith(b"data: ") and b"\n" not in block:
                    yield ServerSentEvent(data=block[6:].decode(), id=self._last_event_id)
                else:
                    yield from self._block(block)
            buffer = buffer[start:]
        # The body ended inside an event: its lines are parsed but, as in the SDK, not dispatched
        # without the blank line that ends an event.
        *lines, rest = buffer.decode().split("\n")
        yield from self._lines(lines + [rest] if rest else lines)

    def _block(self, block: bytes) -> Iterator[ServerSentEvent]:
        yield from self._lines(block.decode().split("\n") + [""])

    def _lines(self, lines: list[str]) -> Iterator[ServerSentEvent]:
        for line in lines:
            sse = self.decode(line)
            if sse:
                yield sse


def tool_calls_message(text: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message that asked for these tool calls, as the API expects it back."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in tool_calls
        ],
    }


def parse_arguments(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def llm_warm_up() -> None:
    """Import the SDK's lazy modules once (worker start-up) so the first turns do not pay for it."""
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="warm-up",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=_tls_context()),
    )
    _ = client.chat.completions, client.models
    client.close()
