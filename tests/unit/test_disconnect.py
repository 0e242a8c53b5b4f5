"""Work a client no longer waits for is cancelled; work it waits for is untouched (real server: the admission test)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import Request

from services.runtime.disconnect import ClientGone, unless_client_leaves


def _request(left: asyncio.Event) -> Request:
    async def receive() -> dict[str, object]:
        await left.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


async def test_the_answer_of_a_client_still_there() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        return "answer"

    assert await unless_client_leaves(_request(asyncio.Event()), work()) == "answer"


async def test_work_fails_as_it_would_without_the_watch() -> None:
    async def work() -> str:
        raise LookupError("no such batch")

    with pytest.raises(LookupError, match="no such batch"):
        await unless_client_leaves(_request(asyncio.Event()), work())


async def test_the_work_of_a_client_that_left_is_cancelled() -> None:
    left, started, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    watching = asyncio.create_task(unless_client_leaves(_request(left), work()))
    await started.wait()
    left.set()
    with pytest.raises(ClientGone):
        await watching
    assert cancelled.is_set()
