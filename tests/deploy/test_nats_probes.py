"""The NATS StatefulSet's probes, asked of a real three-node cluster on loopback: readiness (the manifest's own
path) fails on a node that has no JetStream meta leader, liveness does not (restarting a node that lost its
peers would not bring them back). Negative control: the old readiness path says ready without a leader."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.deploy.rendered import find, render
from tests.fixtures.nats_cluster import healthz

OLD_READINESS = "/healthz?js-enabled-only=true"
PATIENCE_SECONDS = 120.0

pytestmark = pytest.mark.timeout(300)


def probe_paths() -> dict[str, str]:
    (container,) = find(render("production"), "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    return {probe: container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}


def query(path: str) -> str:
    return path.removeprefix("/healthz")


def test_readiness_needs_a_jetstream_leader_and_liveness_does_not(nats_cluster: Any) -> None:
    paths = probe_paths()
    survivor = nats_cluster.nodes[0].monitor_port
    assert healthz(survivor, query(paths["readinessProbe"]))[0] == 200, "a formed cluster is ready"

    nats_cluster.stop_node(1)
    nats_cluster.stop_node(2)
    deadline = time.monotonic() + PATIENCE_SECONDS
    status, body = healthz(survivor, query(paths["readinessProbe"]))
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = healthz(survivor, query(paths["readinessProbe"]))
    assert status == 503, f"one node of three stayed ready: {body}"
    assert healthz(survivor, query(paths["livenessProbe"]))[0] == 200, "a lonely node is still alive"
    assert healthz(survivor, query(OLD_READINESS))[0] == 200, "negative control: the old path says ready"

    nats_cluster.start_node(1)
    nats_cluster.wait_until_healthy([0, 1])
    assert healthz(survivor, query(paths["readinessProbe"]))[0] == 200, "ready again with a quorum"
