"""Built-in tools, the tool registry, beat schedule sync and the fake LLM's wire protocol."""

from __future__ import annotations

import json

import openai
import pytest

from apps.runtime.tools import ToolContext, tool_get, tool_run, tools_for_agent
from apps.runtime.tools.registry import _REGISTRY, tool
from tests.factories import AgentFactory, TenantFactory
from tests.fakes.llm import Reply, ToolCall


@pytest.fixture
def ctx(db):
    return ToolContext(tenant=TenantFactory(time_zone="America/New_York"))


@pytest.mark.parametrize(
    ("expression", "result"), [("6*7", "6*7 = 42"), ("(1+2)/4", "(1+2)/4 = 0.75"), ("2**10", "2**10 = 1024")]
)
def test_calc(ctx, expression, result):
    outcome = tool_run(
        name="calc", arguments_json=json.dumps({"expression": expression}), ctx=ctx, allowed=[tool_get("calc")]
    )
    assert outcome.ok and outcome.content == result


@pytest.mark.parametrize(
    ("arguments", "shown"),
    [
        ({"expression": "__import__('os')"}, "查询失败：只支持数字和 + - * / // % ** 运算"),
        ({"expression": "1/0"}, "查询失败：除数为零"),
        ({"expression": "9**9**9"}, "查询失败：指数过大"),
        ({"wrong": 1}, "查询失败：参数错误"),
    ],
)
def test_tool_errors_become_agent_002(ctx, arguments, shown):
    outcome = tool_run(name="calc", arguments_json=json.dumps(arguments), ctx=ctx, allowed=[tool_get("calc")])
    assert not outcome.ok and outcome.error_code == "AGENT_002" and outcome.summary == shown


def test_a_tool_the_agent_does_not_offer_is_refused(ctx):
    outcome = tool_run(name="calc", arguments_json="{}", ctx=ctx, allowed=[])
    assert not outcome.ok and "未知工具" in outcome.content


def test_time_now_uses_the_tenant_time_zone(ctx):
    outcome = tool_run(name="time.now", arguments_json="", ctx=ctx, allowed=[tool_get("time.now")])
    assert outcome.ok and "America/New_York" in outcome.content


def test_registering_a_tool_is_one_decorator(db, monkeypatch):
    monkeypatch.setattr("apps.runtime.tools.registry._REGISTRY", dict(_REGISTRY))

    @tool("demo.v1.echo", "Echo", {"type": "object", "properties": {"text": {"type": "string"}}})
    def echo(ctx, *, text: str) -> dict:
        return {"echo": text}

    agent = AgentFactory(tools=["demo.v1.echo", "not.registered"])
    (found,) = tools_for_agent(agent)
    assert found.schema()["function"]["name"] == "demo.v1.echo"
    outcome = tool_run(
        name="demo.v1.echo", arguments_json='{"text": "hi"}', ctx=ToolContext(tenant=agent.tenant), allowed=[found]
    )
    assert json.loads(outcome.content) == {"echo": "hi"}


def test_periodic_tasks_sync_is_idempotent_and_keeps_the_operators_choice(db):
    from django_celery_beat.models import PeriodicTask

    from apps.runtime.services import periodic_tasks_sync

    periodic_tasks_sync()
    task = PeriodicTask.objects.get(task="runtime.conversations_sweep")
    task.enabled = False
    task.save()
    periodic_tasks_sync()
    periodic_tasks_sync()

    task = PeriodicTask.objects.get(task="runtime.conversations_sweep")
    assert task.enabled is False and task.interval.every == 30
    assert PeriodicTask.objects.filter(task="runtime.conversations_sweep").count() == 1


# -- the fake LLM speaks the OpenAI protocol ---------------------------------------------------------
def client(fake):
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)


def test_fake_llm_lists_models_and_answers_without_streaming(fake_llm):
    fake_llm.script(Reply(text="plain answer"))
    c = client(fake_llm)
    assert "omniagent-demo" in [m.id for m in c.models.list()]
    response = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content == "plain answer" and response.usage.total_tokens > 0


def test_fake_llm_streams_tool_calls_and_usage(fake_llm):
    fake_llm.script(Reply(tool_calls=[ToolCall("calc", {"expression": "1+1"})]))
    stream = client(fake_llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "1+1"}], stream=True, stream_options={"include_usage": True}
    )
    arguments, name, usage, finish = "", "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                name += call.function.name or ""
                arguments += call.function.arguments or ""
    assert name == "calc" and json.loads(arguments) == {"expression": "1+1"}
    assert finish == "tool_calls" and usage is not None


def test_fake_llm_fails_per_model_on_demand(fake_llm):
    fake_llm.script(Reply(status=503), model="broken", repeat=True)
    c = client(fake_llm)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    fake_llm.script(Reply(text="fine"))
    assert (
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}]).choices[0].message.content
        == "fine"
    )
    assert [r.model for r in fake_llm.chat_requests()] == ["broken", "other"]


def test_fake_llm_demo_calls_the_time_tool(fake_llm):
    tools = [{"type": "function", "function": {"name": "time.now", "parameters": {"type": "object"}}}]
    c = client(fake_llm)
    first = c.chat.completions.create(
        model="omniagent-demo", messages=[{"role": "user", "content": "现在几点？"}], tools=tools
    )
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "time.now"
    second = c.chat.completions.create(
        model="omniagent-demo",
        tools=tools,
        messages=[
            {"role": "user", "content": "现在几点？"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "2026-01-01 09:00:00"},
        ],
    )
    assert "2026-01-01 09:00:00" in second.choices[0].message.content


def test_the_turns_llm_request_is_the_one_create_would_send(fake_llm):
    """LLMSession posts the body itself (no SDK parameter transform): same wire request, key, headers."""
    from types import SimpleNamespace

    from apps.runtime.llm import LLMSession

    agent = SimpleNamespace(
        base_url=fake_llm.base_url, api_key="sk-agent", model="m", fallback_model="", timeout=10,
        temperature=0.2, max_output_tokens=100,
    )  # fmt: skip
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "你好"}]
    fake_llm.api_key = "sk-agent"  # the fake now refuses any other key
    try:
        fake_llm.script(Reply(text="答案", chunk_chars=1))
        texts = []
        completion = LLMSession(agent=agent, trace_id="trace-1").chat(
            messages=messages, tools=tools, on_text=texts.append
        )
    finally:
        fake_llm.api_key = None
    assert completion.text == "答案" and texts == ["答", "答案"] and completion.finish_reason == "stop"
    (request,) = fake_llm.chat_requests()
    assert request.headers["authorization"] == "Bearer sk-agent" and request.headers["x-trace-id"] == "trace-1"
    assert request.body == {
        "model": "m", "messages": messages, "temperature": 0.2, "max_tokens": 100, "tools": tools,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


def test_consecutive_streamed_calls_reuse_one_http_connection(fake_llm):
    from types import SimpleNamespace

    from apps.runtime.llm import LLMSession

    agent = SimpleNamespace(
        base_url=fake_llm.base_url, api_key="sk-reuse", model="m", fallback_model="", timeout=10,
        temperature=0.2, max_output_tokens=100,
    )  # fmt: skip
    fake_llm.default = Reply(text="ok")
    for _ in range(3):
        assert LLMSession(agent=agent).chat(messages=[{"role": "user", "content": "hi"}]).text == "ok"
    peers = {r.peer for r in fake_llm.chat_requests()}
    assert len(peers) == 1, peers
