"""What every fault drill needs: its own practice and patients, bounded waits, the caught mail, an API watcher."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import TopicPartition

from collabkare.client import CollabKare
from collabkare.seeding import patient_registered, practice_registered, publish
from collabkare.stack.local import RunningStack
from collabkare.stack.mailbox import read_raw

FINAL = {"sent", "not_on_platform", "error", "invalid", "duplicate", "already_connected", "already_invited"}
DATABASE = "collabkare"
DRILL_SECONDS = 90.0  # every wait of a drill is bounded by this
_ENVELOPE_TO = re.compile(rb"^x-envelope-to:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def wait_for(
    what: str,
    condition: Callable[[], bool],
    timeout: float = DRILL_SECONDS,
    every: float = 0.2,
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll `condition` (exceptions count as "not yet") until true; AssertionError naming `what` after `timeout`,
    with what `detail` says then."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if condition():
                return
        except Exception as error:
            last = f" (last attempt: {type(error).__name__}: {error})"[:300]
        if time.monotonic() > deadline:
            said = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s{last}{said}")
        time.sleep(every)


def log_tails(stack: RunningStack, *names: str, lines: int = 25) -> str:
    """The last lines of each named process's log, for an assertion message."""
    parts = []
    for name in names:
        path = stack.supervisor.log_dir / f"{name}.log"
        try:
            text = path.read_bytes()[-16384:].decode(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        parts.append(f"--- {path} ---\n" + "\n".join(line[:400] for line in text))
    return "\n".join(parts)


def ready(url: str) -> int:
    """The /readyz status code, or 0 when nothing answers within 10 s. Not 2 s: with the broker frozen, the broker
    check alone takes its own 2 s bound before /readyz answers 503, so a 2 s client gave up first on a slow box and
    read 0 at every poll."""
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code
    except httpx.HTTPError:
        return 0


def mail_by_recipient(mbox: Path, recipients: set[str]) -> dict[str, list[str]]:
    """Message-IDs caught per recipient (only the given recipients), from the envelope the catcher wrote."""
    found: dict[str, list[str]] = {}
    for raw in read_raw(mbox):
        head = raw[: raw.find(b"\r\n\r\n")]
        to = _ENVELOPE_TO.search(head)
        if to is None:
            continue
        for address in to.group(1).decode().split(","):
            address = address.strip().lower()
            if address in recipients:
                message_id = _MESSAGE_ID.search(head)
                found.setdefault(address, []).append(message_id.group(1).decode().strip() if message_id else "")
    return found


def duplicates(caught: dict[str, list[str]]) -> dict[str, int]:
    """Message-IDs seen more than once, and recipients who got more than one message (one invite each)."""
    ids = Counter(message_id for ids in caught.values() for message_id in ids)
    extra = {f"message-id {k}": n for k, n in ids.items() if n > 1}
    extra.update({f"recipient {k}": len(v) for k, v in caught.items() if len(v) > 1})
    return extra


async def _fetch(stack: RunningStack, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(stack.infra.database_url_for(DATABASE), timeout=10)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def fetch(stack: RunningStack, query: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(stack, query, *args))


def written_twice(stack: RunningStack, batch_ids: list[str]) -> list[str]:
    """Batch rows with more than one invite, or invites with more than one delivery, in these batches."""
    ids = [uuid.UUID(b) for b in batch_ids]
    invites = fetch(
        stack,
        "SELECT batch_id, line_number, count(*) AS n FROM invitations.invites WHERE batch_id = ANY($1)"
        " GROUP BY 1, 2 HAVING count(*) > 1",
        ids,
    )
    deliveries = fetch(
        stack,
        "SELECT invite_id, count(*) AS n FROM notifier.deliveries WHERE batch_id = ANY($1)"
        " GROUP BY 1 HAVING count(*) > 1",
        ids,
    )
    return [f"invite row {dict(r)}" for r in invites] + [f"delivery {dict(r)}" for r in deliveries]


@dataclass
class Drill:
    """One drill's own practice, registered patients and API client."""

    stack: RunningStack
    name: str
    practice_id: uuid.UUID = field(default_factory=uuid.uuid4)
    patients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = CollabKare(self.stack.urls, self.stack.jwt_secret, self.practice_id)

    def emails(self, count: int, tag: str = "") -> list[str]:
        return [f"p{i}-{self.name}{tag}@example.com" for i in range(count)]

    def register(self, count: int, tag: str = "") -> list[str]:
        """Seed the practice and `count` patients; wait until the notifier's directory holds them all."""
        emails = self.emails(count, tag)
        events = [practice_registered(self.practice_id, f"Drill {self.name}")]
        events += [patient_registered(address) for address in emails]
        asyncio.run(publish(self.stack.infra.kafka_bootstrap, self.stack.topic_prefix, events))
        wait_for(f"{self.name}: the notifier knows the {count} patients", lambda: self._known(emails) == len(emails))
        self.patients += emails
        return emails

    def _known(self, emails: list[str]) -> int:
        rows = fetch(self.stack, "SELECT count(*) AS n FROM notifier.patients WHERE email = ANY($1)", emails)
        return int(rows[0]["n"])

    def wait_done(self, batch_id: str, timeout: float = DRILL_SECONDS, api: CollabKare | None = None) -> None:
        api = api or self.api
        wait_for(f"{self.name}: batch {batch_id} done", lambda: bool(api.batch(batch_id)["done"]), timeout)

    def outcomes(self, batch_id: str, api: CollabKare | None = None) -> dict[str, dict[str, Any]]:
        """Every row of the batch by email; asserts each has exactly one final outcome."""
        rows = (api or self.api).rows(batch_id)
        by_email: dict[str, dict[str, Any]] = {}
        for row in rows:
            assert row["email"] not in by_email, f"{self.name}: {row['email']} has two rows"
            assert row["outcome"] in FINAL, f"{self.name}: row {row} is not final"
            by_email[row["email"]] = row
        return by_email

    def caught(self) -> dict[str, list[str]]:
        assert self.stack.infra.mailbox is not None
        return mail_by_recipient(self.stack.infra.mailbox, set(self.patients))


@dataclass
class Watcher:
    """Polls API routes and /readyz in a thread throughout a fault: every answer must be a 2xx or a clear 503."""

    checks: dict[str, Callable[[httpx.Client], httpx.Response]]
    every: float = 0.1
    seen: list[tuple[str, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        # /readyz answers once its checks have, side by side: about 2 s when a dependency does not answer, more on a
        # slow box. 15 s, so a late 503 is not taken for no answer.
        with httpx.Client(timeout=15) as http:
            while not self._stop.is_set():
                for name, call in self.checks.items():
                    try:
                        response = call(http)
                        self.seen.append((name, response.status_code, answer_kind(response)))
                    except httpx.HTTPError as error:
                        self.seen.append((name, 0, type(error).__name__))
                self._stop.wait(self.every)

    def statuses(self, name: str) -> list[int]:
        return [status for seen, status, _ in self.seen if seen == name]

    def saw(self, names: list[str], check: Callable[[list[int]], bool]) -> Callable[[], bool]:
        """For `wait_for`: whether every one of these checks' answers so far passes `check` (e.g. `went_down_and_up`),
        so that a drill waits for what the watcher recorded rather than for a time a slow box could outlast."""
        return lambda: all(check(self.statuses(name)) for name in names)

    def recent(self, names: list[str]) -> dict[str, list[int]]:
        """The last statuses of these checks (for a failure message)."""
        return {name: self.statuses(name)[-8:] for name in names}

    def unclear(self, names: set[str] | None = None) -> list[tuple[str, int, str]]:
        """Answers that were neither a success nor a problem+json 503 (no answer at all counts too)."""
        return [
            entry
            for entry in self.seen
            if (names is None or entry[0] in names)
            and not (200 <= entry[1] < 300 or (entry[1] == 503 and entry[2] == "problem"))
        ]


def answer_kind(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "")
    if response.status_code < 400:
        return "ok"
    if kind.startswith("application/problem+json") or (
        response.request.url.path == "/readyz" and kind.startswith("application/json")
    ):
        return "problem"
    return f"{kind}: {response.text[:120]}"


def went_down_and_up(statuses: list[int]) -> bool:
    """A 503 was seen, and a 200 after the last 503."""
    if 503 not in statuses:
        return False
    last_down = len(statuses) - 1 - statuses[::-1].index(503)
    return 200 in statuses[last_down:]


def pipeline_state(stack: RunningStack, batch_id: str) -> str:
    """Where a batch's work stands, stage by stage (for a drill's failure message)."""
    batch = uuid.UUID(batch_id)
    queries = {
        "invitations outbox": "SELECT count(*)::text AS n FROM invitations.outbox",
        "invites by delivery": "SELECT string_agg(delivery || '=' || n, ' ') AS n FROM"
        " (SELECT delivery, count(*) AS n FROM invitations.invites WHERE batch_id = $1 GROUP BY 1) s",
        "notifier deliveries by status": "SELECT string_agg(status || '=' || n, ' ') AS n FROM"
        " (SELECT status, count(*) AS n FROM notifier.deliveries WHERE batch_id = $1 GROUP BY 1) s",
        "notifier outbox": "SELECT count(*)::text AS n FROM notifier.outbox",
    }
    parts = []
    for name, query in queries.items():
        try:
            rows = fetch(stack, query, batch) if "$1" in query else fetch(stack, query)
            parts.append(f"{name}: {rows[0]['n']}")
        except Exception as error:
            parts.append(f"{name}: {type(error).__name__}")
    return "; ".join(parts)


async def _kafka_state(bootstrap: str, prefix: str) -> str:
    from aiokafka import AIOKafkaConsumer

    from schemas.topics import CONSUMER_GROUPS

    parts = []
    for group, topics in CONSUMER_GROUPS.items():
        # No subscription: committed() and end_offsets() read the group's offsets without joining it.
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=prefix + group, enable_auto_commit=False)
        await reader.start()
        try:
            for topic in topics:
                partitions = sorted(reader.partitions_for_topic(prefix + topic) or set())
                tps = [TopicPartition(prefix + topic, p) for p in partitions]
                ends = await reader.end_offsets(tps)
                committed = [await reader.committed(tp) for tp in tps]
                parts.append(f"{group} on {topic}: end {[ends[tp] for tp in tps]}, committed {committed}")
        except Exception as error:
            parts.append(f"{group}: {type(error).__name__}: {error}")
        finally:
            await reader.stop()
    return "\n".join(parts)


def kafka_state(stack: RunningStack) -> str:
    """Consumer groups, their committed offsets and the topics' end offsets (for a drill's failure message)."""
    try:
        return asyncio.run(asyncio.wait_for(_kafka_state(stack.infra.kafka_bootstrap, stack.topic_prefix), 30))
    except Exception as error:
        return f"kafka state: {type(error).__name__}: {error}"
