"""Making, hashing and checking the hub's secrets.

* Bearer and enrollment tokens read ``<prefix>_<token_id>_<secret>``: ``token_id`` (public) finds
  the row, and the row keeps only the SHA-256 of the whole token. Tokens carry 256 random bits, so a
  fast hash is as safe as a slow one and costs nothing per request.
* Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile) and
  re-hashed on login when those parameters change.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

API_PREFIX = "lkn"
ENROLL_PREFIX = "lke"
_TOKEN_RE = re.compile(r"^(?P<prefix>[a-z]{3})_(?P<id>[A-Za-z0-9]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

_hasher = PasswordHasher()


@dataclass(frozen=True)
class NewToken:
    """A token just made: ``value`` is shown once; store ``token_id`` and ``token_hash``."""

    value: str
    token_id: str
    token_hash: str


def sha256_hex(value: str) -> str:
    """Hex SHA-256 of ``value`` (UTF-8)."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_token(prefix: str) -> NewToken:
    """A fresh random token with ``prefix`` (``lkn`` API, ``lke`` enrollment)."""
    token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    value = f"{prefix}_{token_id}_{secrets.token_urlsafe(32)}"
    return NewToken(value=value, token_id=token_id, token_hash=sha256_hex(value))


def token_id_of(value: str, prefix: str) -> str | None:
    """The ``token_id`` of a well-formed token with ``prefix``, else None (then it is not ours)."""
    m = _TOKEN_RE.match(value)
    if m is None or m.group("prefix") != prefix:
        return None
    return m.group("id")


def token_matches(value: str, token_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(sha256_hex(value), token_hash)


def new_password(chars: int = 24) -> str:
    """A random password (URL-safe), e.g. for a broker account or the demo's admin."""
    return secrets.token_urlsafe(chars)[:chars]


def hash_password(password: str) -> str:
    """argon2id hash of ``password`` (PHC string, salt included)."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; a malformed hash never matches."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when ``stored_hash`` was made with other argon2 parameters than today's."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
