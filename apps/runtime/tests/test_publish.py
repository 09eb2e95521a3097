"""The webhook's wake-up publish (apps.runtime.publish): Celery's own message, and a real worker runs it."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import redis
from celery import current_app
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from apps.runtime import publish
from apps.runtime.tasks import conversation_process_task

PROBE_QUEUE = "test_publish_probe"
probe_calls: list[tuple] = []
probe_done = threading.Event()


@current_app.task(name="tests.publish_probe", ignore_result=True)
def publish_probe(*args) -> None:
    probe_calls.append(args)
    probe_done.set()


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("celery", PROBE_QUEUE)
    publish._redis.cache_clear()
    yield client
    client.delete("celery", PROBE_QUEUE)


def _without_ids(message: dict) -> dict:
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id", "origin")}
    properties = {k: v for k, v in message["properties"].items() if k not in ("correlation_id", "delivery_tag")}
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "headers": headers, "properties": properties, "body": body}


def test_the_message_is_the_one_celery_itself_publishes(broker):
    conversation_process_task.delay(41)
    publish.task_publish("runtime.conversation_process", (41,))

    ours, celerys = (json.loads(raw) for raw in broker.lrange("celery", 0, -1))  # LPUSH: newest first
    assert _without_ids(ours) == _without_ids(celerys)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_tag"] != celerys["properties"]["delivery_tag"]


def _routes_set(routes) -> None:
    current_app.conf.task_routes = routes
    current_app.amqp.flush_routes()
    current_app.amqp.__dict__.pop("router", None)  # Celery builds its router once per process
    publish.queue_for.cache_clear()


def test_the_wake_up_follows_celerys_task_routes(broker):
    before = current_app.conf.task_routes
    _routes_set({"runtime.conversation_process": {"queue": "turns"}})
    try:
        conversation_process_task.delay(5)
        publish.task_publish("runtime.conversation_process", (5,))
        assert broker.llen("celery") == 0
        ours, celerys = (json.loads(raw) for raw in broker.lrange("turns", 0, -1))
        assert _without_ids(ours)["headers"] == _without_ids(celerys)["headers"]
    finally:
        _routes_set(before)
        broker.delete("turns")


def test_a_real_worker_runs_the_published_task(broker):
    probe_calls.clear()
    probe_done.clear()
    with start_worker(current_app, pool="solo", perform_ping_check=False, queues=[PROBE_QUEUE], shutdown_timeout=10):
        publish.task_publish("tests.publish_probe", (7, "x"), queue=PROBE_QUEUE)
        assert probe_done.wait(10), "the worker did not run the published task"
    assert probe_calls == [(7, "x")]
    assert broker.llen(PROBE_QUEUE) == 0


def test_without_a_redis_broker_it_goes_through_celery(monkeypatch, settings):
    sent = []
    monkeypatch.setattr(publish, "_redis", lambda: None)
    monkeypatch.setattr(current_app, "send_task", lambda name, **kw: sent.append((name, kw)))
    publish.task_publish("runtime.conversation_process", (3,))
    assert sent == [("runtime.conversation_process", {"args": (3,), "queue": "celery", "ignore_result": True})]
