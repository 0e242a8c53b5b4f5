"""HTTP routes for rosters: preview, bulk send with Idempotency-Key, results, not-on-platform list and resend."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from services.invitations import batch_handlers
from services.invitations.api_support import (
    BUSY,
    Admission,
    Note,
    Policies,
    Pool,
    Tracing,
    admitted,
    read_json_body,
    unprocessable,
)
from services.invitations.batch_handlers import BatchNotFound, IdempotencyKeyReused
from services.invitations.batch_repository import BatchRecord
from services.invitations.domain import Outcome
from services.invitations.roster import (
    MAX_BYTES,
    MAX_LINES,
    Roster,
    RosterTooLarge,
    Verdict,
    check_size,
    parse_roster,
)
from services.invitations.views import BatchView, PreviewView, ResentView, RowsPage, RowView, preview_json
from services.runtime.auth import StaffMember
from services.runtime.deadline import answers_within
from services.runtime.disconnect import CLIENT_CLOSED_REQUEST, ClientGone, unless_client_leaves
from services.runtime.middleware import takes_bodies_up_to
from services.runtime.openapi import problems
from services.runtime.problems import Problem

router = APIRouter(tags=["rosters"])
# The JSON around a 5 MB roster: escaped line breaks and quotes make it larger than the roster itself.
MAX_BODY = 2 * MAX_BYTES + 64 * 1024
# A 100,000-line roster takes seconds to upload, parse and store (and may wait ROSTER_ADMISSION_WAIT_SECONDS for
# room): more than the service's REQUEST_DEADLINE_SECONDS, which bounds every other request.
ROSTER_DEADLINE_SECONDS = 60.0
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_LINE_NUMBER = re.compile(r"[0-9]{1,6}")  # a roster has at most 100,000 lines
_BASE = "/v1/practices/{practice_id}/invite-batches"


class RosterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roster: str = Field(
        description=f"One email per line, optional note after the first comma (commas at its ends, as a "
        "spreadsheet's empty columns leave them, and double quotes around it are dropped: `a@example.com,,` has no "
        'note, `a@example.com,"Hi, Ann"` has Hi, Ann); blank lines and lines starting with # are skipped; at most '
        f"{MAX_LINES:,} lines and {MAX_BYTES // (1024 * 1024)} MB of UTF-8 text (a larger roster gets a 413 naming "
        "the limit: split it)"
    )
    default_note: Note = None


_ROSTER_REQUEST: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": RosterBody.model_json_schema()}}}
}


async def _roster(request: Request) -> RosterBody:
    """The body (LimitBody answers 413 before an oversized upload is held in memory)."""
    body = await read_json_body(request)
    try:
        return RosterBody.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


def _too_large(error: RosterTooLarge) -> Problem:
    errors = [{"field": "roster", "rule": error.rule, "message": str(error)}]
    return Problem(413, str(error), errors=errors, max_lines=MAX_LINES, max_bytes=MAX_BYTES)


def _lines(body: RosterBody) -> int:
    """The roster's lines, or its 413, answered before it waits for room (counted, not split)."""
    try:
        return check_size(body.roster)
    except RosterTooLarge as error:
        raise _too_large(error) from None


async def _parse(body: RosterBody) -> Roster:
    try:
        # In a worker thread: a 100,000-line parse must not stall the event loop (probes, consumers) for 0.5 s.
        return await asyncio.to_thread(parse_roster, body.roster, body.default_note)
    except RosterTooLarge as error:
        raise _too_large(error) from None


def _digest(body: RosterBody) -> bytes:
    return hashlib.sha256(f"{body.default_note or ''}\x00{body.roster}".encode("utf-8", "surrogatepass")).digest()


