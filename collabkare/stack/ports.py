"""Loopback ports: pick a free one, or fail early with one line when a fixed one is taken."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from collabkare.stack.errors import StackError

HOST = "127.0.0.1"
# Ports handed out recently by this process: the kernel may offer a just-closed port again before the
# child that was meant to take it has bound it.
_handed_out: set[int] = set()
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _outside_ephemeral() -> list[int]:
    """Ports the kernel never gives an outgoing connection: up to 12,000 below its ephemeral range (Linux's default
    range is 32768-60999) and those above it; none when the range spans every unprivileged port."""
    try:
        low, high = (int(bound) for bound in _EPHEMERAL.read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default; other systems' ranges lie within 49152-65535
    return [*range(max(1024, low - 12000), low), *range(max(1024, high + 1), 65536)]


def free_port() -> int:
    """A loopback port nothing listens on right now (another process may still take it: start soon).

    Picked outside the kernel's ephemeral range: a port from bind(0) comes from that range, and any of the many
    connections the stack opens meanwhile (to PostgreSQL, the broker, SMTP) could take it before the server binds.
    """
    candidates = _outside_ephemeral() or _ephemeral_picks()
    start = random.randrange(len(candidates))  # two processes picking at once rarely meet
    for step in range(len(candidates)):
        port = candidates[(start + step) % len(candidates)]
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise StackError(f"no free port found on {HOST} among {len(candidates)} tried")


def _ephemeral_picks() -> list[int]:
    """When every port is ephemeral: the kernel's own picks, as good as it gets."""
    picks = []
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            picks.append(probe.getsockname()[1])
    return picks


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, what: str, setting: str | None = None) -> None:
    """Raise StackError naming `what` (and the variable that moves it) when `port` is already bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR lets a port in TIME_WAIT count as free, as it does for the server about to bind it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            advice = f"stop what holds it or set {setting}" if setting else "stop what holds it"
            raise StackError(f"port {port} ({what}) is already in use on {HOST}: {advice}") from None
