"""Wires one service together: pool, outbox relay, Kafka consumers, HTTP app and their start/stop order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import PostgresDsn

from schemas import EVENT_TYPES, TOPICS, dead_letter_topic
from services.runtime import certificates, inbox
from services.runtime.auth import TokenVerifier
from services.runtime.cancel import cancel_within
from services.runtime.consumer import BatchConsumer, ConsumerContext, Subscription
from services.runtime.database import TRANSIENT_ERRORS, create_pool, database_unusable
from services.runtime.http import create_http_app
from services.runtime.jobs import Jobs
from services.runtime.kafka import reach_cluster
from services.runtime.logging import configure_logging, get_logger
from services.runtime.metrics import Metrics
from services.runtime.migrations import MigrationPlan
from services.runtime.relay import OutboxRelay
from services.runtime.settings import RuntimeSettings

log = get_logger(__name__)
BackgroundJob = Callable[["ServiceRuntime"], Coroutine[Any, Any, None]]
# An extra /readyz check (e.g. the notifier's SMTP server), next to the database and broker ones.
ReadinessProbe = Callable[["ServiceRuntime"], Awaitable[bool]]


@dataclass(frozen=True)
class ServiceSpec:
    """Everything that makes one service different from the others."""

    name: str
    title: str
    description: str
    migrations: MigrationPlan
    routers: Sequence[APIRouter] = ()
    subscriptions: Sequence[Subscription] = ()
    background_jobs: Sequence[BackgroundJob] = field(default_factory=tuple)
    readiness: Mapping[str, ReadinessProbe] = field(default_factory=dict)
    # How long the background jobs may take to stop (deploy/k8s sums it into each grace period).
    jobs_stop_seconds: float = 10.0


INBOX_PRUNE_SECONDS = 3600.0
SCHEMA_WAIT_SECONDS = 2.0  # how often a pod started on a schema behind its code looks again


async def prune_inbox(runtime: ServiceRuntime) -> None:
    """Background job of every service: hourly, forget inbox entries older than INBOX_RETENTION_DAYS."""
    assert runtime.pool is not None, "started before the database pool"
    while True:
        horizon = datetime.now(UTC) - timedelta(days=runtime.settings.inbox_retention_days)
        try:
            pruned = await inbox.prune(runtime.pool, runtime.schema, horizon)
        except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as error:  # the database is away: next time
            log.warning("inbox.prune_failed", error=repr(error)[:300])
        else:
            if pruned:
                log.info("inbox.pruned", count=pruned)
        await asyncio.sleep(INBOX_PRUNE_SECONDS)


class DependencyUnavailable(Exception):
    """What the service cannot start without did not answer: the process says so in one log line and ends."""

    def __init__(self, dependency: str, address: str, error: BaseException) -> None:
        super().__init__(f"{dependency} at {address}: {error!r}")
        self.dependency = dependency
        self.address = address
        self.error = error


def _partitions_owned(subscriber: Any) -> float:
    """How many partitions a FastStream subscriber's Kafka consumer owns now (none before it started); NaN should
    the client's state be unreadable, rather than a failed scrape of every other metric."""
    consumer = getattr(subscriber, "consumer", None)
    try:
        return len(consumer.assignment()) if consumer is not None else 0
    except Exception:
        return math.nan


def _servers(url: PostgresDsn) -> str:
    """host:port of each server DATABASE_URL names, and nothing of its credentials."""
    return ",".join(f"{host['host']}:{host['port'] or 5432}" for host in url.hosts())


