"""Invitations, pure: outcome precedence, invite lifecycle, acceptance, identity digests, tokens, bulk encoding."""

from __future__ import annotations

import io
import itertools
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pydantic_core
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas import InviteRequested
from services.invitations import identity
from services.invitations.acceptance import Acceptance, Answer, Decision, accept
from services.invitations.app import create_app
from services.invitations.batch import ALREADY_CONNECTED_REASON, settle_replaced
from services.invitations.bulk import BatchContext, RequestedJson, build_records, copy_text
from services.invitations.domain import (
    DELIVERY_RANK,
    AlreadyReplaced,
    Cause,
    Delivery,
    Invite,
    InviteStatus,
    NotChangeable,
    Outcome,
    new_invite,
    resend,
    revoke,
    strongest,
    supersedes,
)
from services.invitations.roster import Entry, Verdict, check_email, parse_roster
from services.invitations.settings import InvitationsSettings
from services.invitations.tokens import TOKEN_LENGTH, invite_id_of, make_token, new_token, ordered_ids, token_hash
from services.runtime.logging import configure_logging

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TTL = timedelta(days=7)
KEY = b"k" * 32
CAUSE = Cause("corr-1")
PRACTICE = uuid.uuid4()


# --- delivery outcome precedence ---------------------------------------------------------------------------

DELIVERIES = [Outcome.QUEUED, Outcome.ERROR, Outcome.NOT_ON_PLATFORM, Outcome.SENT]


def test_outcomes_only_move_up_the_ladder() -> None:
    assert sorted(DELIVERY_RANK, key=DELIVERY_RANK.__getitem__) == DELIVERIES
    for low, high in itertools.combinations(DELIVERIES, 2):
        assert supersedes(high, low) and not supersedes(low, high)
    for outcome in DELIVERIES:
        assert not supersedes(outcome, outcome), "a repeated outcome changes nothing"


def test_sent_is_final_and_error_can_still_be_bettered() -> None:
    assert not any(supersedes(other, Outcome.SENT) for other in DELIVERIES)
    assert supersedes(Outcome.SENT, Outcome.ERROR) and supersedes(Outcome.NOT_ON_PLATFORM, Outcome.ERROR)
    assert not supersedes(Outcome.ERROR, Outcome.NOT_ON_PLATFORM)


_deliveries = st.lists(
    st.builds(
        Delivery,
        st.sampled_from([uuid.UUID(int=1), uuid.UUID(int=2)]),
        st.sampled_from(DELIVERIES[1:]),
        st.sampled_from([None, "550 no such user", "timeout"]),
        st.integers(0, 1000).map(lambda s: NOW + timedelta(seconds=s)),
    ),
    max_size=8,
)


@settings(max_examples=200)
@given(_deliveries, st.randoms())
def test_strongest_is_order_independent_and_equals_one_by_one_application(
    deliveries: list[Delivery], random: object
) -> None:
    shuffled = list(deliveries)
    random.shuffle(shuffled)
    assert strongest(shuffled) == strongest(deliveries)
    # Applying one by one in decision order, with "never backwards" and "first of a rank stands".
    applied: dict[uuid.UUID, Delivery] = {}
    for delivery in sorted(deliveries, key=lambda d: (d.decided_at, d.reason or "")):
        current = applied.get(delivery.invite_id)
        if current is None or supersedes(delivery.outcome, current.outcome):
            applied[delivery.invite_id] = delivery
    assert {k: (v.outcome, v.decided_at) for k, v in strongest(deliveries).items()} == {
        k: (v.outcome, v.decided_at) for k, v in applied.items()
    }


# --- invite lifecycle --------------------------------------------------------------------------------------


def _invite(**changes: object) -> Invite:
    invite = new_invite(PRACTICE, "ann@example.com", "Hi", actor="staff-1", now=NOW, ttl=TTL)
    return Invite(**{**vars(invite), **changes})  # type: ignore[arg-type]


def test_a_pending_invite_past_its_time_counts_as_expired() -> None:
    invite = _invite()
    assert invite.current_status(NOW + TTL - timedelta(seconds=1)) is InviteStatus.PENDING
    assert invite.current_status(NOW + TTL) is InviteStatus.EXPIRED
    assert _invite(status=InviteStatus.REVOKED).current_status(NOW + 2 * TTL) is InviteStatus.REVOKED


