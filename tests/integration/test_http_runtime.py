"""The shared HTTP app on a real service runtime: probes, metrics, correlation ids, problem+json, auth."""

from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import jwt
import pytest
import uvicorn
from fastapi import APIRouter
from pydantic import BaseModel, Field

from collabkare.stack.ports import free_port
from services.connections.app import MIGRATIONS
from services.connections.settings import ConnectionsSettings
from services.runtime.auth import Patient, StaffMember, mint_token
from services.runtime.middleware import MAX_JSON_BODY
from services.runtime.service import ServiceRuntime, ServiceSpec
from tests.support import JWT_SECRET, ScratchDatabase, patient_token, service_env, staff_token

PRACTICE = uuid.uuid4()
router = APIRouter()


class Echo(BaseModel):
    reason: str = Field(max_length=5)


@router.post("/v1/practices/{practice_id}/echo")
async def echo(practice_id: uuid.UUID, body: Echo, staff: StaffMember) -> dict[str, str]:
    return {"subject": staff.subject, "reason": body.reason}


@router.get("/v1/practices/{practice_id}/echo")
async def last_echo(practice_id: uuid.UUID, staff: StaffMember) -> dict[str, str]:
    return {"subject": staff.subject}


@router.get("/v1/me")
async def me(patient: Patient) -> dict[str, str | None]:
    return {"patient_id": str(patient.patient_id), "email": patient.email}


@pytest.fixture
async def client(database: ScratchDatabase, topic_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})
    runtime = ServiceRuntime(ServiceSpec("connections", "test", "test", MIGRATIONS, routers=[router]), settings)
    app = runtime.http_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_probes_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    deadline = time.monotonic() + 20
    ready = await client.get("/readyz")
    while ready.status_code != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": True, "broker": True}
    metrics = await client.get("/metrics")
    assert "http_requests_total" in metrics.text
    assert 'http_requests_total{method="GET",route="/readyz",status="200"}' in metrics.text
    await client.request("PROPFIND", "/readyz")  # the parser takes some forty methods: one series for the rest
    await client.head("/readyz")  # answered as a GET, counted as what it was
    await client.get("/openapi.json")  # a Starlette route: it was counted as `unmatched`
    await client.get("/no/such/path")
    counted = (await client.get("/metrics")).text
    assert 'route="/openapi.json",status="200"' in counted and 'route="unmatched",status="404"' in counted
    assert 'method="other",route="/readyz"' in counted and 'method="HEAD",route="/readyz",status="200"' in counted


async def test_readyz_leaves_out_the_checks_a_probe_excludes(database: ScratchDatabase, topic_prefix: str) -> None:
    """Kubernetes' convention (/readyz?exclude=): the probes leave out what every pod shares and the API can do
    without (the broker: the outbox keeps accepted work), so such an outage does not empty the Service."""
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})

    async def relay_down(_: ServiceRuntime) -> bool:
        return False

    spec = ServiceSpec("connections", "test", "test", MIGRATIONS, readiness={"relay": relay_down})
    app = ServiceRuntime(spec, settings).http_app()
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        deadline = time.monotonic() + 20
        partial = await http.get("/readyz", params={"exclude": "relay"})
        while partial.status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            partial = await http.get("/readyz", params={"exclude": "relay"})
        full = await http.get("/readyz")
        only_database = await http.get("/readyz", params=[("exclude", "relay"), ("exclude", "broker")])
        unknown = await http.get("/readyz", params={"exclude": "smpt"})
    assert partial.status_code == 200, partial.text
    assert partial.json() == {"status": "ready", "checks": {"database": True, "broker": True}, "excluded": ["relay"]}
    assert full.status_code == 503 and full.json()["checks"]["relay"] is False
    assert only_database.json()["checks"] == {"database": True}
    assert unknown.status_code == 422 and unknown.headers["content-type"].startswith("application/problem+json")
    assert unknown.json()["errors"][0]["field"] == "exclude" and "smpt" in unknown.json()["detail"]