@router.post(
    "/v1/practices/{practice_id}/roster/preview",
    summary="Preview a roster: the patients-ready counter and a verdict for every line; nothing is sent",
    description="`already_invited`: the patient holds a pending, unexpired invite that reached them. One that never "
    "did (`not_on_platform`, `error`) does not block: the line is `ready`, and its new invite replaces (revokes) the "
    "old one, which then names it in `replaced_by`; unless that one was sent on its own with an identity check "
    "(SSN, or date of birth and phone), which a roster invite would drop: `already_invited`, resend that invite.",
    response_model=PreviewView,
    openapi_extra=_ROSTER_REQUEST,
    responses={**problems(401, 403, 404, 413, 415, 422), **BUSY},
)
@takes_bodies_up_to(MAX_BODY)
@answers_within(ROSTER_DEADLINE_SECONDS)
async def preview(
    practice_id: uuid.UUID, staff: StaffMember, request: Request, pool: Pool, admission: Admission
) -> Response:
    body = await _roster(request)

    async def answer() -> bytes:
        async with admitted(admission, "preview", _lines(body), len(body.roster)):
            # The answer is built inside: its rows and JSON are most of a preview's memory.
            return preview_json(await batch_handlers.preview(pool, practice_id, await _parse(body)))

    # The console previews as staff type, and drops the preview it no longer needs: one nobody waits for must
    # neither hold the roster budget nor keep the database busy.
    try:
        return Response(await unless_client_leaves(request, answer()), media_type="application/json")
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post(
    "/v1/practices/{practice_id}/invite-batches",
    status_code=202,
    summary="Send a roster: stores the batch, invites every ready line, answers at once",
    description="A repeated Idempotency-Key returns the first batch (header Idempotent-Replayed: true). The key is "
    "the practice's: any of its staff sending the same key and roster gets that batch back.",
    openapi_extra=_ROSTER_REQUEST,
    responses={
        202: {
            "description": "The batch, stored; its rows' outcomes arrive as the emails are sent",
            "headers": {
                "Location": {"description": "The batch's URL, to poll for its outcomes", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when an earlier request with this Idempotency-Key made the batch",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **problems(401, 403, 404, 413, 415, 422),
        **BUSY,
    },
)
@takes_bodies_up_to(MAX_BODY)
@answers_within(ROSTER_DEADLINE_SECONDS)
async def submit(
    practice_id: uuid.UUID,
    staff: StaffMember,
    request: Request,
    response: Response,
    pool: Pool,
    policy: Policies,
    cause: Tracing,
    admission: Admission,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description="1-200 visible ASCII")] = None,
) -> BatchView:
    if idempotency_key is not None and not _KEY.match(idempotency_key):
        message = "expected 1 to 200 visible ASCII characters"
        raise unprocessable(
            f"The request is not valid: Idempotency-Key: {message}", [("Idempotency-Key", "format", message)]
        )
    body = await _roster(request)
    digest = _digest(body)
    try:
        if idempotency_key is not None:
            # A retry is answered before the roster is parsed again.
            earlier = await batch_handlers.find_by_key(pool, practice_id, idempotency_key, digest)
            if earlier is not None:
                return await _replayed(pool, earlier, response)
        # Refused here, nothing is stored: the client's retry with the same Idempotency-Key is a first send.
        async with admitted(admission, "submit", _lines(body), len(body.roster)):
            roster = await _parse(body)
            if not roster.entries:
                message = "no email line: only blank lines or comments (# ...)"
                raise unprocessable(f"Nothing to send: the roster has {message}.", [("roster", "no_emails", message)])
            submission = await batch_handlers.submit_roster(
                pool,
                policy,
                practice_id,
                roster,
                idempotency_key=idempotency_key,
                digest=digest,
                actor=staff.subject,
                cause=cause,
            )
    except IdempotencyKeyReused as error:
        rule = {"field": "Idempotency-Key", "rule": "reused", "message": str(error)}
        raise Problem(422, str(error), errors=[rule]) from None
    if submission.replayed:
        return await _replayed(pool, submission.batch, response)
    response.headers["Location"] = BatchView.link(submission.batch)
    return BatchView.of(submission.batch, _fresh_counts(submission.verdicts))


async def _replayed(pool: asyncpg.Pool, earlier: BatchRecord, response: Response) -> BatchView:
    batch, counts = await batch_handlers.batch_summary(pool, earlier.practice_id, earlier.id)
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = BatchView.link(batch)
    return BatchView.of(batch, counts)


def _fresh_counts(verdicts: dict[str, int]) -> dict[str, int]:
    counts = {outcome.value: verdicts.get(outcome.value, 0) for outcome in Outcome}
    counts[Outcome.QUEUED.value] = verdicts[Verdict.READY.value]
    return counts


@router.get(
    _BASE + "/{batch_id}", summary="Progress of a batch: counts per outcome", responses=problems(401, 403, 404, 422)
)
async def batch_summary(practice_id: uuid.UUID, batch_id: uuid.UUID, staff: StaffMember, pool: Pool) -> BatchView:
    try:
        batch, counts = await batch_handlers.batch_summary(pool, practice_id, batch_id)
    except BatchNotFound as error:
        raise Problem(404, str(error)) from None
    return BatchView.of(batch, counts)


def _without_blanks(values: object) -> object:
    return [value for value in values if value != ""] if isinstance(values, list) else values


@router.get(
    _BASE + "/{batch_id}/rows",
    summary="Per-row outcomes with reasons, in line order, paginated",
    responses=problems(401, 403, 404, 422),
)
async def batch_rows(
    practice_id: uuid.UUID,
    batch_id: uuid.UUID,
    staff: StaffMember,
    pool: Pool,
    outcome: Annotated[
        list[Outcome] | None,
        BeforeValidator(_without_blanks),
        Query(
            description="Only rows with this outcome; repeat it for rows with any of several. Empty (`?outcome=`, "
            "a form's 'all' choice) filters nothing."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size, 1 to 1000")] = 100,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")] = None,
) -> RowsPage:
    after = 0
    if cursor is not None:
        if not _LINE_NUMBER.fullmatch(cursor):
            message = "not a cursor this API returned; use next_cursor from the previous page"
            raise unprocessable(f"The request is not valid: cursor: {message}", [("cursor", "cursor", message)])
        after = int(cursor)
    try:
        rows = await batch_handlers.list_rows(pool, practice_id, batch_id, outcome or None, after, limit + 1)
    except BatchNotFound as error:
        raise Problem(404, str(error)) from None
    items = [RowView(**vars(row)) for row in rows[:limit]]
    return RowsPage(items=items, next_cursor=str(items[-1].line_number) if len(rows) > limit else None)


@router.get(
    _BASE + "/{batch_id}/not-on-platform",
    summary="The not-on-CollabKare list: one email a line, ready to paste",
    description="The rows whose invite ended `not_on_platform`, less any patient who has connected to the practice "
    "since, any row whose invite staff revoked, and any whose invite expired while the patient holds a newer one: "
    "the addresses to ask to register. (A patient who connects while the row's invite is pending turns the row "
    "`already_connected`, and one invited again while it is pending, by a later roster or on their own, turns it "
    "`already_invited`; the rows left out here keep `not_on_platform`, with their `invite_status`, so the batch's "
    "count can exceed this list.)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problems(401, 403, 404, 422)},
)
async def not_on_platform(practice_id: uuid.UUID, batch_id: uuid.UUID, staff: StaffMember, pool: Pool) -> Response:
    try:
        emails = await batch_handlers.not_on_platform(pool, practice_id, batch_id)
    except BatchNotFound as error:
        raise Problem(404, str(error)) from None
    return Response("".join(f"{address}\n" for address in emails), media_type="text/plain; charset=utf-8")


@router.post(
    _BASE + "/{batch_id}/resend-not-on-platform",
    status_code=202,
    summary="Send new invites to the batch's not-on-platform rows (they go back to queued)",
    description="Every such row gets a new invite (the old one is revoked, or expired if past its time); a patient "
    "who has still not registered ends `not_on_platform` again, so press it once they have. A row whose patient "
    "holds a newer invite (another roster's, or one sent on their own) is flagged `already_invited` instead, as the "
    "not-on-platform list leaves them out: that invite is theirs to follow or resend. A row whose invite staff "
    "revoked is left as it is: the resend does not bring back an invite they withdrew.",
    responses={**problems(401, 403, 404, 422), **BUSY},
)
@answers_within(ROSTER_DEADLINE_SECONDS)
async def resend_not_on_platform(
    practice_id: uuid.UUID,
    batch_id: uuid.UUID,
    staff: StaffMember,
    pool: Pool,
    policy: Policies,
    cause: Tracing,
    admission: Admission,
) -> ResentView:
    try:
        # Weighed by the rows it would resend: it holds them all (locked) while it works through them.
        rows = await batch_handlers.not_on_platform_count(pool, practice_id, batch_id)
        async with admitted(admission, "resend", rows):
            result = await batch_handlers.resend_not_on_platform(
                pool, policy, practice_id, batch_id, actor=staff.subject, cause=cause
            )
    except BatchNotFound as error:
        raise Problem(404, str(error)) from None
    return ResentView(batch_id=batch_id, **vars(result))