def test_revoke_only_pending_invites() -> None:
    revoked = revoke(_invite(), actor="manager", now=NOW)
    assert (revoked.status, revoked.revoked_by, revoked.revoked_at) == (InviteStatus.REVOKED, "manager", NOW)
    for status in (InviteStatus.ACCEPTED, InviteStatus.EXPIRED, InviteStatus.REVOKED):
        with pytest.raises(NotChangeable, match=status.value):
            revoke(_invite(status=status), actor="m", now=NOW)
    with pytest.raises(NotChangeable, match="expired"):
        revoke(_invite(), actor="m", now=NOW + TTL)


def test_resend_revokes_a_pending_invite_and_keeps_email_note_factors_and_line() -> None:
    digests = identity.digests(KEY, ssn="123456789", date_of_birth=None, phone=None)
    invite = _invite(digests=digests, batch_id=uuid.uuid4(), line_number=7)
    old, new = resend(invite, actor="manager", now=NOW + timedelta(days=1), ttl=TTL)
    assert old.status is InviteStatus.REVOKED and old.replaced_by == new.id and old.revoked_by == "manager"
    assert new.status is InviteStatus.PENDING and new.replaces == invite.id and new.id != invite.id
    assert (new.email, new.note, new.digests, new.batch_id, new.line_number) == (
        invite.email,
        invite.note,
        digests,
        invite.batch_id,
        7,
    )
    assert new.created_by == "manager" and new.expires_at == NOW + timedelta(days=1) + TTL


def test_resend_works_on_expired_and_revoked_invites_but_not_accepted_or_replaced() -> None:
    old, _ = resend(_invite(), actor="m", now=NOW + TTL + timedelta(hours=1), ttl=TTL)
    assert old.status is InviteStatus.EXPIRED and old.expired_at == NOW + TTL and old.revoked_at is None
    old, new = resend(_invite(status=InviteStatus.REVOKED, revoked_by="x"), actor="m", now=NOW, ttl=TTL)
    assert old.status is InviteStatus.REVOKED and old.replaced_by == new.id
    with pytest.raises(NotChangeable, match="accepted"):
        resend(_invite(status=InviteStatus.ACCEPTED), actor="m", now=NOW, ttl=TTL)
    with pytest.raises(AlreadyReplaced):
        resend(_invite(status=InviteStatus.REVOKED, replaced_by=uuid.uuid4()), actor="m", now=NOW, ttl=TTL)


# --- acceptance --------------------------------------------------------------------------------------------

PATIENT = uuid.uuid4()
NO_ANSWER = Answer()


def _factored(**changes: object) -> Invite:
    digests = identity.digests(KEY, ssn="123456789", date_of_birth="1980-02-29", phone="15550101234")
    return _invite(digests=digests, **changes)


def _accept(
    invite: Invite,
    answer: Answer = NO_ANSWER,
    email: str = "ann@example.com",
    when: datetime = NOW,
    deleted: bool = False,
    practice_deleted: bool = False,
) -> Acceptance:
    return accept(
        invite,
        patient_id=PATIENT,
        patient_email=email,
        answer=answer,
        key=KEY,
        now=when,
        cause=CAUSE,
        deleted=deleted,
        practice_deleted=practice_deleted,
    )


def test_accepting_with_a_matching_factor_publishes_invite_accepted() -> None:
    for answer in (Answer(ssn="123456789"), Answer(date_of_birth="1980-02-29", phone="15550101234")):
        result = _accept(_factored(), answer)
        assert result.decision is Decision.ACCEPTED and result.changed
        invite = result.invite
        assert invite.status is InviteStatus.ACCEPTED and invite.accepted_by == str(PATIENT)
        (event,) = result.events
        assert event.event_type == "InviteAccepted" and event.payload.patient_id == PATIENT
        assert event.practice_id == PRACTICE and event.correlation_id == "corr-1"


