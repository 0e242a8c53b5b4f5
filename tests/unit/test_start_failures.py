"""A service whose database does not answer at start ends at once, saying which and where in one log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from collabkare.stack.ports import free_port
from services.runtime.serve import QuietStartFailure
from services.runtime.service import DependencyUnavailable

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "do-not-log-me"


@pytest.mark.parametrize("service", ["connections", "invitations", "notifier"])
def test_an_unreachable_database_is_one_line_naming_it_and_a_clean_exit(service: str) -> None:
    database = f"127.0.0.1:{free_port()}"  # nothing listens there: refused at once
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KAFKA_", "SMTP_", "JWT_"))},
        "DATABASE_URL": f"postgresql://{service}:{PASSWORD}@{database}/collabkare",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "JWT_SECRET": "x" * 32,
        "PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        "SERVICE_NAME": f"{service}-eu-7",
    }
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and PASSWORD not in output, output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is a JSON log line
    [failure] = [line for line in lines if line["event"] == "service.start_failed"]
    assert failure["level"] == "error"
    assert (failure["dependency"], failure["address"]) == ("database", database)
    assert failure["error"].startswith("ConnectionRefusedError"), failure
    errors = [line["event"] for line in lines if line["level"] == "error"]
    assert errors == ["service.start_failed", "Application startup failed. Exiting."], errors
    # SERVICE_NAME names every line, those logged once the app starts too (they said `connections` before).
    assert {line["service"] for line in lines} == {f"{service}-eu-7"}, lines


async def _start_failure_message(error: Exception) -> str:
    """What uvicorn would log of a start-up that raised `error`."""

    @asynccontextmanager
    async def failing(_: Starlette) -> AsyncIterator[None]:
        raise error
        yield

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    with pytest.raises(type(error)):
        await QuietStartFailure(Starlette(lifespan=failing))({"type": "lifespan", "state": {}}, receive, send)
    [message] = sent
    assert message["type"] == "lifespan.startup.failed"
    return str(message["message"])


async def test_only_a_named_dependency_loses_the_traceback() -> None:
    """An unforeseen failure (a bug) keeps the traceback that tells where it is."""
    assert await _start_failure_message(DependencyUnavailable("database", "db:5432", OSError("refused"))) == ""
    assert "Traceback" in await _start_failure_message(RuntimeError("a bug"))
