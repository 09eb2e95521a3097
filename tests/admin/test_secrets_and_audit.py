"""Secrets are write-only in the admin, and every admin change leaves an audit row without secret values."""

import html

import pytest
from django.db import connection
from django.urls import reverse

from apps.agents.models import Agent
from apps.audit.models import AuditLog
from apps.bindings.models import Binding
from apps.bots.models import Bot
from tests.admin.conftest import form_data
from tests.factories import AgentFactory, BotFactory, OAuthTokenFactory, UserFactory

pytestmark = pytest.mark.django_db

BOT_SECRETS = ("app-secret-plaintext", "verification-token-plaintext", "encrypt-key-plaintext")


def _audit_table() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM audit_auditlog")
        return repr(cursor.fetchall())


@pytest.fixture
def bot(personas) -> Bot:
    return BotFactory(tenant=personas.tenant_a, encrypt_key="encrypt-key-plaintext", name="Support")


def test_it_never_shows_a_stored_secret_to_anyone(client, personas, bot):
    agent = AgentFactory(tenant=personas.tenant_a)
    token = OAuthTokenFactory(bot=bot)
    pages = [
        reverse("admin:bots_bot_change", args=[bot.pk]),
        reverse("admin:agents_agent_change", args=[agent.pk]),
        reverse("admin:oauth_oauthtoken_change", args=[token.pk]),
        reverse("admin:oauth_oauthtoken_changelist"),
        reverse("admin:bots_bot_changelist"),
    ]
    secrets = (*BOT_SECRETS, "sk-test-agent-key", "u-access-token-plaintext", "u-refresh-token-plaintext")
    for user in (personas.owner_a, personas.viewer_a, UserFactory(is_superuser=True)):
        client.force_login(user)
        for url in pages:
            html = client.get(url).content.decode()
            assert not [s for s in secrets if s in html], (user, url)
        # ...but people can tell whether each one is set.
        html = client.get(pages[0]).content.decode()
        assert html.count('class="oa-secret oa-secret-set"') == 3


def test_it_keeps_a_secret_when_its_input_is_left_empty(client, personas, bot):
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    data = form_data(client.get(url).content.decode(), name="Support desk")
    assert data["app_secret"] == ""  # the browser never received it
    assert client.post(url, data).status_code == 302
    bot.refresh_from_db()
    assert (bot.name, bot.app_secret, bot.encrypt_key) == ("Support desk", *BOT_SECRETS[::2])


def test_it_replaces_and_clears_secrets_and_audits_them_masked(client, personas, bot):
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    data = form_data(
        client.get(url).content.decode(), name="Helpdesk", app_secret="brand-new-secret", encrypt_key__clear="on"
    )
    assert client.post(url, data).status_code == 302
    bot.refresh_from_db()
    assert (bot.app_secret, bot.encrypt_key, bot.verification_token) == ("brand-new-secret", "", BOT_SECRETS[1])

    entry = AuditLog.objects.get(object_type="bots.Bot", object_id=str(bot.pk))
    assert (entry.tenant, entry.actor, entry.actor_label, entry.action) == (
        personas.tenant_a, personas.owner_a, "alice", AuditLog.Action.UPDATE,
    )  # fmt: skip
    assert entry.changes == {
        "app_secret": "changed",
        "encrypt_key": "changed",
        "name": {"old": "Support", "new": "Helpdesk"},
    }
    for secret in ("brand-new-secret", *BOT_SECRETS):
        assert secret not in _audit_table()


def test_it_requires_secrets_a_bot_cannot_work_without_when_adding(client, personas):
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_add")
    data = form_data(client.get(url).content.decode(), app_id="cli_new", base_url="https://open.feishu.cn")
    response = client.post(url, data)
    assert response.status_code == 200 and not Bot.objects.exists()
    data["app_secret"] = "fresh-secret"
    assert client.post(url, data).status_code == 302
    bot = Bot.objects.get()
    assert (bot.tenant, bot.app_secret, bot.verification_token) == (personas.tenant_a, "fresh-secret", "")
    entry = AuditLog.objects.get(action=AuditLog.Action.CREATE, object_type="bots.Bot")
    assert entry.changes["app_secret"] == "changed"
    assert entry.changes["app_id"] == {"old": None, "new": "cli_new"}
    assert "fresh-secret" not in _audit_table()


