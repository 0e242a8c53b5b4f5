"""A practice's invite-creating work, one at a time: a transaction holding the practice's lock.

The lock is PostgreSQL's (an advisory lock, so that every process of the service takes turns; see
docs/decisions/0004-invitations-one-pending-invite-by-lock.md). Waiting for it in the database holds a pooled
connection, so a practice storing a 100,000-line roster while its staff kept pressing "Enable Patient Access" used
up the pool, and every other practice's requests (and the outbox relay) waited seconds for a connection. Within a
process the turn is therefore taken first, without a connection: at most one of a practice's requests per process
waits in the database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from services.invitations import repository
from services.runtime.database import transaction


class _Turns:
    """One asyncio lock per practice with work waiting or running in this process; dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, practice_id: uuid.UUID) -> AsyncIterator[None]:
        lock, users = self._locks.get(practice_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[practice_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[practice_id]
            if users <= 1:
                del self._locks[practice_id]
            else:
                self._locks[practice_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)

    def users(self, practice_id: uuid.UUID) -> int:
        """The practice's requests in this process holding or waiting for its turn."""
        return self._locks.get(practice_id, (None, 0))[1]


_TURNS = _Turns()


@asynccontextmanager
async def practice_transaction(pool: asyncpg.Pool, practice_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that holds the practice's lock until it ends; this process's turn is taken before a
    connection is."""
    async with _TURNS.turn(practice_id), transaction(pool) as db:
        await repository.lock_practice(db, practice_id)
        yield db
