"""End-to-end benchmark: rosters of 1,000, 10,000 and 100,000 rows through the whole local stack.

`python -m bench.e2e_pipeline [--sizes 1000,10000,100000] [--naive-rows 300] [--ceiling-messages 10000]`
starts the local stack (as `make up` does, in its own directory and ports), registers a practice and one
patient per roster address (PatientRegistered produced in bulk; the notifier's directory is waited for),
then for each size: POSTs the roster, polls the batch until every row is final, and checks that every row is
`sent` and that the SMTP catcher caught one email per row. Around the runs, against the same catcher: the
raw SMTP ceiling (pre-built messages over SMTP_POOL_SIZE reused connections, bench._notifier_support) and a
naive baseline (per row: INSERT + COMMIT, publish and wait for the ack, a new SMTP connection per email).
Before the runs, 20 one-line rosters one at a time (a staff member inviting one patient): POST to row final. After
the 10,000-row run, the design contract's bare prototype of the same pipeline (bench._bare_prototype) on the same
stack: the bar, and how much of it the guarantees cost.

Prints a table with the ratios and whether each target of issue #6 is met, and writes var/bench/e2e.json.
A missed target is a measurement, not a failure; the exit status is 1 only when the pipeline itself fails
(a non-202 submit, a 5xx, rows not final in time, an outcome other than `sent`, a missing email).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaProducer

from bench._bare_prototype import bare_prototype
from bench._notifier_support import ceiling, prebuilt_messages
from bench._results import save
from bench._stack_support import (
    RESULTS,
    SERVICES,
    RssSampler,
    admin_url,
    bench_stack,
    caught,
    cpu_seconds,
    format_table,
    load_average,
    mailbox,
    own_cpu_seconds,
    percentile,
    process_pids,
    remove_workdir,
    seed_directory,
)
from collabkare.stack import mailbox as mailbox_file

OUTPUT = RESULTS / "e2e.json"
TARGET_FINAL_SECONDS = 10.0  # 10,000 rows final within
TARGET_CEILING_SHARE = 0.60  # of the raw SMTP ceiling's rate (aim: AIM_CEILING_SHARE)
AIM_CEILING_SHARE = 0.80
TARGET_NAIVE_FACTOR = 15.0
TARGET_RSS_MIB = 300.0  # every service, during the 100,000-row run
TARGET_SIZE, RSS_SIZE = 10_000, 100_000
WARM_UP_ROWS = 200
ONE_ROW_ROSTERS = 20  # one-line rosters, one at a time: how long a single invite takes to show its outcome


@dataclass
class Run:
    rows: int
    status: int
    submit_seconds: float
    final_seconds: float | None  # first poll that saw every row final (poll interval: poll_seconds)
    poll_seconds: float
    rows_per_second: float | None
    emails: int  # caught by the SMTP catcher during the run
    emails_seconds: float | None  # from the submit to the last email caught
    emails_per_second: float | None
    counts: dict[str, int]
    server_errors: int
    rss_mib: dict[str, dict[str, float]]
    cpu_seconds: dict[str, float]  # per process (with children) during the run; "bench" is this process
    load_average_before: list[float]
    machine_busy_percent: float  # all cores during the run, whoever used them (other work on the box shows here)
    problems: list[str] = field(default_factory=list)


def roster(rows: int, tag: str) -> tuple[str, list[str]]:
    """Unique addresses, a personal note (with commas) on one line in ten; the addresses to register."""
    emails = [f"e2e.{tag}.{i}@example{i % 50}.com" for i in range(rows)]
    lines = [f"{e}, Welcome, {i}, to Riverside" if i % 10 == 0 else e for i, e in enumerate(emails)]
    return "\n".join(lines), emails


def _staff(stack: Any, practice: uuid.UUID) -> dict[str, str]:
    from services.runtime.auth import mint_token

    token = mint_token(stack.jwt_secret, "bench-manager", ["practice_manager"], practice_id=practice)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def one_row_latency(stack: Any, practice: uuid.UUID, emails: list[str]) -> dict[str, Any]:
    """A staff member inviting one patient at a time: from the roster POST to the poll that sees its row final, each
    sent to an idle stack at a random moment (never in step with the consumers' polls)."""
    headers = _staff(stack, practice)
    base = f"{stack.urls['invitations']}/v1/practices/{practice}/invite-batches"
    seconds, problems = [], []
    async with httpx.AsyncClient(timeout=60) as http:
        for email in emails:
            await asyncio.sleep(random.uniform(0.2, 0.6))
            started = time.perf_counter()
            response = await http.post(base, json={"roster": email}, headers=headers)
            if response.status_code != 202:
                problems.append(f"submit answered {response.status_code}: {response.text[:300]}")
                continue
            url = f"{base}/{response.json()['batch_id']}"
            while time.perf_counter() - started < 30:
                answer = await http.get(url, headers=headers)
                if answer.status_code == 200 and answer.json()["done"]:
                    seconds.append(time.perf_counter() - started)
                    break
                await asyncio.sleep(0.005)
            else:
                problems.append(f"{email}'s row not final after 30 s")
    return {
        "rosters": len(emails),
        "p50_ms": round(percentile(seconds, 50) * 1000),
        "p95_ms": round(percentile(seconds, 95) * 1000),
        "max_ms": round(max(seconds, default=0.0) * 1000),
        "problems": problems,
    }


async def pipeline(stack: Any, practice: uuid.UUID, rows: int, text: str) -> Run:
    headers = _staff(stack, practice)
    body = json.dumps({"roster": text, "default_note": "We look forward to seeing you."}).encode()
    base = f"{stack.urls['invitations']}/v1/practices/{practice}/invite-batches"
    mbox = mailbox(stack)
    mailbox_file.empty(mbox)
    poll = 0.1 if rows <= 10_000 else 0.25  # each poll counts the batch's rows per outcome: work for PostgreSQL
    bound = 60 + rows / 200  # generous: 100 rows/s would be a broken pipeline here
    pids = process_pids(stack)
    load_before = load_average()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"bench": own_cpu_seconds()}
    problems: list[str] = []
    server_errors = 0
    final = None
    progress: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=120) as http:
        with RssSampler(pids) as rss:
            psutil.cpu_percent()
            wall = time.time()
            started = time.perf_counter()
            response = await http.post(base, content=body, headers=headers)
            submitted = time.perf_counter() - started
            if response.status_code != 202:
                problems.append(f"submit answered {response.status_code}: {response.text[:300]}")
            else:
                url = f"{base}/{response.json()['batch_id']}"
                while time.perf_counter() - started < bound:
                    answer = await http.get(url, headers=headers)
                    if answer.status_code >= 500:
                        server_errors += 1
                        problems.append(f"GET batch answered {answer.status_code}: {answer.text[:200]}")
                    elif answer.status_code == 200:
                        progress = answer.json()
                        if progress["done"]:
                            final = time.perf_counter() - started
                            break
                    await asyncio.sleep(poll)
                else:
                    problems.append(f"rows not final after {bound:.0f} s: {progress.get('counts')}")
    busy = psutil.cpu_percent()
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    cpu["bench"] = round(own_cpu_seconds() - cpu_before["bench"], 2)
    counts = {k: v for k, v in progress.get("counts", {}).items() if v}
    if final is not None and counts != {"sent": rows}:
        problems.append(f"expected every row sent, got {counts}")
    # Every row is final, so every email was accepted: the catcher appends a message before it answers 250.
    emails, last_caught = caught(mbox)
    if final is not None and emails != rows:
        problems.append(f"the SMTP catcher caught {emails} emails for {rows} rows")
    emails_seconds = last_caught - wall if last_caught is not None else None
    mailbox_file.empty(mbox)
    return Run(
        rows=rows,
        status=response.status_code,
        submit_seconds=round(submitted, 3),
        final_seconds=round(final, 2) if final is not None else None,
        poll_seconds=poll,
        rows_per_second=round(rows / final, 1) if final else None,
        emails=emails,
        emails_seconds=round(emails_seconds, 2) if emails_seconds is not None else None,
        emails_per_second=round(emails / emails_seconds, 1) if emails_seconds else None,
        counts=counts,
        server_errors=server_errors,
        rss_mib=rss.figures(),
        cpu_seconds=cpu,
        load_average_before=load_before,
        machine_busy_percent=busy,
        problems=problems,
    )