async def test_readyz_is_false_while_the_database_refuses_writes_or_its_schema_is_behind(
    client: httpx.AsyncClient, database: ScratchDatabase
) -> None:
    """Found by an operator's review: a pod whose migration Job had not run, or whose database had become a
    read-only standby, answered ready (SELECT 1 worked) and then failed every write."""

    async def database_check() -> tuple[int, bool]:
        answer = await client.get("/readyz", params={"exclude": "broker"})
        return answer.status_code, answer.json()["checks"]["database"]

    async def reconnect_as(read_only: str) -> None:  # as a failover does: the service's sessions end, new ones begin
        await admin.execute(f'ALTER DATABASE "{database.name}" SET default_transaction_read_only = {read_only}')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database.name,
        )

    async def eventually(expected: tuple[int, bool]) -> tuple[int, bool]:
        deadline = time.monotonic() + 20
        while (seen := await database_check()) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return seen

    assert await eventually((200, True)) == (200, True)
    admin = await asyncpg.connect(database.admin_url)
    try:
        latest = await admin.fetchval("SELECT max(version) FROM connections.schema_migrations")
        await admin.execute("DELETE FROM connections.schema_migrations WHERE version = $1", latest)
        assert await database_check() == (503, False), "an image newer than its schema is not ready"
        await admin.execute("INSERT INTO connections.schema_migrations (version) VALUES ($1)", latest)
        assert await database_check() == (200, True)
        await reconnect_as("on")
        assert await eventually((503, False)) == (503, False), "a read-only database is not ready"
        # Writable again for new sessions only (a black-box drill: the pod's pooled sessions kept the read-only
        # default, and it stayed unready for good): its sessions are replaced.
        await admin.execute(f'ALTER DATABASE "{database.name}" SET default_transaction_read_only = off')
        assert await eventually((200, True)) == (200, True)
    finally:
        await admin.execute(f'ALTER DATABASE "{database.name}" RESET default_transaction_read_only')
        await admin.close()


