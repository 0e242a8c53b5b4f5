"""Every request answered within its deadline: 503 problem+json (Retry-After) when the work has not answered by then.

With PostgreSQL frozen (a failover, a stalled disk), requests waited for a pooled connection with no bound and, once
they had one, for their statement and then their rollback (each up to the pool's 60 s command timeout): they hung for
the whole outage, where a client or proxy gives up after 10-30 s. The work runs in a task of its own, so that the
answer does not wait for a cancelled statement's rollback; the task is cancelled and ends when its connection does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.cancel import cancel_within, forget
from services.runtime.disconnect import CLIENT_CLOSED_REQUEST
from services.runtime.logging import get_logger
from services.runtime.middleware import EndpointT, endpoint_says, route_of, route_says
from services.runtime.problems import problem_response

_log = get_logger(__name__)
_abandoned: set[asyncio.Future[None]] = set()


def answers_within(seconds: float) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint whose work may take longer than the service's deadline (under its route decorator)."""
    return endpoint_says(deadline_seconds=seconds)


class Deadline:
    """503 once a request has run for its deadline without answering: the service's, or its route's longer one
    (`answers_within`; the route is known once the request has been routed, before the deadline can pass)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = gave_up = False

        async def unless_given_up(message: Message) -> None:
            nonlocal answered
            if gave_up:
                return  # the 503 went out: what the work says after it is nobody's to read
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, unless_given_up))
        loop = asyncio.get_running_loop()
        started, allowed = loop.time(), self.seconds
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=max(0.0, started + allowed - loop.time()))
                if work.done():
                    break
                if answered:
                    await work  # answering already: its body is on its way
                    return
                longer: float = route_says(scope, "deadline_seconds", allowed)
                if longer > allowed:
                    allowed = longer
                elif loop.time() - started >= allowed:
                    break
        except asyncio.CancelledError:
            work.cancel()  # the server's cancellation (a shutdown): the work goes with it
            forget(work)
            raise
        if work.done():
            work.result()  # its exception, if any, is the next middleware's to answer
            return
        gave_up = True
        # Cancelled and left to end with its connection; held here till then (the loop keeps only weak references).
        _abandoned.add(work)
        work.add_done_callback(_abandoned.discard)
        await cancel_within(0, work)
        if await Request(scope, receive).is_disconnected():
            # Nobody is waiting for the answer: counted as the client's (nginx's 499), not as an outage's 503.
            _log.info("http.client_left_before_deadline", method=scope.get("method"), route=route_of(scope))
            await Response(status_code=CLIENT_CLOSED_REQUEST)(scope, receive, send)
            return
        _log.warning("http.deadline_exceeded", method=scope.get("method"), route=route_of(scope), seconds=allowed)
        detail = (
            f"No answer within {allowed:g} s: the service's database or broker is slow or away. Retry later; a retry "
            "may find the work done (a roster's Idempotency-Key makes its retry safe)."
        )
        await problem_response(Request(scope), 503, detail, headers={"Retry-After": "5"})(scope, receive, send)
