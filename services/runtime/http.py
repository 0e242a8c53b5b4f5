"""The HTTP app every service serves: correlation ids, problem+json, /healthz, /readyz, /metrics, CORS."""

from __future__ import annotations

import email.message
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.auth import check_access_before_body
from services.runtime.logging import get_logger
from services.runtime.metrics import Metrics
from services.runtime.openapi import CORRELATION_HEADER, complete
from services.runtime.problems import BodyTooLarge, Problem, install_problem_handlers, problem_response

# Every JSON body but a roster's is a few kB: a larger one gets a 413 before it is held in memory. A route that
# takes more says so with `takes_bodies_up_to`.
MAX_JSON_BODY = 64 * 1024
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
ReadinessCheck = Callable[[], Awaitable[bool]]
_log = get_logger(__name__)


async def _json_only(request: Request) -> None:
    """A body in any other media type is refused with 415 rather than guessed at."""
    if not await request.body():
        return
    media = email.message.Message()
    media["content-type"] = request.headers.get("content-type", "")
    subtype = media.get_content_subtype()
    if media.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise Problem(415, "The body must be application/json.", headers={"Accept-Post": "application/json"})


# A parameter after the principal, not a route dependency: route dependencies run before authentication.
JsonOnly = Annotated[None, Depends(_json_only)]


def correlation_id_from(given: str) -> str:
    """The caller's id when it is a safe token (no CR/LF or log forging), else a new one."""
    return given if _SAFE_ID.match(given) else str(uuid.uuid4())


class Correlate:
    """Pure ASGI middleware: the correlation id (request.state, log context, response header) and the HTTP
    metrics. Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware spawns a task and two memory
    streams per request, about a third of the CPU of a small request."""

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
                    _log.exception("http.unhandled", method=scope.get("method"), route=_route_of(scope))
                    if answered:
                        raise
                    detail = f"Something went wrong on our side; quote correlation id {correlation_id} to support."
                    await problem_response(Request(scope), 500, detail)(scope, receive, send_with_id)
        finally:
            route = _route_of(scope)
            self.metrics.http_requests.labels(route, str(status)).inc()
            self.metrics.http_latency.labels(route).observe(time.perf_counter() - started)


EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


def takes_bodies_up_to(limit: int) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint that takes bodies larger than MAX_JSON_BODY (under its route decorator)."""

    def mark(endpoint: EndpointT) -> EndpointT:
        endpoint.max_body_bytes = limit  # type: ignore[attr-defined]
        return endpoint

    return mark


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
            endpoint = getattr(scope.get("route"), "endpoint", None)
            limit: int = getattr(endpoint, "max_body_bytes", MAX_JSON_BODY)
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
    without its body: FastAPI routes a HEAD nowhere (a 405)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        scope["method"] = "GET"

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, headers_only)


def _route_of(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", "unmatched")


def create_http_app(
    *,
    title: str,
    description: str,
    metrics: Metrics,
    readiness: dict[str, ReadinessCheck],
    routers: Sequence[APIRouter],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    # No redirect for a trailing slash: Starlette built its Location from the request's Host header (a 307 to
    # any host a caller names); a path with one is simply not found.
    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan, redirect_slashes=False)
    install_problem_handlers(app, check_access=check_access_before_body)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for router in routers:
        app.include_router(router)

    app.add_middleware(HeadAsGet)
    app.add_middleware(LimitBody)
    app.add_middleware(Correlate, metrics=metrics)

    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", CORRELATION_HEADER],
            expose_headers=[CORRELATION_HEADER],
        )

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    leave_out = Query(
        None,
        description="Checks to leave out, as Kubernetes' own /readyz?exclude= does: a readiness probe leaves out "
        f"what every pod shares and the API can do without ({', '.join(readiness)})",
    )

    @app.get("/readyz", tags=["operations"], summary="Dependencies reachable", response_model=None)
    async def readyz(
        exclude: list[str] | None = leave_out,
    ) -> JSONResponse:
        left_out = set(exclude or ())
        unknown = sorted(left_out - readiness.keys())
        if unknown:
            message = f"no such check: {', '.join(unknown)}; the checks are {', '.join(readiness)}"
            raise Problem(422, message, errors=[{"field": "exclude", "rule": "enum", "message": message}])
        checks = {name: await check() for name, check in readiness.items() if name not in left_out}
        ready = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
        if left_out:
            body["excluded"] = sorted(left_out)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
