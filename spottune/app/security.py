"""API keys: random, shown once, stored as a sha256 hash with a short lookup prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "st_"
PREFIX_CHARS = 12  # stored in clear for lookup; the remaining >= 200 bits stay secret
_TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 random bits


@dataclass(frozen=True)
class NewKey:
    key: str  # shown to the operator once, never stored
    prefix: str
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    key = KEY_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    return NewKey(key=key, prefix=key[:PREFIX_CHARS], key_hash=hash_key(key))


def looks_like_key(key: str) -> bool:
    """Cheap shape check before touching the database."""
    return key.startswith(KEY_PREFIX) and PREFIX_CHARS < len(key) <= 128 and key.isascii()


def key_matches(key: str, stored_hash: str) -> bool:
    """Constant-time comparison of the presented key's hash with the stored one."""
    return hmac.compare_digest(hash_key(key), stored_hash)
