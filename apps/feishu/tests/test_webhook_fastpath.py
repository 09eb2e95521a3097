"""The lean ASGI webhook path (no Django middleware) answers exactly like the Django view."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from apps.bindings.models import Binding
from apps.feishu.views import webhook_fast_path
from apps.transcripts.models import InboundEvent, Message
from tests.factories import BindingFactory, BotFactory
from tests.fakes.feishu_ws import CeleryQueue, message_event, webhook_request

ENCRYPT_KEY = "fast-path-encrypt-key"


async def in_db(fn):
    """Run an ORM read in a worker thread and close that thread's connection (the test DB must be
    droppable at the end of the session)."""

    def run():
        try:
            return fn()
        finally:
            connections.close_all()

    return await sync_to_async(run, thread_sensitive=False)()


class Inner:
    """Stands in for the Django ASGI app: records what it was handed."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


@pytest.fixture
def inner():
    return Inner()


@pytest.fixture
def client(inner):
    transport = httpx.ASGITransport(app=webhook_fast_path(inner))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def bot(transactional_db):
    bot = BotFactory(encrypt_key=ENCRYPT_KEY)
    BindingFactory(bot=bot, chat_type=Binding.ChatType.ANY)
    return bot


@pytest.fixture
def queue(settings):
    settings.TASK_RUNNER = "celery"
    q = CeleryQueue(settings.CELERY_BROKER_URL)
    q.clear()
    yield q
    q.clear()


async def test_it_accepts_a_signed_event_once_and_enqueues_once(client, bot, queue, inner):
    payload = message_event(app_id=bot.app_id, text="走快速通道")
    answers = []
    for _ in range(3):
        body, headers = webhook_request(payload, encrypt_key=ENCRYPT_KEY)
        answers.append(await client.post(f"/webhooks/feishu/{bot.app_id}/", content=body, headers=headers))

    assert [(a.status_code, a.json()) for a in answers] == [(200, {"msg": "success"})] * 3
    assert await in_db(InboundEvent.objects.count) == 1
    message = await in_db(Message.objects.get)
    assert (message.status, message.content) == (Message.Status.PENDING, "走快速通道")
    assert queue.conversations() == [message.conversation_id]
    assert inner.paths == []


async def test_it_rejects_a_bad_signature_with_webhook_001_and_no_rows(client, bot):
    body, headers = webhook_request(message_event(app_id=bot.app_id), encrypt_key=ENCRYPT_KEY)
    headers["X-Lark-Signature"] = "f" * 64
    response = await client.post(f"/webhooks/feishu/{bot.app_id}/", content=body, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"error": "signature check failed", "code": "WEBHOOK_001"}
    assert not await in_db(InboundEvent.objects.exists)


async def test_it_rejects_an_oversized_body_with_413(client, bot, settings):
    settings.FEISHU_WEBHOOK_MAX_BYTES = 1024
    body, headers = webhook_request(message_event(app_id=bot.app_id, text="x" * 3000), encrypt_key=ENCRYPT_KEY)
    response = await client.post(f"/webhooks/feishu/{bot.app_id}/", content=body, headers=headers)
    assert response.status_code == 413
    assert not await in_db(InboundEvent.objects.exists)


async def test_it_answers_the_url_challenge_and_unknown_apps(client, bot):
    body = json.dumps({"challenge": "c-fast", "token": "verification-token-plaintext", "type": "url_verification"})
    ok = await client.post(f"/webhooks/feishu/{bot.app_id}/", content=body)
    unknown = await client.post("/webhooks/feishu/cli_nobody/", content=body)
    assert (ok.status_code, ok.json()) == (200, {"challenge": "c-fast"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "unknown app_id"})


async def test_it_refuses_other_methods_and_leaves_other_paths_to_django(client, inner, transactional_db):
    get = await client.get("/webhooks/feishu/cli_x/")
    other = await client.get("/healthz")
    assert (get.status_code, get.headers["allow"]) == (405, "POST")
    assert (other.status_code, other.text) == (299, "inner")
    assert inner.paths == ["/healthz"]
