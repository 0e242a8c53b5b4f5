"""Roster batches, pure: which ready entries are already connected or invited, and the counts staff see."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.invitations.roster import Entry, Verdict

ALREADY_CONNECTED_REASON = "this patient is already connected to the practice"


# Deliveries that never reached the patient: no CollabKare account used the address, or the email failed.
UNDELIVERED = frozenset({"not_on_platform", "error"})


@dataclass(frozen=True)
class PendingInvite:
    """A pending, unexpired invite: it blocks a new one unless it never reached the patient."""

    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    delivery: str = "queued"
    checks_identity: bool = False  # an individual invite: accepting it asks for the SSN, or date of birth and phone
    locked: bool = False  # too many wrong identity answers: nobody can accept it, only a resend helps

    @property
    def replaceable(self) -> bool:
        """Never delivered: a new invite (staff pasting the patient again once registered) replaces it."""
        return self.delivery in UNDELIVERED

    @property
    def replaceable_by_roster(self) -> bool:
        """A roster invite checks no identity factor: it never takes the place of one that does."""
        return self.replaceable and not self.checks_identity


def already_invited_reason(pending: PendingInvite) -> str:
    if pending.locked:
        return (
            f"an invite sent on its own on {pending.created_at:%Y-%m-%d} is locked after too many wrong identity "
            "answers; resend that invite from the patient's access history (a roster invite would drop the check)"
        )
    if pending.replaceable and pending.checks_identity:
        return (
            f"an invite sent on its own on {pending.created_at:%Y-%m-%d}, with an identity check, never reached the "
            "patient; resend that invite from the patient's access history (a roster invite would drop the check)"
        )
    return (
        f"a pending invite sent {pending.created_at:%Y-%m-%d} is valid until {pending.expires_at:%Y-%m-%d %H:%M} UTC;"
        " no new invite is sent"
    )


def replaced_reason(now: datetime) -> str:
    """The row of an invite that never reached its patient, once a newer invite replaces it (a later roster, a
    resend of another batch's rows, or an invite sent on its own): the patient holds that one now."""
    return (
        f"invited again on {now:%Y-%m-%d}: a newer invite replaces this row's, which never reached the patient (the "
        "patient's access history shows it)"
    )


def flag_known(
    unique: dict[str, Entry], connected: set[str], invited: dict[str, PendingInvite]
) -> dict[int, uuid.UUID]:
    """Ready entries whose patient is connected, or holds a pending invite, are flagged instead of invited.

    A pending invite that never reached the patient does not block, unless it checks identity factors: the entry
    stays ready and its new invite replaces that one. Returns {line number: the undelivered invite it replaces}.
    Walks what the database knows, not the roster: usually far fewer.
    """
    replaces: dict[int, uuid.UUID] = {}
    for key, pending in invited.items():
        entry = unique.get(key)
        if entry is None or key in connected:
            continue
        if pending.replaceable_by_roster:
            replaces[entry.line_number] = pending.id
        else:
            entry.verdict, entry.reason = Verdict.ALREADY_INVITED, already_invited_reason(pending)
    for key in connected:
        entry = unique.get(key)
        if entry is not None:
            entry.verdict, entry.reason = Verdict.ALREADY_CONNECTED, ALREADY_CONNECTED_REASON
    return replaces


def settle_replaced(
    unique: dict[str, Entry], replaces: dict[int, uuid.UUID], statuses: dict[uuid.UUID, str]
) -> dict[int, uuid.UUID]:
    """The replacements that still hold once the old invites are locked, as they are now (`statuses`, by id).

    Between the flagging and the lock a patient may have accepted one (the entry is then already connected) or staff
    revoked it (nothing to replace; the entry is invited anew). Returns {line number: the invite it replaces}."""
    by_line = {entry.line_number: entry for entry in unique.values()}
    settled: dict[int, uuid.UUID] = {}
    for line, old in replaces.items():
        status = statuses.get(old)
        if status == "pending":
            settled[line] = old
        elif status == "accepted":
            entry = by_line[line]
            entry.verdict, entry.reason = Verdict.ALREADY_CONNECTED, ALREADY_CONNECTED_REASON
    return settled


def count_verdicts(entries: Iterable[Entry]) -> dict[str, int]:
    counts = Counter(entry.verdict for entry in entries)
    return {verdict.value: counts.get(verdict, 0) for verdict in Verdict}
