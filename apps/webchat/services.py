"""Writes of the web chat: sessions (conversations with origin=web), user messages, stop.

A web chat conversation is keyed ``web:<user id>:<agent id>:<session n>``; "New session" starts
n+1, so each session is its own transcript in the admin. User messages are stored as pending and
handed to the one turn pipeline (apps.runtime) on commit, exactly like Feishu messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import structlog
from django.db import transaction
from django.utils import timezone

from apps.agents.models import Agent
from apps.runtime.dispatch import turn_enqueue
from apps.transcripts.models import Conversation, Message, Origin, Turn

from .events import UserMessage, conversation_group, layer_message
from .publisher import publisher
from .selectors import ACTIVE_TURN_STATUSES, conversation_key, session_number, webchat_conversation_latest

logger = structlog.get_logger(__name__)

TITLE_CHARS = 80


def _conversation_create(*, user, agent: Agent, session: int) -> Conversation:
    conversation, _ = Conversation.objects.get_or_create(
        key=conversation_key(user=user, agent=agent, session=session),
        defaults={
            "tenant_id": agent.tenant_id,
            "origin": Origin.WEB,
            "agent": agent,
            "user": user,
            "session_started_at": timezone.now(),
            "last_activity_at": timezone.now(),
        },
    )
    return conversation


def webchat_conversation_open(*, user, agent: Agent) -> Conversation:
    """The user's current session with the agent, created (session 1) on first use."""
    latest = webchat_conversation_latest(user=user, agent=agent)
    if latest is not None:
        return latest
    with transaction.atomic():
        return _conversation_create(user=user, agent=agent, session=1)


def webchat_session_new(*, user, agent: Agent) -> Conversation:
    """Stop whatever runs in the current session and start the next one (the "New session" button)."""
    with transaction.atomic():
        latest = webchat_conversation_latest(user=user, agent=agent)
        if latest is None:
            return _conversation_create(user=user, agent=agent, session=1)
        webchat_turn_stop(conversation=latest)
        return _conversation_create(user=user, agent=agent, session=session_number(latest) + 1)


def webchat_message_send(*, user, agent: Agent, conversation: Conversation, text: str) -> Message:
    """Store the user's message as pending and enqueue the conversation once it is committed."""
    if (
        conversation.tenant_id != agent.tenant_id
        or conversation.agent_id != agent.pk
        or conversation.user_id != user.pk
    ):
        # Callers pass objects they resolved within the user's scope; a mismatch is a bug, not input.
        raise ValueError("conversation does not belong to this user and agent")
    now = timezone.now()
    with transaction.atomic():
        message = Message.objects.create(
            tenant_id=agent.tenant_id,
            conversation=conversation,
            role=Message.Role.USER,
            status=Message.Status.PENDING,
            content=text,
            trace_id=uuid.uuid4().hex,
        )
        updates: dict[str, object] = {"last_activity_at": now}
        if not conversation.title:
            updates["title"] = f"{agent.name or agent.slug} · {text[:TITLE_CHARS]}"
        Conversation.objects.filter(pk=conversation.pk).update(**updates)
        # Echo to every tab of this session. Registered before the enqueue, so it is queued on this
        # process's publisher before the turn can publish anything (on_commit keeps the order).
        echo = UserMessage(type="user.message", message_id=message.pk, text=text)
        transaction.on_commit(lambda: publisher.publish(conversation_group(conversation.pk), layer_message(echo)))
        turn_enqueue(conversation_id=conversation.pk)
    logger.info(
        "webchat.message_sent", conversation_id=conversation.pk, message_id=message.pk, trace_id=message.trace_id
    )
    return message


@dataclass
class StopResult:
    turn_ids: list[int] = field(default_factory=list)
    dropped_message_ids: list[int] = field(default_factory=list)
    # A runner has claimed a message but not created its turn yet (a few ms): ask again shortly.
    turn_starting: bool = False

    @property
    def stopped_anything(self) -> bool:
        return bool(self.turn_ids or self.dropped_message_ids)


def webchat_turn_stop(*, conversation: Conversation) -> StopResult:
    """Cancel the running/queued turn and drop user messages still waiting for one (the Stop button)."""
    result = StopResult()
    with transaction.atomic():
        turns = Turn.objects.for_tenant(conversation.tenant_id).filter(
            conversation=conversation, status__in=ACTIVE_TURN_STATUSES
        )
        for turn in turns:
            from apps.runtime.services import turn_cancel

            turn_cancel(turn=turn)
            result.turn_ids.append(turn.pk)
        # Compare-and-swap: a message the runner already took (processing) belongs to the turn above.
        waiting = Message.objects.for_tenant(conversation.tenant_id).filter(
            conversation=conversation, role=Message.Role.USER, status=Message.Status.PENDING
        )
        waiting_ids = list(waiting.values_list("pk", flat=True))
        if waiting_ids:
            Message.objects.filter(pk__in=waiting_ids, status=Message.Status.PENDING).update(
                status=Message.Status.CANCELLED, updated_at=timezone.now()
            )
            result.dropped_message_ids = list(
                Message.objects.filter(pk__in=waiting_ids, status=Message.Status.CANCELLED).values_list("pk", flat=True)
            )
    if not result.turn_ids:
        result.turn_starting = (
            Message.objects.for_tenant(conversation.tenant_id)
            .filter(conversation=conversation, role=Message.Role.USER, status=Message.Status.PROCESSING, turn=None)
            .exists()
        )
    logger.info(
        "webchat.stop", conversation_id=conversation.pk, turns=result.turn_ids, dropped=result.dropped_message_ids
    )
    return result
