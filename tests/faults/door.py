"""A TCP relay in front of the embedded broker: stopping it stops the broker as its clients see it.

Tansu keeps everything in memory, so a real restart would come back without topics, records or committed
offsets, which no production Kafka does. The drills stop this relay instead: every open connection is cut,
new ones are refused, and starting it again brings the broker back with its data, as a restarted Kafka with
its disks would. The broker advertises the relay's port, so every client, metadata included, goes through it.

`python -m tests.faults.door LISTEN_PORT UPSTREAM_PORT` (127.0.0.1 both); run by `BrokerDoor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path

from collabkare.stack.managed import ManagedServer
from collabkare.stack.ports import HOST, ensure_port_free
from collabkare.stack.processes import Supervisor

_CHUNK = 256 * 1024


class BrokerDoor(ManagedServer):
    """The relay as a supervised child: `stop()` (SIGTERM) cuts every connection, `start()` opens it again."""

    name = "broker-door"

    def __init__(self, port: int, upstream_port: int, *, supervisor: Supervisor, startup_timeout: float = 15.0) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.supervisor = supervisor
        self.startup_timeout = startup_timeout

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        ensure_port_free(self.port, "broker door")
        command = [sys.executable, "-m", "tests.faults.door", str(self.port), str(self.upstream_port)]
        self.supervisor.start(self.name, command, cwd=Path(__file__).resolve().parents[2])
        self._wait_ready()

    def _answers(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1):
            return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(port: int, upstream_port: int) -> None:
    open_sockets: set[asyncio.StreamWriter] = set()

    async def relay(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        open_sockets.add(client)
        try:
            upstream_reader, upstream = await asyncio.open_connection(HOST, upstream_port)
        except OSError:
            client.transport.abort()
            return
        open_sockets.add(upstream)
        try:
            await asyncio.gather(_pipe(client_reader, upstream), _pipe(upstream_reader, client))
        finally:
            open_sockets.difference_update((client, upstream))

    server = await asyncio.start_server(relay, HOST, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()  # new connections are refused from here on
    for writer in open_sockets:
        writer.transport.abort()  # and every open one is cut, as when the broker's process ends


def main(argv: list[str]) -> None:
    port, upstream_port = int(argv[0]), int(argv[1])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(port, upstream_port))


if __name__ == "__main__":
    main(sys.argv[1:])
