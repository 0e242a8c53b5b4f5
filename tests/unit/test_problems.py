"""What the problem handlers answer when the database is away: 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.runtime.database import TRANSIENT_ERRORS
from services.runtime.problems import install_problem_handlers


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("connection is closed"),
        # What a connection broken by a PostgreSQL restart raises on its next use (the restart drill saw a 500).
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        ConnectionResetError("reset by peer"),
    ],
)
async def test_a_database_going_away_is_a_503_with_retry_after(error: Exception) -> None:
    assert isinstance(error, TRANSIENT_ERRORS)
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
