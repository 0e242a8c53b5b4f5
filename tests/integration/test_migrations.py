"""migrate: own role and schema per service, idempotent, safe when several run at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from services.runtime.migrations import migrate
from tests.conftest import PLANS, ROLE_PASSWORD
from tests.support import ScratchDatabase


async def _fresh_database(infra) -> str:  # type: ignore[no-untyped-def]
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return infra.database_url_for(name)


async def test_second_run_applies_nothing(infra) -> None:  # type: ignore[no-untyped-def]
    url = await _fresh_database(infra)
    first = await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    second = await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    assert first[0] == "0000_messaging"
    assert second == []


async def test_concurrent_runs_apply_each_step_once(infra) -> None:  # type: ignore[no-untyped-def]
    url = await _fresh_database(infra)
    results = await asyncio.gather(*(migrate(url, PLANS["invitations"], role_password=ROLE_PASSWORD) for _ in range(4)))
    applied = [version for result in results for version in result]
    assert sorted(applied) == sorted(set(applied)), "a step was applied twice"
    assert "0000_messaging" in applied
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch('SELECT version FROM "invitations".schema_migrations')
    finally:
        await connection.close()
    assert sorted(r["version"] for r in rows) == sorted(applied)


async def test_schema_belongs_to_its_role_and_no_other(database: ScratchDatabase) -> None:
    own = await asyncpg.connect(database.url_for("connections"))
    try:
        owner = await own.fetchval(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'connections' AND tablename = 'outbox'"
        )
        assert owner == "connections"
        assert await own.fetchval('SELECT count(*) FROM "connections".outbox') == 0
    finally:
        await own.close()

    other = await asyncpg.connect(database.url_for("notifier"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await other.fetchval('SELECT count(*) FROM "connections".outbox')
    finally:
        await other.close()


def test_migrate_command_creates_the_role_and_schema(infra) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    url = infra.create_database(f"cli_{uuid.uuid4().hex[:10]}")
    env = {**os.environ, "DATABASE_URL": url, "NOTIFIER_DB_PASSWORD": "from-the-environment"}
    command = [sys.executable, "-m", "collabkare.cli", "migrate", "notifier"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith("notifier: 0000_messaging")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.stdout.strip() == "notifier: up to date"
