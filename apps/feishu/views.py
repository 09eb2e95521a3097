"""Feishu webhook: verify the request, then hand the event to the ingest service; answer once it is committed.

Order of checks (each failure is a 4xx with a JSON reason, logged, no rows written):
size (413) → bot by app_id (404) → JSON (400) → decrypt (400) → signature (401, WEBHOOK_001) →
timestamp window (401) → verification token (401) → url_verification challenge → schema 2.0 (400).
A database that cannot be reached is a 503, so Feishu delivers the event again later.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import structlog
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, close_old_connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from psycopg_pool import PoolTimeout

from apps.bots.models import Bot
from apps.feishu.events import DecryptError, event_decrypt, signature_valid, token_valid
from apps.feishu.ingest import InvalidEvent, RetryLater, event_ingest
from apps.transcripts.models import InboundEvent
from omniagent.metrics import INBOUND_EVENTS

logger = structlog.get_logger(__name__)

# PoolTimeout: the pool's own timeout, in case it escapes Django's error wrapping.
DB_DOWN = (OperationalError, InterfaceError, PoolTimeout)


Answer = tuple[int, dict]  # HTTP status, JSON body


def _reject(status: int, reason: str, *, app_id: str, code: str = "") -> Answer:
    log = logger.warning if status < 500 else logger.error
    log("feishu.webhook_rejected", app_id=app_id[:64], status=status, reason=reason, code=code or None)
    INBOUND_EVENTS.labels(source="webhook", outcome=f"rejected_{status}").inc()
    body = {"error": reason}
    if code:
        body["code"] = code
    return status, body


def _body(request: HttpRequest, limit: int) -> bytes | None:
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    try:
        body = request.body
    except RequestDataTooBig:
        return None
    return body if len(body) <= limit else None


def _token_of(payload: dict) -> object:
    header = payload.get("header")
    if isinstance(header, dict) and "token" in header:
        return header.get("token")
    return payload.get("token")


def webhook_answer(*, app_id: str, body: bytes | None, headers: Mapping[str, str]) -> Answer:
    """Everything the webhook does, independent of the HTTP layer. `body` None means too large;
    `headers` are looked up in lower case."""
    if body is None:
        return _reject(413, f"body larger than {settings.FEISHU_WEBHOOK_MAX_BYTES} bytes", app_id=app_id)
    try:
        return _handle(headers, app_id, body)
    except DB_DOWN as exc:
        logger.error("feishu.webhook_db_unavailable", app_id=app_id[:64], error=type(exc).__name__)
        INBOUND_EVENTS.labels(source="webhook", outcome="rejected_503").inc()
        return 503, {"error": "database unavailable, retry later"}
    except RetryLater as exc:
        return _reject(503, str(exc), app_id=app_id)


@csrf_exempt  # Feishu cannot send a CSRF token; requests are authenticated by signature / token instead
@require_POST
def feishu_webhook(request: HttpRequest, app_id: str) -> JsonResponse:
    status, answer = webhook_answer(
        app_id=app_id, body=_body(request, settings.FEISHU_WEBHOOK_MAX_BYTES), headers=request.headers
    )
    return JsonResponse(answer, status=status, json_dumps_params={"ensure_ascii": False})


# Each webhook needs its bot's keys; loading them is a query plus decryption of two secrets. Keep
# the row per process briefly (deactivating a bot or rotating its keys takes effect within this delay).
BOT_CACHE_SECONDS = 5.0
_bots: dict[str, tuple[float, Bot]] = {}


def _bot_for(app_id: str) -> Bot | None:
    now = time.monotonic()
    hit = _bots.get(app_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    bot = (
        Bot.objects.filter(app_id=app_id, is_active=True, tenant__is_active=True)
        .only(
            "id",
            "tenant_id",
            "app_id",
            "app_secret",
            "verification_token",
            "encrypt_key",
            "bot_open_id",
            "base_url",
            "name",
        )
        .first()
    )
    if bot is None:  # unknown ids are not remembered: a flood of them cannot grow this dict
        _bots.pop(app_id, None)
    elif BOT_CACHE_SECONDS > 0:
        _bots[app_id] = (now + BOT_CACHE_SECONDS, bot)
    return bot


def _handle(headers: Mapping[str, str], app_id: str, body: bytes) -> Answer:
    bot = _bot_for(app_id)
    if bot is None:
        return _reject(404, "unknown app_id", app_id=app_id)

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _reject(400, "body is not JSON", app_id=app_id)
    if not isinstance(payload, dict):
        return _reject(400, "body is not a JSON object", app_id=app_id)

    encrypted = "encrypt" in payload
    if encrypted:
        if not bot.encrypt_key:
            return _reject(400, "encrypted body but the bot has no encrypt key", app_id=app_id)
        if not isinstance(payload["encrypt"], str):
            return _reject(400, "encrypt is not a string", app_id=app_id)
        try:
            payload = json.loads(event_decrypt(encrypt_key=bot.encrypt_key, ciphertext=payload["encrypt"]))
        except (DecryptError, ValueError, UnicodeDecodeError) as exc:
            return _reject(400, f"cannot decrypt body: {exc}", app_id=app_id)
        if not isinstance(payload, dict):
            return _reject(400, "decrypted body is not a JSON object", app_id=app_id)

    is_challenge = payload.get("type") == "url_verification"
    timestamp = headers.get("x-lark-request-timestamp", "")
    nonce = headers.get("x-lark-request-nonce", "")
    signature = headers.get("x-lark-signature", "")
    # Feishu signs event pushes when an encrypt key is set; the URL challenge may come unsigned and is
    # then protected by the verification token alone (it has no side effect).
    must_sign = bool(bot.encrypt_key) and (bool(signature) or not is_challenge)
    if must_sign and not (
        timestamp
        and nonce
        and signature
        and signature_valid(
            timestamp=timestamp, nonce=nonce, encrypt_key=bot.encrypt_key, body=body, signature=signature
        )
    ):
        return _reject(401, "signature check failed", app_id=app_id, code="WEBHOOK_001")
    if timestamp:
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            return _reject(401, "bad X-Lark-Request-Timestamp", app_id=app_id)
        if skew > settings.FEISHU_WEBHOOK_REPLAY_WINDOW:
            return _reject(401, "timestamp outside the replay window", app_id=app_id)

    if bot.verification_token and not token_valid(expected=bot.verification_token, received=_token_of(payload)):
        return _reject(401, "verification token mismatch", app_id=app_id)

    if is_challenge:
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            return _reject(400, "challenge missing", app_id=app_id)
        return 200, {"challenge": challenge}

    if payload.get("schema") != "2.0":
        return _reject(400, "unsupported schema (only 2.0 events)", app_id=app_id)
    header = payload.get("header")
    if isinstance(header, dict) and header.get("app_id") not in (None, "", bot.app_id):
        return _reject(400, "event is for another app_id", app_id=app_id)

    try:
        result = event_ingest(bot=bot, payload=payload, source=InboundEvent.Source.WEBHOOK)
    except InvalidEvent as exc:
        return _reject(400, str(exc), app_id=app_id)
    return 200, result.response


# --- lean ASGI path ----------------------------------------------------------------------------
# Under ASGI, Django runs every MiddlewareMixin middleware's process_request/process_response through
# sync_to_async: about a dozen thread hops per request, most of the webhook's CPU. The webhook needs no
# middleware (no session, user, CSRF, messages or frame options), so `webhook_fast_path(app)` answers
# POST /webhooks/feishu/<app_id>/ directly with the same `webhook_answer` and hands every other request
# to `app`. The Django view above stays the reference path (and serves the test client).

_WEBHOOK_PATH = re.compile(r"^/webhooks/feishu/(?P<app_id>[^/]+)/$")


def _answer_in_worker(app_id: str, body: bytes | None, headers: dict[str, str]) -> Answer:
    # No request_started/finished signals here: hand the DB connection back to the pool ourselves.
    close_old_connections()
    try:
        return webhook_answer(app_id=app_id, body=body, headers=headers)
    finally:
        close_old_connections()


# The webhook's own thread pool rather than asgiref's sync_to_async, whose per-call machinery
# (context and thread-sensitivity bookkeeping) cost more CPU than the hop itself. Each thread holds a
# DB connection only while it answers one request. A request spends most of its time waiting on its
# INSERT's commit: with 8 threads a burst of 200 events took twice as long to acknowledge (the last
# after ~1.0 s instead of ~0.5 s) while the turn workers shared the cores. 16 stays below the
# database pool's default size (DB_POOL_MAX, 20), leaving connections for the admin.
WEBHOOK_THREADS = 16


@cache
def _webhook_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=WEBHOOK_THREADS, thread_name_prefix="webhook")


async def _answer_async(app_id: str, body: bytes | None, headers: dict[str, str]) -> Answer:
    call = partial(contextvars.copy_context().run, _answer_in_worker, app_id, body, headers)
    return await asyncio.get_running_loop().run_in_executor(_webhook_pool(), call)


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(send, status: int, body: dict, extra: list | None = None) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


async def _webhook_asgi(scope, receive, send, app_id: str) -> None:
    if scope["method"] != "POST":
        await _send_json(send, 405, {"error": "method not allowed"}, [(b"allow", b"POST")])
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    limit = settings.FEISHU_WEBHOOK_MAX_BYTES
    try:
        declared = int(headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    try:
        body = None if declared > limit else await _read_body(receive, limit)
    except ConnectionAbortedError:
        return
    status, answer = await _answer_async(app_id, body, headers)
    await _send_json(send, status, answer)


def webhook_fast_path(app):
    """Wrap an ASGI app so Feishu webhooks skip Django's middleware stack (see above)."""

    async def router(scope, receive, send):
        if scope["type"] == "http":
            match = _WEBHOOK_PATH.match(scope["path"])
            if match:
                await _webhook_asgi(scope, receive, send, match["app_id"])
                return
        await app(scope, receive, send)

    return router
