"""The notifier's rules: which email an event asks for, what an SMTP answer means, and the outcome it becomes."""

from __future__ import annotations

import enum
import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from email_validator import EmailNotValidError, validate_email

from schemas import ConnectionApproved, ConnectionRejected, DeliveryOutcome, Envelope, InviteRequested
from schemas.events import DeliveryOutcomePayload, InviteRequestedPayload
from services.runtime.logging import mask_email

Kind = Literal["invite", "connection_approved", "connection_rejected"]
Outcome = Literal["sent", "not_on_platform", "error"]
Locale = Literal["en", "es"]

KIND_OF_EVENT: dict[str, Kind] = {
    "InviteRequested": "invite",
    "ConnectionApproved": "connection_approved",
    "ConnectionRejected": "connection_rejected",
}
# Fixed forever: delivery ids are derived from source event ids, so a replay finds the same row.
_DELIVERY_NAMESPACE = uuid.UUID("0b7d4f1e-5c1a-4f3e-9a57-2f6c1d0e8b42")
MAX_REASON = 1000  # DeliveryOutcome.reason's limit


def delivery_id_for(source_event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_DELIVERY_NAMESPACE, str(source_event_id))


def sender_run_id(instance: str | None, tail: bytes) -> uuid.UUID:
    """A sender run's name on its claims (deliveries.claimed_by): 8 bytes of `tail` (random) after 8 bytes naming
    the process slot it runs in (NOTIFIER_INSTANCE), so that a later run in that slot knows its dead predecessors'
    claims from a live process's; without a slot, all 16 bytes are `tail`'s."""
    if instance is None:
        return uuid.UUID(bytes=tail[:16])
    return uuid.UUID(bytes=instance_prefix(instance) + tail[:8])


def instance_prefix(instance: str) -> bytes:
    """The first 8 bytes of every run id in this process slot."""
    return hashlib.blake2b(f"collabkare.notifier.instance.{instance}".encode(), digest_size=8).digest()


def slot_lock_key(instance: str) -> int:
    """The session advisory lock the process running in this slot holds (a signed 64-bit key): a second live
    process given the same NOTIFIER_INSTANCE finds it taken."""
    return int.from_bytes(instance_prefix(instance), "big", signed=True)


def instance_runs(instance: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and the highest run id of this slot: its runs are those between (uuid order is byte order)."""
    prefix = instance_prefix(instance)
    return uuid.UUID(bytes=prefix + bytes(8)), uuid.UUID(bytes=prefix + b"\xff" * 8)


def message_id_for(source_event_id: uuid.UUID, domain: str) -> str:
    """Derived from the event alone, under the sender's domain (RFC 5322 wants one we control; filters score a
    Message-ID whose domain is not fully qualified): a duplicate from the crash window carries the same
    Message-ID as the first."""
    return f"<{source_event_id}@{domain}>"


@dataclass(frozen=True)
class NewDelivery:
    """An email one consumed event asks for, before anyone knows whether it can be sent."""

    id: uuid.UUID
    source_event_id: uuid.UUID
    source_event_type: str
    kind: Kind
    recipient: str
    practice_id: uuid.UUID | None
    correlation_id: str
    # Fixed when queued and stored with the delivery: every attempt, and a crash-window duplicate, carries this one
    # even if the sender's domain has changed since.
    message_id: str
    invite_id: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None
    line_number: int | None = None
    note: str | None = None
    accept_url: str | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    identity_check: str | None = None  # "ssn", "date_of_birth_and_phone" or EITHER_CHECK: what accepting asks for
    replaces: uuid.UUID | None = None  # the invite this one resends: the email says the earlier link is dead


# Staff entered both the SSN and the date of birth and phone: accepting takes either (the email says so).
EITHER_CHECK = "ssn_or_date_of_birth_and_phone"


def _identity_check(invite: InviteRequestedPayload) -> str | None:
    if invite.identity_checks is not None and len(set(invite.identity_checks)) > 1:
        return EITHER_CHECK
    return invite.identity_check


def delivery_for(event: Envelope, message_id_domain: str) -> NewDelivery:
    """The delivery an event asks for (built directly: dataclasses.replace costs more than the rest)."""
    invite = event.payload if isinstance(event, InviteRequested) else None
    if isinstance(event, ConnectionApproved | ConnectionRejected):
        recipient = event.payload.patient_email
    elif invite is not None:
        recipient = invite.email
    else:
        raise TypeError(f"no email for {event.event_type}")
    return NewDelivery(
        id=delivery_id_for(event.event_id),
        source_event_id=event.event_id,
        source_event_type=event.event_type,
        kind=KIND_OF_EVENT[event.event_type],
        recipient=recipient,
        practice_id=event.practice_id,
        correlation_id=event.correlation_id,
        message_id=message_id_for(event.event_id, message_id_domain),
        invite_id=invite.invite_id if invite else None,
        batch_id=invite.batch_id if invite else None,
        line_number=invite.line_number if invite else None,
        note=(invite.note or None) if invite else None,
        accept_url=invite.accept_url if invite else None,
        expires_at=invite.expires_at if invite else None,
        reason=(event.payload.reason or None) if isinstance(event, ConnectionRejected) else None,
        identity_check=_identity_check(invite) if invite else None,
        replaces=invite.replaces if invite else None,
    )


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for this attempt, with what the directories know about its recipient and practice."""

    delivery: NewDelivery
    attempts: int  # including this one
    on_platform: bool
    locale: Locale
    patient_name: str | None
    practice_name: str | None
    reply_to: str | None
    revoked: bool = False  # its invite was revoked while it was being sent (and that attempt did not end it)
    earlier_sent: bool = False  # an invite it replaces was emailed (or is not known yet): that link no longer works
    connected: bool = False  # an invite's or rejection's patient is connected to the practice (a ConnectionApproved)
    departed: bool = False  # a connection email's patient was deleted by the platform, and has not registered again


