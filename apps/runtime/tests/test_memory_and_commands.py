"""Short-term memory (rounds, budget, folding, idle TTL) and the chat commands."""

from __future__ import annotations

from datetime import timedelta

import pytest

from apps.runtime.commands import RESET_TEXT, command_parse
from apps.runtime.memory import estimate_tokens
from apps.runtime.services import conversation_process
from apps.transcripts.models import Conversation, LLMCall, Message, Turn
from tests.fakes.llm import Reply

from .conftest import post

pytestmark = pytest.mark.django_db(transaction=True)


def ask(conversation, text):
    post(conversation, text, enqueue=False)
    conversation_process(conversation_id=conversation.pk)


def history_of(request) -> list[str]:
    """User/assistant contents replayed to the model (between the system prompt and the question)."""
    return [m["content"] for m in request.messages[1:-1]]


def test_it_replays_the_last_rounds_of_the_session(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    for text in ("q1", "q2", "q3"):
        ask(conversation, text)

    assert history_of(fake_llm.chat_requests()[-1]) == ["q1", "A:q1", "q2", "A:q2"]


def test_older_rounds_are_folded_into_a_summary_not_cut(fake_llm, recorder, agent, make_conversation):
    agent.memory_rounds = 2
    agent.save()
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    for text in ("q1", "q2"):
        ask(conversation, text)
    assert not [r for r in fake_llm.chat_requests() if not r.body.get("stream")]  # nothing to fold yet

    # Three rounds no longer fit: once q3 is answered, q1 is folded (after the answer, not before it).
    fake_llm.script(Reply(text="A:q3"), Reply(text="SUMMARY: user asked q1."))
    ask(conversation, "q3")

    answer_q3, summarize = fake_llm.chat_requests()[-2:]
    assert answer_q3.body["stream"] is True and recorder.finals(conversation)[-1] == "A:q3"
    assert summarize.body.get("stream") is not True and "tools" not in summarize.body
    assert "用户：q1" in summarize.messages[-1]["content"] and "助手：A:q1" in summarize.messages[-1]["content"]
    assert "q2" not in summarize.messages[-1]["content"]
    conversation.refresh_from_db()
    assert conversation.summary == "SUMMARY: user asked q1."
    turn_q3 = Turn.objects.filter(conversation=conversation).order_by("id").last()
    assert "memory" in turn_q3.timings and turn_q3.llm_calls.count() == 2

    fake_llm.script(Reply(text="A:q4"), Reply(text="SUMMARY 2"))
    ask(conversation, "q4")

    answer_q4, summarize = fake_llm.chat_requests()[-2:]
    assert history_of(answer_q4) == ["q2", "A:q2", "q3", "A:q3"]  # no fold on the critical path
    assert "SUMMARY: user asked q1." in answer_q4.messages[0]["content"]
    assert "SUMMARY: user asked q1." in summarize.messages[-1]["content"]
    assert "用户：q2" in summarize.messages[-1]["content"]
    ask(conversation, "q5")
    answer_q5 = fake_llm.chat_requests()[-2]
    assert history_of(answer_q5) == ["q3", "A:q3", "q4", "A:q4"]
    assert "SUMMARY 2" in answer_q5.messages[0]["content"]
    assert LLMCall.objects.filter(turn__conversation=conversation).count() == 5 + 3  # answers + folds


def test_build_folds_what_is_left_over(fake_llm, recorder, agent, make_conversation):
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    for text in ("q1", "q2", "q3"):
        ask(conversation, text)
    agent.memory_rounds = 1  # settings changed: two rounds no longer fit
    agent.save()
    fake_llm.script(Reply(text="SUMMARY of q1 and q2"))  # BUILD's fold comes before the answer

    ask(conversation, "q4")

    summarize, answer = fake_llm.chat_requests()[-3:-1]
    assert summarize.body.get("stream") is not True and "用户：q2" in summarize.messages[-1]["content"]
    assert history_of(answer) == ["q3", "A:q3"]
    assert "SUMMARY of q1 and q2" in answer.messages[0]["content"]


def test_the_token_budget_limits_history_too(fake_llm, recorder, agent, make_conversation):
    agent.memory_token_budget = 60
    agent.save()
    fake_llm.default = Reply(text="好" * 20)
    conversation = make_conversation()
    ask(conversation, "一" * 20)
    fake_llm.script(Reply(text="好" * 20), Reply(text="摘要"))  # two rounds (96 tokens) do not fit: fold
    ask(conversation, "二" * 20)

    ask(conversation, "三")

    answer = [r for r in fake_llm.chat_requests() if r.body.get("stream")][-1]
    replayed = history_of(answer)
    assert sum(estimate_tokens(t) + 4 for t in replayed) <= 60
    assert replayed == ["二" * 20, "好" * 20]
    assert "摘要" in answer.messages[0]["content"]


def test_history_is_forgotten_after_the_idle_ttl(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    ask(conversation, "old question")
    Message.objects.filter(conversation=conversation).update(
        created_at=Message.objects.first().created_at - timedelta(hours=1)
    )

    ask(conversation, "new question")

    assert history_of(fake_llm.chat_requests()[-1]) == []


def test_reset_starts_a_new_session(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    ask(conversation, "remember 42")
    Conversation.objects.filter(pk=conversation.pk).update(summary="an old summary")

    ask(conversation, "/reset")

    assert recorder.events(conversation, "notice")[-1][1] == (RESET_TEXT,)
    assert len(fake_llm.chat_requests()) == 1  # no LLM for the command
    ask(conversation, "what did I say?")
    request = fake_llm.chat_requests()[-1]
    assert history_of(request) == [] and "an old summary" not in request.messages[0]["content"]
    notice = Message.objects.get(conversation=conversation, role=Message.Role.SYSTEM)
    assert notice.content == RESET_TEXT


def test_help_lists_the_commands_without_the_llm(fake_llm, recorder, make_conversation):
    conversation = make_conversation()

    ask(conversation, "/help")

    (notice,) = recorder.events(conversation, "notice")
    assert all(f"/{name}" in notice[1][0] for name in ("stop", "reset", "help"))
    assert fake_llm.chat_requests() == []
    assert Message.objects.get(conversation=conversation, role=Message.Role.USER).status == Message.Status.DONE


@pytest.mark.parametrize(
    ("text", "command"),
    [("/stop", "stop"), (" /RESET ", "reset"), ("/help me", "help"), ("/unknown", None), ("stop", None), ("", None)],
)
def test_command_parse(text, command):
    assert command_parse(text) == command


def test_estimate_tokens_counts_cjk_per_character():
    assert estimate_tokens("") == 0
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("hello world!") == 3


def test_a_message_queued_behind_reset_belongs_to_the_new_session(fake_llm, recorder, make_conversation):
    fake_llm.default = Reply(text="A:{last_user}")
    conversation = make_conversation()
    ask(conversation, "before")
    post(conversation, "/reset", enqueue=False)
    post(conversation, "right after", enqueue=False)  # arrives before the runner handles /reset
    conversation_process(conversation_id=conversation.pk)

    ask(conversation, "next")

    assert history_of(fake_llm.chat_requests()[-1]) == ["right after", "A:right after"]
