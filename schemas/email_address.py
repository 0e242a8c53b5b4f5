"""`EmailAddress`: pydantic's `EmailStr`, with a fast path for the plain addresses that make up nearly every event.

`EmailStr` runs `email_validator` on every value: about 60 µs per address, which is a tenth of the notifier's
whole CPU budget per email. An address made only of lowercase ASCII in the domain and a dot-atom of common
characters in the local part is one that `email_validator` accepts unchanged, unless its domain is a
special-use one (`.test`, `.local`, ...); such addresses are answered by one regular expression. Everything
else (uppercase domains, international addresses, quoted local parts, display names) goes to `EmailStr`'s own
validation, so the accepted values, their normalised form, the error messages and the JSON Schema are the same
as `EmailStr`'s. `tests/unit/test_email_address.py` holds the two to the same answers.
"""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import AfterValidator, WithJsonSchema
from pydantic.networks import validate_email

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN = re.compile(
    r"(?P<local>[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]+)*)"
    rf"@(?P<domain>(?:{_LABEL}\.)+[a-z]{{2,63}})"
)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _is_plain(value: str) -> bool:
    match = _PLAIN.fullmatch(value)
    if match is None or len(value) > 254 or len(match["local"]) > 64 or len(match["domain"]) > 253:
        return False
    domain = match["domain"]
    # "xn--" and other double hyphens are IDNA's business; special-use domains are refused by email_validator.
    return "--" not in domain and not any(domain == name or domain.endswith("." + name) for name in _SPECIAL_USE)


def _validate(value: str) -> str:
    return value if _is_plain(value) else validate_email(value)[1]


_RULES = (
    "An address as the Python package email-validator accepts it (producers check with it before publishing): "
    "international addresses are allowed (hence idn-email, RFC 6531), special-use domains "
    f"({', '.join('.' + name for name in _SPECIAL_USE)}) are not. Compare addresses without regard to case: the "
    "domain is lower-cased, the local part keeps the case it was given (a roster line, a patient's login), so one "
    "patient's address may differ in case from one event to the next."
)
EmailAddress = Annotated[
    str,
    AfterValidator(_validate),
    WithJsonSchema({"type": "string", "format": "idn-email", "description": _RULES}),
]
