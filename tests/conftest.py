"""Test infrastructure: PostgreSQL, broker and SMTP started once per run; a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings

from collabkare.services import MIGRATION_PLANS as PLANS
from collabkare.stack.infra import Infrastructure, start_infrastructure
from services.runtime.migrations import migrate
from tests.support import ROLE_PASSWORD, ScratchDatabase, new_topics, scratch_database

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "collabkare_test_template"

# No per-example deadline: Hypothesis times each example by the wall clock, so one moment of a slow, shared CI box
# (another process scheduled, a slow disk) failed a property as "Unreliable test timings". Properties, not speed.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


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
    async with scratch_database(infra, template_database) as scratch:
        yield scratch


@pytest.fixture
async def topic_prefix(infra: Infrastructure) -> str:
    """Every test gets its own topics, so no event of another test reaches its consumers."""
    return await new_topics(infra)
