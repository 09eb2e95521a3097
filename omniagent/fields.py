"""EncryptedTextField: AES-256-GCM at rest through the key ring in omniagent.crypto."""

from __future__ import annotations

from django.db import models

from omniagent.crypto import keyring


class EncryptedTextField(models.TextField):
    """Stores ciphertext, exposes plaintext. Empty string stays empty (means "not set")."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return keyring().decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return keyring().encrypt(value)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "omniagent.fields.EncryptedTextField", args, kwargs
