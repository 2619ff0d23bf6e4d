"""The NetworkPolicies of deploy/k8s/components/network-policy, evaluated offline.

A small model of NetworkPolicy semantics (pod and namespace selectors, ipBlocks, named ports,
isolation per direction) decides, for each render that includes the component, which
connections the policies let through: each scns pod may reach DNS and its datastores and
nothing else; only Prometheus scrapes it; only the gateway's API is open to other clients.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import pytest

from tests.deploy.kube import (
    MIGRATION_JOB,
    NAMESPACE,
    TARGETS,
    Obj,
    by_kind,
    matches,
    render,
    with_component,
    workloads,
)

POLICED = with_component("network-policy")
METRICS_NAMESPACE = "monitoring"
HEALTH_PORT = 9100  # SCNS_HEALTH_PORT of the services without an HTTP API
GATEWAY_PORT = 8080
DATASTORES = frozenset({"redis", "postgres"})


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (in our namespace or another) or an address outside."""

    name: str
    namespace: str = NAMESPACE
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    ip: str = "10.244.0.10"  # a pod address unless set

    @property
    def is_pod(self) -> bool:
        return bool(self.labels)


KUBE_DNS = Peer("coredns", "kube-system", {"k8s-app": "kube-dns", "pod-template-hash": "5d7"})
PROMETHEUS = Peer("prometheus", METRICS_NAMESPACE, {"app.kubernetes.io/name": "prometheus"})
OUTSIDER = Peer("some-app", "default", {"app": "some-app"})
INTERNET = Peer("internet", "", ip="93.184.216.34")
PRIVATE = Peer("something-in-the-vpc", "", ip="10.20.30.40")


