"""What a running local stack tells the CLI (broker address, dev JWT secret, URLs): `stack.env` in its directory.

The file lives beside the stack's logs and caught mail, so a second stack (a benchmark, a test run, another
`COLLABKARE_STACK_DIR`) never overwrites or removes the one `make up` wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

from collabkare.stack.processes import var_dir

FILE_NAME = "stack.env"


def default_workdir() -> Path:
    """Where the local stack keeps its logs, caught mail and stack.env: COLLABKARE_STACK_DIR, else var/stack."""
    return Path(os.environ.get("COLLABKARE_STACK_DIR", var_dir() / "stack"))


def write_stack_env(workdir: Path, values: dict[str, str]) -> None:
    path = workdir / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)  # it holds the development signing key


def read_stack_env(workdir: Path | None = None) -> dict[str, str]:
    path = (workdir or default_workdir()) / FILE_NAME
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def remove_stack_env(workdir: Path) -> None:
    (workdir / FILE_NAME).unlink(missing_ok=True)
