"""The asyncpg pool, transactions, and which database errors are worth retrying."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg

from services.runtime.cancel import forget

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


# What PostgreSQL answers when the database, not the event or request, is at fault (SQLSTATE classes and codes):
# a failover's old primary refusing writes, a full disk, an operator's shutdown, an image newer than its schema (the
# migration Job has not run yet) or a role's privileges taken away. Waited out, never dead-lettered: a consumer that
# gave up on them after a few seconds lost every event of the outage, committed past and only redrivable by hand.
_OUTAGE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock, completion unknown
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: shutdown, statement cancelled (statement_timeout), cannot connect now
        "58",  # system error: I/O
    }
)
_OUTAGE_CODES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby, or a primary being demoted
        "25P03",  # idle_in_transaction_session_timeout
        "25P04",  # transaction_timeout
        "55P03",  # lock_not_available (lock_timeout)
        "55006",  # object_in_use
        "42P01",  # undefined_table: the schema is behind the code
        "42703",  # undefined_column
        "42883",  # undefined_function
        "3F000",  # invalid_schema_name
        "3D000",  # invalid_catalog_name: the database is not there
        "42501",  # insufficient_privilege
        "28000",  # invalid_authorization_specification
        "28P01",  # invalid_password: credentials rotated under the service
    }
)


def is_transient(error: BaseException) -> bool:
    """TRANSIENT_ERRORS, the SQLSTATEs of an outage (above), and a connection a PostgreSQL restart broke
    mid-operation: asyncpg then refuses to use it ("cannot switch to state 12; another operation (2) is in
    progress", MagicStack/asyncpg#1069) and the pool replaces it on release. Its other InternalClientErrors (a missing
    codec, …) are bugs, not outages; a data or constraint error (classes 22, 23) is the input's."""
    if isinstance(error, asyncpg.InternalClientError):
        return "cannot switch to state" in str(error)
    if isinstance(error, asyncpg.PostgresError):
        state = str(getattr(error, "sqlstate", "") or "")
        if state[:2] in _OUTAGE_CLASSES or state in _OUTAGE_CODES:
            return True
    return isinstance(error, TRANSIENT_ERRORS)


async def create_pool(dsn: str, service: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=60,
        timeout=10,
        server_settings={
            "application_name": service,
            # A client that vanished (a dead node, a cut network) is noticed in about 90 s, not the OS's 2 hours:
            # its locks (the relay's batch lock, a claim's row locks) and LISTEN go with it.
            "tcp_keepalives_idle": "60",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        },
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One unit of work: everything written through the yielded connection commits or rolls back together."""
    async with pool.acquire() as connection, connection.transaction():
        yield connection


async def database_unusable(
    pool: asyncpg.Pool | None, schema: str, versions: Sequence[str], timeout: float = 2.0
) -> str | None:
    """Why the service cannot work on its database now, or None: unreachable, refusing writes (a standby, a primary
    being demoted), or its schema behind the code (the migration Job has not run): a pod is then not ready."""
    if pool is None:
        return "not connected"
    # The answer within `timeout`, the connection given back (or terminated) after it: waiting for the release of a
    # cancelled query, bounded by the acquire's timeout, made the answer take twice as long (4 s, past the readiness
    # probe's 3 s; unbounded, a probe to a database that stopped answering hung for 20 s).
    probe = asyncio.ensure_future(_read_state(pool, schema, timeout))
    _probes.add(probe)
    probe.add_done_callback(_probes.discard)
    try:
        row = await asyncio.wait_for(asyncio.shield(probe), timeout)
    except TimeoutError:
        probe.cancel()
        forget(probe)
        return "unreachable: TimeoutError"
    except asyncpg.UndefinedTableError:
        return f"schema {schema} not migrated: run `collabkare migrate {schema}` (the migration Job)"
    except Exception as error:
        return f"unreachable: {type(error).__name__}"
    assert row is not None
    if row["read_only"]:
        # A session keeps the default it began with: read-only set for the database or role (ALTER … SET) and
        # reset since reaches only new sessions. The pool's are replaced at their next use, so the next probe asks
        # one of those.
        await pool.expire_connections()
        return "read-only: it refuses writes (a standby, or a primary being demoted)"
    applied = set(row["applied"])
    missing = [version for version in versions if version not in applied]
    if missing:
        return f"schema {schema} behind the code, missing {', '.join(missing)}: run `collabkare migrate {schema}`"
    return None


_probes: set[asyncio.Future[asyncpg.Record | None]] = set()  # held till they end (the loop keeps weak references)


async def _read_state(pool: asyncpg.Pool, schema: str, timeout: float) -> asyncpg.Record | None:
    async with pool.acquire(timeout=timeout) as connection:
        return await connection.fetchrow(
            f"SELECT current_setting('transaction_read_only') = 'on' AS read_only, "
            f'array(SELECT version FROM "{schema}".schema_migrations) AS applied'
        )


async def listen(
    pool: asyncpg.Pool, channel: str, callback: Callable[..., object], on_lost: Callable[..., object]
) -> asyncpg.Connection:
    """A pooled connection kept LISTENing on `channel` until `unlisten`. Given back to the pool if LISTEN fails or
    is cancelled (a service stopped just after it started): a connection lost there held pool.close() for 10 s.

    `on_lost` is called (with the connection) from the event loop should the connection close under it: PostgreSQL
    ended the session (a failover, pg_terminate_backend, a proxy's idle timeout). Nothing else tells: an idle LISTEN
    connection runs no query that could fail, and its caller fell back to polling for good. The caller then sees it
    `closed` and LISTENs again."""
    connection: asyncpg.Connection = await pool.acquire()
    try:
        connection.add_termination_listener(on_lost)
        await connection.add_listener(channel, callback)
    except BaseException:
        with contextlib.suppress(Exception):
            connection.remove_termination_listener(on_lost)
        with contextlib.suppress(Exception):
            await pool.release(connection, timeout=2)
        raise
    return connection


def closed(connection: asyncpg.Connection) -> bool:
    """Whether a connection held out of the pool (a LISTEN, a session lock) has closed: no query, a look at its state.
    asyncpg gives a pooled connection that closed back to the pool at once, and its proxy then refuses every call."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return True


async def unlisten(
    pool: asyncpg.Pool,
    connection: asyncpg.Connection | None,
    channel: str,
    callback: Callable[..., object],
    on_lost: Callable[..., object],
) -> None:
    if connection is None:
        return
    try:
        # First: asyncpg's reset keeps termination listeners, and this one would fire when the connection, someone
        # else's by then, closes.
        with contextlib.suppress(Exception):
            connection.remove_termination_listener(on_lost)
        # Bounded: an UNLISTEN to a database that stopped answering waited out the 60 s command timeout, and held a
        # service's shutdown past its grace period. A release that times out terminates the connection.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await connection.remove_listener(channel, callback)
    finally:
        # Cancelled inside the UNLISTEN (a service stopping) too: a connection never given back held pool.close()
        # for ever.
        with contextlib.suppress(Exception):
            await pool.release(connection, timeout=2)
