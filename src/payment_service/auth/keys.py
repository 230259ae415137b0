"""API key format: `psk_<8 hex prefix>_<secret>`, ≥ 128 random bits, stored as SHA-256.

The prefix is public (it finds the row and may be logged); the whole key is the
secret. A plain SHA-256 suffices for keys of this entropy (no password to guess),
and `hmac.compare_digest` keeps the comparison constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^psk_([0-9a-f]{8})_([A-Za-z0-9_-]{22,128})$")
"""22 url-safe characters are 132 bits; generated keys carry 43 (256 bits)."""


class InvalidApiKeyError(ValueError):
    """Not an API key of this service's format (says nothing about the value)."""


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str
    digest: str


def generate_key() -> str:
    """A fresh key: 32 bits of public prefix and 256 bits of secret."""
    return f"psk_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def parse_key(key: str) -> ParsedKey:
    """Split a presented key into its prefix and hash, or raise InvalidApiKeyError."""
    match = KEY_PATTERN.match(key)
    if match is None:
        raise InvalidApiKeyError("not an API key of the form psk_<8 hex>_<secret>")
    return ParsedKey(prefix=match.group(1), digest=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def digests_match(presented: str, stored: str) -> bool:
    return hmac.compare_digest(presented.encode("ascii"), stored.encode("ascii"))


def mask(prefix: str) -> str:
    """What logs and listings show of a key: its public prefix only."""
    return f"psk_{prefix}_…"
