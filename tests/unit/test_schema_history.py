"""The models are checked against every version of schemas/json/ ever committed, not only the files on disk.

The first test is the enforcement point in CI (a full clone): it walks this repository's git history. The
others build a throwaway repository in tmp_path and replay the bypasses an integrating team found: deleting the
file before regenerating it, or committing a breaking change together with its regenerated file, for an enum
value added, a changed message key, an event moved to another topic, and extra="forbid".
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import ConfigDict, create_model

from schemas.envelope import Contract, Envelope
from schemas.events import EVENTS, DeliveryOutcome, InviteRequested, version_of
from schemas.generate import (
    JSON_DIR,
    SCHEMA_FILE,
    TOPICS_FILE,
    HistoryUnavailable,
    changed_files,
    committed_versions,
    incompatible_changes,
    main,
    render,
)
from schemas.topics import TOPICS

# --- this repository ------------------------------------------------------------------------------------


def test_the_models_are_compatible_with_every_committed_schema() -> None:
    try:
        history = committed_versions(JSON_DIR)
    except HistoryUnavailable as error:
        pytest.skip(f"no git history of schemas/json/ to check the models against ({error})")
    # The walk found the files, so an empty problem list below means something.
    assert TOPICS_FILE in history
    assert any(SCHEMA_FILE.fullmatch(name) for name in history)

    assert incompatible_changes(render(), JSON_DIR, history) == []


# --- a throwaway repository -----------------------------------------------------------------------------

GIT_ENVIRONMENT = {
    **{name: value for name, value in os.environ.items() if not name.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": os.devnull,  # no signing, hooks or templates from whoever runs the tests
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENVIRONMENT, capture_output=True, text=True, check=True)
    return result.stdout


def commit_all(json_dir: Path, message: str) -> None:
    git(json_dir, "add", ".")
    git(json_dir, "commit", "-q", "-m", message)


@pytest.fixture
def json_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A repository whose one commit holds today's generated files in schemas/json/."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git(tmp_path, "init", "-q")
    directory = tmp_path / "schemas" / "json"
    assert main([], directory=directory) == 0
    commit_all(directory, "schemas as today")
    capsys.readouterr()
    return directory


def variant(model: type[Envelope], *, key_field: str | None = None, **payload_fields: Any) -> type[Envelope]:
    """A copy of `model` with some payload fields replaced, or another message key."""
    payload_model: type[Contract] = model.model_fields["payload"].annotation
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info in payload_model.model_fields.items()}
    payload = create_model(payload_model.__name__, __base__=Contract, **{**fields, **payload_fields})
    copy: type[Envelope] = create_model(model.__name__, __base__=model, payload=(payload, ...))
    if key_field is not None:
        copy.key_field = key_field
    return copy


def forbidding(model: type[Envelope]) -> type[Envelope]:
    """A copy of `model` as it would be with Contract's model_config extra="forbid"."""
    payload_model: type[Contract] = model.model_fields["payload"].annotation
    forbid = {"model_config": ConfigDict(extra="forbid"), "__module__": __name__}
    payload = type(payload_model.__name__, (payload_model,), forbid)
    return type(model.__name__, (model,), {**forbid, "__annotations__": {"payload": payload}})


def replacing(*models: type[Envelope]) -> list[type[Envelope]]:
    """EVENTS, with each of `models` instead of the class of the same event type and version."""
    by_version = {(model.model_fields["event_type"].default, version_of(model)): model for model in models}
    return [by_version.get((event.model_fields["event_type"].default, version_of(event)), event) for event in EVENTS]


def outcome_bounced() -> dict[str, str]:
    outcomes = Literal["sent", "not_on_platform", "error", "bounced"]
    return render(replacing(variant(DeliveryOutcome, outcome=(outcomes, ...))))


def invites_keyed_by_email() -> dict[str, str]:
    return render(replacing(variant(InviteRequested, key_field="email")))


def outcomes_on_the_invitations_topic() -> dict[str, str]:
    moved = {
        name: dataclasses.replace(
            topic,
            events=tuple(event for event in topic.events if event != "DeliveryOutcome")
            + (("DeliveryOutcome",) if name == "invitations.v1" else ()),
        )
        for name, topic in TOPICS.items()
    }
    return render(topics=moved)


def contracts_forbid_extra() -> dict[str, str]:
    return render([forbidding(event) for event in EVENTS])


SCHEMA_FILES = sorted(name for name in render() if name != TOPICS_FILE)

# (id, the files a changed model renders, the start of problems that must be reported)
BYPASSES: list[tuple[str, Callable[[], dict[str, str]], list[str]]] = [
    (
        "enum value added",
        outcome_bounced,
        ['DeliveryOutcome.v1.json: payload.outcome: values added: "bounced"'],
    ),
    (
        "message key changed",
        invites_keyed_by_email,
        ["topics.json: InviteRequested v1: message key changed (was payload.invite_id, now payload.email)"],
    ),
    (
        "topic changed",
        outcomes_on_the_invitations_topic,
        ["topics.json: DeliveryOutcome: topic changed (was notifier.outcomes.v1, now invitations.v1)"],
    ),
    (
        "extra=forbid",
        contracts_forbid_extra,
        [f"{name}: <root>: now rejects unknown properties" for name in SCHEMA_FILES]
        + [f"{name}: payload: now rejects unknown properties" for name in SCHEMA_FILES],
    ),
]
BYPASS_IDS = [bypass[0] for bypass in BYPASSES]


