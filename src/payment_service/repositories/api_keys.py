"""SQL for API clients and keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import ApiClient, ApiKey


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find_by_prefix(self, prefix: str) -> tuple[ApiKey, ApiClient] | None:
        statement = (
            select(ApiKey, ApiClient)
            .join(ApiClient, ApiClient.id == ApiKey.client_id)
            .where(ApiKey.prefix == prefix)
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (row[0], row[1])

    async def touch(self, key_id: int) -> None:
        """Record use (at most once per cache TTL per process, so it costs little)."""
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=func.now())
        )

    async def client_by_name(self, name: str) -> ApiClient | None:
        return await self.session.scalar(select(ApiClient).where(ApiClient.name == name))

    async def add_client(self, name: str) -> ApiClient:
        client = ApiClient(name=name)
        self.session.add(client)
        await self.session.flush()
        return client

    async def add_key(
        self,
        client: ApiClient,
        *,
        prefix: str,
        key_hash: str,
        scopes: Sequence[str],
        rate_limit_per_minute: int | None,
    ) -> ApiKey:
        key = ApiKey(
            client_id=client.id,
            prefix=prefix,
            key_hash=key_hash,
            scopes=list(scopes),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        self.session.add(key)
        await self.session.flush()
        return key

    async def active_keys_of(self, client: ApiClient) -> Sequence[ApiKey]:
        statement = select(ApiKey).where(ApiKey.client_id == client.id, ApiKey.revoked_at.is_(None))
        return (await self.session.scalars(statement)).all()

    async def listing(self) -> Sequence[Row[ApiKey, str]]:
        statement = (
            select(ApiKey, ApiClient.name)
            .join(ApiClient, ApiClient.id == ApiKey.client_id)
            .order_by(ApiClient.name, ApiKey.created_at, ApiKey.id)
        )
        return (await self.session.execute(statement)).all()

    async def revoke_client(self, client: ApiClient) -> int:
        """Revoke every active key of the client; returns how many."""
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.client_id == client.id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )
        return result.rowcount or 0  # type: ignore[attr-defined]
