"""Reads for the web chat, always scoped to the staff user's tenant memberships (fail closed)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import QuerySet

from apps.agents.models import Agent
from apps.runtime.errors import user_message
from apps.tenants.models import Membership, Role, Tenant
from apps.transcripts.models import Conversation, Message, Origin, Turn

from .events import AgentInfo, HistoryItem

# Chatting spends the tenant's LLM budget and writes transcripts: owners and admins, not viewers.
CHAT_ROLES = (Role.OWNER, Role.ADMIN)
HISTORY_LIMIT = 100
ACTIVE_TURN_STATUSES = (Turn.Status.QUEUED, Turn.Status.RUNNING)
DEMO_MODEL = "omniagent-demo"  # tests/fakes/llm.py DEMO_MODEL, served by bin/run's demo LLM
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def webchat_tenants_for_user(*, user) -> QuerySet[Tenant]:
    """Active tenants where this active staff user may chat; none for anyone else."""
    if not (user is not None and user.is_authenticated and user.is_active and user.is_staff):
        return Tenant.objects.none()
    memberships = Membership.objects.filter(user=user, role__in=CHAT_ROLES).values("tenant_id")
    return Tenant.objects.filter(is_active=True, pk__in=memberships)


def webchat_agents_for_user(*, user) -> QuerySet[Agent]:
    """Active agents of the user's tenants, for the agent picker."""
    tenants = webchat_tenants_for_user(user=user)
    return (
        Agent.objects.for_tenants(tenants)
        .filter(is_active=True)
        .select_related("tenant")
        .order_by("tenant__name", "name", "slug")
    )


def webchat_agent_get(*, user, agent_id: int) -> Agent:
    """The agent, looked up inside the user's tenants: a foreign id raises DoesNotExist like a missing one."""
    return webchat_agents_for_user(user=user).get(pk=agent_id)


def conversation_key_prefix(*, user, agent: Agent) -> str:
    return f"web:{user.pk}:{agent.pk}:"


def conversation_key(*, user, agent: Agent, session: int) -> str:
    return f"{conversation_key_prefix(user=user, agent=agent)}{session}"


def session_number(conversation: Conversation) -> int:
    return int(conversation.key.rsplit(":", 1)[1])


def webchat_conversation_latest(*, user, agent: Agent) -> Conversation | None:
    """The user's most recent web chat session with this agent."""
    return (
        Conversation.objects.for_tenant(agent.tenant_id)
        .filter(
            origin=Origin.WEB, agent=agent, user=user, key__startswith=conversation_key_prefix(user=user, agent=agent)
        )
        .order_by("-id")
        .first()
    )


def agent_is_demo(agent: Agent) -> bool:
    """True when the agent talks to the local scripted demo model (bin/run without LLM_BASE_URL)."""
    demo_url = getattr(settings, "DEMO_LLM_BASE_URL", "") or ""
    if demo_url and agent.base_url.rstrip("/") == demo_url.rstrip("/"):
        return True
    # The demo model (tests/fakes/llm.py) serves this model name on a loopback address.
    host = urlsplit(agent.base_url).hostname or ""
    return agent.model == DEMO_MODEL and host in LOOPBACK_HOSTS


def agent_info(agent: Agent) -> AgentInfo:
    return AgentInfo(
        id=agent.pk,
        name=agent.name or agent.slug,
        slug=agent.slug,
        model=agent.model,
        tenant=agent.tenant.name,
        demo=agent_is_demo(agent),
    )


def webchat_history(*, conversation: Conversation, limit: int = HISTORY_LIMIT) -> list[HistoryItem]:
    """The visible part of the current session, oldest first; a turn's tool calls come before its answer."""
    qs = Message.objects.for_tenant(conversation.tenant_id).filter(
        conversation=conversation,
        role__in=(Message.Role.USER, Message.Role.ASSISTANT, Message.Role.TOOL, Message.Role.SYSTEM),
    )
    if conversation.session_started_at:
        qs = qs.filter(created_at__gte=conversation.session_started_at)
    rows = list(qs.order_by("-id")[:limit])
    rows.reverse()
    # The runtime stores a turn's tool results after its answer row; show them where they happened.
    tools_by_turn: dict[int, list[Message]] = {}
    for m in rows:
        if m.role == Message.Role.TOOL and m.turn_id is not None:
            tools_by_turn.setdefault(m.turn_id, []).append(m)
    ordered: list[Message] = []
    for m in rows:
        if m.role == Message.Role.TOOL and m.turn_id is not None:
            continue
        if m.role == Message.Role.ASSISTANT and m.turn_id is not None:
            ordered.extend(tools_by_turn.pop(m.turn_id, []))
        ordered.append(m)
    for leftovers in tools_by_turn.values():
        ordered.extend(leftovers)
    items: list[HistoryItem] = []
    for m in ordered:
        if m.role == Message.Role.ASSISTANT and not m.content and not m.error_code:
            continue  # an answer still being written: it arrives through the group
        item = HistoryItem(id=m.pk, role=m.role, status=m.status, text=m.content)
        if m.tool_name:
            item["tool_name"] = m.tool_name
        if m.error_code:
            item["error_code"] = m.error_code
            if m.role == Message.Role.ASSISTANT:
                item["error_message"] = user_message(m.error_code)
        items.append(item)
    return items


def webchat_conversation_busy(*, conversation: Conversation) -> bool:
    """A turn is queued or running, or user messages wait for one."""
    tenant_id = conversation.tenant_id
    return (
        Turn.objects.for_tenant(tenant_id).filter(conversation=conversation, status__in=ACTIVE_TURN_STATUSES).exists()
        or Message.objects.for_tenant(tenant_id)
        .filter(conversation=conversation, role=Message.Role.USER, status=Message.Status.PENDING)
        .exists()
    )
