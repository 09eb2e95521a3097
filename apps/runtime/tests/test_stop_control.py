"""/stop does not wait for a free turn thread: ingest hands it to a path of its own (dispatch.stop_enqueue)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import close_old_connections
from django.test import Client

from apps.feishu.ingest import event_ingest
from apps.runtime import dispatch
from apps.runtime.commands import stop_commands_take
from apps.runtime.services import turn_cancel
from apps.runtime.tasks import stop_commands_handle_task
from apps.transcripts.models import Conversation, Message, Turn
from tests.factories import BindingFactory
from tests.fakes.feishu_ws import django_headers, message_event, webhook_request
from tests.fakes.llm import Reply

from .conftest import post, settled, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

STOPPED_NOTE = "已停止回答"


def deliver(bot, payload) -> None:
    body, headers = webhook_request(payload, encrypt_key=bot.encrypt_key)
    response = Client().post(
        f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
    )
    assert response.status_code == 200, response.content


@pytest.fixture
def bound_bot(agent, feishu_bot):
    from apps.bots.models import Bot

    Bot.objects.filter(pk=feishu_bot.pk).update(tenant=agent.tenant)
    feishu_bot.tenant = agent.tenant
    BindingFactory(bot=feishu_bot, tenant=agent.tenant, agent=agent, chat_type="p2p")
    return feishu_bot


@pytest.fixture
def two_turn_threads(settings):
    """The in-process turn pool rebuilt with two threads for this test."""
    settings.INPROCESS_TURN_THREADS = 2
    dispatch._pool.cache_clear()
    yield
    dispatch._pool().shutdown(wait=False, cancel_futures=True)
    dispatch._pool.cache_clear()


def test_a_feishu_stop_ends_the_turn_at_once_while_every_turn_thread_is_busy(
    fake_llm,
    fake_feishu,
    bound_bot,
    recorder,
    make_conversation,
    two_turn_threads,
):
    fake_llm.script(Reply(text="字" * 400, token_delay=0.1, chunk_chars=1))  # a 40-second answer in Feishu
    deliver(bound_bot, message_event(app_id=bound_bot.app_id, text="写一篇长文", message_id="om_s1", event_id="ev_s1"))
    conversation = wait_for(lambda: Conversation.objects.filter(bot=bound_bot).first())
    turn = wait_for(lambda: Turn.objects.filter(conversation=conversation, status=Turn.Status.RUNNING).first())
    wait_for(lambda: fake_llm.in_flight == 1)
    # Another conversation takes the second (last) turn thread with a reply that never comes.
    fake_llm.script(Reply(text="never", hang=True))
    other = make_conversation()
    post(other, "hi")
    wait_for(lambda: fake_llm.in_flight == 2)
    try:
        stop_at = time.monotonic()
        deliver(bound_bot, message_event(app_id=bound_bot.app_id, text="/stop", message_id="om_s2", event_id="ev_s2"))
        wait_for(lambda: Turn.objects.filter(pk=turn.pk, status=Turn.Status.CANCELLED).exists(), timeout=5)
        took = time.monotonic() - stop_at

        assert took < 1.5, took
        wait_for(lambda: any(STOPPED_NOTE in text for text in _card_texts(fake_feishu)), timeout=5)
        stop = Message.objects.get(conversation=conversation, external_id="om_s2")
        assert stop.status == Message.Status.DONE
        assert len(fake_llm.chat_requests()) == 2  # nothing re-asked
    finally:
        for running in Turn.objects.filter(conversation=other, status=Turn.Status.RUNNING):
            turn_cancel(turn=running)
        wait_for(lambda: settled(other))
        wait_for(lambda: settled(conversation))
    # The stopped answer says so once; no "nothing to stop" notice follows.
    assert not any("当前没有正在进行的回答" in str(m.get("content")) for m in fake_feishu.messages)


def _card_texts(fake) -> list[str]:
    return [
        fake.card(m["card_id"])["elements"]["answer"]["content"]
        for m in fake.messages
        if m["msg_type"] == "interactive"
    ]


@pytest.mark.parametrize(
    ("text", "dispatched"),
    [("/stop", True), ("/STOP", True), ("/停止", True), ("/stop now", True), ("/reset", False), ("/help", False),
     ("stop", False), ("please /stop", False), ("hello", False)],
)  # fmt: skip
def test_ingest_dispatches_the_stop_path_only_for_stop_commands(
    text,
    dispatched,
    bound_bot,
    monkeypatch,
):
    sent: list[int] = []
    monkeypatch.setattr("apps.feishu.ingest.turn_enqueue", lambda *, conversation_id: None)
    monkeypatch.setattr("apps.feishu.ingest.stop_enqueue", lambda *, conversation_id: sent.append(conversation_id))

    result = event_ingest(bot=bound_bot, payload=message_event(app_id=bound_bot.app_id, text=text), source="webhook")

    assert result.outcome == "accepted"
    conversation = Conversation.objects.get(bot=bound_bot)
    assert sent == ([conversation.pk] if dispatched else [])


def test_an_ignored_stop_dispatches_nothing(bound_bot, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr("apps.feishu.ingest.stop_enqueue", lambda *, conversation_id: sent.append(conversation_id))

    result = event_ingest(
        bot=bound_bot,
        payload=message_event(app_id=bound_bot.app_id, text="/stop", chat_type="group", chat_id="oc_no_binding"),
        source="webhook",
    )

    assert result.outcome == "ignored" and sent == []


def test_stop_enqueue_sends_the_celery_task_to_the_control_queue_on_commit(settings, monkeypatch):
    settings.TASK_RUNNER = "celery"
    calls = []
    monkeypatch.setattr(stop_commands_handle_task, "apply_async", lambda *a, **kw: calls.append((a, kw)))
    from django.db import transaction

    with transaction.atomic():
        dispatch.stop_enqueue(conversation_id=42)
        assert calls == []  # not before the message is committed

    assert calls == [(((42,),), {"queue": dispatch.CONTROL_QUEUE})]
    assert stop_commands_handle_task.name == "runtime.stop_commands_handle"


def test_two_concurrent_stop_handlers_act_once(fake_llm, recorder, make_conversation):
    """The claim is a compare-and-swap on the message: racing handlers cannot both act on one /stop."""
    conversation = make_conversation()
    stop = post(conversation, "/stop", enqueue=False)
    barrier = threading.Barrier(4)
    results: list[list] = []
    lock = threading.Lock()

    def handle() -> None:
        try:
            barrier.wait()
            taken = stop_commands_take(conversation_id=conversation.pk)
            with lock:
                results.append(taken)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=handle) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(len(taken) for taken in results) == [0, 0, 0, 1]
    stop.refresh_from_db()
    assert stop.status == Message.Status.DONE
