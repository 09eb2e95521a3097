"""Members of a tenant are managed inline on the tenant page, within the same rules as everything else."""

import pytest
from django.urls import reverse

from apps.audit.models import AuditLog
from apps.tenants.models import Membership, Role, Tenant
from tests.admin.conftest import form_data
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_it_lets_an_owner_add_a_colleague_from_another_of_their_tenants(client, personas):
    tenant_c = TenantFactory()
    MembershipFactory(tenant=tenant_c, user=personas.owner_a)
    colleague = MembershipFactory(tenant=tenant_c, user=UserFactory(username="carol")).user
    client.force_login(personas.owner_a)
    url = reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])
    data = form_data(client.get(url).content.decode())
    data.update({"memberships-TOTAL_FORMS": "3", "memberships-2-user": colleague.pk, "memberships-2-role": "viewer"})
    assert client.post(url, data).status_code == 302
    assert Membership.objects.get(tenant=personas.tenant_a, user=colleague).role == Role.VIEWER
    entry = AuditLog.objects.get(object_type="tenants.Membership")
    assert (entry.tenant, entry.action, entry.changes["role"]) == (
        personas.tenant_a,
        AuditLog.Action.CREATE,
        {"old": None, "new": "viewer"},
    )


def test_it_refuses_a_member_the_owner_does_not_know(client, personas):
    client.force_login(personas.owner_a)
    url = reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])
    data = form_data(client.get(url).content.decode())
    data.update(
        {"memberships-TOTAL_FORMS": "3", "memberships-2-user": personas.staff_b.pk, "memberships-2-role": "owner"}
    )
    response = client.post(url, data)
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not Membership.objects.filter(tenant=personas.tenant_a, user=personas.staff_b).exists()


def test_it_shows_the_viewer_members_without_letting_them_change_roles(client, personas):
    client.force_login(personas.viewer_a)
    url = reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])
    page = client.get(url).content.decode()
    assert "alice" in page and "victor" in page
    assert '<select name="memberships-' not in page
    victor = Membership.objects.get(user=personas.viewer_a)
    response = client.post(
        url,
        {
            "name": "ACME", "slug": "acme", "time_zone": "UTC", "memberships-TOTAL_FORMS": "2",
            "memberships-INITIAL_FORMS": "2", "memberships-0-id": victor.pk, "memberships-0-role": "owner",
        },
    )  # fmt: skip
    assert response.status_code == 403
    victor.refresh_from_db()
    assert victor.role == Role.VIEWER


def test_a_tenant_admin_sees_the_members_but_cannot_change_roles(client, personas):
    admin_a = MembershipFactory(tenant=personas.tenant_a, role=Role.ADMIN, user=UserFactory(username="adam"))
    client.force_login(admin_a.user)
    url = reverse("admin:tenants_tenant_change", args=[personas.tenant_a.pk])
    page = client.get(url).content.decode()
    assert "alice" in page and "adam" in page
    assert '<select name="memberships-' not in page
    data = form_data(page)
    data.update({"name": "ACME Corp", "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "1"})
    data.update({"memberships-0-id": admin_a.pk, "memberships-0-role": "owner"})

    assert client.post(url, data).status_code == 302  # the tenant's own fields are still theirs to change

    admin_a.refresh_from_db()
    assert admin_a.role == Role.ADMIN
    assert Tenant.objects.get(pk=personas.tenant_a.pk).name == "ACME Corp"
    assert not AuditLog.objects.filter(object_type="tenants.Membership").exists()


def test_it_lets_only_superusers_create_and_delete_tenants(client, personas):
    client.force_login(personas.owner_a)
    assert client.get(reverse("admin:tenants_tenant_add")).status_code == 403
    delete_url = reverse("admin:tenants_tenant_delete", args=[personas.tenant_a.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    assert Tenant.objects.filter(pk=personas.tenant_a.pk).exists()
    client.force_login(UserFactory(is_superuser=True))
    assert client.get(reverse("admin:tenants_tenant_add")).status_code == 200
