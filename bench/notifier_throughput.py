"""Benchmark: emails/s of the notifier end to end (10,000 invites) against the raw SMTP ceiling of this box.

`python -m bench.notifier_throughput [--count N]` starts its own PostgreSQL, broker and SMTP catcher, runs
the notifier as a process (`python -m services.notifier`), registers N patients and a practice, produces
N InviteRequested and times them until every delivery has its outcome recorded. In the same run and against
the same catcher it measures the ceiling: N pre-built messages pushed over the same number of reused
aiosmtplib connections (SMTP_POOL_SIZE), by the notifier's own send path and by aiosmtplib's sendmail().
Prints a table and writes var/bench/notifier_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench._notifier_support import ceiling, cpu_snapshot, prebuilt_messages, publish, wait_for
from collabkare.seeding import patient_registered, practice_registered
from collabkare.stack.broker import create_topics
from collabkare.stack.infra import Infrastructure, start_infrastructure
from collabkare.stack.ports import free_port
from schemas import Envelope, InviteRequested
from schemas.events import InviteRequestedPayload
from schemas.topics import TOPICS, all_topic_names
from services.notifier.app import MIGRATIONS
from services.notifier.settings import NotifierSettings
from services.runtime.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "var" / "bench" / "notifier_throughput.json"
PROFILE = ROOT / "var" / "bench" / "notifier_throughput.prof"
# `python -m cProfile` never writes its file here: uvicorn re-raises SIGTERM after shutting down. This
# handler, installed first, is the one uvicorn restores and re-raises to.
_PROFILED = """
import cProfile, os, runpy, signal, sys
profile = cProfile.Profile()
def stop(*_):
    profile.disable()
    profile.dump_stats(sys.argv[1])
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
profile.enable()
runpy.run_module("services.notifier", run_name="__main__")
stop()
"""
PASSWORD = "bench-notifier"  # noqa: S105 - the notifier role of a throwaway local database


async def notifier_run(infra: Infrastructure, env: dict[str, str], count: int, profile: bool) -> dict[str, Any]:
    """Start the notifier, seed the directories, then time N invites from produce to recorded outcome."""
    assert infra.supervisor is not None
    command = (
        [sys.executable, "-c", _PROFILED, str(PROFILE)] if profile else [sys.executable, "-m", "services.notifier"]
    )
    admin = await asyncpg.connect(env["BENCH_ADMIN_URL"])
    prefix = env["KAFKA_TOPIC_PREFIX"]
    port = env["PORT"]
    infra.supervisor.start("notifier", command, env=env, cwd=ROOT)
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def ready() -> bool:
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for("the notifier is ready", ready, 60)
        practice = practice_registered(uuid.uuid4(), "Riverside Family Practice")
        emails = [f"patient-{i:05d}-{uuid.uuid4().hex[:6]}@example.com" for i in range(count)]
        patients: list[Envelope] = [
            patient_registered(e, locale="es" if i % 5 == 0 else "en") for i, e in enumerate(emails)
        ]
        await publish(infra.kafka_bootstrap, prefix, [practice, *patients])

        async def seeded() -> bool:
            return int(await admin.fetchval("SELECT count(*) FROM notifier.patients")) >= count

        await wait_for("the patient directory is seeded", seeded, 120)
        assert practice.practice_id is not None
        expires = datetime.now(UTC) + timedelta(days=7)
        invites: list[Envelope] = [
            InviteRequested(
                producer="invitations",
                practice_id=practice.practice_id,
                correlation_id="bench",
                payload=InviteRequestedPayload(
                    invite_id=uuid.uuid4(),
                    email=email,
                    note="Welcome to Riverside - we look forward to seeing you." if i % 2 else None,
                    accept_url=f"https://app.collabkare.example/invites/accept?token={secrets.token_urlsafe(24)}",
                    expires_at=expires,
                    requested_by="bench",
                    line_number=i + 1,
                ),
            )
            for i, email in enumerate(emails)
        ]
        cpu_before = cpu_snapshot(infra)
        commits_before = await _commits(admin)
        started = time.time()
        await publish(infra.kafka_bootstrap, prefix, invites)
        produced = time.time() - started

        async def recorded() -> bool:
            # The open rows through the notifier's small partial index; the full count only once they are 0
            # (a full count every poll would add a sequential scan of the table 50 times a second).
            if await admin.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status IN ('pending', 'sending')"):
                return False
            return int(await admin.fetchval("SELECT count(*) FROM notifier.deliveries")) >= count

        # Polled slowly (each poll is work for PostgreSQL too); the end is when the last outcome was decided.
        await wait_for("every outcome is recorded", recorded, 600, every=0.25)
        last = await admin.fetchval("SELECT max(decided_at) FROM notifier.deliveries")
        elapsed = last.timestamp() - started

        async def published() -> bool:
            return int(await admin.fetchval("SELECT count(*) FROM notifier.outbox")) == 0

        await wait_for("every DeliveryOutcome is published", published, 120, every=0.01)
        drained = time.time() - started
        cpu_after = cpu_snapshot(infra)
        commits = await _commits(admin) - commits_before
        statuses = dict(await admin.fetch("SELECT status, count(*) FROM notifier.deliveries GROUP BY status"))
    finally:
        infra.supervisor.stop("notifier")
        await admin.close()
    return {
        "seconds_to_recorded": round(elapsed, 3),
        "seconds_to_published": round(drained, 3),
        "seconds_producing": round(produced, 3),
        "emails_per_second": round(count / elapsed, 1),
        "statuses": statuses,
        "cpu_seconds": {name: round(cpu_after.get(name, 0) - before, 2) for name, before in cpu_before.items()},
        # Round trips are what cost here (a loopback syscall is tens of µs): how well the notifier batches.
        "database_commits_per_email": round(commits / count, 3),
    }


async def _commits(admin: asyncpg.Connection) -> int:
    """Transactions committed in this database so far (the statistics lag by up to a second, like the run's end)."""
    await admin.execute("SELECT pg_stat_force_next_flush()")
    return int(await admin.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))