def smtp_address(address: str) -> str:
    """The address as MAIL/RCPT and a To: header carry it: as it is when ASCII, with an internationalised domain
    in its IDNA form (ann@bücher.de -> ann@xn--bcher-kva.de) so that any server takes it; an address whose mailbox
    name is not ASCII stays as it is and needs a server offering SMTPUTF8 (RFC 6531)."""
    if address.isascii():
        return address
    try:
        return validate_email(address, check_deliverability=False).ascii_email or address
    except EmailNotValidError:
        return address


def content_problem(claimed: Claimed, now: datetime) -> str | None:
    """Why this delivery can never be sent, whatever the server says; None when it can be tried."""
    delivery = claimed.delivery
    if delivery.kind == "invite":
        url = delivery.accept_url or ""
        if not url.startswith(("https://", "http://")) or not url.isprintable() or " " in url:
            return "the accept link is not an http(s) URL"
        if delivery.expires_at is None:
            return "the invite has no expiry date"
        if delivery.expires_at <= now:
            return "the invite expired before its email could be sent"
    return None


class Attempt(enum.Enum):
    """What one SMTP attempt came to."""

    SENT = "sent"
    TRANSIENT = "transient"  # 4xx, timeout, dropped connection: worth another attempt later
    PERMANENT = "permanent"  # 5xx or a message that can never be sent: an error outcome now
    UNREACHABLE = "unreachable"  # no connection at all: the message was not tried, the attempt does not count
    REVOKED = "revoked"  # the invite was revoked while its claim waited: not tried, ended as revoked


@dataclass(frozen=True)
class SendResult:
    attempt: Attempt
    reply: str  # the server's reply ("250 2.0.0 OK", "550 5.1.1 ...") or what went wrong


def classify_reply(code: int) -> Attempt:
    if 200 <= code < 300:
        return Attempt.SENT
    return Attempt.PERMANENT if 500 <= code < 600 else Attempt.TRANSIENT


@dataclass(frozen=True)
class Final:
    claimed: Claimed
    outcome: Outcome
    reason: str | None
    reply: str | None
    attempts: int
    decided_at: datetime


