"""The ASGI middleware of every service's HTTP app: correlation ids and metrics, body limits, HEAD.

Pure ASGI, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware spawns a task and two memory streams per
request, about a third of the CPU of a small request.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from fastapi import Request
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.logging import get_logger, scrub_text
from services.runtime.metrics import Metrics
from services.runtime.problems import BodyTooLarge, problem_response

# Every JSON body but a roster's is a few kB: a larger one gets a 413 before it is held in memory. A route that
# takes more says so with `takes_bodies_up_to`.
MAX_JSON_BODY = 64 * 1024
CORRELATION_HEADER = "X-Correlation-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_log = get_logger(__name__)


def correlation_id_from(given: str) -> str:
    """The caller's id when it is a safe token (no CR/LF or log forging) with nothing shaped like PHI in it (an
    SSN, a phone number, a date: logs and events carry the id as it is), else a new one."""
    return given if _SAFE_ID.match(given) and scrub_text(given) == given else str(uuid.uuid4())


class Correlate:
    """The correlation id (request.state, log context, response header), the HTTP metrics, and one answer for
    a defect: logged with that id and answered in problem+json."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = correlation_id_from(Headers(scope=scope).get(CORRELATION_HEADER, ""))
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        started = time.perf_counter()
        status, answered = 500, False  # what the client sees when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                MutableHeaders(scope=message)[CORRELATION_HEADER] = correlation_id
            await send(message)

        try:
            with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception:
                    # A defect: logged here, with the correlation id the caller was given, and answered in the
                    # same problem+json as every other error, never Starlette's plain-text page.
                    _log.exception("http.unhandled", method=scope.get("method"), route=route_of(scope))
                    if answered:
                        raise
                    detail = f"Something went wrong on our side; quote correlation id {correlation_id} to support."
                    await problem_response(Request(scope), 500, detail)(scope, receive, send_with_id)
        finally:
            route, method = route_of(scope), _method(scope)
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_latency.labels(method, route).observe(time.perf_counter() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ASKED_METHOD = "collabkare.asked_method"  # HeadAsGet's note in the scope: the app sees a HEAD as a GET


def _method(scope: Scope) -> str:
    """A metric label: the parser takes some forty methods (PROPFIND, MKCALENDAR, ...), one series each is noise."""
    method = str(scope.get(_ASKED_METHOD) or scope.get("method", ""))
    return method if method in _METHODS else "other"


EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


def endpoint_says(**attributes: Any) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint (under its route decorator) with what the middleware must know of it: `route_says` reads it
    once the request has been routed."""

    def mark(endpoint: EndpointT) -> EndpointT:
        for name, value in attributes.items():
            setattr(endpoint, name, value)
        return endpoint

    return mark


def route_says(scope: Scope, name: str, default: Any) -> Any:
    """What the routed endpoint says of itself (`endpoint_says`), or the default."""
    return getattr(getattr(scope.get("route"), "endpoint", None), name, default)


def takes_bodies_up_to(limit: int) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint that takes bodies larger than MAX_JSON_BODY (under its route decorator)."""
    return endpoint_says(max_body_bytes=limit)


class LimitBody:
    """413 as soon as a body passes its route's limit: checked against Content-Length before a byte is read, and
    counted as it arrives otherwise. Raised while the route reads the body, so the access check still comes first
    (see problems.py) and an anonymous client never gets to fill the memory."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited() -> Message:
            nonlocal received
            limit: int = route_says(scope, "max_body_bytes", MAX_JSON_BODY)
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


class HeadAsGet:
    """HEAD, which every general-purpose server must answer (RFC 9110 section 9.1), answered as the GET would be
    without its body: FastAPI routes a HEAD nowhere (a 405). The outermost of the app's middleware, so that every
    answer (a 500 of Correlate's too) loses its body; the app gets a copy of the scope saying GET, and the server
    keeps its own, which still says HEAD (uvicorn reads it to know that no body follows the headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        scope = {**scope, "method": "GET", _ASKED_METHOD: "HEAD"}  # the metrics count it as asked

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, headers_only)


def route_of(scope: Scope) -> str:
    """The route's template (a metric label, bounded). FastAPI's routes name themselves in the scope; Starlette's own
    (/openapi.json, /docs) only leave their endpoint, and their path is fixed: counted by it, not as `unmatched`."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    return str(scope.get("path", "unmatched")) if "endpoint" in scope else "unmatched"
