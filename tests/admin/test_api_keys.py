"""Creating an API key in the admin shows the raw key once and stores only its hash."""

import re

import pytest
from django.db import connection
from django.urls import reverse

from apps.audit.models import AuditLog
from apps.tenants.models import ApiKey, hash_api_key

pytestmark = pytest.mark.django_db
RAW_KEY = re.compile(r'<code class="oa-new-api-key">([^<]+)</code>')


def _table(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {name}")  # noqa: S608 - fixed table names
        return repr(cursor.fetchall())


def test_it_shows_a_new_key_once_and_stores_only_its_hash(client, personas):
    client.force_login(personas.owner_a)
    response = client.post(
        reverse("admin:tenants_apikey_add"), {"tenant": personas.tenant_a.pk, "name": "crm", "scopes": "[]"}
    )
    assert response.status_code == 200
    shown = RAW_KEY.findall(response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    assert len(raw) >= 32
    # Shown in this response only: not parked in the messages cookie or the session for later.
    stored_messages = response.cookies.get("messages")
    assert stored_messages is None or stored_messages.value == ""
    assert raw not in _table("django_session")

    key = ApiKey.objects.get()
    assert (key.tenant, key.name, key.key_hash, key.prefix) == (personas.tenant_a, "crm", hash_api_key(raw), raw[:8])
    assert raw not in _table("tenants_apikey") and raw not in _table("audit_auditlog")

    # Never again: not on the list, not on the key's own page.
    for url in (reverse("admin:tenants_apikey_changelist"), reverse("admin:tenants_apikey_change", args=[key.pk])):
        page = client.get(url).content.decode()
        assert raw not in page and key.key_hash not in page
        assert f"{raw[:8]}…" in page  # the prefix, to recognise it

    entry = AuditLog.objects.get(object_type="tenants.ApiKey")
    assert entry.changes["key_hash"] == "changed"


def test_it_gives_every_key_a_different_value(client, personas):
    client.force_login(personas.owner_a)
    for name in ("one", "two"):
        client.post(reverse("admin:tenants_apikey_add"), {"tenant": personas.tenant_a.pk, "name": name, "scopes": "[]"})
    assert ApiKey.objects.values("key_hash").distinct().count() == 2


def test_it_lets_an_owner_revoke_keys_but_not_a_viewer(client, personas):
    from tests.factories import ApiKeyFactory

    key = ApiKeyFactory(tenant=personas.tenant_a)
    url = reverse("admin:tenants_apikey_changelist")
    client.force_login(personas.viewer_a)
    client.post(url, {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is None
    client.force_login(personas.owner_a)
    client.post(url, {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditLog.objects.filter(object_type="tenants.ApiKey", action=AuditLog.Action.UPDATE).count() == 1
