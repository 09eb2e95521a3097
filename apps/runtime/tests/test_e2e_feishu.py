"""Webhook in → ingest → runner → CardKit card out, on the real app with both fakes."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.transcripts.models import Conversation, Message, Turn
from tests.factories import BindingFactory
from tests.fakes.feishu_ws import django_headers, message_event, webhook_request
from tests.fakes.fixtures import fake_feishu, fake_feishu_server, feishu_bot  # noqa: F401
from tests.fakes.llm import Reply

from .conftest import settled, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def deliver(bot, payload):
    body, headers = webhook_request(payload, encrypt_key=bot.encrypt_key)
    response = Client().post(
        f"/webhooks/feishu/{bot.app_id}/", data=body, content_type="application/json", **django_headers(headers)
    )
    assert response.status_code == 200, response.content
    return response


@pytest.fixture
def bound_bot(agent, feishu_bot):  # noqa: F811
    from apps.bots.models import Bot

    Bot.objects.filter(pk=feishu_bot.pk).update(tenant=agent.tenant)
    feishu_bot.tenant = agent.tenant
    BindingFactory(bot=feishu_bot, tenant=agent.tenant, agent=agent, chat_type="p2p")
    return feishu_bot


def card_texts(fake):
    return [
        fake.card(m["card_id"])["elements"]["answer"]["content"]
        for m in fake.messages
        if m["msg_type"] == "interactive"
    ]


def test_a_webhook_message_is_answered_once_even_when_feishu_pushes_it_again(fake_llm, fake_feishu, bound_bot):  # noqa: F811
    fake_llm.script(Reply(text="你好，这是答案。", token_delay=0.02, chunk_chars=2))
    payload = message_event(app_id=bound_bot.app_id, text="你好", message_id="om_e2e_1", event_id="ev_e2e_1")

    deliver(bound_bot, payload)
    conversation = wait_for(lambda: Conversation.objects.filter(bot=bound_bot).first())
    wait_for(lambda: card_texts(fake_feishu) == ["你好，这是答案。"])
    wait_for(lambda: settled(conversation))
    deliver(bound_bot, payload)  # Feishu re-pushes the same event
    deliver(bound_bot, message_event(app_id=bound_bot.app_id, text="你好", message_id="om_e2e_1", event_id="ev_e2e_2"))
    wait_for(lambda: settled(conversation))

    assert card_texts(fake_feishu) == ["你好，这是答案。"]
    assert len(fake_llm.chat_requests()) == 1
    (reply,) = fake_feishu.messages
    assert reply["parent_id"] == "om_e2e_1"
    user = Message.objects.get(conversation=conversation, role=Message.Role.USER)
    turn = Turn.objects.get(conversation=conversation)
    # One trace id from the inbound event to the LLM request and the logged outbound message.
    from apps.feishu.models import OutboundMessage

    assert user.trace_id == turn.trace_id == fake_llm.chat_requests()[0].headers["x-trace-id"]
    assert OutboundMessage.objects.get(conversation=conversation).trace_id == turn.trace_id


def test_three_quick_webhook_messages_are_answered_in_order(fake_llm, fake_feishu, bound_bot):  # noqa: F811
    fake_llm.default = Reply(text="re: {last_user}", first_token_delay=0.3)
    for i in range(3):
        deliver(
            bound_bot,
            message_event(app_id=bound_bot.app_id, text=f"m{i}", message_id=f"om_q_{i}", event_id=f"ev_q_{i}"),
        )

    conversation = Conversation.objects.get(bot=bound_bot)
    wait_for(lambda: len(card_texts(fake_feishu)) == 3, timeout=30)
    wait_for(lambda: settled(conversation))

    assert card_texts(fake_feishu) == ["re: m0", "re: m1", "re: m2"]
    assert [m["parent_id"] for m in fake_feishu.messages] == ["om_q_0", "om_q_1", "om_q_2"]
