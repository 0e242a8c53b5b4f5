"""RFC 9457 problem+json answers: one exception type for handlers, and the handlers FastAPI installs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.runtime.database import TRANSIENT_ERRORS, is_transient

PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


# RFC 9457's own members: an extension may not reuse these names.
RESERVED_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "errors"})
# The instance echoes a path the caller chose: cut there, so that no caller decides how large an error body is.
MAX_INSTANCE = 512


class Problem(Exception):
    """Raise from a route or handler to answer with problem+json; `errors` names the fields at fault."""

    def __init__(
        self,
        status: int,
        detail: str,
        /,
        *,
        type_: str = "about:blank",
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        clashing = RESERVED_MEMBERS & extensions.keys()
        if clashing:
            raise ValueError(f"problem extensions may not reuse RFC 9457 members: {sorted(clashing)}")
        self.status = status
        self.detail = detail
        self.type = type_
        self.errors = errors
        self.headers = headers
        self.extensions = extensions


class BodyTooLarge(StarletteHTTPException):
    """A body past its route's limit (http.LimitBody). An HTTPException: FastAPI passes those through unchanged
    when they come out of reading the body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit:,} bytes, the most this endpoint takes.")
        self.limit = limit


def problem_response(
    request: Request,
    status: int,
    detail: str,
    /,
    *,
    type_: str = "about:blank",
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path[:MAX_INSTANCE],
        **extensions,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(error: RequestValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as {field, rule, message}; the request part ('body', 'query') is dropped from field."""
    result = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ())]
        where = location[0] if location else "body"
        # A query parameter or header is one name, though a repeated one is a list: `outcome`, not `outcome.0`.
        field = ".".join(location[1:] if where == "body" else location[1:2]) or where
        if item.get("type") == "json_invalid":
            result.append({"field": "body", "rule": "json", "message": "the body is not valid JSON"})
            continue
        found = {"field": field, "rule": str(item.get("type", "invalid")), "message": str(item.get("msg"))}
        if found not in result:  # a path parameter the access check reads too is validated twice
            result.append(found)
    return result


_FASTAPI_BODY_ERROR = "There was an error parsing the body"  # fastapi.routing, for a body json.loads cannot read


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route takes on this path, asked of the routes themselves (they may be nested routers)."""
    allowed = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.add(method)
    return sorted(allowed | ({"HEAD"} if "GET" in allowed else set()))


def install_problem_handlers(
    app: FastAPI,
    *,
    check_access: Callable[[Request], None] | None = None,
    check_media: Callable[[Request], None] | None = None,
) -> None:
    """problem+json for every error. When a JSON body could not be parsed (FastAPI parses it before any
    dependency), `check_access(request)` runs first, so that a missing token still answers 401, not 422; then
    `check_media(request)`, so that a body declared in another charset answers 415, as it does when it parses."""

    async def access_refused(request: Request) -> Problem | None:
        """The 401/403/404 the route's access check gives, for a body that could not be read as JSON.

        In a worker thread, as FastAPI runs the check for every other request: it may fetch the key set."""
        if check_access is not None:
            try:
                await run_in_threadpool(check_access, request)
            except Problem as refused:
                return refused
        return None

    async def refused_unread(request: Request) -> Problem | None:
        """For a body that could not be read as JSON: the access check's answer, else the media type's."""
        if refused := await access_refused(request):
            return refused
        if check_media is not None:
            try:
                check_media(request)
            except Problem as wrong_media:
                return wrong_media
        return None

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            request, exc.status, exc.detail, type_=exc.type, errors=exc.errors, headers=exc.headers, **exc.extensions
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        unparsed = any(error.get("type") == "json_invalid" for error in exc.errors())
        if unparsed and (refused := await refused_unread(request)):
            return await on_problem(request, refused)
        errors = field_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(request, 422, f"The request is not valid: {detail}", errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            # A body json.loads refused without a JSONDecodeError (not UTF-8, nested too deep): FastAPI says
            # 400 with no field; the same answer as any other body that is not JSON, access checked first.
            if refused := await refused_unread(request):
                return await on_problem(request, refused)
            message = "the body is not valid JSON (UTF-8 text, nested at most a few hundred levels)"
            errors = [{"field": "body", "rule": "json", "message": message}]
            return problem_response(request, 422, f"The request is not valid: body: {message}", errors=errors)
        if isinstance(exc, BodyTooLarge):
            # Met while FastAPI read the body, before the route's access check: that check first.
            if refused := await access_refused(request):
                return await on_problem(request, refused)
            # The rest of the body is not read: the connection must close, or its bytes would be read as the next
            # request (and a client waiting for "100 Continue" would never send them, then hang on reuse).
            headers = {"Connection": "close"}
            errors = [{"field": "body", "rule": "max_body_bytes", "message": exc.detail}]
            return problem_response(request, 413, exc.detail, headers=headers, errors=errors, max_body_bytes=exc.limit)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on this path only (RFC 9110: all of them).
            allowed = ", ".join(_allowed_methods(request))
            return problem_response(
                request, 405, f"{request.method} is not allowed here: {allowed}", headers={"Allow": allowed}
            )
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
        return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database (or broker) is away, not the request at fault: 503 and a hint to retry, never a 500.
        return problem_response(
            request,
            503,
            "A service this API depends on is unavailable; try again shortly.",
            headers={"Retry-After": "5"},
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

    async def on_client_state(request: Request, exc: Exception) -> JSONResponse:
        """An outage's 503 for errors whose class alone does not tell (database.is_transient), else a bug's 500."""
        if is_transient(exc):
            return await on_unavailable(request, exc)
        raise exc  # a bug: the middleware logs it and answers 500

    for unavailable in TRANSIENT_ERRORS:
        if issubclass(unavailable, Exception):
            app.add_exception_handler(unavailable, on_unavailable)
    app.add_exception_handler(asyncpg.InternalClientError, on_client_state)
    app.add_exception_handler(asyncpg.PostgresError, on_client_state)  # a read-only or unmigrated database: 503
