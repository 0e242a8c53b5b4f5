"""/readyz runs its checks side by side, so that several dependencies away cost one check's bound, not their sum."""

from __future__ import annotations

import asyncio

import httpx

from services.runtime.http import create_http_app
from services.runtime.metrics import Metrics


async def test_the_checks_run_side_by_side_and_each_answer_is_reported() -> None:
    """Each check waits until every other has begun: one after another, the first would wait for ever (bounded
    here), as a database check waiting out its 2 s kept the broker's from starting."""
    names = ("database", "broker", "smtp")
    begun: set[str] = set()
    everyone = asyncio.Event()

    def check(name: str, answer: bool):  # type: ignore[no-untyped-def]
        async def run() -> bool:
            begun.add(name)
            if len(begun) == len(names):
                everyone.set()
            async with asyncio.timeout(5):
                await everyone.wait()
            return answer

        return run

    readiness = {name: check(name, name != "broker") for name in names}
    app = create_http_app(title="t", description="t", metrics=Metrics("t"), readiness=readiness, routers=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        answer = await http.get("/readyz")
        begun.clear()
        everyone.clear()
        names = ("database", "smtp")
        left_out = await http.get("/readyz", params={"exclude": "broker"})
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"status": "unavailable", "checks": {"database": True, "broker": False, "smtp": True}}
    assert left_out.status_code == 200, left_out.text
    assert left_out.json()["checks"] == {"database": True, "smtp": True}


async def test_a_check_that_raises_is_not_ready_and_the_others_still_answer() -> None:
    async def broken() -> bool:
        raise RuntimeError("a bug in the check")

    async def fine() -> bool:
        return True

    readiness = {"database": fine, "jobs": broken}
    app = create_http_app(title="t", description="t", metrics=Metrics("t"), readiness=readiness, routers=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        answer = await http.get("/readyz")
    assert answer.status_code == 503, answer.text
    assert answer.json()["checks"] == {"database": True, "jobs": False}
