"""Per-app token bucket in front of every Feishu call, shared by all processes through Redis.

Feishu limits each app per API (typically 50/s, 1000/min). A burst from several workers must queue
here instead of tripping those limits, so the bucket lives in Redis (one key per app_id) and is
updated by one Lua script: the caller *reserves* a token, possibly going into debt, and sleeps the
time the script returns. Reservations are served in arrival order and cost one round trip.

A round trip per call was ~30% of a Feishu call's CPU, so under load a process reserves tokens in
batches: one script run takes n tokens from the shared bucket and returns the level, from which each
token's own due time follows (token i of n is due when the bucket would have paid for it). Threads
then spend them locally. A batch never holds more than BATCH_WINDOW seconds of the shared rate, and a
token not used within BATCH_WINDOW of its due time is dropped (it was taken from the bucket, so the
shared limit only gets stricter). The batch size adapts: it doubles while batches run out quickly and
halves when tokens expire unused, so an idle process reserves one token at a time, exactly as before.

Without REDIS_URL (the embedded default: one process) the same arithmetic runs in-process.
"""

from __future__ import annotations

import os
import threading
import time

import redis
import structlog
from django.conf import settings

logger = structlog.get_logger(__name__)

# KEYS[1] = bucket key; ARGV = rate (tokens/s), capacity (tokens), cost (tokens to take).
# The hash holds `tokens` (may go negative: reserved by callers who are sleeping) and `ts` (µs).
# Returns the level after taking them (may be negative) as a string; the key is kept while debt is
# outstanding and dropped once the bucket would be full again.
_RESERVE_BATCH_LUA = """
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
redis.call('PEXPIRE', KEYS[1], math.ceil(((capacity - tokens) / rate) * 1000) + 1000)
return tostring(tokens)
"""

BATCH_WINDOW = 0.25  # seconds of the shared rate one batch may hold; also how long a due token keeps
MAX_BATCH = 20


class RateLimiter:
    """Reserve-then-sleep token bucket keyed by app id."""

    def acquire(self, key: str, *, rate: float | None = None, capacity: float | None = None) -> float:
        """Take one token for `key`, sleeping until it is available; return the seconds slept."""
        rate = float(rate or settings.FEISHU_RATE_PER_SECOND)
        capacity = float(capacity or max(rate, 1.0))
        wait = self.take(key, rate=rate, capacity=capacity)
        if wait > 0:
            if wait >= 1.0:
                logger.info("feishu.ratelimit.queued", key=key, wait_s=round(wait, 3), rate=rate)
            time.sleep(wait)
        return wait

    def take(self, key: str, *, rate: float, capacity: float) -> float:
        """Seconds until this caller's token is due (reserved from wherever the limiter keeps them)."""
        return self.reserve(key, rate=rate, capacity=capacity)

    def reserve(self, key: str, *, rate: float, capacity: float) -> float:
        raise NotImplementedError


class _Batch:
    """Tokens this process reserved for one key: their due times (monotonic), soonest first."""

    __slots__ = ("due", "size", "fetched_at")

    def __init__(self) -> None:
        self.due: list[float] = []
        self.size = 1
        self.fetched_at = 0.0

    def pop(self, now: float) -> float | None:
        """The next token's due time, dropping tokens that went unused too long; None when empty."""
        expired = 0
        while self.due:
            due = self.due.pop(0)
            if due + BATCH_WINDOW >= now:
                if expired:
                    self.size = max(1, self.size // 2)
                return due
            expired += 1
        if expired:
            self.size = max(1, self.size // 2)
        return None


class RedisRateLimiter(RateLimiter):
    """The bucket lives in Redis, so every process of every host shares it."""

    key_prefix = "feishu:ratelimit:"

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._batch_script = self._redis.register_script(_RESERVE_BATCH_LUA)
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._pid = os.getpid()

    def take(self, key: str, *, rate: float, capacity: float) -> float:
        # One thread at a time refills; the others wait on the lock and then find tokens in the batch.
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not spend its parent's reserved tokens
                self._batches, self._pid = {}, os.getpid()
            batch = self._batches.get(key)
            if batch is None:
                batch = self._batches[key] = _Batch()
            now = time.monotonic()
            due = batch.pop(now)
            if due is None:
                limit = max(1, min(MAX_BATCH, int(rate * BATCH_WINDOW), int(capacity)))
                if batch.fetched_at and now - batch.fetched_at < BATCH_WINDOW:
                    batch.size = min(limit, batch.size * 2)  # the last batch ran out quickly
                batch.size = min(batch.size, limit)
                batch.due = self.reserve_batch(key, rate=rate, capacity=capacity, count=batch.size)
                batch.fetched_at = now
                due = batch.due.pop(0)
        return max(0.0, due - time.monotonic())

    def reserve_batch(self, key: str, *, rate: float, capacity: float, count: int) -> list[float]:
        """Take `count` tokens in one round trip; returns each one's due time (time.monotonic clock)."""
        now = time.monotonic()
        try:
            level = float(self._batch_script(keys=[self.key_prefix + key], args=[rate, capacity, count]))
        except (redis.RedisError, ValueError) as exc:
            logger.warning("feishu.ratelimit.unavailable", key=key, error=f"{exc.__class__.__name__}: {exc}"[:200])
            return [now] * count  # fail open
        # token i (1..count) is paid once the level before it, level + count - i + 1, reaches 1
        return [now + max(0.0, (i - count - level) / rate) for i in range(1, count + 1)]

    def reserve(self, key: str, *, rate: float, capacity: float) -> float:
        # Fails open (no wait) while Redis is away: Feishu's own 429s, retried with backoff, still
        # protect us then.
        [due] = self.reserve_batch(key, rate=rate, capacity=capacity, count=1)
        return max(0.0, due - time.monotonic())


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
