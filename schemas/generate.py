"""Writes every event's JSON Schema and the topic map to schemas/json/, refusing incompatible changes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from schemas.compat import incompatibilities
from schemas.envelope import Envelope
from schemas.events import EVENT_TYPES
from schemas.topics import CONSUMER_GROUPS, TOPICS, dead_letter_topic

JSON_DIR = Path(__file__).resolve().parent / "json"
TOPICS_FILE = "topics.json"


def event_schema(model: type[Envelope]) -> dict[str, Any]:
    # Serialization mode: the file documents what producers put on the wire (the outbox stores
    # `model_dump_json()`), which is what consumers receive. Validation mode describes what a model would
    # accept instead, and would not show computed fields or custom serializers. Today both are identical.
    return model.model_json_schema(mode="serialization")


def schema_file_name(event_type: str, model: type[Envelope]) -> str:
    return f"{event_type}.v{model.model_fields['schema_version'].default}.json"


def topics_document() -> dict[str, Any]:
    return {
        "topics": [{**asdict(topic), "events": list(topic.events)} for topic in TOPICS.values()],
        "dead_letter_topics": [
            {"name": dead_letter_topic(group), "consumer_group": group, "source_topics": list(sources)}
            for group, sources in CONSUMER_GROUPS.items()
        ],
    }


def render() -> dict[str, str]:
    """The exact text of every generated file, by file name."""
    files = {
        schema_file_name(event_type, model): _dump(event_schema(model)) for event_type, model in EVENT_TYPES.items()
    }
    files[TOPICS_FILE] = _dump(topics_document())
    return files


def incompatible_changes(files: dict[str, str], directory: Path) -> list[str]:
    """Problems of each rendered event schema against its file in `directory`; a new file has none."""
    problems: list[str] = []
    for name, text in files.items():
        existing = directory / name
        if name == TOPICS_FILE or not existing.exists():
            continue
        try:
            old = json.loads(existing.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            # Overwriting it would skip the check; a person has to look (a merge conflict, usually).
            problems.append(f"{name}: the existing file is not valid JSON ({error})")
            continue
        problems.extend(f"{name}: {problem}" for problem in incompatibilities(old, json.loads(text)))
    return problems


def changed_files(files: dict[str, str], directory: Path) -> list[str]:
    """The rendered files that are missing from `directory` or differ from what is there."""
    return [
        name
        for name, text in files.items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None, directory: Path = JSON_DIR) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any file would change")
    args = parser.parse_args(argv)

    files = render()
    problems = incompatible_changes(files, directory)
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


def _dump(document: dict[str, Any]) -> str:
    # Sorted keys and a trailing newline keep diffs down to what really changed.
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.exit(main())
