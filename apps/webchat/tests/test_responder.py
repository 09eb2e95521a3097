"""The web responder publishes a turn's events to the conversation group over the real Redis layer."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.runtime.responders import load_responders
from apps.runtime.responders.base import ResponderContext, responder_for
from apps.transcripts.models import Turn
from apps.webchat.events import conversation_group
from tests.factories import AgentFactory, ConversationFactory

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ctx(personas):
    agent = AgentFactory(tenant=personas.tenant_a)
    conversation = ConversationFactory(tenant=personas.tenant_a, agent=agent, user=personas.owner_a)
    turn = Turn.objects.create(tenant=personas.tenant_a, conversation=conversation, agent=agent, trace_id="t1")
    return ResponderContext(conversation=conversation, turn=turn, assistant_message_id=99)


async def drain(layer, channel: str) -> list[dict]:
    events = []
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout=0.5)
        except TimeoutError:
            return events
        assert message["type"] == "webchat.event"
        events.append(message["event"])


async def test_it_is_the_registered_responder_for_web_conversations(ctx):
    from apps.runtime.responders.web import WebResponder

    load_responders()
    assert isinstance(responder_for(ctx), WebResponder)


async def test_it_streams_deltas_tools_and_the_final_answer_in_order(ctx, monkeypatch):
    monkeypatch.setattr("apps.runtime.responders.web.MIN_INTERVAL", 0)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(conversation_group(ctx.conversation.pk), channel)

    def run_turn():  # as the worker thread does
        from apps.runtime.responders.web import WebResponder

        r = WebResponder(ctx)
        r.on_start()
        r.on_text_delta("Hel")
        r.on_text_delta("Hello")
        r.on_tool_start("time.now", {"tz": "UTC"})
        r.on_tool_end("time.now", True, "12:00")
        r.on_text_delta("Hello, it is 12:00")
        r.on_final("Hello, it is 12:00.")
        r.close()

    await sync_to_async(run_turn, thread_sensitive=False)()
    turn = ctx.turn.pk
    assert await drain(layer, channel) == [
        {"type": "turn.start", "turn_id": turn},
        {"type": "text.delta", "turn_id": turn, "delta": "Hel"},
        {"type": "text.delta", "turn_id": turn, "delta": "lo"},
        {"type": "tool.start", "turn_id": turn, "name": "time.now", "arguments": {"tz": "UTC"}},
        {"type": "tool.end", "turn_id": turn, "name": "time.now", "ok": True, "summary": "12:00"},
        {"type": "text.delta", "turn_id": turn, "delta": ", it is 12:00"},
        {"type": "text.delta", "turn_id": turn, "delta": "."},
        {"type": "final", "turn_id": turn, "text": "Hello, it is 12:00.", "message_id": 99},
    ]


async def test_it_coalesces_fast_tokens_without_losing_text(ctx):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(conversation_group(ctx.conversation.pk), channel)

    def run_turn():
        from apps.runtime.responders.web import WebResponder

        r = WebResponder(ctx)
        text = ""
        for word in ["a", "b", "c", "d", "e"] * 20:
            text += word
            r.on_text_delta(text)
        r.on_error("AGENT_001", "思考超时，请简化问题重试")

    await sync_to_async(run_turn, thread_sensitive=False)()
    events = await drain(layer, channel)
    deltas = [e["delta"] for e in events if e["type"] == "text.delta"]
    assert "".join(deltas) == "abcde" * 20
    assert len(deltas) < 100  # coalesced: 100 tokens in well under MIN_INTERVAL each
    assert events[-1] == {
        "type": "error",
        "turn_id": ctx.turn.pk,
        "code": "AGENT_001",
        "message": "思考超时，请简化问题重试",
    }


async def test_it_replaces_text_that_no_longer_extends_what_was_sent(ctx, monkeypatch):
    monkeypatch.setattr("apps.runtime.responders.web.MIN_INTERVAL", 0)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(conversation_group(ctx.conversation.pk), channel)

    def run_turn():
        from apps.runtime.responders.web import WebResponder

        r = WebResponder(ctx)
        r.on_text_delta("Let me check")
        r.on_text_delta("It is sunny")
        r.on_cancelled()

    await sync_to_async(run_turn, thread_sensitive=False)()
    assert [e["type"] for e in await drain(layer, channel)] == ["text.delta", "text.replace", "cancelled"]
