"""The one door to the Feishu Open API (DESIGN §5 invariant 6).

Every outbound call is built with lark-oapi's request builders and authenticated by lark-oapi's
`verify()` / TokenManager, whose tenant token cache is swapped for the Django cache (Redis in real
mode) through `ClientBuilder.cache(...)`, so all processes share one token per app. The built request
is then sent here through a pooled `requests.Session` per base URL instead of lark's Transport, which
opens a new connection (and TLS context) for every call.

Around each call: the per-app rate limiter (apps.feishu.ratelimit), retries with exponential backoff
and jitter on 429 / 99991400 (honouring `x-ogw-ratelimit-reset`), 5xx and timeouts, one token refresh
on 99991661/99991663/99991664/99991668, no retry on permanent errors, and one structlog line per
outcome carrying Feishu's log id.
"""

from apps.feishu.client.api import FeishuClient
from apps.feishu.client.errors import (
    BAD_RESPONSE,
    CARD_SEQUENCE_CONFLICT,
    CHAT_RATE_LIMITED,
    NETWORK_ERROR,
    PERMANENT_ERRORS,
    RATE_LIMITED,
    TOKEN_ERRORS,
    FeishuError,
)
from apps.feishu.client.transport import DjangoTokenCache, FeishuResponse, token_cache

__all__ = [
    "BAD_RESPONSE",
    "CARD_SEQUENCE_CONFLICT",
    "CHAT_RATE_LIMITED",
    "NETWORK_ERROR",
    "PERMANENT_ERRORS",
    "RATE_LIMITED",
    "TOKEN_ERRORS",
    "DjangoTokenCache",
    "FeishuClient",
    "FeishuError",
    "FeishuResponse",
    "token_cache",
]