class ServiceRuntime:
    """Built without I/O; `start()` opens connections, `stop()` closes them, each bounded in time."""

    def __init__(self, spec: ServiceSpec, settings: RuntimeSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.schema = spec.migrations.schema
        self.metrics = Metrics(spec.name, groups=[s.group for s in spec.subscriptions])
        self.pool: asyncpg.Pool | None = None
        self.relay: OutboxRelay | None = None
        self.kafka_security = settings.kafka_security  # one TLS context for every client of this process
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            acks="all",
            request_timeout_ms=int(settings.kafka_send_timeout_seconds * 1000),
            security=self.kafka_security.faststream_security(),
            graceful_timeout=15.0,
            logger=None,
        )
        self.consumers = ConsumerContext(
            schema=self.schema,
            broker=self.broker,
            topic=settings.topic,
            metrics=self.metrics,
            max_attempts=settings.consumer_max_attempts,
        )
        self._declare_routes()
        self.verifier = TokenVerifier(
            settings.jwt_algorithm,
            settings.jwt_issuer,
            settings.jwt_audience,
            secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            jwks_url=settings.jwt_jwks_url,
            jwks_ca_file=settings.jwt_jwks_ca_file,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False  # set by stop(): nothing starts after it
        self._schema_versions = tuple(spec.migrations.versions())
        self._database_unusable: str | None = None
        self.consuming = asyncio.Event()
        self.jobs = Jobs()

    def _declare_routes(self) -> None:
        for subscription in self.spec.subscriptions:
            route = BatchConsumer(subscription, self.consumers).route(
                self.settings.consumer_batch_size, self.settings.kafka_session_timeout_seconds
            )
            subscriber = self.broker.subscriber(*route.args, **route.kwargs)
            subscriber(route.call)
            self.metrics.partitions_assigned.labels(subscription.group).set_function(
                functools.partial(_partitions_owned, subscriber)
            )
            self.broker.publisher(
                self.settings.topic(dead_letter_topic(subscription.group)),
                title=f"{subscription.group} dead letters",
                description="Messages the group could not parse or apply, with the reason in headers.",
            )
        for topic in TOPICS.values():
            if topic.producer == self.spec.name:
                events = [EVENT_TYPES[name] for name in topic.events]
                schema: Any = events[0]
                for event in events[1:]:
                    schema = schema | event
                self.broker.publisher(
                    self.settings.topic(topic.name), schema=schema, title=topic.name, description=topic.description
                )

    def asyncapi(self) -> AsyncAPI:
        return AsyncAPI(self.broker, title=f"CollabKare {self.spec.name}", version="1.0.0")

    async def start(self) -> None:
        settings = self.settings
        self._watch_certificates()
        try:
            self.pool = await create_pool(
                str(settings.database_url), self.spec.name, settings.database_pool_min, settings.database_pool_max
            )
        except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as error:
            # Refused, unknown host, wrong password, no such database: nothing works without it. The broker is
            # different: the API serves and the outbox keeps events while it is away (_start_consumers).
            raise DependencyUnavailable("database", _servers(settings.database_url), error) from error
        self.consumers.pool = self.pool
        # A schema behind the code is named now, not at the first failing query; and nothing of the pod's own work
        # starts on it. Readiness keeps requests away, but a consumer would join its group, take partitions from
        # the pods on the migrated schema and stall them retrying, and a job would fail on every run, until the
        # migration Job ran (a failed one, a GitOps tool applying everything at once).
        if await self.database_ready():
            await self._start_work()
        else:
            self._tasks.append(asyncio.create_task(self._start_work_once_ready(), name="wait-for-schema"))
        log.info("service.started", port=settings.port)

    def _watch_certificates(self) -> None:
        for path, expires in certificates.expiries(self.settings.certificate_files()).items():
            self.metrics.certificate_expiry.labels(path).set(expires.timestamp())

    async def _start_work_once_ready(self) -> None:
        while True:
            ready = await self.database_ready()  # logged once, with why, when the answer changes
            if self._stopping:
                # stop() may have cancelled this task just as the probe's answer came (asyncio.wait_for then
                # returns it): starting now would leave consumers and jobs running past stop().
                return
            if ready:
                await self._start_work()
                return
            await asyncio.sleep(SCHEMA_WAIT_SECONDS)

    async def _start_work(self) -> None:
        """The relay, the consumers and the background jobs, once the database is usable."""
        settings = self.settings
        self.relay = OutboxRelay(
            self.pool,
            self.schema,
            settings.kafka_bootstrap_servers,
            settings.topic,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
            send_timeout_seconds=settings.kafka_send_timeout_seconds,
            metrics=self.metrics,
            security=self.kafka_security,
        )
        await self.relay.start()
        if self.spec.subscriptions:
            self._tasks.append(asyncio.create_task(self._start_consumers(), name="start-consumers"))
        for job in (*self.spec.background_jobs, prune_inbox):
            name = getattr(job, "__qualname__", type(job).__name__)
            run = functools.partial(job, self)
            self._tasks.append(asyncio.create_task(self.jobs.keep_running(name, run), name=name))

    async def _start_consumers(self) -> None:
        """Keep trying until the broker answers: the HTTP API serves (and accepts work) meanwhile."""
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.kafka_send_timeout_seconds * 2):
                    # FastStream never stops the producer of a start that failed: aiokafka then logged "Unclosed
                    # AIOKafkaProducer" at error level once per attempt while the broker was away. So the broker
                    # starts once the cluster has answered a client of ours, which is always closed.
                    await reach_cluster(
                        self.settings.kafka_bootstrap_servers,
                        self.kafka_security,
                        self.settings.kafka_send_timeout_seconds,
                    )
                    await self.broker.start()
                self.consuming.set()
                log.info("consumer.started", groups=[s.group for s in self.spec.subscriptions])
                return
            except Exception as error:
                failures += 1
                log.warning("consumer.start_failed", error=repr(error)[:300], attempt=failures)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self.broker.stop()
                await asyncio.sleep(min(10.0, 0.5 * failures))

    async def stop(self) -> None:
        """Every step bounded, so that a database or broker that stopped answering cannot hold the process past its
        grace period (deploy/k8s sums the bounds): the jobs `jobs_stop_seconds`, the broker 20 s, the relay 5 + 10 s,
        the pool 10 s; a pool that does not close in time is terminated, which ends whatever still waited on it."""
        self._stopping = True
        stuck = await cancel_within(self.spec.jobs_stop_seconds, *self._tasks)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                await self.broker.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self.pool.close()  # cancelled, it terminates the pool
        if stuck:
            log.warning("service.stopped_with_tasks_stuck", tasks=sorted(task.get_name() for task in stuck))
        log.info("service.stopped")

    async def database_ready(self) -> bool:
        why = await database_unusable(self.pool, self.schema, self._schema_versions)
        if why != self._database_unusable:  # said once when it changes, not at every probe
            self._database_unusable = why
            if why is None:
                log.info("database.ready")
            else:
                log.warning("database.not_ready", why=why)
        return why is None

    async def broker_ready(self) -> bool:
        if self.relay is not None:
            return await self.relay.broker_reachable()
        # No producer yet (the pod waits for its schema): a client of its own asks, so that the answer is the
        # broker's, not the wait's.
        try:
            await reach_cluster(self.settings.kafka_bootstrap_servers, self.kafka_security, 2.0)
        except Exception:
            return False
        return True

    def http_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            configure_logging(self.settings.service_name, self.settings.log_level)
            try:
                await self.start()
            except DependencyUnavailable as failure:
                log.error(
                    "service.start_failed",
                    dependency=failure.dependency,
                    address=failure.address,
                    error=repr(failure.error)[:300],
                )
                raise
            try:
                yield
            finally:
                await self.stop()

        app = create_http_app(
            title=self.spec.title,
            description=self.spec.description,
            metrics=self.metrics,
            readiness={
                "database": self.database_ready,
                "broker": self.broker_ready,
                **({"jobs": self.jobs.ready} if self.spec.background_jobs else {}),
                **{name: functools.partial(probe, self) for name, probe in self.spec.readiness.items()},
            },
            routers=self.spec.routers,
            lifespan=lifespan,
            cors_origins=self.settings.cors_origins,
            deadline_seconds=self.settings.request_deadline_seconds,
        )
        app.state.runtime = self
        app.state.verifier = self.verifier
        return app
