"""A missing or malformed setting stops start-up with one line naming the variable and what it expects."""

from __future__ import annotations

import os
import subprocess
import sys

GOOD = {
    "DATABASE_URL": "postgresql://connections@127.0.0.1:5432/collabkare",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "JWT_SECRET": "x" * 32,
}


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in GOOD and k not in {"PORT", "JWT_ALGORITHM"}}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from services.connections.settings import ConnectionsSettings as S;"
            "from services.runtime.settings import load_settings; load_settings(S)",
        ],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_good_settings_load() -> None:
    assert _start(GOOD).returncode == 0


def test_missing_variable_is_named() -> None:
    result = _start({k: v for k, v in GOOD.items() if k != "DATABASE_URL"})
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: DATABASE_URL: required but not set"


def test_malformed_values_say_what_is_expected() -> None:
    result = _start({**GOOD, "PORT": "eighty", "DATABASE_URL": "mysql://nope"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 2, result.stderr
    assert any(line.startswith("configuration error: PORT: ") and "integer" in line for line in lines)
    assert any(line.startswith("configuration error: DATABASE_URL: ") for line in lines)


def test_short_jwt_secret_is_refused() -> None:
    result = _start({**GOOD, "JWT_SECRET": "short"})
    assert result.returncode == 2
    assert "JWT_SECRET: expected at least 32 bytes" in result.stderr
    assert "Traceback" not in result.stderr
