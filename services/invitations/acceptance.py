"""Accepting an invite, pure: the checks in order, and what the invite becomes (attempts, lock, expiry, acceptance)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from schemas import Envelope
from services.invitations import identity
from services.invitations.domain import (
    MAX_FACTOR_ATTEMPTS,
    PATIENT_CONNECTED,
    Cause,
    IdentityFactor,
    Invite,
    InviteStatus,
    email_key,
)
from services.invitations.events import accepted_event, expired_event


class Decision(StrEnum):
    ACCEPTED = "accepted"
    ALREADY_ACCEPTED = "already_accepted"  # 409: single use
    REVOKED = "revoked"  # 410
    REPLACED = "replaced"  # 410: revoked or expired, and a newer invite sent in its place (a resend)
    EXPIRED = "expired"  # 410
    LOCKED = "locked"  # 403: too many wrong answers
    WRONG_FACTOR = "wrong_factor"  # 403, counted
    FACTOR_REQUIRED = "factor_required"  # 422, not counted: the patient gave nothing this invite can check
    OTHER_EMAIL = "other_email"  # 403: an invite is for the patient at the address it was sent to
    ALREADY_CONNECTED = "already_connected"  # 409: revoked because the patient connected by an approved request
    ACCOUNT_DELETED = "account_deleted"  # 403: the platform deleted the patient's account (her token outlives it)
    PRACTICE_DELETED = "practice_deleted"  # 410: the platform deleted the practice that sent it


@dataclass(frozen=True)
class Answer:
    """The patient's identity answer, normalised (None where not given)."""

    ssn: str | None = None
    date_of_birth: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class Acceptance:
    decision: Decision
    invite: Invite  # as it must now be stored
    changed: bool  # whether anything must be written
    events: tuple[Envelope, ...] = ()

    @property
    def tries_left(self) -> int:
        return max(0, MAX_FACTOR_ATTEMPTS - self.invite.failed_attempts)


# The request fields that answer each factor.
FACTOR_FIELDS: dict[IdentityFactor, tuple[str, ...]] = {
    "ssn": ("ssn",),
    "date_of_birth_and_phone": ("date_of_birth", "phone"),
}


def accept(
    invite: Invite,
    *,
    patient_id: uuid.UUID,
    patient_email: str,
    answer: Answer,
    key: bytes,
    now: datetime,
    cause: Cause,
    deleted: bool = False,
    practice_deleted: bool = False,
) -> Acceptance:
    """Checks in this order: the patient's email, her account, the practice, used, revoked, expired, locked, then
    the identity factor.

    The email first and always: the token proves access to the mailbox, the factor that it is the patient;
    neither lets another account take the invite, learn what became of it (accepted, revoked, expired, locked), or
    try a factor (a factor is never tried for an account it is not for). Then an account the platform deleted (a
    token issued before the deletion still authenticates until it expires) is refused whatever the invite's state:
    nothing is tried, counted or connected until she registers again. So is an invite of a practice the platform
    deleted (unless she accepted it before).
    """
    if email_key(patient_email) != invite.email_key:
        return Acceptance(Decision.OTHER_EMAIL, invite, changed=False)
    if deleted:
        return Acceptance(Decision.ACCOUNT_DELETED, invite, changed=False)
    if practice_deleted and invite.status is not InviteStatus.ACCEPTED:  # one accepted before: the same 200 again
        return Acceptance(Decision.PRACTICE_DELETED, invite, changed=False)
    if invite.status is InviteStatus.ACCEPTED:
        if invite.accepted_by != str(patient_id):
            return Acceptance(Decision.ALREADY_ACCEPTED, invite, changed=False)
        # The same patient again: a retry after a lost answer gets the same answer, and nothing happens twice; with
        # a matching answer only (a probe got a 200 for a wrong date of birth), and wrong answers are counted and
        # lock the invite as before it was accepted (uncounted, the retry was an oracle for the SSN).
        if invite.locked_at is not None:
            return Acceptance(Decision.LOCKED, invite, changed=False)
        refused = _refused_answer(invite, answer, key)
        if refused is Decision.WRONG_FACTOR:
            return Acceptance(refused, _counted(invite, now), changed=True)
        return Acceptance(refused or Decision.ACCEPTED, invite, changed=False)
    if invite.status is InviteStatus.REVOKED:
        return Acceptance(_ended(invite, Decision.REVOKED), invite, changed=False)
    if invite.current_status(now) is InviteStatus.EXPIRED:
        if invite.status is InviteStatus.EXPIRED:
            return Acceptance(_ended(invite, Decision.EXPIRED), invite, changed=False)
        # Past its time but not yet swept: expire it now, so the answer and the record agree.
        expired = replace(invite, status=InviteStatus.EXPIRED, expired_at=invite.expires_at)
        event: Envelope = expired_event(invite.id, invite.practice_id, invite.expires_at, cause)
        return Acceptance(Decision.EXPIRED, expired, changed=True, events=(event,))
    if invite.locked_at is not None:
        return Acceptance(Decision.LOCKED, invite, changed=False)
    refused = _refused_answer(invite, answer, key)
    if refused is Decision.FACTOR_REQUIRED:
        return Acceptance(refused, invite, changed=False)
    if refused is Decision.WRONG_FACTOR:
        return Acceptance(refused, _counted(invite, now), changed=True)
    # Wrong answers before it was accepted are forgotten: a retry after acceptance starts its own count.
    accepted = replace(
        invite, status=InviteStatus.ACCEPTED, accepted_at=now, accepted_by=str(patient_id), failed_attempts=0
    )
    event = accepted_event(accepted, patient_id, patient_email, cause)
    return Acceptance(Decision.ACCEPTED, accepted, changed=True, events=(event,))


def _counted(invite: Invite, now: datetime) -> Invite:
    """One wrong answer more; the invite locked at the last one allowed."""
    attempts = invite.failed_attempts + 1
    return replace(invite, failed_attempts=attempts, locked_at=now if attempts >= MAX_FACTOR_ATTEMPTS else None)


def _refused_answer(invite: Invite, answer: Answer, key: bytes) -> Decision | None:
    """Why the answer does not do for this invite (nothing given it can check, or nothing matching); None when it
    does, or when the invite asks for none."""
    if not invite.digests.required:
        return None
    checks = _checks(invite, answer, key)
    if not checks:
        return Decision.FACTOR_REQUIRED
    return None if any(checks) else Decision.WRONG_FACTOR


def _ended(invite: Invite, why: Decision) -> Decision:
    """A revoked or expired invite that a resend replaced points the patient at the newer email instead; one
    revoked because the patient connected meanwhile says so."""
    if invite.revoked_by == PATIENT_CONNECTED:
        return Decision.ALREADY_CONNECTED
    return Decision.REPLACED if invite.replaced_by is not None else why


def _checks(invite: Invite, answer: Answer, key: bytes) -> list[bool]:
    """One result per factor that both the invite and the answer carry; empty when there is none."""
    digests, results = invite.digests, []
    if digests.ssn is not None and answer.ssn is not None:
        results.append(identity.matches(key, "ssn", answer.ssn, digests.ssn))
    if (
        digests.date_of_birth is not None
        and digests.phone is not None
        and answer.date_of_birth is not None
        and answer.phone is not None
    ):
        dob = identity.matches(key, "date_of_birth", answer.date_of_birth, digests.date_of_birth)
        phone = identity.matches(key, "phone", answer.phone, digests.phone)
        results.append(dob and phone)
    return results
