"""Where PostgreSQL, Kafka and SMTP come from: the environment, testcontainers, or embedded processes."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from collabkare.stack.broker import EmbeddedBroker
from collabkare.stack.errors import StackError
from collabkare.stack.ports import free_port
from collabkare.stack.postgres import SETTINGS, EmbeddedPostgres, create_database
from collabkare.stack.processes import Supervisor
from collabkare.stack.smtp_catcher import EmbeddedSmtp

POSTGRES_IMAGE = "postgres:17-alpine"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
Source = Literal["external", "container", "embedded"]


@dataclass(frozen=True)
class Plan:
    """Where each part comes from: the one reading of the environment that starting and describing both use."""

    database: Source
    kafka: Source
    smtp: Source  # never a container: the catcher is as real a server as tests need, with or without Docker


def plan(environ: Mapping[str, str]) -> Plan:
    """External where its setting is given; otherwise a container under TEST_INFRA=containers, else embedded."""
    mode = environ.get("TEST_INFRA", "embedded")
    if mode not in ("embedded", "containers"):
        raise StackError(f"TEST_INFRA={mode}: expected 'embedded' or 'containers'")
    started: Source = "container" if mode == "containers" else "embedded"
    return Plan(
        database="external" if environ.get("DATABASE_URL") else started,
        kafka="external" if environ.get("KAFKA_BOOTSTRAP_SERVERS") else started,
        smtp="external" if environ.get("SMTP_HOST") else "embedded",
    )


_SESSION_TIMEOUT = "KAFKA_SESSION_TIMEOUT_SECONDS"
EMBEDDED_BROKER_SESSION_TIMEOUT = "3"  # seconds; see Infrastructure.service_settings


@dataclass
class Infrastructure:
    """Addresses of the three services, and the embedded managers (None when external) for fault drills."""

    database_url: str  # a superuser on the maintenance database
    kafka_bootstrap: str
    smtp_host: str
    smtp_port: int
    mailbox: Path | None  # the embedded catcher's mbox file (collabkare.stack.mailbox reads it)
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    smtp: EmbeddedSmtp | None = None
    supervisor: Supervisor | None = None

    def database_url_for(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        """The admin URL pointed at `database`, optionally as another role."""
        parts = urlsplit(self.database_url)
        credentials, _, host = parts.netloc.rpartition("@")
        if user is not None:
            credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        netloc = f"{credentials}@{host}" if credentials else host
        return urlunsplit((parts.scheme, netloc, "/" + quote(database), parts.query, ""))

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; returns its admin URL."""
        create_database(self.database_url, name)
        return self.database_url_for(name)

    def service_settings(self) -> dict[str, str]:
        """What every service run on this infrastructure is given beyond its addresses (a variable already in the
        environment wins). The embedded broker answers a consumer's join only after half the consumer's session
        timeout: at Kafka's 10 s every start, restart and rebalance waited 5 s; at 3 s (a heartbeat every second)
        it waits 1.5."""
        if self.broker is None or _SESSION_TIMEOUT in os.environ:
            return {}
        return {_SESSION_TIMEOUT: EMBEDDED_BROKER_SESSION_TIMEOUT}

    def check_alive(self) -> None:
        """Raise StackError if an embedded process died without being asked to."""
        if self.supervisor is not None:
            self.supervisor.check_alive()


@contextmanager
def start_infrastructure(workdir: Path, *, keep_data: bool = False) -> Iterator[Infrastructure]:
    """Start what the environment does not provide, under `workdir`; stop it all on exit.

    The embedded PostgreSQL data directory and its password are deleted on exit unless `keep_data`; logs and caught
    mail stay.
    """
    workdir = workdir.resolve()
    sources = plan(os.environ)
    if "container" in (sources.database, sources.kafka):
        _require_docker()
    with ExitStack() as stack:
        data_dirs: list[Path] = []
        if not keep_data:
            # Registered before the supervisor, so that it runs after PostgreSQL has stopped.
            stack.callback(_remove, data_dirs)
        supervisor = stack.enter_context(Supervisor(workdir / "logs"))
        # The catcher (a Python interpreter starting) comes up while initdb runs.
        smtp, smtp_host, smtp_port = _smtp(supervisor, workdir, sources.smtp)
        postgres, database_url = _database(stack, supervisor, workdir, sources.database)
        data_dirs += postgres.files if postgres else []
        broker, bootstrap = _kafka(stack, supervisor, sources.kafka)
        if smtp is not None:
            smtp.wait_ready()
        yield Infrastructure(
            database_url,
            bootstrap,
            smtp_host,
            smtp_port,
            smtp.mailbox if smtp else None,
            postgres,
            broker,
            smtp,
            supervisor,
        )


