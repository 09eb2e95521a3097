"""Answers in Feishu: reaction, CardKit streaming card, tools on the card, fallbacks, errors.

Real openai client against the fake LLM, real lark-oapi client (apps.feishu.client) against the fake
Feishu Open API.
"""

from __future__ import annotations

import json
import time

import pytest

from apps.runtime.responders.feishu import PART_CHARS, split_text
from apps.runtime.services import conversation_process
from apps.transcripts.models import Message, Origin, Turn
from tests.factories import ConversationFactory
from tests.fakes.feishu_api import TOKEN_PATHS
from tests.fakes.fixtures import fake_feishu, fake_feishu_server, feishu_bot  # noqa: F401
from tests.fakes.llm import Reply, ToolCall

from .conftest import post, settled, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

INBOUND_ID = "om_inbound_0001"


@pytest.fixture
def feishu_conversation(agent, feishu_bot):  # noqa: F811
    from apps.bots.models import Bot
    from apps.tenants.models import Tenant

    # The bot must live in the agent's tenant.
    Bot.objects.filter(pk=feishu_bot.pk).update(tenant=agent.tenant)
    feishu_bot.tenant = agent.tenant
    assert Tenant.objects.count() >= 1
    return ConversationFactory(
        tenant=agent.tenant,
        origin=Origin.FEISHU,
        bot=feishu_bot,
        agent=agent,
        chat_id="oc_p2p_chat",
        chat_type="p2p",
        user_open_id="ou_user_1",
        key=f"feishu:{feishu_bot.app_id}:oc_p2p_chat",
    )


def feishu_post(conversation, text, external_id=INBOUND_ID, enqueue=False) -> Message:
    message = post(conversation, text, enqueue=False)
    Message.objects.filter(pk=message.pk).update(external_id=external_id, bot=conversation.bot)
    message.refresh_from_db()
    if enqueue:
        from apps.runtime.dispatch import turn_enqueue

        turn_enqueue(conversation_id=conversation.pk)
    return message


def cards(fake):
    return [m for m in fake.messages if m["msg_type"] == "interactive"]


def card_text(fake, message) -> str:
    """The answer text of a card message (a card sent as JSON is a card entity too)."""
    return fake.card(message["card_id"])["elements"]["answer"]["content"]


def content_ops(fake, card_id):
    return [op for op in fake.card(card_id)["operations"] if op["op"] == "content"]