@dataclass(frozen=True)
class Retry:
    claimed: Claimed
    attempts: int  # as stored: an unreachable server gives the attempt back
    not_before: datetime
    last_error: str


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential (base, 2·base, 4·base …, capped) with jitter, so retries of one burst spread out."""
    rng = rng or random.Random()  # jitter, not secrecy
    return min(cap, base * 2 ** max(0, attempt - 1)) * rng.uniform(0.5, 1.0)


def decide(
    claimed: Claimed,
    result: SendResult,
    *,
    max_attempts: int,
    now: datetime,
    retry_base: float,
    retry_cap: float,
    rng: random.Random | None = None,
) -> Final | Retry:
    reply = result.reply[:MAX_REASON]
    if result.attempt is Attempt.REVOKED:
        return revoked(claimed, now)
    if result.attempt is Attempt.SENT:
        return Final(claimed, "sent", None, reply, claimed.attempts, now)
    if result.attempt is Attempt.PERMANENT:
        return Final(claimed, "error", reply, reply, claimed.attempts, now)
    attempts = claimed.attempts - 1 if result.attempt is Attempt.UNREACHABLE else claimed.attempts
    if result.attempt is Attempt.TRANSIENT and attempts >= max_attempts:
        reason = f"gave up after {attempts} attempts: {reply}"[:MAX_REASON]
        return Final(claimed, "error", reason, reply, attempts, now)
    delay = backoff_seconds(max(1, attempts), retry_base, retry_cap, rng)
    return Retry(claimed, attempts, now + timedelta(seconds=delay), reply)


UNKNOWN_PRACTICE = (
    "the practice is not in CollabKare's practice directory (never registered, or deleted), so the email could not say "
    "who invites the patient; nothing was sent"
)


def not_to_send(claimed: Claimed, now: datetime) -> Final | None:
    """The final outcome of an invite that must not go out, decided when it is claimed (after the directory's
    grace period): to an email nobody registered, or from a practice the directory does not know (an invite
    from "your practice" reads like phishing), of an invite revoked while an earlier attempt was under way, or to
    a patient already connected to the practice (staff invited her a moment after approving her request, before
    the invitations service heard of it: the link would no longer work). A rejection to a patient connected to
    the practice is not sent either: she accepted its invite just before staff rejected her request (connections
    had not heard of it), and is connected; nor a connection email to a patient the platform deleted (her account
    gone, the address is no longer hers on CollabKare). None for everything else."""
    if claimed.connected and claimed.attempts == 1:  # after an attempt, it may have arrived: the usual path
        moot = CONNECTED if claimed.delivery.kind == "invite" else CONNECTED_BEFORE_REJECTION
        return Final(claimed, "error", moot, None, 0, now)
    if claimed.delivery.kind != "invite":
        return Final(claimed, "not_on_platform", None, None, claimed.attempts - 1, now) if claimed.departed else None
    if claimed.revoked:
        return revoked(claimed, now)
    if not claimed.on_platform:
        return Final(claimed, "not_on_platform", None, None, 0, now)
    if claimed.practice_name is None:
        return Final(claimed, "error", UNKNOWN_PRACTICE, None, 0, now)
    return None


def abandoned(claimed: Claimed, max_attempts: int, now: datetime) -> Final | None:
    """A delivery claimed more often than SMTP_MAX_ATTEMPTS: its earlier claims ended with no answer recorded (the
    process stopped, was killed, or lost its lease), as every claim of one that kills its process would. Ended here,
    or such a delivery would be claimed, and its process killed, for ever. Each claim counts: one killed while it
    still waited its turn in the sender's memory was never tried, and the claims beside the one that kills its
    process end with it; whether an email went out is not known, which the reason says."""
    if claimed.attempts <= max_attempts:
        return None
    reason = ABANDONED.format(times=claimed.attempts - 1)
    return Final(claimed, "error", reason, None, claimed.attempts - 1, now)


ABANDONED = (
    "gave up after {times} claims that ended without a recorded answer (the notifier stopped each time before it "
    "could record one); the email may or may not have been sent"
)
# The reply a result is recorded with when its own could not be, however often tried (not an outage: a bug).
UNRECORDABLE = (
    "the notifier could not record this email's outcome (an internal error, in its logs); it may have arrived"
)

REVOKED = "the practice revoked the invite before its email went out; nothing was sent"
CONNECTED = "the patient connected to the practice before the invite's email went out; nothing was sent"
CONNECTED_BEFORE_REJECTION = (
    "the patient connected to the practice before the rejection's email went out; nothing was sent"
)
# How long a rejection's email waits before it is claimed: long enough for the ConnectionApproved of an invite the
# patient accepted just before (two hops behind: invitations, then connections) to reach the notifier.
REJECTION_WAIT_SECONDS = 2.0


def revoked(claimed: Claimed, now: datetime) -> Final:
    """A pending invite email whose invite was revoked (on its own, or by a resend, whose new invite has its own
    email): it ends here, with the attempts it had."""
    return Final(claimed, "error", REVOKED, None, claimed.attempts, now)


def outcome_event(final: Final) -> DeliveryOutcome:
    """The fact the invitations service writes back: caused by the source event, in its correlation.

    A server's reply often quotes the recipient ("550 5.1.1 <ann@example.com>: ..."): the event, read across the
    platform and carrying no email by contract, gets the address masked; the delivery row keeps the reply whole."""
    delivery = final.claimed.delivery
    return DeliveryOutcome(
        producer="notifier",
        practice_id=delivery.practice_id,
        correlation_id=delivery.correlation_id,
        causation_id=str(delivery.source_event_id),
        occurred_at=final.decided_at,
        payload=DeliveryOutcomePayload(
            delivery_id=delivery.id,
            source_event_id=delivery.source_event_id,
            source_event_type=delivery.source_event_type,
            kind=delivery.kind,
            outcome=final.outcome,
            # Cut after masking: "jo@" masks to "j***@", and a reason over the contract's bound failed every
            # try to record its batch (a verbose relay's reply then held the sender's rows for ever).
            reason=mask_email(final.reason)[:MAX_REASON] if final.reason and "@" in final.reason else final.reason,
            invite_id=delivery.invite_id,
            batch_id=delivery.batch_id,
            line_number=delivery.line_number,
            message_id=delivery.message_id if final.outcome == "sent" else None,
            attempts=final.attempts,
            decided_at=final.decided_at,
        ),
    )


def as_locale(value: str | None) -> Locale:
    return cast(Locale, value) if value in ("en", "es") else "en"
