"""The web chat page: staff of the agent's tenant only; foreign agents are a 404 like missing ones."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import AgentFactory

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def agents(personas):
    return (
        AgentFactory(tenant=personas.tenant_a, name="ACME helper"),
        AgentFactory(tenant=personas.tenant_b, name="Globex helper"),
    )


def test_it_lists_only_the_users_tenant_agents(client, personas, agents):
    client.force_login(personas.owner_a)
    page = client.get(reverse("webchat:index")).content.decode()
    assert "ACME helper" in page
    assert "Globex helper" not in page


def test_it_renders_the_chat_for_an_own_agent(client, personas, agents):
    client.force_login(personas.owner_a)
    response = client.get(reverse("webchat:chat", args=[agents[0].pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert f'data-agent-id="{agents[0].pk}"' in body
    assert "webchat/chat.js" in body
    assert "demo model" not in body


def test_it_answers_a_foreign_agent_exactly_like_a_missing_one(client, personas, agents):
    client.force_login(personas.owner_a)
    foreign = client.get(reverse("webchat:chat", args=[agents[1].pk]))
    missing = client.get(reverse("webchat:chat", args=[agents[1].pk + 10000]))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content


def test_it_sends_anonymous_users_to_the_admin_login(client, agents):
    response = client.get(reverse("webchat:chat", args=[agents[0].pk]))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_it_labels_the_local_demo_model(client, personas, settings):
    settings.DEMO_LLM_BASE_URL = "http://127.0.0.1:8100/v1"
    agent = AgentFactory(tenant=personas.tenant_a, base_url="http://127.0.0.1:8100/v1/")
    client.force_login(personas.owner_a)
    assert "demo model" in client.get(reverse("webchat:chat", args=[agent.pk])).content.decode()


def test_it_labels_the_bin_run_demo_agent_but_not_a_real_model_of_that_name(client, personas):
    demo = AgentFactory(tenant=personas.tenant_a, base_url="http://127.0.0.1:8100/v1", model="omniagent-demo")
    real = AgentFactory(tenant=personas.tenant_a, base_url="https://api.example.com/v1", model="omniagent-demo")
    client.force_login(personas.owner_a)
    assert "demo model" in client.get(reverse("webchat:chat", args=[demo.pk])).content.decode()
    assert "demo model" not in client.get(reverse("webchat:chat", args=[real.pk])).content.decode()


def test_viewers_get_no_agents_to_chat_with(client, personas, agents):
    client.force_login(personas.viewer_a)
    assert client.get(reverse("webchat:chat", args=[agents[0].pk])).status_code == 404
    assert "You have no agents to chat with" in client.get(reverse("webchat:index")).content.decode()


def test_the_agent_admin_link_points_at_the_agents_chat(personas, agents):
    from apps.webchat.admin_links import webchat_link

    assert webchat_link(agents[0]) == f'<a href="/admin/webchat/{agents[0].pk}/">Chat</a>'
