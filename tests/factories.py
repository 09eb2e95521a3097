"""factory_boy factories shared by every app's tests."""

import factory
from django.contrib.auth.models import User

from apps.agents.models import Agent
from apps.audit.models import AuditLog
from apps.bindings.models import Binding
from apps.bots.models import Bot
from apps.feishu.models import OutboundMessage
from apps.oauth.models import OAuthToken
from apps.tenants.models import ApiKey, Membership, Role, Tenant, hash_api_key
from apps.transcripts.models import Conversation, InboundEvent, LLMCall, Message, Origin, Turn


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.Sequence(lambda n: f"Tenant {n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests")

    @factory.post_generation
    def _save(self, create, extracted, **kwargs):
        if create:
            self.save()


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.OWNER


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    tenant = factory.SubFactory(TenantFactory)
    slug = factory.Sequence(lambda n: f"agent-{n}")
    base_url = "http://127.0.0.1:9/v1"
    api_key = "sk-test-agent-key"
    model = "fake-model"
    system_prompt = "You are a helpful assistant."


class BotFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Bot

    tenant = factory.SubFactory(TenantFactory)
    app_id = factory.Sequence(lambda n: f"cli_test{n:06d}")
    app_secret = "app-secret-plaintext"
    verification_token = "verification-token-plaintext"
    encrypt_key = ""
    base_url = "http://127.0.0.1:9"
    bot_open_id = "ou_bot_self"


class BindingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Binding

    bot = factory.SubFactory(BotFactory)
    tenant = factory.SelfAttribute("bot.tenant")
    agent = factory.SubFactory(AgentFactory, tenant=factory.SelfAttribute("..tenant"))
    chat_type = Binding.ChatType.ANY


class OAuthTokenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OAuthToken

    bot = factory.SubFactory(BotFactory)
    tenant = factory.SelfAttribute("bot.tenant")
    user_open_id = factory.Sequence(lambda n: f"ou_user{n}")
    access_token = "u-access-token-plaintext"
    refresh_token = "u-refresh-token-plaintext"
    access_expires_at = factory.Faker("future_datetime", tzinfo=__import__("datetime").UTC)


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    tenant = factory.SubFactory(TenantFactory)
    origin = Origin.WEB
    key = factory.Sequence(lambda n: f"test:conversation:{n}")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    conversation = factory.SubFactory(ConversationFactory)
    tenant = factory.SelfAttribute("conversation.tenant")
    role = Message.Role.USER
    content = factory.Faker("sentence")


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
