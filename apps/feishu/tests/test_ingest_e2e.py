"""End to end: one Feishu message delivered four times (3× webhook, 1× long connection) is answered once.

Real pieces: the webhook view, `manage.py feishu_listen` with lark-oapi's ws client, the ingest service,
the turn runtime (in-process runner), the Feishu responder and client (lark-oapi) against the fake Feishu
Open API, the agent against the fake LLM.
"""

from __future__ import annotations

import time

import pytest
from django.test import Client

from apps.bots.models import Bot
from apps.feishu.tests.test_longconn import _listen
from apps.transcripts.models import InboundEvent, Message, Turn
from tests.factories import AgentFactory, BindingFactory, BotFactory
from tests.fakes.feishu_ws import FakeFeishuWS, django_headers, message_event, webhook_request
from tests.fakes.llm import Reply

pytestmark = pytest.mark.slow
SECRET = "e2e-app-secret"
ENCRYPT_KEY = "e2e-encrypt-key"


def _wait(predicate, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def ws(fake_feishu):
    server = FakeFeishuWS(upstream=fake_feishu.base_url).start()
    yield server
    server.stop()


def test_it_answers_once_a_message_delivered_three_times_by_webhook_and_once_by_long_connection(
    transactional_db,
    fake_feishu,
    fake_llm,
    ws,
    settings,
):
    settings.TASK_RUNNER = "inprocess"
    fake_llm.default = Reply(text="案件 42 已于上周结案。")
    bot = BotFactory(mode=Bot.Mode.LONG_CONNECTION, base_url=ws.base_url, app_secret=SECRET, encrypt_key=ENCRYPT_KEY)
    fake_feishu.add_app(bot.app_id, SECRET, open_id=bot.bot_open_id)
    ws.apps[bot.app_id] = SECRET
    agent = AgentFactory(tenant=bot.tenant, base_url=fake_llm.base_url, model="fake-model")
    BindingFactory(bot=bot, agent=agent)
    listener = _listen(bot.app_id, grace=30)
    try:
        ws.wait_connected(bot.app_id)
        payload = message_event(app_id=bot.app_id, text="案件 42 进展如何？")
        inbound_id = payload["event"]["message"]["message_id"]

        client = Client()
        for _ in range(3):
            body, headers = webhook_request(payload, encrypt_key=ENCRYPT_KEY)
            response = client.post(
                f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
            )
            assert response.status_code == 200
        assert ws.push_event(bot.app_id, payload)["code"] == 200

        def replies():
            return [m for m in fake_feishu.messages if m["parent_id"] == inbound_id]

        assert _wait(lambda: Turn.objects.filter(status=Turn.Status.SUCCEEDED).exists()), "no turn finished"
        assert _wait(replies), "no reply reached Feishu"
        time.sleep(1.5)  # a second answer, if any, would have arrived by now

        assert len(replies()) == 1
        assert Turn.objects.count() == 1
        assert InboundEvent.objects.count() == 1
        assert Message.objects.filter(role=Message.Role.USER).count() == 1
        answer = Message.objects.get(role=Message.Role.ASSISTANT)
        assert answer.content == "案件 42 已于上周结案。"
        assert len(fake_llm.requests) == 1
    finally:
        listener.terminate()
        listener.wait(20)
