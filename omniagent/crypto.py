"""AES-256-GCM key ring for secrets at rest.

Ciphertext format: ``v1:<key id>:<urlsafe b64(nonce || ciphertext+tag)>``. The key id is the first
8 hex chars of SHA-256(key), so a value names the key that sealed it and rotation only needs the old
key kept in the ring until ``manage.py rotate_secrets`` has re-encrypted everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "v1"


class DecryptionError(Exception):
    """A stored value could not be decrypted with any key in the ring."""


@dataclass(frozen=True)
class KeyRing:
    keys: dict[str, bytes]  # key id -> raw key, first inserted encrypts
    current_id: str

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.keys[self.current_id]).encrypt(nonce, plaintext.encode(), self.current_id.encode())
        return f"{PREFIX}:{self.current_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str) -> str:
        try:
            prefix, key_id, body = token.split(":", 2)
        except ValueError:
            raise DecryptionError("value is not an OmniAgent ciphertext") from None
        if prefix != PREFIX or key_id not in self.keys:
            raise DecryptionError(f"no key {key_id!r} in OMNIAGENT_ENCRYPTION_KEYS")
        raw = base64.urlsafe_b64decode(body)
        try:
            return AESGCM(self.keys[key_id]).decrypt(raw[:12], raw[12:], key_id.encode()).decode()
        except Exception as exc:  # InvalidTag: wrong key or tampered value
            raise DecryptionError("ciphertext failed authentication") from exc

    def needs_rotation(self, token: str) -> bool:
        return not token.startswith(f"{PREFIX}:{self.current_id}:")


def key_id_for(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str, *, source: str = "OMNIAGENT_ENCRYPTION_KEYS") -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{source}: a key is not urlsafe base64") from None
    if len(key) != 32:
        raise ImproperlyConfigured(f"{source}: each key must be 32 bytes of urlsafe base64, got {len(key)} bytes")
    return key


def build_ring(key_texts: list[str]) -> KeyRing:
    if not key_texts:
        raise ImproperlyConfigured("OMNIAGENT_ENCRYPTION_KEYS is empty")
    keys: dict[str, bytes] = {}
    for text in key_texts:
        key = parse_key(text)
        keys[key_id_for(key)] = key
    return KeyRing(keys=keys, current_id=key_id_for(parse_key(key_texts[0])))


@cache
def _ring_for(keys: tuple[str, ...]) -> KeyRing:
    return build_ring(list(keys))


def keyring() -> KeyRing:
    # Keyed by the configured tuple so tests that override the setting get a fresh ring.
    return _ring_for(tuple(settings.OMNIAGENT_ENCRYPTION_KEYS))


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()
