"""Long connection: `manage.py feishu_listen` with lark-oapi's real ws client against a fake Feishu endpoint.

The listener runs as a real subprocess on this test's database (so these tests commit: transactional_db),
and publishes turns to this test's Redis broker, where they are counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from apps.bindings.models import Binding
from apps.bots.models import Bot
from apps.transcripts.models import InboundEvent, Message
from tests.factories import BindingFactory, BotFactory, ConversationFactory, MessageFactory
from tests.fakes.feishu_ws import (
    CeleryQueue,
    FakeFeishuWS,
    card_action_event,
    django_headers,
    message_event,
    webhook_request,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SECRET = "ws-app-secret"


@pytest.fixture
def queue(settings):
    settings.TASK_RUNNER = "celery"
    q = CeleryQueue(settings.CELERY_BROKER_URL)
    q.clear()
    yield q
    q.clear()


@pytest.fixture
def fake_ws():
    server = FakeFeishuWS(ping_interval=1).start()
    yield server
    server.stop()


@pytest.fixture
def ws_bot(transactional_db, fake_ws):
    bot = BotFactory(
        mode=Bot.Mode.LONG_CONNECTION, base_url=fake_ws.base_url, app_secret=SECRET, encrypt_key="ws-encrypt-key"
    )
    fake_ws.apps[bot.app_id] = SECRET
    BindingFactory(bot=bot, chat_type=Binding.ChatType.ANY, require_mention=True)
    return bot


def _listen(*app_ids: str, grace: float = 1.0) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "omniagent.settings",
        "DATABASE_URL": _database_url(),
        "OMNIAGENT_TASK_RUNNER": "celery",
        "LOG_FORMAT": "console",
    }
    args = [sys.executable, "manage.py", "feishu_listen", "--grace", str(grace), "--refresh", "1"]
    for app_id in app_ids:
        args += ["--bot", app_id]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def listener():
    procs: list[subprocess.Popen] = []

    def start(*app_ids: str, grace: float = 1.0) -> subprocess.Popen:
        proc = _listen(*app_ids, grace=grace)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if output:
            print(output[-5000:])  # shown when a test fails


def _wait(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_it_delivers_a_long_connection_message_once_even_after_three_webhook_deliveries(
    ws_bot, fake_ws, listener, queue
):
    listener(ws_bot.app_id)
    fake_ws.wait_connected(ws_bot.app_id)
    payload = message_event(app_id=ws_bot.app_id, text="合同审查进度？")

    client = Client()
    for _ in range(3):
        body, headers = webhook_request(payload, encrypt_key="ws-encrypt-key")
        response = client.post(
            f"/webhooks/feishu/{ws_bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
        )
        assert response.status_code == 200
    ack = fake_ws.push_event(ws_bot.app_id, payload)

    assert ack["code"] == 200
    assert InboundEvent.objects.count() == 1
    message = Message.objects.get()
    assert (message.status, message.content) == (Message.Status.PENDING, "合同审查进度？")
    assert queue.conversations() == [message.conversation_id]


def test_it_ingests_an_event_first_seen_on_the_long_connection(ws_bot, fake_ws, listener, queue):
    listener(ws_bot.app_id)
    fake_ws.wait_connected(ws_bot.app_id)
    payload = message_event(app_id=ws_bot.app_id, text="hi from ws")

    ack = fake_ws.push_event(ws_bot.app_id, payload)
    again = fake_ws.push_event(ws_bot.app_id, payload)  # Feishu redelivers: answered, nothing else

    assert (ack["code"], again["code"]) == (200, 200)
    event = InboundEvent.objects.get()
    assert (event.source, event.status) == ("long_connection", "accepted")
    assert Message.objects.get().content == "hi from ws"
    assert len(queue.conversations()) == 1
    ws_bot.refresh_from_db()
    assert ws_bot.connection_state == Bot.ConnectionState.CONNECTED
    assert ws_bot.last_event_at is not None


def test_it_answers_a_card_click_over_the_long_connection_with_a_toast(ws_bot, fake_ws, listener):
    conversation = ConversationFactory(tenant=ws_bot.tenant, bot=ws_bot, key=f"feishu:{ws_bot.pk}:oc_x")
    answer = MessageFactory(conversation=conversation, role=Message.Role.ASSISTANT, bot=ws_bot)
    listener(ws_bot.app_id)
    fake_ws.wait_connected(ws_bot.app_id)

    ack = fake_ws.push_event(
        ws_bot.app_id, card_action_event(app_id=ws_bot.app_id, value={"feedback": "up", "message_id": answer.pk})
    )

    assert ack["code"] == 200
    assert ack["result"] == {"toast": {"type": "success", "content": "感谢反馈"}}
    answer.refresh_from_db()
    assert answer.feedback == "up"


def test_it_restarts_a_connection_that_went_silent(ws_bot, fake_ws, listener, queue):
    listener(ws_bot.app_id, grace=1.0)
    first = fake_ws.wait_connected(ws_bot.app_id)
    fake_ws.wait_pinged(ws_bot.app_id)
    fake_ws.mute(ws_bot.app_id)  # no more pongs: the client hears nothing

    _wait(lambda: first.closed_at is not None, timeout=20, what="the silent connection to be dropped")
    fake_ws.unmute(ws_bot.app_id)
    fake_ws.wait_connected(ws_bot.app_id, count=2, timeout=30)
    ack = fake_ws.push_event(ws_bot.app_id, message_event(app_id=ws_bot.app_id, text="still there?"))

    assert ack["code"] == 200
    assert Message.objects.get().content == "still there?"
    ws_bot.refresh_from_db()
    assert ws_bot.connection_state == Bot.ConnectionState.CONNECTED


def test_it_connects_every_long_connection_bot_and_stops_cleanly_on_sigterm(ws_bot, fake_ws, listener):
    other = BotFactory(mode=Bot.Mode.LONG_CONNECTION, base_url=fake_ws.base_url, app_secret=SECRET)
    fake_ws.apps[other.app_id] = SECRET
    webhook_bot = BotFactory(mode=Bot.Mode.WEBHOOK, base_url=fake_ws.base_url, app_secret=SECRET)
    fake_ws.apps[webhook_bot.app_id] = SECRET
    proc = listener()
    fake_ws.wait_connected(ws_bot.app_id)
    fake_ws.wait_connected(other.app_id)

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(20) == 0
    _wait(
        lambda: not fake_ws.open_connections(ws_bot.app_id) and not fake_ws.open_connections(other.app_id),
        what="connections closed",
    )
    assert not [c for c in fake_ws.connections if c.app_id == webhook_bot.app_id]
    states = dict(Bot.objects.values_list("app_id", "connection_state"))
    assert states[ws_bot.app_id] == states[other.app_id] == Bot.ConnectionState.DISCONNECTED


def test_it_shows_an_error_state_when_the_credentials_are_refused(transactional_db, fake_ws, listener):
    bot = BotFactory(mode=Bot.Mode.LONG_CONNECTION, base_url=fake_ws.base_url, app_secret="wrong")
    fake_ws.apps[bot.app_id] = SECRET
    listener(bot.app_id)

    def errored():
        bot.refresh_from_db()
        return bot.connection_state == Bot.ConnectionState.ERROR

    _wait(errored, timeout=30, what="error state")
    assert bot.connection_detail
    assert settings.TASK_RUNNER  # the listener kept running and will retry with backoff
