"""Runtime test helpers: the fake LLM, an agent pointed at it, a recording responder per conversation."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from apps.runtime.responders import base as responders
from apps.transcripts.models import Conversation, Message
from tests.factories import AgentFactory, ConversationFactory, TenantFactory
from tests.fakes.llm_fixtures import fake_llm, fake_llm_server  # noqa: F401

TEST_ORIGIN = "test"


class Recorder:
    """Events of every turn, per conversation, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_conversation: dict[int, list[tuple]] = defaultdict(list)
        self.times: dict[int, list[tuple[float, str]]] = defaultdict(list)

    def events(self, conversation: Conversation, *names: str) -> list[tuple]:
        with self.lock:
            return [e for e in self.by_conversation[conversation.pk] if not names or e[0] in names]

    def finals(self, conversation: Conversation) -> list[str]:
        return [e[1][0] for e in self.events(conversation, "final")]


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()

    class TestResponder(responders.RecordingResponder):
        def _rec(self, name, *args):
            super()._rec(name, *args)
            with rec.lock:
                rec.by_conversation[self.ctx.conversation.pk].append((name, args, self.ctx.turn and self.ctx.turn.pk))
                rec.times[self.ctx.conversation.pk].append((time.monotonic(), name))

    monkeypatch.setitem(responders.RESPONDERS, TEST_ORIGIN, TestResponder)
    return rec


@pytest.fixture
def agent(db, fake_llm):  # noqa: F811
    return AgentFactory(
        tenant=TenantFactory(time_zone="Asia/Shanghai"),
        base_url=fake_llm.base_url,
        model="primary-model",
        timeout=10,
        tools=["time.now", "calc"],
    )


@pytest.fixture
def make_conversation(agent):
    def make(**kwargs) -> Conversation:
        kwargs.setdefault("tenant", agent.tenant)
        kwargs.setdefault("agent", agent)
        kwargs.setdefault("origin", TEST_ORIGIN)
        return ConversationFactory(**kwargs)

    return make


def post(conversation: Conversation, text: str, *, enqueue: bool = True) -> Message:
    """A user message as ingest stores it: pending, activity bumped, enqueued on commit."""
    from django.db import transaction
    from django.utils import timezone

    from apps.runtime.dispatch import turn_enqueue

    with transaction.atomic():
        message = Message.objects.create(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            role=Message.Role.USER,
            status=Message.Status.PENDING,
            content=text,
        )
        Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now())
        if enqueue:
            turn_enqueue(conversation_id=conversation.pk)
    return message


def wait_for(condition, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def settled(conversation: Conversation) -> bool:
    """No user message waits and no runner holds the conversation."""
    conversation.refresh_from_db()
    busy = Message.objects.filter(
        conversation=conversation,
        role=Message.Role.USER,
        status__in=[Message.Status.PENDING, Message.Status.PROCESSING],
    ).exists()
    return not busy and not conversation.runner_token
