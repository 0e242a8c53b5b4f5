"""The asyncpg pool, transactions, and which database errors are worth retrying."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

# Errors that say "the database is not there right now", not "this input is wrong": retry, never dead-letter.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


async def create_pool(dsn: str, service: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=60,
        timeout=10,
        server_settings={"application_name": service},
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One unit of work: everything written through the yielded connection commits or rolls back together."""
    async with pool.acquire() as connection, connection.transaction():
        yield connection


async def database_reachable(pool: asyncpg.Pool | None, timeout: float = 2.0) -> bool:
    if pool is None:
        return False
    try:
        async with asyncio.timeout(timeout), pool.acquire() as connection:
            return await connection.fetchval("SELECT 1") == 1
    except Exception:
        return False
