"""`make demo`: start the real stack, show each service ready, run the scenario, print it, stop everything."""

from __future__ import annotations

import json
import urllib.request

from collabkare.stack.local import DEMO_PRACTICE_ID, DEMO_PRACTICE_NAME, local_stack, seed_demo_practice


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL we built
        return dict(json.loads(response.read()))


def run_demo() -> int:
    print("== starting the local stack (PostgreSQL, Kafka-protocol broker, SMTP catcher, 3 services)", flush=True)
    with local_stack() as stack:
        print("== services", flush=True)
        for name, url in stack.urls.items():
            ready = _get(f"{url}/readyz")
            print(f"   {name:<12} {url:<24} {ready['status']:<8} {ready['checks']}", flush=True)
        seed_demo_practice(stack)
        print(f"== seeded practice {DEMO_PRACTICE_ID} ({DEMO_PRACTICE_NAME}) on the platform topic", flush=True)
        print("== stopping", flush=True)
    print("== done: every process stopped", flush=True)
    return 0
