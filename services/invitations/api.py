"""HTTP routes for individual invites and acceptance: parse, authorise, call a use case, shape the answer."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from services.invitations import handlers, identity
from services.invitations.acceptance import FACTOR_FIELDS, Answer, Decision
from services.invitations.api_support import Factor, Note, Policies, Pool, Tracing, unprocessable
from services.invitations.domain import (
    AlreadyConnected,
    AlreadyInvited,
    AlreadyReplaced,
    Invite,
    InviteStatus,
    NotChangeable,
)
from services.invitations.handlers import InviteNotFound
from services.invitations.views import AcceptedView, HistoryView, InviteView, ResendView
from services.runtime.auth import Patient, StaffMember
from services.runtime.http import JsonOnly
from services.runtime.openapi import problems
from services.runtime.problems import Problem

router = APIRouter(tags=["invites"])
_EMAIL: TypeAdapter[str] = TypeAdapter(EmailStr)


def _format(check: Callable[[Any], Any]) -> AfterValidator:
    """A factor checked and normalised while the body is validated, so every malformed field is named at once
    (rule `format`), and never with its value."""

    def validate(value: Any) -> Any:
        if _blank(value):
            return None
        try:
            return check(value)
        except identity.FactorError as error:
            raise PydanticCustomError("format", str(error)) from None

    return AfterValidator(validate)


def _blank(value: Any) -> bool:
    """A factor not given: absent, empty, or spaces only (a form sends every field)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _birth_date(value: date) -> date:
    identity.check_birth_date(value, datetime.now(UTC).date())
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: Any) -> Any:
    """A date as YYYY-MM-DD, said so: pydantic's own answer to 29/02/1980 is "invalid character in year". Empty is
    not given, as for the other factors (a form sends every field); a number is no date (pydantic would read
    315532800 as seconds since 1970)."""
    if _blank(value):
        return None
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass  # 1980-02-30
    raise PydanticCustomError("format", "expected a real date as YYYY-MM-DD, e.g. 1980-02-29")


Ssn = Annotated[Factor, _format(identity.normalize_ssn)]
IssuedSsn = Annotated[Factor, _format(identity.normalize_issued_ssn)]
Phone = Annotated[Factor, _format(identity.normalize_phone)]
BirthDate = Annotated[date | None, BeforeValidator(_iso_date), _format(_birth_date)]


def _email(value: str) -> str:
    try:
        return _EMAIL.validate_python(value)
    except ValidationError as error:  # pydantic names it "value_error": the rule is the address's format
        reason = error.errors()[0].get("ctx", {}).get("reason", "")
        raise PydanticCustomError("email", "not an email address: {reason}", {"reason": reason}) from None


Email = Annotated[str, AfterValidator(_email), WithJsonSchema(_EMAIL.json_schema())]


class InviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    ssn: IssuedSsn = Field(
        default=None, description="123-45-6789, 123 45 6789 or 123456789; or give date_of_birth and phone"
    )
    date_of_birth: BirthDate = None
    phone: Phone = Field(default=None, description="With the country code, or 10 digits for +1")
    note: Note = None


class AcceptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Stripped: a token copied out of an email often brings a space or a line break along (it was "not valid").
    token: Annotated[str, StringConstraints(strip_whitespace=True)] = Field(
        min_length=1, max_length=200, description="The token from the accept link"
    )
    ssn: Ssn = None
    date_of_birth: BirthDate = None
    phone: Phone = None


def _factors(body: InviteBody | AcceptBody) -> tuple[str | None, str | None, str | None]:
    """(ssn, date_of_birth, phone), normalised when the body was validated."""
    dob = body.date_of_birth.isoformat() if body.date_of_birth else None
    return body.ssn, dob, body.phone


def _conflict(error: AlreadyConnected | AlreadyInvited | NotChangeable | AlreadyReplaced) -> Problem:
    if isinstance(error, AlreadyConnected):
        return Problem(409, str(error), type_="urn:collabkare:problem:already-connected")
    if isinstance(error, AlreadyInvited):
        view = InviteView.of(error.invite).model_dump(mode="json")
        return Problem(409, str(error), type_="urn:collabkare:problem:already-invited", invite=view)
    if isinstance(error, AlreadyReplaced):
        assert error.invite.replaced_by is not None
        replaced_by = str(error.invite.replaced_by)
        return Problem(409, str(error), type_="urn:collabkare:problem:already-resent", replaced_by=replaced_by)
    return Problem(
        409, str(error), type_="urn:collabkare:problem:invite-not-changeable", current_status=error.status.value
    )


_CREATED: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "Created: the new invite is at the `Location` given",
        "headers": {"Location": {"description": "The new invite's URL", "schema": {"type": "string"}}},
    }
}


