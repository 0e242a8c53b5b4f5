"""Generates each service's OpenAPI and AsyncAPI documents into docs/ (`make schemas`; a test keeps them current)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas import EVENT_TYPES
from services.connections.app import build_runtime as connections_runtime
from services.connections.settings import ConnectionsSettings
from services.invitations.app import build_runtime as invitations_runtime
from services.invitations.settings import InvitationsSettings
from services.notifier.app import build_runtime as notifier_runtime
from services.notifier.settings import NotifierSettings
from services.runtime.service import ServiceRuntime

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Building a runtime does no I/O; these values only satisfy the settings' validation.
_OFFLINE = {
    "database_url": "postgresql://docs@localhost/docs",
    "kafka_bootstrap_servers": "kafka:9092",
    "jwt_secret": "documentation-only-secret-32-bytes!",
}


def runtimes() -> dict[str, ServiceRuntime]:
    return {
        "connections": connections_runtime(ConnectionsSettings(**_OFFLINE)),  # type: ignore[arg-type]
        "invitations": invitations_runtime(InvitationsSettings(**_OFFLINE)),  # type: ignore[arg-type]
        "notifier": notifier_runtime(NotifierSettings(**_OFFLINE)),  # type: ignore[arg-type]
    }


def documents() -> dict[Path, str]:
    result: dict[Path, str] = {}
    for name, runtime in runtimes().items():
        openapi: dict[str, Any] = runtime.http_app().openapi()
        result[DOCS / "openapi" / f"{name}.json"] = _dump(openapi)
        asyncapi = json.loads(runtime.asyncapi().to_specification().to_json())
        result[DOCS / "asyncapi" / f"{name}.json"] = _dump(describe_consumed_events(asyncapi, runtime))
    return result


def describe_consumed_events(asyncapi: dict[str, Any], runtime: ServiceRuntime) -> dict[str, Any]:
    """Name the events each subscriber reads.

    The batch consumers take raw records (so a poison message reaches our dead-letter logic instead of
    failing in FastStream's argument parsing), which leaves FastStream nothing to describe them with.
    """
    schemas = asyncapi["components"]["schemas"]
    for subscription in runtime.spec.subscriptions:
        handler_name = "".join(part.title() for part in f"{subscription.group}_consume".split("_"))
        events = sorted(subscription.handlers)
        for event in events:
            model = EVENT_TYPES[event].model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(model.pop("$defs", {}))
            schemas[event] = model
        for key, message in asyncapi["components"]["messages"].items():
            if f":{handler_name}:" in key:
                message["payload"] = {"oneOf": [{"$ref": f"#/components/schemas/{event}"} for event in events]}
    if "EmptyPayload" in schemas and '"#/components/schemas/EmptyPayload"' not in json.dumps(asyncapi):
        del schemas["EmptyPayload"]
    return asyncapi


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def stale() -> list[Path]:
    return [path for path, text in documents().items() if not path.exists() or path.read_text() != text]


def main() -> int:
    if "--check" in sys.argv:
        outdated = stale()
        for path in outdated:
            print(f"{path.relative_to(DOCS.parent)} is out of date: run `make schemas`")
        return 1 if outdated else 0
    for path, text in documents().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
