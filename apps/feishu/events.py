"""Feishu callback crypto: AES-256-CBC bodies and X-Lark-Signature, exactly as Feishu and lark-oapi do them.

Decryption is done with `cryptography` rather than lark-oapi's AESCipher so the web process does not
import the whole SDK on the hot path; tests check both agree. `event_encrypt` / `event_sign` exist for
the tests, the fakes and the benchmark (they play Feishu).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


class DecryptError(ValueError):
    """The body could not be decrypted with the bot's encrypt key."""


@lru_cache(maxsize=256)
def _aes_key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode()).digest()


def event_decrypt(*, encrypt_key: str, ciphertext: str) -> bytes:
    """base64 → IV (16 bytes) + AES-256-CBC(SHA-256(encrypt_key)) → PKCS7-unpadded plaintext bytes."""
    try:
        raw = base64.b64decode(ciphertext, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise DecryptError("ciphertext is not base64") from None
    if len(raw) < 2 * BLOCK or len(raw) % BLOCK:
        raise DecryptError("invalid ciphertext length")
    decryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(raw[:BLOCK])).decryptor()
    padded = decryptor.update(raw[BLOCK:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptError("invalid padding (wrong encrypt key?)") from None


def event_encrypt(*, encrypt_key: str, plaintext: str | bytes, iv: bytes | None = None) -> str:
    """What Feishu puts in {"encrypt": ...}: base64(IV + AES-256-CBC(PKCS7(plaintext)))."""
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    iv = iv or os.urandom(BLOCK)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()


def event_sign(*, timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """hex SHA-256 of (timestamp + nonce + encrypt_key).encode() + raw body (lark-oapi `_verify_sign`)."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def signature_valid(*, timestamp: str, nonce: str, encrypt_key: str, body: bytes, signature: str) -> bool:
    expected = event_sign(timestamp=timestamp, nonce=nonce, encrypt_key=encrypt_key, body=body)
    return hmac.compare_digest(expected, signature.strip().lower())


def token_valid(*, expected: str, received: object) -> bool:
    return isinstance(received, str) and hmac.compare_digest(expected.encode(), received.encode())
