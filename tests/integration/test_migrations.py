"""migrate: own role and schema per service, idempotent, safe when several run at once."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from services.runtime.migrations import MigrationPlan, migrate, scram_verifier
from tests.conftest import PLANS, ROLE_PASSWORD
from tests.support import ScratchDatabase, lock_waiters


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


async def test_a_role_another_database_uses_is_named_before_its_password_changes(infra) -> None:  # type: ignore[no-untyped-def]
    """Found by an operator: a second installation migrated on the same server set the first one's role password
    (roles are server-wide), and the first one's services failed every restart. The Job's log now says so."""
    first, second = await _fresh_database(infra), await _fresh_database(infra)
    await migrate(first, PLANS["connections"], role_password=ROLE_PASSWORD)
    with capture_logs() as logs:
        await migrate(second, PLANS["connections"], role_password=ROLE_PASSWORD)
        await migrate(second, PLANS["connections"])  # no password given: nothing changes, nothing to say
    [shared] = [entry for entry in logs if entry["event"] == "migration.role_shared"]
    assert shared["role"] == "connections" and first.rsplit("/", 1)[1] in shared["databases"]


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
    try:
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip().startswith("notifier: 0000_messaging")
        # The embedded cluster checks passwords: the role logs in with the one from the environment.
        role_url = infra.database_url_for(url.rsplit("/", 1)[1], user="notifier", password="from-the-environment")
        assert asyncio.run(_logs_in(role_url))
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert again.stdout.strip() == "notifier: up to date"
        # Found by an operator's review: a Job whose database was away or unknown printed a 54-line traceback.
        away = "postgresql://svc:secret-pw@127.0.0.1:1/collabkare"  # (an unknown database reads the same)
        failed = subprocess.run(
            command, env={**env, "DATABASE_URL": away}, capture_output=True, text=True, timeout=60, check=False
        )
        [line] = failed.stderr.splitlines()
        logged = json.loads(line)
        assert failed.returncode == 3 and logged["event"] == "migrate.failed" and logged["service"] == "notifier"
        assert logged["database"] == "127.0.0.1:1/collabkare" and "secret-pw" not in line and "Traceback" not in line
    finally:
        # Roles are the cluster's: the other tests' notifiers log in with the suite's password.
        asyncio.run(migrate(url, PLANS["notifier"], role_password=ROLE_PASSWORD))


async def _logs_in(url: str) -> bool:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return bool(await connection.fetchval("SELECT current_user = 'notifier'"))
    finally:
        await connection.close()


async def test_the_role_password_is_sent_as_a_scram_verifier(infra) -> None:  # type: ignore[no-untyped-def]
    """A statement log (log_statement = ddl) keeps ALTER ROLE as sent: it carries the verifier, not the password;
    and the verifier is the one PostgreSQL itself computes for that password and salt."""
    url = await _fresh_database(infra)
    password = f"pw-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="printable ASCII"):
        scram_verifier("pässwort")  # SASLprep would be PostgreSQL's to apply: never sent in clear instead
    await migrate(url, PLANS["connections"], role_password=password)
    admin = await asyncpg.connect(url)
    try:
        stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'connections'")
        await admin.execute("SET password_encryption = 'scram-sha-256'")
        probe = f"scram_probe_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {probe} PASSWORD '{password}'")
        theirs = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", probe)
        await admin.execute(f"DROP ROLE {probe}")
    finally:
        await admin.close()
        # Roles are the cluster's: the other tests' services log in as `connections` with the suite's password.
        await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored
    salt = base64.b64decode(theirs.split("$")[1].split(":")[1])
    assert scram_verifier(password, salt=salt) == theirs, "the same verifier as PostgreSQL computes"


async def test_a_step_waits_for_its_locks_only_briefly_and_tries_again(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A migration queued behind a running service's transaction gives up its lock request after the lock timeout
    (so the service's other queries are not stalled behind it) and is applied once that transaction ends."""
    url = await _fresh_database(infra)
    await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    later = MigrationPlan("connections", tmp_path)  # the applied steps, and one more
    holder = await asyncpg.connect(url)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT count(*) FROM connections.connection_requests")  # ACCESS SHARE until it ends
    (tmp_path / "9999_add_a_column.sql").write_text("ALTER TABLE connection_requests ADD COLUMN lock_test int;")
    try:
        migration = asyncio.create_task(
            migrate(url, later, lock_timeout_seconds=0.2, lock_attempts=50, lock_retry_seconds=0.1)
        )
        reader = await asyncpg.connect(url)  # outside the holder's transaction, which sees one snapshot of activity
        try:
            async with asyncio.timeout(30):  # the ALTER asks for its lock, then gives the request up
                while await lock_waiters(reader) < 1:
                    await asyncio.sleep(0.02)
                while await lock_waiters(reader) > 0:
                    await asyncio.sleep(0.02)
            assert not migration.done(), "the step cannot have its lock while the transaction holds the table"
            # A query arriving meanwhile is not stuck behind the waiting ALTER: it gives its request up and retries.
            async with asyncio.timeout(30):  # a bound, not a speed: stuck, it would wait for the rollback below
                await reader.fetchval("SELECT count(*) FROM connections.connection_requests")
        finally:
            await reader.close()
        await transaction.rollback()
        async with asyncio.timeout(30):
            applied = await migration
        assert applied == ["9999_add_a_column"]
    finally:
        await holder.close()


