"""The local stack: infrastructure, topics, migrations and the three services as processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from collabkare.seeding import practice_registered, publish
from collabkare.services import MIGRATION_PLANS, SERVICES
from collabkare.stack import mailbox
from collabkare.stack.broker import create_topics
from collabkare.stack.console import NAME as CONSOLE
from collabkare.stack.console import PORT_VARIABLE as CONSOLE_PORT_VARIABLE
from collabkare.stack.console import console_port, cors_origins, start_console
from collabkare.stack.errors import StackError
from collabkare.stack.infra import Infrastructure, start_infrastructure
from collabkare.stack.ports import ensure_port_free
from collabkare.stack.processes import Supervisor
from collabkare.stack.revive import Reviver
from collabkare.stack.settings_file import FILE_NAME, default_workdir, remove_stack_env, write_stack_env
from schemas.topics import TOPICS, all_topic_names
from services.runtime.auth import mint_token
from services.runtime.migrations import migrate

DATABASE = "collabkare"
DEMO_PRACTICE_ID = uuid.uuid5(uuid.NAMESPACE_URL, "https://collabkare.example/demo-practice")
DEMO_PRACTICE_NAME = "Riverside Family Practice"
# What `make up` restarts when it dies, as a Deployment restarts its pods: the stateless processes. Not the
# infrastructure (postgres, broker, smtp): the broker keeps its topics in memory, so a new one would have none.
RESTARTABLE = (*(service.name for service in SERVICES), CONSOLE)


@dataclass
class RunningStack:
    infra: Infrastructure
    supervisor: Supervisor
    urls: dict[str, str]
    jwt_secret: str
    topic_prefix: str
    public_base_url: str
    database_url: str  # the stack's database, as an administrator (the services each have their own role)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    console_url: str | None = None

    def restart_service(self, name: str) -> None:
        self.supervisor.restart(name)
        wait_ready({name: self.urls[name]}, self.supervisor)


def _ports() -> dict[str, int]:
    ports = {}
    for service in SERVICES:
        raw = os.environ.get(service.port_variable, str(service.default_port))
        if not raw.isdigit():
            raise StackError(f"{service.port_variable}={raw!r}: expected a port number")
        ports[service.name] = int(raw)
    return ports


@contextlib.contextmanager
def local_stack(
    workdir: Path | None = None, topic_prefix: str | None = None, console_port: int | None = None
) -> Iterator[RunningStack]:
    """Start everything; on exit (or any failure on the way) stop every process that was started.

    With `console_port`, the staff console is served there too and is the only origin the APIs allow (CORS). The
    topic prefix is `KAFKA_TOPIC_PREFIX` unless given: on a shared broker, the stack's topics and groups are its own.
    """
    workdir = workdir or default_workdir()
    if topic_prefix is None:
        topic_prefix = os.environ.get("KAFKA_TOPIC_PREFIX", "")
    ports = _ports()
    for service in SERVICES:
        ensure_port_free(ports[service.name], f"{service.name} API", service.port_variable)
    if console_port is not None:
        ensure_port_free(console_port, "staff console", CONSOLE_PORT_VARIABLE)
    with start_infrastructure(workdir) as infra, Supervisor(workdir / "logs") as supervisor:
        if infra.mailbox is not None:
            # The database starts empty each time: mail of an earlier run would only carry dead invite tokens.
            mailbox.empty(infra.mailbox)
        database_url = _prepare_database(infra)
        jwt_secret = secrets.token_urlsafe(48)
        identity_key = secrets.token_urlsafe(48)  # keys the invitations' SSN/DOB/phone digests
        role_passwords = {name: secrets.token_urlsafe(24) for name in MIGRATION_PLANS}
        asyncio.run(_prepare(infra, database_url, topic_prefix, role_passwords))
        public_base_url = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8080")
        stack = RunningStack(
            infra=infra,
            supervisor=supervisor,
            urls={s.name: f"http://127.0.0.1:{ports[s.name]}" for s in SERVICES},
            jwt_secret=jwt_secret,
            topic_prefix=topic_prefix,
            public_base_url=public_base_url,
            database_url=database_url,
        )
        for service in SERVICES:
            env = {
                "SERVICE_NAME": service.name,
                "PORT": str(ports[service.name]),
                "DATABASE_URL": infra.database_url_for(
                    _database_name(database_url), user=service.name, password=role_passwords[service.name]
                ),
                "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
                "KAFKA_TOPIC_PREFIX": topic_prefix,
                "JWT_SECRET": jwt_secret,
                "IDENTITY_HMAC_KEY": identity_key,
                "SMTP_HOST": infra.smtp_host,
                "SMTP_PORT": str(infra.smtp_port),
                "PUBLIC_BASE_URL": public_base_url,
                "PYTHONUNBUFFERED": "1",
                **infra.service_settings(),
            }
            if service.name == "notifier":
                # One notifier here, restarted in the same slot when it dies (as a pod's container): the restart
                # takes back its predecessor's claims at once.
                env["NOTIFIER_INSTANCE"] = "notifier"
            if console_port is not None:
                env["CORS_ORIGINS"] = cors_origins(console_port)
            stack.service_env[service.name] = env
            supervisor.start(service.name, [sys.executable, "-m", service.module], env=env)
        wait_ready(stack.urls, supervisor)
        if console_port is not None:
            stack.console_url = start_console(supervisor, console_port, stack.urls, demo_staff_token(jwt_secret))
        write_stack_env(
            workdir,
            {
                "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
                "KAFKA_TOPIC_PREFIX": topic_prefix,
                "JWT_SECRET": jwt_secret,
                "MIGRATION_DATABASE_URL": database_url,
                **{f"{name.upper()}_URL": url for name, url in stack.urls.items()},
            },
        )
        try:
            yield stack
        finally:
            remove_stack_env(workdir)


def _prepare_database(infra: Infrastructure) -> str:
    if infra.postgres is None:
        return infra.database_url  # external: the database in DATABASE_URL is the one to use
    return infra.create_database(DATABASE)


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


async def _prepare(infra: Infrastructure, database_url: str, topic_prefix: str, role_passwords: dict[str, str]) -> None:
    topics = [(topic_prefix + name, TOPICS[name].partitions if name in TOPICS else 3) for name in all_topic_names()]
    await create_topics(infra.kafka_bootstrap, topics, timeout=30)
    for name, plan in MIGRATION_PLANS.items():
        await migrate(database_url, plan, role_password=role_passwords[name])


def wait_ready(urls: dict[str, str], supervisor: Supervisor, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    while pending:
        supervisor.check_alive()
        for name, url in list(pending.items()):
            if _ready(url):
                del pending[name]
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise StackError(f"{names} not ready after {timeout:.0f} s: see {supervisor.log_dir}/<service>.log")
        if pending:
            time.sleep(0.2)


def _ready(url: str, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def seed_demo_practice(stack: RunningStack, timeout: float = 30.0) -> None:
    """Registers the demo practice on the platform topic and waits until the connections service knows it: a
    patient may ask to connect to it as soon as this returns."""
    event = practice_registered(DEMO_PRACTICE_ID, DEMO_PRACTICE_NAME)
    asyncio.run(publish(stack.infra.kafka_bootstrap, stack.topic_prefix, [event]))
    asyncio.run(_wait_for_practice(stack.database_url, DEMO_PRACTICE_ID, timeout))


async def _wait_for_practice(database_url: str, practice_id: uuid.UUID, timeout: float) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while not await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM connections.practices WHERE practice_id = $1)", practice_id
        ):
            if time.monotonic() > deadline:
                raise StackError(f"the connections service did not learn of the demo practice in {timeout:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


def demo_staff_token(jwt_secret: str) -> str:
    """A practice manager of the demo practice (8 h): what `make up` prints and the console uses by default."""
    return mint_token(jwt_secret, "demo-manager", ["practice_manager"], practice_id=DEMO_PRACTICE_ID)


def run_foreground() -> int:
    """`make up`: the stack in the foreground until Ctrl-C, with what a developer needs to use it."""
    # Explicitly, because a stack started from a script in the background inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    print("starting the local stack…", flush=True)
    with local_stack(console_port=console_port()) as stack:
        seed_demo_practice(stack)
        token = demo_staff_token(stack.jwt_secret)
        print(banner(stack, token), flush=True)
        reviver = Reviver(stack.supervisor, RESTARTABLE, ready=lambda name: _answers(stack, name))
        try:
            while True:
                stack.infra.check_alive()  # before the services, whose deaths may only follow from it
                reviver.poll()
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
    print("stopped; no process left behind.")
    return 0


def _answers(stack: RunningStack, name: str) -> bool:
    if name == CONSOLE:
        return stack.console_url is not None and _ready(stack.console_url, "/healthz")
    return _ready(stack.urls[name])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def banner(stack: RunningStack, token: str) -> str:
    infra = stack.infra
    lines = ["", "CollabKare local stack is ready", ""]
    if stack.console_url:
        lines += [f"  staff console  {stack.console_url}/   (open in a browser; uses the staff token below)", ""]
    for name, url in stack.urls.items():
        lines.append(f"  {name:<12} {url}   (OpenAPI: {url}/openapi.json)")
    lines += [
        "",
        f"  PostgreSQL   {_without_password(stack.database_url)}   (its password: {default_workdir() / FILE_NAME})",
        f"  Kafka        {infra.kafka_bootstrap}",
        f"  SMTP         {infra.smtp_host}:{infra.smtp_port}"
        + (f"   caught mail: {infra.mailbox} (mbox)" if infra.mailbox else ""),
        f"  logs         {stack.supervisor.log_dir}/",
        "",
        f"  demo practice  {DEMO_PRACTICE_ID}  ({DEMO_PRACTICE_NAME})",
        "  staff token (practice_manager, 8 h):",
        f"    {token}",
        "",
        f"  more tokens:  {_stack_dir_prefix()}.venv/bin/collabkare token staff --practice <id> --role front_desk",
        "  Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _without_password(url: str) -> str:
    """The URL to show on a terminal (or in a log file someone else can read): its password left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _stack_dir_prefix() -> str:
    """What a second terminal needs before a CLI command to find this stack, when it is not in var/stack/."""
    return f"COLLABKARE_STACK_DIR={default_workdir()} " if "COLLABKARE_STACK_DIR" in os.environ else ""
