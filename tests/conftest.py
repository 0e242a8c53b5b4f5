"""Test infrastructure: PostgreSQL, broker and SMTP started once per run; a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from collabkare.services import MIGRATION_PLANS as PLANS
from collabkare.stack.broker import create_topics
from collabkare.stack.infra import Infrastructure, start_infrastructure
from schemas.topics import all_topic_names
from services.runtime.migrations import migrate
from tests.support import ScratchDatabase

ROOT = Path(__file__).resolve().parent.parent
# Service roles get this password so the same fixtures work against an external PostgreSQL.
ROLE_PASSWORD = "collabkare-test"
TEMPLATE = "collabkare_test_template"


@pytest.fixture(scope="session")
def infra() -> Iterator[Infrastructure]:
    workdir = ROOT / "var" / f"test-{os.getpid()}"
    with start_infrastructure(workdir) as started:
        yield started


@pytest.fixture(scope="session")
async def template_database(infra: Infrastructure) -> str:
    """A database with every service's migrations applied; each test copies it (fast, fully isolated)."""
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    url = infra.database_url_for(TEMPLATE)
    for plan in PLANS.values():
        await migrate(url, plan, role_password=ROLE_PASSWORD)
    return TEMPLATE


@pytest.fixture
async def database(infra: Infrastructure, template_database: str) -> AsyncIterator[ScratchDatabase]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    finally:
        await admin.close()
    yield ScratchDatabase(infra, name, ROLE_PASSWORD)
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def topic_prefix(infra: Infrastructure) -> str:
    """Every test gets its own topics, so no event of another test reaches its consumers."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(infra.kafka_bootstrap, [(prefix + name, 3) for name in all_topic_names()], timeout=30)
    return prefix
