"""A request's head (request line and headers) is bounded; bodies, and heads of any real size, are not affected.

Served by uvicorn on a loopback port with the protocol every service runs (services.runtime.serve).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from collabkare.stack.ports import free_port
from services.runtime.head_limit import MAX_HEAD_BYTES, BoundedHeadProtocol
from services.runtime.openapi import ProblemDetails


async def echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    return PlainTextResponse(f"{len(body)} {len(request.headers.get('authorization', ''))}")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None, http=BoundedHeadProtocol)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def _exchange(port: int, *requests: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1) if b"Connection: close" in requests[-1] else await reader.read(65536)
    finally:
        writer.close()


def _get(authorization_bytes: int, close: bool = True) -> bytes:
    token = b"Bearer " + b"a" * authorization_bytes
    return (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + token
        + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n"
    )


async def test_a_head_past_the_limit_is_431_and_the_connection_closed(port: int) -> None:
    """A 64 MB Authorization header was parsed for 10 s and grew the process by 130 MB before its 401."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
    for _ in range(64):  # 4 MiB of a header that never ends: answered all the same, once past the limit
        writer.write(b"a" * 65536)
        await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read(-1)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"application/problem+json" in head
    # A ProblemDetails as the OpenAPI documents every error (it lacked the instance).
    problem = ProblemDetails.model_validate_json(body)
    assert (problem.status, problem.instance) == (431, "/echo")


@pytest.mark.parametrize("size", [MAX_HEAD_BYTES + 100, 2 * MAX_HEAD_BYTES - 4096])
async def test_a_head_past_the_limit_that_ends_within_one_read_is_431_too(
    port: int, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Heads of up to about 512 KiB were answered 200: the read that completed a head was never counted."""
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        answer = await _exchange(port, _get(size))
        invalid = await _exchange(port, b"NOT HTTP\r\n\r\n")
    assert [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"] == [
        "Invalid HTTP request received."
    ], "uvicorn's parser-error line is logged for the request that was not HTTP, not for the 431"
    assert invalid.startswith(b"HTTP/1.1 400")
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b'"status":431' in answer and b"400" not in answer.split(b"\r\n")[0]


async def test_heads_of_real_size_bodies_and_keep_alive_are_untouched(port: int) -> None:
    assert b"200 OK" in (answer := await _exchange(port, _get(8 * 1024)))
    assert answer.endswith(b"0 8199")
    almost = MAX_HEAD_BYTES - 1024
    assert (await _exchange(port, _get(almost))).endswith(f"0 {almost + 7}".encode())
    body = b"x" * (5 * 1024 * 1024)  # a roster's 5 MB arrives in many reads, none of them counted as head
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert (await _exchange(port, post + body)).endswith(f"{len(body)} 0".encode())
    twice = await _exchange(port, _get(100, close=False) + _get(100))  # two requests, one connection
    assert twice.count(b"HTTP/1.1 200 OK") == 2
