"""deploy/k8s rendered and checked offline: every overlay renders, core kinds validate strictly
against a pinned Kubernetes version, custom resources against their CRD schemas (kubeconform),
and the manifests agree with the code (topics, consumer groups, settings, probes, GPUs)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kiln_contracts import INTERNAL_TOPICS, KAFKA_TOPICS, TOPICS
from kiln_runtime.health import health_router
from tests.deploy.deploy_support import (
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    SCHEMAS,
    SERVICES,
    Manifest,
    consumed_topics,
    env_of,
    literal_env,
    load_module,
    named,
    of_kind,
    pod_specs,
    render,
    render_text,
    settings_env_names,
    tool,
    workloads,
)

CORE_KINDS = {
    "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Job", "Namespace",
    "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Service",
    "ServiceAccount", "StatefulSet",
}  # fmt: skip
CUSTOM_KINDS = {
    "Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject", "Cluster", "Database",
    "ServiceMonitor", "PodMonitor", "PrometheusRule",
}  # fmt: skip
# Environment variables that are not Kiln settings, each read by a library the code uses.
FOREIGN_ENV = {
    "PGUSER": "the PostgreSQL driver's user when the URL names none (libpq and asyncpg)",
    "PGPASSWORD": "the PostgreSQL driver's password when the URL names none",
    "AWS_ACCESS_KEY_ID": "boto3's credential chain (S3 results)",
    "AWS_SECRET_ACCESS_KEY": "boto3's credential chain (S3 results)",
    "HOME": "PyTriton's workspace under a read-only root",
}
MODELHOST_SOURCES = (
    REPO / "services" / "modelhost" / "kiln_modelhost",
    REPO / "services" / "inference" / "kiln_inference" / "triton_server.py",
)

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


@overlays
def test_the_overlay_renders_every_kind_it_needs(overlay: str) -> None:
    kinds = {m["kind"] for m in render(overlay)}
    assert kinds <= CORE_KINDS | CUSTOM_KINDS, kinds - CORE_KINDS - CUSTOM_KINDS
    assert CUSTOM_KINDS <= kinds, CUSTOM_KINDS - kinds
    assert not any(m["kind"] == "Secret" for m in render(overlay)), "secrets are only referenced"


@overlays
def test_core_kinds_validate_strictly(overlay: str) -> None:
    problems = []
    for manifest in render(overlay):
        if manifest["kind"] not in CORE_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error}")
    assert not problems, "\n".join(problems)


def kubeconform(text: str) -> subprocess.CompletedProcess[str]:
    location = str(SCHEMAS) + "/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"
    argv = [
        tool("kubeconform"), "-strict", "-summary", "-output", "json",
        "-skip", ",".join(sorted(CORE_KINDS)), "-schema-location", location, "-",
    ]  # fmt: skip
    return subprocess.run(argv, input=text, capture_output=True, text=True, timeout=120)


@overlays
def test_custom_resources_validate_against_their_crds(overlay: str) -> None:
    result = kubeconform(render_text(overlay))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    expected = sum(1 for m in render(overlay) if m["kind"] in CUSTOM_KINDS)
    assert summary["valid"] == expected, summary
    assert summary["invalid"] == summary["errors"] == 0, summary


def test_kubeconform_refuses_a_field_the_crd_lacks() -> None:
    # The schemas really are read (a missing one would be an error, not a pass).
    bad = render_text("dev").replace("lagThreshold:", "lagThreshold:", 1)
    bad = bad.replace("  topicName: job.submitted\n", "  topicName: job.submitted\n  typo: 1\n")
    result = kubeconform(bad)
    assert result.returncode != 0
    assert "typo" in result.stdout


def test_the_schemas_in_the_repository_are_the_ones_used() -> None:
    used = {
        f"{m['apiVersion'].split('/')[0]}/{m['kind'].lower()}_{m['apiVersion'].split('/')[1]}.json"
        for overlay in OVERLAYS
        for m in render(overlay)
        if m["kind"] in CUSTOM_KINDS
    }
    present = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*.json")}
    assert used == present


# --- topics -----------------------------------------------------------------------------------


def test_the_topics_file_is_generated_from_the_registry() -> None:
    generator = load_module(K8S / "kafka_topics.py", "kiln_k8s_kafka_topics")
    assert generator.OUTPUT.read_text() == generator.render(), (
        "deploy/k8s/base/topics.yaml is stale: run uv run python deploy/k8s/kafka_topics.py"
    )


@overlays
def test_kafka_topics_equal_the_registry(overlay: str) -> None:
    topics = {t["spec"]["topicName"]: t for t in of_kind(render(overlay), "KafkaTopic")}
    assert set(topics) == set(KAFKA_TOPICS) | set(INTERNAL_TOPICS)
    assert set(topics) >= {spec.topic for spec in TOPICS.values()}
    replicas = 3 if overlay == "production" else 1
    for name, spec in {**KAFKA_TOPICS, **INTERNAL_TOPICS}.items():
        topic = topics[name]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "kiln"
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["config"]["retention.ms"] == spec.retention_ms
        assert topic["spec"]["replicas"] == replicas
    brokers = named(render(overlay), "KafkaNodePool", "dual-role")["spec"]["replicas"]
    assert replicas <= brokers


# --- scaling ------------------------------------------------------------------------------------


@overlays
def test_keda_scales_each_consumer_on_its_own_groups_topics(overlay: str) -> None:
    manifests = render(overlay)
    partitions = {spec.partitions for spec in TOPICS.values()}
    assert len(partitions) == 1, "topics are co-partitioned"
    scaled = {m["spec"]["scaleTargetRef"]["name"]: m for m in of_kind(manifests, "ScaledObject")}
    # The gateway scales on CPU (HorizontalPodAutoscaler).
    assert set(scaled) == {"billing", "inference", "notifier", "scheduler"}
    for service, scaled_object in scaled.items():
        triggers = scaled_object["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        groups = {t["metadata"]["consumerGroup"] for t in triggers}
        topics = [t["metadata"]["topic"] for t in triggers]
        assert groups == {service}, f"{service} scales on {groups}"
        assert sorted(topics) == sorted(consumed_topics(service)), service
        for trigger in triggers:
            assert trigger["metadata"]["bootstrapServers"] == "kiln-kafka-bootstrap:9092"
            assert trigger["metadata"].get("allowIdleConsumers", "false") == "false"
        assert scaled_object["spec"]["maxReplicaCount"] <= min(partitions)
        target = scaled_object["spec"]["scaleTargetRef"]
        kind = target.get("kind", "Deployment")
        workload = named(manifests, kind, target["name"])
        container = workload["spec"]["template"]["spec"]["containers"][0]
        # The group KEDA watches is the one the service joins: its KILN_SERVICE_NAME.
        assert literal_env(container)["KILN_SERVICE_NAME"] == service


@overlays
def test_the_gateway_scales_on_cpu(overlay: str) -> None:
    manifests = render(overlay)
    hpa = named(manifests, "HorizontalPodAutoscaler", "gateway")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


# --- settings -----------------------------------------------------------------------------------


def configmap_keys(manifests: list[Manifest], name: str) -> set[str]:
    return set(named(manifests, "ConfigMap", name)["data"])


def modelhost_env_names() -> set[str]:
    text = ""
    for source in MODELHOST_SOURCES:
        files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
        text += "".join(f.read_text() for f in files if f.exists())
    names = set(re.findall(r"\bKILN_[A-Z0-9_]+\b", text))
    assert names, "no model host source found"
    return names


@overlays
def test_every_env_key_is_a_setting_of_its_service(overlay: str) -> None:
    manifests = render(overlay)
    problems = []
    for manifest, pod in pod_specs(manifests):
        for container in pod["containers"]:
            service = manifest["metadata"]["labels"]["app.kubernetes.io/name"]
            accepted = (
                modelhost_env_names() if service == "modelhost" else settings_env_names(service)
            )
            keys = set(env_of(container))
            for source in container.get("envFrom", []):
                keys |= configmap_keys(manifests, source["configMapRef"]["name"])
            for key in sorted(keys):
                if key.startswith("KILN_") and key not in accepted:
                    problems.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {key}")
                elif not key.startswith("KILN_") and key not in FOREIGN_ENV:
                    problems.append(f"{manifest['metadata']['name']}: {key} is not known")
    assert not problems, "not settings of the service:\n" + "\n".join(problems)


@overlays
def test_secrets_are_referenced_never_written(overlay: str) -> None:
    secret_like = re.compile(r"(TOKEN|SECRET|PASSWORD|SIGNING_KEY|ACCESS_KEY)")
    for manifest, pod in pod_specs(render(overlay)):
        for container in pod["containers"]:
            for name, item in env_of(container).items():
                if secret_like.search(name):
                    assert "secretKeyRef" in item.get("valueFrom", {}), f"{name} is written"
            url = literal_env(container).get("KILN_DATABASE_URL", "")
            assert "@" not in url, f"{manifest['metadata']['name']}: credentials in the URL"


# --- pods ---------------------------------------------------------------------------------------


@overlays
def test_every_pod_is_non_root_read_only_and_limited(overlay: str) -> None:
    manifests = render(overlay)
    for manifest, pod in pod_specs(manifests):
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        named(manifests, "ServiceAccount", pod["serviceAccountName"])
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name


@overlays
def test_every_workload_has_a_pdb_and_a_scrape_config(overlay: str) -> None:
    manifests = render(overlay)
    pdbs = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: m
            for m in of_kind(manifests, "PodDisruptionBudget")}  # fmt: skip
    monitors = {m["metadata"]["name"] for m in of_kind(manifests, "ServiceMonitor")}
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        assert name in pdbs, f"{name} has no PodDisruptionBudget"
        if workload["spec"].get("replicas", 1) == 1:
            assert "maxUnavailable" in pdbs[name]["spec"], f"{name}: the PDB blocks drains"
        if name == "modelhost":
            assert named(manifests, "PodMonitor", "modelhost")
        else:
            assert name in monitors, f"{name} has no ServiceMonitor"
    assert monitors == set(SERVICES)


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(ports[port])


def probe_paths(container: dict[str, Any]) -> dict[str, tuple[int, str]]:
    found = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get is not None:
            found[probe] = (container_port(container, get["port"]), get["path"])
    return found


@overlays
def test_service_probes_ask_the_port_and_paths_the_service_serves(overlay: str) -> None:
    served = {route.path for route in health_router(lambda: None).routes}  # type: ignore[attr-defined]
    manifests = render(overlay)
    for service in SERVICES:
        workload = next(m for m in workloads(manifests) if m["metadata"]["name"] == service)
        container = workload["spec"]["template"]["spec"]["containers"][0]
        probes = probe_paths(container)
        assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}, service
        http_port = int(literal_env(container)["KILN_HTTP_PORT"])
        for probe, (port, path) in probes.items():
            assert port == http_port, f"{service} {probe} asks {port}, serves {http_port}"
            assert path in served, f"{service} {probe}: {path} not in {served}"
        assert probes["readinessProbe"][1] == "/readyz"
        assert probes["livenessProbe"][1] == "/healthz"
        monitor = named(manifests, "ServiceMonitor", service)
        assert monitor["spec"]["endpoints"][0]["path"] in served
        service_port = named(manifests, "Service", service)["spec"]["ports"][0]
        assert container_port(container, service_port["targetPort"]) == http_port


def test_the_model_host_is_ready_only_when_every_catalog_model_is() -> None:
    from kiln_runtime.catalog import load_catalog

    catalog = load_catalog(None)
    served = {m.triton_model for m in catalog.models} | {catalog.sandbox_triton_model}
    for overlay in OVERLAYS:
        workload = named(render(overlay), "Deployment", "modelhost")
        container = workload["spec"]["template"]["spec"]["containers"][0]
        command = container["readinessProbe"]["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        assert set(command[3:]) == served
        env = literal_env(container)
        assert container_port(container, "http") == int(env["KILN_TRITON_HTTP_PORT"])
        assert container_port(container, "grpc") == int(env["KILN_TRITON_GRPC_PORT"])
        assert container_port(container, "metrics") == int(env["KILN_TRITON_METRICS_PORT"])
        assert f":{env['KILN_TRITON_HTTP_PORT']}/" in command[2]


@overlays
def test_only_the_model_host_asks_for_a_gpu(overlay: str) -> None:
    asking = set()
    for manifest, pod in pod_specs(render(overlay)):
        for container in pod["containers"]:
            resources = container.get("resources", {})
            wanted = {**resources.get("requests", {}), **resources.get("limits", {})}
            if any(key.startswith("nvidia.com/") for key in wanted):
                asking.add(manifest["metadata"]["name"])
    if overlay == "production":
        assert asking == {"modelhost"}
        pod = named(render(overlay), "Deployment", "modelhost")["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    else:
        assert asking == set(), "dev runs the model host on the CPU"


@overlays
def test_inference_talks_to_the_model_host_it_deploys(overlay: str) -> None:
    manifests = render(overlay)
    container = named(manifests, "StatefulSet", "inference")["spec"]["template"]["spec"][
        "containers"
    ][0]
    host, port = literal_env(container)["KILN_TRITON_GRPC_URL"].split(":")
    service = named(manifests, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    assert env_of(container)["KILN_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )


# --- network ------------------------------------------------------------------------------------


@overlays
def test_only_the_gateway_takes_traffic_from_outside(overlay: str) -> None:
    policies = of_kind(render(overlay), "NetworkPolicy")
    deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:  # open to every source
                selector = policy["spec"]["podSelector"]["matchLabels"]
                assert selector == {"app.kubernetes.io/name": "gateway"}, policy["metadata"]


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression  # the only one the manifests use
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _port_allowed(rule: dict[str, Any], number: int, names: dict[str, int]) -> bool:
    return any(
        p["port"] == number or names.get(str(p["port"])) == number for p in rule.get("ports", [])
    )


@overlays
def test_the_console_health_view_reaches_every_component_it_names(overlay: str) -> None:
    """Each URL of the gateway's KILN_CONSOLE_HEALTH_URLS names a Service and port that exist,
    and the network policies let the gateway's request out and into the component's pods, and
    no policy lets the gateway reach the model host."""
    manifests = render(overlay)
    gateway = named(manifests, "Deployment", "gateway")["spec"]["template"]
    urls = json.loads(literal_env(gateway["spec"]["containers"][0])["KILN_CONSOLE_HEALTH_URLS"])
    # Not the model host: its HTTP port is Triton's whole API (model control included).
    assert set(urls) == {"billing", "scheduler", "inference", "notifier"}
    policies = of_kind(manifests, "NetworkPolicy")
    gateway_labels = gateway["metadata"]["labels"]
    for component, url in urls.items():
        match = re.fullmatch(r"http://([a-z-]+):(\d+)(/\S+)", url)
        assert match, url
        host, port, path = match.group(1), int(match.group(2)), match.group(3)
        service = named(manifests, "Service", host)
        [service_port] = [p for p in service["spec"]["ports"] if p["port"] == port]
        pods = [
            (m, spec)
            for m, spec in pod_specs(
                of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet")
            )
            if _labels_match(
                {"matchLabels": service["spec"]["selector"]},
                m["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert len(pods) == 1, (component, host)
        workload, pod = pods[0]
        names = {
            p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])
        }
        target = service_port.get("targetPort", port)
        number = names.get(str(target), target)
        assert number in names.values(), (component, target)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert path == "/readyz", url
        ingress = any(
            _labels_match(p["spec"]["podSelector"], labels)
            and any(
                any(
                    _labels_match(f["podSelector"], gateway_labels)
                    for f in rule.get("from", [])
                    if "podSelector" in f and "namespaceSelector" not in f  # this namespace
                )
                and _port_allowed(rule, number, names)
                for rule in p["spec"].get("ingress", [])
            )
            for p in policies
        )
        egress = any(
            _labels_match(p["spec"]["podSelector"], gateway_labels)
            and any(
                any(
                    _labels_match(t["podSelector"], labels)
                    for t in rule.get("to", [])
                    if "podSelector" in t and "namespaceSelector" not in t
                )
                and _port_allowed(rule, number, {})
                for rule in p["spec"].get("egress", [])
            )
            for p in policies
        )
        assert ingress, f"no policy lets the gateway into {component}'s pods on {number}"
        assert egress, f"no policy lets the gateway out to {component}'s pods on {number}"
    modelhost = named(manifests, "Deployment", "modelhost")["spec"]["template"]["metadata"]
    assert not any(
        _labels_match(p["spec"]["podSelector"], modelhost["labels"])
        and any(
            _labels_match(f["podSelector"], gateway_labels)
            for rule in p["spec"].get("ingress", [])
            for f in rule.get("from", [])
            if "podSelector" in f
        )
        for p in policies
    )


# --- migrations ---------------------------------------------------------------------------------


@overlays
def test_migration_jobs_cover_every_database_of_the_services(overlay: str) -> None:
    manifests = render(overlay)
    jobs = {m["metadata"]["name"]: m for m in of_kind(manifests, "Job")}
    databases = {d["spec"]["name"] for d in of_kind(manifests, "Database")}
    assert set(jobs) == {f"{db}-migrate" for db in databases}
    for db in databases:
        container = named(manifests, "Deployment", db)["spec"]["template"]["spec"]["containers"][0]
        job = jobs[f"{db}-migrate"]["spec"]["template"]["spec"]["containers"][0]
        assert job["image"] == container["image"]
        assert literal_env(job)["KILN_DATABASE_URL"] == literal_env(container)["KILN_DATABASE_URL"]


@pytest.mark.parametrize("service", ["gateway", "billing", "scheduler", "notifier"])
def test_each_migration_job_makes_its_services_schema(service: str, tmp_path: Path) -> None:
    """Run the Job's command on an empty SQLite database, then once more (nothing to do); the
    schema it made is every table the service declares."""
    job = named(render("dev"), "Job", f"{service}-migrate")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", f"kiln_{service}.migrate"]
    database = tmp_path / f"{service}.db"
    env = {**os.environ, "KILN_DATABASE_URL": f"sqlite:///{database}"}
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    made = asyncio.run(table_names(env["KILN_DATABASE_URL"]))
    assert declared_tables(service) <= made, declared_tables(service) - made


async def table_names(url: str) -> set[str]:
    from sqlalchemy import inspect

    from kiln_runtime.db import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()
    return set(names)


def declared_tables(service: str) -> set[str]:
    import importlib

    models = importlib.import_module(f"kiln_{service}.tables")
    if hasattr(models, "make_tables"):
        return set(models.make_tables().metadata.tables)
    return set(models.Base.metadata.tables)
