"""The roster parser: pasted text in, one verdict per entry out (pure, no I/O, fast enough for 100,000 lines)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from services.invitations.domain import email_key
from services.runtime.text import UNSENDABLE, unsendable_character

MAX_NOTE = 500  # characters, after trimming (the events' Note type)
MAX_LINES = 100_000
MAX_BYTES = 5 * 1024 * 1024  # of roster text, UTF-8 encoded
BOM = "\ufeff"

# Text copied from a word processor or a web page may end its lines with U+2028 (line separator) or U+2029
# (paragraph separator): line breaks to the person who pasted it, and to this parser.
_LINE_BREAK = re.compile("\r\n|[\r\n\u2028\u2029]")
_UNUSUAL_BREAKS = ("\r", "\u2028", "\u2029")

# A conservative subset of addresses that email-validator accepts unchanged except for the lower-cased domain:
# plain ASCII, no Punycode or "--" labels, no RFC 2142 mailbox names, no special-use domain. Everything
# else goes through email-validator itself; tests prove both paths give identical answers.
_PLAIN = re.compile(
    r"([A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*)@((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
# email-validator's SPECIAL_USE_DOMAIN_NAMES: single labels, so "is or ends with" means "is the last label".
_SPECIAL_USE = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
_MAILBOX_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


class Verdict(StrEnum):
    READY = "ready"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    ALREADY_CONNECTED = "already_connected"
    ALREADY_INVITED = "already_invited"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per entry, 0.1 s per 100,000
class Entry:
    """One roster entry (a line that is neither blank nor a comment) and what the parser made of it."""

    line_number: int
    email: str  # normalised when valid, else the text before the first comma, trimmed
    note: str | None  # the entry's own note, or the default note
    verdict: Verdict
    reason: str | None = None
    duplicate_of: int | None = None
    key: str = ""  # what duplicates and existing invites are compared on: the address, ignoring case


@dataclass(frozen=True)
class Roster:
    entries: list[Entry]
    lines: int  # physical lines, including blank lines and comments
    unique: dict[str, Entry]  # by key, each valid address's first entry: the ones the parser found ready

    def ready(self) -> list[Entry]:
        """Entries still ready (after flagging, some of `unique` are already connected or invited)."""
        return [entry for entry in self.unique.values() if entry.verdict is Verdict.READY]


class RosterTooLarge(Exception):
    def __init__(self, detail: str, rule: str) -> None:
        super().__init__(detail)
        self.rule = rule  # the limit passed: max_bytes or max_lines


# Longer than any address (254) with a name around it: refused before any pattern or the validator reads it. A
# security review pasted one 24 kB line and held the whole process (the GIL) for 3.5 s; 1 MB would have held it for
# an hour.
MAX_ADDRESS_INPUT = 320


def check_email(text: str) -> tuple[str | None, str | None]:
    """(normalised address, None) when valid, else (None, the reason a person understands)."""
    if len(text) > MAX_ADDRESS_INPUT:
        return None, f"not a valid email address: it is {len(text):,} characters long; an address has at most 254"
    plain = _PLAIN.fullmatch(text)
    if plain is not None and len(text) <= 254:
        local, domain = plain.group(1), plain.group(2).lower()
        if (
            len(domain) <= 253
            and "--" not in domain
            and local.lower() not in _MAILBOX_NAMES
            and domain.rpartition(".")[2] not in _SPECIAL_USE
        ):
            return f"{local}@{domain}", None
    return check_email_thoroughly(text)


def check_email_thoroughly(text: str) -> tuple[str | None, str | None]:
    """email-validator's syntax check, no DNS: the reference the fast path must agree with."""
    try:
        return validate_email(text, check_deliverability=False).normalized, None
    except EmailNotValidError as error:
        return None, f"not a valid email address: {_paste_hint(text) or error}"


