"""Backward-compatibility rules for event JSON Schemas: what a contract change must not do to its consumers.

Events outlive deploys: old messages stay on topics (replays, dead-letter redrives) and consumers upgrade at
their own pace, so a change must let old consumers read new events *and* new consumers read old events.
Hence, for an existing schema version:

- removing a property is incompatible (old consumers read it);
- adding a property is compatible only while it is optional; a new required property, or an existing one
  made required, rejects old events; a required property made optional may go missing for old consumers;
- any change to the values a property accepts is incompatible, in either direction: narrowing (no longer
  nullable, enum values or the `event_type` const removed, tighter limits, another format) rejects old
  events, and widening (now nullable, looser limits) sends old consumers values they reject;
- in particular *adding* an enum value is incompatible: our consumers validate with pydantic `Literal`
  types, which reject unknown values, so such an event would land on the dead-letter topic;
- `additionalProperties` may not change either: `false` (pydantic's extra="forbid") makes consumers reject
  any property they do not know, so the next optional field, compatible by the rule above, would be
  dead-lettered; under an old `false`, a new property is incompatible;
- titles, descriptions, defaults and examples are documentation and may change freely.

And for the topic map (`routing_incompatibilities`): an event may not move to another topic (its consumers
subscribe by topic), and an event version may not change the field that keys its messages (the events about
one aggregate would no longer share a partition, so their order would be lost).

An incompatible change is published as a new `schema_version` (a new class and a new schema file next to the
old ones), not as an edit. A new version is a new contract: it is not compared with the older versions,
which stay as they are, each checked against its own history. References (`$ref`) are resolved, so renaming a
`$defs` entry alone changes nothing; unions of objects are compared in order.

`python -m schemas.generate` applies these rules between the models and every version of each file ever
committed (the git history of schemas/json/), not only the file in the working tree.
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]

# The keywords that decide which values are valid; everything else is documentation.
VALUE_KEYWORDS = (
    "type", "format", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems",
)  # fmt: skip
_NULL = json.dumps({"type": "null"})
# Corrections of a format that misdescribed what the validator always accepted, old -> new, one way only. Every
# email field comes from schemas.email_address, whose validator (email-validator) has accepted international
# addresses from the start; its documents said `email` (ASCII only, in JSON Schema) until 2026-12-06, when they were
# corrected to `idn-email` without a new version: the values on the wire did not change, only their description.
# Going back to `email` would be a narrowing, and is refused like any other.
_CORRECTED_FORMAT = {"email": "idn-email"}


def incompatibilities(old: Schema, new: Schema) -> list[str]:
    """Each backward-incompatible difference from `old` to `new`, as one message naming the field."""
    walk = _Walk(old, new)
    walk.compare(old, new, "")
    return walk.problems


class _Walk:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.roots = (old_root, new_root)
        self.problems: list[str] = []
        # The objects being compared further up this path; a recursive model would otherwise never end.
        self.ancestors: set[tuple[int, int]] = set()

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        # Sorted by signature so that branch order (`X | None` against `None | X`) does not matter.
        old_variants = sorted(_variants(old, self.roots[0]), key=_signature)
        new_variants = sorted(_variants(new, self.roots[1]), key=_signature)
        old_values, new_values = [_signature(v) for v in old_variants], [_signature(v) for v in new_variants]
        if old_values != new_values and sorted(_signature(v, corrected=True) for v in old_variants) != new_values:
            self.problems.append(
                f"{path or '<root>'}: {_change(set(old_values), set(new_values))}"
                f" (was {_describe(old_values)}, now {_describe(new_values)})"
            )
            return
        for old_variant, new_variant in zip(old_variants, new_variants, strict=True):
            if _kind(old_variant) == "array":
                self.compare(old_variant.get("items", {}), new_variant.get("items", {}), f"{path}[]")
            elif _kind(old_variant) == "object":
                self.compare_object(old_variant, new_variant, path)

    def compare_object(self, old: Schema, new: Schema, path: str) -> None:
        old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
        # A definition's properties are one shared dict however often it is referenced, so they identify it.
        key = (id(old_properties), id(new_properties))
        if key in self.ancestors:
            return
        self.ancestors.add(key)
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        old_others, new_others = _additional(old), _additional(new)
        if old_others is not new_others and (old_others is False or new_others is False):
            self.problems.append(
                f"{path or '<root>'}: "
                + ("now rejects unknown properties" if new_others is False else "no longer rejects unknown properties")
                + " (additionalProperties)"
            )
        elif isinstance(old_others, dict) and isinstance(new_others, dict):
            self.compare(old_others, new_others, f"{path}.*" if path else "*")
        elif isinstance(old_others, dict) or isinstance(new_others, dict):
            self.problems.append(f"{path or '<root>'}: additionalProperties changed")
        for name in sorted(old_properties.keys() | new_properties.keys()):
            where = f"{path}.{name}" if path else name
            if name not in new_properties:
                self.problems.append(f"{where}: removed")
            elif name not in old_properties:
                if name in new_required:
                    self.problems.append(f"{where}: new required property")
                elif old_others is False and new_others is False:
                    # Consumers of the old schema reject any property they do not know.
                    self.problems.append(f"{where}: new property, and the old schema rejects unknown properties")
            else:
                if name in new_required - old_required:
                    self.problems.append(f"{where}: now required")
                elif name in old_required - new_required:
                    self.problems.append(f"{where}: no longer required")
                self.compare(old_properties[name], new_properties[name], where)
        self.ancestors.discard(key)


def routing_incompatibilities(old: Schema, new: Schema) -> list[str]:
    """Each change from the topic map `old` to `new` (schemas/json/topics.json documents) that moves an event to
    another topic or keys its messages by another field."""
    problems: list[str] = []
    old_topics, new_topics = _topics_by_event(old), _topics_by_event(new)
    for event_type, topics in sorted(old_topics.items()):
        now = new_topics.get(event_type, ())
        if now != topics:
            problems.append(
                f"{event_type}: topic changed (was {', '.join(topics)}, now {', '.join(now) or 'none'}):"
                " its consumers subscribe by topic"
            )
    old_keys, new_keys = _keys_by_event(old), _keys_by_event(new)
    for (event_type, version), key in sorted(old_keys.items()):
        now_key = new_keys.get((event_type, version))
        if now_key is not None and now_key != key:
            problems.append(
                f"{event_type} v{version}: message key changed (was {key}, now {now_key}):"
                " the events about one aggregate would no longer share a partition, nor stay in order"
            )
    return problems


def _topics_by_event(document: Schema) -> dict[str, tuple[str, ...]]:
    topics: dict[str, list[str]] = {}
    for topic in document.get("topics", ()):
        for event_type in topic.get("events", ()):
            topics.setdefault(event_type, []).append(topic["name"])
    return {event_type: tuple(sorted(names)) for event_type, names in topics.items()}


def _keys_by_event(document: Schema) -> dict[tuple[str, int], str]:
    # Older topic maps have no "events" list: the keys were first recorded there with this check.
    return {(event["event_type"], event["schema_version"]): event["key"] for event in document.get("events", ())}


def _additional(schema: Schema) -> bool | Schema:
    """What an object says of properties it does not list: True (allowed, the default), False, or a schema."""
    others = schema.get("additionalProperties", True)
    return others if isinstance(others, bool) or others != {} else True


def _resolve(schema: Schema, root: Schema) -> Schema:
    """Follows `$ref` (and pydantic's older single-entry `allOf`), keeping sibling keywords."""
    while "$ref" in schema or len(schema.get("allOf", ())) == 1:
        rest = {key: value for key, value in schema.items() if key not in ("$ref", "allOf")}
        if "$ref" in schema:
            target: Any = root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
        else:
            target = schema["allOf"][0]
        schema = {**rest, **target}
    return schema


def _variants(schema: Schema, root: Schema) -> list[Schema]:
    """The alternatives a value may take: `anyOf`/`oneOf` branches and `type` lists, flattened."""
    schema = _resolve(schema, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [variant for branch in schema[key] for variant in _variants(branch, root)]
    if isinstance(schema.get("type"), list):
        return [{**schema, "type": one} for one in schema["type"]]
    return [schema]


def _kind(variant: Schema) -> str | None:
    if variant.get("type") == "object" or "properties" in variant:
        return "object"
    if variant.get("type") == "array" or "items" in variant:
        return "array"
    return variant.get("type")


def _signature(variant: Schema, *, corrected: bool = False) -> str:
    # Properties and items are compared one by one further down, so only the outer keywords count here.
    values = {key: variant[key] for key in VALUE_KEYWORDS if key in variant}
    if corrected and "format" in values:
        values["format"] = _CORRECTED_FORMAT.get(values["format"], values["format"])
    return json.dumps({**values, "type": _kind(variant)}, sort_keys=True)


def _literals(signatures: set[str]) -> set[str]:
    found: set[str] = set()
    for signature in signatures:
        keywords = json.loads(signature)
        values = keywords.get("enum", [keywords["const"]] if "const" in keywords else [])
        found.update(json.dumps(value) for value in values)
    return found


def _change(old: set[str], new: set[str]) -> str:
    if old - {_NULL} == new - {_NULL}:
        return "no longer nullable" if _NULL in old else "now nullable"
    removed, added = _literals(old) - _literals(new), _literals(new) - _literals(old)
    if removed:
        return f"values removed: {', '.join(sorted(removed))}"
    return f"values added: {', '.join(sorted(added))}" if added else "type changed"


def _describe(signatures: list[str]) -> str:
    parts = []
    for signature in signatures:
        keywords = json.loads(signature)
        kind = keywords.pop("type") or "any"
        detail = ", ".join(f"{key}={json.dumps(value)}" for key, value in keywords.items())
        parts.append(f"{kind}({detail})" if detail else kind)
    return " | ".join(parts)
