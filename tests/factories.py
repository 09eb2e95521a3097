"""factory_boy factories shared by every app's tests."""

import factory
from django.contrib.auth.models import User

from apps.agents.models import Agent
from apps.bindings.models import Binding
from apps.bots.models import Bot
from apps.oauth.models import OAuthToken
from apps.tenants.models import Membership, Role, Tenant
from apps.transcripts.models import Conversation, Message, Origin


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
