"""The engine under FeishuClient: authentication, pooled HTTP, retries, rate limiting, logging.

lark-oapi builds and authenticates each request (`verify()` / TokenManager, whose tenant token cache is
swapped for the Django cache, Redis in real mode, through `ClientBuilder.cache(...)`); it is then sent
here through a pooled `requests.Session` per base URL instead of lark's Transport, which opens a new
connection (and TLS context) for every call.
"""

from __future__ import annotations

import io
import mimetypes
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import lark_oapi as lark
import requests
import structlog
import urllib3
from django.conf import settings
from django.core.cache import cache
from lark_oapi.core.cache import ICache
from lark_oapi.core.const import AUTHORIZATION, CONTENT_TYPE
from lark_oapi.core.enum import AccessTokenType
from lark_oapi.core.exception import NoAuthorizationException, ObtainAccessTokenException
from lark_oapi.core.http.transport import _build_header, _build_url
from lark_oapi.core.json import JSON
from lark_oapi.core.model import BaseRequest, RequestOption
from lark_oapi.core.token import TokenManager, verify
from lark_oapi.core.utils import Files
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
from apps.feishu.ratelimit import rate_limiter

logger = structlog.get_logger("apps.feishu.client")

_MAX_HONOURED_RESET = 60.0  # never sleep longer than this on one x-ogw-ratelimit-reset
_POOL_SIZE = 32


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


class _Sessions:
    """One pooled requests.Session per (process, base URL); sessions never store cookies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[tuple[int, str], requests.Session] = {}

    def get(self, base_url: str) -> requests.Session:
        key = (os.getpid(), base_url)  # a forked worker must not share the parent's sockets
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    session = requests.Session()
                    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
                    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=_POOL_SIZE)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    # read proxy / CA settings from the environment once, not on every request
                    session.proxies = requests.utils.get_environ_proxies(base_url)
                    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or True
                    session.trust_env = False
                    self._sessions[key] = session
        return session


_sessions = _Sessions()


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
        self.lark = (
            lark.Client.builder()
            .app_id(app_id)
            .app_secret(app_secret)
            .domain(self.base_url)
            .cache(token_cache)
            .enable_set_token(True)  # lets callers pass a user_access_token for user-identity calls
            .timeout(settings.FEISHU_HTTP_TIMEOUT)
            .log_level(lark.LogLevel.WARNING)
            .build()
        )
        self._config = self.lark.config

    # --- the engine -------------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        build: Callable[[], BaseRequest],
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
            except requests.Timeout as exc:
                maybe_applied = maybe_applied or not isinstance(exc, requests.ConnectTimeout)
                error = FeishuError(NETWORK_ERROR, f"timeout: {exc.__class__.__name__}", retryable=True)
            except requests.RequestException as exc:  # refused, reset, dropped mid-answer, ...
                maybe_applied = maybe_applied or not _never_sent(exc)
                error = FeishuError(NETWORK_ERROR, f"connection failed: {_describe(exc)}", retryable=True)
            except ValueError as exc:  # the token endpoint answered something that is not JSON
                error = FeishuError(BAD_RESPONSE, f"tenant token: unreadable answer ({exc})", retryable=True)
            else:
                elapsed = round((time.monotonic() - started) * 1000, 1)
                code = resp.code
                if resp.ok:
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
            time.sleep(delay)

    def _tenant_token(self) -> str:
        """The cached tenant token, fetched by lark-oapi's TokenManager (into the shared cache) on a miss."""
        token = token_cache.get(f"self_tenant_token:{self.app_id}")
        if token:
            return token
        # lark-oapi 1.7.5 builds every token request on one shared request object (a mutable default
        # argument), so two threads fetching at once could swap app credentials: fetch one at a time.
        with _token_fetch_lock:
            return TokenManager.get_self_tenant_token(self._config)

    def _execute(self, request: BaseRequest, *, multipart: bool, user_access_token: str) -> tuple[FeishuResponse, str]:
        """lark-oapi authenticates and shapes the request; we send it on a pooled connection."""
        option = RequestOption()
        if user_access_token:
            option.user_access_token = user_access_token
        elif AccessTokenType.TENANT in request.token_types:
            option.tenant_access_token = self._tenant_token()
        verify(self._config, request, option)

        data: Any = None
        if request.body is not None:
            if multipart:
                form = MultipartEncoder(_form_fields(Files.parse_form_data(request.body)))
                data = form
                option.headers[CONTENT_TYPE] = form.content_type
            else:
                data = JSON.marshal(request.body).encode("utf-8")
                option.headers[CONTENT_TYPE] = "application/json; charset=utf-8"
        headers = _build_header(request, option, self._config)
        url = _build_url(self._config.domain, request.uri, request.paths)
        timeout = settings.FEISHU_HTTP_TIMEOUT
        raw = _send(
            _sessions.get(self.base_url),
            request.http_method.name,
            url,
            headers=headers,
            params=request.queries,
            data=data,
            timeout=(min(timeout, 5), timeout),
        )
        body = None
        if (raw.headers.get("Content-Type") or "").startswith("application/json"):
            try:
                body = raw.json()
            except ValueError:
                body = {"code": BAD_RESPONSE, "msg": f"invalid JSON answer, http {raw.status_code}"}
        elif raw.status_code >= 400:
            body = {"code": BAD_RESPONSE, "msg": f"non-JSON answer, http {raw.status_code}: {raw.text[:120]}"}
        log_id = raw.headers.get("X-Tt-Logid") or ((body or {}).get("error") or {}).get("log_id") or ""
        token = (headers.get(AUTHORIZATION) or "").removeprefix("Bearer ")
        return FeishuResponse(raw.status_code, raw.headers, raw.content, body, log_id), token


def _send(session: requests.Session, method: str, url: str, *, headers, params, data, timeout) -> requests.Response:
    """``session.request(...)`` without its per-call bookkeeping, on the same pooled adapter.

    Session.request merges the session's cookie jar, hooks, auth and environment settings into every
    call and walks the redirect machinery; our sessions have none of those (no cookies, no hooks,
    trust_env off, proxies and CA fixed at creation), so that was ~15% of a call's CPU for nothing.
    The request is prepared the way Session.prepare_request would (same default headers, then ours)
    and handed to the adapter, which raises the same requests exceptions. Feishu's Open API does
    not redirect; if an answer ever does, the call is made again through session.request.
    """
    prepared = requests.PreparedRequest()
    prepared.prepare_method(method)
    prepared.prepare_url(url, params)
    prepared.prepare_headers({**session.headers, **headers})
    prepared.prepare_body(data, None)
    adapter = session.get_adapter(url)
    raw = adapter.send(
        prepared, stream=False, timeout=timeout, verify=session.verify, cert=None, proxies=session.proxies
    )
    _ = raw.content  # read it all now (as Session.send does), releasing the connection to the pool
    if raw.is_redirect and isinstance(data, bytes | None):  # an upload stream cannot be sent twice
        return session.request(method, url, headers=headers, params=params, data=data, timeout=timeout)
    return raw


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly never reached Feishu (no connection was established)."""
    seen: BaseException | None = exc
    for _ in range(8):  # requests wraps urllib3's MaxRetryError, which wraps the cause
        if seen is None:
            break
        if isinstance(seen, urllib3.exceptions.NewConnectionError):  # includes NameResolutionError
            return True
        if isinstance(seen, urllib3.exceptions.MaxRetryError):
            seen = seen.reason
        elif seen.args and isinstance(seen.args[0], BaseException):
            seen = seen.args[0]
        else:
            seen = seen.__cause__ or seen.__context__
    return False


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
