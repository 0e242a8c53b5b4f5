"""Roster submit benchmark: 10,000- and 100,000-line rosters against the real local stack; latency, rows/s, RSS."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench._results import save

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "var" / "bench" / "invitations_submit.json"
# (lines, target for the 202 in seconds) from issue #4; a timed test would be flaky, a benchmark reports.
RUNS = ((10_000, 0.5), (100_000, 5.0))
SETTLE_SECONDS = 60.0  # how long to wait for a batch's outcomes before the next run (bounded, never forever)


@dataclass
class Result:
    lines: int
    status: int
    submit_seconds: float
    rows_per_second: float
    target_seconds: float
    meets_target: bool
    patients_ready: int
    published_seconds: float | None  # until the outbox is empty: every InviteRequested acknowledged by the broker
    outcomes_seconds: float | None  # until no row is queued: every DeliveryOutcome written back
    # Then "send again to those not on CollabKare" (nobody in these rosters is registered): its answer and latency.
    resend_status: int | None
    resend_seconds: float | None
    rss_before_mb: float
    rss_after_mb: float
    service_cpu_seconds: float  # the invitations process, during the submit
    database_cpu_seconds: float  # every PostgreSQL process, during the submit
    machine_busy_percent: float  # all cores, during the submit: other load on the box shows here


def roster(lines: int, seed: int) -> str:
    """Addresses unique to the run, a note on one line in ten, and a few invalid and duplicate lines."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        if i % 997 == 3:
            out.append("not an address")
        elif i % 1009 == 5 and out:
            out.append(out[rng.randrange(len(out))].split(",")[0].upper())
        elif i % 10 == 0:
            out.append(f"patient.{seed}.{i}@clinic{i % 37}.example.org, Welcome to Riverside, patient {i}!")
        else:
            out.append(f"patient.{seed}.{i}@example{i % 50}.com")
    return "\n".join(out)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def postgres_pids(data_dir: Path | None) -> list[int]:
    """The stack's own PostgreSQL processes (other clusters may run on the box); none for an external one."""
    if data_dir is None:
        return []
    try:
        postmaster = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
        return [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]
    except (OSError, ValueError, psutil.Error):
        return []


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def wait(condition: Any, timeout: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.1)
    return None


def outbox_rows(dsn: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM invitations.outbox"))
        finally:
            await connection.close()

    return asyncio.run(count())


@dataclass(frozen=True)
class Target:
    client: httpx.Client
    url: str
    jwt_secret: str
    pid: int
    dsn: str  # the invitations role's own database URL, to watch its outbox drain
    postgres_dir: Path | None  # the embedded cluster's data directory (None: an external PostgreSQL)


def run(target: Target, lines: int, limit: float, seed: int) -> Result:
    from services.runtime.auth import mint_token

    client, url, pid = target.client, target.url, target.pid
    practice = uuid.uuid4()  # each run its own practice, as two practices' rosters would be
    token = mint_token(target.jwt_secret, "bench", ["practice_manager"], practice_id=practice)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"roster": roster(lines, seed), "default_note": "We look forward to seeing you."}).encode()
    before = rss_mb(pid)
    service_cpu, database_cpu = cpu_seconds([pid]), cpu_seconds(postgres_pids(target.postgres_dir))
    psutil.cpu_percent()
    started = time.perf_counter()
    response = client.post(f"{url}/v1/practices/{practice}/invite-batches", content=body, headers=headers)
    took = time.perf_counter() - started
    busy = psutil.cpu_percent()
    service_cpu = cpu_seconds([pid]) - service_cpu
    database_cpu = cpu_seconds(postgres_pids(target.postgres_dir)) - database_cpu
    answer = response.json()
    batch = f"{url}/v1/practices/{practice}/invite-batches/{answer.get('batch_id')}"

    def outbox_empty() -> bool:
        return outbox_rows(target.dsn) == 0

    def settled() -> bool:
        return bool(client.get(batch, headers=headers).json().get("done"))

    published = wait(outbox_empty, SETTLE_SECONDS) if response.status_code == 202 else None
    outcomes = wait(settled, SETTLE_SECONDS) if response.status_code == 202 else None
    resend_status = resend_seconds = None
    if outcomes is not None:
        started = time.perf_counter()
        resend_status = client.post(f"{batch}/resend-not-on-platform", headers=headers).status_code
        resend_seconds = round(time.perf_counter() - started, 2)
    return Result(
        lines=lines,
        status=response.status_code,
        submit_seconds=round(took, 3),
        rows_per_second=round(lines / took),
        target_seconds=limit,
        meets_target=response.status_code == 202 and took <= limit,
        patients_ready=int(answer.get("patients_ready", 0)),
        published_seconds=round(took + published, 2) if published is not None else None,
        outcomes_seconds=round(took + (published or 0) + outcomes, 2) if outcomes is not None else None,
        resend_status=resend_status,
        resend_seconds=resend_seconds,
        rss_before_mb=round(before, 1),
        rss_after_mb=round(rss_mb(pid), 1),
        service_cpu_seconds=round(service_cpu, 2),
        database_cpu_seconds=round(database_cpu, 2),
        machine_busy_percent=busy,
    )