_QUOTES = frozenset({('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019")})  # ASCII, a word processor's
# Characters nobody sees that text copied from a web page, a mail program or a second CSV export (its byte-order
# mark, mid-paste) leaves at the ends of a line, an address or a note; str.strip() keeps them.
_INVISIBLE = frozenset("\ufeff\u200b\u200c\u200d\u2060\u200e\u200f")
# ... and commas at a note's ends: empty spreadsheet columns after it, or instead of one (a@example.com,,,).
_NOTE_EDGE = _INVISIBLE | {","}
# A note quoted as a CSV export quotes a field: the whole of it, any quote inside doubled. Linear: the two
# alternatives never match the same text.
_CSV_FIELD = re.compile(r'"(?:[^"]|"")*"')
_SMART = frozenset("\u201c\u201d")  # a word processor's quotes around a note


def _trimmed(text: str, edge: frozenset[str]) -> str:
    """The text without whitespace or `edge` characters at either end: one pass over what goes (a roster's line may
    be megabytes long, and a pattern or repeated strip() over a long run of them takes quadratic time)."""
    start, end = 0, len(text)
    while start < end and (text[start] in edge or text[start].isspace()):
        start += 1
    while end > start and (text[end - 1] in edge or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


def _visible(text: str) -> str:
    """The (stripped) text without invisible characters or whitespace at either end."""
    return _trimmed(text, _INVISIBLE) if text and (text[0] in _INVISIBLE or text[-1] in _INVISIBLE) else text


def _note(rest: str) -> str | None:
    """A line's personal note from what follows its first comma: without commas or invisible characters at its
    ends, and without the quotes a CSV export or a word processor put around the whole of it (a CSV's doubled
    quote inside is one); None when nothing is left. Quotes that only begin and end it stay ("Hi" from "Ann")."""
    note = rest.strip()
    if note and (note[0] in _NOTE_EDGE or note[-1] in _NOTE_EDGE):
        note = _trimmed(note, _NOTE_EDGE)
    if len(note) >= 2 and note[0] == '"' and _CSV_FIELD.fullmatch(note):
        note = _visible(note[1:-1].replace('""', '"').strip())
    elif len(note) >= 2 and note[0] == "\u201c" and note[-1] == "\u201d" and not _SMART.intersection(note[1:-1]):
        note = _visible(note[1:-1].strip())
    return note or None


_NAMED = re.compile(r"<\s*([^<>\s]+@[^<>\s]+)\s*>\s*")  # from the last "<": no backtracking over the name


def _paste_hint(text: str) -> str | None:
    """What to fix, for what pasting from a spreadsheet or a mail program leaves around an address; the validator
    alone says "invalid characters: U+0009" or "must have an @-sign" of them."""
    if "\t" in text:
        return "a tab follows the address (a spreadsheet's second column?); put a personal note after a comma"
    if ";" in text and text.count("@") > 1:
        return "one address per line: a mail program's list (a@example.com; b@example.com) needs a line each"
    named = _NAMED.fullmatch(text, text.rfind("<")) if "<" in text else None
    if named is not None:
        return f"write the address alone ({named.group(1)}), without a name or angle brackets"
    if len(text) > 2 and (text[0], text[-1]) in _QUOTES:
        return "remove the quotes around the address"
    return None


def check_note(note: str) -> str | None:
    """The reason a (trimmed) note cannot be sent, or None."""
    if len(note) > MAX_NOTE:
        return f"the note is {len(note)} characters long; at most {MAX_NOTE} are allowed"
    unsendable = unsendable_character(note)
    if unsendable is not None:
        return f"the note contains a control character ({unsendable})"
    return None


def storable(text: str) -> str:
    """The text with characters PostgreSQL cannot store replaced, for echoing invalid input back."""
    return UNSENDABLE.sub("\ufffd", text) if UNSENDABLE.search(text) else text


def split_lines(text: str) -> list[str]:
    """Lines as a person sees them: LF, CRLF, CR, U+2028 or U+2029 end a line; a leading byte-order mark is
    dropped."""
    if text.startswith(BOM):
        text = text[1:]
    unusual = any(mark in text for mark in _UNUSUAL_BREAKS)
    lines = _LINE_BREAK.split(text) if unusual else text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a final line break does not start another line
    return lines


def count_lines(text: str) -> int:
    """len(split_lines(text)), without building the lines: counting breaks costs no memory."""
    start = 1 if text.startswith(BOM) else 0
    if len(text) == start:
        return 0
    breaks = text.count("\n") - text.count("\r\n") + sum(text.count(mark) for mark in _UNUSUAL_BREAKS)
    return breaks if text.endswith(("\n", *_UNUSUAL_BREAKS)) else breaks + 1  # a CRLF is one break


def check_size(text: str) -> int:
    """The roster's lines; RosterTooLarge past MAX_BYTES or MAX_LINES (no per-line work: answered at once)."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise RosterTooLarge(f"The roster is larger than {MAX_BYTES // (1024 * 1024)} MB.", "max_bytes")
    lines = count_lines(text)
    if lines > MAX_LINES:
        detail = f"The roster has {lines:,} lines; at most {MAX_LINES:,} are allowed."
        raise RosterTooLarge(detail, "max_lines")
    return lines


def parse_roster(text: str, default_note: str | None = None) -> Roster:
    """Every entry with its verdict: ready, invalid or duplicate (of an earlier valid line, ignoring case).

    Raises RosterTooLarge past MAX_BYTES or MAX_LINES, before any per-line work.
    """
    check_size(text)
    lines = split_lines(text)
    default = (default_note or "").strip() or None
    unique: dict[str, Entry] = {}
    return Roster(list(_entries(lines, default, unique)), len(lines), unique)


def _entries(lines: list[str], default_note: str | None, unique: dict[str, Entry]) -> Iterator[Entry]:
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line and not line.isascii():
            line = _visible(line)
        if not line or line[0] == "#":
            continue
        address, comma, rest = line.partition(",")
        note = None
        if comma:  # without one the line is already trimmed
            address, note = address.strip(), _note(rest)
            if not address.isascii():
                address = _visible(address)
        if not address:
            yield Entry(number, "", _echo(note, default_note), Verdict.INVALID, "no email address before the comma")
            continue
        email, problem = check_email(address)
        if email is None:
            yield Entry(number, storable(address), _echo(note, default_note), Verdict.INVALID, problem)
            continue
        if note is not None:
            problem = check_note(note)
            if problem is not None:
                yield Entry(number, email, storable(note), Verdict.INVALID, problem)
                continue
        key = email_key(email)
        first = unique.get(key)
        if first is not None:
            reason = f"duplicate of line {first.line_number} (the same address, ignoring case)"
            yield Entry(number, email, note or default_note, Verdict.DUPLICATE, reason, first.line_number, key)
            continue
        entry = unique[key] = Entry(number, email, note or default_note, Verdict.READY, None, None, key)
        yield entry


def _echo(note: str | None, default_note: str | None) -> str | None:
    return storable(note) if note is not None else default_note
