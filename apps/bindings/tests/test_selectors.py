import pytest

from apps.bindings.models import Binding
from apps.bindings.selectors import binding_resolve
from tests.factories import AgentFactory, BindingFactory, BotFactory

pytestmark = pytest.mark.django_db

P2P, GROUP, ANY = Binding.ChatType.P2P, Binding.ChatType.GROUP, Binding.ChatType.ANY


@pytest.fixture
def bot():
    return BotFactory()


def _bind(bot, slug, **kwargs):
    agent = AgentFactory(tenant=bot.tenant, slug=slug)
    return BindingFactory(bot=bot, agent=agent, **kwargs)


def _resolve(bot, *, chat_type=GROUP, chat_id="oc_room", user_open_id="ou_alice"):
    return binding_resolve(bot=bot, chat_type=chat_type, chat_id=chat_id, user_open_id=user_open_id)


def test_it_returns_none_for_a_bot_without_bindings(bot):
    assert _resolve(bot) is None


def test_it_walks_down_the_specificity_ladder_user_chat_chat_type_any(bot):
    any_ = _bind(bot, "any-agent", chat_type=ANY, priority=100)
    typed = _bind(bot, "group-agent", chat_type=GROUP, priority=50)
    chat = _bind(bot, "room-agent", chat_type=GROUP, chat_id="oc_room", priority=10)
    user = _bind(bot, "alice-agent", chat_type=ANY, user_open_id="ou_alice")

    assert _resolve(bot).agent.slug == "alice-agent"
    user.delete()
    assert _resolve(bot).agent.slug == "room-agent"
    chat.delete()
    assert _resolve(bot).agent.slug == "group-agent"
    typed.delete()
    assert _resolve(bot).agent.slug == "any-agent"
    any_.delete()
    assert _resolve(bot) is None


def test_it_only_matches_the_scope_the_binding_names(bot):
    _bind(bot, "p2p-agent", chat_type=P2P)
    _bind(bot, "other-room", chat_type=ANY, chat_id="oc_other")
    _bind(bot, "other-user", chat_type=ANY, user_open_id="ou_bob")

    assert _resolve(bot, chat_type=GROUP) is None
    assert _resolve(bot, chat_type=P2P, chat_id="oc_dm").agent.slug == "p2p-agent"
    assert _resolve(bot, chat_type=GROUP, chat_id="oc_other").agent.slug == "other-room"
    assert _resolve(bot, chat_type=GROUP, user_open_id="ou_bob").agent.slug == "other-user"


def test_it_prefers_a_user_binding_over_a_chat_binding_with_higher_priority(bot):
    _bind(bot, "room-agent", chat_type=GROUP, chat_id="oc_room", priority=1000)
    _bind(bot, "alice-agent", user_open_id="ou_alice", priority=-5)
    assert _resolve(bot).agent.slug == "alice-agent"


def test_it_breaks_ties_by_priority_then_by_age(bot):
    first = _bind(bot, "first", chat_type=GROUP, priority=1)
    _bind(bot, "second", chat_type=GROUP, priority=1)
    assert _resolve(bot).pk == first.pk
    _bind(bot, "urgent", chat_type=GROUP, priority=2)
    assert _resolve(bot).agent.slug == "urgent"


def test_it_skips_disabled_bindings_and_inactive_agents(bot):
    _bind(bot, "fallback", chat_type=ANY)
    _bind(bot, "disabled", user_open_id="ou_alice", is_enabled=False)
    inactive = _bind(bot, "inactive", chat_type=GROUP, chat_id="oc_room")
    inactive.agent.is_active = False
    inactive.agent.save()
    assert _resolve(bot).agent.slug == "fallback"


def test_it_ignores_other_bots_bindings(bot):
    other = BotFactory(tenant=bot.tenant)
    _bind(other, "elsewhere", chat_type=ANY)
    assert _resolve(bot) is None


def test_it_does_not_match_user_bindings_when_the_sender_is_unknown(bot):
    _bind(bot, "alice-agent", user_open_id="ou_alice")
    _bind(bot, "room-agent", chat_id="oc_room")
    assert _resolve(bot, chat_id="", user_open_id="") is None


def test_it_resolves_in_one_query_with_the_agent_loaded(bot, django_assert_num_queries):
    _bind(bot, "alice-agent", user_open_id="ou_alice")
    with django_assert_num_queries(1):
        binding = _resolve(bot)
        assert binding.agent.slug == "alice-agent"
