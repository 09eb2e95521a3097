"""The turn's binding lookup (ranked in Python) picks exactly what the bindings selector picks."""

from apps.bindings.selectors import binding_resolve
from apps.runtime.pipeline import binding_for_chat
from tests.factories import AgentFactory, BindingFactory, BotFactory


def test_it_picks_exactly_like_binding_resolve(db):
    bot = BotFactory()
    agent = lambda: AgentFactory(tenant=bot.tenant)  # noqa: E731
    BindingFactory(bot=bot, agent=agent(), chat_type="any", require_mention=True)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", require_mention=False, priority=5)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", priority=5)  # same rank, younger: loses
    BindingFactory(bot=bot, agent=agent(), chat_type="p2p", chat_id="oc_vip")
    BindingFactory(bot=bot, agent=agent(), chat_type="any", user_open_id="ou_boss", priority=-3)
    BindingFactory(bot=bot, agent=agent(), chat_type="group", chat_id="oc_team", user_open_id="ou_boss")
    BindingFactory(bot=bot, agent=agent(), chat_type="group", chat_id="oc_off", is_enabled=False)
    BindingFactory(bot=bot, agent=AgentFactory(tenant=bot.tenant, is_active=False), chat_type="p2p", priority=99)
    BindingFactory(agent=agent(), chat_type="p2p", priority=100)  # another bot's binding

    for chat_type in ("p2p", "group"):
        for chat_id in ("", "oc_vip", "oc_team", "oc_off", "oc_other"):
            for user in ("", "ou_boss", "ou_someone"):
                expected = binding_resolve(bot=bot, chat_type=chat_type, chat_id=chat_id, user_open_id=user)
                got = binding_for_chat(bot=bot, chat_type=chat_type, chat_id=chat_id, user_open_id=user)
                assert got == expected, (chat_type, chat_id, user)
                if got is not None:
                    assert got.agent.pk == got.agent_id  # the agent comes with it


def test_it_picks_nothing_for_a_bot_without_bindings(db):
    bot = BotFactory()
    assert binding_for_chat(bot=bot, chat_type="p2p", chat_id="oc_1", user_open_id="ou_1") is None
