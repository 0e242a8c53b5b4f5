"""Identity factors (SSN, date of birth, phone): normalised, checked, and kept only as keyed HMAC digests."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from datetime import date

_NOT_DIGIT = re.compile(r"\D")
_SSN = re.compile(r"\d{3}[- ]?\d{2}[- ]?\d{4}")  # hyphens or spaces between the groups, as cards print it
_PHONE = re.compile(r"\+?[\d\s().\-]{7,25}")
EARLIEST_BIRTH = date(1900, 1, 1)


class FactorError(ValueError):
    """A factor is malformed; `field` names it and the message says what is expected (never echoing the value)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Digests:
    """What is stored of a patient's identity factors: digests only, never the values."""

    ssn: bytes | None = None
    date_of_birth: bytes | None = None
    phone: bytes | None = None

    @property
    def required(self) -> bool:
        """An invite with any factor needs one matching factor (SSN, or date of birth plus phone) to accept."""
        return self.ssn is not None or (self.date_of_birth is not None and self.phone is not None)


def _ascii_digits(text: str) -> str:
    """The decimal digits of any script as 0-9 (full-width U+FF11 U+FF12 U+FF13 or Arabic-Indic U+0661 U+0662
    U+0663 is 123), so the digest of a factor typed in one script matches the same factor typed in another."""
    return "".join(str(unicodedata.decimal(c)) for c in _NOT_DIGIT.sub("", text))


def normalize_ssn(text: str) -> str:
    """Nine digits, written 123-45-6789, 123 45 6789 or 123456789 (a patient's answer: an invite made before the SSA
    rule below may hold any nine digits)."""
    value = text.strip()
    if not _SSN.fullmatch(value):
        raise FactorError("ssn", "expected nine digits, written 123-45-6789, 123 45 6789 or 123456789")
    return _ascii_digits(value)


def normalize_issued_ssn(text: str) -> str:
    """An SSN for a new invite: nine digits that the SSA could have issued. A placeholder such as 000-00-0000 would
    make the factor anyone's guess."""
    digits = normalize_ssn(text)
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        raise FactorError("ssn", "not a number the SSA issues (area 000, 666 or 900-999, group 00 or serial 0000)")
    return digits


def normalize_phone(text: str) -> str:
    """Digits only, with the country code: a 10-digit number is taken as North American (+1)."""
    value = text.strip()
    digits = _ascii_digits(value)
    if not _PHONE.fullmatch(value) or not 10 <= len(digits) <= 15:
        raise FactorError("phone", "expected a phone number of 10 to 15 digits, e.g. +1 555 010 1234")
    return "1" + digits if len(digits) == 10 and not value.startswith("+") else digits


def check_birth_date(value: date, today: date) -> str:
    if not EARLIEST_BIRTH <= value <= today:
        raise FactorError("date_of_birth", f"expected a date between {EARLIEST_BIRTH.isoformat()} and today")
    return value.isoformat()


def digest(key: bytes, kind: str, normalized: str) -> bytes:
    """HMAC-SHA256 over the kind and the normalised value: the same value gives the same digest, for one key."""
    return hmac.new(key, f"{kind}:{normalized}".encode(), hashlib.sha256).digest()


def matches(key: bytes, kind: str, normalized: str, stored: bytes | None) -> bool:
    return stored is not None and hmac.compare_digest(digest(key, kind, normalized), stored)


def digests(key: bytes, *, ssn: str | None, date_of_birth: str | None, phone: str | None) -> Digests:
    """Digests of the normalised factors given (None where a factor was not given)."""
    return Digests(
        ssn=digest(key, "ssn", ssn) if ssn is not None else None,
        date_of_birth=digest(key, "date_of_birth", date_of_birth) if date_of_birth is not None else None,
        phone=digest(key, "phone", phone) if phone is not None else None,
    )


def missing_factors(*, ssn: bool, date_of_birth: bool, phone: bool) -> list[tuple[str, str]]:
    """(field, message) for what is missing: an invite needs the SSN, or the date of birth and the phone."""
    if ssn or (date_of_birth and phone):
        return []
    if date_of_birth:
        return [("phone", "required with date_of_birth (or give ssn instead)")]
    if phone:
        return [("date_of_birth", "required with phone (or give ssn instead)")]
    return [
        ("ssn", "required unless date_of_birth and phone are given"),
        ("date_of_birth", "required with phone unless ssn is given"),
        ("phone", "required with date_of_birth unless ssn is given"),
    ]
