"""The sender job: claims due deliveries, sends them over the SMTP pool at the allowed rate, records outcomes.

Claimer → queue → one worker per SMTP connection → results → recorder, running side by side so that the
connections never wait for the database. At most `capacity` deliveries are claimed and not yet recorded,
so memory stays flat however large the backlog; several processes share the table through SKIP LOCKED.

A claim is a lease (SENDING_LEASE_SECONDS) that this process renews while it holds the delivery, so a claim
waiting its turn behind a slow SMTP server never expires into a second sender's hands; only a dead process's
claims do, a lease after it died. A delivery whose ownership was not confirmed within the freshness window (the
lease less the SMTP deadline and 5 s: the renewal failed, or the process was frozen and another took it over) is
dropped unsent: given back if this process still owns it, otherwise another sender has it already.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from services.notifier import domain, handlers, leases, repository
from services.notifier.domain import Attempt, Claimed, SendResult
from services.notifier.handlers import RetryPolicy
from services.notifier.mailer import Mailer, SmtpConnection
from services.notifier.messages import Renderer
from services.notifier.metrics import NotifierMetrics, metrics_for
from services.notifier.recorder import record
from services.notifier.settings import NotifierSettings
from services.notifier.slot import Slot
from services.runtime.cancel import cancel_within
from services.runtime.database import closed
from services.runtime.logging import get_logger

if TYPE_CHECKING:
    from services.runtime.service import ServiceRuntime

log = get_logger(__name__)
_FLUSH_SECONDS = 0.1  # results wait this long to share a transaction; nothing is recorded later than that
_STOP_SECONDS = 10.0  # at shutdown, how long a message already on the wire may take to finish


class Sender:
    """Built by the composition root without I/O; `run` is the ServiceSpec background job."""

    def __init__(self, settings: NotifierSettings, mailer: Mailer, renderer: Renderer) -> None:
        self.settings = settings
        self.mailer = mailer
        self.renderer = renderer
        capacity = settings.sender_batch_size
        if settings.smtp_rate_per_second > 0:
            # Hold about two seconds of work: claims must not sit in memory while the rate limit drips them out.
            capacity = min(capacity, math.ceil(settings.smtp_rate_per_second * 2))
        self.capacity = max(settings.smtp_pool_size, capacity)
        self.policy = RetryPolicy(
            settings.smtp_max_attempts, settings.smtp_retry_base_seconds, settings.smtp_retry_max_seconds
        )

    async def run(self, runtime: ServiceRuntime) -> None:
        assert runtime.pool is not None, "the sender started before the database pool"
        await _Run(self, runtime.pool, metrics_for(runtime.metrics.registry)).run()


class _Run:
    """The state of one run of the sender, from service start to stop."""

    def __init__(self, sender: Sender, pool: asyncpg.Pool, metrics: NotifierMetrics) -> None:
        self.sender = sender
        self.settings = sender.settings
        self.pool = pool
        self.metrics = metrics
        self.queue: asyncio.Queue[Claimed] = asyncio.Queue()
        self.results: list[tuple[Claimed, SendResult]] = []
        self.results_ready = asyncio.Event()
        # Cleared while results cannot be recorded (the database refuses or is away): nothing more is sent meanwhile.
        # What was sent and not recorded is sent again by whichever run takes the claims back (a restart, a lease
        # run out); without the pause a whole claim capacity (500) went out again after such a stop.
        self.recording = asyncio.Event()
        self.recording.set()
        self.room = asyncio.Event()
        self.wake = asyncio.Event()
        self.outstanding = 0  # claimed and not yet recorded
        # This run's name on its claims (deliveries.claimed_by): in its process slot's range once it holds the slot
        # (_take_back_from_earlier_runs); until then, and for good when it cannot, in no slot's range, so that no
        # later run of the slot can take back what it holds.
        self.owner = domain.sender_run_id(None, os.urandom(16))
        # Each delivery this run holds: the claim (a delivery claimed again supersedes the copy still queued) and when
        # this run last knew it owned it (claimed, or its lease renewed), in monotonic time.
        self.held: dict[uuid.UUID, tuple[Claimed, float]] = {}
        self.fresh_seconds = self.settings.lease_fresh_seconds
        self.dropped: list[Claimed] = []  # dropped unsent since the reaper last gave them back
        self.revoked: set[uuid.UUID] = set()  # held deliveries whose invite was revoked since their claim
        self.stopping = False
        self.workers_done = False  # the recorder may end only once no worker can add a result
        self.smtp_trouble: str | None = None  # why no SMTP connection is usable, while that lasts (logged once)
        size = self.settings.smtp_pool_size
        self.connections: list[SmtpConnection] = [sender.mailer.connection() for _ in range(size)]
        self.current: list[Claimed | None] = [None] * size
        self.transmitting: set[int] = set()  # id() of each claim whose message is being handed to the server
        instance = self.settings.notifier_instance
        self.slot = Slot(pool, instance) if instance is not None else None  # held while this run lives, if taken

    async def run(self) -> None:
        try:
            await self._take_back_from_earlier_runs()
            await self._send()
        finally:
            if self.slot is not None:
                await self.slot.let_go()

    async def _send(self) -> None:
        claimer = asyncio.create_task(self._claim_loop(), name="sender-claim")
        reaper = asyncio.create_task(self._reap_loop(), name="sender-reap")
        recorder = asyncio.create_task(self._record_loop(), name="sender-record")
        workers = [asyncio.create_task(self._work(i), name=f"sender-smtp-{i}") for i in range(len(self.connections))]
        held = self.slot is not None and self.slot.connection is not None
        keeper = asyncio.create_task(self.slot.keep(), name="sender-slot") if self.slot and held else None
        try:
            # asyncio.wait, unlike gather, does not cancel the children when this task is cancelled.
            tasks = [claimer, reaper, recorder, *workers, *([keeper] if keeper else [])]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if keeper is None or keeper not in done or keeper.exception() is not None:  # else the keeper said why
                # Which part ended, and with what: the shutdown below would otherwise swallow the error for good.
                ended = next(iter(done))
                error = None if ended.cancelled() else ended.exception()
                log.error("sender.stopped_unexpectedly", part=ended.get_name(), error=repr(error)[:300], exc_info=error)
        finally:
            try:
                await self._shutdown(claimer, reaper, recorder, workers)
            finally:
                if keeper is not None:  # the slot stays held until the shutdown has recorded what this run sent
                    await _cancel(keeper)

    async def _take_back_from_earlier_runs(self) -> None:
        """Restarted in its slot (NOTIFIER_INSTANCE: a killed pod's container), what the killed run held is queued
        again now; without a slot, with the slot held by another live process, or should the database not answer,
        those deliveries wait out their lease instead, and this run's claims are named in no slot's range."""
        if self.slot is None:
            return
        instance = self.slot.instance
        try:
            # Only the slot's one live process may: a second given the same NOTIFIER_INSTANCE would take the
            # first's claims in hand and send them again, and its own claims would be the next start's to take.
            if not await self.slot.take():
                why = "another running notifier has it: nothing taken back, this run's claims in no slot"
                log.error("sender.instance_in_use", instance=instance, effect=why, fix="one NOTIFIER_INSTANCE each")
                return
            self.owner = domain.sender_run_id(instance, os.urandom(16))
            taken = await handlers.take_back_from_earlier_runs(self.pool, instance, self.owner)
        except Exception as error:
            log.warning("sender.take_back_failed", error=repr(error)[:300])
            return
        if taken:
            log.warning("delivery.taken_back_from_earlier_run", count=taken)
            self.metrics.reclaimed.labels("earlier_run").inc(taken)

    async def _claim_loop(self) -> None:
        listener: asyncpg.Connection | None = None
        lost = False  # the LISTEN connection closed under the claimer, and it does not listen again yet
        failures = 0
        min_chunk = max(1, self.sender.capacity // 4)
        try:
            while not self.stopping:
                try:
                    if listener is not None and closed(listener):  # its closing woke the claimer (_notified)
                        connection, listener, lost = listener, None, True
                        log.warning("sender.listen_lost", effect="listening again")
                        await repository.unlisten(self.pool, connection, self._notified)
                    if listener is None:
                        listener = await repository.listen(self.pool, self._notified)
                        if lost:
                            lost = False
                            log.info("sender.listening_again")
                    self.room.clear()
                    free = self.sender.capacity - self.outstanding
                    if free < min_chunk:
                        await self.room.wait()
                        continue
                    self.wake.clear()  # before the query: a NOTIFY arriving during it must not be lost
                    asked = time.monotonic()
                    claimed, absent = await handlers.claim_deliveries(
                        self.pool, free, self.owner, self.sender.policy.max_attempts
                    )
                    failures = 0
                    for final in absent:
                        self.metrics.email(final.claimed.delivery.kind, final.outcome)
                    self.outstanding += len(claimed)
                    for item in claimed:
                        self.held[item.delivery.id] = (item, asked)
                        self.queue.put_nowait(item)
                    if len(claimed) + len(absent) < free:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.settings.sender_poll_seconds):
                                await self.wake.wait()
                except Exception as error:  # the database is away (or a bug): back off, never stop claiming
                    failures += 1
                    log.warning("sender.claim_failed", error=repr(error)[:300], attempt=failures)
                    connection, listener = listener, None  # given back even if the stop lands inside the UNLISTEN
                    await repository.unlisten(self.pool, connection, self._notified)
                    await asyncio.sleep(min(30.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0))
        finally:
            await repository.unlisten(self.pool, listener, self._notified)

    def _notified(self, *_: object) -> None:
        """A NOTIFY, or the LISTEN connection closing: either way the claimer looks now."""
        self.wake.set()

    async def _work(self, index: int) -> None:
        connection = self.connections[index]
        unreachable = 0
        while not self.stopping:
            await self.recording.wait()
            claimed = await self.queue.get()
            if not self.recording.is_set():  # recording broke while this worker waited for a claim
                self.queue.put_nowait(claimed)
                continue
            self.current[index] = claimed
            try:
                result = await self._attempt(connection, claimed)
            except Exception as error:  # unexpected from the SMTP client: retry later on a fresh connection
                log.exception("delivery.attempt_crashed", delivery_id=str(claimed.delivery.id))
                connection.close()
                result = SendResult(Attempt.TRANSIENT, f"{type(error).__name__}")
            self.current[index] = None
            if result is None:
                self._drop(claimed)
                continue
            self.results.append((claimed, result))
            self.results_ready.set()
            self._note_smtp_state(result)
            if result.attempt is Attempt.UNREACHABLE:
                # The server is not there: this connection waits before trying again rather than spin.
                unreachable += 1
                await asyncio.sleep(min(30.0, 0.5 * 2**unreachable) * random.uniform(0.5, 1.0))
            else:
                unreachable = 0

    def _drop(self, claimed: Claimed) -> None:
        """Forget a claim unsent; the reaper gives it back if this run still owns it, else its lease expires."""
        self.dropped.append(claimed)
        self._let_go(claimed)
        self.outstanding -= 1
        self.room.set()

    def _let_go(self, claimed: Claimed) -> None:
        if self.held.get(claimed.delivery.id, (None, 0.0))[0] is claimed:  # not a newer claim of the same delivery
            del self.held[claimed.delivery.id]
            self.revoked.discard(claimed.delivery.id)

    def _still_ours(self, claimed: Claimed) -> bool:
        """This very claim (not a copy a newer claim superseded), its ownership confirmed within the fresh window."""
        held, confirmed = self.held.get(claimed.delivery.id, (None, -math.inf))
        return held is claimed and time.monotonic() - confirmed < self.fresh_seconds

    def _note_smtp_state(self, result: SendResult) -> None:
        """One warning when the SMTP server becomes unusable (refused, down, bad login: the reply says which),
        one line when it works again; /readyz only says `smtp: false`."""
        if result.attempt is Attempt.UNREACHABLE:
            if self.smtp_trouble is None:
                log.warning("smtp.unavailable", smtp_reply=result.reply[:300], retry="without counting attempts")
            self.smtp_trouble = result.reply
        elif self.smtp_trouble is not None and result.attempt is Attempt.SENT:
            log.info("smtp.available_again", after=self.smtp_trouble[:300])
            self.smtp_trouble = None

    async def _attempt(self, connection: SmtpConnection, claimed: Claimed) -> SendResult | None:
        """The result of one attempt; None when the delivery was not sent because this run may no longer own it."""
        if not self._still_ours(claimed):  # before a rate token and a connection are spent on it (after an outage)
            return None
        problem = domain.content_problem(claimed, datetime.now(UTC))
        if problem is not None:
            return SendResult(Attempt.PERMANENT, problem)
        try:
            message = self.sender.renderer.render(claimed)
        except Exception as error:  # a template bug must not stop the sender, nor end every email it touches:
            # retried as a 4xx is, so a release rolled back within SMTP_MAX_ATTEMPTS' 15-30 minutes loses none.
            log.exception("delivery.render_failed", delivery_id=str(claimed.delivery.id))
            return SendResult(Attempt.TRANSIENT, f"the message could not be built ({type(error).__name__})")
        await self.sender.mailer.bucket.acquire()
        if (trouble := await connection.open()) is not None:
            return trouble
        # The last moment to decide: from here only the transaction's deadline passes before the server has the
        # message, and the freshness window leaves SMTP_TIMEOUT_SECONDS + 5 s of the lease, so it is ours until then.
        if not self._still_ours(claimed):
            return None
        if claimed.delivery.id in self.revoked:  # since its claim, learnt at a renewal: a waiting claim's dead link
            return SendResult(Attempt.REVOKED, domain.REVOKED)
        started = time.perf_counter()
        recipient = domain.smtp_address(claimed.delivery.recipient)
        self.transmitting.add(id(claimed))  # left in should this be cancelled: the server may have it
        try:
            result = await connection.send(self.sender.renderer.envelope_sender, recipient, message)
        except Exception:
            self.transmitting.discard(id(claimed))  # the worker records it as a retry
            raise
        self.transmitting.discard(id(claimed))
        if result.attempt is not Attempt.UNREACHABLE:
            self.metrics.send_seconds.observe(time.perf_counter() - started)
        return result

    async def _record_loop(self) -> None:
        flush_size = max(1, self.sender.capacity // 4)
        while True:
            self.results_ready.clear()
            if not self.results:
                if self.workers_done:
                    return
                await self.results_ready.wait()
                continue
            if len(self.results) < min(flush_size, self.outstanding) and not self.stopping:
                # More results are on their way: they share the transaction. With every claim answered, none is.
                await asyncio.sleep(_FLUSH_SECONDS)
            batch, self.results = self.results, []
            stuck = await record(
                self.pool,
                batch,
                self.sender.policy,
                self.owner,
                self.metrics,
                quiet=self.smtp_trouble is not None,
                recording=self.recording,
            )
            # A result given up (a bug) stays held, its lease renewed, so that no run of another slot sends it again;
            # it holds no worker and no place in the queue, so it takes no room from the claimer.
            kept = {id(claimed) for claimed in stuck}
            for claimed, _ in batch:
                if id(claimed) not in kept:
                    self._let_go(claimed)
            self.outstanding -= len(batch)
            self.room.set()

    async def _reap_loop(self) -> None:
        await leases.reap(self)

    async def _shutdown(
        self,
        claimer: asyncio.Task[None],
        reaper: asyncio.Task[None],
        recorder: asyncio.Task[None],
        workers: list[asyncio.Task[None]],
    ) -> None:
        """Finish what is on the wire, record every result, give back what was never tried."""
        self.stopping = True
        # The claimer stops by itself at its next wait: cancelled inside its transaction, it could lose a
        # claim committed just as the cancellation arrived (rows left `sending` until their lease expires).
        self.room.set()
        self.wake.set()
        await asyncio.wait([claimer], timeout=_STOP_SECONDS)
        await _cancel(claimer, reaper)
        busy = [task for task, current in zip(workers, self.current, strict=True) if current is not None]
        await _cancel(*(task for task in workers if task not in busy))
        if busy:
            await asyncio.wait(busy, timeout=min(_STOP_SECONDS, self.settings.smtp_timeout_seconds))
            await _cancel(*busy)  # still on the wire: these stay `sending` until their lease expires
        # A worker stopped before its message went to the server (waiting for a rate token, a connection): never
        # tried, given back below with the queue's; it waited out its lease, an attempt counted.
        untried = [
            claimed
            for task, claimed in zip(workers, self.current, strict=True)
            if claimed is not None and task.done() and id(claimed) not in self.transmitting
        ]
        self.workers_done = True
        self.results_ready.set()
        await asyncio.wait([recorder], timeout=_STOP_SECONDS)
        await _cancel(recorder)
        unsent = list(untried)
        while not self.queue.empty():
            unsent.append(self.queue.get_nowait())
        if unsent:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await handlers.release(self.pool, unsent, self.owner, "released unsent at shutdown")
        await asyncio.gather(*(connection.quit() for connection in self.connections))
        log.info("sender.stopped", released=len(unsent))


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    await cancel_within(1.0, *tasks)  # one still waiting on a database that stopped answering ends with the pool