@router.post(
    "/v1/practices/{practice_id}/invites",
    status_code=201,
    summary="Invite one patient (email plus SSN, or date of birth and phone)",
    description=(
        "Factors are stored only as keyed digests. 409 when the patient is connected or holds a pending invite "
        "on its way or delivered; a pending invite that never reached them (not_on_platform, error) is replaced."
    ),
    responses={**_CREATED, **problems(401, 403, 404, 409, 415, 422)},
)
async def create_invite(
    practice_id: uuid.UUID,
    staff: StaffMember,
    _json: JsonOnly,
    body: InviteBody,
    pool: Pool,
    policy: Policies,
    cause: Tracing,
    response: Response,
) -> InviteView:
    missing = identity.missing_factors(
        ssn=bool(body.ssn), date_of_birth=bool(body.date_of_birth), phone=bool(body.phone)
    )
    if missing:
        names = " and ".join(field for field, _ in missing) if len(missing) == 1 else "ssn, or date_of_birth and phone"
        raise unprocessable(f"Missing: {names}.", [(field, "required", message) for field, message in missing])
    ssn, dob, phone = _factors(body)
    digests = identity.digests(policy.identity_key, ssn=ssn, date_of_birth=dob, phone=phone)
    try:
        invite = await handlers.create_invite(
            pool, policy, practice_id, body.email, body.note, digests, actor=staff.subject, cause=cause
        )
    except (AlreadyConnected, AlreadyInvited) as error:
        raise _conflict(error) from None
    response.headers["Location"] = InviteView.link(invite)
    return InviteView.of(invite)


@router.get(
    "/v1/practices/{practice_id}/invites/{invite_id}",
    summary="One invite: its status, delivery and who did what when (the `Location` of a new invite)",
    responses=problems(401, 403, 404, 422),
)
async def get_invite(practice_id: uuid.UUID, invite_id: uuid.UUID, staff: StaffMember, pool: Pool) -> InviteView:
    try:
        invite, replacement = await handlers.find_invite(pool, practice_id, invite_id)
    except InviteNotFound:
        raise Problem(404, "No such invite.") from None
    return InviteView.of(invite, replacement=replacement)


@router.get(
    "/v1/practices/{practice_id}/invites",
    summary="A patient's access history: every invite, its status, and who did what when",
    responses=problems(401, 403, 404, 422),
)
async def access_history(
    practice_id: uuid.UUID,
    staff: StaffMember,
    pool: Pool,
    email: Annotated[str, Query(min_length=3, max_length=320, description="The patient's email")],
) -> HistoryView:
    try:
        address = _EMAIL.validate_python(email)
    except ValueError:
        raise unprocessable(
            "The request is not valid: email: not an email address", [("email", "email", "not an email address")]
        ) from None
    invites = await handlers.access_history(pool, practice_id, address)
    now, by_id = datetime.now(UTC), {invite.id: invite for invite in invites}
    items = [InviteView.of(i, now, by_id.get(i.replaced_by) if i.replaced_by else None) for i in invites]
    return HistoryView(email=address, items=items)


@router.post(
    "/v1/practices/{practice_id}/invites/{invite_id}/revoke",
    summary="Revoke a pending invite (revoking a revoked one again changes nothing; one a resend replaced is a 409)",
    description=(
        "409 `invite-not-changeable` (with `current_status`) for an accepted or expired invite; 409 `already-resent` "
        "(with `replaced_by`) for one a resend replaced: revoke the newer invite, whose link works."
    ),
    responses=problems(401, 403, 404, 409, 422),
)
async def revoke_invite(
    practice_id: uuid.UUID, invite_id: uuid.UUID, staff: StaffMember, pool: Pool, cause: Tracing
) -> InviteView:
    try:
        invite = await handlers.revoke_invite(pool, practice_id, invite_id, actor=staff.subject, cause=cause)
    except InviteNotFound:
        raise Problem(404, "No such invite.") from None
    except (NotChangeable, AlreadyReplaced) as error:
        raise _conflict(error) from None
    return InviteView.of(invite)


@router.post(
    "/v1/practices/{practice_id}/invites/{invite_id}/resend",
    status_code=201,
    summary="Resend: revoke the invite (if pending) and send a new one with a new token; works on expired invites",
    responses={**_CREATED, **problems(401, 403, 404, 409, 422)},
)
async def resend_invite(
    practice_id: uuid.UUID,
    invite_id: uuid.UUID,
    staff: StaffMember,
    pool: Pool,
    policy: Policies,
    cause: Tracing,
    response: Response,
) -> ResendView:
    try:
        old, new = await handlers.resend_invite(pool, policy, practice_id, invite_id, actor=staff.subject, cause=cause)
    except InviteNotFound:
        raise Problem(404, "No such invite.") from None
    except (AlreadyConnected, AlreadyInvited, NotChangeable, AlreadyReplaced) as error:
        raise _conflict(error) from None
    response.headers["Location"] = InviteView.link(new)
    return ResendView(previous=InviteView.of(old, replacement=new), invite=InviteView.of(new))


