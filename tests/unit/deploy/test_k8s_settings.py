"""The Kubernetes base sets only variables a service reads, makes the services listen beyond loopback, and gives
a pod time to stop gracefully before it is killed."""

from __future__ import annotations

import re
from pathlib import Path

from services.auth.settings import AuthSettings
from services.ingest.settings import IngestSettings
from services.outbound.settings import OutboundSettings
from services.runtime.settings import SHARED_PREFIX, ServiceSettings
from services.threading.settings import ThreadingSettings

BASE = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"
SETTINGS: tuple[type[ServiceSettings], ...] = (
    AuthSettings,
    IngestSettings,
    ThreadingSettings,
    OutboundSettings,
)
NATS_DRAIN_SECONDS = 5


def config_map() -> dict[str, str]:
    values = {}
    for match in re.finditer(
        r'^  ([A-Z0-9_]+): "([^"]*)"$', (BASE / "config.yaml").read_text(), re.MULTILINE
    ):
        values[match.group(1)] = match.group(2)
    return values


def deployment_variables() -> set[str]:
    names = set()
    for path in BASE.glob("*.yaml"):
        names |= set(re.findall(r"- name: (MAILSYNC_[A-Z0-9_]+)", path.read_text()))
    return names


def read_by_a_service(variable: str) -> bool:
    """True when some service's settings read `variable` (shared MAILSYNC_<FIELD> or MAILSYNC_<SERVICE>_<FIELD>)."""
    for settings in SETTINGS:
        for field in settings.model_fields:
            if variable in (
                f"{SHARED_PREFIX}{field.upper()}",
                f"{settings.service_env_prefix()}{field.upper()}",
            ):
                return True
    return False


def test_every_mailsync_variable_of_the_base_is_read_by_a_service() -> None:
    # Negative control: a variable no settings class has.
    assert not read_by_a_service("MAILSYNC_LOG_FORMAT")
    assert read_by_a_service("MAILSYNC_AUTH_TARGET")
    variables = {name for name in config_map() if name.startswith(SHARED_PREFIX)} | deployment_variables()
    unread = sorted(name for name in variables if not read_by_a_service(name))
    assert unread == []


def test_services_listen_on_every_interface_in_a_pod() -> None:
    values = config_map()
    assert values["MAILSYNC_GRPC_HOST"] == "0.0.0.0"
    assert values["MAILSYNC_HTTP_HOST"] == "0.0.0.0"


def test_pods_get_longer_to_stop_than_the_services_graceful_stop_takes() -> None:
    grace = float(config_map()["MAILSYNC_GRPC_SHUTDOWN_GRACE_SECONDS"])
    # gRPC stop(grace), then background tasks get the grace again, then NATS drains.
    needed = 2 * grace + NATS_DRAIN_SECONDS
    for service in ("auth", "ingest", "threading", "outbound"):
        text = (BASE / f"{service}.yaml").read_text()
        (period,) = re.findall(r"terminationGracePeriodSeconds: (\d+)", text)
        assert int(period) > needed, service
