"""One turn end to end: real openai client against the fake LLM, transcript, timings, tools, errors."""

from __future__ import annotations

import time

import pytest

from apps.runtime.services import conversation_process
from apps.transcripts.models import LLMCall, Message, Turn
from tests.fakes.llm import Reply, ToolCall

from .conftest import post, settled, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_streams_the_answer_and_records_the_transcript(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="你好，我是测试助手。Streaming works!", token_delay=0.01, chunk_chars=3))
    conversation = make_conversation()
    user = post(conversation, "你好", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    names = [e[0] for e in recorder.events(conversation)]
    assert names[0] == "start" and names[-2:] == ["final", "close"]
    deltas = [e[1][0] for e in recorder.events(conversation, "text")]
    assert len(deltas) > 3 and all(b.startswith(a) for a, b in zip(deltas, deltas[1:], strict=False))
    assert recorder.finals(conversation) == ["你好，我是测试助手。Streaming works!"]

    user.refresh_from_db()
    turn = Turn.objects.get(conversation=conversation)
    assert user.status == Message.Status.DONE and user.turn == turn
    assert turn.status == Turn.Status.SUCCEEDED
    assert set(turn.timings) == {"restore", "build", "run", "save", "respond"}
    assert turn.first_token_ms is not None and turn.duration_ms is not None
    answer = Message.objects.get(conversation=conversation, role=Message.Role.ASSISTANT)
    assert answer.content == "你好，我是测试助手。Streaming works!" and answer.status == Message.Status.DONE
    assert answer.trace_id == user.trace_id == turn.trace_id != ""
    call = LLMCall.objects.get(turn=turn)
    assert call.model == "primary-model" and call.ok
    assert call.input_tokens and call.output_tokens and call.first_token_ms is not None and call.latency_ms
    assert call.trace_id == turn.trace_id
    assert settled(conversation)

    request = fake_llm.chat_requests()[0]
    assert request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}
    assert request.headers["x-trace-id"] == turn.trace_id
    system = request.messages[0]["content"]
    assert "You are a helpful assistant." in system and "Asia/Shanghai" in system
    assert request.messages[-1] == {"role": "user", "content": "你好"}
    assert {t["function"]["name"] for t in request.body["tools"]} == {"time.now", "calc"}


def test_it_layers_tenant_and_binding_instructions_into_the_prompt(fake_llm, recorder, agent, make_conversation):
    from tests.factories import BindingFactory, BotFactory

    agent.tenant.instructions = "所有回答使用敬语。"
    agent.tenant.save()
    bot = BotFactory(tenant=agent.tenant)
    other = type(agent).objects.create(
        tenant=agent.tenant, slug="bound", name="律师助手", base_url=agent.base_url, model="bound-model", tools=[]
    )
    BindingFactory(bot=bot, tenant=agent.tenant, agent=other, chat_type="p2p", instructions="只讨论合同。")
    fake_llm.script(Reply(text="好的"))
    conversation = make_conversation(bot=bot, chat_type="p2p", chat_id="oc_1", user_open_id="ou_1")
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    request = fake_llm.chat_requests()[0]
    assert request.model == "bound-model"  # the binding's agent answers, not conversation.agent
    system = request.messages[0]["content"]
    assert system.index("律师助手") < system.index("所有回答使用敬语。") < system.index("只讨论合同。")
    assert "tools" not in request.body
    assert recorder.finals(conversation) == ["好的"]