async def run(
    count: int, workdir: Path, profile: bool = False, overrides: dict[str, str] | None = None
) -> dict[str, Any]:
    with start_infrastructure(workdir) as infra:
        database = f"bench_{uuid.uuid4().hex[:8]}"
        admin_url = infra.create_database(database)
        await migrate(admin_url, MIGRATIONS, role_password=PASSWORD)
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        topics = [(prefix + name, TOPICS[name].partitions if name in TOPICS else 3) for name in all_topic_names()]
        await create_topics(infra.kafka_bootstrap, topics, timeout=30)
        env = {
            "SERVICE_NAME": "notifier",
            "PORT": str(free_port()),
            "DATABASE_URL": infra.database_url_for(database, user="notifier", password=PASSWORD),
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": prefix,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "SMTP_HOST": infra.smtp_host,
            "SMTP_PORT": str(infra.smtp_port),
            "LOG_LEVEL": "WARNING",
            "BENCH_ADMIN_URL": admin_url,
            **(overrides or {}),
        }
        settings = NotifierSettings.model_validate({k.lower(): v for k, v in env.items() if not k.startswith("BENCH_")})
        messages = prebuilt_messages(settings, count)
        # A fresh catcher runs its first few thousand messages markedly slower; neither side should pay that.
        await ceiling(settings, messages[: min(count, 3000)], "lean")
        print(f"ceiling (notifier send path), {count} pre-built messages ...", flush=True)
        before = await ceiling(settings, messages, "lean")
        print(f"notifier, {count} invites end to end ...", flush=True)
        notifier = await notifier_run(infra, env, count, profile)
        print("ceiling again, and aiosmtplib sendmail() for reference ...", flush=True)
        after = await ceiling(settings, messages, "lean")
        textbook = await ceiling(settings, messages, "sendmail")
        if infra.maildir is not None:
            shutil.rmtree(infra.maildir, ignore_errors=True)  # 40,000 .eml files nobody will read
    best = max(before, after)
    return {
        "count": count,
        "smtp_pool_size": settings.smtp_pool_size,
        "settings": overrides or {},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "notifier": notifier,
        "ceiling_emails_per_second": {
            "before": round(before, 1),
            "after": round(after, 1),
            "sendmail": round(textbook, 1),
        },
        "ratio": round(notifier["emails_per_second"] / best, 3),
        "ratio_vs_mean_ceiling": round(notifier["emails_per_second"] / ((before + after) / 2), 3),
        "ratio_vs_sendmail_loop": round(notifier["emails_per_second"] / textbook, 3),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def table(result: dict[str, Any]) -> str:
    notifier, ceilings = result["notifier"], result["ceiling_emails_per_second"]
    rows = [
        ("notifier end to end (produce -> outcome recorded)", f"{notifier['emails_per_second']:>9.1f}"),
        (
            "  seconds to recorded / to published",
            f"{notifier['seconds_to_recorded']} / {notifier['seconds_to_published']}",
        ),
        ("ceiling: same send path, before / after", f"{ceilings['before']:>9.1f} / {ceilings['after']}"),
        ("aiosmtplib sendmail() loop (reference)", f"{ceilings['sendmail']:>9.1f}"),
        ("ratio notifier / best ceiling", f"{result['ratio']:>9.1%}"),
        ("ratio notifier / mean of the two ceilings", f"{result['ratio_vs_mean_ceiling']:>9.1%}"),
        ("ratio notifier / sendmail loop", f"{result['ratio_vs_sendmail_loop']:>9.1%}"),
    ]
    cpu = ", ".join(f"{name} {seconds}s" for name, seconds in notifier["cpu_seconds"].items())
    lines = [f"notifier throughput, {result['count']} invites, {result['smtp_pool_size']} SMTP connections"]
    lines += [f"  {label:<52} {value}" for label, value in rows]
    lines.append(f"  CPU during the notifier run: {cpu}")
    lines.append(f"  database commits per email: {notifier['database_commits_per_email']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.notifier_throughput")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help=f"cProfile the notifier into {PROFILE.name}")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a notifier setting")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.env)
    workdir = ROOT / "var" / f"bench-notifier-{os.getpid()}"
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args.count, workdir, args.profile, overrides))
    if not args.profile:
        shutil.rmtree(workdir, ignore_errors=True)  # kept when the run failed (or profiled): logs say why
    print(table(result))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
