"""The roster parser: properties against an obviously-correct reference, the fast email path, tricky rosters."""

from __future__ import annotations

import re

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from services.invitations.roster import (
    MAX_BYTES,
    MAX_LINES,
    MAX_NOTE,
    RosterTooLarge,
    Verdict,
    check_email,
    check_email_thoroughly,
    check_size,
    count_lines,
    parse_roster,
    split_lines,
)

Row = tuple[int, str, str, str | None, int | None]  # line, verdict, email, note, duplicate_of
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060\u200e\u200f"  # zero-width spaces and joiners, BOMs, direction marks


def trim(text: str, also: str = INVISIBLE) -> str:
    """Whitespace and `also` off both ends, a character at a time."""
    while text and (text[0].isspace() or text[0] in also):
        text = text[1:]
    while text and (text[-1].isspace() or text[-1] in also):
        text = text[:-1]
    return text


def reference_note(rest: str) -> str | None:
    """Commas and invisible characters off its ends, then the quotes around the whole of it: a CSV field (every quote
    inside doubled), or a word processor's pair with none inside."""
    note = trim(rest, INVISIBLE + ",")
    inner = note[1:-1]
    if len(note) >= 2 and note[0] == note[-1] == '"' and '"' not in inner.replace('""', ""):
        note = trim(inner.replace('""', '"'))
    elif len(note) >= 2 and note[0] == "\u201c" and note[-1] == "\u201d" and not set("\u201c\u201d") & set(inner):
        note = trim(inner)
    return note or None


def reference(text: str, default_note: str | None = None) -> list[Row]:
    """The rules read straight off the issue, written for clarity instead of speed."""
    text = text.removeprefix("\ufeff")
    lines = re.split("\r\n|\r|\n|\u2028|\u2029", text)
    if lines[-1] == "":
        lines.pop()
    default = default_note.strip() if default_note and default_note.strip() else None
    first_seen: dict[str, int] = {}
    rows: list[Row] = []
    for number, raw in enumerate(lines, start=1):
        line = trim(raw)
        if not line or line.startswith("#"):
            continue
        address, _, rest = line.partition(",")
        address, note = trim(address), reference_note(rest) if "," in line else None
        try:
            email = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError:
            rows.append((number, "invalid", "", note or default, None))
            continue
        if note is not None and (
            len(note) > MAX_NOTE or re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", note)
        ):
            rows.append((number, "invalid", email, note, None))
            continue
        if email.lower() in first_seen:
            rows.append((number, "duplicate", email, note or default, first_seen[email.lower()]))
            continue
        first_seen[email.lower()] = number
        rows.append((number, "ready", email, note or default, None))
    return rows


def parsed(text: str, default_note: str | None = None) -> list[Row]:
    entries = parse_roster(text, default_note).entries
    return [(e.line_number, e.verdict.value, e.email, e.note, e.duplicate_of) for e in entries]


def comparable(rows: list[Row]) -> list[Row]:
    # Invalid entries echo whatever was typed; the reference only knows they are invalid.
    return [(n, v, "" if v == "invalid" else e, note if v != "invalid" else None, d) for n, v, e, note, d in rows]


# --- strategies ------------------------------------------------------------------------------------------

_EMAILISH = "abcxyzABCXYZ0129._+-'@ \"<>()[]\\é#,"
junk = st.text(alphabet=_EMAILISH, max_size=30)
domains = st.sampled_from(
    [
        *("example.com", "EXAMPLE.org", "mail.example.co.uk", "xn--bcher-kva.example", "exämple.com", "a--b.com"),
        *("localhost", "example.test", "sub.example.local", "example", "1.2.3.4", "x.invalid", "ex-ample.com"),
    ]
)
locals_ = st.one_of(
    st.from_regex(r"[A-Za-z0-9_+\-]{1,20}(\.[A-Za-z0-9_+\-]{1,10}){0,2}", fullmatch=True),
    st.sampled_from(["Postmaster", "INFO", "abuse", "a..b", ".a", "a.", "josé", "ÄÖ", "a" * 70, "x!y", "q'r"]),
)
built = st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains)
addresses = st.one_of(st.emails(), built, junk)
# Line content never holds CR or LF (they end lines) but may hold any other whitespace, commas, controls.
note_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\u2028\u2029", blacklist_categories=("Cs",)), max_size=40
) | st.text(alphabet="ab, ", min_size=MAX_NOTE - 3, max_size=MAX_NOTE + 3)
padding = st.sampled_from(["", " ", "\t", "  \t ", "\u00a0", "\x0b"])


