"""Read side of the per-tenant admin dashboard: live state and today's activity of one tenant."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from django.db.models import Count, Sum
from django.utils import timezone

from apps.agents.models import Agent
from apps.bots.models import Bot
from apps.feishu.models import OutboundMessage
from apps.tenants.models import Tenant
from apps.transcripts.models import Conversation, InboundEvent, LLMCall, Turn

RECENT_ERRORS = 10


@dataclass
class TenantDashboard:
    """Everything the dashboard page shows for one tenant; every list is bounded."""

    tenant: Tenant
    day_start: datetime.datetime
    bots: list[Bot]
    agents: list[Agent]
    conversations_today: int
    turns_today: dict[str, int]
    tokens_today: dict[str, int]
    failed_turns: list[Turn]
    failed_sends: list[OutboundMessage]
    failed_events: list[InboundEvent]
    turns_today_total: int = field(init=False)

    def __post_init__(self) -> None:
        self.turns_today_total = sum(self.turns_today.values())


def tenant_day_start(tenant: Tenant, now: datetime.datetime | None = None) -> datetime.datetime:
    """Midnight today in the tenant's own time zone ("today" means the tenant's day, not UTC's)."""
    local = (now or timezone.now()).astimezone(tenant.time_zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def tenant_dashboard(*, tenant: Tenant, now: datetime.datetime | None = None) -> TenantDashboard:
    start = tenant_day_start(tenant, now)
    turns = Turn.objects.for_tenant(tenant)
    tokens = (
        LLMCall.objects.for_tenant(tenant)
        .filter(created_at__gte=start)
        .aggregate(input=Sum("input_tokens"), output=Sum("output_tokens"))
    )
    return TenantDashboard(
        tenant=tenant,
        day_start=start,
        bots=list(Bot.objects.for_tenant(tenant).order_by("app_id")[:200]),
        agents=list(Agent.objects.for_tenant(tenant).order_by("slug")[:200]),
        conversations_today=Conversation.objects.for_tenant(tenant).filter(last_activity_at__gte=start).count(),
        turns_today=dict(
            turns.filter(created_at__gte=start).values_list("status").annotate(n=Count("id")).order_by("status")
        ),
        tokens_today={k: v or 0 for k, v in tokens.items()},
        failed_turns=list(
            turns.filter(status=Turn.Status.FAILED)
            .select_related("conversation", "agent")
            .order_by("-id")[:RECENT_ERRORS]
        ),
        failed_sends=list(
            OutboundMessage.objects.for_tenant(tenant)
            .filter(status=OutboundMessage.Status.FAILED)
            .select_related("bot")
            .order_by("-id")[:RECENT_ERRORS]
        ),
        failed_events=list(
            InboundEvent.objects.for_tenant(tenant)
            .filter(status=InboundEvent.Status.FAILED)
            .select_related("bot")
            .defer("payload")
            .order_by("-id")[:RECENT_ERRORS]
        ),
    )
