"""The committed OpenAPI and AsyncAPI documents are what the code generates (run `make schemas` after a change)."""

from __future__ import annotations

import json

from collabkare.docs import documents


def test_committed_documents_are_current() -> None:
    stale = [str(path) for path, text in documents().items() if not path.exists() or path.read_text() != text]
    assert stale == [], f"out of date, run `make schemas`: {stale}"


def test_asyncapi_describes_every_topic_a_service_publishes() -> None:
    published = {
        "connections": ["connections.v1"],
        "invitations": ["invitations.v1"],
        "notifier": ["notifier.outcomes.v1"],
    }
    for path, text in documents().items():
        if path.parent.name != "asyncapi":
            continue
        channels = json.loads(text)["channels"]
        for topic in published[path.stem]:
            assert topic in channels, f"{path.name} lacks {topic}"