def test_it_audits_an_agent_key_change_and_a_deletion(client, personas):
    agent = AgentFactory(tenant=personas.tenant_a, slug="helper")
    client.force_login(personas.owner_a)
    url = reverse("admin:agents_agent_change", args=[agent.pk])
    data = form_data(client.get(url).content.decode(), api_key="sk-rotated", temperature="0.2")
    assert client.post(url, data).status_code == 302
    assert Agent.objects.get().api_key == "sk-rotated"
    update = AuditLog.objects.get(action=AuditLog.Action.UPDATE)
    assert update.changes == {"api_key": "changed", "temperature": {"old": 0.7, "new": 0.2}}

    delete_url = reverse("admin:agents_agent_delete", args=[agent.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not Agent.objects.exists()
    deletion = AuditLog.objects.get(action=AuditLog.Action.DELETE)
    assert (deletion.object_repr, deletion.tenant) == ("helper", personas.tenant_a)
    assert deletion.changes["slug"] == {"old": "helper", "new": None}
    assert deletion.changes["api_key"] == "changed"
    assert "sk-rotated" not in _audit_table() and "sk-test-agent-key" not in _audit_table()


def test_it_audits_bindings_added_inline_under_a_bot(client, personas, bot):
    agent = AgentFactory(tenant=personas.tenant_a)
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    data = form_data(client.get(url).content.decode())
    data.update({
        "bindings-TOTAL_FORMS": "1", "bindings-0-agent": agent.pk, "bindings-0-chat_type": "p2p",
        "bindings-0-chat_id": "", "bindings-0-user_open_id": "", "bindings-0-priority": "3",
        "bindings-0-is_enabled": "on",
    })  # fmt: skip
    assert client.post(url, data).status_code == 302
    binding = Binding.objects.get()
    assert (binding.tenant, binding.bot, binding.agent, binding.priority) == (personas.tenant_a, bot, agent, 3)
    entry = AuditLog.objects.get(object_type="bindings.Binding")
    assert (entry.action, entry.tenant, entry.changes["chat_type"]) == (
        AuditLog.Action.CREATE, personas.tenant_a, {"old": None, "new": "p2p"},
    )  # fmt: skip


def test_it_writes_no_audit_row_when_a_change_is_refused(client, personas, bot):
    client.force_login(personas.viewer_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    assert client.post(url, {"name": "hijacked", "app_secret": "x"}).status_code == 403
    assert not AuditLog.objects.exists()


def test_it_shows_audit_rows_only_to_their_tenant(client, personas, bot):
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    client.post(url, form_data(client.get(url).content.decode(), name="Renamed"))
    entry = AuditLog.objects.get()
    client.force_login(personas.staff_b)
    assert client.get(reverse("admin:audit_auditlog_change", args=[entry.pk])).status_code == 404
    client.force_login(personas.viewer_a)
    page = client.get(reverse("admin:audit_auditlog_change", args=[entry.pk])).content.decode()
    assert html.escape('"new": "Renamed"') in page  # the diff, as the viewer reads it


def test_it_refuses_an_admin_that_lists_or_searches_a_secret():
    from django.contrib import admin as django_admin
    from django.core.exceptions import ImproperlyConfigured

    from omniagent.admin.options import TenantScopedAdmin

    class LeakyBotAdmin(TenantScopedAdmin):
        list_display = ("app_id", "app_secret")

    with pytest.raises(ImproperlyConfigured, match="app_secret"):
        LeakyBotAdmin(Bot, django_admin.site)


def test_it_shows_viewers_only_the_state_of_secrets_side_by_side_in_a_fieldset(rf, personas, bot):
    from django.contrib import admin as django_admin

    from omniagent.admin.options import TenantScopedAdmin

    class CompactBotAdmin(TenantScopedAdmin):
        fieldsets = ((None, {"fields": ("app_id", ("app_secret", "encrypt_key"))}),)

    request = rf.get("/")
    request.user = personas.viewer_a
    fieldsets = CompactBotAdmin(Bot, django_admin.site).get_fieldsets(request, bot)
    assert fieldsets[0][1]["fields"] == ["app_id", ["app_secret_state", "encrypt_key_state"]]


@pytest.mark.django_db(transaction=True)
def test_it_rolls_the_change_back_when_its_audit_row_cannot_be_written(client, personas, bot, monkeypatch):
    import omniagent.admin.options as options

    def broken_audit(**kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(options, "audit_record", broken_audit)
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    data = form_data(client.get(url).content.decode(), name="Unaudited", app_secret="unaudited-secret")
    with pytest.raises(RuntimeError, match="audit store down"):
        client.post(url, data)
    bot.refresh_from_db()
    assert (bot.name, bot.app_secret) == ("Support", "app-secret-plaintext")
