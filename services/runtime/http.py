"""The HTTP app every service serves: correlation ids, problem+json, /healthz, /readyz, /metrics, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.runtime.auth import check_access_before_body
from services.runtime.deadline import Deadline
from services.runtime.logging import get_logger
from services.runtime.media import require_json
from services.runtime.metrics import Metrics
from services.runtime.middleware import CORRELATION_HEADER, Correlate, HeadAsGet, LimitBody
from services.runtime.openapi import complete
from services.runtime.problems import Problem, install_problem_handlers

log = get_logger(__name__)
ReadinessCheck = Callable[[], Awaitable[bool]]


async def _json_only(request: Request) -> None:
    """A body in any other media type is refused with 415 rather than guessed at."""
    if await request.body():
        require_json(request)


# A parameter after the principal, not a route dependency: route dependencies run before authentication.
JsonOnly = Annotated[None, Depends(_json_only)]


def create_http_app(
    *,
    title: str,
    description: str,
    metrics: Metrics,
    readiness: dict[str, ReadinessCheck],
    routers: Sequence[APIRouter],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    cors_origins: Sequence[str] = (),
    deadline_seconds: float = 10.0,
) -> FastAPI:
    # No redirect for a trailing slash: Starlette built its Location from the request's Host header (a 307 to
    # any host a caller names); a path with one is simply not found.
    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan, redirect_slashes=False)
    install_problem_handlers(app, check_access=check_access_before_body, check_media=require_json)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for router in routers:
        app.include_router(router)

    app.add_middleware(LimitBody)
    app.add_middleware(Deadline, seconds=deadline_seconds)  # inside Correlate: its 503 is counted and correlated
    app.add_middleware(Correlate, metrics=metrics)

    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", CORRELATION_HEADER],
            # What a browser client is told to read: the new resource, a replayed submit, when to retry a 503.
            expose_headers=[CORRELATION_HEADER, "Location", "Idempotent-Replayed", "Retry-After"],
        )

    app.add_middleware(HeadAsGet)  # the last added is the outermost

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
        # Side by side: each check has its own bound (2 s for a dependency that does not answer), so with the
        # database, the broker and the SMTP relay all away the answer takes one bound, not their sum.
        names = [name for name in readiness if name not in left_out]
        answers = await asyncio.gather(*(readiness[name]() for name in names), return_exceptions=True)
        checks: dict[str, bool] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):  # a check's own bug: not ready, and said, not a 500
                log.warning("readiness.check_failed", check=name, error=repr(answer)[:300])
            checks[name] = answer is True
        ready = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
        if left_out:
            body["excluded"] = sorted(left_out)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
