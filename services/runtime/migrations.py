"""Applies a service's plain-SQL migrations into its own schema, owned by its own role, once and safely."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.runtime.logging import get_logger

log = get_logger(__name__)
MESSAGING_SQL = Path(__file__).parent / "sql" / "messaging.sql"


@dataclass(frozen=True)
class MigrationPlan:
    """What `migrate` needs to know about one service."""

    schema: str  # also the name of the service's database role
    directory: Path  # NNNN_what.sql files, applied in name order

    def steps(self) -> list[tuple[str, str]]:
        """(version, sql) pairs: the shared messaging tables first, then the service's own files."""
        quoted = f'"{self.schema}"'
        messaging = MESSAGING_SQL.read_text().format(schema=quoted, channel=outbox_channel(self.schema))
        files = sorted(self.directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
        return [("0000_messaging", messaging), *((f.stem, f.read_text()) for f in files)]


def outbox_channel(schema: str) -> str:
    return f"{schema}_outbox"


async def migrate(admin_dsn: str, plan: MigrationPlan, role_password: str | None = None) -> list[str]:
    """Create the role and schema if missing and apply pending steps; returns the versions applied.

    Safe to run from several processes at once: a session advisory lock per schema serialises them,
    and each step runs in its own transaction together with its bookkeeping row.
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
            async with connection.transaction():
                await connection.execute(f'SET LOCAL ROLE "{plan.schema}"')
                await connection.execute(f'SET LOCAL search_path TO "{plan.schema}"')
                await connection.execute(sql)
                await connection.execute(
                    f'INSERT INTO "{plan.schema}".schema_migrations (version) VALUES ($1)', version
                )
            log.info("migration.applied", schema=plan.schema, version=version)
            done.append(version)
        return done
    finally:
        await connection.close()


async def _ensure_role_and_schema(connection: asyncpg.Connection, schema: str, password: str | None) -> None:
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", schema)
    if not exists:
        # Roles are cluster-wide: another database's migration may create it between our check and here.
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await connection.execute(f'CREATE ROLE "{schema}" LOGIN')
    if password is not None:
        await connection.execute(f'ALTER ROLE "{schema}" PASSWORD {_literal(password)}')
    await connection.execute(f'GRANT "{schema}" TO CURRENT_USER')
    await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{schema}"')
    await connection.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC')
    await connection.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
        "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    await connection.execute(f'ALTER TABLE "{schema}".schema_migrations OWNER TO "{schema}"')


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
