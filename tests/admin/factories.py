"""Factories for the rows only the admin tests need (the shared ones live in tests/factories.py)."""

import factory

from apps.audit.models import AuditLog
from apps.feishu.models import OutboundMessage
from apps.tenants.models import ApiKey, hash_api_key
from apps.transcripts.models import InboundEvent, LLMCall, Turn
from tests.factories import BotFactory, ConversationFactory, TenantFactory


class ApiKeyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ApiKey

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"key-{n}")
    prefix = factory.Sequence(lambda n: f"oa_{n:05d}")
    key_hash = factory.Sequence(lambda n: hash_api_key(f"raw-key-{n}"))


class TurnFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Turn

    conversation = factory.SubFactory(ConversationFactory)
    tenant = factory.SelfAttribute("conversation.tenant")
    status = Turn.Status.SUCCEEDED
    trace_id = factory.Sequence(lambda n: f"trace-{n:08d}")


class LLMCallFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LLMCall

    turn = factory.SubFactory(TurnFactory)
    tenant = factory.SelfAttribute("turn.tenant")
    model = "fake-model"
    input_tokens = 120
    output_tokens = 30
    latency_ms = 850


class InboundEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboundEvent

    bot = factory.SubFactory(BotFactory)
    tenant = factory.SelfAttribute("bot.tenant")
    event_id = factory.Sequence(lambda n: f"ev-{n:08d}")
    event_type = "im.message.receive_v1"
    source = InboundEvent.Source.WEBHOOK
    payload = factory.LazyAttribute(lambda o: {"header": {"event_id": o.event_id}, "event": {}})


class OutboundMessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OutboundMessage

    bot = factory.SubFactory(BotFactory)
    tenant = factory.SelfAttribute("bot.tenant")
    uuid = factory.Sequence(lambda n: f"uuid-{n:08d}")
    operation = "create"
    receive_id = factory.Sequence(lambda n: f"oc_chat{n}")
    receive_id_type = "chat_id"
    msg_type = "text"
    content = '{"text": "hello"}'


class AuditLogFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AuditLog

    tenant = factory.SubFactory(TenantFactory)
    actor_label = "provision"
    action = AuditLog.Action.CREATE
    object_type = "bots.Bot"
    object_id = factory.Sequence(str)
    object_repr = factory.Sequence(lambda n: f"bot {n}")