def test_refusals_in_order() -> None:
    assert _accept(_invite(status=InviteStatus.ACCEPTED)).decision is Decision.ALREADY_ACCEPTED
    again = _accept(_invite(status=InviteStatus.ACCEPTED, accepted_by=str(PATIENT)))
    assert (again.decision, again.changed, again.events) == (Decision.ACCEPTED, False, ()), "a retry, not a second use"
    # A retry of an invite that checks a factor gives the same answer only with a matching factor; wrong answers
    # count and lock it as before (a security review: uncounted, the retry let its holder try every SSN).
    taken = _factored(status=InviteStatus.ACCEPTED, accepted_by=str(PATIENT))
    assert _accept(taken, Answer(date_of_birth="1980-02-29", phone="15550101234")).decision is Decision.ACCEPTED
    wrong = _accept(taken, Answer(date_of_birth="1980-02-04", phone="15550101234"))
    assert (wrong.decision, wrong.changed, wrong.invite.failed_attempts) == (Decision.WRONG_FACTOR, True, 1)
    assert _accept(taken).decision is Decision.FACTOR_REQUIRED
    accepted = _accept(_factored(failed_attempts=4), Answer(ssn="123456789")).invite
    assert accepted.failed_attempts == 0, "four tries to accept do not leave a retry one typo from the lock"
    guessed = taken
    for _ in range(5):
        guessed = _accept(guessed, Answer(ssn="111111111")).invite
    assert guessed.locked_at is not None and guessed.status is InviteStatus.ACCEPTED
    assert _accept(guessed, Answer(ssn="123456789")).decision is Decision.LOCKED, "no oracle once locked"
    assert _accept(_invite(status=InviteStatus.REVOKED)).decision is Decision.REVOKED
    assert _accept(_invite(status=InviteStatus.EXPIRED)).decision is Decision.EXPIRED
    # A resend replaced it: the patient is pointed at the newer email, not told the practice withdrew.
    for ended in (InviteStatus.REVOKED, InviteStatus.EXPIRED):
        assert _accept(_invite(status=ended, replaced_by=uuid.uuid4())).decision is Decision.REPLACED
    assert _accept(_factored(locked_at=NOW), Answer(ssn="123456789")).decision is Decision.LOCKED
    assert _accept(_factored()).decision is Decision.FACTOR_REQUIRED
    half = Answer(date_of_birth="1980-02-29")
    assert _accept(_factored(), half).decision is Decision.FACTOR_REQUIRED
    assert _accept(_invite(), email="mallory@example.com").decision is Decision.OTHER_EMAIL
    assert _accept(_invite(), email="ANN@example.com").decision is Decision.ACCEPTED


def test_another_account_cannot_take_an_invite_even_with_the_right_factor() -> None:
    """The token proves access to the mailbox, the factor that it is the patient: neither is enough alone.

    Was accepted: whoever held the token and the factor connected their own account instead of the patient's.
    """
    for answer in (Answer(ssn="123456789"), Answer(date_of_birth="1980-02-29", phone="15550101234")):
        result = _accept(_factored(), answer, email="mallory@example.com")
        assert result.decision is Decision.OTHER_EMAIL and not result.changed and not result.events
    # Refused before the factor is looked at: another account cannot use up the patient's tries either.
    wrong = _accept(_factored(), Answer(ssn="999999999"), email="mallory@example.com")
    assert wrong.decision is Decision.OTHER_EMAIL and wrong.invite.failed_attempts == 0


def test_another_account_learns_nothing_of_what_became_of_the_invite() -> None:
    """It was told accepted (409), revoked or expired (410) or locked (403) before being told it was not its invite."""
    for invite in (
        _invite(status=InviteStatus.ACCEPTED),
        _invite(status=InviteStatus.REVOKED),
        _invite(status=InviteStatus.EXPIRED),
        _factored(locked_at=NOW),
    ):
        result = _accept(invite, Answer(ssn="123456789"), email="mallory@example.com")
        assert result.decision is Decision.OTHER_EMAIL and not result.changed, invite.status
    unswept = _accept(_invite(), email="mallory@example.com", when=NOW + TTL)
    assert unswept.decision is Decision.OTHER_EMAIL and not unswept.changed, "left to the sweeper"


def test_a_deleted_account_accepts_nothing_and_changes_nothing() -> None:
    """Found by a review: the platform's deletion did not reach invitations, so a token issued before it (valid until
    it expires) accepted an invite and connected an account that no longer exists. Refused whatever the invite's
    state, with nothing tried or counted (a wrong factor does not use up the tries of the address's next owner) and
    nothing expired on the spot; another account is still told first that the invite is not its own."""
    for invite, answer, when in (
        (_invite(), NO_ANSWER, NOW),
        (_factored(), Answer(ssn="123456789"), NOW),
        (_factored(), Answer(ssn="999999999"), NOW),
        (_invite(status=InviteStatus.ACCEPTED, accepted_by=str(PATIENT)), NO_ANSWER, NOW),
        (_invite(status=InviteStatus.REVOKED), NO_ANSWER, NOW),
        (_invite(), NO_ANSWER, NOW + TTL),
        (_factored(locked_at=NOW), Answer(ssn="123456789"), NOW),
    ):
        result = _accept(invite, answer, when=when, deleted=True)
        assert result.decision is Decision.ACCOUNT_DELETED, invite
        assert not result.changed and not result.events and result.invite == invite
    assert _accept(_invite(), email="mallory@example.com", deleted=True).decision is Decision.OTHER_EMAIL


