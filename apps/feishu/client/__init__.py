"""The one door to the Feishu Open API (DESIGN §5 invariant 6).

Tenant tokens come from lark-oapi's TokenManager, whose cache is swapped for the Django cache (Redis
in real mode) through `ClientBuilder.cache(...)`, so all processes share one token per app. Uploads and
data APIs are built with lark-oapi's request builders and `verify()`; the hot calls (messages, cards,
reactions) are shaped by hand with the same paths and fields (lark's reflective request objects cost
more CPU than the exchange). Every call is sent through pooled keep-alive connections
(apps.feishu.client.http) instead of lark's Transport, which opens a new connection per call.

Around each call: the per-app rate limiter (apps.feishu.ratelimit), retries with exponential backoff
and jitter on 429 / 99991400 (honouring `x-ogw-ratelimit-reset`), 5xx and timeouts, one token refresh
on 99991661/99991663/99991664/99991668, no retry on permanent errors, and one structlog line per
outcome carrying Feishu's log id.
"""

from apps.feishu.client.lark_light import lark_light

lark_light()  # before the first lark_oapi import below: see that module

from apps.feishu.client.api import FeishuClient  # noqa: E402
from apps.feishu.client.errors import (  # noqa: E402
    BAD_RESPONSE,
    CARD_SEQUENCE_CONFLICT,
    CHAT_RATE_LIMITED,
    NETWORK_ERROR,
    PERMANENT_ERRORS,
    RATE_LIMITED,
    TOKEN_ERRORS,
    FeishuError,
)
from apps.feishu.client.transport import DjangoTokenCache, FeishuResponse, token_cache  # noqa: E402

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
