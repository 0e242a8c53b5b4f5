"""Load test: 20 concurrent staff users of one practice for ~30 s against the whole local stack.

`python -m bench.load [--users 20] [--seconds 30] [--roster-lines 100] [--pending 1500] [--think-ms 0]`
starts the local stack, registers a practice and patients, has patients ask to connect beforehand (pending
requests, with patient tokens), then runs the users: each has its own staff token (front desk, practice
manager or admin) and HTTP client and, without pause unless --think-ms, picks one action after another:
preview a roster, submit a roster, read a batch's progress, list the pending requests, approve one, reject
one (with a reason). Every request's latency is recorded per endpoint template and every status counted.
At the end it waits (bounded) for every submitted batch to be final.

Prints p50/p99 per endpoint and every 5xx, writes var/bench/load.json, and exits 1 when any request got a
5xx, an unexpected status or no answer, or a batch did not become final.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from bench._results import save
from bench._stack_support import (
    RESULTS,
    RssSampler,
    bench_stack,
    cpu_seconds,
    format_table,
    load_average,
    own_cpu_seconds,
    percentile,
    process_pids,
    remove_workdir,
    seed_directory,
)

OUTPUT = RESULTS / "load.json"
ROLES = ("front_desk", "practice_manager", "admin")
PREVIEW = "POST /v1/practices/{p}/roster/preview"
SUBMIT = "POST /v1/practices/{p}/invite-batches"
PROGRESS = "GET /v1/practices/{p}/invite-batches/{id}"
PENDING = "GET /v1/practices/{p}/connection-requests?status=pending"
APPROVE = "POST /v1/practices/{p}/connection-requests/{id}/approve"
REJECT = "POST /v1/practices/{p}/connection-requests/{id}/reject"
ASK = "POST /v1/connection-requests (patients, before the load)"
# What each action may answer; anything else is reported (a 5xx or an unexpected status fails the run).
EXPECTED = {PREVIEW: {200}, SUBMIT: {202}, PROGRESS: {200}, PENDING: {200}, APPROVE: {200}, REJECT: {200}, ASK: {201}}
WEIGHTS = {PREVIEW: 20, SUBMIT: 15, PROGRESS: 15, PENDING: 15, APPROVE: 17.5, REJECT: 17.5}
SAMPLES_KEPT = 20  # of each kind of failure, with the answer's start
# uvicorn closes a connection idle for 5 s (its default timeout_keep_alive); httpx also keeps one for 5 s. A request
# sent on a connection the server is closing at that moment gets no answer (RemoteProtocolError: "Server
# disconnected without sending a response"), as seen once in 1,566 requests here. Clients must give up idle
# connections before the server does; so do these users, and then every missing answer is a real failure.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=2.0)


@dataclass
class Stats:
    """Latencies (seconds) and statuses per endpoint template; failures kept as examples."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    statuses: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    server_errors: int = 0
    unexpected: int = 0
    failures: list[str] = field(default_factory=list)

    def record(self, endpoint: str, seconds: float, status: int | None, detail: str = "") -> None:
        """`status` None: no answer (a transport error, `detail` says which)."""
        self.latencies[endpoint].append(seconds)
        self.statuses[endpoint][str(status) if status is not None else "no answer"] += 1
        if status is not None and status >= 500:
            self.server_errors += 1
        elif status in EXPECTED.get(endpoint, {status}):
            return
        else:
            self.unexpected += 1
        if len(self.failures) < SAMPLES_KEPT * 2:
            self.failures.append(f"{endpoint} -> {status if status is not None else 'no answer'}: {detail[:300]}")

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            endpoint: {
                "requests": len(values),
                "p50_ms": round(percentile(values, 50) * 1000, 1),
                "p99_ms": round(percentile(values, 99) * 1000, 1),
                "max_ms": round(max(values) * 1000, 1),
                "statuses": dict(sorted(self.statuses[endpoint].items())),
            }
            for endpoint, values in self.latencies.items()
        }


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    head = ["endpoint", "requests", "p50 ms", "p99 ms", "max ms", "statuses"]
    rows = [
        [
            name,
            s["requests"],
            s["p50_ms"],
            s["p99_ms"],
            s["max_ms"],
            " ".join(f"{k}:{v}" for k, v in s["statuses"].items()),
        ]
        for name, s in summary.items()
    ]
    return format_table(head, rows)


def make_roster(rng: random.Random, registered: list[str], lines: int, tag: str) -> str:
    """Mostly registered patients (some already invited by then), a few unknown addresses, a comment, a note."""
    out = [f"# load roster {tag}"]
    for i in range(lines):
        if i % 10 == 9:
            out.append(f"new.{tag}.{i}@example.net")
        elif i % 7 == 0:
            out.append(f"{rng.choice(registered)}, See you soon, from the front desk")
        else:
            out.append(rng.choice(registered))
    return "\n".join(out)


