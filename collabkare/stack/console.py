"""The staff console as one more supervised process of the local stack, on its own loopback port."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

from collabkare.console.app import host_names
from collabkare.stack.errors import StackError
from collabkare.stack.ports import HOST
from collabkare.stack.processes import Supervisor

NAME = "console"
PORT_VARIABLE = "CONSOLE_PORT"
DEFAULT_PORT = 8000


def console_port() -> int:
    raw = os.environ.get(PORT_VARIABLE, str(DEFAULT_PORT))
    if not raw.isdigit():
        raise StackError(f"{PORT_VARIABLE}={raw!r}: expected a port number")
    return int(raw)


def console_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def cors_origins(port: int) -> str:
    """CORS_ORIGINS for the services: the console's origin, as printed, typed as localhost or under one of the
    names in CONSOLE_HOSTS (the console answers to those too), and nothing else."""
    return json.dumps([f"http://{name}:{port}" for name in host_names(os.environ)])


def start_console(supervisor: Supervisor, port: int, urls: dict[str, str], staff_token: str) -> str:
    """Start the console server; returns its URL once it answers."""
    url = console_url(port)
    env = {
        "CONSOLE_PORT": str(port),
        "HOST": HOST,
        "CONNECTIONS_URL": urls["connections"],
        "INVITATIONS_URL": urls["invitations"],
        "CONSOLE_STAFF_TOKEN": staff_token,
        "PYTHONUNBUFFERED": "1",
    }
    supervisor.start(NAME, [sys.executable, "-m", "collabkare.console"], env=env)
    supervisor.wait_ready(NAME, lambda: _answers(f"{url}/healthz"), timeout=30)
    return url


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return bool(response.status == 200)
