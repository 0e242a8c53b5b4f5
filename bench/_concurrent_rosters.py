"""Many staff at once with the largest rosters: peak RSS of the invitations service under concurrent 100,000-line
previews, then submits. Not part of `make bench`: `python -m bench._concurrent_rosters [--clients 8] [--kinds ...]`.

Each client is a different practice and behaves as the console should: a 503 is retried after its Retry-After,
a submit with the same Idempotency-Key, a bounded number of times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

import httpx

from bench._results import save
from bench._stack_support import RESULTS, RssSampler, bench_stack, load_average, remove_workdir
from bench.invitations_submit import roster

OUTPUT = RESULTS / "concurrent_rosters.json"
MAX_TRIES = 30  # per client: a refusal is retried after Retry-After, never forever


async def _client(
    http: httpx.AsyncClient, url: str, secret: str, kind: str, lines: int, seed: int, refusals: list[dict[str, Any]]
) -> dict[str, Any]:
    from services.runtime.auth import mint_token

    practice = uuid.uuid4()
    token = mint_token(secret, "bench", ["practice_manager"], practice_id=practice)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    path = "roster/preview" if kind == "preview" else "invite-batches"
    if kind == "submit":
        headers["Idempotency-Key"] = f"bench-{seed}"
    body = json.dumps({"roster": roster(lines, seed), "default_note": "We look forward to seeing you."}).encode()
    started = time.perf_counter()
    for attempt in range(1, MAX_TRIES + 1):
        response = await http.post(f"{url}/v1/practices/{practice}/{path}", content=body, headers=headers)
        if response.status_code != 503:
            break
        refusals.append({"attempt": attempt, "retry_after": response.headers.get("Retry-After"), **response.json()})
        await asyncio.sleep(float(response.headers.get("Retry-After", "5")))
    return {"status": response.status_code, "attempts": attempt, "seconds": round(time.perf_counter() - started, 2)}


async def _phase(url: str, secret: str, kind: str, clients: int, lines: int, seed: int) -> dict[str, Any]:
    refusals: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        # "mixed": half the clients preview, half send, all at once.
        kinds = [("preview", "submit")[i % 2] if kind == "mixed" else kind for i in range(clients)]
        answers = await asyncio.gather(
            *(_client(http, url, secret, kinds[i], lines, seed + i, refusals) for i in range(clients))
        )
    return {
        "kind": kind,
        "statuses": sorted(a["status"] for a in answers),
        "attempts": sorted(a["attempts"] for a in answers),
        "seconds": round(time.perf_counter() - started, 2),
        "refusals": len(refusals),
        "a_refusal": refusals[0] if refusals else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--kinds", default="preview,submit", help="phases in order: preview, submit, mixed")
    options = parser.parse_args()
    results = []
    with bench_stack("concurrent-rosters") as stack:
        url, pid = stack.urls["invitations"], stack.supervisor.pid("invitations")
        # Warm, as a service in use is: imports done, statements prepared, worker threads started.
        asyncio.run(_phase(url, stack.jwt_secret, "submit", 1, 100, seed=10_000))
        for number, kind in enumerate(options.kinds.split(",")):
            with RssSampler({"invitations": pid}, every=0.05) as sampler:
                phase = asyncio.run(_phase(url, stack.jwt_secret, kind, options.clients, options.lines, number * 100))
            phase["rss_mib"] = sampler.figures()["invitations"]
            print(json.dumps(phase), flush=True)
            results.append(phase)
        remove_workdir(stack)
    setting = os.environ.get("ROSTER_LINES_IN_FLIGHT", "default")
    save(
        OUTPUT,
        {
            "clients": options.clients,
            "lines": options.lines,
            "roster_lines_in_flight": setting,
            "phases": results,
            "load_average": load_average(),
        },
    )
    for phase in results:
        rss = phase["rss_mib"]
        print(
            f"{options.clients} x {options.lines:,}-line {phase['kind']}: statuses {phase['statuses']}, "
            f"{phase['refusals']} refusals retried, {phase['seconds']} s; invitations RSS "
            f"{rss['start_mib']} → peak {rss['peak_mib']} → {rss['end_mib']} MiB",
            flush=True,
        )
    return 0 if all(set(p["statuses"]) <= {200, 202} for p in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