class Load:
    def __init__(self, stack: Any, practice: uuid.UUID, registered: list[str], args: argparse.Namespace) -> None:
        self.stack = stack
        self.practice = practice
        self.registered = registered
        self.args = args
        self.stats = Stats()
        self.pending: collections.deque[str] = collections.deque()
        self.batches: list[str] = []
        self.ran_out = 0  # approve/reject turns that found no pending request left (a list instead)

    async def timed(self, http: httpx.AsyncClient, endpoint: str, method: str, url: str, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await http.request(method, url, **kw)
        except httpx.HTTPError as error:
            self.stats.record(endpoint, time.perf_counter() - started, None, f"{type(error).__name__}: {error}")
            return None
        self.stats.record(endpoint, time.perf_counter() - started, response.status_code, response.text)
        ok = response.status_code < 300 and response.headers.get("content-type", "").startswith("application/json")
        return response.json() if ok else None

    async def ask_to_connect(self, patients: list[tuple[uuid.UUID, str]]) -> None:
        """Patients ask to connect, 20 at a time: the pending requests the staff will decide."""
        from services.runtime.auth import mint_token

        url = f"{self.stack.urls['connections']}/v1/connection-requests"
        queue = collections.deque(patients)

        async def worker() -> None:
            async with httpx.AsyncClient(timeout=30, limits=CLIENT_LIMITS) as http:
                while queue:
                    patient_id, email = queue.popleft()
                    token = mint_token(self.stack.jwt_secret, str(patient_id), ["patient"], email=email)
                    body = {"practice_id": str(self.practice), "message": "I am a patient of Dr. Lee"}
                    headers = {"Authorization": f"Bearer {token}"}
                    answer = await self.timed(http, ASK, "POST", url, json=body, headers=headers)
                    if answer is not None:
                        self.pending.append(answer["id"])

        await asyncio.gather(*(worker() for _ in range(20)))

    async def user(self, number: int, deadline: float) -> None:
        from services.runtime.auth import mint_token

        rng = random.Random(number)
        role = ROLES[number % len(ROLES)]
        token = mint_token(self.stack.jwt_secret, f"bench-staff-{number}", [role], practice_id=self.practice)
        invitations = f"{self.stack.urls['invitations']}/v1/practices/{self.practice}"
        connections = f"{self.stack.urls['connections']}/v1/practices/{self.practice}"
        actions, weights = list(WEIGHTS), list(WEIGHTS.values())
        turn = 0
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=60, headers=headers, limits=CLIENT_LIMITS) as http:
            while time.perf_counter() < deadline:
                turn += 1
                action = rng.choices(actions, weights)[0]
                if action in (APPROVE, REJECT) and not self.pending:
                    self.ran_out += 1
                    action = PENDING
                if action in (PREVIEW, SUBMIT):
                    roster = make_roster(rng, self.registered, self.args.roster_lines, f"u{number}t{turn}")
                    body = {"roster": roster, "default_note": "Your care team invites you to connect."}
                    path = "/roster/preview" if action == PREVIEW else "/invite-batches"
                    answer = await self.timed(http, action, "POST", invitations + path, json=body)
                    if action == SUBMIT and answer is not None:
                        self.batches.append(answer["batch_id"])
                elif action == PROGRESS:
                    if not self.batches:
                        continue
                    await self.timed(http, action, "GET", f"{invitations}/invite-batches/{rng.choice(self.batches)}")
                elif action == PENDING:
                    params = {"status": "pending", "limit": 50}
                    await self.timed(http, action, "GET", f"{connections}/connection-requests", params=params)
                else:
                    request_id = self.pending.popleft()
                    verb = "approve" if action == APPROVE else "reject"
                    reason = {"reason": "We are not taking new patients this season."} if action == REJECT else None
                    url = f"{connections}/connection-requests/{request_id}/{verb}"
                    await self.timed(http, action, "POST", url, json=reason)
                if self.args.think_ms:
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * self.args.think_ms / 1000)

    async def settle(self, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until every submitted batch is final; their outcome counts summed."""
        from services.runtime.auth import mint_token

        token = mint_token(self.stack.jwt_secret, "bench-checker", ["practice_manager"], practice_id=self.practice)
        base = f"{self.stack.urls['invitations']}/v1/practices/{self.practice}/invite-batches"
        left = set(self.batches)
        totals: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30, headers=headers, limits=CLIENT_LIMITS) as http:
            while left and time.perf_counter() - started < timeout:
                for batch_id in list(left):
                    answer = await http.get(f"{base}/{batch_id}")
                    if answer.status_code == 200 and answer.json()["done"]:
                        left.discard(batch_id)
                        totals.update({k: v for k, v in answer.json()["counts"].items() if v})
                if left:
                    await asyncio.sleep(0.5)
        return {
            "batches": len(self.batches),
            "final": len(self.batches) - len(left),
            "seconds_until_final": round(time.perf_counter() - started, 1),
            "outcomes": dict(sorted(totals.items())),
        }


async def measure(stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    practice = uuid.uuid4()
    tag = uuid.uuid4().hex[:6]
    registered = [f"load.{tag}.{i}@example{i % 20}.com" for i in range(args.registered)]
    askers = [(uuid.uuid4(), f"asker.{tag}.{i}@example{i % 20}.org") for i in range(args.pending)]
    print(f"registering the practice and {len(registered) + len(askers):,} patients …", flush=True)
    await seed_directory(stack, practice, registered + [email for _, email in askers])
    load = Load(stack, practice, registered, args)
    print(f"{len(askers):,} patients ask to connect (pending requests for the staff) …", flush=True)
    started = time.perf_counter()
    await load.ask_to_connect(askers)
    asked = time.perf_counter() - started
    print(f"  {len(load.pending):,} pending requests in {asked:.1f} s", flush=True)
    setup = load.stats
    load.stats = Stats()
    pids = process_pids(stack)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"bench": own_cpu_seconds()}
    load_before = load_average()
    print(f"{args.users} staff users for {args.seconds:.0f} s …", flush=True)
    with RssSampler(pids) as rss:
        started = time.perf_counter()
        deadline = started + args.seconds
        await asyncio.gather(*(load.user(n, deadline) for n in range(args.users)))
        elapsed = time.perf_counter() - started
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    cpu["bench"] = round(own_cpu_seconds() - cpu_before["bench"], 2)
    load_after = load_average()
    alive = _alive(stack)
    print("waiting until every submitted batch is final …", flush=True)
    batches = await load.settle(args.settle_seconds)
    summary = load.stats.summary()
    requests = sum(s["requests"] for s in summary.values())
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "users": args.users,
        "seconds": round(elapsed, 2),
        "think_ms": args.think_ms,
        "roster_lines": args.roster_lines,
        "requests": requests,
        "requests_per_second": round(requests / elapsed, 1),
        "endpoints": summary,
        "server_errors": load.stats.server_errors,
        "unexpected_statuses": load.stats.unexpected,
        "failures": load.stats.failures,
        "approve_or_reject_without_pending_left": load.ran_out,
        "pending_left": len(load.pending),
        "setup": {
            "pending_requests": len(askers),
            "seconds": round(asked, 2),
            "endpoints": setup.summary(),
            "failures": setup.failures,
        },
        "batches": batches,
        "services_alive": alive,
        "rss_mib": rss.figures(),
        "cpu_seconds": cpu,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def _alive(stack: Any) -> str:
    """ "yes", or which child process died during the load."""
    from collabkare.stack.errors import StackError

    try:
        stack.supervisor.check_alive()
        stack.infra.check_alive()
    except StackError as error:
        return str(error)
    return "yes"


def report(result: dict[str, Any]) -> str:
    lines = [
        f"load: {result['users']} staff users, {result['seconds']} s, think time {result['think_ms']} ms, "
        f"rosters of {result['roster_lines']} lines: {result['requests']:,} requests "
        f"({result['requests_per_second']:,.0f}/s)",
        summary_table(result["endpoints"]),
        f"before the load: {summary_table(result['setup']['endpoints']).splitlines()[-1].strip()}",
        f"5xx: {result['server_errors']}; unexpected statuses: {result['unexpected_statuses']}; "
        f"approve/reject turns with no pending request left (listed instead): "
        f"{result['approve_or_reject_without_pending_left']}",
    ]
    lines += [f"  {failure}" for failure in result["failures"] + result["setup"]["failures"]]
    batches = result["batches"]
    lines.append(
        f"batches submitted: {batches['batches']}, final: {batches['final']} "
        f"({batches['seconds_until_final']} s after the load); outcomes {batches['outcomes']}"
    )
    lines.append(f"every process of the stack alive after the load: {result['services_alive']}")
    lines.append("peak RSS MiB: " + ", ".join(f"{k} {v['peak_mib']}" for k, v in result["rss_mib"].items()))
    lines.append("CPU seconds during the load: " + ", ".join(f"{k} {v}" for k, v in result["cpu_seconds"].items()))
    before, after = result["load_average_before"], result["load_average_after"]
    lines.append(f"cpu count {result['cpus']}, load average before {before}, after {after}")
    return "\n".join(lines)


def failed(result: dict[str, Any]) -> list[str]:
    problems = []
    if result["server_errors"]:
        problems.append(f"{result['server_errors']} responses were 5xx")
    if result["unexpected_statuses"] or result["setup"]["failures"]:
        problems.append(f"{result['unexpected_statuses']} unexpected statuses or unanswered requests")
    if result["services_alive"] != "yes":
        problems.append(result["services_alive"])
    if result["batches"]["final"] != result["batches"]["batches"]:
        problems.append(f"{result['batches']['batches'] - result['batches']['final']} batches not final")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--roster-lines", type=int, default=100)
    parser.add_argument("--registered", type=int, default=2000, help="registered patients rosters draw from")
    parser.add_argument("--pending", type=int, default=1500, help="connection requests created before the load")
    parser.add_argument("--think-ms", type=float, default=0.0, help="mean pause between a user's actions")
    parser.add_argument("--settle-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    with bench_stack("load") as stack:
        result = asyncio.run(measure(stack, args))
    problems = failed(result)
    result["pipeline_failures"] = problems
    if not problems:
        remove_workdir(stack)
    print(report(result), flush=True)
    save(OUTPUT, result)
    if problems:
        print("LOAD TEST FAILED: " + "; ".join(problems), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