def test_it_runs_a_tool_and_answers_with_its_result(fake_llm, recorder, make_conversation):
    fake_llm.script(
        Reply(tool_calls=[ToolCall("calc", {"expression": "6*7"})]),
        Reply(text="计算结果：{tool_result}", token_delay=0.01),
    )
    conversation = make_conversation()
    post(conversation, "6 乘 7 等于多少？", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    events = recorder.events(conversation)
    names = [e[0] for e in events]
    assert names.index("tool_start") < names.index("tool_end") < names.index("final")
    assert events[names.index("tool_start")][1] == ("calc", {"expression": "6*7"})
    assert events[names.index("tool_end")][1][:2] == ("calc", True)
    assert recorder.finals(conversation) == ["计算结果：6*7 = 42"]

    second = fake_llm.chat_requests()[1].messages
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calc"
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "6*7 = 42"
    tool_row = Message.objects.get(conversation=conversation, role=Message.Role.TOOL)
    assert tool_row.tool_name == "calc" and tool_row.content == "6*7 = 42" and tool_row.trace_id
    answer = Message.objects.get(conversation=conversation, role=Message.Role.ASSISTANT)
    assert answer.tool_calls[0]["name"] == "calc" and answer.tool_calls[0]["ok"] is True
    assert LLMCall.objects.filter(turn=answer.turn).count() == 2


def test_a_failing_tool_reports_agent_002_and_the_model_carries_on(fake_llm, recorder, make_conversation):
    fake_llm.script(
        Reply(tool_calls=[ToolCall("calc", {"expression": "1/0"})]),
        Reply(text="抱歉，{tool_result}"),
    )
    conversation = make_conversation()
    post(conversation, "1/0?", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    (tool_end,) = recorder.events(conversation, "tool_end")
    assert tool_end[1] == ("calc", False, "查询失败：除数为零")
    assert fake_llm.chat_requests()[1].messages[-1]["content"] == "查询失败：除数为零"
    assert Message.objects.get(role=Message.Role.TOOL, conversation=conversation).error_code == "AGENT_002"


def test_tool_rounds_are_bounded(fake_llm, recorder, agent, make_conversation):
    agent.max_tool_rounds = 2
    agent.save()
    fake_llm.script(Reply(tool_calls=[ToolCall("time.now", {})]), repeat=True)
    conversation = make_conversation()
    post(conversation, "loop", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    requests = fake_llm.chat_requests()
    assert len(requests) == 3
    assert "tools" in requests[1].body and "tools" not in requests[2].body  # the last round must answer
    assert len(recorder.events(conversation, "tool_start")) == 2


def test_it_times_out_with_agent_001(fake_llm, recorder, agent, make_conversation):
    agent.timeout = 1
    agent.save()
    fake_llm.script(Reply(text="too late", hang=True))
    conversation = make_conversation()
    user = post(conversation, "slow", enqueue=False)

    started = time.monotonic()
    conversation_process(conversation_id=conversation.pk)
    elapsed = time.monotonic() - started

    assert elapsed < 6
    assert recorder.events(conversation, "error")[0][1] == ("AGENT_001", "思考超时，请简化问题重试")
    assert not recorder.events(conversation, "final")
    turn = Turn.objects.get(conversation=conversation)
    assert turn.status == Turn.Status.FAILED and turn.error_code == "AGENT_001"
    user.refresh_from_db()
    assert user.status == Message.Status.FAILED
    assert LLMCall.objects.get(turn=turn).ok is False


def test_a_stream_that_stalls_mid_way_times_out_too(fake_llm, recorder, agent, make_conversation):
    agent.timeout = 1
    agent.save()
    fake_llm.script(Reply(text="partial answer that never ends", hang=True, hang_after_chunks=2))
    conversation = make_conversation()
    post(conversation, "slow", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.events(conversation, "text")
    assert recorder.events(conversation, "error")[0][1][0] == "AGENT_001"


def test_the_fallback_model_answers_when_the_primary_fails(fake_llm, recorder, agent, make_conversation):
    agent.fallback_model = "backup-model"
    agent.save()
    fake_llm.script(Reply(status=503), model="primary-model", repeat=True)
    fake_llm.script(Reply(text="备用模型的回答"), model="backup-model")
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.finals(conversation) == ["备用模型的回答"]
    calls = list(LLMCall.objects.filter(turn__conversation=conversation).values_list("model", "ok"))
    assert calls == [("primary-model", False)] * 3 + [("backup-model", True)]  # 2 retries, then fallback


def test_a_permanent_error_goes_to_the_fallback_without_retries(fake_llm, recorder, agent, make_conversation):
    agent.fallback_model = "backup-model"
    agent.save()
    fake_llm.script(Reply(status=404), model="primary-model", repeat=True)
    fake_llm.script(Reply(text="ok"), model="backup-model")
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    assert [r.model for r in fake_llm.chat_requests()] == ["primary-model", "backup-model"]
    assert recorder.finals(conversation) == ["ok"]


def test_a_transient_error_is_retried(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(status=500), Reply(text="second try"))
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.finals(conversation) == ["second try"]


def test_when_every_model_fails_the_user_sees_a_product_message(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(status=500), repeat=True)
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    (error,) = recorder.events(conversation, "error")
    assert error[1] == ("AGENT_003", "模型服务暂时不可用，请稍后重试")
    assert "Traceback" not in str(recorder.events(conversation))
    assert Turn.objects.get(conversation=conversation).error_detail.startswith("HTTP 500")


def test_a_conversation_without_agent_gets_an_error_not_a_crash(fake_llm, recorder, make_conversation):
    conversation = make_conversation(agent=None)
    user = post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    assert recorder.events(conversation, "error")[0][1][0] == "AGENT_004"
    user.refresh_from_db()
    assert user.status == Message.Status.FAILED
    assert fake_llm.chat_requests() == []


def test_the_in_process_runner_answers_an_enqueued_message(fake_llm, recorder, make_conversation):
    fake_llm.script(Reply(text="via the thread pool"))
    conversation = make_conversation()
    post(conversation, "hi")

    wait_for(lambda: recorder.finals(conversation))
    wait_for(lambda: settled(conversation))
    assert recorder.finals(conversation) == ["via the thread pool"]


def test_when_the_transcript_cannot_be_saved_the_user_is_told_and_the_message_retried_later(
    fake_llm, recorder, make_conversation, monkeypatch
):
    fake_llm.script(Reply(text="unsaved"), Reply(text="saved on retry"))
    conversation = make_conversation()
    user = post(conversation, "hi", enqueue=False)

    def broken_save(**kwargs):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError):
        patch.setattr("apps.runtime.pipeline.turn.turn_save", broken_save)
        conversation_process(conversation_id=conversation.pk)

    assert [e[0] for e in recorder.events(conversation)][-2:] == ["error", "close"]
    assert not recorder.events(conversation, "final")
    conversation.refresh_from_db()
    user.refresh_from_db()
    assert conversation.runner_token == "" and user.status == Message.Status.PENDING  # back in the queue

    conversation_process(conversation_id=conversation.pk)  # what the sweep does
    assert recorder.finals(conversation) == ["saved on retry"], recorder.events(conversation)


def test_the_demo_model_streams_and_calls_the_time_tool(fake_llm, recorder, make_conversation):
    conversation = make_conversation()  # no script: the fake runs its demo
    post(conversation, "现在几点？", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    (tool_start,) = recorder.events(conversation, "tool_start")
    assert tool_start[1][0] == "time.now"
    (final,) = recorder.finals(conversation)
    assert "Asia/Shanghai" in final and "离线演示模型" in final
    assert len(recorder.events(conversation, "text")) > 5


def test_a_burst_of_chunks_reaches_the_responder_as_few_updates_ending_with_the_whole_text(
    fake_llm, recorder, make_conversation
):
    text = "一二三四五六七八九十" * 20
    fake_llm.script(Reply(text=text, chunk_chars=2))  # 100 chunks sent in one write
    conversation = make_conversation()
    post(conversation, "hi", enqueue=False)

    conversation_process(conversation_id=conversation.pk)

    deltas = [e[1][0] for e in recorder.events(conversation, "text")]
    assert 1 <= len(deltas) < 20 and deltas[-1] == text
    assert recorder.finals(conversation) == [text]
