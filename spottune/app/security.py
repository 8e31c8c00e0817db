"""API keys: random, shown once, stored as a sha256 hash with a short lookup prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from spottune.app.errors import Unauthorized

KEY_PREFIX = "st_"
PREFIX_CHARS = 12  # stored in clear for lookup; the remaining >= 200 bits stay secret
_TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 random bits
T = TypeVar("T")


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


def presented_key(scheme: str | None, credentials: str | None) -> str:
    """The API key of an ``Authorization: Bearer <key>`` header; 401 saying what is wrong."""
    if scheme is None or credentials is None or scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <api key>'")
    key = credentials.strip()
    if not looks_like_key(key):
        raise Unauthorized(
            "malformed API key: use the key printed by 'spottune admin create-clinic'"
        )
    return key


def match_key(key: str, candidates: Iterable[tuple[str, T]]) -> T:
    """What goes with the stored hash that ``key`` matches among ``(key_hash, value)`` pairs.

    Every candidate (the active keys sharing the lookup prefix) is compared in constant time,
    with no early exit; none matching is a 401.
    """
    matches = [value for key_hash, value in candidates if key_matches(key, key_hash)]
    if not matches:
        raise Unauthorized("unknown or revoked API key: ask the operator for a new key")
    return matches[0]