async def test_correlation_id_is_echoed_and_unsafe_ones_replaced(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Correlation-ID": "abc-123"})
    assert given.headers["X-Correlation-ID"] == "abc-123"
    forged = await client.get("/healthz", headers={"X-Correlation-ID": "a b\tc"})
    assert forged.headers["X-Correlation-ID"] != "a b\tc"
    uuid.UUID(forged.headers["X-Correlation-ID"])
    # A black-box probe: an SSN-shaped id went into the logs (which trust the key) in clear, and into events.
    for shaped in ("123-45-6789", "555-010-1234", "1980-02-29"):
        replaced = await client.get("/healthz", headers={"X-Correlation-ID": shaped})
        uuid.UUID(replaced.headers["X-Correlation-ID"])
    ours = str(uuid.uuid4())
    assert (await client.get("/healthz", headers={"X-Correlation-ID": ours})).headers["X-Correlation-ID"] == ours


@pytest.mark.parametrize("role", ["front_desk", "practice_manager", "admin"])
async def test_each_management_role_is_let_in(client: httpx.AsyncClient, role: str) -> None:
    response = await client.post(
        f"/v1/practices/{PRACTICE}/echo", json={"reason": "ok"}, headers=_auth(staff_token(PRACTICE, role))
    )
    assert response.status_code == 200, response.text


def _expired() -> str:
    return mint_token(JWT_SECRET, "s", ["admin"], practice_id=PRACTICE, ttl_seconds=-3600)


def _alg_none() -> str:
    claims = {
        "sub": "s",
        "roles": ["admin"],
        "practice_id": str(PRACTICE),
        "iss": "collabkare",
        "aud": "collabkare-api",
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
    }
    return jwt.encode(claims, key=None, algorithm="none")


REFUSALS = {
    "no token": (None, 401),
    "bad signature": (mint_token("another-secret-that-is-32-bytes-long!!", "s", ["admin"], practice_id=PRACTICE), 401),
    "expired": (_expired(), 401),
    "alg none": (_alg_none(), 401),
    "wrong audience": (mint_token(JWT_SECRET, "s", ["admin"], practice_id=PRACTICE, audience="other"), 401),
    "wrong issuer": (mint_token(JWT_SECRET, "s", ["admin"], practice_id=PRACTICE, issuer="evil"), 401),
    "patient token": (patient_token(uuid.uuid4(), "pat@example.com"), 403),
    "non-management role": (mint_token(JWT_SECRET, "s", ["clinician"], practice_id=PRACTICE), 403),
    "another practice": (staff_token(uuid.uuid4(), "admin"), 404),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refusals_are_problem_json(client: httpx.AsyncClient, case: str) -> None:
    token, status = REFUSALS[case]
    headers = _auth(token) if token else {}
    response = await client.post(f"/v1/practices/{PRACTICE}/echo", json={"reason": "ok"}, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    if status == 403 and case == "non-management role":
        assert "front_desk" in body["detail"] and "practice_manager" in body["detail"]


async def test_patient_endpoint_takes_patient_tokens_only(client: httpx.AsyncClient) -> None:
    patient = uuid.uuid4()
    ok = await client.get("/v1/me", headers=_auth(patient_token(patient, "p@example.com")))
    assert ok.json() == {"patient_id": str(patient), "email": "p@example.com"}
    refused = await client.get("/v1/me", headers=_auth(staff_token(PRACTICE)))
    assert refused.status_code == 403
    # Claims that name no patient make the token invalid: 401 as for a bad signature, not the request's fault.
    for bearer in (
        mint_token(JWT_SECRET, "staff-1", ["patient"], email="p@example.com"),
        mint_token(JWT_SECRET, str(patient), ["patient"]),
        mint_token(JWT_SECRET, str(patient), ["patient"], email="p at example.com"),
    ):
        invalid = await client.get("/v1/me", headers=_auth(bearer))
        assert invalid.status_code == 401, invalid.text
        assert invalid.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert invalid.headers["content-type"] == "application/problem+json"


async def test_malformed_input_names_the_field(client: httpx.AsyncClient) -> None:
    headers = _auth(staff_token(PRACTICE))
    bad_path = await client.post("/v1/practices/not-a-uuid/echo", json={"reason": "ok"}, headers=headers)
    assert bad_path.status_code == 422
    assert [e["field"] for e in bad_path.json()["errors"]] == ["practice_id"], (
        "once, though the access check reads it too"
    )
    too_long = await client.post(f"/v1/practices/{PRACTICE}/echo", json={"reason": "far too long"}, headers=headers)
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0] == {
        "field": "reason",
        "rule": "string_too_long",
        "message": "String should have at most 5 characters",
    }
    not_json = await client.post(
        f"/v1/practices/{PRACTICE}/echo", content=b"{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.headers["content-type"] == "application/problem+json"
    # Bodies json.loads refuses without a JSONDecodeError were FastAPI's 400 with no field.
    for unreadable in (b'{"reason": "\xff\xfe"}', b"[" * 30_000 + b"]" * 30_000):
        answer = await client.post(
            f"/v1/practices/{PRACTICE}/echo",
            content=unreadable,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"] == [
            {"field": "body", "rule": "json", "message": answer.json()["errors"][0]["message"]}
        ]
        assert "not valid JSON" in answer.json()["errors"][0]["message"]
    anonymous = await client.post(
        f"/v1/practices/{PRACTICE}/echo", content=b'{"reason": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert anonymous.status_code == 401, "the access check comes first, as for any other body that is not JSON"
    unknown = await client.get("/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    slashed = await client.get(
        "/v1/me/", headers={"Host": "evil.example", **_auth(patient_token(uuid.uuid4(), "p@x.io"))}
    )
    assert slashed.status_code == 404 and "location" not in slashed.headers, "no redirect to the Host a caller names"


async def test_allow_names_every_method_of_the_path_and_head_answers_as_get(client: httpx.AsyncClient) -> None:
    staff = _auth(staff_token(PRACTICE))
    refused = await client.delete(f"/v1/practices/{PRACTICE}/echo", headers=staff)
    assert refused.status_code == 405 and refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["Allow"] == "GET, HEAD, POST", "Starlette named only the first route's (POST)"
    head = await client.head(f"/v1/practices/{PRACTICE}/echo", headers=staff)
    get = await client.get(f"/v1/practices/{PRACTICE}/echo", headers=staff)
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    assert (await client.head(f"/v1/practices/{PRACTICE}/echo")).status_code == 401, "the same access check"


@router.get("/v1/defect")
async def defect() -> None:
    raise RuntimeError("a bug")


async def test_an_unexpected_error_is_a_500_in_problem_json_with_the_correlation_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/v1/defect", headers={"X-Correlation-ID": "trace-me-42"})
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert response.headers["X-Correlation-ID"] == "trace-me-42" and "trace-me-42" in response.json()["detail"]
    assert "a bug" not in response.text, "the defect's own words stay in the log"
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == "http.unhandled"]
    assert [(e["correlation_id"], e["route"]) for e in logged] == [("trace-me-42", "/v1/defect")]
    assert "RuntimeError: a bug" in logged[0]["exception"]


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"reason": "'
    for _ in range(size // 8192):
        yield b"x" * 8192
    yield b'"}'


async def test_a_body_past_the_limit_is_a_413_and_never_held_whole(client: httpx.AsyncClient) -> None:
    """Only the roster routes take large bodies; any other body past 64 KiB was read whole before the token was
    even looked at (200 MB made a service hold 700 MB)."""
    url, huge = f"/v1/practices/{PRACTICE}/echo", b'{"reason": "' + b"x" * MAX_JSON_BODY + b'"}'
    json_type = {"Content-Type": "application/json"}
    for body in (huge, _chunks(MAX_JSON_BODY * 4)):  # with a Content-Length; chunked, counted as it arrives
        response = await client.post(url, content=body, headers={**json_type, **_auth(staff_token(PRACTICE))})
        assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
        assert response.json()["max_body_bytes"] == MAX_JSON_BODY
        assert (
            response.json()["detail"] == "The request body is larger than 65,536 bytes, the most this endpoint takes."
        )
    for token, status in ((None, 401), (staff_token(uuid.uuid4()), 404), (patient_token(uuid.uuid4(), "p@x.io"), 403)):
        headers = {**json_type, **(_auth(token) if token else {})}
        assert (await client.post(url, content=huge, headers=headers)).status_code == status, "access first"
    at_the_limit = b'{"reason": "ok"}'.ljust(MAX_JSON_BODY)
    answer = await client.post(url, content=at_the_limit, headers={**json_type, **_auth(staff_token(PRACTICE))})
    assert answer.status_code == 200, answer.text


async def test_head_a_500_and_a_413_keep_a_real_uvicorn_connection_sane(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """httpx's ASGI transport checks none of this. Under uvicorn a HEAD dropped the keep-alive connection (uvicorn
    read the method from a scope the middleware had changed), a HEAD answered 500 wrote a body after its headers,
    and a 413 sent before the body was read left the body to be read as the next request."""
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})
    app = ServiceRuntime(ServiceSpec("connections", "test", "test", MIGRATIONS, routers=[router]), settings).http_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    serving = asyncio.create_task(server.serve())

    def exchanges() -> tuple[list[tuple[str, int, bytes]], tuple[int, bool]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seen = []
        for method, path in [("HEAD", "/healthz"), ("GET", "/healthz"), ("HEAD", "/v1/defect"), ("GET", "/healthz")]:
            connection.request(method, path)
            answer = connection.getresponse()
            seen.append((f"{method} {path}", answer.status, answer.read()))
        connection.close()
        upload = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        upload.putrequest("POST", f"/v1/practices/{PRACTICE}/echo")
        for name, value in {**_auth(staff_token(PRACTICE)), "Content-Type": "application/json"}.items():
            upload.putheader(name, value)
        upload.putheader("Content-Length", str(MAX_JSON_BODY * 10))
        upload.endheaders()  # and no body: the answer must not wait for it
        refused = upload.getresponse()
        outcome = (refused.status, refused.will_close)
        upload.close()
        return seen, outcome

    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        seen, refused = await asyncio.wait_for(asyncio.to_thread(exchanges), 30)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
    assert seen == [
        ("HEAD /healthz", 200, b""),
        ("GET /healthz", 200, b'{"status":"ok"}'),
        ("HEAD /v1/defect", 500, b""),
        ("GET /healthz", 200, b'{"status":"ok"}'),
    ]
    assert refused == (413, True)


@router.post("/v1/me/echo")
async def my_echo(patient: Patient, body: Echo) -> dict[str, str]:
    return {"reason": body.reason}


@pytest.mark.parametrize(
    ("case", "path", "token", "status"),
    [
        ("no token", f"/v1/practices/{PRACTICE}/echo", None, 401),
        ("bad token", f"/v1/practices/{PRACTICE}/echo", "not-a-jwt", 401),
        ("patient on a staff route", f"/v1/practices/{PRACTICE}/echo", "patient", 403),
        ("another practice", f"/v1/practices/{uuid.uuid4()}/echo", "staff", 404),
        ("staff on a patient route", "/v1/me/echo", "staff", 403),
        ("no token, patient route", "/v1/me/echo", None, 401),
        ("a patient token naming no patient", "/v1/me/echo", "patient without email", 401),
        ("allowed: the body is at fault", f"/v1/practices/{PRACTICE}/echo", "staff", 422),
        ("allowed, patient route", "/v1/me/echo", "patient", 422),
    ],
)
async def test_malformed_json_meets_the_access_check_first(
    client: httpx.AsyncClient, case: str, path: str, token: str | None, status: int
) -> None:
    """FastAPI parses JSON before any dependency: the access answer must not depend on the body being valid."""
    tokens = {
        "staff": staff_token(PRACTICE),
        "patient": patient_token(uuid.uuid4(), "p@example.com"),
        "patient without email": mint_token(JWT_SECRET, str(uuid.uuid4()), ["patient"]),
    }
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {tokens.get(token, token)}"
    response = await client.post(path, content=b"{nope", headers=headers)
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    if status == 422:
        assert response.json()["errors"][0] == {
            "field": "body",
            "rule": "json",
            "message": "the body is not valid JSON",
        }


async def test_a_background_job_that_dies_is_started_again(database: ScratchDatabase, topic_prefix: str) -> None:
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})
    runs: list[int] = []
    up = asyncio.Event()

    async def flaky(runtime: ServiceRuntime) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bug in the job")
        up.set()
        await asyncio.Event().wait()

    spec = ServiceSpec("connections", "test", "test", MIGRATIONS, background_jobs=(flaky,))
    app = ServiceRuntime(spec, settings).http_app()
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(20):
            await up.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            ready = await http.get("/readyz")
            deadline = time.monotonic() + 20
            while ready.status_code != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                ready = await http.get("/readyz")
    assert len(runs) == 2
    assert ready.json()["checks"] == {"database": True, "broker": True, "jobs": True}, ready.text


async def test_a_pod_on_a_schema_behind_its_code_starts_no_work_until_it_is_migrated(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """Found by an operator's review: readiness kept requests away from such a pod, but its consumers joined their
    groups (taking partitions from the migrated pods and stalling them) and its jobs ran until its migrations did."""
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})
    started = asyncio.Event()

    async def job(_: ServiceRuntime) -> None:
        started.set()
        await asyncio.Event().wait()

    admin = await asyncpg.connect(database.admin_url)
    try:
        latest = await admin.fetchval("SELECT max(version) FROM connections.schema_migrations")
        await admin.execute("DELETE FROM connections.schema_migrations WHERE version = $1", latest)
        runtime = ServiceRuntime(
            ServiceSpec("connections", "test", "test", MIGRATIONS, background_jobs=(job,)), settings
        )
        app = runtime.http_app()
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            behind = await http.get("/readyz")
            await asyncio.sleep(1)  # room for a job to have started, had it been let
            assert not started.is_set() and runtime.relay is None
            await admin.execute("INSERT INTO connections.schema_migrations (version) VALUES ($1)", latest)
            async with asyncio.timeout(20):
                await started.wait()
            migrated = await http.get("/readyz", params={"exclude": "broker"})
        assert behind.status_code == 503 and behind.json()["checks"]["database"] is False
        # The broker is asked all the same (it had no producer yet, and read as down: an operator chased Kafka).
        assert behind.json()["checks"]["broker"] is True, behind.text
        assert migrated.status_code == 200, migrated.text
    finally:
        await admin.close()


async def test_a_pod_stopped_while_it_waits_for_its_schema_starts_nothing(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """A review: stop() cancelling the wait just as its readiness query answered (asyncio.wait_for on 3.11 then
    returns the answer) let the wait go on to start the consumers and jobs after stop() had cancelled its tasks."""
    env = service_env(database, "connections", topic_prefix)
    settings = ConnectionsSettings(**{k.lower(): v for k, v in env.items()})
    started = asyncio.Event()

    async def job(_: ServiceRuntime) -> None:
        started.set()

    runtime = ServiceRuntime(ServiceSpec("connections", "test", "test", MIGRATIONS, background_jobs=(job,)), settings)
    asked = asyncio.Event()
    answers = iter([False])

    async def database_ready() -> bool:
        if (answer := next(answers, None)) is not None:
            return answer
        asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return True  # the answer came with the cancellation, and won
        return True

    runtime.database_ready = database_ready  # type: ignore[method-assign]
    await runtime.start()
    async with asyncio.timeout(20):
        await asked.wait()
    await runtime.stop()
    await asyncio.sleep(0.2)  # room for anything started late to run
    assert not started.is_set() and runtime.relay is None
    assert [task for task in asyncio.all_tasks() if task.get_name() in ("start-consumers", "prune_inbox")] == []
