"""Order per conversation, concurrency across conversations, leases, the sweep, cancellation."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.runtime import runner
from apps.runtime.commands import STOPPED_TEXT
from apps.runtime.services import conversation_process, conversations_sweep, turn_cancel
from apps.transcripts.models import Conversation, Message, Turn
from tests.fakes.llm import Reply

from .conftest import post, settled, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_three_quick_messages_are_answered_in_order_each_once(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="answer to {last_user}", first_token_delay=0.2, token_delay=0.01)
    conversation = make_conversation()

    for text in ("one", "two", "three"):
        post(conversation, text)

    wait_for(lambda: len(recorder.finals(conversation)) == 3)
    wait_for(lambda: settled(conversation))
    assert recorder.finals(conversation) == ["answer to one", "answer to two", "answer to three"]
    assert [r.messages[-1]["content"] for r in fake_llm.chat_requests()] == ["one", "two", "three"]
    # Turns ran one after another: each started after the previous one ended.
    turns = list(Turn.objects.filter(conversation=conversation).order_by("id"))
    assert [t.status for t in turns] == [Turn.Status.SUCCEEDED] * 3
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert earlier.finished_at <= later.started_at
    # The second turn saw the first round as history.
    assert [m["content"] for m in fake_llm.chat_requests()[2].messages[1:]] == [
        "one",
        "answer to one",
        "two",
        "answer to two",
        "three",
    ]
    assert fake_llm.max_in_flight == 1


@pytest.mark.parametrize("slots", [1, 8, 0])
def test_conversations_run_concurrently(fake_llm, recorder, make_conversation, settings, slots):
    # One turn slot (omniagent.gate) is enough: a turn waiting on the model gives it up.
    settings.TURN_ACTIVE_SLOTS = slots
    fake_llm.default = Reply(text="done", first_token_delay=1.5)
    conversations = [make_conversation() for _ in range(3)]

    started = time.monotonic()
    for conversation in conversations:
        post(conversation, "hi")
    for conversation in conversations:
        wait_for(lambda c=conversation: recorder.finals(c), timeout=30)
    elapsed = time.monotonic() - started

    assert fake_llm.max_in_flight == 3
    # One turn takes at least 1.5 s; three in a row would take 4.5 s.
    assert elapsed < 3.5, elapsed
    for conversation in conversations:
        wait_for(lambda c=conversation: settled(c))


def test_a_second_caller_does_not_run_a_busy_conversation(fake_llm, recorder, make_conversation):
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)
    assert runner.lease_acquire(conversation_id=conversation.pk, token="someone-else")

    conversation_process(conversation_id=conversation.pk)

    assert fake_llm.chat_requests() == []
    assert Message.objects.get(conversation=conversation).status == Message.Status.PENDING


def test_an_expired_lease_is_taken_over_and_half_done_work_redone(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="recovered"))
    conversation = make_conversation()
    user = post(conversation, "hi", enqueue=False)
    # A runner died mid-turn: its message is "processing", its turn "running", its lease expired.
    Message.objects.filter(pk=user.pk).update(status=Message.Status.PROCESSING)
    dead = Turn.objects.create(tenant=conversation.tenant, conversation=conversation, status=Turn.Status.RUNNING)
    Conversation.objects.filter(pk=conversation.pk).update(
        runner_token="dead", runner_lease_until=timezone.now() - timedelta(seconds=1)
    )

    conversation_process(conversation_id=conversation.pk)

    assert recorder.finals(conversation) == ["recovered"]
    dead.refresh_from_db()
    assert dead.status == Turn.Status.FAILED
    assert settled(conversation)


def test_release_keeps_the_lease_while_messages_are_pending(make_conversation):
    conversation = make_conversation()
    assert runner.lease_acquire(conversation_id=conversation.pk, token="t1")
    post(conversation, "late", enqueue=False)

    assert runner.lease_release_if_idle(conversation_id=conversation.pk, token="t1") is False
    conversation.refresh_from_db()
    assert conversation.runner_token == "t1"


def test_no_lost_wake_up_when_a_message_commits_during_release(fake_llm, recorder, make_conversation):
    """Ingest holds the conversation row while it inserts; the release waits for it and sees the message."""
    from django.db import connections, transaction

    fake_llm.default = Reply(text="ok")
    conversation = make_conversation()
    assert runner.lease_acquire(conversation_id=conversation.pk, token="t1")
    inserted, release_result = threading.Event(), {}

    def ingest():
        try:
            with transaction.atomic():
                Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now())
                Message.objects.create(
                    tenant_id=conversation.tenant_id,
                    conversation=conversation,
                    role="user",
                    status="pending",
                    content="x",
                )
                inserted.set()
                time.sleep(0.5)  # the runner tries to release now
        finally:
            connections.close_all()

    def release():
        inserted.wait(5)
        try:
            release_result["released"] = runner.lease_release_if_idle(conversation_id=conversation.pk, token="t1")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest), threading.Thread(target=release)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert release_result == {"released": False}


def test_the_sweep_reenqueues_stalled_conversations(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="swept")
    stalled = make_conversation()
    message = post(stalled, "lost enqueue", enqueue=False)
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    busy = make_conversation()
    post(busy, "someone is on it", enqueue=False)
    Conversation.objects.filter(pk=busy.pk).update(
        runner_token="live", runner_lease_until=timezone.now() + timedelta(minutes=5)
    )
    fresh = make_conversation()
    post(fresh, "just arrived", enqueue=False)  # its own enqueue is still on the way

    assert conversations_sweep() == 1

    wait_for(lambda: recorder.finals(stalled))
    wait_for(lambda: settled(stalled))
    assert recorder.finals(busy) == [] and recorder.finals(fresh) == []


def test_turn_cancel_stops_a_turn_waiting_for_its_first_token(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="never", hang=True))
    conversation = make_conversation()
    post(conversation, "hi")
    turn = wait_for(lambda: Turn.objects.filter(conversation=conversation, status=Turn.Status.RUNNING).first())
    wait_for(lambda: fake_llm.in_flight)

    cancelled_at = time.monotonic()
    assert turn_cancel(turn=turn) is True
    wait_for(lambda: recorder.events(conversation, "cancelled"), timeout=5)
    took = recorder.times[conversation.pk][-2][0] - cancelled_at  # the "cancelled" event

    assert took < 1.5, took
    wait_for(lambda: settled(conversation))
    turn.refresh_from_db()
    assert turn.status == Turn.Status.CANCELLED
    assert not recorder.events(conversation, "final")


def test_stop_command_ends_a_streaming_turn_quickly(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="字" * 400, token_delay=0.1, chunk_chars=1))  # a 40-second answer
    conversation = make_conversation()
    user = post(conversation, "write a long essay")
    wait_for(lambda: len(recorder.events(conversation, "text")) >= 3)

    stop = post(conversation, "/stop")
    stopped_at = time.monotonic()
    wait_for(lambda: recorder.events(conversation, "cancelled"), timeout=10)
    cancel_time = next(t for t, name in recorder.times[conversation.pk] if name == "cancelled")

    assert cancel_time - stopped_at < 1.5, cancel_time - stopped_at
    wait_for(lambda: settled(conversation))
    user.refresh_from_db()
    stop.refresh_from_db()
    assert user.status == Message.Status.CANCELLED and stop.status == Message.Status.DONE
    answer = Message.objects.get(conversation=conversation, role=Message.Role.ASSISTANT, turn__isnull=False)
    assert answer.status == Message.Status.CANCELLED and 0 < len(answer.content) < 400
    assert recorder.events(conversation, "notice") == []  # the cancelled turn says so, once
    assert len(fake_llm.chat_requests()) == 1


def test_stop_while_idle_says_nothing_runs(fake_llm, recorder, make_conversation):
    conversation = make_conversation()
    post(conversation, "/stop")

    wait_for(lambda: recorder.events(conversation, "notice"))
    wait_for(lambda: settled(conversation))
    assert recorder.events(conversation, "notice")[0][1] == ("当前没有正在进行的回答。",)


def test_stop_drops_messages_queued_behind_the_running_turn(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="x" * 200, token_delay=0.05, chunk_chars=1))
    conversation = make_conversation()
    post(conversation, "first")
    wait_for(lambda: recorder.events(conversation, "text"))
    queued = post(conversation, "second", enqueue=False)
    post(conversation, "/stop")

    wait_for(lambda: recorder.events(conversation, "cancelled"))
    wait_for(lambda: settled(conversation))
    queued.refresh_from_db()
    assert queued.status == Message.Status.CANCELLED
    assert len(fake_llm.chat_requests()) == 1
    assert STOPPED_TEXT  # the cancelled turn's responder shows it


def test_turns_waiting_on_the_llm_hold_no_database_connection(fake_llm, recorder, make_conversation):
    """Ten turns in flight on a slow model: the pool lends out (almost) nothing meanwhile."""
    fake_llm.default = Reply(text="slow", first_token_delay=2.0)
    conversations = [make_conversation() for _ in range(10)]
    for conversation in conversations:
        post(conversation, "hi")
    wait_for(lambda: fake_llm.in_flight == 10, timeout=15)

    pool = connection.pool
    assert pool is not None, "tests run with the psycopg pool"
    samples = []
    for _ in range(5):
        stats = pool.get_stats()
        samples.append(stats["pool_size"] - stats["pool_available"])
        time.sleep(0.1)
    # This test's own connection plus the watchdog's poll at most; not one per turn.
    assert max(samples) <= 3, samples
    for conversation in conversations:
        wait_for(lambda c=conversation: recorder.finals(c), timeout=20)
        wait_for(lambda c=conversation: settled(c))


def test_the_lease_is_renewed_during_a_long_turn(fake_llm, recorder, make_conversation, settings, monkeypatch):
    settings.TURN_LEASE_SECONDS = 2  # renewed every ~0.7 s by the watchdog
    monkeypatch.setattr("apps.runtime.watch.watchdog._last_renew", 0.0)
    fake_llm.script(Reply(text="slow", first_token_delay=3.0))
    conversation = make_conversation()
    post(conversation, "hi")
    wait_for(lambda: fake_llm.in_flight)
    conversation.refresh_from_db()
    first_lease = conversation.runner_lease_until

    time.sleep(1.5)

    conversation.refresh_from_db()
    assert conversation.runner_lease_until > first_lease
    assert conversation.runner_lease_until > timezone.now()  # a 2 s lease still alive after 1.5 s+
    wait_for(lambda: recorder.finals(conversation))
    wait_for(lambda: settled(conversation))


def test_queued_messages_with_attachments_reach_the_model_described(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="ok"))
    conversation = make_conversation()
    message = post(conversation, "看看这个", enqueue=False)
    Message.objects.filter(pk=message.pk).update(attachments=[{"type": "file", "key": "file_v2_x", "name": "合同.pdf"}])

    conversation_process(conversation_id=conversation.pk)

    assert fake_llm.chat_requests()[0].messages[-1]["content"] == "看看这个\n[文件：合同.pdf]"


def test_stop_fast_path_cancels_without_a_free_runner(fake_llm, recorder, make_conversation):
    from apps.runtime.services import stop_commands_handle

    fake_llm.script(Reply(text="字" * 300, token_delay=0.1, chunk_chars=1))
    conversation = make_conversation()
    post(conversation, "long answer please")
    wait_for(lambda: recorder.events(conversation, "text"))
    post(conversation, "/stop", enqueue=False)  # as if every worker thread were busy

    stop_commands_handle(conversation_id=conversation.pk)

    wait_for(lambda: recorder.events(conversation, "cancelled"), timeout=5)
    wait_for(lambda: settled(conversation))
