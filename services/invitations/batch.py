"""Roster batches, pure: which ready entries are already connected or invited, and the counts staff see."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.invitations.roster import Entry, Verdict

ALREADY_CONNECTED_REASON = "this patient is already connected to the practice"


@dataclass(frozen=True)
class PendingInvite:
    """An invite that blocks a new one: pending and not yet expired."""

    id: uuid.UUID
    created_at: datetime
    expires_at: datetime


def already_invited_reason(pending: PendingInvite) -> str:
    return (
        f"a pending invite sent {pending.created_at:%Y-%m-%d} is valid until {pending.expires_at:%Y-%m-%d %H:%M} UTC;"
        " it was not sent again"
    )


def flag_known(unique: dict[str, Entry], connected: set[str], invited: dict[str, PendingInvite]) -> None:
    """Ready entries whose patient is connected, or holds a pending invite, are flagged instead of invited.

    Walks what the database knows, not the roster: usually far fewer.
    """
    for key, pending in invited.items():
        entry = unique.get(key)
        if entry is not None and key not in connected:
            entry.verdict, entry.reason = Verdict.ALREADY_INVITED, already_invited_reason(pending)
    for key in connected:
        entry = unique.get(key)
        if entry is not None:
            entry.verdict, entry.reason = Verdict.ALREADY_CONNECTED, ALREADY_CONNECTED_REASON


def count_verdicts(entries: Iterable[Entry]) -> dict[str, int]:
    counts = Counter(entry.verdict for entry in entries)
    return {verdict.value: counts.get(verdict, 0) for verdict in Verdict}
