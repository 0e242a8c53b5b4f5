"""components/monitoring: every alert says how bad it is, what it means and where its runbook is, and reads only
series and labels the services really export.

The exported series come from the services themselves: each service's runtime is built (no I/O, as for the
generated docs), asked for /healthz, /readyz and /metrics so that the per-request series exist, and its /metrics
text is parsed. Nothing here lists metric names by hand.

promtool is not available offline, so the rules' PromQL is read with regular expressions (`parse`). They cover the
subset these rules use: selectors `name{label op "value", ...}`, range and subquery brackets `[10m]`, grouping
clauses `by|without|on|ignoring|group_left|group_right (labels)`, calls `f(...)`, binary operators and numbers. What
they do not understand fails the test (`parse` insists every character is accounted for) instead of passing
unchecked: a rule that needs more PromQL needs more of this reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collabkare.docs import runtimes
from services.runtime.service import ServiceRuntime

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
README = ROOT / "deploy" / "README.md"
SEVERITIES = {"critical", "warning"}
# Asked before the scrape: they create the series of http_requests_total and http_request_seconds, whose labels
# (route, status) exist only once a request was served; the alerts leave exactly these routes out.
OPERATIONAL_ROUTES = ("/healthz", "/readyz", "/metrics")
# Series Prometheus itself records for every scrape target, not the services (`up`: 1 when the scrape succeeded).
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus attaches to every series scraped through podmonitor.yaml: `job` (its jobLabel, the pod's
# app.kubernetes.io/name), `instance` (the address), and the Operator's namespace, pod, container and endpoint.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint"}
# PromQL functions and aggregations these rules may call; a name outside it is a typo or a new need (add it here).
FUNCTIONS = {
    *("sum", "min", "max", "avg", "count", "group", "topk", "bottomk", "quantile", "histogram_quantile"),
    *("absent", "absent_over_time", "rate", "irate", "increase", "delta", "deriv", "changes", "resets"),
    *("max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "last_over_time", "predict_linear"),
    *("clamp_min", "clamp_max", "abs", "vector", "scalar", "label_replace", "time"),
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}

# PromQL, the subset these rules use (see the module's docstring).
SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)?\s*\{(?P<matchers>[^{}]*)\}")
MATCHER = re.compile(r'\s*(?P<label>[a-zA-Z_]\w*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*(?:,|$)')
DURATION = re.compile(r"(?<![\w:])(?:\d+(?:ms|[smhdwy]))+(?![\w:])")  # after `offset`
BRACKETS = re.compile(r"\[\s*\d+[smhdwy](?:\s*:\s*(?:\d+[smhdwy])?)?\s*\]")
GROUPING = re.compile(r"\b(?P<clause>by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^()]*)\)")
IDENTIFIER = re.compile(r"(?<![\w.:])(?P<name>[a-zA-Z_:][\w:]*)(?P<call>\s*\()?")
NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w:])")
OPERATORS = re.compile(r"==|!=|>=|<=|[-+*/%^<>(),]")
LITERAL_ALTERNATIVES = re.compile(r"[\w/-]+(?:\|[\w/-]+)*")  # a|b|c with no regex syntax: each one a value


@dataclass
class Query:
    """What one expression reads: (metric, [(label, op, value)]) per selector, the grouping labels, the calls."""

    selectors: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    aggregated: bool = False


def parse(expr: str) -> Query:
    query = Query()

    def selector(match: re.Match[str]) -> str:
        matchers = [(m["label"], m["op"], m["value"]) for m in MATCHER.finditer(match["matchers"])]
        assert MATCHER.sub("", match["matchers"]).strip() == "", f"label matchers not understood: {match[0]}"
        assert match["name"], f"a selector without a metric name: {match[0]}"
        query.selectors.append((match["name"], matchers))
        return " "

    rest = SELECTOR.sub(selector, expr)
    rest = BRACKETS.sub(" ", rest)
    for clause in GROUPING.finditer(rest):
        query.grouping |= {label.strip() for label in clause["labels"].split(",") if label.strip()}
        query.aggregated |= clause["clause"] in ("by", "without")
    rest = GROUPING.sub(" ", rest)
    for match in IDENTIFIER.finditer(rest):
        if match["call"]:
            query.functions.add(match["name"])
        elif match["name"] not in KEYWORDS:
            query.selectors.append((match["name"], []))
    rest = IDENTIFIER.sub(lambda m: " (" if m["call"] else " ", rest)
    rest = DURATION.sub(" ", rest)
    rest = NUMBER.sub(" ", rest)
    assert rest.count("(") == rest.count(")"), f"unbalanced parentheses in {expr!r}"
    assert OPERATORS.sub(" ", rest).strip() == "", f"PromQL not understood: {OPERATORS.sub(' ', rest).split()}"
    return query


def test_the_reader_understands_the_promql_it_is_given() -> None:
    """The regular expressions themselves, on an expression of each shape the rules use."""
    query = parse(
        'sum by (job, group) (increase(dead_letters_total{namespace="collabkare", group=~"a|b"}[15m])) > 0\n'
        "and on () absent(up == 1) or max without (pod) (outbox_pending offset 5m) / 1e3 >= 0.5"
    )
    assert query.selectors == [
        ("dead_letters_total", [("namespace", "=", "collabkare"), ("group", "=~", "a|b")]),
        ("up", []),
        ("outbox_pending", []),
    ]
    assert query.grouping == {"job", "group", "pod"} and query.aggregated
    assert query.functions == {"sum", "increase", "absent", "max"}
    with pytest.raises(AssertionError, match="not understood"):
        parse("rate(x[5m]) @ 1609746000")


@dataclass
class Exported:
    names: set[str] = field(default_factory=set)  # every series name the services' /metrics can show
    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # series -> label -> values seen


async def _scrape(runtime: ServiceRuntime) -> str:
    """/metrics of a runtime that has not started (building one does no I/O, and neither do these requests)."""
    transport = httpx.ASGITransport(app=runtime.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for route in OPERATIONAL_ROUTES:
            await http.get(route)
        return (await http.get("/metrics")).text


@pytest.fixture(scope="module")
async def exported() -> Exported:
    result = Exported()
    for runtime in runtimes().values():
        text = await _scrape(runtime)
        # Every family has a TYPE line, also one without series yet (a labelled metric nobody has touched);
        # a histogram `x` is stored by Prometheus as x_bucket, x_sum and x_count.
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
            result.names |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                result.names.add(sample.name)
                labels = result.labels.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    labels.setdefault(label, set()).add(value)
    assert PROMETHEUS_SERIES.isdisjoint(result.names), "a service exports a series Prometheus records itself"
    return result


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((MONITORING / name).read_text())
    return document


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    rule = _load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert "prometheusrule.yaml" in _load("kustomization.yaml")["resources"]
    groups = rule["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups), "rule group names must be unique"
    found = [r for group in groups for r in group["rules"]]
    assert found and all("alert" in r and "record" not in r for r in found), "alerting rules only"
    return found


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (code blocks left out)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", prose, re.MULTILINE)
    }


def test_every_alert_says_how_bad_what_and_where_its_runbook_is(rules: list[dict[str, Any]]) -> None:
    anchors = _anchors(README.read_text())
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"CollabKare[A-Z]\w+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "deploy/README.md", f"{name}: the runbook is a section of deploy/README.md"
        assert anchor in anchors, f"{name}: deploy/README.md has no section #{anchor}"
        # Stated on every alert, 0m included, so that not waiting is a decision; a pattern the CRD accepts.
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: for: {rule.get('for')!r}"


def test_every_expression_reads_only_series_the_services_export(
    rules: list[dict[str, Any]], exported: Exported
) -> None:
    known = exported.names | PROMETHEUS_SERIES
    for rule in rules:
        query = parse(rule["expr"])
        metrics = {metric for metric, _ in query.selectors}
        assert metrics, rule["alert"]
        assert metrics <= known, f"{rule['alert']}: no service exports {sorted(metrics - known)}"
        assert query.functions <= FUNCTIONS, f"{rule['alert']}: unknown functions {sorted(query.functions - FUNCTIONS)}"


def test_every_label_an_expression_or_annotation_names_exists(rules: list[dict[str, Any]], exported: Exported) -> None:
    services = set(runtimes())
    namespace = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text())["namespace"]
    for rule in rules:
        name = rule["alert"]
        query = parse(rule["expr"])
        available: set[str] = set()
        for metric, matchers in query.selectors:
            series = exported.labels.get(metric, {})
            available |= set(series) | TARGET_LABELS
            for label, op, value in matchers:
                if label not in TARGET_LABELS:
                    assert metric in exported.labels, f"{name}: {metric} shows no series to learn its labels from"
                    assert label in series, f"{name}: {metric} has no label {label}"
                if op in ("!~", "=~") and LITERAL_ALTERNATIVES.fullmatch(value):
                    values = set(value.split("|"))
                elif op in ("=", "!="):
                    values = {value}
                else:
                    continue  # a real regular expression (status=~"5.."): its label is checked, not its values
                seen = {"job": services, "namespace": {namespace}}.get(label) or series.get(label, set())
                assert values <= seen, f"{name}: {metric}{{{label}}} never takes {sorted(values - seen)}"
        assert query.grouping <= available, f"{name}: grouping by labels no series has: {query.grouping - available}"
        # What the annotations may show: the labels the expression keeps, and the rule's own.
        kept = (query.grouping if query.aggregated else available) | set(rule["labels"])
        if "absent" in query.functions:  # absent() returns one series without the labels of what it looks for
            kept = set(rule["labels"])
        shown = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        assert shown <= kept, f"{name}: annotations show labels the alert does not carry: {shown - kept}"


def test_every_service_has_its_own_down_alert(rules: list[dict[str, Any]]) -> None:
    down = [rule for rule in rules if rule["alert"] == "CollabKareServiceDown"]
    assert {rule["labels"]["job"] for rule in down} == set(runtimes())
    for rule in down:
        assert f'job="{rule["labels"]["job"]}"' in rule["expr"], rule["expr"]


def test_the_pod_monitor_labels_what_the_rules_select_on() -> None:
    """`job` is the service's name only because the PodMonitor takes it from app.kubernetes.io/name (the rendered
    selection of the Deployments' pods is checked in test_manifests.py)."""
    monitor = _load("podmonitor.yaml")
    assert "podmonitor.yaml" in _load("kustomization.yaml")["resources"]
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    (names,) = [e for e in monitor["spec"]["selector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/name"]
    assert (names["operator"], set(names["values"])) == ("In", set(runtimes()))
