"""Roster admission on real PostgreSQL: past the budget of lines in flight a roster gets a 503 with Retry-After,
nothing of it is stored, and the client's retry (same Idempotency-Key) goes through."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from collabkare.stack.infra import Infrastructure
from collabkare.stack.ports import free_port
from services.invitations.api_support import roster_admission
from services.invitations.repository import LOCK_PRACTICE
from services.invitations.roster import MAX_LINES
from tests.integration.invitations_harness import Service, running_service, staff
from tests.support import lock_waiters

PROBLEM = "application/problem+json"
BUDGET = 8_000  # lines in flight: one 5,000-line roster at a time, and a small rosters' lane of 2,000
LINES = 5_000
BUSY = "urn:collabkare:problem:rosters-busy"


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(
        infra, template_database, consuming=False, roster_lines_in_flight=BUDGET, roster_admission_wait_seconds=0.3
    ) as running:
        yield running


def _roster(practice: uuid.UUID, lines: int = LINES) -> str:
    return "\n".join(f"patient.{i}@{practice.hex[:12]}.example.org" for i in range(lines))


def _submit(service: Service, practice: uuid.UUID, roster: str, key: str | None = None) -> asyncio.Task[httpx.Response]:
    headers = {**staff(practice), **({"Idempotency-Key": key} if key else {})}
    url = f"/v1/practices/{practice}/invite-batches"
    return asyncio.create_task(service.http.post(url, json={"roster": roster}, headers=headers))


@asynccontextmanager
async def _practices_locked(service: Service, practices: list[uuid.UUID]) -> AsyncIterator[None]:
    """Hold the practices' submit lock: a roster admitted for one of them holds its lines until the block ends."""
    async with service.admin.acquire() as connection, connection.transaction():
        for practice in practices:
            await connection.execute(LOCK_PRACTICE, practice)
        yield


async def _until_done(tasks: list[asyncio.Task[httpx.Response]], count: int) -> list[asyncio.Task[httpx.Response]]:
    """Wait (bounded) until `count` of the tasks have finished; those that have."""
    async with asyncio.timeout(60):
        while len(done := [task for task in tasks if task.done()]) < count:
            await asyncio.wait([task for task in tasks if not task.done()], return_when=asyncio.FIRST_COMPLETED)
    return done


def _assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM and response.headers["Retry-After"] == "5"
    body = response.json()
    assert body["type"] == BUSY and body["status"] == 503 and body["title"] == "Service unavailable"
    assert "Too many large rosters" in body["detail"] and "nothing was done" in body["detail"]


async def _stored(service: Service, practice: uuid.UUID) -> dict[str, Any]:
    row = await service.admin.fetchrow(
        """
        SELECT (SELECT count(*) FROM invitations.batches WHERE practice_id = $1) AS batches,
               (SELECT count(*) FROM invitations.batch_rows r JOIN invitations.batches b ON b.id = r.batch_id
                WHERE b.practice_id = $1) AS rows,
               (SELECT count(*) FROM invitations.invites WHERE practice_id = $1) AS invites
        """,
        practice,
    )
    assert row is not None
    return dict(row)


