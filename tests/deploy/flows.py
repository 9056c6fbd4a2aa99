"""The flows of architecture.md that the rendered NetworkPolicies must allow, and nothing else. Run
`python -m tests.deploy.flows` for the table of what each overlay's policies allow."""

from __future__ import annotations

import sys
from typing import Any

from tests.deploy.network_policy import PolicySet, allowed_flows
from tests.deploy.rendered import NEIGHBOURS, OUTSIDE_PORTS, SERVICES, endpoints, of_kind, render

Flow = tuple[str, str, str]
GRPC = {"auth": 50051, "ingest": 50052, "threading": 50053, "outbound": 50054}
MIGRATIONS = tuple(f"{s}-migrate" for s in SERVICES)
OUTSIDERS = tuple(n.name for n in NEIGHBOURS)
PUBLIC = ("internet",)
ANYWHERE = ("internet", "postgres", "cloud-metadata")


def expected_flows(overlay: str, pods: list[str]) -> set[Flow]:
    flows: set[Flow] = set()
    for service in SERVICES:
        flows.add(("crm-caller", service, f"{GRPC[service]}/TCP"))
        flows.add((service, "nats", "4222/TCP"))
        flows.add((service, "otel-collector", "4317/TCP"))
    flows |= {
        ("ingest", "auth", "50051/TCP"),
        ("outbound", "auth", "50051/TCP"),
        ("outbound", "threading", "50053/TCP"),
        ("threading", "ingest", "50052/TCP"),
        ("threading", "outbound", "50054/TCP"),
    }
    flows |= {("ingress-nginx", "auth", "8081/TCP"), ("ingress-nginx", "ingest", "8082/TCP")}
    # The BCC-drop MX takes mail from anyone outside the namespace.
    flows |= {(source, "ingest", "2525/TCP") for source in OUTSIDERS}
    flows.add(("nats", "nats", "6222/TCP"))
    flows.add(("otel-collector", "otel-gateway", "4317/TCP"))
    flows.add(("prometheus", "otel-collector", "8889/TCP"))
    # PostgreSQL lives outside the cluster: 5432 anywhere until an overlay narrows it to the database's CIDR.
    flows |= {(client, where, "5432/TCP") for client in (*SERVICES, *MIGRATIONS) for where in ANYWHERE}
    # Google (auth, ingest, outbound), object storage (threading): public addresses only.
    flows |= {(service, where, "443/TCP") for service in SERVICES for where in PUBLIC}
    flows |= {("outbound", where, f"{port}/TCP") for where in PUBLIC for port in (587, 465)}
    flows |= {(pod, "kube-dns", f"53/{protocol}") for pod in pods for protocol in ("UDP", "TCP")}
    if overlay == "dev":
        flows |= {(service, "gmail-sandbox", "8765/TCP") for service in ("auth", "ingest", "outbound")}
        flows.add(("gmail-sandbox", "ingest", "8082/TCP"))
    return flows


def ours(flows: set[Flow], pods: list[str]) -> set[Flow]:
    """The flows that touch the namespace (between two outsiders, no policy of ours has a say)."""
    return {flow for flow in flows if flow[0] in pods or flow[1] in pods}


def actual_flows(objects: list[dict[str, Any]]) -> tuple[set[Flow], list[str]]:
    world = endpoints(objects)
    pods = [e.name for e in world if e.namespace == "mailsync"]
    policies = PolicySet(of_kind(objects, "NetworkPolicy"))
    return ours(allowed_flows(policies, world, OUTSIDE_PORTS), pods), pods


def table(flows: set[Flow]) -> str:
    lines = ["| from | to | port |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {p} |" for a, b, p in sorted(flows)]
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["production", "dev"]:
        flows, _ = actual_flows(render(name))
        print(f"## {name}: {len(flows)} allowed flows\n\n{table(flows)}\n")
