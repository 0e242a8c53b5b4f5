"""A service whose broker is away keeps trying, saying so in warnings, and leaves no client unclosed behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from collabkare.stack.ports import free_port
from tests.support import ScratchDatabase, service_env

ROOT = Path(__file__).resolve().parents[2]
# The first module to need the session's infrastructure: its start (PostgreSQL, broker, migrations) counts too.
pytestmark = pytest.mark.timeout(300)


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _count(events: list[dict[str, Any]], name: str) -> int:
    return sum(event["event"] == name for event in events)


def test_no_unclosed_producer_while_the_broker_is_away(database: ScratchDatabase, tmp_path: Path) -> None:
    """Each failed start of the consumers left FastStream's producer unclosed: aiokafka logged "Unclosed
    AIOKafkaProducer" at error level once per attempt, next to the expected warnings."""
    nobody = f"127.0.0.1:{free_port()}"
    env = service_env(database, "connections", "away.", kafka_bootstrap_servers=nobody, kafka_send_timeout_seconds=1)
    port = free_port()
    log = tmp_path / "connections.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.connections"],
            cwd=ROOT,
            env={**os.environ, **env, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(200):  # bounded: 40 s of polls
            events = _events(log)
            if _count(events, "consumer.start_failed") >= 4 and _count(events, "outbox.publish_failed") >= 2:
                break
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        else:
            pytest.fail(f"too few attempts in 40 s:\n{log.read_text()}")
        # The API serves meanwhile, and the metrics say that the consumer owns nothing (what an operator alerts on).
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'kafka_partitions_assigned{group="connections"} 0.0' in metrics, metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    events = _events(log)
    assert not [e for e in events if "Unclosed" in e["event"]], log.read_text()
    # At error level only aiokafka's own line per failed connection, which names the address.
    errors = {e["event"] for e in events if e["level"] == "error"}
    assert errors == {f'Unable connect to "{nobody}": [Errno 111] Connection refused'}, errors
    assert _count(events, "service.stopped") == 1
