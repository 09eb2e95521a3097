"""The engine under FeishuClient: authentication, pooled HTTP, retries, rate limiting, logging.

lark-oapi owns the tenant token (TokenManager, whose cache is swapped for the Django cache, Redis in
real mode, through `ClientBuilder.cache(...)`) and shapes the calls built with its builders (`verify()`).
The hot calls (messages, cards, reactions) are shaped by hand as JsonRequest with the same paths and
fields. Everything is sent through apps.feishu.client.http's pooled keep-alive connections instead of
lark's Transport, which opens a new connection (and TLS context) for every call.
"""

from __future__ import annotations

import io
import json
import logging
import mimetypes
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import structlog
from django.conf import settings
from django.core.cache import cache
from lark_oapi.core.cache import ICache
from lark_oapi.core.const import AUTHORIZATION, CONTENT_TYPE
from lark_oapi.core.enum import AccessTokenType, LogLevel
from lark_oapi.core.exception import NoAuthorizationException, ObtainAccessTokenException
from lark_oapi.core.http.transport import _build_header
from lark_oapi.core.json import JSON
from lark_oapi.core.log import logger as lark_logger
from lark_oapi.core.model import BaseRequest, Config, RequestOption
from lark_oapi.core.token import TokenManager, verify
from lark_oapi.core.utils import Files
from lark_oapi.core.utils.user_agent import build_user_agent
from requests_toolbelt import MultipartEncoder

from apps.feishu.client.errors import (
    BAD_RESPONSE,
    CARD_SEQUENCE_CONFLICT,
    CHAT_RATE_LIMITED,
    NETWORK_ERROR,
    PERMANENT_ERRORS,
    RATE_LIMITED,
    TOKEN_ERRORS,
    TOKEN_PERMANENT,
    FeishuError,
)
from apps.feishu.client.http import NotSent, pool_for
from apps.feishu.ratelimit import rate_limiter
from omniagent.gate import remote_wait

logger = structlog.get_logger("apps.feishu.client")
# structlog's stdlib logger runs its processors before the level check; ok-lines are skipped up front
_std_logger = logging.getLogger("apps.feishu.client")

_MAX_HONOURED_RESET = 60.0  # never sleep longer than this on one x-ogw-ratelimit-reset
_USER_AGENT = build_user_agent()
_JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass
class JsonRequest:
    """A JSON Open API call shaped by hand: the hot calls (messages, cards, reactions), for which lark's
    request objects and their reflective JSON encoder cost more than the HTTP exchange itself. The shapes
    are lark-oapi's (same paths, same body fields); `paths` values are URL-quoted like lark's _build_url.
    """

    method: str
    uri: str  # "/open-apis/...", with :name placeholders filled from `paths`
    paths: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: dict | None = None


class DjangoTokenCache(ICache):
    """lark-oapi's token cache on the Django cache: one tenant token per app for all processes.

    A short in-process memo sits in front (Django's Redis backend builds a new client per operation,
    the largest CPU item of a call otherwise). A process whose memo holds a token another process
    dropped gets one auth error, drops it too and refreshes: the normal invalidation path.
    """

    prefix = "feishu:lark:"
    memo_seconds = 60.0

    def __init__(self) -> None:
        self._memo: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        memo = self._memo.get(key)
        now = time.monotonic()
        if memo is not None and memo[1] > now:
            return memo[0]
        try:
            value = cache.get(self.prefix + key)
        except Exception as exc:  # shared cache down: fetch a token per process rather than fail the call
            logger.warning("feishu.token_cache.unavailable", error=f"{exc.__class__.__name__}: {exc}"[:200])
            value = None
        if value:
            self._memo[key] = (value, now + self.memo_seconds)
        else:
            self._memo.pop(key, None)
        return value

    def set(self, key: str, value: str, expire: int) -> None:
        # lark passes an absolute unix time (already 10 minutes before Feishu's expiry)
        ttl = int(expire - time.time())
        if ttl > 0:
            self._memo[key] = (value, time.monotonic() + min(self.memo_seconds, ttl))
            try:
                cache.set(self.prefix + key, value, timeout=ttl)
            except Exception as exc:
                logger.warning("feishu.token_cache.unavailable", error=f"{exc.__class__.__name__}: {exc}"[:200])

    def discard(self, key: str, value: str | None) -> bool:
        """Drop `key` if it still holds `value` (so a token another process just refreshed survives)."""
        memo = self._memo.get(key)
        if memo is not None and (value is None or memo[0] == value):
            self._memo.pop(key, None)
        full = self.prefix + key
        try:
            current = cache.get(full)
            if current is not None and (value is None or current == value):
                cache.delete(full)
                return True
        except Exception as exc:
            logger.warning("feishu.token_cache.unavailable", error=f"{exc.__class__.__name__}: {exc}"[:200])
        return False

    def forget_local(self) -> None:
        """Empty the in-process memo (tests that reset the shared cache underneath us)."""
        self._memo.clear()