def test_a_p2p_message_gets_a_reaction_and_a_streaming_card(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    answer = "## 答复\n\n这是一个**流式**回答，" + "内容逐字出现。" * 12
    fake_llm.script(Reply(text=answer, token_delay=0.04, chunk_chars=3))
    user = feishu_post(feishu_conversation, "你好")

    conversation_process(conversation_id=feishu_conversation.pk)

    (reply,) = cards(fake_feishu)
    assert reply["parent_id"] == INBOUND_ID and reply["uuid"]
    card = fake_feishu.card(reply["card_id"])
    assert card["card"]["schema"] == "2.0"
    assert card["elements"]["answer"]["content"] == answer
    assert card["streaming_mode"] is False  # closed at the end
    ops = card["operations"]
    # the final text and the end of streaming are one full-card update
    assert ops[-1]["op"] == "update" and ops[-1]["card"]["config"]["streaming_mode"] is False
    assert [op["op"] for op in ops].count("update") == 1 and "settings" not in [op["op"] for op in ops]
    assert card["card"]["config"]["summary"]["content"] == answer[:60]
    sequences = [op["sequence"] for op in ops]
    assert sequences == sorted(set(sequences)) and len(sequences) >= 3
    texts = [op["content"] for op in ops if op["op"] == "content"]
    assert texts and all(answer.startswith(t) for t in texts)  # every update shows a prefix of the answer
    # Updates are throttled: never two content updates within ~300 ms of each other.
    times = [r.time for r in fake_feishu.requests_to(r"/cardkit/v1/cards/.+/elements/.+/content")]
    assert all(b - a >= 0.15 for a, b in zip(times, times[1:], strict=False)), times  # 0.3 s minus jitter

    assistant = Message.objects.get(conversation=feishu_conversation, role=Message.Role.ASSISTANT)
    buttons = json.dumps(card["card"]["body"]["elements"][1], ensure_ascii=False)
    assert f'"message_id": {assistant.pk}' in buttons and '"feedback": "up"' in buttons and '"down"' in buttons

    (reaction,) = fake_feishu.reactions.values()
    assert reaction["message_id"] == INBOUND_ID and reaction["emoji_type"] == "OnIt" and reaction["deleted"]
    add = fake_feishu.requests_to(r"/reactions$", "POST")[0].time
    remove = fake_feishu.requests_to(r"/reactions/", "DELETE")[0].time
    assert add < fake_feishu.requests_to(r"/cardkit/v1/cards$", "POST")[0].time < remove

    turn = Turn.objects.get(conversation=feishu_conversation)
    assert turn.status == Turn.Status.SUCCEEDED and set(turn.timings) >= {"restore", "build", "run", "save", "respond"}
    user.refresh_from_db()
    assert user.status == Message.Status.DONE
    assert len(fake_feishu.messages) == 1  # the answer was shown once
    # reaction on, card create, reply, n streamed updates, one final update, reaction off
    assert len(fake_feishu.requests) == 5 + len(texts) + len(fake_feishu.token_requests)


def test_the_card_shows_the_running_tool(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_llm.script(
        Reply(tool_calls=[ToolCall("calc", {"expression": "12*34"})]),
        Reply(text="12 乘以 34 的结果是：{tool_result}", first_token_delay=0.4),
    )
    feishu_post(feishu_conversation, "12*34=?")

    conversation_process(conversation_id=feishu_conversation.pk)

    (reply,) = cards(fake_feishu)
    card = fake_feishu.card(reply["card_id"])
    created = json.loads(fake_feishu.requests_to(r"/cardkit/v1/cards$", "POST")[0].json["data"])
    created_with = created["body"]["elements"][0]["content"]
    shown = [created_with] + [op["content"] for op in content_ops(fake_feishu, reply["card_id"])]
    assert any("calc" in s and "正在调用工具" in s for s in shown)
    assert card["elements"]["answer"]["content"] == "12 乘以 34 的结果是：12*34 = 408"


def test_a_cardkit_failure_falls_back_to_one_plain_message(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_feishu.inject_error(230001, path=r"/cardkit/v1/cards$")
    fake_llm.script(Reply(text="纯文本回退的完整答案。", token_delay=0.1, chunk_chars=2))  # streams: a card opens
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    assert cards(fake_feishu) == []
    (message,) = fake_feishu.messages
    assert message["msg_type"] == "post" and message["parent_id"] == INBOUND_ID
    assert message["content"]["zh_cn"]["content"][0][0]["text"] == "纯文本回退的完整答案。"


def test_a_long_answer_is_split_across_cards(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    paragraphs = [f"第 {i} 段：" + "长" * 900 for i in range(12)]
    answer = "\n\n".join(paragraphs)
    fake_llm.script(Reply(text=answer, chunk_chars=500))
    feishu_post(feishu_conversation, "写长文")

    conversation_process(conversation_id=feishu_conversation.pk)

    replies = cards(fake_feishu)
    assert len(replies) >= 2
    parts = [card_text(fake_feishu, r) for r in replies]
    assert all(len(p) <= PART_CHARS for p in parts)
    assert [p for part in parts for p in part.split("\n\n") if p] == paragraphs  # nothing lost, nothing twice
    assert len({r["uuid"] for r in replies}) == len(replies)
    assert not any(fake_feishu.card(r["card_id"])["streaming_mode"] for r in replies)


def test_the_llm_request_does_not_wait_for_the_processing_reaction(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_feishu.inject_slow_answer(0.5, path=r"/reactions$")  # a slow Feishu round trip
    fake_llm.script(Reply(text="答复" * 20, token_delay=0.1, chunk_chars=8))  # ~0.5 s of streaming
    feishu_post(feishu_conversation, "hi")
    started = time.time()

    conversation_process(conversation_id=feishu_conversation.pk)

    (request,) = fake_llm.chat_requests()
    assert request.at - started < 0.4  # it left while the reaction call was still on its way
    (reaction,) = fake_feishu.reactions.values()
    assert reaction["emoji_type"] == "OnIt" and reaction["deleted"]  # still shown, and removed after it
    (reply,) = cards(fake_feishu)
    assert card_text(fake_feishu, reply) == "答复" * 20


def test_an_llm_timeout_shows_agent_001(fake_llm, fake_feishu, feishu_conversation, agent):  # noqa: F811
    agent.timeout = 1
    agent.save()
    fake_llm.script(Reply(text="late", hang=True))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    (message,) = fake_feishu.messages
    assert message["content"] == {"text": "思考超时，请简化问题重试"}
    assert "Traceback" not in json.dumps(fake_feishu.messages)
    (reaction,) = fake_feishu.reactions.values()
    assert reaction["deleted"]


def test_stop_in_feishu_closes_the_card_saying_so(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_llm.script(Reply(text="长" * 300, token_delay=0.1, chunk_chars=1))
    feishu_post(feishu_conversation, "write", enqueue=True)
    wait_for(lambda: cards(fake_feishu))

    feishu_post(feishu_conversation, "/stop", external_id="om_inbound_stop", enqueue=True)

    wait_for(lambda: settled(feishu_conversation), timeout=15)
    (reply,) = cards(fake_feishu)
    card = fake_feishu.card(reply["card_id"])
    assert card["elements"]["answer"]["content"].endswith("⏹ 已停止回答")
    assert not card["streaming_mode"]
    assert len(fake_feishu.messages) == 1


def test_help_is_answered_without_the_llm(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    feishu_post(feishu_conversation, "/help")

    conversation_process(conversation_id=feishu_conversation.pk)

    (message,) = fake_feishu.messages
    assert "/reset" in json.dumps(message["content"], ensure_ascii=False)
    assert fake_llm.chat_requests() == []
    assert fake_feishu.reactions == {}


def test_split_text_keeps_code_blocks_valid():
    code = "```python\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```"
    parts = split_text("intro\n\n" + code, 1000)
    assert len(parts) > 2
    for part in parts:
        assert part.count("```") % 2 == 0, part[:80]
    assert all(len(p) <= 1000 + 4 for p in parts)


def test_when_card_updates_fail_the_rest_follows_as_text_without_repeating(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_feishu.inject_error(230001, path=r"/elements/answer/content$")
    answer = "第一句话已经显示在卡片上。" + "后面的内容卡片无法更新，所以单独发送。" * 3
    fake_llm.script(Reply(text=answer, token_delay=0.1, chunk_chars=6))  # long enough for an update to fail
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    (card_message,) = cards(fake_feishu)
    on_card = fake_feishu.card(card_message["card_id"])["elements"]["answer"]["content"]
    (plain,) = [m for m in fake_feishu.messages if m["msg_type"] == "post"]
    rest = plain["content"]["zh_cn"]["content"][0][0]["text"]
    assert on_card and answer.startswith(on_card)
    assert rest == "…" + answer[len(on_card) :]  # together exactly the answer, nothing twice


def test_a_failed_final_update_closes_the_card_and_sends_only_the_rest(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_feishu.inject_error(230001, path=r"/cardkit/v1/cards/\d+$")  # the full-card update
    answer = "卡片上已经有开头。" + "最后一次整卡更新失败，剩下的作为文本发送。" * 3
    fake_llm.script(Reply(text=answer, token_delay=0.05, chunk_chars=6))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    (card_message,) = cards(fake_feishu)
    card = fake_feishu.card(card_message["card_id"])
    on_card = card["elements"]["answer"]["content"]
    (plain,) = [m for m in fake_feishu.messages if m["msg_type"] == "post"]
    rest = plain["content"]["zh_cn"]["content"][0][0]["text"]
    assert on_card and answer.startswith(on_card)
    assert rest == "…" + answer[len(on_card) :]  # together exactly the answer, nothing twice
    assert card["streaming_mode"] is False  # closed with a settings call instead
    assert card["operations"][-1]["op"] == "settings"
    (reaction,) = fake_feishu.reactions.values()
    assert reaction["deleted"]


def test_a_quick_answer_is_one_reply_with_the_finished_card(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_llm.script(Reply(text="一句话的回答。", chunk_chars=2, token_delay=0.01))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    calls = [(r.method, r.path) for r in fake_feishu.requests if r.path not in TOKEN_PATHS]
    assert [method for method, _ in calls] == ["POST", "POST", "DELETE"]  # reaction, reply, reaction off
    (reply,) = fake_feishu.messages
    assert reply["msg_type"] == "interactive" and reply["parent_id"] == INBOUND_ID
    card = reply["content"]
    assert card["schema"] == "2.0" and card["config"]["streaming_mode"] is False
    assert card["body"]["elements"][0]["content"] == card_text(fake_feishu, reply) == "一句话的回答。"
    assert fake_feishu.requests_to(r"/cardkit/") == []  # no CardKit entity to create, update or close
    assistant = Message.objects.get(conversation=feishu_conversation, role=Message.Role.ASSISTANT)
    assert f'"message_id": {assistant.pk}' in json.dumps(card["body"]["elements"][1])  # feedback buttons
    (reaction,) = fake_feishu.reactions.values()
    assert reaction["deleted"]


def test_a_streamed_answer_is_five_calls_and_keeps_cardkit_spacing(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_llm.script(Reply(text="一句话的回答，" * 6, chunk_chars=7, token_delay=0.06))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    calls = [(r.method, r.path) for r in fake_feishu.requests if r.path not in TOKEN_PATHS]
    (reply,) = cards(fake_feishu)
    card_path = f"/open-apis/cardkit/v1/cards/{reply['card_id']}"
    assert [method for method, _ in calls] == ["POST", "POST", "POST", "PUT", "DELETE"]
    assert calls[3] == ("PUT", card_path)  # reaction, card, reply, final update, reaction off
    create, final = fake_feishu.requests_to(r"/cardkit/v1/cards$")[0], fake_feishu.requests_to(card_path + "$")[0]
    assert final.time - create.time >= 0.09  # CardKit's ~10 operations/s per card
    assert card_text(fake_feishu, reply) == "一句话的回答，" * 6


def test_an_error_after_held_back_text_shows_both_once(fake_llm, fake_feishu, feishu_conversation, agent):  # noqa: F811
    agent.timeout = 1
    agent.save()
    fake_llm.script(Reply(text="开头的几个字然后卡住", chunk_chars=6, hang=True, hang_after_chunks=1))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    (message,) = fake_feishu.messages
    text = card_text(fake_feishu, message)
    assert text.startswith("开头的几个字") and text.endswith("思考超时，请简化问题重试")


def test_a_refused_finished_card_falls_back_to_one_plain_message(fake_llm, fake_feishu, feishu_conversation):  # noqa: F811
    fake_feishu.inject_error(230001, path=r"/im/v1/messages/.+/reply$", times=1)  # the card reply only
    fake_llm.script(Reply(text="卡片被拒绝时的完整答案。", chunk_chars=4, token_delay=0.01))
    feishu_post(feishu_conversation, "hi")

    conversation_process(conversation_id=feishu_conversation.pk)

    (message,) = fake_feishu.messages
    assert message["msg_type"] == "post" and message["parent_id"] == INBOUND_ID
    assert message["content"]["zh_cn"]["content"][0][0]["text"] == "卡片被拒绝时的完整答案。"
    sent = [r.json["msg_type"] for r in fake_feishu.requests_to(r"/reply$")]
    assert sent == ["interactive", "post"]
