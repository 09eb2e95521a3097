"""End to end: browser socket -> web chat service -> turn pipeline (in-process runner) -> fake LLM over
real HTTP -> web responder -> Redis channel layer -> the same socket."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from apps.runtime.responders import load_responders
from apps.transcripts.models import Message, Turn
from tests.factories import AgentFactory
from tests.fakes.llm import Reply, ToolCall

from .conftest import session_cookie, ws

pytestmark = [pytest.mark.django_db(transaction=True)]

TERMINAL = {"final", "error", "cancelled", "notice"}


@pytest.fixture
def agent(personas, fake_llm):
    load_responders()  # import every channel's responder now, not inside the first timed turn
    return AgentFactory(
        tenant=personas.tenant_a, name="Helper", base_url=fake_llm.base_url, model="fake-model", tools=["time.now"]
    )


async def open_chat(user, agent):
    communicator = ws(agent.pk, await sync_to_async(session_cookie)(user))
    connected, _ = await communicator.connect()
    assert connected
    ready = await communicator.receive_json_from(timeout=5)
    assert ready["type"] == "ready"
    return communicator, ready


async def events_until_end(communicator, timeout: float = 30) -> list[dict]:
    events = []
    while True:
        event = await communicator.receive_json_from(timeout=timeout)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


async def test_it_streams_the_answer_token_by_token_and_ends_with_the_final_text(personas, agent, fake_llm):
    answer = "Hello from the fake model, streamed in small chunks so the page can show them."
    fake_llm.script(Reply(text=answer, first_token_delay=0.1, token_delay=0.05, chunk_chars=6))
    communicator, ready = await open_chat(personas.owner_a, agent)

    await communicator.send_json_to({"type": "message", "text": "Say hello"})
    events = await events_until_end(communicator)
    await communicator.disconnect()

    kinds = [e["type"] for e in events]
    assert kinds[0] == "user.message" and kinds[1] == "turn.start" and kinds[-1] == "final", kinds
    deltas = [e["delta"] for e in events if e["type"] == "text.delta"]
    assert len(deltas) >= 5, "the answer should arrive in many pieces, not at once"
    assert "".join(deltas) == answer
    final = events[-1]
    assert final["text"] == answer
    assistant = await Message.objects.aget(pk=final["message_id"])
    assert (assistant.conversation_id, assistant.role, assistant.content) == (
        ready["conversation_id"],
        Message.Role.ASSISTANT,
        answer,
    )
    assert fake_llm.chat_requests()[-1].messages[-1]["content"] == "Say hello"


async def test_it_shows_tool_calls_as_they_happen(personas, agent, fake_llm):
    fake_llm.script(
        Reply(tool_calls=[ToolCall("time.now", {"timezone": "UTC"})]),
        Reply(text="The tool said: {tool_result}", token_delay=0.01),
    )
    communicator, _ = await open_chat(personas.owner_a, agent)
    await communicator.send_json_to({"type": "message", "text": "What time is it?"})
    events = await events_until_end(communicator)
    await communicator.disconnect()

    kinds = [e["type"] for e in events]
    start, end = kinds.index("tool.start"), kinds.index("tool.end")
    assert start < end < kinds.index("final")
    assert events[start]["name"] == "time.now" and events[start]["arguments"] == {"timezone": "UTC"}
    assert events[end]["ok"] is True and events[end]["summary"]
    assert events[-1]["text"].startswith("The tool said: ")

    # Reloading the page shows the same conversation: question, tool call, answer.
    again, ready = await open_chat(personas.owner_a, agent)
    await again.disconnect()
    assert [h["role"] for h in ready["history"]] == ["user", "tool", "assistant"]
    assert ready["history"][1]["tool_name"] == "time.now"


async def test_it_shows_the_products_error_message_when_the_model_fails(personas, agent, fake_llm):
    fake_llm.script(Reply(status=500), repeat=True)
    communicator, _ = await open_chat(personas.owner_a, agent)
    await communicator.send_json_to({"type": "message", "text": "hello?"})
    events = await events_until_end(communicator, timeout=30)
    await communicator.disconnect()

    error = events[-1]
    assert error["type"] == "error"
    assert error["code"].startswith("AGENT_")
    assert "Traceback" not in error["message"] and "500" not in error["message"]
    from apps.runtime.errors import user_message

    assert error["message"] == user_message(error["code"])


async def test_stop_cancels_a_streaming_turn_promptly(personas, agent, fake_llm):
    fake_llm.script(Reply(text="word " * 400, token_delay=0.05, chunk_chars=5))  # ~20 s if not stopped
    communicator, _ = await open_chat(personas.owner_a, agent)
    await communicator.send_json_to({"type": "message", "text": "Tell me a long story"})
    while (await communicator.receive_json_from(timeout=10))["type"] != "text.delta":
        pass

    await communicator.send_json_to({"type": "stop"})
    import time

    asked = time.monotonic()
    event = await communicator.receive_json_from(timeout=5)
    while event["type"] == "text.delta":
        event = await communicator.receive_json_from(timeout=5)
    elapsed = time.monotonic() - asked
    await communicator.disconnect()

    assert event["type"] == "cancelled" and event["turn_id"]
    assert elapsed < 2.0
    turn = await Turn.objects.aget(pk=event["turn_id"])
    assert turn.status == Turn.Status.CANCELLED


async def test_typed_reset_command_gets_the_runtimes_notice(personas, agent, fake_llm):
    communicator, _ = await open_chat(personas.owner_a, agent)
    await communicator.send_json_to({"type": "message", "text": "/reset"})
    events = await events_until_end(communicator)
    await communicator.disconnect()
    assert events[-1]["type"] == "notice" and events[-1]["text"]
    assert not fake_llm.chat_requests()
