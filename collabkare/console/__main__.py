"""`python -m collabkare.console`: serve the staff console on HOST:CONSOLE_PORT (loopback, 8000 by default)."""

from __future__ import annotations

import os
import sys

import uvicorn

from collabkare.console.app import ConsoleConfig, ConsoleConfigError, create_app


def main() -> int:
    try:
        config = ConsoleConfig.from_env(os.environ)
    except ConsoleConfigError as error:
        print(f"console: {error}", file=sys.stderr)
        return 2
    port = os.environ.get("CONSOLE_PORT", "8000")
    if not port.isdigit():
        print(f"console: CONSOLE_PORT={port!r}: expected a port number", file=sys.stderr)
        return 2
    host = os.environ.get("HOST", "127.0.0.1")
    uvicorn.run(create_app(config), host=host, port=int(port), log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