@st.composite
def roster_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["entry", "entry", "entry", "note", "blank", "comment", "repeat"]))
    pad_left, pad_right = draw(padding), draw(padding)
    if kind == "blank":
        return pad_left + pad_right
    if kind == "comment":
        return f"{pad_left}#{draw(note_text)}"
    address = draw(addresses)
    if kind == "repeat":
        address = draw(st.sampled_from([address.upper(), address.lower(), address]))
    if kind == "note":
        return f"{pad_left}{address}{draw(padding)},{draw(note_text)}{pad_right}"
    return f"{pad_left}{address}{pad_right}"


@st.composite
def rosters(draw: st.DrawFn) -> str:
    lines = draw(st.lists(roster_lines(), max_size=25))
    if lines and draw(st.booleans()):
        lines.append(lines[draw(st.integers(0, len(lines) - 1))].swapcase())  # a case-only duplicate
    endings = [draw(st.sampled_from(["\n", "\r\n", "\r"])) for _ in lines]
    text = "".join(line + ending for line, ending in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return ("\ufeff" if draw(st.booleans()) else "") + text


# --- properties ------------------------------------------------------------------------------------------


@PROPERTY
@given(addresses)
@example("Ann.Lee+tag@Example.COM")
@example("postmaster@example.com")
@example("a@xn--bcher-kva.example")
@example("a@b--c.com")
@example("a@ab--cd.com")
@example("a@xn--zz.com")
@example("a@example.test")
@example("a" * 64 + "@" + "b" * 63 + ".com")
@example("a" * 65 + "@example.com")
@example("x@" + ".".join(["a" * 63] * 3) + ".com")
def test_fast_email_check_agrees_with_email_validator(text: str) -> None:
    assert check_email(text) == check_email_thoroughly(text)


@settings(max_examples=1000, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_+\-.]{1,70}@[A-Za-z0-9\-.]{1,70}", fullmatch=True))
def test_fast_email_check_agrees_on_plain_looking_addresses(text: str) -> None:
    # The fast path only ever sees this alphabet: hyphens, dots and lengths are where it could go wrong.
    assert check_email(text) == check_email_thoroughly(text)


@PROPERTY
@given(rosters(), st.one_of(st.none(), note_text))
def test_parser_matches_the_reference(text: str, default_note: str | None) -> None:
    assume(default_note is None or len(default_note.strip()) <= MAX_NOTE)
    assert comparable(parsed(text, default_note)) == comparable(reference(text, default_note))


@PROPERTY
@given(rosters())
def test_line_endings_and_bom_do_not_change_verdicts(text: str) -> None:
    body = text.removeprefix("\ufeff")
    unix = re.sub(r"\r\n|\r", "\n", body)
    expected = parsed(unix)
    assert parsed(unix.replace("\n", "\r\n")) == expected
    assert parsed(unix.replace("\n", "\r")) == expected
    assert parsed("\ufeff" + unix) == expected


@PROPERTY
@given(st.lists(st.sampled_from(["\r", "\n", "\r\n", "\u2028", "\u2029", "\ufeff", "a", " ", "#"])).map("".join))
@example("")
@example("\ufeff")
@example("\r\r\n\n")
def test_counting_lines_agrees_with_splitting_them(text: str) -> None:
    # Admission weighs a roster by its lines before parsing it: the count must be the parser's.
    assert count_lines(text) == len(split_lines(text))


@PROPERTY
@given(rosters())
def test_every_verdict_has_its_line_and_a_reason_unless_ready(text: str) -> None:
    roster = parse_roster(text)
    lines = split_lines(text)
    for entry in roster.entries:
        content = lines[entry.line_number - 1].strip()
        assert content and not content.startswith("#")
        if entry.verdict is Verdict.READY:
            assert entry.reason is None
        else:
            assert entry.reason and len(entry.reason) > 10
        if entry.verdict is Verdict.DUPLICATE:
            first = roster.unique[entry.key]
            assert entry.duplicate_of == first.line_number < entry.line_number
            assert str(first.line_number) in (entry.reason or "")
    ready = [entry for entry in roster.entries if entry.verdict is Verdict.READY]
    assert len({entry.key for entry in ready}) == len(ready) == len(roster.unique)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(built, min_size=1, max_size=6),
    st.builds(lambda a, b: f"{a},{b}", st.text(alphabet="ab ,;", max_size=20), st.text(alphabet="ab ,;", max_size=20)),
)
def test_note_keeps_later_commas_and_default_fills_the_rest(emails: list[str], note: str) -> None:
    assume(note.strip(" ,"))
    text = "\n".join(f"{email}, {note}" if i % 2 else email for i, email in enumerate(emails))
    for entry in parse_roster(text, "  the default  ").entries:
        if entry.verdict is Verdict.READY:
            assert entry.note == (note.strip(" ,") if entry.line_number % 2 == 0 else "the default")