def provenance(environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(started here, external), named for a person, from plan(): so the demo can say what it will use before
    anything starts."""
    sources = plan(environ)
    started: list[str] = []
    external: list[str] = []
    for source, here, outside in (
        (sources.database, "PostgreSQL", "PostgreSQL (DATABASE_URL)"),
        (sources.kafka, "Kafka-protocol broker", "Kafka-protocol broker (KAFKA_BOOTSTRAP_SERVERS)"),
        (sources.smtp, "SMTP catcher", "SMTP server (SMTP_HOST)"),
    ):
        if source == "external":
            external.append(outside)
        else:
            started.append(here + (" (container)" if source == "container" else ""))
    return started, external


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _database(
    stack: ExitStack, supervisor: Supervisor, workdir: Path, source: Source
) -> tuple[EmbeddedPostgres | None, str]:
    if source == "external":
        url = os.environ["DATABASE_URL"]
        _check_reachable("DATABASE_URL", urlsplit(url).hostname, urlsplit(url).port or 5432)
        return None, url
    if source == "container":
        return None, _postgres_container(stack)
    postgres = EmbeddedPostgres(workdir / "postgres", free_port(), supervisor=supervisor)
    postgres.start()
    return postgres, postgres.url


def _kafka(stack: ExitStack, supervisor: Supervisor, source: Source) -> tuple[EmbeddedBroker | None, str]:
    if source == "external":
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        _check_reachable("KAFKA_BOOTSTRAP_SERVERS", host.strip("[]"), int(port) if port.isdigit() else 9092)
        return None, bootstrap
    if source == "container":
        return None, _kafka_container(stack)
    broker = EmbeddedBroker(free_port(), supervisor=supervisor)
    broker.start()
    return broker, broker.bootstrap_servers


def _smtp(supervisor: Supervisor, workdir: Path, source: Source) -> tuple[EmbeddedSmtp | None, str, int]:
    if source == "external":
        host = os.environ["SMTP_HOST"]
        port = os.environ.get("SMTP_PORT", "25")
        if not port.isdigit():
            raise StackError(f"SMTP_PORT={port}: expected a port number")
        _check_reachable("SMTP_HOST", host, int(port))
        return None, host, int(port)
    smtp = EmbeddedSmtp(free_port(), workdir / "mail.mbox", supervisor=supervisor)
    smtp.start(wait=False)
    return smtp, smtp.host, smtp.port


def _require_docker() -> None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as error:  # no SDK, no socket, no daemon: all mean "no Docker here"
        raise StackError(
            f"TEST_INFRA=containers but Docker does not answer ({type(error).__name__}): "
            "start Docker, or unset TEST_INFRA to use the embedded stack"
        ) from None


def _postgres_container(stack: ExitStack) -> str:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before 4.14
        from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(
        POSTGRES_IMAGE,
        username="postgres",
        password="postgres",  # noqa: S106 - a throwaway container's superuser, reachable from this host only
        dbname="postgres",
        driver=None,
    ).with_command(" ".join(f"-c {key}={value}" for key, value in SETTINGS.items()))
    stack.enter_context(container)
    return str(container.get_connection_url())


def _kafka_container(stack: ExitStack) -> str:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before 4.14
        from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(KAFKA_IMAGE)
    stack.enter_context(container)
    return str(container.get_bootstrap_server())


def _check_reachable(setting: str, host: str | None, port: int) -> None:
    """Fail with one line now rather than with a driver's traceback later."""
    if not host or host.startswith("/"):  # a Unix socket: leave it to the driver
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise StackError(f"{setting}: nothing answers on {host}:{port} ({error.strerror or error})") from None
