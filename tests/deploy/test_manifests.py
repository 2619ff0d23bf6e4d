"""Offline checks of the deployment files: Dockerfile, kustomize base and overlays, Tiltfile.

No cluster, no Docker engine, no network. `kubectl kustomize` (client only) renders the
manifests, kubernetes-validate checks every object against the Kubernetes JSON schemas it
ships, and starlark-go (the Go Starlark interpreter, the one Tilt embeds) evaluates the
Tiltfile against stubs of Tilt's built-ins that record each call.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import starlark_go
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod-arm64": K8S / "overlays" / "prod-arm64",
}
NAMESPACE = "scns"
SERVICES = frozenset({"registry", "scheduler", "executor", "gateway", "reconciler"})
# In the contract and deployed, but `scns run` has no such choice yet (its pods crash-loop
# until it lands): remove a name once the service exists.
NOT_BUILT_YET: frozenset[str] = frozenset()
HTTP_SERVICES = frozenset({"gateway"})  # serve /healthz, /readyz, /metrics on their own port
HEALTH_PORT = 9100  # SCNS_HEALTH_PORT of the other services
GATEWAY_PORT = 8080
APP_IMAGE = "scns-conductor"
DATASTORES = frozenset({"redis", "postgres"})
WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet"})
SECRET = "scns-connection"
DEV_PASSWORD = "dev-only-insecure-password"
# Renders with the NetworkPolicy component (default deny, then what each service needs).
POLICED = ("dev", "prod-arm64")
METRICS_NAMESPACE = "monitoring"
# The oldest Kubernetes we claim to support, and the newest the schema package ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

Obj = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------
@functools.cache
def _kustomize(target: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: cannot run `kubectl kustomize`")
    proc = subprocess.run(
        [kubectl, "kustomize", str(TARGETS[target])],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(proc.stdout, Loader=loader) if doc)


def render(target: str) -> list[Obj]:
    return list(_kustomize(target))


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def containers(workload: Obj) -> list[Obj]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_app(workload: Obj) -> bool:
    """A workload running the scns-conductor image (as opposed to a dev datastore)."""
    return any(c["image"].split("@")[0].rsplit(":", 1)[0].endswith(APP_IMAGE)
               for c in containers(workload))


def by_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: probe uses undeclared port {port!r}"
    return int(named[port])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- (a) kustomize renders ------------------------------------------------------------------------
def test_kustomize_renders(target: str) -> None:
    objs = render(target)
    assert objs, f"{target} rendered nothing"
    seen: set[tuple[str, str]] = set()
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        assert key not in seen, f"{target}: duplicate {key}"
        seen.add(key)
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, f"{target}: {key} namespace"
    assert ("Namespace", NAMESPACE) in seen


# --- (b) Kubernetes schemas -----------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_schema(target: str, version: str) -> None:
    problems = []
    for o in render(target):
        try:
            # strict: unknown fields (a typo such as `readinesProbe`) are errors too.
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(e.message)
    assert not problems, f"{target} against Kubernetes {version}:\n" + "\n".join(problems)


# --- (c) conventions every workload follows -------------------------------------------------------
def test_every_service_runs_once_as_scns_run(target: str) -> None:
    apps = [w for w in workloads(render(target)) if is_app(w)]
    services = {}
    for w in apps:
        (c,) = w["spec"]["template"]["spec"]["containers"]
        argv = [*c.get("command", []), *c.get("args", [])]
        assert argv[:2] == ["scns", "run"] and len(argv) == 3, f"{w['metadata']['name']}: {argv}"
        assert argv[2] in SERVICES, f"{w['metadata']['name']} runs unknown service {argv[2]!r}"
        assert argv[2] == w["metadata"]["name"], "workloads are named after their service"
        services[argv[2]] = w["kind"]
    assert set(services) == SERVICES
    assert services.pop("executor") == "DaemonSet"
    assert set(services.values()) == {"Deployment"}


def test_every_deployed_service_is_a_scns_run_choice() -> None:
    from services.cli.main import SERVICES as CLI_SERVICES

    missing = SERVICES - set(CLI_SERVICES)
    assert missing <= NOT_BUILT_YET, f"`scns run` does not know {sorted(missing)}"


def test_every_container_has_probes_resources_and_runs_as_non_root(target: str) -> None:
    for w in workloads(render(target)):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False, name
        for c in containers(w):
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, f"{name}/{c['name']}: runAsNonRoot"
            assert sc.get("runAsUser", 1) != 0, f"{name}/{c['name']}: runAsUser 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}/{c['name']}"
            # dev trades it for Tilt's live_update (code synced into the running container)
            if not (target == "dev" and is_app(w)):
                assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{name}/{c['name']}: no {probe}"
            for kind in ("requests", "limits"):
                have = c.get("resources", {}).get(kind, {})
                assert {"cpu", "memory"} <= set(have), f"{name}/{c['name']}: {kind} {have}"


def test_app_probes_and_metrics_use_the_service_health_endpoints(target: str) -> None:
    for w in filter(is_app, workloads(render(target))):
        name = w["metadata"]["name"]
        (c,) = w["spec"]["template"]["spec"]["containers"]
        port = GATEWAY_PORT if name in HTTP_SERVICES else HEALTH_PORT
        env = env_of(c)
        if name in HTTP_SERVICES:
            assert env["SCNS_GATEWAY_HOST"]["value"] == "0.0.0.0"
            assert env["SCNS_GATEWAY_PORT"]["value"] == str(GATEWAY_PORT)
        else:
            assert env["SCNS_HEALTH_PORT"]["value"] == str(HEALTH_PORT), name
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                    "readinessProbe": "/readyz"}
        for probe, path in expected.items():
            get = c[probe]["httpGet"]
            assert get["path"] == path, f"{name}: {probe} path"
            assert port_number(c, get["port"]) == port, f"{name}: {probe} port"
        notes = w["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", name
        assert notes.get("prometheus.io/port") == str(port), name
        assert notes.get("prometheus.io/path") == "/metrics", name


def test_health_endpoints_listen_on_the_pod_ip(target: str) -> None:
    """The non-HTTP services' health server binds SCNS_GATEWAY_HOST (127.0.0.1 by default)."""
    objs = render(target)
    (config,) = (o for o in objs if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"].startswith("scns-config"))
    assert config["data"]["SCNS_GATEWAY_HOST"] == "0.0.0.0"
    assert "{" in config["data"]["SCNS_KEY_PREFIX"], "the key prefix needs a Redis hash tag"
    assert float(config["data"]["SCNS_WORKER_TTL_S"]) > float(config["data"]["SCNS_HEARTBEAT_S"])
    assert config["data"]["SCNS_LOG_FORMAT"] == "json"
    for w in filter(is_app, workloads(objs)):
        (c,) = w["spec"]["template"]["spec"]["containers"]
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        assert refs == [config["metadata"]["name"]], w["metadata"]["name"]


_SECRETISH = re.compile(r"(URL|PASSWORD|PASSWD|SECRET|TOKEN|DSN|CREDENTIAL)", re.IGNORECASE)
_CREDENTIAL_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*@")


def test_no_plain_text_secrets_in_env(target: str) -> None:
    objs = render(target)
    for w in workloads(objs):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            for e in c.get("env", []):
                if "value" in e:
                    assert not _SECRETISH.search(e["name"]), f"{where}: {e['name']} is literal"
                    assert not _CREDENTIAL_URL.match(e["value"]), f"{where}: {e['name']}"
                    assert "://" not in e["value"], f"{where}: {e['name']} holds a URL"
            if is_app(w):
                env = env_of(c)
                for var, key in (("SCNS_REDIS_URL", "redis-url"),
                                 ("SCNS_DATABASE_URL", "database-url")):
                    ref = env[var].get("valueFrom", {}).get("secretKeyRef")
                    assert ref == {"name": SECRET, "key": key}, f"{where}: {var} -> {ref}"
    for cm in by_kind(objs, "ConfigMap").values():
        for k, v in cm.get("data", {}).items():
            assert not _SECRETISH.search(k) and "://" not in v, f"ConfigMap {k}"


def test_references_resolve(target: str) -> None:
    objs = render(target)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    # Only the dev component carries a Secret; elsewhere it is created out of band.
    external = set() if target == "dev" else {("Secret", SECRET)}
    for w in workloads(objs):
        pod = w["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in names
        for c in containers(w):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ("Secret", ref["name"]) not in external:
                    assert ("Secret", ref["name"]) in names, f"{w['metadata']['name']}: {ref}"
                    secret = by_kind(objs, "Secret")[ref["name"]]
                    keys = {**secret.get("data", {}), **secret.get("stringData", {})}
                    assert ref["key"] in keys, f"{ref} has no such key"


def test_labels_selectors_services_and_disruption_budgets(target: str) -> None:
    objs = render(target)
    for o in objs:
        labels = o["metadata"].get("labels", {})
        where = f"{o['kind']}/{o['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "scns-conductor", where
        assert "app.kubernetes.io/name" in labels, where
        assert "app.kubernetes.io/component" in labels, where
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
            for w in workloads(objs)}
    for w in workloads(objs):
        name = w["metadata"]["name"]
        assert selects(w["spec"]["selector"]["matchLabels"], pods[name]), name
        assert pods[name]["app.kubernetes.io/name"] == name
        assert pods[name]["app.kubernetes.io/part-of"] == "scns-conductor"
        assert "app.kubernetes.io/component" in pods[name]
    for svc in by_kind(objs, "Service").values():
        matched = [n for n, labels in pods.items() if selects(svc["spec"]["selector"], labels)]
        assert matched == [svc["metadata"]["name"]], f"Service {svc['metadata']['name']}"
    gateway = by_kind(objs, "Service")["gateway"]
    assert [(p["port"], p["targetPort"]) for p in gateway["spec"]["ports"]] == [(8080, "http")]
    pdbs = by_kind(objs, "PodDisruptionBudget")
    assert {"registry", "scheduler", "gateway"} <= set(pdbs)
    for name, pdb in pdbs.items():
        assert selects(pdb["spec"]["selector"]["matchLabels"], pods[name]), name


def test_executor_is_a_drainable_worker_sized_by_its_cgroup(target: str) -> None:
    executor = by_kind(render(target), "DaemonSet")["executor"]
    pod = executor["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["SCNS_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["SCNS_DATA_DIR"]["value"] == "/var/lib/scns"
    assert "SCNS_WORKER_CPUS" not in env and "SCNS_WORKER_MEMORY_MB" not in env
    res = c["resources"]
    for r in ("cpu", "memory"):  # Guaranteed QoS: the cgroup is what the kubelet reserved
        assert res["requests"][r] == res["limits"][r], f"executor {r} requests != limits"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/lib/scns", "/tmp"):
        assert path in mounts and mounts[path] in volumes, f"executor needs a writable {path}"
    # Drain (jobs finish) + kill grace (SIGTERM..SIGKILL, 10 s by default) + hand-back and
    # goodbye must fit in the grace period, or the kubelet kills the executor mid-drain.
    drain = float(env["SCNS_DRAIN_GRACE_S"]["value"]) if "SCNS_DRAIN_GRACE_S" in env else 30.0
    kill = float(env["SCNS_KILL_GRACE_S"]["value"]) if "SCNS_KILL_GRACE_S" in env else 10.0
    assert pod["terminationGracePeriodSeconds"] >= max(120, drain + kill + 15)
    assert pod.get("shareProcessNamespace") is True, "a PID 1 that reaps orphaned job processes"


def test_dev_overlay_is_small_and_self_contained() -> None:
    objs = render("dev")
    for w in workloads(objs):
        name = w["metadata"]["name"]
        assert w["spec"].get("replicas", 1) == 1, name
        for c in containers(w):
            assert c.get("imagePullPolicy") == "IfNotPresent", name
            if is_app(w):
                assert c["image"] == f"{APP_IMAGE}:dev", name
    sts = by_kind(objs, "StatefulSet")
    assert set(sts) == DATASTORES
    assert sts["redis"]["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"
    assert sts["postgres"]["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"
    redis_args = sts["redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[:4] == ["--save", "", "--appendonly", "no"]
    # The dev Secret's URLs point at the in-cluster Services.
    secret = by_kind(objs, "Secret")[SECRET]["stringData"]
    services = by_kind(objs, "Service")
    for key, svc, port in (("redis-url", "redis", 6379), ("database-url", "postgres", 5432)):
        assert f"@{svc}:{port}/" in secret[key] or f"//{svc}:{port}/" in secret[key], key
        assert services[svc]["spec"]["ports"][0]["port"] == port
    assert secret["postgres-password"] in secret["database-url"]


def _tolerates(pod: Obj, key: str, value: str) -> bool:
    return any(t.get("key") == key and t.get("effect") == "NoSchedule"
               and (t.get("operator") == "Exists" or t.get("value") == value)
               for t in pod.get("tolerations", []))


def test_prod_arm64_pins_every_pod_to_arm64_without_datastores() -> None:
    objs = render("prod-arm64")
    assert not by_kind(objs, "StatefulSet"), "prod must not run Redis/PostgreSQL in-cluster"
    assert not set(by_kind(objs, "Service")) & DATASTORES
    assert SECRET not in by_kind(objs, "Secret"), "prod's Secret is managed out of band"
    for w in workloads(objs):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        assert pod.get("nodeSelector", {}).get("kubernetes.io/arch") == "arm64", name
        assert _tolerates(pod, "kubernetes.io/arch", "arm64"), name
        for c in containers(w):
            image = c["image"]
            assert not image.startswith(("redis", "postgres")), name
            repo, _, tag = image.rpartition(":")
            assert "/" in repo and "." in repo.split("/")[0], f"{name}: no registry in {image}"
            assert tag and tag not in {"latest", "dev"}, f"{name}: unpinned {image}"
        if w["kind"] == "Deployment":
            assert w["spec"]["replicas"] >= 2, name
            keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
            assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, name
    executor = by_kind(objs, "DaemonSet")["executor"]["spec"]["template"]["spec"]
    assert executor["nodeSelector"]["scns.io/worker-pool"] == "true"
    assert _tolerates(executor, "scns.io/worker-pool", "true")


# --- (e) credentials and network policies ------------------------------------------------------
@pytest.mark.parametrize("name", ["base", "prod-arm64"])
def test_no_dev_credentials_outside_the_dev_component(name: str) -> None:
    rendered = json.dumps(render(name))
    assert DEV_PASSWORD not in rendered, f"{name} renders the dev password"
    assert not by_kind(render(name), "Secret"), f"{name} must not carry a Secret"
    # nor do their source files (an unused file could still be applied by hand)
    for root in (K8S / "base", TARGETS[name]):
        for path in root.rglob("*"):
            if path.is_file():
                assert DEV_PASSWORD not in path.read_text("utf-8"), path
    assert not (TARGETS["prod-arm64"] / "delete-placeholder-secret.yaml").exists()


def test_dev_renders_its_placeholder_secret() -> None:
    secret = by_kind(render("dev"), "Secret")[SECRET]
    assert set(secret["stringData"]) == {"redis-url", "database-url", "postgres-password"}
    assert secret["stringData"]["postgres-password"] == DEV_PASSWORD


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector: matchLabels and matchExpressions, ANDed; {} selects all."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


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
        if not _matches(rule_peer["namespaceSelector"], ns_labels):
            return False
    elif peer.namespace != NAMESPACE:
        return False
    return _matches(rule_peer.get("podSelector", {}), peer.labels)


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
            and pod.namespace == NAMESPACE and _matches(np["spec"]["podSelector"], pod.labels)]
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


def _managed_address(policies: list[Obj], port: int) -> str:
    """The first address of the ipBlock allowed for `port` (one block per datastore port)."""
    (cidr,) = {peer["ipBlock"]["cidr"] for np in policies for rule in np["spec"].get("egress", [])
               if [p.get("port") for p in rule.get("ports", [])] == [port]
               for peer in rule.get("to", []) if "ipBlock" in peer}
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


@pytest.mark.parametrize("name", POLICED)
def test_network_policies_deny_by_default(name: str) -> None:
    policies = list(by_kind(render(name), "NetworkPolicy").values())
    deny = [np for np in policies if np["spec"]["podSelector"] == {}
            and set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not np["spec"].get("ingress") and not np["spec"].get("egress")]
    assert deny, f"{name}: no default-deny NetworkPolicy"
    for pod in _pods(render(name)).values():
        allow = [np["metadata"]["name"] for np in policies
                 if np not in deny and _matches(np["spec"]["podSelector"], pod.labels)]
        assert allow, f"{name}: no allow policy selects {pod.name}'s pods"


@pytest.mark.parametrize("name", POLICED)
def test_network_policies_allow_exactly_what_each_service_needs(name: str) -> None:
    objs = render(name)
    policies = list(by_kind(objs, "NetworkPolicy").values())
    pods = _pods(objs)
    apps = [pods[s] for s in sorted(SERVICES)]
    if name == "dev":
        redis, postgres = pods["redis"], pods["postgres"]
    else:  # managed: an address in the CIDR the overlay gives for each port
        redis, postgres = (Peer(f"managed-{port}", "", ip=_managed_address(policies, port))
                           for port in (6379, 5432))
    for app in apps:
        metrics = GATEWAY_PORT if app.name in HTTP_SERVICES else HEALTH_PORT
        # egress: DNS, Redis, PostgreSQL, and nothing else
        for proto in ("UDP", "TCP"):
            assert _allows(policies, app, "Egress", KUBE_DNS, 53, proto), (app.name, proto)
        assert _connects(policies, app, redis, 6379), f"{app.name} -> Redis"
        assert _connects(policies, app, postgres, 5432), f"{app.name} -> PostgreSQL"
        assert not _connects(policies, app, redis, 5432), f"{app.name}: Redis, PG port"
        assert not _connects(policies, app, postgres, 22), f"{app.name}: datastore ports only"
        for other in (INTERNET, PRIVATE, OUTSIDER, *(a for a in apps if a is not app)):
            for port in (53, 443, 6379, 5432, GATEWAY_PORT, HEALTH_PORT):
                assert not _connects(policies, app, other, port), f"{app.name} -> {other.name}"
        # ingress: Prometheus on the metrics port; the gateway's API from anywhere
        assert _connects(policies, PROMETHEUS, app, metrics), f"scrape {app.name}"
        assert not _connects(policies, PROMETHEUS, app, 22), app.name
        reachable = _connects(policies, OUTSIDER, app, metrics)
        assert reachable == (app.name == "gateway"), f"outsider -> {app.name}"
    if name == "dev":
        for store, port in ((redis, 6379), (postgres, 5432)):
            assert not _connects(policies, OUTSIDER, store, port), store.name
            assert not _connects(policies, PROMETHEUS, store, port), store.name
            assert not _connects(policies, store, INTERNET, 443), store.name


def test_dns_and_monitoring_selectors_are_not_rewritten_by_label_transformers() -> None:
    """kustomize's label transformers add our labels to matchLabels selectors; a selector for
    pods in other namespaces must not get them (or it selects nothing)."""
    for name in POLICED:
        for np in by_kind(render(name), "NetworkPolicy").values():
            for rule in np["spec"].get("ingress", []) + np["spec"].get("egress", []):
                for peer in rule.get("from", []) + rule.get("to", []):
                    if "namespaceSelector" in peer:
                        text = json.dumps(peer)
                        assert "scns-conductor" not in text, f"{name}: {np['metadata']['name']}"


# --- (d) the Tiltfile -----------------------------------------------------------------------------
_TILT_API: dict[str, tuple[str, ...]] = {
    # Tilt's built-ins used here, with their parameter names (docs.tilt.dev/api.html): a call
    # with a misspelled keyword fails like it would in Tilt.
    "docker_build": ("ref", "context", "build_args", "dockerfile", "dockerfile_contents",
                     "live_update", "match_in_env_vars", "ignore", "only", "entrypoint",
                     "target", "ssh", "network", "secret", "extra_tag", "container_args",
                     "cache_from", "pull", "platform", "extra_hosts"),
    "k8s_yaml": ("yaml", "allow_duplicates"),
    "kustomize": ("pathToDir", "kustomize_bin", "flags"),
    "k8s_resource": ("workload", "new_name", "port_forwards", "extra_pod_selectors",
                     "trigger_mode", "resource_deps", "objects", "auto_init", "pod_readiness",
                     "links", "labels", "discovery_strategy"),
    "local_resource": ("name", "cmd", "deps", "trigger_mode", "resource_deps", "ignore",
                       "auto_init", "serve_cmd", "cmd_bat", "serve_cmd_bat", "allow_parallel",
                       "links", "tags", "env", "serve_env", "readiness_probe", "dir",
                       "serve_dir", "labels"),
    "sync": ("local_path", "remote_path"),
    "run": ("cmd", "trigger", "echo_off"),
    "fall_back_on": ("files",),
    "port_forward": ("local_port", "container_port", "name", "link_path", "host"),
    "allow_k8s_contexts": ("contexts",),
    "watch_file": ("file_path",),
}


def _stub(name: str, params: tuple[str, ...], calls: list[Obj]) -> Callable[..., Obj]:
    def call(*args: Any, **kwargs: Any) -> Obj:
        if len(args) > len(params):
            raise TypeError(f"{name}() takes at most {len(params)} positional arguments")
        bound = dict(zip(params, args, strict=False))
        for key, value in kwargs.items():
            if key not in params:
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
            if key in bound:
                raise TypeError(f"{name}() got multiple values for {key!r}")
            bound[key] = value
        record = {"__tilt__": name, **bound}
        calls.append(record)
        return record

    return call


@functools.cache
def _tiltfile_calls() -> tuple[Obj, ...]:
    # Tilt's dialect: top-level if/for, global reassignment, sets, recursion.
    starlark_go.configure_starlark(allow_set=True, allow_global_reassign=True,
                                   allow_recursion=True)
    calls: list[Obj] = []
    stubs: dict[str, Any] = {n: _stub(n, p, calls) for n, p in _TILT_API.items()}
    stubs |= {"TRIGGER_MODE_AUTO": "TRIGGER_MODE_AUTO",
              "TRIGGER_MODE_MANUAL": "TRIGGER_MODE_MANUAL"}
    printed: list[str] = []
    tilt = starlark_go.Starlark(globals=stubs, print=printed.append)
    tilt.exec((ROOT / "Tiltfile").read_text("utf-8"), filename="Tiltfile")
    return tuple(calls)


def tilt_calls(name: str) -> list[Obj]:
    return [c for c in _tiltfile_calls() if c["__tilt__"] == name]


def test_tiltfile_builds_the_dev_image_with_live_update() -> None:
    (build,) = tilt_calls("docker_build")
    assert build["ref"] == f"{APP_IMAGE}:dev"
    assert build["context"] == "."
    assert build["target"] == "dev"
    steps = build["live_update"]
    kinds = [s["__tilt__"] for s in steps]
    # Tilt's order: fall_back_on first, then syncs, then runs.
    assert kinds == sorted(kinds, key=["fall_back_on", "sync", "run"].index), kinds
    syncs = {(s["local_path"], s["remote_path"]) for s in steps if s["__tilt__"] == "sync"}
    assert {("shared", "/app/shared"), ("services", "/app/services")} <= syncs
    for local, _ in syncs:
        assert (ROOT / local).is_dir(), local
    # The last step pokes the file the image's restart wrapper watches.
    assert kinds[-1] == "run"
    dev_env = dockerfile_stage_env("dev")
    assert steps[-1]["cmd"].endswith(dev_env["SCNS_DEV_RESTART_FILE"]), steps[-1]["cmd"]
    assert build["entrypoint"] == ["scns-dev-restart", "scns"]


def test_tiltfile_applies_the_dev_overlay() -> None:
    (applied,) = tilt_calls("k8s_yaml")
    assert applied["yaml"]["__tilt__"] == "kustomize"
    path = applied["yaml"]["pathToDir"]
    assert (ROOT / path).resolve() == TARGETS["dev"].resolve()
    # Tilt swaps in its build only where the manifests use the same image name.
    (build,) = tilt_calls("docker_build")
    images = {c["image"] for w in workloads(render("dev")) if is_app(w) for c in containers(w)}
    assert images == {build["ref"]}


def test_tiltfile_declares_every_workload() -> None:
    resources = {r["workload"]: r for r in tilt_calls("k8s_resource")}
    names = {w["metadata"]["name"] for w in workloads(render("dev"))}
    assert set(resources) == names
    for name, r in resources.items():
        if name not in DATASTORES:
            assert set(r.get("resource_deps", [])) >= DATASTORES, name
    forwards = [(p["local_port"], p.get("container_port"))
                for p in resources["gateway"]["port_forwards"]]
    assert (8080, 8080) in forwards
    local_ports = [p["local_port"] for r in resources.values()
                   for p in r.get("port_forwards", [])]
    assert len(local_ports) == len(set(local_ports)), "two port-forwards on one local port"


def test_tiltfile_runs_the_fast_tests_on_demand() -> None:
    tests = [r for r in tilt_calls("local_resource") if "make test-fast" in r.get("cmd", "")]
    assert len(tests) == 1
    assert tests[0]["trigger_mode"] == "TRIGGER_MODE_MANUAL"
    assert tests[0]["auto_init"] is False


# --- the Dockerfile -------------------------------------------------------------------------------
def dockerfile_instructions() -> Iterator[tuple[str, str, str, str]]:
    """(stage, INSTRUCTION, arguments, heredoc body) for every instruction of the Dockerfile."""
    lines = (ROOT / "Dockerfile").read_text("utf-8").splitlines()
    stage, i = "", 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        word, _, rest = line.partition(" ")
        body = []
        heredoc = re.search(r"<<-?'?(\w+)'?", rest)
        if heredoc:
            while lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
        if word.upper() == "FROM":
            stage = rest.split()[-1] if " AS " in rest.upper() else rest
        yield stage, word.upper(), rest.strip(), "\n".join(body) + "\n"


def dockerfile_stage_env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, word, rest, _ in dockerfile_instructions():
        if name == stage and word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def test_dockerfile_runtime_image() -> None:
    instructions = list(dockerfile_instructions())
    stages = [rest for _, word, rest, _ in instructions if word == "FROM"]
    assert stages[-1].split()[-1] == "runtime", "the production image is the default target"
    earlier: set[str] = set()
    for s in stages:  # every stage starts from python:3.11-slim or from an earlier stage
        image, *_, name = s.split()
        assert image == "${PYTHON_IMAGE}" or image in earlier, s
        earlier.add(name)
    args = [rest for _, word, rest, _ in instructions if word == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    final = {word: rest for stage, word, rest, _ in instructions if stage == "runtime"}
    assert final["USER"].split(":")[0] == "10001"
    assert json.loads(final["ENTRYPOINT"]) == ["scns"]
    assert json.loads(final["CMD"]) == ["run", "registry"]
    runs = " ".join(rest for _, word, rest, _ in instructions if word == "RUN")
    assert "pip install --no-deps ." in runs
    assert not re.search(r"pip install[^&;]*\.\[", runs), "no extras in the image"
    # Multi-arch: nothing fetched outside pip, nothing architecture-specific.
    assert not re.search(r"\b(curl|wget|amd64|x86_64|aarch64|arm64)\b", runs)


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!shared/", "!services/"} <= set(rules)


@pytest.fixture
def restart_wrapper(tmp_path: Path) -> Path:
    bodies = [body for _, word, rest, body in dockerfile_instructions()
              if word == "COPY" and rest.endswith("/usr/local/bin/scns-dev-restart")]
    assert len(bodies) == 1
    path = tmp_path / "scns-dev-restart"
    path.write_text(bodies[0], "utf-8")
    return path


_CHILD = """
import os, signal, sys, time
with open(sys.argv[1], "a") as f:
    f.write("start\\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(60)
"""


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_dev_restart_wrapper_reruns_on_trigger_and_forwards_sigterm(
    restart_wrapper: Path, tmp_path: Path,
) -> None:
    log, trigger = tmp_path / "log", tmp_path / "trigger"
    env = {**os.environ, "SCNS_DEV_RESTART_FILE": str(trigger)}
    cmd = [sys.executable, str(restart_wrapper), sys.executable, "-c", _CHILD, str(log)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        starts = lambda: log.read_text().count("start") if log.exists() else 0  # noqa: E731
        _wait_for(lambda: starts() == 1, "the first start")
        trigger.write_text("now\n")
        _wait_for(lambda: starts() == 2, "a restart after the trigger")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, "SIGTERM reaches the service, its status is kept"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_dev_restart_wrapper_exits_with_the_service_status(restart_wrapper: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(restart_wrapper), sys.executable, "-c", "raise SystemExit(3)"],
        timeout=10, check=False,
    )
    assert done.returncode == 3
