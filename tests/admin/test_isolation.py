"""Tenant isolation in the admin, for every registered tenant-owned model, with the three personas."""

import pytest
from django.urls import reverse

from tests.admin.conftest import AdminSpec, result_rows
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_it_lists_a_rows_to_a_owner_and_none_to_b(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    row_b = spec.make(personas.tenant_b)
    url_a, url_b = spec.url("change", row_a.pk), spec.url("change", row_b.pk)

    client.force_login(personas.owner_a)
    page = client.get(spec.url("changelist")).content.decode()
    assert url_a in page and url_b not in page

    client.force_login(personas.staff_b)
    response = client.get(spec.url("changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert url_b in page
    assert url_a not in page
    assert result_rows(page) == 1


def test_it_answers_b_on_a_object_exactly_like_a_missing_one(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    missing = row_a.pk + 10_000
    client.force_login(personas.staff_b)
    for view in ("change", "delete", "history"):
        foreign, absent = client.get(spec.url(view, row_a.pk)), client.get(spec.url(view, missing))
        assert foreign.status_code == absent.status_code == 404, view
        assert foreign.content.replace(str(row_a.pk).encode(), b"ID") == absent.content.replace(
            str(missing).encode(), b"ID"
        )
    assert client.post(spec.url("change", row_a.pk), {}).status_code == 404
    assert client.post(spec.url("delete", row_a.pk), {"post": "yes"}).status_code == 404
    assert type(row_a).objects.filter(pk=row_a.pk).exists()


def test_it_shows_a_owner_the_same_object(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    client.force_login(personas.owner_a)
    assert client.get(spec.url("change", row_a.pk)).status_code == 200


def test_it_keeps_the_viewer_read_only(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    client.force_login(personas.viewer_a)

    listing = client.get(spec.url("changelist"))
    assert listing.status_code == 200 and spec.url("change", row_a.pk) in listing.content.decode()
    assert spec.url("add") not in listing.content.decode()  # no "Add" button
    assert 'name="action"' not in listing.content.decode()  # no bulk actions (delete, retry)

    page = client.get(spec.url("change", row_a.pk))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert client.get(spec.url("add")).status_code == 403
    assert client.post(spec.url("change", row_a.pk), {}).status_code == 403
    assert client.get(spec.url("delete", row_a.pk)).status_code == 403
    assert client.post(spec.url("delete", row_a.pk), {"post": "yes"}).status_code == 403
    assert type(row_a).objects.filter(pk=row_a.pk).exists()


def test_it_lets_the_owner_change_editable_models_only(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    client.force_login(personas.owner_a)
    page = client.get(spec.url("change", row_a.pk)).content.decode()
    assert ('name="_save"' in page) is spec.editable
    assert (client.get(spec.url("add")).status_code == 200) is spec.addable


def test_it_shows_nothing_to_staff_without_membership(client, personas, spec: AdminSpec):
    row_a = spec.make(personas.tenant_a)
    client.force_login(UserFactory(username="drifter"))
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert spec.url("changelist") not in index.content.decode()
    assert client.get(spec.url("changelist")).status_code == 403
    assert client.get(spec.url("change", row_a.pk)).status_code == 404


def test_it_lets_a_superuser_see_every_tenant(client, personas, spec: AdminSpec):
    row_a, row_b = spec.make(personas.tenant_a), spec.make(personas.tenant_b)
    client.force_login(UserFactory(username="root", is_superuser=True))
    page = client.get(spec.url("changelist")).content.decode()
    assert spec.url("change", row_a.pk) in page and spec.url("change", row_b.pk) in page


def test_it_limits_bulk_actions_to_tenants_the_user_may_write(client, personas):
    from tests.factories import BotFactory

    # Owner of A, only a viewer in B: "delete selected" must not reach B's rows.
    MembershipFactory(tenant=personas.tenant_b, user=personas.owner_a, role="viewer")
    bot_a, bot_b = BotFactory(tenant=personas.tenant_a), BotFactory(tenant=personas.tenant_b)
    client.force_login(personas.owner_a)
    url = reverse("admin:bots_bot_changelist")
    client.post(url, {"action": "delete_selected", "_selected_action": [bot_a.pk, bot_b.pk], "post": "yes"})
    assert not type(bot_a).objects.filter(pk=bot_a.pk).exists()
    assert type(bot_b).objects.filter(pk=bot_b.pk).exists()


def test_it_lists_every_tenant_section_on_the_index_for_a_member(client, personas):
    client.force_login(personas.viewer_a)
    page = client.get(reverse("admin:index")).content.decode()
    for name in ("bots_bot", "agents_agent", "bindings_binding", "transcripts_conversation", "audit_auditlog"):
        assert reverse(f"admin:{name}_changelist") in page
    assert reverse("admin:auth_user_changelist") not in page  # Django's own models stay superuser business


def test_every_admin_registered_app_model_is_covered_by_these_tests():
    from django.contrib import admin

    from omniagent.admin.options import TenantScopedAdmin
    from tests.admin.conftest import SPECS

    ours = {m._meta.label_lower for m, a in admin.site._registry.items() if m.__module__.startswith("apps.")}
    assert ours == {s.label for s in SPECS}, "add an AdminSpec for each new admin (tests/admin/conftest.py)"
    unscoped = [m for m, a in admin.site._registry.items() if m.__module__.startswith("apps.")
                and not isinstance(a, TenantScopedAdmin)]  # fmt: skip
    assert unscoped == [], "every app admin must derive from TenantScopedAdmin"


def test_it_lets_an_owner_delete_a_bot_with_history_and_audits_it(client, personas):
    from apps.audit.models import AuditLog
    from apps.bots.models import Bot
    from tests.factories import BotFactory, InboundEventFactory, OutboundMessageFactory

    bot = BotFactory(tenant=personas.tenant_a)
    InboundEventFactory(bot=bot)
    OutboundMessageFactory(bot=bot)
    client.force_login(personas.owner_a)
    response = client.post(reverse("admin:bots_bot_delete", args=[bot.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Bot.objects.filter(pk=bot.pk).exists()
    entry = AuditLog.objects.get(action=AuditLog.Action.DELETE)
    assert entry.object_id == str(bot.pk)
    # What went with it is in the same row.
    assert entry.changes["deleted with it"]["old"] == {"feishu.OutboundMessage": 1, "transcripts.InboundEvent": 1}