def _peer_in(rule_peer: Obj, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(peer.ip)
        return (ip in ipaddress.ip_network(block["cidr"])
                and not any(ip in ipaddress.ip_network(x) for x in block.get("except", [])))
    if not peer.is_pod:
        return False
    if "namespaceSelector" in rule_peer:
        ns_labels = {"kubernetes.io/metadata.name": peer.namespace}
        if not matches(rule_peer["namespaceSelector"], ns_labels):
            return False
    elif peer.namespace != NAMESPACE:
        return False
    return matches(rule_peer.get("podSelector", {}), peer.labels)


def _port_in(rule: Obj, port: int, protocol: str, target: Peer) -> bool:
    if "ports" not in rule:
        return True
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None or (isinstance(want, str) and target.ports.get(want) == port):
            return True
        if isinstance(want, int) and want <= port <= p.get("endPort", want):
            return True
    return False


def _allows(policies: list[Obj], pod: Peer, direction: str, other: Peer, port: int,
            protocol: str) -> bool:
    """Whether `pod`'s policies let this connection through in `direction` (Ingress: from
    `other` to `pod`'s port; Egress: from `pod` to `other`'s port)."""
    mine = [np["spec"] for np in policies if direction in np["spec"]["policyTypes"]
            and pod.namespace == NAMESPACE and matches(np["spec"]["podSelector"], pod.labels)]
    if not mine:
        return True  # not isolated in this direction
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    target = pod if direction == "Ingress" else other
    return any((peers_key not in rule or any(_peer_in(x, other) for x in rule[peers_key]))
               and _port_in(rule, port, protocol, target)
               for spec in mine for rule in spec.get(rules_key, []))


def _connects(policies: list[Obj], src: Peer, dst: Peer, port: int, protocol: str = "TCP"
              ) -> bool:
    return (_allows(policies, src, "Egress", dst, port, protocol)
            and _allows(policies, dst, "Ingress", src, port, protocol))


def _managed_address(policies: list[Obj], port: int) -> str | None:
    """The first address of the ipBlock allowed for `port` (one block per datastore port), or
    None when the datastores are reached by pod label (in the cluster)."""
    cidrs = {peer["ipBlock"]["cidr"] for np in policies for rule in np["spec"].get("egress", [])
             if [p.get("port") for p in rule.get("ports", [])] == [port]
             for peer in rule.get("to", []) if "ipBlock" in peer}
    if not cidrs:
        return None
    (cidr,) = cidrs
    network = ipaddress.ip_network(cidr)
    assert network.prefixlen >= 8, f"{cidr} for port {port} is wider than any datastore"
    return str(next(network.hosts(), network.network_address))


def _pods(objs: list[Obj]) -> dict[str, Peer]:
    out = {}
    for w in workloads(objs):
        template = w["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
                 for p in c.get("ports", []) if "name" in p}
        out[w["metadata"]["name"]] = Peer(w["metadata"]["name"], NAMESPACE,
                                          template["metadata"]["labels"], ports)
    return out


def _datastores(policies: list[Obj], pods: dict[str, Peer]) -> tuple[Peer, Peer]:
    """Redis and PostgreSQL: managed (an address in the overlay's CIDR for each port), the dev
    component's pods, or pods with the dev component's labels where it is not rendered (and
    neither is its ingress policy: then only the egress half can be checked)."""
    out = []
    for store, port in (("redis", 6379), ("postgres", 5432)):
        address = _managed_address(policies, port)
        if address is not None:
            out.append(Peer(f"managed-{store}", "", ip=address))
        elif store in pods:
            out.append(pods[store])
        else:
            labels = {"app.kubernetes.io/name": store, "app.kubernetes.io/component": "datastore",
                      "app.kubernetes.io/part-of": "scns-conductor"}
            out.append(Peer(store, NAMESPACE, labels, {store: port}))
    redis, postgres = out
    return redis, postgres


@pytest.mark.parametrize("name", POLICED)
def test_network_policies_deny_by_default(name: str) -> None:
    policies = list(by_kind(render(name), "NetworkPolicy").values())
    deny = [np for np in policies if np["spec"]["podSelector"] == {}
            and set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not np["spec"].get("ingress") and not np["spec"].get("egress")]
    assert deny, f"{name}: no default-deny NetworkPolicy"
    for pod in _pods(render(name)).values():
        allow = [np["metadata"]["name"] for np in policies
                 if np not in deny and matches(np["spec"]["podSelector"], pod.labels)]
        assert allow, f"{name}: no allow policy selects {pod.name}'s pods"


@pytest.mark.parametrize("name", POLICED)
def test_network_policies_allow_exactly_what_each_service_needs(name: str) -> None:
    objs = render(name)
    policies = list(by_kind(objs, "NetworkPolicy").values())
    pods = _pods(objs)
    apps = [pod for pod_name, pod in sorted(pods.items()) if pod_name not in DATASTORES]
    components = TARGETS[name].components
    assert ("executor-pool" in pods) == ("autoscaling" in components)
    assert (MIGRATION_JOB in pods) == ("migrations" in components)
    redis, postgres = _datastores(policies, pods)

    def to_store(app: Peer, store: Peer, port: int) -> bool:
        if store.is_pod and store.name not in pods:  # the dev datastores, not rendered
            return _allows(policies, app, "Egress", store, port, "TCP")
        return _connects(policies, app, store, port)

    for app in apps:
        # egress: DNS, Redis, PostgreSQL, and nothing else
        for proto in ("UDP", "TCP"):
            assert _allows(policies, app, "Egress", KUBE_DNS, 53, proto), (app.name, proto)
        assert to_store(app, redis, 6379), f"{app.name} -> Redis"
        assert to_store(app, postgres, 5432), f"{app.name} -> PostgreSQL"
        assert not to_store(app, redis, 5432), f"{app.name}: Redis, PG port"
        assert not to_store(app, postgres, 22), f"{app.name}: datastore ports only"
        for other in (INTERNET, PRIVATE, OUTSIDER, *(a for a in apps if a is not app)):
            for port in (53, 443, 6379, 5432, GATEWAY_PORT, HEALTH_PORT):
                assert not _connects(policies, app, other, port), f"{app.name} -> {other.name}"
        # ingress: Prometheus on the metrics port (the migration Job has none: nothing at all);
        # the gateway's API from anywhere
        if app.name == MIGRATION_JOB:
            for port in (HEALTH_PORT, GATEWAY_PORT):
                assert not _connects(policies, PROMETHEUS, app, port), app.name
                assert not _connects(policies, OUTSIDER, app, port), app.name
            continue
        metrics = GATEWAY_PORT if app.name == "gateway" else HEALTH_PORT
        assert _connects(policies, PROMETHEUS, app, metrics), f"scrape {app.name}"
        assert not _connects(policies, PROMETHEUS, app, 22), app.name
        reachable = _connects(policies, OUTSIDER, app, metrics)
        assert reachable == (app.name == "gateway"), f"outsider -> {app.name}"
    if "dev-datastores" in components:
        for store, port in ((redis, 6379), (postgres, 5432)):
            assert not _connects(policies, OUTSIDER, store, port), store.name
            assert not _connects(policies, PROMETHEUS, store, port), store.name
            assert not _connects(policies, store, INTERNET, 443), store.name


@pytest.mark.parametrize("name", POLICED)
def test_dns_and_monitoring_selectors_are_not_rewritten_by_label_transformers(name: str) -> None:
    """kustomize's label transformers add our labels to matchLabels selectors; a selector for
    pods in other namespaces must not get them (or it selects nothing)."""
    for np in by_kind(render(name), "NetworkPolicy").values():
        for rule in np["spec"].get("ingress", []) + np["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "namespaceSelector" in peer:
                    text = json.dumps(peer)
                    assert "scns-conductor" not in text, f"{name}: {np['metadata']['name']}"
