"""Benchmark: events/s of the outbox relay (claim a batch, publish with acks=all, delete, commit) on this box.

`python -m bench.outbox_relay [--count N] [--batch-size B] [--profile]` starts its own PostgreSQL and broker,
stages N InviteRequested-sized rows in an outbox with COPY (as a roster submit does), then times one
`OutboxRelay` from start until the outbox is empty. The design measured 30-40k events/s for a bare relay on
this machine; the relay is on the path of every roster row twice (InviteRequested, DeliveryOutcome).
Prints the figures and writes var/bench/outbox_relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench._notifier_support import cpu_snapshot
from bench._results import save
from collabkare.stack.broker import create_topics
from collabkare.stack.infra import start_infrastructure
from schemas.topics import TOPICS
from services.invitations.app import MIGRATIONS
from services.runtime.database import create_pool
from services.runtime.migrations import migrate
from services.runtime.outbox import add_records
from services.runtime.relay import OutboxRelay

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "var" / "bench" / "outbox_relay.json"
PROFILE = ROOT / "var" / "bench" / "outbox_relay.prof"
SCHEMA = "invitations"
TOPIC = "invitations.v1"


def _records(count: int) -> list[tuple[uuid.UUID, str, str, str, bytes]]:
    """Rows shaped like a roster's InviteRequested: ~700 bytes of JSON, a unique key each."""
    payload = b'{"event_type":"InviteRequested","payload":{"note":"' + b"x" * 600 + b'"}}'
    return [(uuid.uuid4(), TOPIC, str(uuid.uuid4()), "InviteRequested", payload) for _ in range(count)]


async def run(count: int, batch_size: int, profile: bool, workdir: Path) -> dict[str, Any]:
    with start_infrastructure(workdir) as infra:
        database = f"bench_{uuid.uuid4().hex[:8]}"
        admin_url = infra.create_database(database)
        await migrate(admin_url, MIGRATIONS, role_password="bench-relay")  # noqa: S106 - a throwaway local role
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        await create_topics(infra.kafka_bootstrap, [(prefix + TOPIC, TOPICS[TOPIC].partitions)], timeout=30)
        admin = await asyncpg.connect(admin_url)
        async with admin.transaction():
            await add_records(admin, SCHEMA, _records(count))
        await admin.execute(f"ANALYZE {SCHEMA}.outbox")
        pool = await create_pool(admin_url, "bench-relay", max_size=4)
        relay = OutboxRelay(pool, SCHEMA, infra.kafka_bootstrap, lambda name: prefix + name, batch_size=batch_size)
        profiler = cProfile.Profile() if profile else None
        cpu_before = cpu_snapshot(infra)
        process_before = time.process_time()
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        await relay.start()
        try:
            while relay.published < count:
                if time.perf_counter() - started > 300:
                    raise SystemExit(f"benchmark: the relay published {relay.published} of {count} in 300 s")
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
        finally:
            if profiler:
                profiler.disable()
                profiler.dump_stats(PROFILE)
            await relay.stop()
        relay_cpu = time.process_time() - process_before
        cpu_after = cpu_snapshot(infra)
        left = await admin.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox")
        await admin.close()
        await pool.close()
    return {
        "count": count,
        "batch_size": batch_size,
        "seconds": round(elapsed, 3),
        "events_per_second": round(count / elapsed),
        "left_in_outbox": left,
        "cpu_seconds": {
            "relay (this process)": round(relay_cpu, 2),
            **{name: round(cpu_after.get(name, 0) - before, 2) for name, before in cpu_before.items()},
        },
        "design_reference_events_per_second": "30,000-40,000 (the design's measurement of a bare relay)",
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_relay")
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help=f"cProfile this process into {PROFILE.name}")
    args = parser.parse_args(argv)
    workdir = ROOT / "var" / f"bench-relay-{os.getpid()}"
    # uvloop: the event loop the services run on under uvicorn
    result = uvloop.run(run(args.count, args.batch_size, args.profile, workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    cpu = ", ".join(f"{name} {seconds}s" for name, seconds in result["cpu_seconds"].items())
    print(
        f"outbox relay: {result['count']} events in batches of {result['batch_size']}: {result['seconds']} s, "
        f"{result['events_per_second']} events/s (the design: 30-40k for a bare relay); "
        f"left in the outbox: {result['left_in_outbox']}\n  CPU: {cpu}"
    )
    save(RESULT, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
