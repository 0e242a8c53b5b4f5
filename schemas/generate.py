"""Writes every event's JSON Schema and the topic map to schemas/json/, refusing incompatible changes.

The models are compared with the files in schemas/json/ *and* with every version of those files ever committed
(the git history of the directory, read with `git`), so deleting a file, or committing a breaking change
together with its regenerated file, does not get the change past the check. Without git history (a source
tarball, a shallow clone) only the files in the directory are compared, and a note says so; the unit test
tests/unit/test_schema_history.py is the check CI relies on, and it skips, with the reason, in that case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.compat import incompatibilities, routing_incompatibilities
from schemas.envelope import Envelope
from schemas.events import EVENTS, version_of
from schemas.topics import CONSUMER_GROUPS, TOPICS, Topic, dead_letter_topic

JSON_DIR = Path(__file__).resolve().parent / "json"
TOPICS_FILE = "topics.json"
SCHEMA_FILE = re.compile(r"[A-Za-z0-9_]+\.v[0-9]+\.json")


def event_schema(model: type[Envelope]) -> dict[str, Any]:
    # Serialization mode: the file documents what producers put on the wire (the outbox stores
    # `model_dump_json()`), which is what consumers receive. Validation mode describes what a model would
    # accept instead, and would not show computed fields or custom serializers. Today both are identical.
    return model.model_json_schema(mode="serialization")


def schema_file_name(event_type: str, model: type[Envelope]) -> str:
    return f"{event_type}.v{version_of(model)}.json"


def topics_document(events: Iterable[type[Envelope]] = EVENTS, topics: Mapping[str, Topic] = TOPICS) -> dict[str, Any]:
    return {
        "topics": [{**asdict(topic), "events": list(topic.events)} for topic in topics.values()],
        "dead_letter_topics": [
            {"name": dead_letter_topic(group), "consumer_group": group, "source_topics": list(sources)}
            for group, sources in CONSUMER_GROUPS.items()
        ],
        # Every event version, with its topic and the field that keys its messages: `key` and `topic` are part
        # of the contract, and the compatibility check reads them from here.
        "events": [
            {
                "event_type": _event_type(model),
                "schema_version": version_of(model),
                "schema": schema_file_name(_event_type(model), model),
                "topic": _topic_of(_event_type(model), topics),
                "key": model.key_path(),
            }
            for model in events
        ],
    }


def render(events: Iterable[type[Envelope]] = EVENTS, topics: Mapping[str, Topic] = TOPICS) -> dict[str, str]:
    """The exact text of every generated file, by file name: one schema per event version, and the topic map."""
    events = list(events)
    files = {schema_file_name(_event_type(model), model): _dump(event_schema(model)) for model in events}
    files[TOPICS_FILE] = _dump(topics_document(events, topics))
    return files


# --- what was committed before ---------------------------------------------------------------------------


class HistoryUnavailable(Exception):
    """There is no git history of the directory to compare with; the message says why."""


@dataclass(frozen=True)
class Committed:
    """One version of a file as committed: the oldest commit that has this exact text."""

    commit: str
    text: str


# Set by git hooks and scripts; they would point git at another repository than the directory's own.
_REPOSITORY_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR")


def committed_versions(directory: Path = JSON_DIR) -> dict[str, list[Committed]]:
    """Every distinct version of each JSON file directly in `directory` ever committed in HEAD's history, by file
    name, newest first. Raises HistoryUnavailable where that history cannot be read in full."""
    if not directory.is_dir():
        raise HistoryUnavailable(f"{directory} does not exist")
    if _git(directory, "rev-parse", "--is-shallow-repository").strip() == b"true":
        raise HistoryUnavailable("this is a shallow clone, its history is cut short (run `git fetch --unshallow`)")
    commits = _git(directory, "rev-list", "--full-history", "HEAD", "--", ".").decode().split()
    if not commits:
        raise HistoryUnavailable(f"no commit in this repository touches {directory}")
    found: dict[str, dict[str, str]] = {}  # file name -> blob -> the oldest commit that has it
    for commit in commits:  # newest first
        for entry in _git(directory, "ls-tree", "-z", commit, ".").split(b"\0"):
            if not entry:
                continue
            info, _, name = entry.decode().partition("\t")
            _mode, kind, blob = info.split()
            if kind == "blob" and name.endswith(".json") and "/" not in name:
                found.setdefault(name, {})[blob] = commit
    blobs = sorted({blob for versions in found.values() for blob in versions})
    texts = _read_blobs(directory, blobs)
    return {
        name: [Committed(commit, texts[blob]) for blob, commit in versions.items()] for name, versions in found.items()
    }


def _read_blobs(directory: Path, blobs: Sequence[str]) -> dict[str, str]:
    output = _git(directory, "cat-file", "--batch", stdin="".join(f"{blob}\n" for blob in blobs).encode())
    texts: dict[str, str] = {}
    position = 0
    for blob in blobs:
        header_end = output.index(b"\n", position)
        header = output[position:header_end].decode().split()
        if len(header) != 3:  # "<blob> missing": a partial clone that could not fetch it
            raise HistoryUnavailable(f"git cannot read the committed file {blob}: {' '.join(header)}")
        size = header[2]
        start = header_end + 1
        texts[blob] = output[start : start + int(size)].decode("utf-8", errors="replace")
        position = start + int(size) + 1
    return texts


def _git(directory: Path, *args: str, stdin: bytes | None = None) -> bytes:
    environment = {name: value for name, value in os.environ.items() if name not in _REPOSITORY_VARIABLES}
    try:
        result = subprocess.run(  # noqa: S603 - a fixed git command line; arguments are commit ids from git
            ["git", *args],  # noqa: S607 - whichever git is on PATH, as a developer or CI would run it
            cwd=directory,
            input=stdin,
            capture_output=True,
            env=environment,
            check=False,
            timeout=120,
        )
    except FileNotFoundError:
        raise HistoryUnavailable("git is not installed") from None
    except (OSError, subprocess.SubprocessError) as error:
        raise HistoryUnavailable(f"git did not run: {error}") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise HistoryUnavailable(f"`git {args[0]}` failed: {message[0] if message else result.returncode}")
    return result.stdout


# --- the check -------------------------------------------------------------------------------------------


def incompatible_changes(
    files: Mapping[str, str], directory: Path, history: Mapping[str, Sequence[Committed]] | None = None
) -> list[str]:
    """Problems of the rendered `files` against the same files in `directory` and against every committed version
    of them in `history`. A file with neither has none; a committed event schema that no model renders any more
    is one (its events may still be on a topic)."""
    history = history or {}
    problems: list[str] = []
    for name in [*files, *sorted(set(history) - set(files))]:
        versions: dict[str, str] = {}  # text -> where it comes from ("" for the file in `directory`)
        for version in history.get(name, ()):
            versions.setdefault(version.text, f" [against the version committed in {version.commit[:12]}]")
        existing = directory / name
        if existing.exists():
            versions.setdefault(existing.read_text(encoding="utf-8"), "")
        if name not in files:
            if SCHEMA_FILE.fullmatch(name) and any(versions.values()):
                where = next(where for where in versions.values() if where)
                problems.append(
                    f"{name}: no model renders it any more, yet its events may still be on a topic: keep its class"
                    f" in schemas.events.AnyEvent next to the new version{where}"
                )
            continue
        new = json.loads(files[name])
        seen: set[str] = set()
        for text, where in versions.items():
            try:
                old = json.loads(text)
            except json.JSONDecodeError as error:
                if not where:
                    # Overwriting it would skip the check; a person has to look (a merge conflict, usually).
                    problems.append(f"{name}: the existing file is not valid JSON ({error})")
                # A committed version that is not JSON (a conflict committed by mistake) describes no contract.
                continue
            found = routing_incompatibilities(old, new) if name == TOPICS_FILE else incompatibilities(old, new)
            for problem in found:
                if problem not in seen:
                    seen.add(problem)
                    problems.append(f"{name}: {problem}{where}")
    return problems


def changed_files(files: Mapping[str, str], directory: Path) -> list[str]:
    """The rendered files that are missing from `directory` or differ from what is there."""
    return [
        name
        for name, text in files.items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None, directory: Path = JSON_DIR, files: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any file would change")
    args = parser.parse_args(argv)

    files = render() if files is None else files
    try:
        history = committed_versions(directory)
    except HistoryUnavailable as error:
        history = {}
        print(
            f"note: compared with the files in {directory} only, not with their git history: {error}", file=sys.stderr
        )
    problems = incompatible_changes(files, directory, history)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("incompatible: publish the change as a new schema_version instead", file=sys.stderr)
    changed = changed_files(files, directory)

    if args.check:
        for name in changed:
            print(f"{directory / name} is out of date", file=sys.stderr)
        if changed and not problems:
            print("run `make schemas`", file=sys.stderr)
        return 1 if problems or changed else 0
    if problems:
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    for name in changed:
        (directory / name).write_text(files[name], encoding="utf-8")
        print(f"wrote {directory / name}")
    return 0


def _event_type(model: type[Envelope]) -> str:
    event_type: str = model.model_fields["event_type"].default
    return event_type


def _topic_of(event_type: str, topics: Mapping[str, Topic]) -> str:
    for topic in topics.values():
        if event_type in topic.events:
            return topic.name
    raise KeyError(f"no topic carries {event_type}")


def _dump(document: dict[str, Any]) -> str:
    # Sorted keys and a trailing newline keep diffs down to what really changed.
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.exit(main())