def assert_reported(err: str, expected: list[str]) -> None:
    lines = err.splitlines()
    for start in expected:
        matches = [line for line in lines if line.startswith(start)]
        assert matches, f"{start!r} not in:\n{err}"
        assert all("[against the version committed in " in line for line in matches), matches


def contents(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize(("render_changed", "expected"), [bypass[1:] for bypass in BYPASSES], ids=BYPASS_IDS)
def test_deleting_the_files_does_not_get_a_breaking_change_through(
    json_dir: Path,
    render_changed: Callable[[], dict[str, str]],
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = render_changed()
    deleted = changed_files(files, json_dir)
    assert deleted  # the change shows in the generated files
    for name in deleted:
        (json_dir / name).unlink()
    before = contents(json_dir)

    assert main([], directory=json_dir, files=files) == 1
    assert_reported(capsys.readouterr().err, expected)
    assert contents(json_dir) == before  # nothing written

    assert main(["--check"], directory=json_dir, files=files) == 1
    assert_reported(capsys.readouterr().err, expected)


@pytest.mark.parametrize(("render_changed", "expected"), [bypass[1:] for bypass in BYPASSES], ids=BYPASS_IDS)
def test_a_breaking_change_committed_with_its_regenerated_files_fails_the_check(
    json_dir: Path,
    render_changed: Callable[[], dict[str, str]],
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = render_changed()
    for name in changed_files(files, json_dir):
        (json_dir / name).write_text(files[name])
    commit_all(json_dir, "the breaking change and its regenerated schema files")
    assert changed_files(files, json_dir) == []  # the files on disk agree with the models: only history can tell

    assert main(["--check"], directory=json_dir, files=files) == 1
    assert_reported(capsys.readouterr().err, expected)
    history = committed_versions(json_dir)
    assert len(incompatible_changes(files, json_dir, history)) >= len(expected)


def test_a_compatible_change_is_written_and_then_checked_against_every_version(
    json_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_tracking = render(replacing(variant(DeliveryOutcome, tracking_id=(str | None, None))))
    assert main([], directory=json_dir, files=with_tracking) == 0
    commit_all(json_dir, "DeliveryOutcome: an optional tracking_id")
    # Dropping it again is incompatible with the newer committed version, though not with the first one.
    assert main(["--check"], directory=json_dir, files=render()) == 1
    err = capsys.readouterr().err
    assert_reported(err, ["DeliveryOutcome.v1.json: payload.tracking_id: removed"])


def test_renaming_an_event_is_reported_as_its_committed_schema_losing_its_model(
    json_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The old name's file is deleted along with the model, as `git rm` would; history still has it.
    (json_dir / "DeliveryOutcome.v1.json").unlink()
    files = {name: text for name, text in render().items() if name != "DeliveryOutcome.v1.json"}

    assert main(["--check"], directory=json_dir, files=files) == 1
    assert_reported(capsys.readouterr().err, ["DeliveryOutcome.v1.json: no model renders it any more"])


def test_unchanged_models_pass_against_the_history(json_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"], directory=json_dir) == 0, capsys.readouterr().err
    assert set(committed_versions(json_dir)) == set(render())


# --- where there is no history ------------------------------------------------------------------------


def test_a_directory_outside_any_repository_has_no_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a source tarball. (GIT_CEILING_DIRECTORIES: tmp_path itself could be inside some repository.)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    directory = tmp_path / "json"
    assert main([], directory=directory) == 0
    capsys.readouterr()

    with pytest.raises(HistoryUnavailable, match="not a git repository"):
        committed_versions(directory)
    assert main(["--check"], directory=directory) == 0
    assert "not with their git history: `git rev-parse` failed: fatal: not a git repository" in capsys.readouterr().err


def test_a_shallow_clone_has_no_full_history(json_dir: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{json_dir.parent.parent}", str(clone))

    with pytest.raises(HistoryUnavailable, match="shallow clone"):
        committed_versions(clone / "schemas" / "json")


def test_without_git_there_is_no_history(json_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")

    with pytest.raises(HistoryUnavailable, match="git is not installed"):
        committed_versions(json_dir)


def test_committed_versions_reads_every_distinct_version_with_the_commit_that_introduced_it(json_dir: Path) -> None:
    first = git(json_dir, "rev-parse", "HEAD").strip()
    with_tracking = render(replacing(variant(DeliveryOutcome, tracking_id=(str | None, None))))
    (json_dir / "DeliveryOutcome.v1.json").write_text(with_tracking["DeliveryOutcome.v1.json"])
    commit_all(json_dir, "second")
    second = git(json_dir, "rev-parse", "HEAD").strip()
    (json_dir / "notes.txt").write_text("not a schema")
    commit_all(json_dir, "third: a file that is not a schema")

    history: Mapping[str, Any] = committed_versions(json_dir)

    assert [(version.commit, version.text) for version in history["DeliveryOutcome.v1.json"]] == [
        (second, with_tracking["DeliveryOutcome.v1.json"]),
        (first, render()["DeliveryOutcome.v1.json"]),
    ]
    assert [version.commit for version in history["InviteRequested.v1.json"]] == [first]
    assert "notes.txt" not in history