def test_a_deleted_practices_invite_accepts_nothing_but_one_accepted_before_answers_as_before() -> None:
    """A review: a deleted practice's invites (valid for a week) still connected their patients, announcing a
    connection to a practice no email could name."""
    for invite, answer in ((_invite(), NO_ANSWER), (_factored(), Answer(ssn="999999999"))):
        result = _accept(invite, answer, practice_deleted=True)
        assert result.decision is Decision.PRACTICE_DELETED and not result.changed and not result.events
    accepted = _invite(status=InviteStatus.ACCEPTED, accepted_by=str(PATIENT))
    assert _accept(accepted, practice_deleted=True).decision is Decision.ACCEPTED, "a retry after a lost answer"
    assert _accept(_invite(), email="mallory@example.com", practice_deleted=True).decision is Decision.OTHER_EMAIL


def test_an_unswept_expired_invite_is_expired_on_the_spot() -> None:
    result = _accept(_invite(), when=NOW + TTL)
    assert result.decision is Decision.EXPIRED and result.changed
    assert result.invite.status is InviteStatus.EXPIRED
    (event,) = result.events
    assert event.event_type == "InviteExpired" and event.payload.expired_at == NOW + TTL


def test_five_wrong_answers_lock_the_invite() -> None:
    invite = _factored()
    for attempt in range(1, 6):
        result = _accept(invite, Answer(ssn="999999999"))
        assert result.decision is Decision.WRONG_FACTOR and result.changed
        invite = result.invite
        assert invite.failed_attempts == attempt and result.tries_left == 5 - attempt
        assert (invite.locked_at is not None) == (attempt == 5)
    assert _accept(invite, Answer(ssn="123456789")).decision is Decision.LOCKED
    wrong_phone = Answer(date_of_birth="1980-02-29", phone="15550109999")
    assert _accept(_factored(), wrong_phone).decision is Decision.WRONG_FACTOR


# --- identity factors --------------------------------------------------------------------------------------


def test_factors_are_normalised_before_hashing() -> None:
    assert identity.normalize_ssn(" 123-45-6789 ") == identity.normalize_ssn("123456789") == "123456789"
    assert identity.normalize_ssn("123 45 6789") == "123456789", "as the card prints it (a staff probe: a 422)"
    assert identity.normalize_phone("(555) 010-1234") == identity.normalize_phone("+1 555 010 1234") == "15550101234"
    assert identity.normalize_phone("+44 20 7946 0958") == "442079460958"
    for bad in ("12-345-6789", "1234567890", "abc-de-fghi", ""):
        with pytest.raises(identity.FactorError) as error:
            identity.normalize_ssn(bad)
        assert (error.value.field == "ssn" and bad not in str(error.value)) or not bad
    with pytest.raises(identity.FactorError, match="10 to 15 digits"):
        identity.normalize_phone("555-0101")
    with pytest.raises(identity.FactorError, match="between 1900-01-01 and today"):
        identity.check_birth_date(NOW.date() + timedelta(days=1), NOW.date())


def _in_script(text: str, zero: int) -> str:
    return text.translate({ord(digit): zero + int(digit) for digit in "0123456789"})


def test_digits_of_any_script_count_as_0_to_9() -> None:
    """Full-width digits (a Japanese keyboard) made a digest no patient typing 0-9 could match: the invite locked."""
    full_width, arabic_indic = 0xFF10, 0x0660
    assert identity.normalize_ssn(_in_script("123-45-6789", full_width)) == "123456789"
    assert identity.normalize_ssn(_in_script("123456789", arabic_indic)) == "123456789"
    assert identity.normalize_phone(_in_script("5550102030", arabic_indic)) == "15550102030"


@pytest.mark.parametrize(
    "placeholder", ["000-00-0000", "000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000"]
)
def test_numbers_the_ssa_never_issues_are_refused(placeholder: str) -> None:
    """000-00-0000 typed as "unknown" would make the factor anyone's guess."""
    with pytest.raises(identity.FactorError, match="not a number the SSA issues") as error:
        identity.normalize_issued_ssn(placeholder)
    assert error.value.field == "ssn" and placeholder not in str(error.value)
    # A patient's answer is only read: an invite made before this rule may hold such a number (a review's finding).
    assert identity.normalize_ssn(placeholder) == placeholder.replace("-", "")


