"""The runner's and the turn's single statements on PostgreSQL (apps.runtime.store) and the
per-process cache of tenant, bot, agent and bindings (apps.runtime.cache)."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.runtime import cache, runner, store
from apps.runtime.services import conversation_process
from apps.transcripts.models import Conversation, LLMCall, Message, Turn
from tests.factories import BindingFactory, BotFactory
from tests.fakes.llm import Reply, ToolCall

from .conftest import post, settled

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_plain_turn_is_a_handful_of_statements(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="ok")
    warm = make_conversation()
    post(warm, "warm the per-process cache", enqueue=False)
    conversation_process(conversation_id=warm.pk)
    conversation = make_conversation()
    post(conversation, "first", enqueue=False)

    with CaptureQueriesContext(connection) as first:
        conversation_process(conversation_id=conversation.pk)
    post(conversation, "second", enqueue=False)
    with CaptureQueriesContext(connection) as second:
        conversation_process(conversation_id=conversation.pk)

    # claim, open the turn, close it, claim-next-or-release, look again; the second also reads history.
    assert len(first) == 5, [q["sql"][:80] for q in first]
    assert len(second) == 6, [q["sql"][:80] for q in second]
    assert recorder.finals(conversation) == ["ok", "ok"]
    turns = list(Turn.objects.filter(conversation=conversation).order_by("id"))
    assert [t.status for t in turns] == ["succeeded", "succeeded"]
    assert all(set(t.timings) == {"restore", "build", "run", "save", "respond"} and t.duration_ms for t in turns)
    assert fake_llm.chat_requests()[-1].messages[1:] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    conversation.refresh_from_db()
    assert conversation.session_started_at == conversation.created_at
    assert settled(conversation)


def test_a_tool_turn_is_saved_with_its_tool_rows_and_calls(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(tool_calls=[ToolCall("calc", {"expression": "6*7"}, id="c1")]), Reply(text="42 it is"))
    conversation = make_conversation()
    post(conversation, "6*7?", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    turn = Turn.objects.get(conversation=conversation)
    tool = Message.objects.get(turn=turn, role=Message.Role.TOOL)
    assert tool.tool_call_id == "c1" and tool.tool_name == "calc" and "42" in tool.content
    assert tool.tool_calls == [{"name": "calc", "arguments": {"expression": "6*7"}}]
    assert tool.status == Message.Status.DONE and tool.trace_id == turn.trace_id and tool.tenant_id == turn.tenant_id
    answer = Message.objects.get(turn=turn, role=Message.Role.ASSISTANT)
    assert answer.content == "42 it is" and answer.tool_calls[0]["name"] == "calc"
    assert answer.input_tokens and answer.output_tokens and answer.latency_ms is not None
    calls = list(LLMCall.objects.filter(turn=turn).order_by("id"))
    assert len(calls) == 2 and all(c.ok and c.trace_id == turn.trace_id for c in calls)


def test_a_message_claimed_by_a_stop_first_is_skipped_not_lost(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="ok")
    conversation = make_conversation()
    first = post(conversation, "a", enqueue=False)
    post(conversation, "b", enqueue=False)
    # Someone (a /stop handler) took the oldest message between our look and our claim.
    Message.objects.filter(pk=first.pk).update(status=Message.Status.DONE)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.finals(conversation) == ["ok"]
    assert fake_llm.chat_requests()[0].messages[-1]["content"] == "b"
    assert settled(conversation)


def test_a_stop_before_the_turns_rows_are_written_still_stops_the_turn(
    fake_llm, recorder, make_conversation, monkeypatch
):
    """The turn's rows are written once its LLM request has left; a /stop handled in between (no
    running Turn row to cancel yet) must still end that turn, saying so once, not "nothing to stop"."""
    fake_llm.default = Reply(text="too late", first_token_delay=5)
    conversation = make_conversation()
    user = post(conversation, "write a long essay", enqueue=False)
    real_write = store.TurnRows.write

    def stop_arrives_first(rows):
        if not rows.written:
            stop = post(conversation, "/stop", enqueue=False)
            runner.stop_commands_handle(conversation_id=conversation.pk)
            stop.refresh_from_db()
            assert stop.status == Message.Status.DONE
        return real_write(rows)

    monkeypatch.setattr(store.TurnRows, "write", stop_arrives_first)
    started = time.monotonic()
    conversation_process(conversation_id=conversation.pk)

    assert time.monotonic() - started < 2.5  # not the model's 5 s
    assert recorder.events(conversation, "cancelled") and not recorder.events(conversation, "final")
    assert recorder.events(conversation, "notice") == []  # no "nothing to stop": the turn says so itself
    turn = Turn.objects.get(conversation=conversation)
    user.refresh_from_db()
    assert turn.status == Turn.Status.CANCELLED and user.status == Message.Status.CANCELLED
    assert settled(conversation)


def test_nothing_pending_takes_no_lease(make_conversation):
    conversation = make_conversation()

    claimed = store.claim(conversation_id=conversation.pk, token="t1")

    assert not claimed.leased and not claimed.pending and claimed.message is None
    conversation.refresh_from_db()
    assert conversation.runner_token == ""


def test_release_looks_again_and_keeps_the_lease_for_a_message_it_missed(make_conversation, monkeypatch):
    """The release statement's NOT EXISTS may run on a snapshot without a message committed meanwhile;
    the second look (fresh snapshot) takes the lease back."""
    conversation = make_conversation()
    assert runner.lease_acquire(conversation_id=conversation.pk, token="t1")
    post(conversation, "late", enqueue=False)
    real = store._execute

    def release_missing_it(sql, params):
        if sql is store._RELEASE:  # as if the message had committed just after this snapshot
            sql = sql.replace("AND NOT EXISTS", "AND TRUE OR NOT EXISTS")
        return real(sql, params)

    monkeypatch.setattr(store, "_execute", release_missing_it)

    assert runner.lease_release_if_idle(conversation_id=conversation.pk, token="t1") is False
    conversation.refresh_from_db()
    assert conversation.runner_token == "t1"


def test_a_binding_saved_in_this_process_applies_to_the_next_message(fake_llm, recorder, agent, make_conversation):
    bot = BotFactory(tenant=agent.tenant)
    binding = BindingFactory(bot=bot, tenant=agent.tenant, agent=agent, chat_type="p2p")
    conversation = make_conversation(bot=bot, chat_type="p2p", chat_id="oc_1", user_open_id="ou_1")
    fake_llm.default = Reply(text="ok")
    post(conversation, "one", enqueue=False)
    conversation_process(conversation_id=conversation.pk)
    other = type(agent).objects.create(
        tenant=agent.tenant, slug="other", base_url=agent.base_url, model="other-model", tools=[]
    )
    binding.agent = other
    binding.save()  # clears the cache at once in this process

    post(conversation, "two", enqueue=False)
    conversation_process(conversation_id=conversation.pk)

    assert [r.model for r in fake_llm.chat_requests()] == ["primary-model", "other-model"]


def test_an_edit_made_elsewhere_applies_within_the_cache_ttl(fake_llm, recorder, agent, make_conversation, monkeypatch):
    fake_llm.default = Reply(text="ok")
    conversation = make_conversation()
    post(conversation, "one", enqueue=False)
    conversation_process(conversation_id=conversation.pk)
    type(agent).objects.filter(pk=agent.pk).update(model="edited-model")  # no signal: as from another process

    post(conversation, "two", enqueue=False)
    conversation_process(conversation_id=conversation.pk)
    monkeypatch.setattr(cache, "TTL_SECONDS", 0.0)
    cache.cache_clear()  # what the TTL's expiry does
    post(conversation, "three", enqueue=False)
    conversation_process(conversation_id=conversation.pk)

    assert [r.model for r in fake_llm.chat_requests()] == ["primary-model", "primary-model", "edited-model"]


def test_the_conversation_row_read_by_the_claim_is_current(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="ok")
    conversation = make_conversation()
    post(conversation, "/reset", enqueue=False)
    post(conversation, "after reset", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    conversation.refresh_from_db()
    first_user = Message.objects.filter(conversation=conversation, role="user").order_by("id").first()
    assert conversation.session_started_at == first_user.created_at
    assert isinstance(Conversation.objects.get(pk=conversation.pk).session_started_at, type(first_user.created_at))
    assert recorder.finals(conversation) == ["ok"]


def test_a_message_committed_just_after_the_release_is_answered_by_the_same_runner(
    fake_llm, recorder, make_conversation, monkeypatch
):
    """The release missed it (committed after its snapshot, before the runner looked again): the
    runner's second look takes the lease back and answers it, so no wake-up is lost."""
    fake_llm.default = Reply(text="re: {last_user}")
    conversation = make_conversation()
    post(conversation, "first", enqueue=False)
    real = store.claim_next
    late = []

    def claim_next_then_a_message_arrives(**kwargs):
        claimed = real(**kwargs)
        if claimed.released and not late:
            late.append(post(conversation, "late", enqueue=False))  # its own enqueue is not run here
        return claimed

    monkeypatch.setattr(store, "claim_next", claim_next_then_a_message_arrives)

    conversation_process(conversation_id=conversation.pk)

    assert late and recorder.finals(conversation) == ["re: first", "re: late"]
    assert settled(conversation)


