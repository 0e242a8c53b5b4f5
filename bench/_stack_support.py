"""Helpers of the whole-stack benchmarks (e2e_pipeline, load): the stack, seeding, RSS sampling, figures, tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bench._notifier_support import wait_for
from collabkare.stack import mailbox as mailbox_file
from schemas import Envelope, topic_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "bench"
SERVICES = ("connections", "invitations", "notifier")
MIB = 2**20


# --- pure helpers (unit-tested) ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; 0.0 for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned; None prints as '-'."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# --- the stack -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_stack(name: str) -> Iterator[Any]:
    """The local stack in its own directory and on free ports (never collides with a `make up` beside it).

    Its logs stay under var/ (PostgreSQL's data directory goes when the stack stops): see remove_workdir().
    """
    from collabkare.stack.local import local_stack
    from collabkare.stack.ports import free_port

    workdir = ROOT / "var" / f"bench-{name}-{os.getpid()}"
    os.environ["COLLABKARE_STACK_DIR"] = str(workdir)
    for service in SERVICES:
        os.environ[f"{service.upper()}_PORT"] = str(free_port())
    print(f"starting the local stack in {workdir.relative_to(ROOT)} …", flush=True)
    with local_stack(workdir) as stack:
        yield stack


def remove_workdir(stack: Any) -> None:
    """After a clean run: the stack's directory (logs, caught mail) is of no further use."""
    shutil.rmtree(Path(stack.supervisor.log_dir).parent, ignore_errors=True)


def admin_url(stack: Any) -> str:
    """A superuser URL on the stack's database (to watch the services' tables; never to change them)."""
    from collabkare.stack.local import DATABASE

    return str(stack.infra.database_url_for(DATABASE))


def process_pids(stack: Any) -> dict[str, int]:
    """The three services, then the infrastructure the stack embeds (PostgreSQL, broker, SMTP catcher)."""
    pids = {name: pid for name, pid in stack.supervisor.pids().items() if name in SERVICES}
    if stack.infra.supervisor is not None:
        pids.update(stack.infra.supervisor.pids())
    return pids


async def seed_directory(stack: Any, practice_id: uuid.UUID, emails: Sequence[str], timeout: float = 300) -> float:
    """PracticeRegistered and one PatientRegistered per email, produced in bulk; waits until the notifier has
    them all in its directory (so that every invite is really sent) and the connections service knows the practice
    (so that patients may ask to connect to it). Returns the seconds it took."""
    from collabkare.seeding import patient_registered, practice_registered

    started = time.perf_counter()
    admin = await asyncpg.connect(admin_url(stack))
    try:
        base_patients = int(await admin.fetchval("SELECT count(*) FROM notifier.patients"))
        events: list[Envelope] = [practice_registered(practice_id, "Riverside Family Practice")]
        events += [patient_registered(e, locale="es" if i % 5 == 0 else "en") for i, e in enumerate(emails)]
        await publish_bulk(stack.infra.kafka_bootstrap, stack.topic_prefix, events)
        print(f"  {len(events):,} events produced in {time.perf_counter() - started:.1f} s", flush=True)

        async def known() -> bool:
            practices = await admin.fetchval(
                "SELECT count(*) FROM notifier.practices WHERE practice_id = $1", practice_id
            )
            patients = int(await admin.fetchval("SELECT count(*) FROM notifier.patients"))
            # The connections service learns of the practice too: patients may then ask to connect to it.
            asking = await admin.fetchval(
                "SELECT count(*) FROM connections.practices WHERE practice_id = $1", practice_id
            )
            return bool(practices and asking) and patients >= base_patients + len(set(emails))

        await wait_for("the notifier's and connections' directories have them", known, timeout, every=0.25)
    finally:
        await admin.close()
    return time.perf_counter() - started


async def publish_bulk(bootstrap: str, prefix: str, events: Sequence[Envelope]) -> None:
    """Produce events as whole record batches, one per partition at a time (as many as send() would make, without
    its per-record bookkeeping): same topics, keys and partitions (the default partitioner), acks=all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=30_000)
    await producer.start()
    try:
        partitioner = DefaultPartitioner()
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        sent = []
        for event in events:
            topic = prefix + topic_for(event.event_type)
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            key, value = event.aggregate_key().encode(), event.model_dump_json().encode()
            partition = partitioner(key, partitions[topic], partitions[topic])
            batch = open_batches.get((topic, partition))
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[topic, partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for (topic, partition), batch in open_batches.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def mailbox(stack: Any) -> Path:
    if stack.infra.mailbox is None:
        raise SystemExit("benchmark: needs the embedded SMTP catcher (unset SMTP_HOST) to count emails")
    return Path(stack.infra.mailbox)


def caught(mbox: Path) -> tuple[int, float | None]:
    """How many messages the catcher's mbox holds, and when it appended the last one (epoch seconds)."""
    try:
        last = mbox.stat().st_mtime
    except FileNotFoundError:
        return 0, None
    return mailbox_file.count(mbox), last


# --- resources -----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children."""
    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


def own_cpu_seconds() -> float:
    """This process alone (its children are the stack's processes, counted on their own)."""
    return float(sum(psutil.Process().cpu_times()[:2]))


@dataclass
class RssSampler:
    """Samples the RSS of each named process (with its children) every `every` seconds in a thread.

    A service's figure is its process tree's summed RSS. PostgreSQL's sum counts shared buffers once per
    backend that touched them, so it overstates that process tree's real use; it is reported for reference.
    """

    pids: dict[str, int]
    every: float = 0.1
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _trees: dict[str, list[psutil.Process]] = field(default_factory=dict)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Children are looked up once a second (a full process-table scan); their RSS every sample.
            self._sample(refresh=self.samples % 10 == 0)
            self._stop.wait(self.every)

    def _sample(self, refresh: bool = False) -> None:
        for name, pid in self.pids.items():
            if refresh or name not in self._trees:
                try:
                    leader = psutil.Process(pid)
                    self._trees[name] = [leader, *leader.children(recursive=True)]
                except psutil.Error:
                    self._trees[name] = []
            rss = 0
            for process in self._trees[name]:
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss
            mib = rss / MIB
            self.first.setdefault(name, mib)
            self.last[name] = mib
            self.peak[name] = max(self.peak.get(name, 0.0), mib)
        self.samples += 1

    def figures(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "start_mib": round(self.first[name], 1),
                "peak_mib": round(peak, 1),
                "end_mib": round(self.last[name], 1),
            }
            for name, peak in self.peak.items()
        }
