"""Managing API keys (CLI `api-keys`) and resolving a presented key to its caller.

A new key is printed once and only its hash is stored. `--key-from-env` makes
creation idempotent for deployments: the key (from a Secret) is added only when
absent, so the migration Job can run it on every rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.auth.caller import DEFAULT_CLIENT_ID, SCOPES, Caller
from payment_service.auth.keys import (
    InvalidApiKeyError,
    digests_match,
    generate_key,
    mask,
    parse_key,
)
from payment_service.repositories.api_keys import ApiKeyRepository

log = logging.getLogger(__name__)


class ApiKeyError(ValueError):
    """A key cannot be created or revoked as asked (one line for the CLI)."""


@dataclass(frozen=True, slots=True)
class CreatedKey:
    name: str
    prefix: str
    key: str | None
    """The new key, to show once; None when it came from the environment or existed."""
    created: bool


@dataclass(frozen=True, slots=True)
class KeyListing:
    name: str
    prefix: str
    scopes: tuple[str, ...]
    rate_limit_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = sorted(set(scopes), key=["read", "charge", "refund"].index)
    if not wanted:
        raise ApiKeyError("give at least one --scope (read, charge, refund)")
    return wanted


async def create_key(
    session: AsyncSession,
    name: str,
    scopes: Iterable[str],
    *,
    rate_limit_per_minute: int | None = None,
    key: str | None = None,
) -> CreatedKey:
    """Create a client `name` with a new key; with `key`, add that key unless present."""
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ApiKeyError(f"unknown scope(s) {sorted(unknown)}; use read, charge, refund")
    wanted = _check_scopes(scopes)
    if name == DEFAULT_CLIENT_ID:
        raise ApiKeyError(f"the name {DEFAULT_CLIENT_ID!r} is reserved for unauthenticated calls")
    if not name or len(name) > 64 or not name.isprintable():
        raise ApiKeyError("a name is 1..64 printable characters")
    repo = ApiKeyRepository(session)
    client = await repo.client_by_name(name)
    if key is not None:
        try:
            parsed = parse_key(key)
        except InvalidApiKeyError as exc:
            raise ApiKeyError(f"the given key is not usable: {exc}") from None
        existing = await repo.find_by_prefix(parsed.prefix)
        if existing is not None:
            stored, owner = existing
            if owner.name != name or not digests_match(parsed.digest, stored.key_hash):
                raise ApiKeyError(f"key prefix {mask(parsed.prefix)} belongs to another key")
            if stored.revoked_at is not None:
                raise ApiKeyError(f"key {mask(parsed.prefix)} of {name} was revoked; use a new one")
            return CreatedKey(name, parsed.prefix, None, created=False)
        if client is None:
            client = await repo.add_client(name)
        await repo.add_key(
            client,
            prefix=parsed.prefix,
            key_hash=parsed.digest,
            scopes=wanted,
            rate_limit_per_minute=rate_limit_per_minute,
        )
        return CreatedKey(name, parsed.prefix, None, created=True)
    if client is not None and await repo.active_keys_of(client):
        raise ApiKeyError(f"client {name!r} already has an active key; revoke it first")
    client = client or await repo.add_client(name)
    new_key = generate_key()
    parsed = parse_key(new_key)
    await repo.add_key(
        client,
        prefix=parsed.prefix,
        key_hash=parsed.digest,
        scopes=wanted,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    return CreatedKey(name, parsed.prefix, new_key, created=True)


async def list_keys(session: AsyncSession) -> list[KeyListing]:
    return [
        KeyListing(
            name=name,
            prefix=key.prefix,
            scopes=tuple(key.scopes),
            rate_limit_per_minute=key.rate_limit_per_minute,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
        )
        for key, name in await ApiKeyRepository(session).listing()
    ]


async def revoke_keys(session: AsyncSession, name: str) -> int:
    """Revoke every active key of client `name`; unknown names are an error."""
    repo = ApiKeyRepository(session)
    client = await repo.client_by_name(name)
    if client is None:
        raise ApiKeyError(f"no API client named {name!r}")
    return await repo.revoke_client(client)


async def caller_for_key(session: AsyncSession, presented: str) -> Caller | None:
    """The caller a presented key stands for; None when malformed, unknown or revoked."""
    try:
        parsed = parse_key(presented)
    except InvalidApiKeyError:
        return None
    repo = ApiKeyRepository(session)
    found = await repo.find_by_prefix(parsed.prefix)
    if found is None:
        return None
    key, client = found
    if not digests_match(parsed.digest, key.key_hash) or key.revoked_at is not None:
        return None
    await repo.touch(key.id)
    return Caller(
        client_id=str(client.id),
        name=client.name,
        scopes=frozenset(key.scopes),
        rate_limit_per_minute=key.rate_limit_per_minute,
        key_prefix=key.prefix,
    )