# --- tricky rosters ----------------------------------------------------------------------------------------

TRICKY: dict[str, tuple[str, str | None, list[Row]]] = {
    "bom, crlf, blank and comment lines": (
        "\ufeffann@example.com\r\n\r\n# staff list\r\n  #indented comment\r\nbob@example.com\r\n",
        None,
        [(1, "ready", "ann@example.com", None, None), (5, "ready", "bob@example.com", None, None)],
    ),
    "old mac line endings": (
        "ann@example.com\rbob@example.com\r",
        "Hi",
        [(1, "ready", "ann@example.com", "Hi", None), (2, "ready", "bob@example.com", "Hi", None)],
    ),
    "note splits on the first comma only": (
        "ann@example.com,  Welcome, Ann, to Riverside  ",
        None,
        [(1, "ready", "ann@example.com", "Welcome, Ann, to Riverside", None)],
    ),
    "empty note takes the default": (
        "ann@example.com,   \nbob@example.com,Own note",
        "Default",
        [(1, "ready", "ann@example.com", "Default", None), (2, "ready", "bob@example.com", "Own note", None)],
    ),
    "case-insensitive duplicates point at the first": (
        "Ann@Example.com\nANN@EXAMPLE.COM, again\nann@example.com",
        None,
        [
            (1, "ready", "Ann@example.com", None, None),
            (2, "duplicate", "ANN@example.com", "again", 1),
            (3, "duplicate", "ann@example.com", None, 1),
        ],
    ),
    "an invalid note does not claim the address": (
        f"ann@example.com, {'x' * 501}\nann@example.com",
        None,
        [(1, "invalid", "ann@example.com", "x" * 501, None), (2, "ready", "ann@example.com", None, None)],
    ),
    "a note of exactly 500 characters is fine": (
        f"ann@example.com, {'x' * 500}",
        None,
        [(1, "ready", "ann@example.com", "x" * 500, None)],
    ),
    "not addresses": (
        "no at sign\nann@@example.com\n, only a note\nAnn Lee <ann@example.com>\nann@localhost\nann@example.test",
        None,
        [(n, "invalid", "", None, None) for n in range(1, 7)],
    ),
    "international addresses are normalised": (
        "josé@EXÄMPLE.com\nann@xn--bcher-kva.example",
        None,
        [(1, "ready", "josé@exämple.com", None, None), (2, "ready", "ann@bücher.example", None, None)],
    ),
    "role mailboxes are case-insensitive": (
        "Postmaster@Example.com\npostmaster@example.com",
        None,
        [(1, "ready", "postmaster@example.com", None, None), (2, "duplicate", "postmaster@example.com", None, 1)],
    ),
    "line and paragraph separators copied from a document end lines": (  # a probe: "invalid characters: '@'"
        "ann@example.com\u2028bob@example.com, Hi\u2029cat@example.com",
        None,
        [
            (1, "ready", "ann@example.com", None, None),
            (2, "ready", "bob@example.com", "Hi", None),
            (3, "ready", "cat@example.com", None, None),
        ],
    ),
    "tabs and no-break spaces around entries": (
        "\t ann@example.com \u00a0\n\u00a0\u00a0\n",
        None,
        [(1, "ready", "ann@example.com", None, None)],
    ),
    "control characters in a note": (
        "ann@example.com, bell\x07here",
        None,
        [(1, "invalid", "ann@example.com", "bell\ufffdhere", None)],
    ),
    "a right-to-left override in a note": (
        "ann@example.com, \u202eevil note\nbob@example.com, \u05e9\u05dc\u05d5\u05dd\u200f OK",
        None,
        [
            (1, "invalid", "ann@example.com", "\ufffdevil note", None),
            (2, "ready", "bob@example.com", "\u05e9\u05dc\u05d5\u05dd\u200f OK", None),
        ],
    ),
}