async def naive_baseline(stack: Any, settings: Any, rows: int) -> dict[str, Any]:
    """One row at a time, as a first version would: INSERT + COMMIT, publish and wait, a new SMTP connection."""
    from collabkare.stack.broker import create_topics
    from services.notifier.messages import Renderer

    topic = f"{stack.topic_prefix}bench.naive.v1"
    await create_topics(stack.infra.kafka_bootstrap, [(topic, 1)], timeout=30)
    messages = prebuilt_messages(settings, rows)
    sender = Renderer(settings.smtp_from).envelope_sender
    database = await asyncpg.connect(admin_url(stack))
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap, acks="all")
    await producer.start()
    spent = {"database": 0.0, "kafka": 0.0, "smtp": 0.0}
    try:
        await database.execute(
            "CREATE TABLE bench_naive (id uuid PRIMARY KEY, email text NOT NULL, note text, created_at timestamptz)"
        )
        started = time.perf_counter()
        for i, (recipient, message) in enumerate(messages):
            row_id = uuid.uuid4()
            t0 = time.perf_counter()
            await database.execute(  # no transaction block: the INSERT commits on its own
                "INSERT INTO bench_naive VALUES ($1, $2, $3, now())", row_id, recipient, f"note {i}"
            )
            t1 = time.perf_counter()
            payload = json.dumps({"id": str(row_id), "email": recipient, "line_number": i + 1}).encode()
            await producer.send_and_wait(topic, payload, key=str(row_id).encode())
            t2 = time.perf_counter()
            smtp = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, timeout=30)
            await smtp.connect()
            await smtp.sendmail(sender, [recipient], message)
            await smtp.quit()
            t3 = time.perf_counter()
            spent["database"] += t1 - t0
            spent["kafka"] += t2 - t1
            spent["smtp"] += t3 - t2
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await database.execute("DROP TABLE IF EXISTS bench_naive")
        await database.close()
    mailbox_file.empty(mailbox(stack))
    return {
        "rows": rows,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed, 1),
        "ms_per_row": {stage: round(seconds / rows * 1000, 2) for stage, seconds in spent.items()},
    }