def test_digests_are_keyed_and_carry_no_value() -> None:
    first = identity.digest(KEY, "ssn", "123456789")
    assert first == identity.digest(KEY, "ssn", "123456789") and len(first) == 32
    assert first != identity.digest(b"o" * 32, "ssn", "123456789")
    assert first != identity.digest(KEY, "phone", "123456789")
    assert b"123456789" not in first and b"6789" not in first
    assert identity.matches(KEY, "ssn", "123456789", first)
    assert not identity.matches(KEY, "ssn", "123456788", first) and not identity.matches(KEY, "ssn", "1", None)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"ssn": True}, []),
        ({"date_of_birth": True, "phone": True}, []),
        ({"ssn": True, "phone": True}, []),
        ({"date_of_birth": True}, ["phone"]),
        ({"phone": True}, ["date_of_birth"]),
        ({}, ["ssn", "date_of_birth", "phone"]),
    ],
)
def test_missing_factors_are_named(given: dict[str, bool], missing: list[str]) -> None:
    found = identity.missing_factors(**{"ssn": False, "date_of_birth": False, "phone": False, **given})
    assert [field for field, _ in found] == missing


# --- tokens and ids ----------------------------------------------------------------------------------------


def test_tokens_name_their_invite_and_are_stored_only_as_digests() -> None:
    invite_id = uuid.uuid4()
    token, digest = new_token(invite_id)
    assert len(token) == TOKEN_LENGTH and re.fullmatch(r"[A-Za-z0-9_\-]+", token)
    assert invite_id_of(token) == invite_id and digest == token_hash(token) and token.encode() not in digest
    assert new_token(invite_id)[0] != token, "256 fresh random bits each time"
    for bad in ("", "short", token[:-1], token + "A", token[:-1] + "!", "=" * TOKEN_LENGTH):
        assert invite_id_of(bad) is None
    assert make_token(invite_id, b"\0" * 32).startswith(make_token(invite_id, b"\1" * 32)[:20])


def test_bulk_ids_are_unique_time_ordered_version_7() -> None:
    ids = ordered_ids(50_000)
    assert len(set(ids)) == 50_000 and ids == sorted(ids)
    assert {i.version for i in ids} == {7} and all(isinstance(i, uuid.UUID) for i in ids[:10])


# --- bulk encoding -----------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    st.emails() | st.sampled_from(["josé@exämple.com", "a+b@example.com", "O'Neil@example.com"]),
    st.none() | _text.filter(lambda t: t.strip() != ""),
    st.integers(1, 100_000),
    st.sampled_from(["https://app.collabkare.example", "http://127.0.0.1:8080", 'https://x.example/a"%s\\']),
    _text.filter(lambda t: len(t) > 0),
    st.none() | _text.filter(lambda t: len(t) > 0),
    st.none() | st.uuids(),
)
def test_bulk_event_json_is_exactly_what_the_model_writes(
    email: str,
    note: str | None,
    line: int,
    base_url: str,
    correlation: str,
    causation: str | None,
    replaces: uuid.UUID | None,
) -> None:
    email = check_email(email)[0] or ""  # the bulk path gets addresses the parser normalised
    assume(email)
    actor = f"staff {correlation}"
    context = BatchContext(uuid.uuid4(), PRACTICE, actor, NOW, NOW + TTL, base_url, Cause(correlation, causation))
    event_id, invite_id = ordered_ids(2)
    token = make_token(invite_id, b"s" * 32)
    model = InviteRequested(
        event_id=event_id,
        occurred_at=NOW,
        producer="invitations",
        practice_id=PRACTICE,
        correlation_id=correlation,
        causation_id=causation,
        payload={
            "invite_id": invite_id,
            "email": email,
            "note": note,
            "accept_url": f"{base_url}/invites/accept?token={token}",
            "expires_at": NOW + TTL,
            "requested_by": actor,
            "batch_id": context.batch_id,
            "line_number": line,
            "replaces": replaces,
        },
    )
    note_json = pydantic_core.to_json(note).decode()
    written = RequestedJson(context)(event_id, invite_id, email, note_json, token, line, replaces)
    assert written == model.model_dump_json().encode()


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], field)


@given(_text | st.sampled_from(["a\\b", "tab\there", "x\\N", "\\"]))
def test_copy_text_round_trips(value: str) -> None:
    encoded = copy_text(value)
    assert "\t" not in encoded and "\n" not in encoded and "\r" not in encoded
    assert _unescape(encoded) == value and copy_text(None) == "\\N"


