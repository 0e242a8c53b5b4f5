"""Ports for the stack's servers: free now, and out of the kernel's way."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from collabkare.stack import ports
from collabkare.stack.errors import StackError


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_bound() -> None:
    """bind(0) hands out ephemeral ports, the very ones outgoing connections take: one could take the port of a
    server before it bound it."""
    chosen = [ports.free_port() for _ in range(20)]
    assert len(set(chosen)) == 20, "never the same port twice in one process"
    low = ports._below_ephemeral().stop
    assert all(1024 <= port < low for port in chosen)
    with socket.socket() as server:
        server.bind((ports.HOST, chosen[-1]))


def test_a_port_something_holds_is_never_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind((ports.HOST, 0))
        port = held.getsockname()[1]
        ranges = tmp_path / "ip_local_port_range"
        ranges.write_text(f"{port + 1}\t60999\n")  # the held port is the last below this ephemeral range
        monkeypatch.setattr(ports, "_EPHEMERAL", ranges)
        monkeypatch.setattr(ports, "_handed_out", set(range(port + 1 - 12000, port)))  # every other one, taken
        with pytest.raises(StackError, match="no free port found"):
            ports.free_port()


def test_without_a_readable_range_linux_s_default_is_assumed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ports, "_EPHEMERAL", tmp_path / "absent")
    assert ports._below_ephemeral() == range(20768, 32768)
