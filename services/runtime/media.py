"""The one media type request bodies come in: JSON, in UTF-8."""

from __future__ import annotations

import email.message

from starlette.requests import Request

from services.runtime.problems import Problem


def require_json(request: Request) -> None:
    """415 unless the body is declared application/json (or a +json type) in UTF-8: never guessed at.

    JSON is UTF-8 (RFC 8259); a body declared in another charset (a Latin-1 export, say) would otherwise be read
    as UTF-8: refused, or its accented names garbled."""
    media = email.message.Message()
    media["content-type"] = request.headers.get("content-type", "")
    subtype = media.get_content_subtype()
    if media.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise _unsupported("The body must be application/json.", "media_type")
    charset = media.get_param("charset")
    if charset is not None and str(charset).strip().lower() not in ("utf-8", "utf8"):
        raise _unsupported(f"The body must be UTF-8 JSON; it was declared charset={str(charset)[:40]}.", "charset")


def _unsupported(detail: str, rule: str) -> Problem:
    errors = [{"field": "Content-Type", "rule": rule, "message": detail}]
    return Problem(415, detail, errors=errors, headers={"Accept-Post": "application/json"})