token_cache = DjangoTokenCache()


@dataclass
class FeishuResponse:
    """What came back from one HTTP exchange."""

    http_status: int
    headers: Mapping[str, str]
    content: bytes
    body: dict | None  # parsed JSON, None for binary answers
    log_id: str

    @property
    def code(self) -> int:
        if self.body is None:
            return 0 if 200 <= self.http_status < 300 else BAD_RESPONSE
        try:
            return int(self.body.get("code", 0))
        except (TypeError, ValueError):
            return BAD_RESPONSE

    @property
    def msg(self) -> str:
        if self.body is None:
            return "" if 200 <= self.http_status < 300 else f"non-JSON answer, http {self.http_status}"
        return str(self.body.get("msg", ""))

    @property
    def data(self) -> dict:
        return (self.body or {}).get("data") or {}

    @property
    def ok(self) -> bool:
        return self.http_status < 400 and self.code == 0


class _NamedBytes(io.BytesIO):
    """Uploads need a file-like object with a name (multipart filename)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


_token_fetch_lock = threading.Lock()


class FeishuTransport:
    """Credentials, lark config and the call engine for one app; FeishuClient adds the API methods."""

    def __init__(self, *, app_id: str, app_secret: str, base_url: str, name: str = "") -> None:
        self.app_id = app_id
        self.base_url = base_url.rstrip("/")
        self.name = name or app_id
        # What lark.Client.builder()...build() would set up, without the Client: it imports every
        # Open API service (see apps.feishu.client.lark_light); only its config is used here.
        config = Config()
        config.app_id, config.app_secret, config.domain = app_id, app_secret, self.base_url
        config.cache = token_cache
        config.enable_set_token = True  # lets callers pass a user_access_token for user-identity calls
        config.timeout = settings.FEISHU_HTTP_TIMEOUT
        config.log_level = LogLevel.WARNING
        TokenManager.cache = token_cache  # the builder's _init_cache: a class-wide setting
        lark_logger.setLevel(int(LogLevel.WARNING.value))
        self._config = config

    # --- the engine -------------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        build: Callable[[], BaseRequest | JsonRequest],
        *,
        multipart: bool = False,
        sequenced: bool = False,
        user_access_token: str = "",
    ) -> FeishuResponse:
        """Send the request `build()` makes (rebuilt per attempt: upload streams are consumed).

        Raises FeishuError when the call failed for good.
        """
        max_retries = settings.FEISHU_MAX_RETRIES
        retries = 0
        token_refreshed = False
        maybe_applied = False  # an earlier attempt may have reached Feishu (timeout, 5xx)
        attempt = 0
        while True:
            attempt += 1
            with remote_wait():
                rate_limiter().acquire(self.app_id)
            started = time.monotonic()
            reset: float | None = None
            token = ""
            try:
                resp, token = self._execute(build(), multipart=multipart, user_access_token=user_access_token)
            except ObtainAccessTokenException as exc:
                code = int(exc.code or BAD_RESPONSE)
                error = FeishuError(
                    code, f"tenant token: {exc.msg}", retryable=code == RATE_LIMITED or code not in TOKEN_PERMANENT
                )
            except NoAuthorizationException as exc:
                error = FeishuError(BAD_RESPONSE, f"no credentials: {exc.msg}")
            except NotSent as exc:  # refused, unreachable, DNS, connect timeout, TLS handshake
                error = FeishuError(NETWORK_ERROR, f"connection failed: {_describe(exc)}", retryable=True)
            except TimeoutError as exc:  # sent, no answer in time: it may have been applied
                maybe_applied = True
                error = FeishuError(NETWORK_ERROR, f"timeout: {_describe(exc)}", retryable=True)
            except OSError as exc:  # reset or dropped mid-exchange, unreadable answer: it may have been applied
                maybe_applied = True
                error = FeishuError(NETWORK_ERROR, f"connection failed: {_describe(exc)}", retryable=True)
            except ValueError as exc:  # the token endpoint answered something that is not JSON
                error = FeishuError(BAD_RESPONSE, f"tenant token: unreadable answer ({exc})", retryable=True)
            else:
                elapsed = round((time.monotonic() - started) * 1000, 1)
                code = resp.code
                if resp.ok:
                    if _std_logger.isEnabledFor(logging.INFO):
                        logger.info(
                            "feishu.call", op=op, app_id=self.app_id, outcome="ok", http_status=resp.http_status,
                            log_id=resp.log_id, attempt=attempt, ms=elapsed,
                        )  # fmt: skip
                    return resp
                if sequenced and code == CARD_SEQUENCE_CONFLICT and maybe_applied:
                    # our earlier attempt landed although we never saw the answer: done, not a conflict
                    logger.info(
                        "feishu.call", op=op, app_id=self.app_id, outcome="ok_after_ambiguous_attempt", code=code,
                        log_id=resp.log_id, attempt=attempt, ms=elapsed,
                    )  # fmt: skip
                    return resp
                if code in TOKEN_ERRORS and not user_access_token and not token_refreshed:
                    token_refreshed = True
                    dropped = token_cache.discard(f"self_tenant_token:{self.app_id}", token)
                    logger.warning(
                        "feishu.call", op=op, app_id=self.app_id, outcome="token_rejected", code=code,
                        msg=resp.msg, log_id=resp.log_id, attempt=attempt, dropped_cached_token=dropped,
                    )  # fmt: skip
                    continue
                retryable = (
                    code not in PERMANENT_ERRORS
                    and code not in TOKEN_ERRORS
                    and (
                        resp.http_status == 429 or resp.http_status >= 500 or code in (RATE_LIMITED, CHAT_RATE_LIMITED)
                    )
                )
                if resp.http_status >= 500:
                    maybe_applied = True
                if resp.http_status == 429 or code == RATE_LIMITED:
                    reset = _parse_reset(resp.headers)
                error = FeishuError(
                    code, resp.msg or f"http {resp.http_status}", resp.log_id, resp.http_status, retryable
                )

            error.attempts = attempt
            if not error.retryable or retries >= max_retries:
                logger.error(
                    "feishu.call", op=op, app_id=self.app_id, outcome="failed", code=error.code, msg=error.msg,
                    http_status=error.http_status, log_id=error.log_id, attempt=attempt, retryable=error.retryable,
                )  # fmt: skip
                raise error
            retries += 1
            delay = _backoff(retries, reset)
            logger.warning(
                "feishu.call", op=op, app_id=self.app_id, outcome="retry", code=error.code, msg=error.msg,
                http_status=error.http_status, log_id=error.log_id, attempt=attempt, sleep_s=round(delay, 3),
                ratelimit_reset=reset,
            )  # fmt: skip
            with remote_wait():
                time.sleep(delay)

    def _tenant_token(self) -> str:
        """The cached tenant token, fetched by lark-oapi's TokenManager (into the shared cache) on a miss."""
        token = token_cache.get(f"self_tenant_token:{self.app_id}")
        if token:
            return token
        # lark-oapi 1.7.5 builds every token request on one shared request object (a mutable default
        # argument), so two threads fetching at once could swap app credentials: fetch one at a time.
        with _token_fetch_lock:
            try:
                return TokenManager.get_self_tenant_token(self._config)
            except requests.RequestException as exc:  # lark fetches with requests; our call never left
                raise NotSent(f"tenant token: {_describe(exc)}") from exc

    def _execute(
        self, request: BaseRequest | JsonRequest, *, multipart: bool, user_access_token: str
    ) -> tuple[FeishuResponse, str]:
        """Authenticate and shape the request (lark-oapi, or by hand for a JsonRequest); send it pooled."""
        if isinstance(request, JsonRequest):
            token = user_access_token or self._tenant_token()
            headers = {"User-Agent": _USER_AGENT, AUTHORIZATION: f"Bearer {token}"}
            data = None
            if request.body is not None:
                data = json.dumps(request.body, ensure_ascii=False, separators=(",", ":")).encode()
                headers[CONTENT_TYPE] = _JSON_CONTENT_TYPE
            uri = request.uri
            for key, value in request.paths.items():
                uri = uri.replace(":" + key, urllib.parse.quote(value, safe=""))
            target = f"{uri}?{urllib.parse.urlencode(request.query)}" if request.query else uri
            method = request.method
        else:
            target, method, headers, data = self._lark_shaped(request, multipart=multipart, user=user_access_token)
            token = (headers.get(AUTHORIZATION) or "").removeprefix("Bearer ")
        timeout = settings.FEISHU_HTTP_TIMEOUT
        with remote_wait():
            raw = pool_for(self.base_url).request(
                method, target, headers=headers, body=data, timeout=(min(timeout, 5), timeout)
            )
        body = None
        if (raw.headers.get("content-type") or "").startswith("application/json"):
            try:
                body = json.loads(raw.content)
            except ValueError:
                body = {"code": BAD_RESPONSE, "msg": f"invalid JSON answer, http {raw.status}"}
        elif raw.status >= 400:
            text = raw.content[:120].decode("utf-8", "replace")
            body = {"code": BAD_RESPONSE, "msg": f"non-JSON answer, http {raw.status}: {text}"}
        log_id = raw.headers.get("x-tt-logid") or ((body or {}).get("error") or {}).get("log_id") or ""
        return FeishuResponse(raw.status, raw.headers, raw.content, body, log_id), token

    def _lark_shaped(self, request: BaseRequest, *, multipart: bool, user: str) -> tuple[str, str, dict, Any]:
        """lark-oapi authenticates and shapes a request built with its builders (uploads, data APIs)."""
        option = RequestOption()
        if user:
            option.user_access_token = user
        elif AccessTokenType.TENANT in request.token_types:
            option.tenant_access_token = self._tenant_token()
        verify(self._config, request, option)
        data: Any = None
        if request.body is not None:
            if multipart:
                form = MultipartEncoder(_form_fields(Files.parse_form_data(request.body)))
                data = form.to_string()
                option.headers[CONTENT_TYPE] = form.content_type
            else:
                data = JSON.marshal(request.body).encode("utf-8")
                option.headers[CONTENT_TYPE] = _JSON_CONTENT_TYPE
        headers = _build_header(request, option, self._config)
        uri = request.uri
        for key, value in (request.paths or {}).items():
            uri = uri.replace(":" + key, urllib.parse.quote("" if value is None else str(value), safe=""))
        target = f"{uri}?{urllib.parse.urlencode(request.queries)}" if request.queries else uri
        return target, request.http_method.name, headers, data


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text[:160]}" if text else exc.__class__.__name__


def _form_fields(fields: dict) -> dict:
    """lark's form minus empty fields, with file parts named (MultipartEncoder omits a bare file's name)."""
    out = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, _NamedBytes):
            value = (value.name, value, mimetypes.guess_type(value.name)[0] or "application/octet-stream")
        out[key] = value
    return out


def _parse_reset(headers: Mapping[str, str]) -> float | None:
    value = headers.get("x-ogw-ratelimit-reset")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _backoff(retry: int, reset: float | None) -> float:
    """Exponential backoff with jitter; never earlier than Feishu's announced rate-limit reset."""
    base = float(getattr(settings, "FEISHU_RETRY_BASE_DELAY", 0.5))
    cap = float(getattr(settings, "FEISHU_RETRY_MAX_DELAY", 10.0))
    delay = min(cap, base * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)
    if reset is not None:
        delay = max(delay, min(reset, _MAX_HONOURED_RESET) + random.uniform(0, min(base, 0.25)))
    return delay
