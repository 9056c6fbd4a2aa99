"""Every overlay renders with `kubectl kustomize`, every object validates against the Kubernetes 1.30 and newest
schemas, every workload has probes, a drainable PodDisruptionBudget, resources and topology spread, every
service has a migration Job and does not migrate itself, every MAILSYNC_* variable the manifests set is a
setting of the service that gets it, and no production object carries a sandbox value. Each check is also run on
a copy of the rendered overlay with one thing removed or broken, to show it can fail."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from services.auth.settings import AuthSettings
from services.ingest.settings import IngestSettings
from services.outbound.settings import OutboundSettings
from services.runtime.production import sandbox_defaults
from services.runtime.settings import SHARED_PREFIX, ServiceSettings
from services.threading.settings import ThreadingSettings
from tests.deploy.rendered import OVERLAYS, SERVICES, find, of_kind, render

SETTINGS: dict[str, type[ServiceSettings]] = {
    "auth": AuthSettings,
    "ingest": IngestSettings,
    "threading": ThreadingSettings,
    "outbound": OutboundSettings,
}
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
# Kinds that are not Kubernetes' own: their operator validates them; here their shape is checked by hand.
CUSTOM_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}
WORKLOADS = ("Deployment", "StatefulSet")
OTEL_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
}
NATS_DRAIN_SECONDS = 5


def test_object_counts_per_overlay() -> None:
    counts = {overlay: Counter(obj["kind"] for obj in render(overlay)) for overlay in OVERLAYS}
    assert counts["production"]["Deployment"] == 5 and counts["dev"]["Deployment"] == 6
    assert counts["production"]["Job"] == counts["dev"]["Job"] == 4
    assert counts["production"]["Certificate"] == 5 and counts["dev"]["Certificate"] == 0


def schema_problems(objects: list[dict[str, Any]], version: str) -> list[str]:
    problems = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return problems


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    assert schema_problems(render(overlay), version) == []


def test_a_schema_violation_is_caught() -> None:
    objects = render("production")
    find(objects, "Deployment", "auth")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"][
        "port"
    ] = "health"  # a gRPC probe's port must be a number
    find(objects, "Service", "nats")["spec"]["bogus"] = True
    assert len(schema_problems(objects, "1.30.0")) == 2


def certificate_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Each service's TLS Secret is issued by a Certificate naming the host its clients dial."""
    certificates = {c["spec"]["secretName"]: c for c in of_kind(objects, "Certificate")}
    problems = []
    for service in SERVICES:
        pod = find(objects, "Deployment", service)["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            secret = volume.get("secret", {}).get("secretName", "")
            if not secret.endswith("-grpc-tls"):
                continue
            certificate = certificates.get(secret)
            if certificate is None:
                problems.append(f"{service}: nothing issues {secret}")
            elif service not in certificate["spec"]["dnsNames"] or certificate["spec"]["issuerRef"][
                "name"
            ] not in {i["metadata"]["name"] for i in of_kind(objects, "Issuer")}:
                problems.append(f"{service}: {secret} names the wrong host or issuer")
    return problems


def test_production_certificates_cover_every_service_secret() -> None:
    objects = render("production")
    assert certificate_problems(objects) == []
    objects.remove(find(objects, "Certificate", "ingest-grpc"))
    assert certificate_problems(objects) == ["ingest: nothing issues ingest-grpc-tls"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"]["containers"])


def workload_problems(objects: list[dict[str, Any]]) -> Iterator[str]:
    """Probes, resources, topology spread and a PodDisruptionBudget that never blocks a drain, per workload."""
    budgets = of_kind(objects, "PodDisruptionBudget")
    for workload in of_kind(objects, *WORKLOADS):
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for container in containers(workload):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    yield f"{name}: no {probe}"
            resources = container.get("resources", {})
            if not {"cpu", "memory"} <= set(resources.get("requests", {})) or "memory" not in resources.get(
                "limits", {}
            ):
                yield f"{name}: requests (cpu, memory) and a memory limit"
        spread = workload["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        if not any(c["labelSelector"].get("matchLabels", {}).items() <= labels.items() for c in spread):
            yield f"{name}: no topology spread over its own pods"
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if len(matching) != 1:
            yield f"{name}: {len(matching)} PodDisruptionBudgets"
            continue
        budget = matching[0]["spec"]
        replicas = workload["spec"].get("replicas", 1)
        if "minAvailable" in budget and int(budget["minAvailable"]) >= replicas:
            yield f"{name}: minAvailable {budget['minAvailable']} with {replicas} replica(s) blocks every drain"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_workload_has_probes_resources_spread_and_a_drainable_budget(overlay: str) -> None:
    assert list(workload_problems(render(overlay))) == []


def test_a_missing_budget_probe_or_spread_and_a_blocking_budget_are_caught() -> None:
    objects = render("dev")
    objects.remove(find(objects, "PodDisruptionBudget", "nats"))
    del containers(find(objects, "Deployment", "ingest"))[0]["readinessProbe"]
    del find(objects, "Deployment", "otel-collector")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    # The dev overlay's old budget: minAvailable 1 with one replica.
    find(objects, "PodDisruptionBudget", "auth")["spec"] = {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "auth"}},
    }
    assert sorted(workload_problems(objects)) == [
        "auth: minAvailable 1 with 1 replica(s) blocks every drain",
        "ingest: no readinessProbe",
        "nats: 0 PodDisruptionBudgets",
        "otel-collector: no topology spread over its own pods",
    ]


def config_data(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    return dict(find(objects, "ConfigMap", name).get("data") or {})


def service_problems(objects: list[dict[str, Any]]) -> Iterator[str]:
    """Liveness apart from readiness, a preStop drain within the grace period, a migration Job per service."""
    config = config_data(objects, "mailsync-config")
    if config.get("MAILSYNC_MIGRATE_ON_START") != "false":
        yield "the services migrate at start"
    grace = float(config["MAILSYNC_GRPC_SHUTDOWN_GRACE_SECONDS"])
    jobs = {tuple(c["args"]) for job in of_kind(objects, "Job") for c in containers(job)}
    for service in SERVICES:
        deployment = find(objects, "Deployment", service)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if container.get("livenessProbe", {}).get("grpc", {}).get("service") != "liveness":
            yield f"{service}: liveness is not the process-alive check"
        if container.get("readinessProbe", {}).get("grpc", {}).get("service", "") != "":
            yield f"{service}: readiness does not cover the dependencies"
        if "startupProbe" not in container:
            yield f"{service}: no startupProbe"
        sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if sleep < 1:
            yield f"{service}: no preStop drain"
        if pod["terminationGracePeriodSeconds"] <= sleep + 2 * grace + NATS_DRAIN_SECONDS:
            yield f"{service}: terminationGracePeriodSeconds too short for the drain and the graceful stop"
        if ("python", "-m", f"services.{service}", "migrate") not in jobs:
            yield f"{service}: no migration Job"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_service_has_its_migration_job_split_probes_and_a_drain(overlay: str) -> None:
    assert list(service_problems(render(overlay))) == []


def test_a_missing_job_a_shared_probe_and_no_drain_are_caught() -> None:
    objects = render("production")
    objects.remove(find(objects, "Job", "threading-migrate"))
    auth = containers(find(objects, "Deployment", "auth"))[0]
    auth["livenessProbe"] = auth["readinessProbe"]
    del containers(find(objects, "Deployment", "outbound"))[0]["lifecycle"]
    assert sorted(service_problems(objects)) == [
        "auth: liveness is not the process-alive check",
        "outbound: no preStop drain",
        "threading: no migration Job",
    ]


def read_by(settings: type[ServiceSettings], variable: str) -> bool:
    return any(variable in settings.variable_names(field) for field in settings.model_fields)


def environment_problems(objects: list[dict[str, Any]]) -> Iterator[str]:
    """Each MAILSYNC_* variable a service container gets is a setting of that service; shared ConfigMap keys are
    a setting of some service; OTEL_* are the standard variables the runtime reads."""
    shared = config_data(objects, "mailsync-config")
    for key in shared:
        if key.startswith(SHARED_PREFIX) and not any(read_by(s, key) for s in SETTINGS.values()):
            yield f"mailsync-config: {key} is no service's setting"
        elif not key.startswith(SHARED_PREFIX) and key not in OTEL_VARIABLES:
            yield f"mailsync-config: {key} is not a known variable"
    for workload in of_kind(objects, "Deployment", "Job"):
        for container in containers(workload):
            args = container.get("args", [])
            if args[:2] != ["python", "-m"] or not args[2].startswith("services."):
                continue
            service = args[2].removeprefix("services.")
            for variable in container.get("env", []):
                name = variable["name"]
                if name.startswith(SHARED_PREFIX) and not read_by(SETTINGS[service], name):
                    yield f"{workload['metadata']['name']}: {name} is not a setting of {service}"
                elif not name.startswith(SHARED_PREFIX) and name not in OTEL_VARIABLES:
                    yield f"{workload['metadata']['name']}: {name} is not a known variable"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_variable_the_manifests_set_is_a_setting(overlay: str) -> None:
    assert list(environment_problems(render(overlay))) == []


def test_a_misspelt_or_misplaced_variable_is_caught() -> None:
    objects = render("production")
    find(objects, "ConfigMap", "mailsync-config")["data"]["MAILSYNC_NATS_ULR"] = "nats://nats:4222"
    containers(find(objects, "Deployment", "auth"))[0]["env"].append(
        {"name": "MAILSYNC_INGEST_PUSH_AUDIENCE", "value": "https://x.acme-corp.com/gmail/push"}
    )
    assert sorted(environment_problems(objects)) == [
        "auth: MAILSYNC_INGEST_PUSH_AUDIENCE is not a setting of auth",
        "mailsync-config: MAILSYNC_NATS_ULR is no service's setting",
    ]


SANDBOX_MARKERS = ("sandbox", "127.0.0.1", "localhost", "gmail-sandbox")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def sandbox_values_in(objects: list[dict[str, Any]]) -> list[str]:
    defaults = {value for settings in SETTINGS.values() for value in sandbox_defaults(settings).values()}
    found = []
    for obj in objects:
        for text in strings(obj):
            if text in defaults or any(marker in text.lower() for marker in SANDBOX_MARKERS):
                found.append(f"{obj['kind']}/{obj['metadata']['name']}: {text[:80]!r}")
    return found


def test_no_production_object_carries_a_sandbox_value() -> None:
    assert sandbox_values_in(render("production")) == []
    # Negative control: the dev overlay is full of them, and one slipped into production is caught.
    assert sandbox_values_in(render("dev"))
    objects = render("production")
    find(objects, "ConfigMap", "mailsync-production")["data"]["MAILSYNC_INGEST_PUSH_AUDIENCE"] = (
        "http://127.0.0.1:8082/gmail/push"
    )
    assert sandbox_values_in(objects) == ["ConfigMap/mailsync-production: 'http://127.0.0.1:8082/gmail/push'"]


def test_production_asks_for_every_value_the_services_refuse_without() -> None:
    """Each production rule's variable reaches its service from the operator's mailsync-production ConfigMap."""
    objects = render("production")
    operator_keys = set(config_data(objects, "mailsync-production"))
    for service, settings in SETTINGS.items():
        for field in sandbox_defaults(settings):
            variable = f"{settings.service_env_prefix()}{field.upper()}"
            if field.startswith("google_client"):
                continue  # a Secret (mailsync-secrets), not the ConfigMap
            assert variable in operator_keys, variable
            env = {e["name"]: e for e in containers(find(objects, "Deployment", service))[0]["env"]}
            assert env[variable]["valueFrom"]["configMapKeyRef"]["name"] == "mailsync-production"


def test_the_stream_replicas_follow_the_nats_nodes() -> None:
    for overlay in OVERLAYS:
        objects = render(overlay)
        nodes = find(objects, "StatefulSet", "nats")["spec"]["replicas"]
        assert int(config_data(objects, "mailsync-config")["MAILSYNC_STREAM_REPLICAS"]) == nodes, overlay
        routes = re.findall(r"nats://(nats-\d)\.", config_data(objects, "nats-config")["nats.conf"])
        assert len(routes) == (nodes if nodes > 1 else 0), overlay


def test_services_listen_on_every_interface_in_a_pod() -> None:
    for overlay in OVERLAYS:
        config = config_data(render(overlay), "mailsync-config")
        assert (config["MAILSYNC_GRPC_HOST"], config["MAILSYNC_HTTP_HOST"]) == ("0.0.0.0", "0.0.0.0"), overlay