@pytest.mark.parametrize("case", list(TRICKY))
def test_tricky_rosters(case: str) -> None:
    text, default_note, expected = TRICKY[case]
    rows = parsed(text, default_note)
    assert comparable(rows) == comparable(expected)
    assert [r for r in rows if r[1] != "invalid"] == [r for r in expected if r[1] != "invalid"]


def test_reasons_say_what_is_wrong() -> None:
    entries = parse_roster(f"no at sign\n, hi\nann@example.com, {'n' * 600}\nann@example.com\nANN@example.com").entries
    reasons = [entry.reason or "" for entry in entries]
    assert reasons[0].startswith("not a valid email address: ") and "@-sign" in reasons[0]
    assert reasons[1] == "no email address before the comma"
    assert reasons[2] == "the note is 600 characters long; at most 500 are allowed"
    assert reasons[3] == ""
    assert reasons[4] == "duplicate of line 4 (the same address, ignoring case)"


def test_limits() -> None:
    at_limit = "a@example.com\n" * MAX_LINES
    assert len(parse_roster(at_limit).entries) == MAX_LINES
    with pytest.raises(RosterTooLarge, match="100,001 lines"):
        parse_roster(at_limit + "b@example.com")
    assert check_size(at_limit) == MAX_LINES
    with pytest.raises(RosterTooLarge, match="100,001 lines"):
        check_size("\r\n" * MAX_LINES + "b@example.com")
    with pytest.raises(RosterTooLarge, match="5 MB"):
        parse_roster("#" * (MAX_BYTES + 1))
    with pytest.raises(RosterTooLarge, match="5 MB"):
        parse_roster("é" * (MAX_BYTES // 2 + 1))  # two bytes each in UTF-8


def test_what_pasting_leaves_around_an_address_is_named_with_its_fix() -> None:
    """A spreadsheet's two columns, a mail program's "Name <address>", quotes: the validator's own words ("invalid
    characters: SPACE, U+0009", "must have an @-sign") did not tell staff what to change."""
    text = 'tab@example.com\tJane\nJane Doe <jane@example.com>\n"quoted@example.com"\nx@example.com;z@example.com\n'
    assert [(entry.verdict, entry.reason) for entry in parse_roster(text).entries] == [
        (
            Verdict.INVALID,
            "not a valid email address: a tab follows the address (a spreadsheet's second column?); put a personal "
            "note after a comma",
        ),
        (
            Verdict.INVALID,
            "not a valid email address: write the address alone (jane@example.com), without a name or angle brackets",
        ),
        (Verdict.INVALID, "not a valid email address: remove the quotes around the address"),
        (
            Verdict.INVALID,
            "not a valid email address: one address per line: a mail program's list (a@example.com; b@example.com) "
            "needs a line each",
        ),
    ]


def test_a_line_longer_than_any_address_is_refused_before_any_pattern_reads_it() -> None:
    """A security review: one 24 kB line ("<a@a@a@…") held the whole process for 3.5 s in the name-and-brackets
    hint's pattern (quadratic), and a 1 MB line, inside the roster's limits, would have held it for an hour. This
    one is 1 MB: without the bound, the suite's timeout ends this test."""
    [entry] = parse_roster("<" + "a@" * 500_000).entries
    assert entry.verdict is Verdict.INVALID
    assert entry.reason == "not a valid email address: it is 1,000,001 characters long; an address has at most 254"
    [named] = parse_roster(f"{'Jane ' * 40}<jane@example.com>").entries  # a long name: still told the fix
    assert named.reason is not None and "write the address alone (jane@example.com)" in named.reason


def test_what_a_spreadsheet_or_a_web_page_leaves_around_a_note_or_an_address_is_not_sent() -> None:
    """A staff probe: `a@example.com,,` (a CSV's empty columns) sent "," as the personal note instead of the default
    one, a CSV's quotes around a note reached the patient, and a second export's byte-order mark mid-paste or a
    zero-width space from a web page made the line invalid (and a comment after such a mark a row)."""
    text = (
        "one@example.com,,\n"
        "two@example.com, ,\n"
        'three@example.com,"Welcome, friend",,\n'
        'four@example.com,"She said ""hi"""\n'
        "five@example.com,\u201cSee you soon\u201d\n"
        "\ufeffsix@example.com\n"
        "\ufeff# the second export's header\n"
        "seven@example.com\u200b,\u200bBring your card\u200b\n"
        'ten@example.com,"Welcome" from Dr. "Lee"\n'  # quotes that only begin and end it: as typed
        'eleven@example.com,\u200b"Hi"\n'
        "\u201ceight@example.com\u201d\n"
    )
    rows = [(e.line_number, e.verdict.value, e.email, e.note, e.reason) for e in parse_roster(text, "Hello").entries]
    assert rows == [
        (1, "ready", "one@example.com", "Hello", None),
        (2, "ready", "two@example.com", "Hello", None),
        (3, "ready", "three@example.com", "Welcome, friend", None),
        (4, "ready", "four@example.com", 'She said "hi"', None),
        (5, "ready", "five@example.com", "See you soon", None),
        (6, "ready", "six@example.com", "Hello", None),
        (8, "ready", "seven@example.com", "Bring your card", None),
        (9, "ready", "ten@example.com", '"Welcome" from Dr. "Lee"', None),
        (10, "ready", "eleven@example.com", "Hi", None),
        (
            11,
            "invalid",
            "\u201ceight@example.com\u201d",
            "Hello",
            "not a valid email address: remove the quotes around the address",
        ),
    ]


def test_long_runs_of_what_is_trimmed_cost_no_time() -> None:
    """A review: commas and spaces before a note's last word, or zero-width spaces and spaces before an address,
    were trimmed in quadratic time: a 40 kB line held the process (the GIL) for 8 s, a roster's 5 MB for a day. These
    lines are megabytes long: without a linear trim, the suite's timeout ends this test."""
    [commas] = parse_roster("a@example.com,x" + ", " * 1_000_000 + "x,\n").entries
    assert commas.verdict is Verdict.INVALID and "at most 500" in (commas.reason or "")
    [invisible] = parse_roster("\u200b " * 1_000_000 + "b@example.com\n").entries
    assert (invisible.verdict, invisible.email) == (Verdict.READY, "b@example.com")
    [quoted] = parse_roster('c@example.com,"' + "a" * 1_000_000 + '"\n').entries
    assert quoted.verdict is Verdict.INVALID
