"""Rosters on real PostgreSQL and Kafka: preview, bulk send, Idempotency-Key, limits and per-row results."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from collabkare.stack.infra import Infrastructure
from collabkare.stack.ports import free_port
from services.invitations.batch_api import MAX_BODY
from services.invitations.roster import MAX_BYTES, MAX_LINES
from tests.integration.invitations_harness import Service, accepted_while, running_service, staff

PROBLEM = "application/problem+json"
ROSTER = "\n".join(
    [
        "# Riverside, spring list",
        "ann@example.com, Welcome back, Ann!",
        "",
        "  bob@example.com  ",
        "not-an-address",
        "ANN@example.com, again",
        "cat@example.com,",
    ]
)


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


async def _preview(service: Service, practice: uuid.UUID, roster: str, note: str | None = None) -> dict[str, Any]:
    response = await service.http.post(
        f"/v1/practices/{practice}/roster/preview",
        json={"roster": roster, "default_note": note},
        headers=staff(practice),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _connect(service: Service, practice: uuid.UUID, email: str) -> None:
    await service.admin.execute(
        "INSERT INTO invitations.connected_patients VALUES ($1, $2, $3, lower($3), $4, now())",
        practice,
        uuid.uuid4(),
        email,
        uuid.uuid4(),
    )


async def test_preview_gives_the_counter_and_a_verdict_per_line_and_writes_nothing(service: Service) -> None:
    practice = uuid.uuid4()
    await _connect(service, practice, "Bob@Example.com")
    body = await _preview(service, practice, ROSTER, "  Default note  ")
    assert body["patients_ready"] == 2 and body["lines"] == 7 and body["total"] == 5
    assert body["counts"] == {
        "ready": 2,
        "invalid": 1,
        "duplicate": 1,
        "already_connected": 1,
        "already_invited": 0,
    }
    assert [(r["line_number"], r["verdict"], r["email"], r["note"], r["duplicate_of"]) for r in body["rows"]] == [
        (2, "ready", "ann@example.com", "Welcome back, Ann!", None),
        (4, "already_connected", "bob@example.com", "Default note", None),
        (5, "invalid", "not-an-address", "Default note", None),
        (6, "duplicate", "ANN@example.com", "again", 2),
        (7, "ready", "cat@example.com", "Default note", None),
    ]
    reasons = {r["line_number"]: r["reason"] for r in body["rows"]}
    assert reasons[2] is None and "already connected" in reasons[4]
    assert "@-sign" in reasons[5] and reasons[6] == "duplicate of line 2 (the same address, ignoring case)"
    assert await service.fetchval("SELECT count(*) FROM invitations.batches WHERE practice_id = $1", practice) == 0
    assert await service.fetchval("SELECT count(*) FROM invitations.invites WHERE practice_id = $1", practice) == 0


async def test_preview_flags_patients_with_a_pending_invite(service: Service) -> None:
    practice = uuid.uuid4()
    await service.submit(practice, "ann@example.com")
    body = await _preview(service, practice, "Ann@example.com\nbob@example.com")
    assert [r["verdict"] for r in body["rows"]] == ["already_invited", "ready"]
    assert body["rows"][0]["reason"].startswith("a pending invite sent ")
    other = await _preview(service, uuid.uuid4(), "ann@example.com")
    assert other["rows"][0]["verdict"] == "ready", "another practice's invite does not count"


async def test_sending_stores_every_row_and_invites_every_ready_one(service: Service) -> None:
    practice = uuid.uuid4()
    response = await service.http.post(
        f"/v1/practices/{practice}/invite-batches",
        json={"roster": ROSTER, "default_note": "Default note"},
        headers={**staff(practice, "practice_manager", "mgr-7"), "X-Correlation-ID": "send-1"},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}"
    assert batch["patients_ready"] == 3 and batch["total"] == 5 and batch["queued"] == 3 and not batch["done"]
    assert batch["counts"]["queued"] == 3 and batch["counts"]["invalid"] == 1 and batch["counts"]["duplicate"] == 1

    rows = await service.fetch(
        "SELECT line_number, email, note, outcome, invite_id, attempts FROM invitations.batch_rows"
        " WHERE batch_id = $1 ORDER BY line_number",
        uuid.UUID(batch["batch_id"]),
    )
    assert [(r["line_number"], r["outcome"], r["note"], r["attempts"]) for r in rows] == [
        (2, "queued", "Welcome back, Ann!", 1),
        (4, "queued", "Default note", 1),
        (5, "invalid", "Default note", 0),
        (6, "duplicate", "again", 0),
        (7, "queued", "Default note", 1),
    ]
    invited = {r["invite_id"]: r for r in rows if r["invite_id"]}
    events = await service.requested(practice)
    assert set(events) == {str(i) for i in invited}
    for invite_id, event in events.items():
        row = invited[uuid.UUID(invite_id)]
        payload = event["payload"]
        assert (payload["email"], payload["note"], payload["line_number"]) == (
            row["email"],
            row["note"],
            row["line_number"],
        )
        assert payload["batch_id"] == batch["batch_id"] and payload["requested_by"] == "mgr-7"
        assert payload["accept_url"].startswith("https://app.collabkare.test/invites/accept?token=")
        sent_at = datetime.fromisoformat(event["occurred_at"])
        assert datetime.fromisoformat(payload["expires_at"]) - sent_at == timedelta(days=7)
        assert event["correlation_id"] == "send-1" and event["producer"] == "invitations"
    stored = await service.fetch(
        "SELECT id, status, delivery, token_hash FROM invitations.invites WHERE batch_id = $1",
        uuid.UUID(batch["batch_id"]),
    )
    assert {(r["status"], r["delivery"]) for r in stored} == {("pending", "queued")} and len(stored) == 3
    tokens = {e["payload"]["accept_url"].rsplit("=", 1)[1] for e in events.values()}
    assert not any(t.encode() in r["token_hash"] for t in tokens for r in stored), "tokens are stored hashed"


async def test_idempotency_key_returns_the_first_batch_instead_of_sending_twice(service: Service) -> None:
    practice = uuid.uuid4()
    roster = "ann@example.com\nbob@example.com"
    first, again, *racing = await asyncio.gather(
        *(service.submit(practice, roster, **{"Idempotency-Key": "roster-2026-11-21"}) for _ in range(4))
    )
    assert {first["batch_id"], again["batch_id"], *(r["batch_id"] for r in racing)} == {first["batch_id"]}
    replay = await service.http.post(
        f"/v1/practices/{practice}/invite-batches",
        json={"roster": roster},
        headers={**staff(practice), "Idempotency-Key": "roster-2026-11-21"},
    )
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["batch_id"] == first["batch_id"]
    assert await service.fetchval("SELECT count(*) FROM invitations.batches WHERE practice_id = $1", practice) == 1
    assert len(await service.requested(practice)) == 2

    reused = await service.http.post(
        f"/v1/practices/{practice}/invite-batches",
        json={"roster": roster + "\ncat@example.com"},
        headers={**staff(practice), "Idempotency-Key": "roster-2026-11-21"},
    )
    assert reused.status_code == 422 and reused.headers["content-type"] == PROBLEM
    assert reused.json()["errors"][0]["field"] == "Idempotency-Key"
    bad = await service.http.post(
        f"/v1/practices/{practice}/invite-batches",
        json={"roster": roster},
        headers={**staff(practice), "Idempotency-Key": "spaces are not allowed"},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Idempotency-Key"
    elsewhere = await service.submit(uuid.uuid4(), roster, **{"Idempotency-Key": "roster-2026-11-21"})
    assert elsewhere["batch_id"] != first["batch_id"], "keys are per practice"


async def test_overlapping_batches_never_invite_a_patient_twice(service: Service) -> None:
    practice = uuid.uuid4()
    emails = [f"p{i}@example.com" for i in range(200)]
    answers = await asyncio.gather(
        service.submit(practice, "\n".join(emails[:150])), service.submit(practice, "\n".join(emails[50:]))
    )
    assert sorted(a["patients_ready"] for a in answers) == [50, 150]
    assert sum(a["counts"]["already_invited"] for a in answers) == 100
    per_email = await service.fetch(
        "SELECT email_key, count(*) AS n FROM invitations.invites WHERE practice_id = $1 GROUP BY email_key", practice
    )
    assert len(per_email) == 200 and {r["n"] for r in per_email} == {1}


async def test_an_undelivered_invite_accepted_while_its_roster_is_stored_makes_the_row_already_connected(
    service: Service,
) -> None:
    """Found by a concurrency review: a roster replacing an undelivered invite read it unlocked, stored its rows,
    and only then locked it; a patient who accepted it in between (an `error` delivery may have arrived) got a new
    invite as well, though connected. The roster now locks the invites it replaces before it stores anything."""
    practice = uuid.uuid4()
    await service.submit(practice, "ann@example.com")
    old = await service.fetchval("SELECT id FROM invitations.invites WHERE practice_id = $1", practice)
    await service.admin.execute("UPDATE invitations.invites SET delivery = 'error' WHERE id = $1", old)
    batch = await accepted_while(service, old, service.submit(practice, "ann@example.com\nbob@example.com"))
    assert batch["counts"]["already_connected"] == 1 and batch["patients_ready"] == 1, batch["counts"]
    rows = await service.fetch(
        "SELECT email, outcome, invite_id FROM invitations.batch_rows WHERE batch_id = $1 ORDER BY line_number",
        uuid.UUID(batch["batch_id"]),
    )
    assert [(r["email"], r["outcome"], r["invite_id"] is None) for r in rows] == [
        ("ann@example.com", "already_connected", True),
        ("bob@example.com", "queued", False),
    ]
    invites = await service.fetch(
        "SELECT email_key, status, replaced_by FROM invitations.invites WHERE practice_id = $1", practice
    )
    assert sorted((r["email_key"], r["status"], r["replaced_by"]) for r in invites) == [
        ("ann@example.com", "accepted", None),
        ("bob@example.com", "pending", None),
    ]


async def test_size_limits_answer_413_with_the_limit(service: Service) -> None:
    practice = uuid.uuid4()
    url = f"/v1/practices/{practice}/invite-batches"
    at_limit = "\n" * (MAX_LINES - 1) + "ann@example.com"
    assert (await _preview(service, practice, at_limit))["lines"] == MAX_LINES
    for roster in ("\n" * MAX_LINES + "ann@example.com", "#" * (MAX_BYTES + 1)):
        response = await service.http.post(url, json={"roster": roster}, headers=staff(practice))
        assert response.status_code == 413 and response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["max_lines"] == MAX_LINES and body["max_bytes"] == MAX_BYTES
        assert "100,000" in body["detail"] or "5 MB" in body["detail"]
        # The field and the rule, as every 422 names them (an integrating team's review: 413s named neither).
        [error] = body["errors"]
        assert (error["field"], error["rule"]) == ("roster", "max_lines" if roster.startswith("\n") else "max_bytes")
    huge = b'{"roster": "' + b"x" * (MAX_BODY + 1) + b'"}'
    response = await service.http.post(
        url, content=huge, headers={**staff(practice), "Content-Type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["max_body_bytes"] == MAX_BODY
    assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [("body", "max_body_bytes")]
    assert (
        response.json()["detail"]
        == f"The request body is larger than {MAX_BODY:,} bytes, the most this endpoint takes."
    )
    assert await service.fetchval("SELECT count(*) FROM invitations.batches WHERE practice_id = $1", practice) == 0


@pytest.mark.parametrize("endpoint", ["invite-batches", "roster/preview"])
async def test_malformed_bodies_name_the_field(service: Service, endpoint: str) -> None:
    practice = uuid.uuid4()
    url = f"/v1/practices/{practice}/{endpoint}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "roster"),
        ({"roster": 5}, "roster"),
        ({"roster": "a@example.com", "default_note": "x" * 501}, "default_note"),
        ({"roster": "a@example.com", "extra": 1}, "extra"),
    ]
    if endpoint == "invite-batches":
        cases.append(({"roster": "# nobody yet\n\n   \n"}, "roster"))  # was a 202 for an empty batch, done at once
    for body, field in cases:
        response = await service.http.post(url, json=body, headers=staff(practice))
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field]
    text = await service.http.post(
        url, content=b"a@example.com", headers={**staff(practice), "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    for media in (
        "application/json; charset=utf-8",
        'application/json; charset="UTF-8"',
        "application/merge-patch+json",
    ):
        typed = await service.http.post(url, content=b"{}", headers={**staff(practice), "Content-Type": media})
        assert typed.status_code == 422, media  # the media type is taken; the empty roster is not
    # A spreadsheet's Latin-1 export was read as UTF-8: a 422 for its first "é", or garbled names.
    latin = '{"roster": "Renée <renee@example.com>"}'.encode("cp1252")
    exported = await service.http.post(
        url, content=latin, headers={**staff(practice), "Content-Type": "application/json; charset=windows-1252"}
    )
    assert exported.status_code == 415 and "UTF-8" in exported.json()["detail"], exported.text
    broken = await service.http.post(
        url, content=b"{nope", headers={**staff(practice), "Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and broken.json()["errors"][0]["field"] == "body"
    # No body at all, with or without a Content-Type: what every other route answers (was a 415, or "not valid JSON").
    for headers in ({}, {"Content-Type": "application/json"}):
        empty = await service.http.post(url, content=b"", headers={**staff(practice), **headers})
        assert empty.status_code == 422, empty.text
        assert [(e["field"], e["rule"]) for e in empty.json()["errors"]] == [("body", "missing")]
    assert await service.fetchval("SELECT count(*) FROM invitations.batches WHERE practice_id = $1", practice) == 0


async def test_results_summary_and_paginated_rows(service: Service) -> None:
    practice = uuid.uuid4()
    batch = await service.submit(practice, ROSTER)
    base = f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}"
    summary = (await service.http.get(base, headers=staff(practice))).json()
    assert summary["total"] == 5 and summary["patients_ready"] == 3 and summary["queued"] == 3
    assert summary["counts"] == {
        "queued": 3,
        "sent": 0,
        "not_on_platform": 0,
        "error": 0,
        "invalid": 1,
        "duplicate": 1,
        "already_connected": 0,
        "already_invited": 0,
    }
    assert summary["done"] is False and summary["links"]["rows"] == f"{base}/rows"

    lines, cursor = [], None
    for _ in range(20):  # bounded: an API that kept handing out cursors fails the assertion below
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await service.http.get(f"{base}/rows", params=params, headers=staff(practice))).json()
        lines += [row["line_number"] for row in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert lines == [2, 4, 5, 6, 7]
    invalid = (await service.http.get(f"{base}/rows?outcome=invalid", headers=staff(practice))).json()
    assert [(r["line_number"], r["outcome"]) for r in invalid["items"]] == [(5, "invalid")]
    assert invalid["items"][0]["reason"].startswith("not a valid email address")
    # Repeated, the filter takes rows with any of the outcomes (it used to keep only the last value, silently).
    either = await service.http.get(f"{base}/rows?outcome=invalid&outcome=duplicate", headers=staff(practice))
    assert sorted(r["outcome"] for r in either.json()["items"]) == ["duplicate", "invalid"]
    for edited in ("abc", "2147483648", "\u0663", "\uff13", "3\n"):  # past int4; digits, but not 0-9: were 500s / pages
        answer = await service.http.get(f"{base}/rows", params={"cursor": edited}, headers=staff(practice))
        assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "cursor", edited
    lost = await service.http.get(f"{base}/rows?outcome=lost&outcome=sent", headers=staff(practice))
    assert lost.status_code == 422
    assert [(e["field"], e["rule"]) for e in lost.json()["errors"]] == [("outcome", "enum")], "not outcome.0"
    everything = await service.http.get(f"{base}/rows?outcome=", headers=staff(practice))  # a form's "all"
    assert [row["line_number"] for row in everything.json()["items"]] == [2, 4, 5, 6, 7], everything.text
    empty = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert empty.status_code == 200 and empty.text == "" and empty.headers["content-type"].startswith("text/plain")
    unknown = f"/v1/practices/{practice}/invite-batches/{uuid.uuid4()}"
    for suffix in ("", "/rows", "/not-on-platform"):
        assert (await service.http.get(unknown + suffix, headers=staff(practice))).status_code == 404
    assert (await service.http.post(unknown + "/resend-not-on-platform", headers=staff(practice))).status_code == 404
    other = uuid.uuid4()
    foreign = f"/v1/practices/{other}/invite-batches/{batch['batch_id']}"
    for suffix in ("", "/rows", "/not-on-platform"):  # each looks the batch up itself: each is checked
        answer = await service.http.get(foreign + suffix, headers=staff(other))
        assert answer.status_code == 404, ("batches stay in their practice", suffix)
    resend = await service.http.post(foreign + "/resend-not-on-platform", headers=staff(other, "admin"))
    assert resend.status_code == 404
    assert (await service.http.get(f"{base}/rows", headers=staff(practice))).json()["items"], "the batch untouched"


async def test_database_unavailable_is_a_problem_json_503(service: Service) -> None:
    practice = uuid.uuid4()
    batch = await service.submit(practice, "ann@example.com")
    nowhere = await asyncpg.create_pool(f"postgresql://nobody@127.0.0.1:{free_port()}/none", min_size=0, timeout=2)
    working, service.runtime.pool = service.runtime.pool, nowhere
    try:
        answers = [
            await service.http.get(
                f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}", headers=staff(practice)
            ),
            await service.http.post(
                f"/v1/practices/{practice}/roster/preview", json={"roster": "bob@example.com"}, headers=staff(practice)
            ),
        ]
    finally:
        service.runtime.pool = working
        await nowhere.close()
    for answer in answers:
        assert answer.status_code == 503 and answer.headers["content-type"] == PROBLEM, answer.text
        assert answer.headers["Retry-After"] == "5" and "unavailable" in answer.json()["detail"]
