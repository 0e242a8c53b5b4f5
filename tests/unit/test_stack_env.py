"""stack.env: each local stack's file lives in its own directory, so stacks side by side never clobber each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from collabkare.stack.settings_file import default_workdir, read_stack_env, remove_stack_env, write_stack_env


def test_two_stacks_keep_their_own_settings(tmp_path: Path) -> None:
    up, bench = tmp_path / "stack", tmp_path / "bench-e2e-1"
    write_stack_env(up, {"JWT_SECRET": "a=b", "INVITATIONS_URL": "http://127.0.0.1:8002"})
    write_stack_env(bench, {"JWT_SECRET": "other"})
    remove_stack_env(bench)  # the benchmark's stack stops

    assert read_stack_env(up) == {"JWT_SECRET": "a=b", "INVITATIONS_URL": "http://127.0.0.1:8002"}
    assert read_stack_env(bench) == {}
    assert (up / "stack.env").stat().st_mode & 0o777 == 0o600  # it holds the development signing key


def test_the_cli_reads_the_stack_named_by_collabkare_stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLABKARE_STACK_DIR", str(tmp_path / "mine"))
    assert default_workdir() == tmp_path / "mine"
    write_stack_env(tmp_path / "mine", {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1234"})
    assert read_stack_env() == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1234"}
    monkeypatch.delenv("COLLABKARE_STACK_DIR")
    assert default_workdir().parts[-2:] == ("var", "stack")


def test_seeds_take_broker_and_prefix_from_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix exported in the shell sent `collabkare seed` to topics the running stack's services do not read."""
    from collabkare.cli import _kafka

    monkeypatch.setenv("COLLABKARE_STACK_DIR", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "alice.")
    write_stack_env(tmp_path, {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1234", "KAFKA_TOPIC_PREFIX": ""})
    assert _kafka() == ("127.0.0.1:1234", "")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.internal:9092")
    assert _kafka() == ("kafka.internal:9092", "alice."), "an external broker goes with the shell's prefix"
