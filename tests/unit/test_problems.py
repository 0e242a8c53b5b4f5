"""What the problem handlers answer: 503 with Retry-After when the database is away, never a 500; a bounded instance."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.runtime.database import is_transient
from services.runtime.problems import MAX_INSTANCE, Problem, install_problem_handlers


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("connection is closed"),
        # What a connection broken by a PostgreSQL restart raises on its next use (the restart drill saw a 500).
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        ConnectionResetError("reset by peer"),
        # Found by an operator's review: these were dead-lettered by consumers and answered 500 by the APIs.
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),  # a failover
        asyncpg.UndefinedTableError('relation "connections.practices" does not exist'),  # not migrated yet
        asyncpg.DiskFullError("could not extend file"),
        asyncpg.InsufficientPrivilegeError("permission denied for table invites"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    ],
)
async def test_a_database_going_away_is_a_503_with_retry_after(error: Exception) -> None:
    assert is_transient(error)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/thing")
    async def thing() -> None:
        raise error

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.get("/thing")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("no encoder for OID 1234"),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type uuid"),
        asyncpg.PostgresSyntaxError("syntax error at or near"),
    ],
)
async def test_an_asyncpg_client_bug_or_an_inputs_error_stays_a_500(error: Exception) -> None:
    """Only the broken-connection state error is an outage; asyncpg's other internal errors are bugs to see, and a
    data or constraint error is the input's (a consumer dead-letters it once retries do not help)."""
    assert not is_transient(error)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/thing")
    async def thing() -> None:
        raise error

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/thing")).status_code == 500


async def test_the_instance_is_the_path_cut_to_a_bounded_length() -> None:
    """The caller chooses the path: echoed whole, it would make every error body as large as they like."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/things/{name}")
    async def thing(name: str) -> None:
        raise Problem(404, "No such thing.")

    long_path = "/things/" + "x" * 20_000
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        short = await http.get("/things/lamp")
        routed = await http.get(long_path)
        unrouted = await http.get("/nowhere/" + "y" * 20_000)
    assert short.json()["instance"] == "/things/lamp"
    assert routed.status_code == 404 and routed.json()["instance"] == long_path[:MAX_INSTANCE]
    assert unrouted.status_code == 404 and unrouted.json()["instance"] == ("/nowhere/" + "y" * 20_000)[:MAX_INSTANCE]