async def test_an_index_step_builds_concurrently_while_the_table_takes_writes(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A plain CREATE INDEX stops every write to its table until it is built (notifier's 0010 on a large deliveries
    table). A step marked to run outside a transaction builds concurrently; a build stopped by the lock timeout
    leaves an invalid index, which the next try drops and builds again."""
    url = await _fresh_database(infra)
    await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    later = MigrationPlan("connections", tmp_path)
    (tmp_path / "9999_index.sql").write_text(
        "-- migrate: without a transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS requests_by_message ON connection_requests (message);\n"
    )
    index = (
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = 'requests_by_message'"
    )
    holder, writer = await asyncpg.connect(url), await asyncpg.connect(url)
    transaction = holder.transaction(isolation="repeatable_read")  # a snapshot the build must wait out
    await transaction.start()
    await holder.execute("SELECT count(*) FROM connections.connection_requests")
    try:
        with capture_logs() as logs:
            migration = asyncio.create_task(
                migrate(url, later, lock_attempts=500, lock_retry_seconds=0.05, concurrent_wait_seconds=0.2)
            )
            async with asyncio.timeout(30):  # a try timed out, and the next one dropped what it left
                while not any(e["event"] == "migration.invalid_index_dropped" for e in logs):
                    await asyncio.sleep(0.02)
            # Writes go on while the build waits.
            async with asyncio.timeout(10):  # a bound, not a speed
                await writer.execute("UPDATE connections.connection_requests SET message = message")
            assert not migration.done() and await writer.fetch(index) != []
            await transaction.rollback()
            async with asyncio.timeout(60):
                assert await migration == ["9999_index"]
        assert [r["indisvalid"] for r in await writer.fetch(index)] == [True]
    finally:
        await holder.close()
        await writer.close()


async def test_notifier_0012_keeps_each_patients_newest_address_only(infra) -> None:  # type: ignore[no-untyped-def]
    """Before a registration dropped the address a patient changed from, the directory kept both, and both were
    emailed: 0012 drops the older ones (a tie keeps the greater address, as a registration decides now)."""
    url = await _fresh_database(infra)
    await migrate(url, PLANS["notifier"], role_password=ROLE_PASSWORD)
    moved, tied, alone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = [
        ("old@example.com", moved, "2026-01-01"),
        ("new@example.com", moved, "2026-02-01"),
        ("a@example.com", tied, "2026-03-01"),
        ("b@example.com", tied, "2026-03-01"),
        ("only@example.com", alone, "2026-01-01"),
    ]
    connection = await asyncpg.connect(url)
    try:
        await connection.executemany(
            "INSERT INTO notifier.patients (email, patient_id, locale, registered_at)"
            " VALUES ($1, $2, 'en', $3::text::date)",
            rows,
        )
        step = (PLANS["notifier"].directory / "0012_one_address_per_patient.sql").read_text()
        await connection.execute("SET search_path TO notifier")
        await connection.execute(step)
        kept = await connection.fetch("SELECT email FROM notifier.patients ORDER BY email")
    finally:
        await connection.close()
    assert [r["email"] for r in kept] == ["b@example.com", "new@example.com", "only@example.com"]


async def test_notifier_0014_makes_each_patients_address_their_registration(infra) -> None:  # type: ignore[no-untyped-def]
    """The directory's rows become the registrations it is derived from: one per patient, name and language kept."""
    url = await _fresh_database(infra)
    await migrate(url, PLANS["notifier"], role_password=ROLE_PASSWORD)
    ann, bob = uuid.uuid4(), uuid.uuid4()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("DELETE FROM notifier.registrations")  # as before 0014: only the directory
        await connection.executemany(
            "INSERT INTO notifier.patients (email, patient_id, display_name, locale, registered_at)"
            " VALUES ($1, $2, $3, $4, '2026-01-01')",
            [("ann@example.com", ann, "Ann", "es"), ("bob@example.com", bob, None, "en")],
        )
        step = (PLANS["notifier"].directory / "0014_registrations.sql").read_text()
        await connection.execute("SET search_path TO notifier")
        copy = step.split("-- Each patient has one address")[1].split("\n", 1)[1]  # its last statement: the copy
        await connection.execute(copy)
        rows = await connection.fetch(
            "SELECT patient_id, email, display_name, locale FROM notifier.registrations ORDER BY email"
        )
    finally:
        await connection.close()
    assert [tuple(r) for r in rows] == [(ann, "ann@example.com", "Ann", "es"), (bob, "bob@example.com", None, "en")]


async def test_connections_audit_actions_are_checked_over_every_row(infra) -> None:  # type: ignore[no-untyped-def]
    """0003 adds the check unvalidated (no scan under its lock); 0005 validates it: none is left half-done."""
    url = await _fresh_database(infra)
    await migrate(url, PLANS["connections"], role_password=ROLE_PASSWORD)
    connection = await asyncpg.connect(url)
    try:
        validated = await connection.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'audit_log_action_check'"
            " AND conrelid = 'connections.audit_log'::regclass"
        )
    finally:
        await connection.close()
    assert validated is True
