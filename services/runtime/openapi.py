"""The OpenAPI document as clients meet the API: problem+json bodies, bearer tokens, 503 with Retry-After.

FastAPI documents what routes declare; what every route shares (the error body, the token, the answer while a
dependency is away) is added here once, so that generated clients send `Authorization` and parse every error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.runtime.head_limit import MAX_HEAD_BYTES
from services.runtime.middleware import CORRELATION_HEADER
from services.runtime.problems import MAX_INSTANCE, PROBLEM_JSON, TITLES

_REF = "#/components/schemas/{model}"
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


class FieldError(BaseModel):
    field: str = Field(description="The field at fault: a body member (dotted), a query or path parameter, a header")
    rule: str = Field(description="The rule it breaks, e.g. missing, string_too_long, enum, json, cursor")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457. `type` is `about:blank` or a `urn:collabkare:problem:*` a client may branch on; routes add members
    of their own (`tries_left`, `current_status`, `max_body_bytes`, …)."""

    model_config = ConfigDict(extra="allow", title="ProblemDetails")

    type: str = Field(default="about:blank", examples=["urn:collabkare:problem:already-invited"])
    title: str
    status: int
    detail: str
    instance: str = Field(
        max_length=MAX_INSTANCE, description=f"The request's path, its first {MAX_INSTANCE} characters when longer"
    )
    errors: list[FieldError] | None = Field(default=None, description="422: each field at fault")


def _problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="ProblemDetails")}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
_CHALLENGE = {"description": 'Bearer error="invalid_token" when a token was given', "schema": {"type": "string"}}
_CORRELATION = {
    "description": "The caller's X-Correlation-ID, or a new one: quote it to support",
    "schema": {"type": "string"},
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for the errors it answers (their ProblemDetails schema is filled in by `complete`)."""
    return {status: {"description": "problem+json (RFC 9457)", "content": {PROBLEM_JSON: {}}} for status in statuses}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the shared parts to a FastAPI-generated document (in place) and return it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = ProblemDetails.model_json_schema(ref_template=_REF)
    schemas.update(problem.pop("$defs", {}))
    schemas["ProblemDetails"] = problem
    document["components"]["headers"] = {CORRELATION_HEADER: _CORRELATION}
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "Staff or patient token"}
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method in _METHODS:
                _complete_operation(path, operation)
    if not _uses(document, "HTTPValidationError"):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def _complete_operation(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    for status, response in responses.items():
        content = response.get("content", {})
        if PROBLEM_JSON in content or (status == "422" and "HTTPValidationError" in str(content)):
            described = response.get("description", "")
            generic = described in ("", "Validation Error", "problem+json (RFC 9457)")
            responses[status] = _problem(TITLES.get(int(status), "Error") if generic else described)
        response = responses[status]
        if status == "401":
            response.setdefault("headers", {})["WWW-Authenticate"] = _CHALLENGE
        if status == "503":  # a route that describes its own 503 keeps the header every 503 has
            response.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
    if path.startswith("/v1/"):
        operation["security"] = [{"bearer": []}]
        responses.setdefault("500", _problem("Internal server error: the detail quotes the correlation id"))
        away = _problem(
            "A dependency (database, identity provider) is away, or no answer within the deadline "
            "(REQUEST_DEADLINE_SECONDS, 10 s; 60 s for a roster): retry",
            **{"Retry-After": _RETRY_AFTER},
        )
        responses.setdefault("503", away)
        responses.setdefault("431", _problem(f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes"))
        if "requestBody" in operation:
            responses.setdefault("413", _problem("The body is larger than this route takes (64 KiB unless it says)"))
    elif path == "/readyz":
        responses["503"] = {
            "description": "A dependency is away: the same body, status unavailable",
            "content": {"application/json": {"schema": {}}},
        }
    for response in responses.values():
        response.setdefault("headers", {})[CORRELATION_HEADER] = {"$ref": f"#/components/headers/{CORRELATION_HEADER}"}


def _uses(document: dict[str, Any], name: str) -> bool:
    return f"#/components/schemas/{name}" in str(document.get("paths", {}))
