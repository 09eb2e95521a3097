"""audit_record / audit_snapshot / audit_diff: what the trail keeps, and that secrets never get in."""

import pytest
from django.db import connection

from apps.audit.models import AuditLog
from apps.audit.services import audit_diff, audit_record, audit_snapshot
from tests.factories import BotFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_it_records_a_change_with_secrets_reduced_to_changed():
    bot = BotFactory(name="Old", app_secret="first-secret")
    before = audit_snapshot(bot)
    bot.name, bot.app_secret = "New", "second-secret"
    bot.save()
    user = UserFactory(username="carol")
    entry = audit_record(
        tenant=bot.tenant,
        actor=user,
        action=AuditLog.Action.UPDATE,
        obj=bot,
        changes=audit_diff(before, audit_snapshot(bot)),
    )
    entry.refresh_from_db()
    assert entry.changes == {"app_secret": "changed", "name": {"old": "Old", "new": "New"}}
    assert (entry.actor_label, entry.object_type, entry.object_id) == ("carol", "bots.Bot", str(bot.pk))
    with connection.cursor() as cursor:
        cursor.execute("SELECT changes::text FROM audit_auditlog")
        stored = cursor.fetchone()[0]
    assert "first-secret" not in stored and "second-secret" not in stored


def test_it_names_a_non_user_actor_by_its_label():
    bot = BotFactory()
    entry = audit_record(
        tenant=bot.tenant, actor_label="provision", action=AuditLog.Action.CREATE, obj=bot,
        changes=audit_diff({}, audit_snapshot(bot)),
    )  # fmt: skip
    assert entry.actor is None and entry.actor_label == "provision"
    assert entry.changes["app_id"] == {"old": None, "new": bot.app_id}
    assert entry.changes["app_secret"] == "changed"
    assert "encrypt_key" not in entry.changes  # empty on both sides: nothing to say


def test_it_leaves_unchanged_rows_and_timestamps_out_of_the_diff():
    bot = BotFactory()
    before = audit_snapshot(bot)
    bot.save()
    assert audit_diff(before, audit_snapshot(bot)) == {}


def test_it_refuses_an_unknown_action():
    bot = BotFactory()
    with pytest.raises(ValueError, match="unknown audit action"):
        audit_record(tenant=bot.tenant, action="rename", obj=bot)
