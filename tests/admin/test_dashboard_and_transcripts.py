"""The tenant dashboard, the chat view of a conversation and retrying failed sends, as staff see them."""

import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditLog
from apps.bots.models import Bot
from apps.feishu.models import OutboundMessage
from apps.transcripts.models import Message, Turn
from tests.factories import (
    AgentFactory,
    BotFactory,
    ConversationFactory,
    LLMCallFactory,
    MessageFactory,
    OutboundMessageFactory,
    TurnFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def activity(personas):
    tenant = personas.tenant_a
    now = timezone.now()
    bot = BotFactory(
        tenant=tenant,
        name="Helpdesk",
        mode=Bot.Mode.LONG_CONNECTION,
        connection_state=Bot.ConnectionState.CONNECTED,
        last_event_at=now,
    )
    agent = AgentFactory(tenant=tenant, slug="case-assistant")
    today = ConversationFactory(tenant=tenant, bot=bot, agent=agent, last_activity_at=now)
    ConversationFactory(tenant=tenant, last_activity_at=now - datetime.timedelta(days=3))
    TurnFactory(conversation=today)
    failed = TurnFactory(
        conversation=today, status=Turn.Status.FAILED, error_code="AGENT_001", error_detail="LLM timed out after 60s"
    )
    send = OutboundMessageFactory(
        bot=bot, status=OutboundMessage.Status.FAILED, attempts=4, last_error="FeishuError 230002: bot not in chat"
    )
    # Tenant B's trouble must never show on A's dashboard.
    b_conv = ConversationFactory(tenant=personas.tenant_b, last_activity_at=now)
    TurnFactory(conversation=b_conv, status=Turn.Status.FAILED, error_code="B_ONLY_ERROR")
    return {"bot": bot, "agent": agent, "failed": failed, "send": send, "conversation": today}


def test_it_shows_a_tenant_its_dashboard(client, personas, activity):
    client.force_login(personas.viewer_a)
    url = reverse("admin:tenants_tenant_dashboard", args=[personas.tenant_a.pk])
    page = client.get(url).content.decode()
    assert "Helpdesk" in page and "Connected" in page and "case-assistant" in page
    assert '<strong class="oa-conversations-today">1</strong>' in page
    assert '<strong class="oa-turns-today">2</strong>' in page
    assert "AGENT_001" in page and "LLM timed out after 60s" in page
    assert "bot not in chat" in page
    assert "B_ONLY_ERROR" not in page


def test_it_links_the_dashboard_from_the_tenant_pages(client, personas):
    client.force_login(personas.owner_a)
    url = reverse("admin:tenants_tenant_dashboard", args=[personas.tenant_a.pk])
    assert url in client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    assert url in client.get(reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])).content.decode()


def test_it_answers_another_tenants_dashboard_like_a_missing_one(client, personas, activity):
    client.force_login(personas.staff_b)
    assert client.get(reverse("admin:tenants_tenant_dashboard", args=[personas.tenant_a.pk])).status_code == 404
    assert client.get(reverse("admin:tenants_tenant_dashboard", args=[99999])).status_code == 404
    assert client.get(reverse("admin:tenants_tenant_dashboard", args=[personas.tenant_b.pk])).status_code == 200


def test_it_renders_a_conversation_as_a_chat(client, personas, activity):
    conversation = activity["conversation"]
    turn = TurnFactory(
        conversation=conversation,
        trace_id="trace-chat-0001",
        duration_ms=2345,
        first_token_ms=410,
        timings={"restore": 3, "build": 5, "run": 2300},
    )
    LLMCallFactory(turn=turn, input_tokens=300, output_tokens=42)
    MessageFactory(conversation=conversation, turn=turn, role=Message.Role.USER, content="How many open cases?")
    MessageFactory(
        conversation=conversation,
        turn=turn,
        role=Message.Role.ASSISTANT,
        content="",
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "bitable_search", "arguments": '{"q": "open"}'}}
        ],
    )
    MessageFactory(
        conversation=conversation,
        turn=turn,
        role=Message.Role.TOOL,
        tool_name="bitable_search",
        content='{"total": 12}',
    )
    MessageFactory(
        conversation=conversation,
        turn=turn,
        role=Message.Role.ASSISTANT,
        content="There are 12 open cases.",
        input_tokens=300,
        output_tokens=42,
        latency_ms=2300,
        trace_id="trace-chat-0001",
        feedback=Message.Feedback.UP,
        feedback_by="ou_lawyer",
    )
    client.force_login(personas.viewer_a)
    page = client.get(reverse("admin:transcripts_conversation_change", args=[conversation.pk])).content.decode()
    assert page.index("How many open cases?") < page.index("bitable_search") < page.index("There are 12 open cases.")
    assert page.count('data-role="user"') == 1 and page.count('data-role="tool"') == 1
    assert page.count('data-role="assistant"') == 2
    assert "first token 410 ms" in page and "2345 ms" in page and "tokens 300 in / 42 out" in page
    assert "trace-chat-0001" in page and "👍" in page and "ou_lawyer" in page
    assert all(stage in page for stage in ("restore 3 ms", "build 5 ms", "run 2300 ms"))


