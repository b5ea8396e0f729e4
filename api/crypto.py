"""AES-256-GCM sealing of the saved connection settings (pure: the key and the nonce source are given).

A sealed blob is ``version (1 byte) ‖ key id (8 bytes) ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16)``.
The key id (the first 8 bytes of SHA-256 of the key) lets a changed key be reported as such instead
of as corrupted data; the associated data binds a blob to what it is (so a sealed value cannot be
moved to another row or purpose). A fresh random 96-bit nonce per seal; with one key sealing a
handful of settings, collisions are out of reach.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 8
_HEADER = 1 + KEY_ID_BYTES + NONCE_BYTES
_TAG_BYTES = 16


class SealError(Exception):
    """A blob cannot be opened: another key, tampered or truncated data, or an unknown version."""


def key_id(key: bytes) -> bytes:
    """A short, non-secret fingerprint of a key (8 bytes of its SHA-256)."""
    _check_key(key)
    return hashlib.sha256(b"pacs-sync-credentials-key:" + key).digest()[:KEY_ID_BYTES]


def seal(
    key: bytes, plaintext: bytes, *, context: bytes, nonce_source: Callable[[int], bytes] = os.urandom
) -> bytes:
    """Encrypt and authenticate ``plaintext``; ``context`` is authenticated, not stored."""
    _check_key(key)
    nonce = nonce_source(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
    header = bytes([VERSION]) + key_id(key) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header[: 1 + KEY_ID_BYTES] + context)


def open_sealed(key: bytes, blob: bytes, *, context: bytes) -> bytes:
    """Check and decrypt a blob made by :func:`seal` with the same key and context."""
    _check_key(key)
    if len(blob) < _HEADER + _TAG_BYTES:
        raise SealError("the sealed value is truncated")
    if blob[0] != VERSION:
        raise SealError(f"unknown sealed-value version {blob[0]}")
    if blob[1 : 1 + KEY_ID_BYTES] != key_id(key):
        raise SealError(
            "the sealed value was made with another key: PACS_API_CREDENTIALS_KEY changed since it was "
            "saved (restore the old key or save the connection settings again)"
        )
    nonce = blob[1 + KEY_ID_BYTES : _HEADER]
    try:
        return AESGCM(key).decrypt(nonce, blob[_HEADER:], blob[: 1 + KEY_ID_BYTES] + context)
    except InvalidTag:
        raise SealError(
            "the sealed value does not authenticate (tampered, or sealed for another use)"
        ) from None


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"an AES-256 key is {KEY_BYTES} bytes, not {len(key)}")