async def measured_ceiling(
    stack: Any, settings: Any, messages: list[tuple[str, bytes]]
) -> tuple[float, dict[str, float]]:
    """The raw ceiling's rate, and its CPU per email: this process sending, the SMTP catcher receiving."""
    sink = process_pids(stack).get("smtp", -1)
    client, received = own_cpu_seconds(), cpu_seconds(sink)
    rate = await ceiling(settings, messages, "lean")
    per_email = {
        "sender": round((own_cpu_seconds() - client) / len(messages) * 1000, 3),
        "smtp": round((cpu_seconds(sink) - received) / len(messages) * 1000, 3),
    }
    return rate, per_email


async def measure(stack: Any, sizes: list[int], naive_rows: int, ceiling_messages: int) -> dict[str, Any]:
    from services.notifier.settings import NotifierSettings

    settings = NotifierSettings(**{k.lower(): v for k, v in stack.service_env["notifier"].items()})
    practice = uuid.uuid4()
    run_id = uuid.uuid4().hex[:6]
    rosters = {size: roster(size, f"{run_id}.{size}") for size in [WARM_UP_ROWS, *sizes]}
    singles = roster(ONE_ROW_ROSTERS, f"{run_id}.one")[1]
    emails = [e for _, addresses in rosters.values() for e in addresses] + singles
    print(f"registering the practice and {len(emails):,} patients (PatientRegistered in bulk) …", flush=True)
    seeded = await seed_directory(stack, practice, emails)
    print(f"  the notifier's directory has them after {seeded:.1f} s ({len(emails) / seeded:,.0f}/s)", flush=True)

    mbox = mailbox(stack)
    messages = prebuilt_messages(settings, ceiling_messages)
    await ceiling(settings, messages[: min(2000, ceiling_messages)], "lean")  # a fresh catcher is slower at first
    print(f"raw SMTP ceiling: {ceiling_messages:,} pre-built messages, {settings.smtp_pool_size} connections …")
    before, before_cpu = await measured_ceiling(stack, settings, messages)
    mailbox_file.empty(mbox)

    warm = await pipeline(stack, practice, WARM_UP_ROWS, rosters[WARM_UP_ROWS][0])  # imports, plans, pools
    print(f"{ONE_ROW_ROSTERS} one-line rosters, one at a time …", flush=True)
    one_row = await one_row_latency(stack, practice, singles)
    runs = []
    for size in sizes:
        print(f"pipeline: {size:,} rows …", flush=True)
        runs.append(await pipeline(stack, practice, size, rosters[size][0]))
        last = runs[-1]
        print(
            f"  final after {last.final_seconds} s; {last.rows_per_second} rows/s; problems: {last.problems or 'none'}"
        )

    bare = None
    if TARGET_SIZE in sizes:
        print(f"bare prototype (the design's bar, none of the guarantees): {TARGET_SIZE:,} rows …", flush=True)
        bare = await bare_prototype(stack, TARGET_SIZE, roster(TARGET_SIZE, f"{run_id}.bare")[0])

    print("raw SMTP ceiling again …", flush=True)
    after, after_cpu = await measured_ceiling(stack, settings, messages)
    mailbox_file.empty(mbox)
    print(f"naive baseline: {naive_rows} rows one at a time …", flush=True)
    naive = await naive_baseline(stack, settings, naive_rows)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "directory_seed_seconds": round(seeded, 2),
        "warm_up": asdict(warm),
        "one_row": one_row,
        "runs": [asdict(run) for run in runs],
        "ceiling": {
            "messages": ceiling_messages,
            "smtp_connections": settings.smtp_pool_size,
            "before_emails_per_second": round(before, 1),
            "after_emails_per_second": round(after, 1),
            "cpu_ms_per_email": {"before": before_cpu, "after": after_cpu},
        },
        "naive": naive,
        "bare_prototype": bare,
    }


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its figure and whether it is met; adds the ratios to each run."""
    runs = {run["rows"]: run for run in result["runs"]}
    best = max(result["ceiling"]["before_emails_per_second"], result["ceiling"]["after_emails_per_second"])
    mean = (result["ceiling"]["before_emails_per_second"] + result["ceiling"]["after_emails_per_second"]) / 2
    naive = result["naive"]["rows_per_second"]
    for run in runs.values():
        rate = run["rows_per_second"]
        run["share_of_ceiling"] = round(rate / best, 3) if rate and best else None
        run["share_of_mean_ceiling"] = round(rate / mean, 3) if rate and mean else None
        run["times_naive"] = round(rate / naive, 1) if rate and naive else None
    targets = []
    if (main := runs.get(TARGET_SIZE)) is not None:
        final, share, times = main["final_seconds"], main["share_of_ceiling"], main["times_naive"]
        size = f"{TARGET_SIZE:,} rows"
        targets += [
            _target(f"{size} final in <= {TARGET_FINAL_SECONDS:.0f} s", final, "s", TARGET_FINAL_SECONDS, below=True),
            _target(
                f"{size} at >= {TARGET_CEILING_SHARE:.0%} of the best SMTP ceiling",
                share,
                "share",
                TARGET_CEILING_SHARE,
            ),
            _target(f"{size} at >= {AIM_CEILING_SHARE:.0%} of it (the aim)", share, "share", AIM_CEILING_SHARE),
            _target(f"{size} at >= {TARGET_NAIVE_FACTOR:.0f}x the naive baseline", times, "x", TARGET_NAIVE_FACTOR),
        ]
    if (large := runs.get(RSS_SIZE)) is not None:
        peaks = [large["rss_mib"][name]["peak_mib"] for name in SERVICES if name in large["rss_mib"]]
        worst = max(peaks) if peaks and large["final_seconds"] is not None else None
        name = f"{RSS_SIZE:,} rows, every service's peak RSS < {TARGET_RSS_MIB:.0f} MiB"
        targets.append(_target(name, worst, "MiB", TARGET_RSS_MIB, below=True))
    return targets


def cpu_budget(result: dict[str, Any]) -> dict[str, Any] | None:
    """What the ratio targets ask of the box: the ceiling and the pipeline share its cores (with the SMTP catcher),
    so 60% of the ceiling's rate is reachable only if the whole stack spends at most cores / that rate of CPU per
    row; and 15x a fast naive baseline can exceed the ceiling itself."""
    run = next((run for run in result["runs"] if run["rows"] == TARGET_SIZE), None)
    if run is None or not run.get("cpu_seconds"):
        return None
    ceiling = max(result["ceiling"]["before_emails_per_second"], result["ceiling"]["after_emails_per_second"])
    cores = result["machine"]["cpus"]
    rate = TARGET_CEILING_SHARE * ceiling
    per_row = {name: seconds * 1000 / run["rows"] for name, seconds in run["cpu_seconds"].items() if name != "bench"}
    naive_target = TARGET_NAIVE_FACTOR * result["naive"]["rows_per_second"]
    return {
        "cores": cores,
        "target_rows_per_second": round(rate),
        "budget_ms_per_row": round(cores * 1000 / rate, 3) if rate else None,
        "spent_ms_per_row": round(sum(per_row.values()), 3),
        "catcher_ms_per_row": round(per_row.get("smtp", 0.0), 3),
        "naive_target_rows_per_second": round(naive_target),
        "naive_target_above_ceiling": naive_target > ceiling,
    }


def _target(name: str, value: float | None, unit: str, limit: float, below: bool = False) -> dict[str, Any]:
    met = value is not None and (value <= limit if below else value >= limit)
    return {"target": name, "value": value, "unit": unit, "limit": limit, "met": met}


def report(result: dict[str, Any]) -> str:
    head = ["rows", "submit s", "final s", "rows/s", "emails", "emails/s", "of ceiling", "x naive"]
    head += [f"{name[:5]} MiB" for name in SERVICES] + ["box busy %", "load 1m"]
    rows = []
    for run in result["runs"]:
        share = run.get("share_of_ceiling")
        row = [run["rows"], run["submit_seconds"], run["final_seconds"], run["rows_per_second"], run["emails"]]
        row += [run["emails_per_second"], f"{share:.0%}" if share is not None else None, run.get("times_naive")]
        row += [run["rss_mib"].get(name, {}).get("peak_mib") for name in SERVICES]
        rows.append([*row, run["machine_busy_percent"], run["load_average_before"][0]])
    ceiling, naive = result["ceiling"], result["naive"]
    before, after = ceiling["before_emails_per_second"], ceiling["after_emails_per_second"]
    stages = ", ".join(f"{stage} {ms}" for stage, ms in naive["ms_per_row"].items())
    lines = [
        "end to end: roster POST -> every row final (sent); embedded PostgreSQL, Tansu broker, SMTP catcher",
        format_table(head, rows),
        "  final s: first poll that saw every row final; emails/s: emails caught / (last one caught - submit)",
        "  MiB: peak RSS of each service during the run, sampled every 0.1 s; box busy: both cores, all processes;",
        "  of ceiling: rows/s over the faster of the two ceiling runs (JSON: share_of_mean_ceiling, over their mean);",
        "  load 1m: before the run",
        f"raw SMTP ceiling ({ceiling['messages']:,} pre-built messages over {ceiling['smtp_connections']} reused "
        f"connections): {before:,.0f}/s before the runs, {after:,.0f}/s after",
        f"naive baseline ({naive['rows']} rows, each: INSERT+COMMIT, send_and_wait, a new SMTP connection): "
        f"{naive['rows_per_second']:,.0f} rows/s; ms per row: {stages}",
    ]
    if one := result.get("one_row"):
        lines.append(
            f"one-line rosters ({one['rosters']}, one at a time, the stack idle in between): POST -> row final "
            f"p50 {one['p50_ms']} ms, p95 {one['p95_ms']} ms, max {one['max_ms']} ms"
        )
    for run in result["runs"]:
        rss = ", ".join(f"{k} {v['start_mib']} -> {v['peak_mib']} -> {v['end_mib']}" for k, v in run["rss_mib"].items())
        lines.append(f"RSS MiB start -> peak -> end, {run['rows']:,} rows: {rss}")
    lines.append("  (postgres: summed over its processes, so shared buffers count once per backend)")
    cpu = ceiling["cpu_ms_per_email"]["before"]
    lines.append(f"CPU ms per email of the raw ceiling: sender {cpu['sender']}, smtp catcher {cpu['smtp']}")
    lines.append("CPU ms per row of each process during each run (bench = this process; stack = all but bench):")
    for run in result["runs"]:
        per_row = {k: round(v / run["rows"] * 1000, 3) for k, v in run["cpu_seconds"].items()}
        stack = sum(v for k, v in run["cpu_seconds"].items() if k != "bench")
        cores = f"; stack busy {stack / run['final_seconds']:.2f} cores" if run["final_seconds"] else ""
        lines.append(f"  {run['rows']:>7,}: " + ", ".join(f"{k} {v}" for k, v in per_row.items()) + cores)
    if budget := result.get("cpu_budget"):
        lines += [
            f"CPU budget at {TARGET_SIZE:,} rows: {TARGET_CEILING_SHARE:.0%} of the ceiling is "
            f"{budget['target_rows_per_second']:,} rows/s, which {budget['cores']} cores allow only if the whole stack "
            f"spends <= {budget['budget_ms_per_row']} ms of CPU per row; it spent {budget['spent_ms_per_row']} "
            f"(the SMTP catcher alone {budget['catcher_ms_per_row']})",
            f"  {TARGET_NAIVE_FACTOR:.0f}x the naive baseline is {budget['naive_target_rows_per_second']:,} rows/s"
            + (", above the raw SMTP ceiling itself" if budget["naive_target_above_ceiling"] else ""),
        ]
    if bare := result.get("bare_prototype"):
        main = next((run for run in result["runs"] if run["rows"] == bare["rows"]), None)
        best = max(before, after)
        compared = ""
        if main is not None and main["rows_per_second"]:
            compared = f"; the pipeline ran at {main['rows_per_second'] / bare['rows_per_second']:.0%} of its rate"
        cpu_parts = ", ".join(f"{k} {v}" for k, v in bare["cpu_ms_per_row"].items())
        lines += [
            f"bare prototype (parse, COPY, relay, consume, send, UPDATE; no inbox, directory, lease or outcome event): "
            f"{bare['rows']:,} rows in {bare['seconds']} s, {bare['rows_per_second']:,.0f} rows/s, "
            f"{bare['rows_per_second'] / best:.0%} of the best ceiling{compared}",
            f"  its CPU ms per row: {cpu_parts}",
        ]
    lines.append("targets (issue #6; a measurement: a missed target does not fail the run):")
    for target in result["targets"]:
        value = target["value"]
        shown = "-" if value is None else f"{value:.0%}" if target["unit"] == "share" else f"{value:g} {target['unit']}"
        lines.append(f"  [{'met' if target['met'] else 'NOT met'}] {target['target']}: {shown}")
    load = " ".join(map(str, result["load_average_end"]))
    lines.append(f"cpu count {result['machine']['cpus']}, load average at the end {load}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_pipeline")
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated roster sizes")
    parser.add_argument("--naive-rows", type=int, default=300)
    parser.add_argument("--ceiling-messages", type=int, default=10_000)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    with bench_stack("e2e") as stack:
        result = asyncio.run(measure(stack, sizes, args.naive_rows, args.ceiling_messages))
    result["load_average_end"] = load_average()
    result["targets"] = evaluate(result)
    result["cpu_budget"] = cpu_budget(result)
    failures = [f"{run['rows']:,} rows: {p}" for run in [result["warm_up"], *result["runs"]] for p in run["problems"]]
    failures += [f"one-line rosters: {p}" for p in result["one_row"]["problems"]]
    result["pipeline_failures"] = failures
    print(report(result), flush=True)
    save(OUTPUT, result)
    if not failures:
        remove_workdir(stack)
    if failures:
        print("PIPELINE FAILED:\n  " + "\n  ".join(failures), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