def _fake_outbound_module(monkeypatch, calls: list):
    def outbound_retry(*, outbound):
        calls.append(outbound.pk)
        outbound.status = OutboundMessage.Status.SENT
        outbound.save(update_fields=["status"])
        return outbound

    import apps.feishu.outbound as module

    def guarded(*, outbound):  # the real one's age check, then the fake send
        if timezone.now() - outbound.created_at > module.RETRY_WINDOW:
            raise module.RetryTooLate()
        return outbound_retry(outbound=outbound)

    monkeypatch.setattr(module, "outbound_retry", guarded)


def test_it_retries_failed_sends_of_the_users_tenants_only(client, personas, activity, monkeypatch):
    calls: list[int] = []
    _fake_outbound_module(monkeypatch, calls)
    foreign = OutboundMessageFactory(bot=BotFactory(tenant=personas.tenant_b), status=OutboundMessage.Status.FAILED)
    sent = OutboundMessageFactory(bot=activity["bot"], status=OutboundMessage.Status.SENT)
    url = reverse("admin:feishu_outboundmessage_changelist")

    client.force_login(personas.viewer_a)
    client.post(url, {"action": "retry_failed_sends", "_selected_action": [activity["send"].pk]})
    assert calls == []

    client.force_login(personas.owner_a)
    response = client.post(
        url,
        {"action": "retry_failed_sends", "_selected_action": [activity["send"].pk, foreign.pk, sent.pk]},
        follow=True,
    )
    assert calls == [activity["send"].pk]
    assert "1 sent, 0 still failing" in response.content.decode()
    entry = AuditLog.objects.get(action=AuditLog.Action.ACTION)
    assert (entry.tenant, entry.object_id, entry.changes["retry"]["new"]) == (
        personas.tenant_a, str(activity["send"].pk), "sent",
    )  # fmt: skip


def test_it_does_not_retry_a_send_older_than_feishus_dedupe_hour(client, personas, activity, monkeypatch):
    calls: list[int] = []
    _fake_outbound_module(monkeypatch, calls)
    two_hours_ago = timezone.now() - datetime.timedelta(hours=2)
    OutboundMessage.objects.filter(pk=activity["send"].pk).update(created_at=two_hours_ago)
    client.force_login(personas.owner_a)

    response = client.post(
        reverse("admin:feishu_outboundmessage_changelist"),
        {"action": "retry_failed_sends", "_selected_action": [activity["send"].pk]},
        follow=True,
    )

    assert calls == []
    assert "1 send(s) not retried: first tried over an hour ago" in response.content.decode()
    assert OutboundMessage.objects.get(pk=activity["send"].pk).status == OutboundMessage.Status.FAILED
    assert not AuditLog.objects.filter(action=AuditLog.Action.ACTION).exists()


def test_it_lists_sends_with_their_delivery_status(client, personas, activity):
    client.force_login(personas.owner_a)
    page = client.get(reverse("admin:feishu_outboundmessage_changelist")).content.decode()
    assert '<td class="field-last_error">FeishuError 230002: bot not in chat</td>' in page
    assert '<td class="field-status">Failed</td>' in page and '<td class="field-attempts">4</td>' in page


def test_it_builds_the_dashboard_in_a_bounded_number_of_queries(
    client, personas, activity, django_assert_max_num_queries
):
    for _ in range(20):
        BotFactory(tenant=personas.tenant_a)
        TurnFactory(conversation=activity["conversation"], status=Turn.Status.FAILED, error_code="AGENT_002")
        OutboundMessageFactory(bot=activity["bot"], status=OutboundMessage.Status.FAILED)
    client.force_login(personas.owner_a)
    with django_assert_max_num_queries(14):
        response = client.get(reverse("admin:tenants_tenant_dashboard", args=[personas.tenant_a.pk]))
    assert response.status_code == 200 and response.content.decode().count("AGENT_002") == 10
