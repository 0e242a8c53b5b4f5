"""The notifier's directories, kept from the platform's events: who is on CollabKare (and in which language), and
each practice's name and reply address. Pure: the rows an event batch puts there."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from schemas.events import PatientRegistered, PracticeRegistered
from services.notifier.domain import Locale


@dataclass(frozen=True)
class PatientEntry:
    email: str  # lower-cased: the directory's key
    patient_id: uuid.UUID
    display_name: str | None
    locale: Locale
    registered_at: datetime


@dataclass(frozen=True)
class PracticeEntry:
    practice_id: uuid.UUID
    name: str
    reply_to: str | None
    registered_at: datetime


def directory_key(email: str) -> str:
    """The patient directory's key: the address in lower case, by Python (PostgreSQL's lower() under the C
    locale lowercases ASCII only: "Üser@…" would never meet its entry)."""
    return email.lower()


def storable(text: str) -> str:
    """A name as PostgreSQL's text can hold it: without NUL, which JSON allows and a platform producer may send.
    The renderer drops every other control character from names anyway; a patient must not be lost over one."""
    return text.replace("\x00", "")


# The longest display name an email greets a patient with, as PracticeRegistered's name is bounded: the contract
# sets no bound on the patient's (an integrator's probe sent 3 MB of it, and got a 6 MB email).
MAX_DISPLAY_NAME = 200


def patient_entries(events: Iterable[PatientRegistered]) -> list[PatientEntry]:
    """One entry per patient, the newest registration winning, the greater address of two at the same time (one
    statement cannot update a row twice)."""
    latest: dict[uuid.UUID, PatientEntry] = {}
    for event in events:
        p = event.payload
        name = storable(p.display_name)[:MAX_DISPLAY_NAME] if p.display_name is not None else None
        entry = PatientEntry(directory_key(p.email), p.patient_id, name, p.locale, p.registered_at)
        kept = latest.get(entry.patient_id)
        if kept is None or (kept.registered_at, kept.email) <= (entry.registered_at, entry.email):
            latest[entry.patient_id] = entry
    return list(latest.values())


def practice_entries(events: Iterable[PracticeRegistered]) -> list[PracticeEntry]:
    latest: dict[uuid.UUID, PracticeEntry] = {}
    for event in events:
        p = event.payload
        entry = PracticeEntry(event.practice_id, storable(p.name), p.reply_to, p.registered_at)
        if entry.practice_id not in latest or latest[entry.practice_id].registered_at <= entry.registered_at:
            latest[entry.practice_id] = entry
    return list(latest.values())
