"""var/stack.env: what a running local stack tells the CLI (broker address, dev JWT secret, URLs)."""

from __future__ import annotations

from pathlib import Path

STACK_ENV = Path(__file__).resolve().parents[2] / "var" / "stack.env"


def write_stack_env(values: dict[str, str], path: Path = STACK_ENV) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)  # it holds the development signing key


def read_stack_env(path: Path = STACK_ENV) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def remove_stack_env(path: Path = STACK_ENV) -> None:
    path.unlink(missing_ok=True)
