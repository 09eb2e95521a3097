"""Re-encrypt every EncryptedTextField value under the newest key of OMNIAGENT_ENCRYPTION_KEYS.

Fields are discovered over all installed models, so a new secret column is rotated without touching
this module. Each value is swapped with a compare-and-swap UPDATE on its stored ciphertext, so a
value changed meanwhile (a user saving a new secret) is never overwritten with a stale one. The
UPDATE bypasses save(): rotation is not a content change and leaves updated_at alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from django.apps import apps
from django.db import models
from django.db.models.functions import Cast

from apps.audit.models import AuditLog
from omniagent.crypto import DecryptionError, keyring
from omniagent.fields import EncryptedTextField

_RAW = "_sealed"


@dataclass
class RotationReport:
    """Counts per `app_label.Model.field`, and the values no key in the ring could open."""

    rotated: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def total_rotated(self) -> int:
        return sum(self.rotated.values())

    def summary(self) -> str:
        lines = [
            f"{name}: {self.rotated[name]} re-encrypted, {self.current[name]} already under the newest key"
            for name in sorted(self.rotated)
        ]
        lines.append(f"total: {self.total_rotated} re-encrypted, {sum(self.current.values())} already current")
        lines.extend(f"unreadable: {where}" for where in self.unreadable)
        return "\n".join(lines)


def encrypted_fields() -> Iterator[tuple[type[models.Model], EncryptedTextField]]:
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        for model_field in model._meta.concrete_fields:
            if isinstance(model_field, EncryptedTextField):
                yield model, model_field


def secrets_rotate(*, dry_run: bool = False, batch_size: int = 500) -> RotationReport:
    ring = keyring()
    report = RotationReport()
    for model, model_field in encrypted_fields():
        name = f"{model._meta.label}.{model_field.name}"
        report.rotated[name] = report.current[name] = 0
        # Cast to a plain text column so the stored ciphertext comes back as is, not decrypted.
        sealed = (
            model._base_manager.annotate(**{_RAW: Cast(model_field.name, models.TextField())})
            .exclude(**{f"{_RAW}__isnull": True})
            .exclude(**{_RAW: ""})
        )
        for pk, token in sealed.values_list("pk", _RAW).order_by("pk").iterator(chunk_size=batch_size):
            if not ring.needs_rotation(token):
                report.current[name] += 1
                continue
            try:
                plaintext = ring.decrypt(token)
            except DecryptionError as exc:
                report.unreadable.append(f"{name} pk={pk}: {exc}")
                continue
            if not dry_run:
                # get_prep_value seals the plaintext under the current key.
                swapped = sealed.filter(pk=pk, **{_RAW: token}).update(**{model_field.name: plaintext})
                if not swapped:  # changed since we read it: the new value is already under the newest key
                    continue
            report.rotated[name] += 1
    if report.total_rotated and not dry_run:
        AuditLog.objects.create(
            actor_label="rotate_secrets",
            action=AuditLog.Action.ACTION,
            object_type="omniagent.encryption_key",
            object_id=ring.current_id,
            object_repr=f"re-encrypted {report.total_rotated} values under key {ring.current_id}",
            changes={name: count for name, count in report.rotated.items() if count},
        )
    return report
