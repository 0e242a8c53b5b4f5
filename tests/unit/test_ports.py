"""Ports for the stack's servers: free now, and out of the kernel's way."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from collabkare.stack import ports
from collabkare.stack.errors import StackError

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not EPHEMERAL.exists(), reason="reads Linux's ephemeral port range from /proc")
def test_a_free_port_lies_outside_the_ephemeral_range_and_can_be_bound() -> None:
    """bind(0) hands out ephemeral ports, the very ones outgoing connections take: one could take the port of a
    server before it bound it."""
    low, high = (int(bound) for bound in EPHEMERAL.read_text().split())
    chosen = [ports.free_port() for _ in range(20)]
    assert len(set(chosen)) == 20, "never the same port twice in one process"
    assert all(1024 <= port < low or high < port <= 65535 for port in chosen), (low, high, chosen)
    with socket.socket() as server:
        server.bind((ports.HOST, chosen[-1]))


def _ephemeral(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(text)
    monkeypatch.setattr(ports, "_EPHEMERAL", ranges)


def test_ports_below_and_above_the_range_are_candidates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _ephemeral(monkeypatch, tmp_path, "32768\t60999\n")
    assert ports._outside_ephemeral() == [*range(20768, 32768), *range(61000, 65536)]
    _ephemeral(monkeypatch, tmp_path, "1024\t65535\n")  # a box tuned for many connections: no port is safe
    assert ports._outside_ephemeral() == []
    port = ports.free_port()  # the kernel's own pick then
    with socket.socket() as server:
        server.bind((ports.HOST, port))


def test_a_port_something_holds_is_never_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind((ports.HOST, 0))
        port = held.getsockname()[1]
        _ephemeral(monkeypatch, tmp_path, f"{port + 1}\t65535\n")  # the held port is the last below this range
        monkeypatch.setattr(ports, "_handed_out", set(range(port + 1 - 12000, port)))  # every other one, taken
        with pytest.raises(StackError, match="no free port found"):
            ports.free_port()


def test_without_a_readable_range_linux_s_default_is_assumed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ports, "_EPHEMERAL", tmp_path / "absent")
    assert ports._outside_ephemeral() == [*range(20768, 32768), *range(61000, 65536)]
