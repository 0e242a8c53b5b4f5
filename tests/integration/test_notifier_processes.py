"""Two notifier processes in one consumer group share the work and send each email exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from collabkare.stack.infra import Infrastructure
from collabkare.stack.ports import free_port
from services.notifier.subscribers import TOPICS
from tests.integration.notifier_harness import (
    Notifier,
    directory_applied,
    invite,
    notifier_env,
    patient,
    practice,
    scratch,
    unique_email,
)
from tests.support import PARTITIONS

# Processes start, join one group and stop one after another: more than the suite's default 120 s on a slow box.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
INVITES = 300
_SENT = re.compile(r'^emails_total\{kind="invite",outcome="sent"\} ([0-9.e+]+)$', re.MULTILINE)
_ASSIGNED = re.compile(r'^kafka_partitions_assigned\{group="notifier"\} ([0-9.e+]+)$', re.MULTILINE)
_CONSUMED = re.compile(r'^events_consumed_total\{[^}]*event_type="PatientRegistered"[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass
class NotifierProcess:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def notifier_processes(env: dict[str, str], count: int, logs: Path) -> Iterator[list[NotifierProcess]]:
    """`python -m services.notifier` `count` times (logs named by `logs`' files already there, so that several
    calls share a directory); SIGCONT, SIGTERM (then SIGKILL) at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    running = []
    try:
        for _ in range(count):
            port = free_port()
            log = (logs / f"notifier-{len(list(logs.glob('notifier-*.log')))}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.notifier"],
                    cwd=ROOT,
                    env={**os.environ, **env, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            running.append(NotifierProcess(f"http://127.0.0.1:{port}", processes[-1]))
        yield running
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a test may have frozen it
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


async def _metric(http: httpx.AsyncClient, url: str, pattern: re.Pattern[str]) -> float:
    text = (await http.get(f"{url}/metrics")).text
    return sum(float(value) for value in pattern.findall(text))


async def _until(
    what: str, timeout: float, check: Callable[[], Awaitable[bool]], detail: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what} {detail()}"
        await asyncio.sleep(0.2)


async def test_two_processes_in_one_group_send_each_email_once(
    infra: Infrastructure, template_database: str, tmp_path: Path
) -> None:
    async with scratch(infra, template_database) as (database, prefix, admin):
        notifier = Notifier(database, prefix, admin)
        # Small claims, so that both senders take turns on the shared table.
        env = notifier_env(database, prefix, sender_batch_size=16, log_level="WARNING")
        clinic = practice("Twin Process Clinic")
        assert clinic.practice_id is not None
        emails = [unique_email("twin") for _ in range(INVITES)]
        with notifier_processes(env, 2, tmp_path) as processes:
            urls = [running.url for running in processes]
            async with httpx.AsyncClient(timeout=5) as http:

                async def both_ready() -> bool:
                    try:
                        return all([(await http.get(f"{url}/readyz")).status_code == 200 for url in urls])
                    except httpx.HTTPError:
                        return False

                await _until("both processes are ready", 40, both_ready)
                await notifier.publish(clinic)

                async def both_consuming() -> bool:
                    # Patients in small waves until each process has applied some, so both hold partitions.
                    # Waves of fresh addresses, not the invited ones, keep coming for as long as it takes:
                    # a process that joins the group late still gets some.
                    await notifier.publish(*(patient(unique_email("wave")) for _ in range(20)))
                    return all([await _metric(http, url, _CONSUMED) > 0 for url in urls])

                await _until("both processes consume", 60, both_consuming)
                owned: list[float] = []

                async def partitions_shared() -> bool:
                    # What an operator alerts on (a group whose pods own nothing): here every partition, once.
                    owned[:] = [await _metric(http, url, _ASSIGNED) for url in urls]
                    return sum(owned) == PARTITIONS * len(TOPICS) and all(owned)

                await _until("the processes share the partitions", 30, partitions_shared, lambda: f"(own {owned})")
                await notifier.publish(*(patient(email) for email in emails))
                await directory_applied(admin, emails, clinic.practice_id, timeout=30)

                invites = [invite(clinic.practice_id, email) for email in emails]
                await notifier.publish(*invites)
                rows = await notifier.deliveries([event.event_id for event in invites], timeout=60)
                sent_by: list[float] = []

                async def every_email_counted() -> bool:
                    # A process counts a batch once its transaction has returned, a moment after the rows show
                    # `sent` (synchronous_commit is off in the embedded database): polled, not read once.
                    sent_by[:] = [await _metric(http, url, _SENT) for url in urls]
                    return sum(sent_by) >= INVITES

                await _until("the processes' metrics count every email", 15, every_email_counted)

        assert collections.Counter(row["status"] for row in rows) == {"sent": INVITES}
        copies = collections.Counter(len(notifier.caught_raw(event.event_id)) for event in invites)
        assert copies == {1: INVITES}, "each Message-ID exactly once at the sink"
        assert sum(sent_by) == INVITES and all(count > 0 for count in sent_by), f"sent per process: {sent_by}"
        outcomes = await notifier.outcomes({event.event_id for event in invites}, timeout=30)
        assert len(outcomes) == INVITES