def _answer(body: AcceptBody) -> Answer:
    if body.ssn and (body.date_of_birth or body.phone):
        message = "give ssn, or date_of_birth and phone, not both"
        raise unprocessable(f"The request is not valid: {message}.", [("ssn", "one_factor", message)])
    if bool(body.date_of_birth) != bool(body.phone):
        field = "phone" if body.date_of_birth else "date_of_birth"
        other = "date_of_birth" if body.date_of_birth else "phone"
        message = f"required with {other}"
        raise unprocessable(f"Missing: {field}.", [(field, "required", message)])
    ssn, dob, phone = _factors(body)
    return Answer(ssn=ssn, date_of_birth=dob, phone=phone)


@router.post(
    "/v1/invites/accept",
    summary="A patient accepts an invite with its token (and one identity factor when the invite has them)",
    description=(
        "The invite is for the patient at the address it was sent to: the token's email must be that address "
        "(403 otherwise, whatever factor is given). 410 when expired or revoked (`reason` expired or revoked), or when "
        "a resend replaced it (`reason` replaced: the newer email's link works); 403 on a wrong factor (locked "
        "after 5); 409 when already used by another account (the patient who accepted it gets the same 200 again, "
        "given a matching factor again where the invite has them; wrong ones count and lock, as before), "
        "or when the patient connected to the practice meanwhile (an approved request: the invite was revoked by "
        "`system:patient-connected`). 403 `account-deleted` when the platform deleted the patient's account (a "
        "token issued before still authenticates until it expires) and she has not registered again; 410 "
        "`invite-practice-deleted` when the platform deleted the practice that sent it."
    ),
    responses=problems(401, 403, 404, 409, 410, 415, 422),
)
async def accept_invite(
    patient: Patient, _json: JsonOnly, body: AcceptBody, pool: Pool, policy: Policies, cause: Tracing
) -> AcceptedView:
    result = await handlers.accept_invite(
        pool,
        policy,
        body.token,
        patient_id=patient.patient_id,
        patient_email=patient.email,
        answer=_answer(body),
        cause=cause,
    )
    if result is None:
        raise Problem(404, "No such invite: the link is not valid.")
    invite = result.invite
    if result.decision is Decision.ACCEPTED:
        assert invite.accepted_at is not None
        return AcceptedView(
            invite_id=invite.id, practice_id=invite.practice_id, status=invite.status, accepted_at=invite.accepted_at
        )
    raise _refusal(result.decision, invite, result.tries_left)


def _refusal(decision: Decision, invite: Invite, tries_left: int) -> Problem:
    kind = f"urn:collabkare:problem:invite-{decision.value.replace('_', '-')}"
    if decision is Decision.EXPIRED:
        return Problem(
            410, "This invite has expired; ask the practice to send a new one.", type_=kind, reason="expired"
        )
    if decision is Decision.REVOKED:
        return Problem(410, "This invite was revoked by the practice.", type_=kind, reason="revoked")
    if decision is Decision.REPLACED:
        return Problem(
            410,
            "The practice sent a newer invite in place of this one; use the link in the most recent email.",
            type_=kind,
            reason="replaced",
        )
    if decision is Decision.ALREADY_ACCEPTED:
        return Problem(409, "This invite has already been used.", type_=kind)
    if decision is Decision.ACCOUNT_DELETED:  # the same problem type as connections' for a deleted account's requests
        return Problem(
            403,
            "This CollabKare account was deleted; it cannot accept invites until it is registered again.",
            type_="urn:collabkare:problem:account-deleted",
        )
    if decision is Decision.PRACTICE_DELETED:
        return Problem(410, "This practice is no longer on CollabKare; the invite cannot be accepted.", type_=kind)
    if decision is Decision.ALREADY_CONNECTED:
        return Problem(409, "You are already connected to this practice; this invite is no longer needed.", type_=kind)
    # An accepted invite cannot be resent (its patient is connected): no advice to ask for what staff cannot do.
    then = "" if invite.status is InviteStatus.ACCEPTED else "; ask the practice to resend it"
    if decision is Decision.LOCKED:
        return Problem(403, f"This invite is locked after too many wrong answers{then}.", type_=kind)
    if decision is Decision.WRONG_FACTOR:
        detail = "The identity details do not match this invite."
        if tries_left == 0:
            detail += f" The invite is now locked{then}."
        return Problem(403, detail, type_=kind, tries_left=tries_left)
    if decision is Decision.OTHER_EMAIL:
        return Problem(
            403, "This invite was sent to a different email address from the one you signed in with.", type_=kind
        )
    wanted = [FACTOR_FIELDS[factor] for factor in invite.identity_checks]
    needs = " or ".join(" and ".join(fields) for fields in wanted)
    message = f"this invite needs {needs}"
    return unprocessable(f"Missing: {needs}.", [(field, "required", message) for fields in wanted for field in fields])
