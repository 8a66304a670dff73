"""What the deploy/k8s tests share: rendering an overlay, finding the tools, and what the code
says each service consumes and accepts as settings."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
SCHEMAS = K8S / "schemas"
TOOLS_BIN = REPO / ".tools" / "bin"
# The Kubernetes version whose schemas validate the core kinds (kubernetes-validate bundles them).
KUBERNETES_VERSION = "1.33.0"
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """The path of a tool: .tools/bin (make deploy-tools), the PATH, or Go's bin folder."""
    for candidate in (TOOLS_BIN / name, Path.home() / "go" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is missing: run `make install` (or `make deploy-tools`)")
    return found


@functools.cache
def render_text(overlay: str) -> str:
    """`kubectl kustomize` of an overlay (kustomize itself where kubectl is missing)."""
    path = K8S / "overlays" / overlay
    try:
        argv = [tool("kubectl"), "kustomize", str(path)]
    except AssertionError:
        argv = [tool("kustomize"), "build", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(manifest, pod spec) of every workload and Job."""
    for manifest in manifests:
        if manifest["kind"] in (*WORKLOAD_KINDS, "Job"):
            yield manifest, manifest["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {name: item["value"] for name, item in env_of(container).items() if "value" in item}


# --- what the code says ---------------------------------------------------------------------


def settings_class(service: str) -> type[BaseSettings]:
    """Each service's one pydantic-settings class (config.py)."""
    module = importlib.import_module(f"kiln_{service}.config")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseSettings)
        and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"kiln_{service}.config: {classes}"
    return classes[0]


def settings_env_names(service: str) -> set[str]:
    cls = settings_class(service)
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def consumed_topics(service: str) -> set[str]:
    """The Kafka topics that carry the event types a service's handlers take (the same source
    tests/unit/test_topic_consumers.py holds the registry to)."""
    from kiln_contracts import topic_of
    from tests.unit.test_topic_consumers import consumed_by_service

    return {topic_of(event_type) for event_type in consumed_by_service()[service]}


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