def test_a_renewal_that_fails_while_the_lease_is_briefly_released_does_not_stop_the_runner(
    fake_llm, recorder, make_conversation, monkeypatch
):
    """The watchdog may renew while the runner has released the lease for a moment (and flag it
    lost); the runner's look again takes it back and must still answer what is pending."""
    from apps.runtime.watch import watchdog

    fake_llm.default = Reply(text="re: {last_user}")
    conversation = make_conversation()
    post(conversation, "first", enqueue=False)
    real_claim_next, real_take = store.claim_next, store.lease_take_if_pending
    late = []

    def claim_next_then_a_message_arrives(**kwargs):
        claimed = real_claim_next(**kwargs)
        if claimed.released and not late:
            late.append(post(conversation, "late", enqueue=False))
        return claimed

    def renewal_fails_first(**kwargs):
        for active in watchdog._snapshot():  # what a renewal in this window does
            if active.conversation_id == conversation.pk:
                active.lease_lost = True
        return real_take(**kwargs)

    monkeypatch.setattr(store, "claim_next", claim_next_then_a_message_arrives)
    monkeypatch.setattr(store, "lease_take_if_pending", renewal_fails_first)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.finals(conversation) == ["re: first", "re: late"]
    assert settled(conversation)


def test_the_statements_are_prepared_on_their_connection(make_conversation):
    """Django turns psycopg's preparing off (prepare_threshold None, which also ignores prepare=True):
    the store's statements must still be prepared, or PostgreSQL parses each one at every run."""
    conversation = make_conversation()
    for _ in range(2):
        store.claim(conversation_id=conversation.pk, token="t1")

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%WITH pending AS%"])
        assert cursor.fetchone()[0] == 1


def test_leases_are_renewed_in_one_statement_and_a_lost_one_is_told_apart(make_conversation):
    from datetime import timedelta

    from django.utils import timezone

    from apps.runtime.watch import ActiveTurn, _leases_renew

    ours, taken = make_conversation(), make_conversation()
    assert runner.lease_acquire(conversation_id=ours.pk, token="ours")
    assert runner.lease_acquire(conversation_id=taken.pk, token="someone-else")
    until = timezone.now() + timedelta(minutes=5)

    with CaptureQueriesContext(connection) as queries:
        renewed = _leases_renew(
            [ActiveTurn(conversation_id=ours.pk, token="ours"), ActiveTurn(conversation_id=taken.pk, token="old")],
            until=until,
        )

    assert renewed == {"ours"} and len(queries) == 1
    ours.refresh_from_db()
    taken.refresh_from_db()
    assert ours.runner_lease_until == until and taken.runner_lease_until != until
