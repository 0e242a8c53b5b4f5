"""Structured JSON logs with service, correlation and event ids on every line, and PHI kept out."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values are PHI or secrets and never appear in a log line, whatever their content.
DROPPED_KEYS = frozenset(
    {
        "note",
        "notes",
        "default_note",
        "message",
        "name",
        "display_name",
        "ssn",
        "date_of_birth",
        "dob",
        "phone",
        "reason",
        "roster",
        "token",
        "password",
        "secret",
        "authorization",
        "body",
        "payload",
        "input",  # pydantic's errors(): the value that failed validation
    }
)
# Addresses are international (renée@bücher.de, प्रिया@उदाहरण.भारत, kevin.o'hara@…): a local part is any run of
# characters that cannot end an address in text (space, <>()[],;:"@\), whatever the script; a domain the same without
# dots and quotes, in at least two labels. A quoted local part ("jane doe"@example.com) is masked whole.
_LOCAL = r"[^\s<>()\[\],;:\"@\\]"
_LABEL = r"[^\s<>()\[\],;:\"'@\\.]"
EMAIL = re.compile(rf'(?:"[^"\r\n]*"|({_LOCAL}){_LOCAL}*)@((?:{_LABEL}+\.)+{_LABEL}{{2,}})')
# SSNs written 123-45-6789, 123 45 6789 or 123456789 (how staff type them into an invite): a run of exactly nine digits.
SSN = re.compile(r"\b\d{3}([- ]?)\d{2}\1\d{4}\b")
# Dates of birth as people write them; an ISO timestamp (a "T" after the date) is not one.
DATE = re.compile(r"\b(?:19|20)\d{2}-\d{2}-\d{2}\b(?!T)|\b\d{1,2}/\d{1,2}/(?:19|20)\d{2}\b")
PHONE = re.compile(
    r"(?:\+\d{1,3}[\s.\-]?)?\(?\b\d{3}\)?[\s.\-]?\d{3}[\s.\-]?\d{4}\b"  # North American
    r"|\+\d(?:[\s.\-]?\(?\d\)?){6,14}(?!\d)"  # international, +44 20 7946 0958: a plus, then 7 to 15 digits
)
# A pydantic ValidationError's text quotes the value it refused ("[type=…, input_value='Jane Doe', input_type=str]"),
# whether it arrives as repr(error), str(error) or a traceback: a name or a note in any of them.
PYDANTIC_INPUT = re.compile(r"input_value=.*?(?=, input_type=|$)")  # $: a text cut short (repr(error)[:300])
# A discriminated union's error quotes the tag it was given ("Input tag 'Jane Doe, HIV' found using 'event_type'"):
# whatever a producer put in the event_type, a security review saw in the notifier's log.
PYDANTIC_TAG = re.compile(r"Input tag '.*?(?:'( found using)|$)")  # $: a text cut short inside the tag
# asyncpg's DataError quotes the argument it could not encode ("invalid input for query argument $2: ['Jane Doe',
# 'Ann… (reason)"): a batch's names or addresses, in a consumer's apply_failed line; its reason may quote the value
# again ("invalid UUID 'Jane Doe': …"). The value goes; the reason stays only when it is plainly one ("date value out
# of range"): whole, and holding no quote or parenthesis (a value may hold " (", a cut may end inside a quote).
ASYNCPG_ARGUMENT = re.compile(r"invalid input for query argument \$\d+[^:]{0,60}: ")
_REPR_END = frozenset("'\")]")  # what may follow the reason: the end of the error's repr


def _asyncpg_argument(text: str) -> str:
    """The text up to asyncpg's "argument $N: ", then [redacted], then the reason if it is plainly one. Linear."""
    found = ASYNCPG_ARGUMENT.search(text)
    if found is None or text.startswith("[redacted]", found.end()):  # scrubbed already
        return text
    rest = text[found.end() :]
    opening = rest.find(" (")
    closing = rest.find(")", opening + 2) if opening >= 0 else -1
    reason = rest[opening + 2 : closing] if closing >= 0 else ""
    plain = reason and not any(mark in reason for mark in "()'\"") and set(rest[closing + 1 :]) <= _REPR_END
    return f"{text[: found.end()]}[redacted]" + (f" ({reason}){rest[closing + 1 :]}" if plain else "")


# Values the runtime itself sets; scrubbing them would only garble them (a timestamp is not a phone number).
TRUSTED_KEYS = frozenset({"timestamp", "level", "service", "event_id", "correlation_id", "logger"})


def mask_email(address: str) -> str:
    """j***@example.com: enough to tell addresses apart in an incident, not enough to contact anyone."""
    return EMAIL.sub(_masked, address)


def _masked(match: re.Match[str]) -> str:
    return f"{match[1] or ''}***@{match[2]}"


def scrub_text(text: str) -> str:
    """Mask emails, drop SSN-, phone- and date-shaped numbers and the values pydantic errors quote, and strip CR/LF so
    a caller cannot forge lines."""
    text = text.replace("\r", " ").replace("\n", " ")
    if "input_value=" in text:
        text = PYDANTIC_INPUT.sub("input_value=[redacted]", text)
    if "Input tag '" in text:
        text = PYDANTIC_TAG.sub(lambda found: "Input tag [redacted]" + (found.group(1) or ""), text)
    if "invalid input for query argument" in text:
        text = _asyncpg_argument(text)
    text = SSN.sub("[redacted]", text)
    text = PHONE.sub("[redacted]", text)
    text = DATE.sub("[redacted]", text)
    return mask_email(text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k.lower() not in DROPPED_KEYS}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub_phi(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the last word on what leaves the process."""
    for key in [k for k in event_dict if k.lower() in DROPPED_KEYS]:
        del event_dict[key]
    for key, value in list(event_dict.items()):
        if key not in TRUSTED_KEYS:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines on stdout; stdlib loggers (uvicorn, aiokafka, faststream) go through the same pipeline."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            *shared,
            _bind_service(service),
            scrub_phi,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=["repeated"]), _bind_service(service)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrub_phi, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    # With the broker away, aiokafka's coordinator logs the same error ~10 times a second: alert noise.
    handler.addFilter(OnceEvery(REPEAT_SECONDS, loggers=("aiokafka", "faststream")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


REPEAT_SECONDS = 10.0


class OnceEvery(logging.Filter):
    """Let a message of these loggers (and their children) through once per `seconds`, by logger, level and message
    template; the line that ends a quiet spell says how many were dropped since, as `repeated`."""

    def __init__(self, seconds: float, loggers: tuple[str, ...], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.seconds = seconds
        self.loggers = loggers
        self.clock = clock
        self.seen: dict[tuple[str, int, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.loggers):
            return True
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.seconds:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]
        if len(self.seen) > 1000:
            self.seen.clear()  # templates are few; this only bounds a pathological logger
        self.seen[key] = (now, 0)
        return True


def _bind_service(service: str) -> Any:
    def add_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        event_dict.setdefault("correlation_id", None)
        event_dict.setdefault("event_id", None)
        return event_dict

    return add_ids


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
