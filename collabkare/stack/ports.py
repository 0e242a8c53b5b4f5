"""Loopback ports: pick a free one, or fail early with one line when a fixed one is taken."""

from __future__ import annotations

import socket

from collabkare.stack.errors import StackError

HOST = "127.0.0.1"
# Ports handed out recently by this process: the kernel may offer a just-closed port again before the
# child that was meant to take it has bound it.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on right now (another process may still take it: start soon)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise StackError(f"no free port found on {HOST} after 50 attempts")


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
