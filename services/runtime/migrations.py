"""Applies a service's plain-SQL migrations into its own schema, owned by its own role, once and safely."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import random
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.runtime.logging import get_logger

log = get_logger(__name__)
SQL = Path(__file__).parent / "sql"
# Steps every service shares, applied before its own files; appended to, never edited or reordered.
SHARED_STEPS = (("0000_messaging", "messaging.sql"), ("0000_messaging_inbox_applied_at", "inbox_applied_at.sql"))


@dataclass(frozen=True)
class MigrationPlan:
    """What `migrate` needs to know about one service."""

    schema: str  # also the name of the service's database role
    directory: Path  # NNNN_what.sql files, applied in name order

    def versions(self) -> list[str]:
        """Every step's version, in order: what a database must have applied for this code to run on it."""
        files = sorted(self.directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
        return [*(version for version, _ in SHARED_STEPS), *(f.stem for f in files)]

    def steps(self) -> list[tuple[str, str]]:
        """(version, sql) pairs: the shared messaging tables first, then the service's own files."""
        names = {"schema": f'"{self.schema}"', "channel": outbox_channel(self.schema)}
        shared = [(version, (SQL / name).read_text().format(**names)) for version, name in SHARED_STEPS]
        files = sorted(self.directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
        return [*shared, *((f.stem, f.read_text()) for f in files)]


def outbox_channel(schema: str) -> str:
    return f"{schema}_outbox"


# A step waits at most this long for a table lock, then rolls back and tries again later: an ALTER TABLE queued
# behind a long transaction of a running service would otherwise stall every later query on that table.
LOCK_TIMEOUT_SECONDS = 1.0
LOCK_ATTEMPTS = 60
LOCK_RETRY_SECONDS = 2.0  # with jitter: two migrations of one table do not retry in step
# A step whose file starts with this line runs outside a transaction, as one statement: CREATE INDEX CONCURRENTLY
# cannot run inside one, and an index built without it blocks every write to its table while it builds (a long
# stall on a large table of a running service). Write it `CREATE INDEX CONCURRENTLY IF NOT EXISTS`: a run stopped
# after the build and before its bookkeeping row then finds the index there.
WITHOUT_TRANSACTION = "-- migrate: without a transaction"
# A concurrent index build blocks no writes, but waits for every transaction of the database holding an older
# snapshot (any schema's: a 100,000-row roster's, a backup's): a second would fail it after both table scans, and 60
# such tries could fail the migration Job. It waits this long per try instead: two tries fit in the Job's
# activeDeadlineSeconds (600), each logging `migration.lock_busy` when it gives up.
CONCURRENT_WAIT_SECONDS = 240.0


async def migrate(
    admin_dsn: str,
    plan: MigrationPlan,
    role_password: str | None = None,
    *,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
    lock_attempts: int = LOCK_ATTEMPTS,
    lock_retry_seconds: float = LOCK_RETRY_SECONDS,
    concurrent_wait_seconds: float = CONCURRENT_WAIT_SECONDS,
) -> list[str]:
    """Create the role and schema if missing and apply pending steps; returns the versions applied.

    Safe to run from several processes at once: a session advisory lock per schema serialises them,
    and each step runs in its own transaction together with its bookkeeping row. Safe beside running
    services: a step that cannot get its locks within `lock_timeout_seconds` rolls back and is tried again.
    """
    connection = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await connection.execute("SELECT pg_advisory_lock(hashtext($1))", f"collabkare.migrate.{plan.schema}")
        await _ensure_role_and_schema(connection, plan.schema, role_password)
        applied = {
            row["version"] for row in await connection.fetch(f'SELECT version FROM "{plan.schema}".schema_migrations')
        }
        done = []
        for version, sql in plan.steps():
            if version in applied:
                continue
            for attempt in range(1, lock_attempts + 1):
                try:
                    if sql.startswith(WITHOUT_TRANSACTION):
                        await _apply_alone(connection, plan.schema, version, sql, concurrent_wait_seconds)
                    else:
                        await _apply(connection, plan.schema, version, sql, lock_timeout_seconds)
                    break
                except asyncpg.LockNotAvailableError:
                    if attempt == lock_attempts:
                        raise
                    log.warning("migration.lock_busy", schema=plan.schema, version=version, attempt=attempt)
                    await asyncio.sleep(lock_retry_seconds * random.uniform(0.5, 1.5))
            log.info("migration.applied", schema=plan.schema, version=version)
            done.append(version)
        return done
    finally:
        await connection.close()


async def _apply(connection: asyncpg.Connection, schema: str, version: str, sql: str, lock_timeout: float) -> None:
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
        await connection.execute(f'SET LOCAL ROLE "{schema}"')
        await connection.execute(f'SET LOCAL search_path TO "{schema}"')
        await connection.execute(sql)
        await connection.execute(f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version)


async def _apply_alone(
    connection: asyncpg.Connection, schema: str, version: str, sql: str, lock_timeout: float
) -> None:
    """A concurrent index build waits for the transactions already running; past the lock timeout it stops and
    leaves its index behind, invalid (never used, but kept up to date by every write). This schema's invalid indexes
    are such leftovers (migrations of a schema take turns): dropped before the step runs, or runs again."""
    await connection.execute(f"SET lock_timeout = '{int(lock_timeout * 1000)}ms'")
    await connection.execute(f'SET ROLE "{schema}"')
    await connection.execute(f'SET search_path TO "{schema}"')
    try:
        leftovers = await connection.fetch(
            """
            SELECT c.relname FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND NOT i.indisvalid
            """,
            schema,
        )
        for leftover in leftovers:
            log.warning("migration.invalid_index_dropped", schema=schema, index=leftover["relname"])
            await connection.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{schema}"."{leftover["relname"]}"')
        await connection.execute(sql)
        await connection.execute(f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version)
    finally:
        await connection.execute("RESET lock_timeout; RESET ROLE; RESET search_path")


async def _ensure_role_and_schema(connection: asyncpg.Connection, schema: str, password: str | None) -> None:
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", schema)
    if exists and password is not None:
        await _warn_if_shared(connection, schema)
    if not exists:
        # Roles are cluster-wide: another database's migration may create it between our check and here.
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await connection.execute(f'CREATE ROLE "{schema}" LOGIN')
    if password is not None:
        # The verifier, not the password: a statement log (log_statement = ddl) or pg_stat_statements keeps it.
        await connection.execute(f'ALTER ROLE "{schema}" PASSWORD {_literal(scram_verifier(password))}')
    await connection.execute(f'GRANT "{schema}" TO CURRENT_USER')
    await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{schema}"')
    await connection.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC')
    await connection.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
        "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    await connection.execute(f'ALTER TABLE "{schema}".schema_migrations OWNER TO "{schema}"')


async def _warn_if_shared(connection: asyncpg.Connection, schema: str) -> None:
    """Roles are server-wide: a second installation migrated on the same server sets the password of the first one's
    role, whose services then fail every restart (InvalidPasswordError). Said where the Job's log shows it."""
    elsewhere = await connection.fetch(
        """
        SELECT DISTINCT db.datname FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid
        WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
          AND db.datname <> current_database() AND NOT db.datistemplate
        ORDER BY 1 LIMIT 5
        """,
        schema,
    )
    if elsewhere:
        log.warning(
            "migration.role_shared",
            role=schema,
            databases=[row["datname"] for row in elsewhere],
            hint="roles are server-wide: this password is now theirs too; one installation per PostgreSQL server",
        )


SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for this password (RFC 5802, 7677), computed here.

    PostgreSQL normalises a password with SASLprep before hashing it, which leaves ASCII unchanged; other
    characters are refused rather than sent in clear for the server to normalise.
    """
    if not password.isascii() or not password.isprintable():
        raise ValueError("the role password must be printable ASCII (its SCRAM verifier is computed here)")
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    salt_text, stored_text, server_text = (base64.b64encode(value).decode() for value in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{salt_text}${stored_text}:{server_text}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
