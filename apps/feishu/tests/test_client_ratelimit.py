"""The per-app rate limiter: a burst queues instead of tripping Feishu, shared across processes via Redis."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from apps.feishu.client import FeishuClient
from apps.feishu.ratelimit import LocalRateLimiter, RedisRateLimiter, rate_limiter

# Until the root conftest has `pytest_plugins = ["tests.fakes.fixtures"]`, import the fixtures here
# (pytest finds fixtures by name; the test parameters shadow these imports on purpose).

pytestmark = pytest.mark.django_db


def test_the_limiter_is_the_shared_redis_bucket_in_real_mode():
    assert django_settings.REDIS_URL
    assert isinstance(rate_limiter(), RedisRateLimiter)


def test_a_burst_queues_at_the_configured_rate(feishu_bot, fake_feishu, settings):
    settings.FEISHU_RATE_PER_SECOND = 5  # bucket of 5, refilled at 5/s
    client = FeishuClient.for_bot(feishu_bot)
    client.bot_info()  # fetch the token first; it takes one bucket token too

    started = time.monotonic()
    for n in range(8):
        client.send_message(
            receive_id="oc_group_1", receive_id_type="chat_id", msg_type="text", content={"text": f"#{n}"},
            uuid=f"burst-{n}",
        )  # fmt: skip
    elapsed = time.monotonic() - started

    # 1 + 8 calls against 5 tokens: 4 had to wait for refills at 5/s -> at least 0.8 s
    assert elapsed >= 0.75
    sends = fake_feishu.requests_to(r"/im/v1/messages$")
    assert [r.status for r in sends] == [200] * 8
    assert len(fake_feishu.messages) == 8
    # Feishu saw them spread over the refill time, not all at once: the last went 4 refills after the start
    assert sends[-1].time - sends[0].time >= 0.7


def test_the_bucket_is_shared_with_another_process(settings):
    key = "cli_shared_bucket_test"
    limiter = RedisRateLimiter(settings.REDIS_URL)
    for _ in range(5):
        assert limiter.reserve(key, rate=5, capacity=5) == 0  # drain it here...
    empty_at = time.time()
    for n in range(1, 26):  # ...and queue 25: the n-th may go n refills (n / 5 s) after it ran dry
        asked = time.time()  # a wait counts from the call, however late this loop got to it
        assert asked + limiter.reserve(key, rate=5, capacity=5) == pytest.approx(empty_at + n / 5, abs=0.05)
    code = (
        "import time; from apps.feishu.ratelimit import RedisRateLimiter;"
        f"asked = time.time(); wait = RedisRateLimiter({settings.REDIS_URL!r}).reserve({key!r}, rate=5, capacity=5);"
        "print(wait, asked)"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)

    # The other process queues behind those 25: its token comes at the 26th refill, 5.2 s after the
    # bucket ran dry, whenever it got to ask (its start-up time varies, cold caches in CI).
    wait, asked = (float(v) for v in out.stdout.split())
    assert asked + wait == pytest.approx(max(asked, empty_at + 5.2), abs=0.1)


def test_the_embedded_limiter_queues_in_process():
    limiter = LocalRateLimiter()
    waits = [limiter.reserve("cli_x", rate=10, capacity=2) for _ in range(4)]

    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(0.1, abs=0.02)
    assert waits[3] == pytest.approx(0.2, abs=0.02)


def test_the_limiter_fails_open_when_redis_is_away():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0")

    assert limiter.reserve("cli_x", rate=1, capacity=1) == 0.0
    assert limiter.reserve("cli_x", rate=1, capacity=1) == 0.0


def test_a_busy_process_reserves_tokens_in_batches(settings):
    key = "cli_batch_test"
    limiter = RedisRateLimiter(settings.REDIS_URL)
    limiter._redis.delete(limiter.key_prefix + key)
    round_trips = []
    reserve_batch = limiter.reserve_batch
    limiter.reserve_batch = lambda *a, **kw: round_trips.append(kw["count"]) or reserve_batch(*a, **kw)

    waits = [limiter.take(key, rate=1000, capacity=1000) for _ in range(100)]

    assert waits == [0.0] * 100
    assert len(round_trips) <= 12 and round_trips[:4] == [1, 2, 4, 8] and max(round_trips) == 20
    # every token spent here was taken from the shared bucket (refill of a few ms aside)
    level = float(limiter._redis.hget(limiter.key_prefix + key, "tokens"))
    assert level <= 1000 - 100 + 10


def test_batches_of_two_processes_still_respect_the_shared_rate(settings):
    key = "cli_batch_shared_test"
    one, other = RedisRateLimiter(settings.REDIS_URL), RedisRateLimiter(settings.REDIS_URL)  # as two processes
    one._redis.delete(one.key_prefix + key)

    started = time.monotonic()
    for _ in range(40):
        for limiter in (one, other):
            limiter.acquire(key, rate=50, capacity=10)
    elapsed = time.monotonic() - started

    # 80 tokens from a bucket of 10 refilled at 50/s: at least 70 refills (1.4 s), whoever holds them
    assert elapsed >= 1.3
    assert elapsed <= 2.6  # and batching wastes little (tokens dropped unused only make it stricter)
