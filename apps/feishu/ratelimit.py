"""Per-app token bucket in front of every Feishu call, shared by all processes through Redis.

Feishu limits each app per API (typically 50/s, 1000/min). A burst from several workers must queue
here instead of tripping those limits, so the bucket lives in Redis (one key per app_id) and is
updated by one Lua script: the caller *reserves* a token, possibly going into debt, and sleeps the
time the script returns. Reservations are served in arrival order and cost one round trip.

Without REDIS_URL (the embedded default: one process) the same arithmetic runs in-process.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog
from django.conf import settings

logger = structlog.get_logger(__name__)

# KEYS[1] = bucket key; ARGV = rate (tokens/s), capacity (tokens), cost (tokens).
# The hash holds `tokens` (may go negative: reserved by callers who are sleeping) and `ts` (µs).
# Returns the wait in microseconds before the reserved token may be used.
_RESERVE_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + (now - ts) * rate / 1000000)
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local wait = 0
if tokens < 0 then
  wait = math.ceil(-tokens * 1000000 / rate)
end
-- keep the key while debt is outstanding, drop it once the bucket would be full again
redis.call('PEXPIRE', KEYS[1], math.ceil(((capacity - tokens) / rate) * 1000) + 1000)
return wait
"""


class RateLimiter:
    """Reserve-then-sleep token bucket keyed by app id."""

    def acquire(self, key: str, *, rate: float | None = None, capacity: float | None = None) -> float:
        """Take one token for `key`, sleeping until it is available; return the seconds slept."""
        rate = float(rate or settings.FEISHU_RATE_PER_SECOND)
        capacity = float(capacity or max(rate, 1.0))
        wait = self.reserve(key, rate=rate, capacity=capacity)
        if wait > 0:
            if wait >= 1.0:
                logger.info("feishu.ratelimit.queued", key=key, wait_s=round(wait, 3), rate=rate)
            time.sleep(wait)
        return wait

    def reserve(self, key: str, *, rate: float, capacity: float) -> float:
        raise NotImplementedError


class RedisRateLimiter(RateLimiter):
    """The bucket lives in Redis, so every process of every host shares it."""

    key_prefix = "feishu:ratelimit:"

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._redis.register_script(_RESERVE_LUA)

    def reserve(self, key: str, *, rate: float, capacity: float) -> float:
        try:
            micros = self._script(keys=[self.key_prefix + key], args=[rate, capacity, 1])
        except redis.RedisError as exc:
            # fail open: Feishu's own 429s (retried with backoff) still protect us while Redis is away
            logger.warning("feishu.ratelimit.unavailable", key=key, error=f"{exc.__class__.__name__}: {exc}"[:200])
            return 0.0
        return int(micros) / 1_000_000


class LocalRateLimiter(RateLimiter):
    """Same arithmetic in-process, for the embedded single-process mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def reserve(self, key: str, *, rate: float, capacity: float) -> float:
        with self._lock:
            now = time.monotonic()
            tokens, ts = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - ts) * rate) - 1
            self._buckets[key] = (tokens, now)
        return -tokens / rate if tokens < 0 else 0.0


_limiter: RateLimiter | None = None
_limiter_lock = threading.Lock()


def rate_limiter() -> RateLimiter:
    """The process-wide limiter: Redis-backed when REDIS_URL is set, in-process otherwise."""
    global _limiter
    if _limiter is None:
        with _limiter_lock:
            if _limiter is None:
                url = getattr(settings, "REDIS_URL", None)
                _limiter = RedisRateLimiter(url) if url else LocalRateLimiter()
    return _limiter
