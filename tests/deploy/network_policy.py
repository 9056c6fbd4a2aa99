"""A small Kubernetes NetworkPolicy evaluator over rendered objects: may pod (or address) A open a connection to
B on port P? It follows the networking.k8s.io/v1 semantics the deploy tests rely on:

- a pod is isolated for ingress (egress) once any policy selecting it lists Ingress (Egress) in policyTypes;
- a connection is allowed when the source's egress side allows it (not isolated, or some egress rule of a
  policy selecting it matches the destination and port) and the destination's ingress side allows it;
- a rule with no peers matches every peer and one with no ports every port; a peer is a podSelector (pods of
  the policy's namespace), a namespaceSelector (every pod of the matching namespaces), both (pods matching both),
  or an ipBlock (addresses in the CIDR but not in its exceptions, pods' own addresses included);
- a named port resolves against the destination pod's container ports; protocols default to TCP.

Endpoints outside the cluster are `Endpoint`s with an address and no pod; only their pod side is evaluated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels) or an address outside the cluster (namespace empty)."""

    name: str
    address: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()

    @property
    def is_pod(self) -> bool:
        return bool(self.namespace)

    def __hash__(self) -> int:
        return hash((self.name, self.address, self.namespace))


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); {} selects all."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _in_block(address: str, block: Mapping[str, Any]) -> bool:
    ip = ipaddress.ip_address(address)
    if ip not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(ip in ipaddress.ip_network(excluded) for excluded in block.get("except") or [])


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return _in_block(other.address, peer["ipBlock"])
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and selects(peer.get("podSelector"), other.labels)


def _port_matches(rule_ports: list[Mapping[str, Any]] | None, destination: Endpoint, port: Port) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != port.protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if any(p.name == wanted and p.number == port.number for p in destination.ports):
                return True
            continue
        if wanted <= port.number <= entry.get("endPort", wanted):
            return True
    return False


class PolicySet:
    """The NetworkPolicies of one rendered overlay."""

    def __init__(self, policies: Iterable[Mapping[str, Any]]) -> None:
        self.policies = list(policies)

    def _selecting(self, pod: Endpoint, direction: str) -> list[Mapping[str, Any]]:
        chosen = []
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
            if direction not in types:
                continue
            if policy["metadata"].get("namespace") != pod.namespace:
                continue
            if selects(spec.get("podSelector") or {}, pod.labels):
                chosen.append(policy)
        return chosen

    def _side_allows(
        self, pod: Endpoint, direction: str, other: Endpoint, destination: Endpoint, port: Port
    ) -> bool:
        policies = self._selecting(pod, direction)
        if not policies:
            return True
        rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for policy in policies:
            namespace = policy["metadata"]["namespace"]
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                if peers and not any(_peer_matches(peer, namespace, other) for peer in peers):
                    continue
                if _port_matches(rule.get("ports"), destination, port):
                    return True
        return False

    def allows(self, source: Endpoint, destination: Endpoint, port: Port) -> bool:
        if source.is_pod and not self._side_allows(source, "Egress", destination, destination, port):
            return False
        if destination.is_pod and not self._side_allows(destination, "Ingress", source, destination, port):
            return False
        return True


def workload_pods(
    objects: Iterable[Mapping[str, Any]], namespace_labels: Mapping[str, Mapping[str, str]]
) -> list[Endpoint]:
    """One representative pod per rendered workload, with its template's labels and container ports."""
    pods = []
    for index, obj in enumerate(o for o in objects if o["kind"] in WORKLOAD_KINDS):
        template = obj["spec"]["template"]
        namespace = obj["metadata"]["namespace"]
        ports = tuple(
            Port(p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
            for container in template["spec"]["containers"]
            for p in container.get("ports") or []
        )
        pods.append(
            Endpoint(
                name=obj["metadata"]["name"],
                address=f"10.244.{index // 250}.{index % 250 + 2}",
                namespace=namespace,
                labels=dict(template["metadata"].get("labels") or {}),
                namespace_labels={
                    "kubernetes.io/metadata.name": namespace,
                    **namespace_labels.get(namespace, {}),
                },
                ports=ports,
            )
        )
    return pods


def allowed_flows(
    policies: PolicySet, endpoints: list[Endpoint], external_ports: tuple[Port, ...]
) -> set[tuple[str, str, str]]:
    """Every (source, destination, port/protocol) the policies allow between the endpoints. A pod's ports are its
    containers'; an address outside the cluster is tried on `external_ports`. A pod to its own workload stands for
    one replica calling another (NATS routes)."""
    flows = set()
    for source in endpoints:
        for destination in endpoints:
            if destination is source and not source.is_pod:
                continue
            for port in destination.ports or external_ports:
                if policies.allows(source, destination, port):
                    flows.add((source.name, destination.name, f"{port.number}/{port.protocol}"))
    return flows