async def test_concurrent_large_rosters_past_the_budget_are_refused_whole_and_their_retries_go_through(
    service: Service,
) -> None:
    practices = [uuid.uuid4() for _ in range(4)]
    rosters = {practice: _roster(practice) for practice in practices}
    async with _practices_locked(service, practices):
        tasks = {practice: _submit(service, practice, rosters[practice], f"key-{practice}") for practice in practices}
        # One roster is admitted and waits for its practice's lock, holding 5,000 of the 8,000 lines; the other
        # three find no room within the wait.
        done = await _until_done(list(tasks.values()), 3)
        refused = [practice for practice, task in tasks.items() if task in done]
        for practice in refused:
            _assert_busy(tasks[practice].result())
            assert await _stored(service, practice) == {"batches": 0, "rows": 0, "invites": 0}
        (admitted,) = set(practices) - set(refused)
        assert not tasks[admitted].done()

        # Meanwhile: a small roster has a lane of its own, and what is wrong with a request is still said first.
        small = await _submit(service, uuid.uuid4(), "ann@example.com\nbob@example.com")
        assert small.status_code == 202, small.text
        other = uuid.uuid4()
        preview = await service.http.post(
            f"/v1/practices/{other}/roster/preview", json={"roster": _roster(other)}, headers=staff(other)
        )
        _assert_busy(preview)
        too_long = await _submit(service, other, "\n" * MAX_LINES + "ann@example.com")
        assert too_long.status_code == 413 and too_long.json()["max_lines"] == MAX_LINES
        for body, field in (({}, "roster"), ({"roster": "a@example.com", "extra": 1}, "extra")):
            malformed = await service.http.post(
                f"/v1/practices/{other}/invite-batches", json=body, headers=staff(other)
            )
            assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == field
        plain = await service.http.post(
            f"/v1/practices/{other}/invite-batches",
            content=b"a@example.com",
            headers={**staff(other), "Content-Type": "text/plain"},
        )
        assert plain.status_code == 415
        assert await _stored(service, other) == {"batches": 0, "rows": 0, "invites": 0}

    accepted = await tasks[admitted]
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["total"] == LINES and accepted.json()["queued"] == LINES
    for practice in refused:  # as the client does after Retry-After: the same request, the same key
        retried = await _submit(service, practice, rosters[practice], f"key-{practice}")
        assert retried.status_code == 202, retried.text
        assert "Idempotent-Replayed" not in retried.headers, "the refused attempt left nothing to replay"
        again = await _submit(service, practice, rosters[practice], f"key-{practice}")
        assert again.headers["Idempotent-Replayed"] == "true" and again.json()["batch_id"] == retried.json()["batch_id"]
    for practice in practices:
        assert await _stored(service, practice) == {"batches": 1, "rows": LINES, "invites": LINES}, practice


async def test_a_resend_is_weighed_by_the_rows_it_resends(service: Service) -> None:
    practice, busy_practice = uuid.uuid4(), uuid.uuid4()
    first = await _submit(service, practice, _roster(practice, 3_500))
    assert first.status_code == 202, first.text
    batch_id = uuid.UUID(first.json()["batch_id"])
    await service.admin.execute(
        "UPDATE invitations.batch_rows SET outcome = 'not_on_platform' WHERE batch_id = $1", batch_id
    )
    url = f"/v1/practices/{practice}/invite-batches/{batch_id}/resend-not-on-platform"
    async with _practices_locked(service, [busy_practice]):
        holding = _submit(service, busy_practice, _roster(busy_practice))
        async with asyncio.timeout(60):  # until the roster holding the lines is admitted and waits for the lock
            while not await lock_waiters(service.admin, "advisory"):
                await asyncio.sleep(0.05)
        _assert_busy(await service.http.post(url, headers=staff(practice)))
        invites = await service.fetchval(
            "SELECT count(*) FROM invitations.invites WHERE practice_id = $1 AND status = 'pending'", practice
        )
        assert invites == 3_500, "the refused resend revoked nothing"
    assert (await holding).status_code == 202
    resent = await service.http.post(url, headers=staff(practice))
    assert resent.status_code == 202, resent.text
    assert resent.json()["resent"] == 3_500


async def test_a_preview_its_client_dropped_leaves_the_queue_at_once(
    infra: Infrastructure, template_database: str
) -> None:
    """The console drops a preview when the roster changes under it. Over a real connection (uvicorn), a preview
    waiting for room went on waiting for nobody, ahead of the one the staff member now wants; now it leaves."""
    async with running_service(
        infra, template_database, consuming=False, roster_lines_in_flight=BUDGET, roster_admission_wait_seconds=30
    ) as service:
        admission = roster_admission(service.runtime)
        port = free_port()
        config = uvicorn.Config(
            service.runtime.http_app(), host="127.0.0.1", port=port, lifespan="off", log_config=None
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        holder, waiter = uuid.uuid4(), uuid.uuid4()
        try:
            async with _practices_locked(service, [holder]):
                held = _submit(service, holder, _roster(holder))  # admitted, then held at the practice's lock
                await _until(lambda: admission.in_flight == LINES)
                body = json.dumps({"roster": _roster(waiter)}).encode()
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                head = f"POST /v1/practices/{waiter}/roster/preview HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                auth = "".join(f"{name}: {value}\r\n" for name, value in staff(waiter).items())
                writer.write(
                    f"{head}{auth}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                )
                writer.write(body)
                await writer.drain()
                await _until(lambda: admission.large.waiting == 1)  # no room: 5,000 of 8,000 lines are held
                writer.close()  # the console's AbortController
                await writer.wait_closed()
                await _until(lambda: admission.large.waiting == 0)
            assert (await held).status_code == 202
            assert admission.in_flight == 0
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 30)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):  # bounded: about ten seconds
        if condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail("the condition never held")
