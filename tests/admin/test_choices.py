"""Foreign-key choices on admin forms never offer another tenant's rows, and a forged choice is refused."""

import pytest
from django.urls import reverse

from apps.bindings.models import Binding
from tests.admin.conftest import form_data, select_options
from tests.factories import AgentFactory, BindingFactory, BotFactory, MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(personas):
    return {
        "bot_a": BotFactory(tenant=personas.tenant_a),
        "bot_b": BotFactory(tenant=personas.tenant_b),
        "agent_a": AgentFactory(tenant=personas.tenant_a),
        "agent_b": AgentFactory(tenant=personas.tenant_b),
    }


@pytest.mark.parametrize("model", ["bots/bot", "agents/agent", "bindings/binding", "tenants/apikey"])
def test_it_offers_only_the_users_tenants_on_add_forms(client, personas, rows, model):
    client.force_login(personas.owner_a)
    page = client.get(f"/admin/{model}/add/").content.decode()
    assert select_options(page, "tenant") == {str(personas.tenant_a.pk)}


def test_it_offers_only_own_bots_and_agents_for_a_binding(client, personas, rows):
    for user, mine, theirs in ((personas.owner_a, "a", "b"), (personas.staff_b, "b", "a")):
        client.force_login(user)
        page = client.get(reverse("admin:bindings_binding_add")).content.decode()
        assert select_options(page, "bot") == {str(rows[f"bot_{mine}"].pk)}
        assert select_options(page, "agent") == {str(rows[f"agent_{mine}"].pk)}
        assert str(rows[f"bot_{theirs}"]) not in page


def test_it_offers_only_own_agents_in_the_binding_inline_of_a_bot(client, personas, rows):
    BindingFactory(bot=rows["bot_a"], agent=rows["agent_a"])
    client.force_login(personas.owner_a)
    page = client.get(reverse("admin:bots_bot_change", args=[rows["bot_a"].pk])).content.decode()
    assert select_options(page, "bindings-0-agent") == {str(rows["agent_a"].pk)}
    assert select_options(page, "bindings-__prefix__-agent") == {str(rows["agent_a"].pk)}


def test_it_offers_only_own_bots_in_the_binding_inline_of_an_agent(client, personas, rows):
    client.force_login(personas.owner_a)
    page = client.get(reverse("admin:agents_agent_change", args=[rows["agent_a"].pk])).content.decode()
    assert select_options(page, "bindings-__prefix__-bot") == {str(rows["bot_a"].pk)}


def test_it_offers_only_colleagues_as_members_of_a_tenant(client, personas):
    client.force_login(personas.owner_a)
    page = client.get(reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])).content.decode()
    offered = select_options(page, "memberships-__prefix__-user")
    assert offered == {str(personas.owner_a.pk), str(personas.viewer_a.pk)}
    assert str(personas.staff_b.pk) not in offered


def test_it_offers_only_tenants_the_user_may_write_to(client, personas):
    # Owner in A and C, viewer in B: only A and C are valid homes for a new bot.
    tenant_c = TenantFactory()
    MembershipFactory(tenant=tenant_c, user=personas.owner_a, role="admin")
    MembershipFactory(tenant=personas.tenant_b, user=personas.owner_a, role="viewer")
    client.force_login(personas.owner_a)
    page = client.get(reverse("admin:bots_bot_add")).content.decode()
    assert select_options(page, "tenant") == {str(personas.tenant_a.pk), str(tenant_c.pk)}


def _binding_post(tenant, bot, agent) -> dict:
    return {
        "tenant": tenant.pk, "bot": bot.pk, "agent": agent.pk, "is_enabled": "on", "chat_type": "any",
        "chat_id": "", "user_open_id": "", "priority": 0, "instructions": "", "welcome_message": "",
    }  # fmt: skip


def test_it_refuses_a_forged_foreign_choice(client, personas, rows):
    client.force_login(personas.owner_a)
    response = client.post(
        reverse("admin:bindings_binding_add"), _binding_post(personas.tenant_a, rows["bot_a"], rows["agent_b"])
    )
    assert response.status_code == 200  # the form again, with an error
    assert "Select a valid choice" in response.content.decode()
    assert not Binding.objects.exists()


def test_it_refuses_mixing_two_of_the_users_tenants_in_one_row(client, personas, rows):
    tenant_c = TenantFactory()
    MembershipFactory(tenant=tenant_c, user=personas.owner_a, role="owner")
    agent_c = AgentFactory(tenant=tenant_c)
    client.force_login(personas.owner_a)
    data = _binding_post(personas.tenant_a, rows["bot_a"], agent_c)
    response = client.post(reverse("admin:bindings_binding_add"), data)
    assert response.status_code == 200
    assert "belongs to another tenant" in response.content.decode()
    assert not Binding.objects.exists()


def test_it_lets_the_owner_add_a_binding_in_their_tenant(client, personas, rows):
    client.force_login(personas.owner_a)
    response = client.post(
        reverse("admin:bindings_binding_add"), _binding_post(personas.tenant_a, rows["bot_a"], rows["agent_a"])
    )
    assert response.status_code == 302
    binding = Binding.objects.get()
    assert (binding.tenant, binding.bot, binding.agent) == (personas.tenant_a, rows["bot_a"], rows["agent_a"])


def test_it_refuses_a_tenant_the_user_does_not_belong_to(client, personas, rows):
    client.force_login(personas.owner_a)
    response = client.post(
        reverse("admin:bindings_binding_add"), _binding_post(personas.tenant_b, rows["bot_b"], rows["agent_b"])
    )
    assert response.status_code == 200 and not Binding.objects.exists()


def test_it_never_moves_a_row_to_another_tenant(client, personas, rows):
    # Owner of A and C: even between their own tenants a bot keeps its tenant (its bindings stay with it).
    tenant_c = TenantFactory()
    MembershipFactory(tenant=tenant_c, user=personas.owner_a, role="owner")
    bot = rows["bot_a"]
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    page = client.get(url).content.decode()
    assert '<select name="tenant"' not in page
    assert client.post(url, form_data(page, tenant=tenant_c.pk, name="moved?")).status_code == 302
    bot.refresh_from_db()
    assert (bot.name, bot.tenant) == ("moved?", personas.tenant_a)


def test_it_refuses_an_inline_binding_to_an_agent_of_another_tenant(client, personas, rows):
    # Owner of A and C adds a bot in A with a binding to C's agent on the same page.
    tenant_c = TenantFactory()
    MembershipFactory(tenant=tenant_c, user=personas.owner_a, role="owner")
    agent_c = AgentFactory(tenant=tenant_c)
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_add")
    data = form_data(
        client.get(url).content.decode(),
        tenant=personas.tenant_a.pk,
        app_id="cli_inline",
        app_secret="s3cret",
        base_url="https://open.feishu.cn",
    )
    data.update({"bindings-TOTAL_FORMS": "1", "bindings-0-agent": agent_c.pk, "bindings-0-chat_type": "any"})
    data["bindings-0-priority"] = "0"
    response = client.post(url, data)
    assert response.status_code == 200 and "belongs to another tenant" in response.content.decode()
    assert not Binding.objects.exists()

    data["bindings-0-agent"] = rows["agent_a"].pk
    assert client.post(url, data).status_code == 302
    binding = Binding.objects.get()
    assert (binding.tenant, binding.bot.app_id, binding.agent) == (personas.tenant_a, "cli_inline", rows["agent_a"])
