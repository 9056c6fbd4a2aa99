"""Each overlay's rendered NetworkPolicies allow every flow of the architecture and nothing else (a small policy
evaluator over the rendered objects: pod A -> pod B on port P). Negative controls: the same overlay with one rule
removed, or one rule widened, is caught."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.flows import actual_flows, expected_flows, table
from tests.deploy.network_policy import Endpoint, PolicySet, Port
from tests.deploy.rendered import OVERLAYS, find, render


def differences(objects: list[dict[str, Any]], overlay: str) -> tuple[set[Any], set[Any]]:
    actual, pods = actual_flows(objects)
    expected = expected_flows(overlay, pods)
    return expected - actual, actual - expected


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_policies_allow_exactly_the_flows_of_the_architecture(overlay: str) -> None:
    missing, extra = differences(render(overlay), overlay)
    assert not missing and not extra, f"missing:\n{table(missing)}\nextra:\n{table(extra)}"


def test_removing_the_nats_route_rule_is_caught() -> None:
    objects = render("production")
    find(objects, "NetworkPolicy", "nats")["spec"]["egress"] = []
    missing, extra = differences(objects, "production")
    assert missing == {("nats", "nats", "6222/TCP")} and not extra


def test_removing_dns_is_caught_for_every_pod() -> None:
    objects = render("production")
    objects.remove(find(objects, "NetworkPolicy", "dns-egress"))
    missing, _ = differences(objects, "production")
    assert {flow[1] for flow in missing} == {"kube-dns"}
    assert {flow[0] for flow in missing} >= {"nats", "otel-collector", "auth", "auth-migrate"}


def test_removing_the_collectors_export_is_caught() -> None:
    objects = render("production")
    find(objects, "NetworkPolicy", "otel-collector")["spec"]["egress"] = []
    missing, _ = differences(objects, "production")
    assert missing == {("otel-collector", "otel-gateway", "4317/TCP")}


def test_widening_a_rule_is_caught() -> None:
    objects = render("production")
    # threading may call anything on any port: every destination that does not refuse it on its own side shows.
    find(objects, "NetworkPolicy", "threading")["spec"]["egress"].append({})
    missing, extra = differences(objects, "production")
    assert not missing
    assert {("threading", "other-namespace", "8080/TCP"), ("threading", "cloud-metadata", "443/TCP")} <= extra
    # auth's own ingress rule still refuses threading: both sides count.
    assert ("threading", "auth", "50051/TCP") not in extra


def test_dropping_the_private_range_exceptions_is_caught() -> None:
    objects = render("production")
    for rule in find(objects, "NetworkPolicy", "auth")["spec"]["egress"]:
        for peer in rule.get("to") or []:
            peer.get("ipBlock", {}).pop("except", None)
    _, extra = differences(objects, "production")
    # Private addresses (PostgreSQL's, another namespace's pods) and the metadata server become reachable.
    assert extra == {
        ("auth", "postgres", "443/TCP"),
        ("auth", "cloud-metadata", "443/TCP"),
        ("auth", "ingress-nginx", "443/TCP"),
    }


def test_the_evaluator_follows_isolation_rules() -> None:
    pod = Endpoint(
        "a", "10.0.0.1", "ns", {"app": "a"}, {"kubernetes.io/metadata.name": "ns"}, (Port(80, name="web"),)
    )
    other = Endpoint("b", "10.0.0.2", "ns", {"app": "b"}, {"kubernetes.io/metadata.name": "ns"}, (Port(80),))
    nothing = PolicySet([])
    assert nothing.allows(other, pod, Port(80)), "no policy selects the pod: it is not isolated"
    deny_in = {
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]},
    }
    assert not PolicySet([deny_in]).allows(other, pod, Port(80, name="web"))
    assert PolicySet([deny_in]).allows(pod, other, Port(80)), "ingress isolation leaves egress open"
    by_name = {
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "web"}]}
            ],
        },
    }
    assert PolicySet([deny_in, by_name]).allows(other, pod, Port(80, name="web"))
    assert not PolicySet([deny_in, by_name]).allows(other, pod, Port(80, "UDP", "web"))
