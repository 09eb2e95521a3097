"""Writing the audit trail: who changed what in which tenant, with secrets reduced to "changed".

Used by the admin (omniagent.admin.options) and by provisioning and the API. Typical use::

    before = audit_snapshot(bot)            # before the change (or {} when creating)
    ...change and save bot...
    audit_record(tenant=bot.tenant, actor=user, action=AuditLog.Action.UPDATE, obj=bot,
                 changes=audit_diff(before, audit_snapshot(bot)))

Call it inside the transaction that makes the change, so the row and its audit entry commit together.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import uuid
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import models

from apps.audit.models import AuditLog
from apps.tenants.models import Tenant
from omniagent.fields import EncryptedTextField

SECRET_MARK = "changed"
# Fields whose values are credentials even though they are not encrypted (hashes, passwords).
SECRET_FIELD_NAMES = frozenset({"key_hash", "password"})


class _SecretDigest(str):
    """A snapshot stands in a digest for a secret, so snapshots can be compared but never leak it."""


def _is_secret(field: models.Field) -> bool:
    return isinstance(field, EncryptedTextField) or field.name in SECRET_FIELD_NAMES


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def audit_snapshot(obj: models.Model) -> dict[str, Any]:
    """The audited state of a row: concrete fields by name (FKs as ids), secrets as digests.

    Timestamps maintained by Django (auto_now/auto_now_add) are left out: they change on every save.
    """
    state: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key or getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        value = getattr(obj, field.attname)
        if _is_secret(field):
            state[field.name] = _SecretDigest(hashlib.sha256(str(value or "").encode()).hexdigest() if value else "")
        else:
            state[field.name] = _jsonable(value)
    return state


def audit_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Changed fields as {"name": {"old": ..., "new": ...}}; a changed secret is just {"name": "changed"}.

    `before` is {} for a creation, `after` is {} for a deletion; empty values are left out there.
    """
    changes: dict[str, Any] = {}
    for name in before.keys() | after.keys():
        old, new = before.get(name), after.get(name)
        if old == new or (old in (None, "", [], {}) and new in (None, "", [], {})):
            continue
        if isinstance(old, _SecretDigest) or isinstance(new, _SecretDigest):
            changes[name] = SECRET_MARK
        else:
            changes[name] = {"old": old, "new": new}
    return dict(sorted(changes.items()))


def audit_record(
    *,
    tenant: Tenant | None,
    actor: User | AnonymousUser | None = None,
    actor_label: str = "",
    action: str,
    obj: models.Model,
    changes: dict[str, Any] | None = None,
) -> AuditLog:
    """Write one audit row for `action` (an AuditLog.Action) on `obj`.

    actor: the user who acted (None for provisioning or an API key); actor_label: how to name the
    actor in the log ("provision", "api-key crm"), defaults to the user's username. `changes` should
    come from audit_diff so secrets are masked; values that are _SecretDigest are masked here too.
    """
    if action not in AuditLog.Action.values:
        raise ValueError(f"unknown audit action {action!r}")
    user = actor if isinstance(actor, User) else None  # an anonymous request acts as nobody
    label = actor_label or (user.get_username() if user is not None else "")
    safe_changes = {
        name: SECRET_MARK if isinstance(value, _SecretDigest) else value for name, value in (changes or {}).items()
    }
    return AuditLog.objects.create(
        tenant=tenant,
        actor=user,
        actor_label=label[:150] or "unknown",
        action=action,
        object_type=obj._meta.label,
        object_id=str(obj.pk)[:64],
        object_repr=str(obj)[:200],
        changes=_jsonable(safe_changes),
    )
