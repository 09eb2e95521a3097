"""Ingest service beyond the webhook checks: welcome messages, the bot's open_id, database outages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.test import Client

from apps.bindings.models import Binding
from apps.feishu.ingest import InvalidEvent, event_ingest
from apps.feishu.models import OutboundMessage
from apps.transcripts.models import Conversation, InboundEvent, Message
from tests.factories import BindingFactory, BotFactory
from tests.fakes.feishu_ws import bot_added_event, django_headers, mention, message_event, webhook_request

ROOT = Path(__file__).resolve().parents[3]


def _post(client, bot, payload):
    body, headers = webhook_request(payload, encrypt_key=bot.encrypt_key)
    return client.post(
        f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
    )


def _wait(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# --- bot added -> welcome ---------------------------------------------------------------------


def test_it_posts_the_welcome_message_once_when_the_bot_joins_a_group(transactional_db, fake_feishu):
    bot = BotFactory(base_url=fake_feishu.base_url)
    fake_feishu.add_app(bot.app_id, bot.app_secret, open_id=bot.bot_open_id)
    BindingFactory(bot=bot, chat_type=Binding.ChatType.GROUP, welcome_message="大家好，我是案件助手。@我提问即可。")
    payload = bot_added_event(app_id=bot.app_id, chat_id="oc_case_team")
    client = Client()

    assert _post(client, bot, payload).status_code == 200
    assert _post(client, bot, payload).status_code == 200  # Feishu re-pushes: no second welcome

    assert _wait(lambda: fake_feishu.messages), "welcome never reached Feishu"
    time.sleep(0.3)
    messages = fake_feishu.messages
    assert len(messages) == 1
    assert (messages[0]["chat_id"], messages[0]["msg_type"]) == ("oc_case_team", "text")
    assert messages[0]["content"] == {"text": "大家好，我是案件助手。@我提问即可。"}
    assert messages[0]["uuid"]  # deterministic, so a retried send is deduplicated by Feishu
    assert _wait(lambda: OutboundMessage.objects.filter(status="sent").count() == 1)
    assert InboundEvent.objects.get().status == "accepted"


def test_it_does_not_welcome_after_the_max_age(db, settings):
    bot = BotFactory()
    BindingFactory(bot=bot, chat_type=Binding.ChatType.GROUP, welcome_message="hi")
    old = int((time.time() - settings.FEISHU_EVENT_MAX_AGE - 5) * 1000)
    result = event_ingest(
        bot=bot, payload=bot_added_event(app_id=bot.app_id, create_time_ms=old), source="long_connection"
    )
    assert result.outcome == "stale"
    assert InboundEvent.objects.get().status == "stale"


# --- the bot's own open_id --------------------------------------------------------------------


def test_it_learns_the_bot_open_id_from_feishu_to_recognise_its_mention(db, fake_feishu, settings):
    settings.TASK_RUNNER = "inprocess"
    bot = BotFactory(base_url=fake_feishu.base_url, bot_open_id="")
    fake_feishu.add_app(bot.app_id, bot.app_secret, open_id="ou_learned_bot")
    BindingFactory(bot=bot, chat_type=Binding.ChatType.GROUP, require_mention=True)
    payload = message_event(
        app_id=bot.app_id,
        chat_type="group",
        chat_id="oc_g",
        text="@_user_1 在吗",
        mentions=[mention("@_user_1", "ou_learned_bot", "助手")],
    )

    assert event_ingest(bot=bot, payload=payload, source="webhook").outcome == "accepted"
    second = message_event(
        app_id=bot.app_id,
        chat_type="group",
        chat_id="oc_g",
        text="@_user_1 再问",
        mentions=[mention("@_user_1", "ou_learned_bot", "助手")],
    )
    bot.refresh_from_db()
    assert bot.bot_open_id == "ou_learned_bot"
    assert event_ingest(bot=bot, payload=second, source="webhook").outcome == "accepted"

    assert list(Message.objects.values_list("content", flat=True)) == ["在吗", "再问"]
    assert len(fake_feishu.requests_to(r"/open-apis/bot/v3/info")) == 1  # cached on the row


def test_it_answers_503_and_stores_nothing_when_the_bot_open_id_cannot_be_learned(db, fake_feishu):
    bot = BotFactory(base_url=fake_feishu.base_url, bot_open_id="")
    fake_feishu.add_app(bot.app_id, bot.app_secret)
    fake_feishu.inject_server_error(times=50, path=r"/open-apis/bot/v3/info")
    BindingFactory(bot=bot)
    payload = message_event(
        app_id=bot.app_id, chat_type="group", text="@_user_1 hi", mentions=[mention("@_user_1", "ou_x", "X")]
    )

    response = _post(Client(), bot, payload)

    assert response.status_code == 503
    assert not InboundEvent.objects.exists()
    assert not Message.objects.exists()


# --- service-level behaviour --------------------------------------------------------------------


def test_it_stores_a_long_connection_event_with_its_source(db):
    bot = BotFactory()
    BindingFactory(bot=bot)
    result = event_ingest(bot=bot, payload=message_event(app_id=bot.app_id), source="long_connection")
    assert result.outcome == "accepted"
    assert InboundEvent.objects.get().source == "long_connection"


@pytest.mark.parametrize(
    "breakage",
    ["no header", "header not object", "event not object", "no message id", "no chat id"],
)
def test_it_refuses_structurally_broken_events_without_rows(db, breakage):
    bot = BotFactory()
    payload = message_event(app_id=bot.app_id)
    if breakage == "no header":
        del payload["header"]
    elif breakage == "header not object":
        payload["header"] = "x"
    elif breakage == "event not object":
        payload["event"] = ["x"]
    elif breakage == "no message id":
        payload["event"]["message"]["message_id"] = ""
    else:
        payload["event"]["message"]["chat_id"] = ""
    with pytest.raises(InvalidEvent):
        event_ingest(bot=bot, payload=payload, source="webhook")
    assert not InboundEvent.objects.exists() and not Conversation.objects.exists()


def test_it_records_other_event_types_once_without_acting(db):
    bot = BotFactory()
    payload = message_event(app_id=bot.app_id)
    payload["header"]["event_type"] = "im.message.reaction.created_v1"
    assert event_ingest(bot=bot, payload=payload, source="webhook").outcome == "ignored"
    assert event_ingest(bot=bot, payload=payload, source="webhook").outcome == "duplicate"
    assert InboundEvent.objects.get().status_reason == "event type not handled"
    assert not Message.objects.exists()


# --- database down ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "app", [["omniagent.asgi:application"], ["bench.ingress:fast_app", "--factory"]], ids=["django", "fast-path"]
)
def test_it_answers_503_when_postgresql_is_unreachable(app):
    port, dead = _free_port(), _free_port()  # nothing listens on `dead`
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "omniagent.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{dead}/omniagent",
        "DB_POOL_TIMEOUT": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *app, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait(lambda: _up(base), timeout=30), "uvicorn did not start"
        body, headers = webhook_request(message_event(app_id="cli_any"))
        response = httpx.post(f"{base}/webhooks/feishu/cli_any/", content=body, headers=headers, timeout=15)
        assert response.status_code == 503
        assert response.json() == {"error": "database unavailable, retry later"}
    finally:
        proc.terminate()
        proc.wait(10)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- routing matches the bindings selector ----------------------------------------------------


def test_it_routes_exactly_like_binding_resolve(db):
    from apps.bindings.selectors import binding_resolve
    from apps.feishu.ingest import _route
    from tests.factories import AgentFactory

    bot = BotFactory()
    agent = lambda: AgentFactory(tenant=bot.tenant)  # noqa: E731
    BindingFactory(bot=bot, agent=agent(), chat_type="any", require_mention=True)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", require_mention=False, priority=5)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", priority=5)  # same rank, younger: loses
    BindingFactory(bot=bot, agent=agent(), chat_type="p2p", chat_id="oc_vip")
    BindingFactory(bot=bot, agent=agent(), chat_type="any", user_open_id="ou_boss", priority=-3)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", chat_id="oc_team", user_open_id="ou_boss")
    BindingFactory(bot=bot, agent=agent(), chat_type="group", chat_id="oc_off", is_enabled=False)
    BindingFactory(bot=bot, agent=AgentFactory(tenant=bot.tenant, is_active=False), chat_type="p2p", priority=99)
    BindingFactory(agent=agent(), chat_type="p2p", priority=100)  # another bot's binding

    for chat_type in ("p2p", "group"):
        for chat_id in ("", "oc_vip", "oc_team", "oc_off", "oc_other"):
            for user in ("", "ou_boss", "ou_someone"):
                expected = binding_resolve(bot=bot, chat_type=chat_type, chat_id=chat_id, user_open_id=user)
                got = _route(bot=bot, chat_type=chat_type, chat_id=chat_id, user_open_id=user)
                assert got == ((expected.agent_id, expected.require_mention) if expected else None), (
                    chat_type,
                    chat_id,
                    user,
                )


def test_it_routes_nothing_for_a_bot_without_bindings(db):
    from apps.feishu.ingest import _route

    assert _route(bot=BotFactory(), chat_type="p2p", chat_id="oc_x", user_open_id="ou_x") is None


@pytest.mark.parametrize("answered", [True, False])
def test_the_cached_statement_is_what_djangos_compiler_builds(db, answered, monkeypatch):
    """The single-statement write compiles each INSERT once per shape and then only prepares values:
    the text and the values must stay exactly what Django's compiler produces for the same rows."""
    from django.db.models.expressions import RawSQL
    from django.utils import timezone

    from apps.feishu import ingest, ingest_store
    from apps.feishu.normalize import message_normalize

    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now)  # auto_now fields are set by pre_save on each build

    def same(a, b):  # psycopg's Jsonb wrapper compares by identity: compare what it wraps
        def plain(built):
            return built[0], [getattr(value, "obj", value) for value in built[1]]

        return plain(a) == plain(b)

    bot = BotFactory()
    for n in range(2):  # the first compiles (a miss), the second reuses
        payload = message_event(app_id=bot.app_id, text=f"hello {n}", chat_id="oc_cache", message_id=f"om_cache_{n}")
        msg = message_normalize(event=payload["event"], bot_open_id="")
        event, conversation, message = ingest._rows(
            bot=bot, header=payload["header"], payload=payload, source="webhook", trace_id="t" * 32, msg=msg,
            status=InboundEvent.Status.ACCEPTED if answered else InboundEvent.Status.IGNORED, reason="",
            agent_id=1 if answered else None, now=now,
        )  # fmt: skip
        message.conversation_id = RawSQL('(SELECT "id" FROM conv)', ())
        fields = ingest_store.conversation_update_fields(conversation)
        assert same(ingest_store.insert_sql_cached(event), ingest_store.insert_sql(event))
        assert same(ingest_store.insert_sql_cached(message), ingest_store.insert_sql(message))
        assert same(
            ingest_store.insert_sql_cached(conversation, update_fields=fields, unique_fields=["key"]),
            ingest_store.insert_sql(conversation, update_fields=fields, unique_fields=["key"]),
        )


def test_the_one_statement_is_prepared_on_its_connection(db):
    """Django turns psycopg's preparing off (which also ignores prepare=True): the ingest statement
    must still be prepared, or PostgreSQL parses and plans the three inserts for every event."""
    from django.db import connection

    bot = BotFactory()
    BindingFactory(bot=bot, tenant=bot.tenant)
    for n in range(2):
        payload = message_event(app_id=bot.app_id, message_id=f"om_prepared_{n}", chat_id="oc_prepared")
        assert event_ingest(bot=bot, payload=payload, source="webhook").outcome == "accepted"

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["WITH ev AS (%"])
        assert cursor.fetchone()[0] == 1
