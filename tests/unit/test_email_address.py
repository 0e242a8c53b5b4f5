"""`EmailAddress` must answer exactly as pydantic's `EmailStr`: same accepted values, same normal form, same errors."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import EmailStr, TypeAdapter, ValidationError

from schemas.email_address import EmailAddress, _is_plain

FAST = TypeAdapter(EmailAddress)
REFERENCE = TypeAdapter(EmailStr)

_local = st.text(alphabet="abcXYZ019_+-.'!#~", min_size=0, max_size=70)
_domain = st.lists(st.text(alphabet="abcxnZ019-", min_size=0, max_size=66), min_size=1, max_size=4).map(".".join)
_tld = st.sampled_from(["com", "org", "test", "local", "invalid", "c1", "123", "co", "x", "Com", "localhost", ""])
_address = st.builds(lambda local, domain, tld: f"{local}@{domain}.{tld}".rstrip("."), _local, _domain, _tld)


def answer(adapter: TypeAdapter[str], value: str) -> tuple[str, str]:
    try:
        return "ok", adapter.validate_python(value)
    except ValidationError as error:
        return "error", error.errors()[0]["msg"]


@given(st.one_of(_address, st.text(max_size=80)))
@example("pat@example.com")
@example("Pat.Smith+tag@clinic-1.example.org")
@example("pat@Example.COM")
@example("pat@mail.test")
@example("pat@sub.localhost")
@example("pat@xn--ls8h.la")
@example("a..b@example.com")
@example(".a@example.com")
@example("a.@example.com")
@example("Pat Smith <pat@example.com>")
@example("x" * 65 + "@example.com")
@example("a@" + ".".join(["b" * 63] * 4) + ".com")
@example("pätient@example.com")
def test_same_answer_as_emailstr(value: str) -> None:
    assert answer(FAST, value) == answer(REFERENCE, value)


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("pat@example.com", True),
        ("pat.o-neil+1@clinic.example.org", True),
        ("pat@Example.com", False),  # email_validator lowercases the domain: its job
        ("pat@mail.test", False),
        ("pat@xn--ls8h.la", False),
        ('"quoted"@example.com', False),
    ],
)
def test_fast_path_takes_only_plain_addresses(value: str, plain: bool) -> None:
    assert _is_plain(value) is plain


def test_json_schema_says_idn_email_because_international_addresses_are_accepted() -> None:
    """EmailStr's schema says `email`, which JSON Schema validators (ajv-formats) read as ASCII only: events to
    `ana@bücher.example`, which both accept, failed the published schema. The rules format cannot say go in words."""
    assert REFERENCE.json_schema() == {"type": "string", "format": "email"}
    schema = FAST.json_schema()
    assert ".test" in schema.pop("description") and schema == {"type": "string", "format": "idn-email"}
    assert FAST.validate_python("ana@bücher.example") == REFERENCE.validate_python("ana@bücher.example")
    assert FAST.validate_python("josé@example.com") == "josé@example.com"