def table(results: list[Result]) -> str:
    head = f"{'lines':>8} {'status':>6} {'submit s':>9} {'rows/s':>8} {'target s':>8} {'ok':>3} "
    head += f"{'published s':>11} {'outcomes s':>10} {'resend':>6} {'resend s':>8} "
    head += f"{'RSS before MB':>13} {'RSS after MB':>12} "
    head += f"{'service cpu s':>13} {'db cpu s':>8} {'box busy %':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.lines:>8,} {r.status:>6} {r.submit_seconds:>9.3f} {r.rows_per_second:>8,} {r.target_seconds:>8.1f} "
            f"{'yes' if r.meets_target else 'NO':>3} {_opt(r.published_seconds):>11} {_opt(r.outcomes_seconds):>10} "
            f"{r.resend_status or '-':>6} {_opt(r.resend_seconds):>8} "
            f"{r.rss_before_mb:>13.1f} {r.rss_after_mb:>12.1f} "
            f"{r.service_cpu_seconds:>13.2f} {r.database_cpu_seconds:>8.2f} {r.machine_busy_percent:>10.0f}"
        )
    return "\n".join(lines)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.invitations_submit",
        description="The 202 of 10,000- and 100,000-line rosters on the local stack, then of resending their rows.",
    )
    parser.parse_args(argv)
    from collabkare.stack.local import local_stack
    from collabkare.stack.ports import free_port

    # Its own directory and ports: never collides with a `make up` running beside it.
    os.environ["COLLABKARE_STACK_DIR"] = str(ROOT / "var" / f"bench-{os.getpid()}")
    for name in ("CONNECTIONS", "INVITATIONS", "NOTIFIER"):
        os.environ[f"{name}_PORT"] = str(free_port())
    print("starting the local stack…", flush=True)
    with local_stack() as stack, httpx.Client(timeout=120) as client:
        dsn = stack.service_env["invitations"]["DATABASE_URL"]
        postgres = stack.infra.postgres
        target = Target(
            client,
            stack.urls["invitations"],
            stack.jwt_secret,
            stack.supervisor.pid("invitations"),
            dsn,
            postgres.data_dir if postgres is not None else None,
        )
        # A service in use is warm (imports done, statements prepared, worker threads started): so is this one.
        run(target, 100, 5.0, seed=99)
        results = [run(target, lines, limit, seed) for seed, (lines, limit) in enumerate(RUNS)]
    report = table(results)
    print(report, flush=True)
    load = os.getloadavg()
    print(f"cpu count {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    save(OUTPUT, {"results": [asdict(r) for r in results], "load_average": load})
    # A measurement: a missed target is printed, not a failure; a submit or resend that is not accepted is one.
    return 0 if all(r.status == 202 and r.resend_status in (None, 202) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