def test_bulk_records_cover_every_entry_and_only_ready_ones_get_invites() -> None:
    roster = parse_roster("ann@example.com, Hi\tthere\nnot an address\nANN@example.com\nbob@example.com", "Welcome")
    context = BatchContext(uuid.uuid4(), PRACTICE, "staff-1", NOW, NOW + TTL, "https://app.example", CAUSE)
    records = build_records(roster.entries, context)
    rows = [line.split("\t") for line in records.rows.decode().splitlines()]
    invites = [line.split("\t") for line in records.invites.decode().splitlines()]
    assert [(r[1], r[4], _unescape(r[3])) for r in rows] == [
        ("1", "queued", "Hi\tthere"),
        ("2", "invalid", "Welcome"),
        ("3", "duplicate", "Welcome"),
        ("4", "queued", "Welcome"),
    ]
    assert [(i[2], i[12]) for i in invites] == [("ann@example.com", "1"), ("bob@example.com", "4")]
    assert sorted(records.invite_ids) == [1, 4] and len(records.events) == 2
    assert all(i[5].startswith("\\\\x") and len(i[5]) == 3 + 64 for i in invites), "bytea, hex"
    assert [e[2] for e in records.events] == [str(records.invite_ids[1]), str(records.invite_ids[4])]
    resent = build_records(
        [Entry(4, "bob@example.com", None, Verdict.READY, key="bob@example.com")], context, {4: PATIENT}
    )
    assert resent.invites.decode().rstrip("\n").split("\t")[-1] == str(PATIENT)


# --- settings ----------------------------------------------------------------------------------------------

_BASE = {"database_url": "postgresql://u@h/d", "kafka_bootstrap_servers": "k:9092", "jwt_secret": "j" * 32}


def test_identity_key_must_be_long_enough_and_is_required_without_a_dev_secret() -> None:
    with pytest.raises(ValueError, match="IDENTITY_HMAC_KEY: expected at least 32 bytes"):
        InvitationsSettings(**_BASE, identity_hmac_key="short")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IDENTITY_HMAC_KEY: required"):
        InvitationsSettings(**{**_BASE, "jwt_algorithm": "RS256", "jwt_jwks_url": "https://idp/jwks"})  # type: ignore[arg-type]
    configured = InvitationsSettings(**_BASE, identity_hmac_key="i" * 32)  # type: ignore[arg-type]
    derived = InvitationsSettings(**_BASE)  # type: ignore[arg-type]
    assert configured.identity_key() == b"i" * 32 and not configured.identity_key_is_derived
    assert derived.identity_key_is_derived and len(derived.identity_key()) == 32
    assert derived.identity_key() != b"j" * 32 and derived.invite_ttl == timedelta(days=7)
    with pytest.raises(ValueError, match="http"):
        InvitationsSettings(**_BASE, public_base_url="ftp://x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "warning"),
    [
        (None, "settings.public_base_url_default"),
        ("http://app.collabkare.example", "settings.public_base_url_plain_http"),
        ("https://app.collabkare.example", None),
        ("http://127.0.0.1:8080", None),
    ],
)
def test_start_up_warns_when_invite_links_would_not_work_or_travel_in_clear(
    url: str | None, warning: str | None
) -> None:
    stream = io.StringIO()
    configure_logging("invitations", "INFO", stream=stream)
    values = {**_BASE, "identity_hmac_key": "i" * 32} | ({"public_base_url": url} if url else {})
    create_app(InvitationsSettings(**values))  # type: ignore[arg-type]
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert [e for e in events if e.startswith("settings.public_base_url")] == ([warning] if warning else [])


def test_a_replacement_settles_on_what_the_locked_invite_has_become() -> None:
    roster = parse_roster("ann@example.com\nbob@example.com\ncat@example.com")
    ann, bob, cat = (uuid.uuid4() for _ in range(3))
    replaces = {1: ann, 2: bob, 3: cat}
    settled = settle_replaced(roster.unique, replaces, {ann: "pending", bob: "accepted", cat: "revoked"})
    assert settled == {1: ann}, "only a still-pending invite is replaced"
    verdicts = [(entry.line_number, entry.verdict) for entry in roster.entries]
    assert verdicts == [(1, Verdict.READY), (2, Verdict.ALREADY_CONNECTED), (3, Verdict.READY)]
    assert roster.entries[1].reason == ALREADY_CONNECTED_REASON
