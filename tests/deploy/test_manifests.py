"""Offline checks of the deployment files: Dockerfile, kustomize base, overlays and components,
Tiltfile.

No cluster, no Docker engine, no network. `kubectl kustomize` (client only) renders the
manifests: the overlays in the repository and every combination of the optional components
(tests/deploy/kube.py); kubernetes-validate checks every object against the Kubernetes JSON
schemas it ships (KEDA's ScaledObject against tests/deploy/keda_scaledobject.schema.json), and
starlark-go (the Go Starlark interpreter, the one Tilt embeds) evaluates the Tiltfile against
stubs of Tilt's built-ins that record each call. NetworkPolicies: test_network_policies.py;
checkov: test_checkov.py.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import starlark_go
import yaml

from tests.deploy.kube import (
    APP_IMAGE,
    CLUSTER_SCOPED_KINDS,
    COMPONENTS,
    CONTROL_PLANE,
    EXECUTORS,
    IN_REPO,
    K8S,
    K8S_VERSIONS,
    KEDA_SCHEMA,
    MIGRATION_JOB,
    NAMESPACE,
    OPTIONAL_COMPONENTS,
    ROOT,
    TARGETS,
    Obj,
    apps,
    by_kind,
    config_of,
    containers,
    cpus,
    custom_resource_validator,
    env_of,
    image_name,
    is_app,
    is_digest,
    mounted_secret,
    pod_spec,
    port_number,
    render,
    schema_problems,
    selects,
    serving,
    with_component,
    workloads,
)

SERVICES = frozenset({"registry", "scheduler", "executor", "gateway", "reconciler"})
# In the contract and deployed, but `scns run` has no such choice yet (its pods crash-loop
# until it lands): remove a name once the service exists.
NOT_BUILT_YET: frozenset[str] = frozenset()
HTTP_SERVICES = frozenset({"gateway"})  # serve /healthz, /readyz, /metrics on their own port
HEALTH_PORT = 9100  # SCNS_HEALTH_PORT of the other services
GATEWAY_PORT = 8080
DATASTORES = frozenset({"redis", "postgres"})
SECRET = "scns-connection"
SECRET_DIR = "/var/run/secrets/scns"
DEV_PASSWORD = "dev-only-insecure-password"
PRIORITY = {"control-plane": "scns-control-plane", "worker": "scns-worker"}
# After SCNS_DRAIN_GRACE_S (running jobs finish) and SCNS_KILL_GRACE_S (SIGTERM..SIGKILL of
# the rest): requeue what is left and deregister. terminationGracePeriodSeconds is the sum.
EXECUTOR_SHUTDOWN_MARGIN_S = 20
PROD = tuple(name for name in TARGETS if name.startswith("prod-arm64"))


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _service_of(workload: Obj) -> str:
    """The service a workload runs: its name, but for the executor pool's."""
    name = str(workload["metadata"]["name"])
    return "executor" if name in EXECUTORS else name


# --- (a) kustomize renders every overlay and every combination of components ------------------
def test_kustomize_renders(target: str) -> None:
    objs = render(target)
    assert objs, f"{target} rendered nothing"
    seen: set[tuple[str, str]] = set()
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        assert key not in seen, f"{target}: duplicate {key}"
        seen.add(key)
        if o["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in o["metadata"], f"{target}: {key} is cluster-scoped"
        else:
            assert o["metadata"].get("namespace") == NAMESPACE, f"{target}: {key} namespace"
    assert ("Namespace", NAMESPACE) in seen


def test_the_targets_cover_every_component_and_say_what_the_overlays_use() -> None:
    on_disk = {p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file()}
    assert set(OPTIONAL_COMPONENTS) == on_disk
    for name in IN_REPO:
        path = TARGETS[name].path
        assert path is not None
        kustomization = yaml.safe_load((path / "kustomization.yaml").read_text("utf-8"))
        listed = {Path(c).name for c in kustomization.get("components", [])}
        assert listed == TARGETS[name].components, name


# --- (b) schemas ---------------------------------------------------------------------------------
def test_kubernetes_versions_span_the_supported_range() -> None:
    assert K8S_VERSIONS[0] == "1.30"
    latest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    assert K8S_VERSIONS[-1] == latest
    assert len(K8S_VERSIONS) == int(latest.split(".")[1]) - 30 + 1, K8S_VERSIONS


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_schema(target: str, version: str) -> None:
    problems = [p for o in render(target) for p in schema_problems(o, version)]
    assert not problems, f"{target} against Kubernetes {version}:\n" + "\n".join(problems)


def test_the_scaled_object_schema_is_closed() -> None:
    """The hand-written KEDA schema rejects what KEDA would: a typo, a number where KEDA reads
    a string, a trigger type we do not describe."""
    validator = custom_resource_validator(KEDA_SCHEMA)
    (good,) = by_kind(render("base+autoscaling"), "ScaledObject").values()
    assert not list(validator.iter_errors(good))
    spec_typo = copy.deepcopy(good)
    spec_typo["spec"]["cooldownPeriods"] = spec_typo["spec"].pop("cooldownPeriod")
    number = copy.deepcopy(good)
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 14
    metadata_typo = copy.deepcopy(good)
    metadata = metadata_typo["spec"]["triggers"][0]["metadata"]
    metadata["serveraddress"] = metadata.pop("serverAddress")
    behavior_typo = copy.deepcopy(good)
    hpa = behavior_typo["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    hpa["behaviour"] = hpa.pop("behavior")
    for bad in (spec_typo, number, metadata_typo, behavior_typo):
        assert list(validator.iter_errors(bad)), bad["spec"]


# --- (c) conventions every workload follows -------------------------------------------------------
def test_every_service_runs_as_scns_run(target: str) -> None:
    kinds: dict[str, str] = {}
    services = set()
    for w in serving(render(target)):
        if not is_app(w):
            continue
        name = w["metadata"]["name"]
        (c,) = pod_spec(w)["containers"]
        argv = [*c.get("command", []), *c.get("args", [])]
        assert argv[:2] == ["scns", "run"] and len(argv) == 3, f"{name}: {argv}"
        assert argv[2] in SERVICES, f"{name} runs unknown service {argv[2]!r}"
        assert argv[2] == _service_of(w), "workloads are named after their service"
        kinds[name] = w["kind"]
        services.add(argv[2])
    assert services == SERVICES
    for name, kind in EXECUTORS.items():
        assert kinds.pop(name, kind) == kind, name
    assert set(kinds) == CONTROL_PLANE
    assert set(kinds.values()) == {"Deployment"}
    pool = "executor-pool" in by_kind(render(target), "StatefulSet")
    assert pool == ("autoscaling" in TARGETS[target].components)


def test_every_deployed_service_is_a_scns_run_choice() -> None:
    from services.cli.main import SERVICES as CLI_SERVICES

    missing = SERVICES - set(CLI_SERVICES)
    assert missing <= NOT_BUILT_YET, f"`scns run` does not know {sorted(missing)}"


def test_every_container_is_hardened_and_sized(target: str) -> None:
    for w in workloads(render(target)):
        name = w["metadata"]["name"]
        pod = pod_spec(w)
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod.get("enableServiceLinks") is False, name
        for constraint in pod.get("topologySpreadConstraints", []):
            # tainted nodes the pod may not use do not count as empty domains
            assert constraint.get("nodeTaintsPolicy") == "Honor", name
        for c in containers(w):
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, f"{name}/{c['name']}: runAsNonRoot"
            assert sc.get("runAsUser", 1) != 0, f"{name}/{c['name']}: runAsUser 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}/{c['name']}"
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            # dev trades it for Tilt's live_update (code synced into the running container)
            if not (target == "dev" and is_app(w)):
                assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                have = c.get("resources", {}).get(kind, {})
                assert {"cpu", "memory"} <= set(have), f"{name}/{c['name']}: {kind} {have}"


def test_long_running_containers_have_probes(target: str) -> None:
    """Probes belong to pods that run until stopped; a Job's pod runs to completion and has
    none (test_migration_job_runs_once_to_completion)."""
    for w in serving(render(target)):
        for c in containers(w):
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{w['metadata']['name']}/{c['name']}: no {probe}"


def test_app_pods_have_a_priority_class_and_say_why_they_stopped(target: str) -> None:
    objs = render(target)
    classes = by_kind(objs, "PriorityClass")
    assert set(classes) == set(PRIORITY.values())
    for pc in classes.values():
        assert pc.get("globalDefault") is False
        assert 0 < pc["value"] < 1_000_000_000, "user classes stay below the system ones"
        assert len(pc.get("description", "")) > 40, pc["metadata"]["name"]
    assert classes[PRIORITY["control-plane"]]["value"] > classes[PRIORITY["worker"]]["value"]
    assert classes[PRIORITY["worker"]].get("preemptionPolicy") == "Never"
    for w in apps(objs):
        name = w["metadata"]["name"]
        role = "worker" if name in EXECUTORS else "control-plane"
        assert pod_spec(w).get("priorityClassName") == PRIORITY[role], name
        for c in containers(w):
            # exit 78 (a start-up check refused) and its one-line reason: in `describe pod`
            assert c.get("terminationMessagePolicy") == "FallbackToLogsOnError", name


def test_app_probes_and_metrics_use_the_service_health_endpoints(target: str) -> None:
    for w in serving(render(target)):
        if not is_app(w):
            continue
        name = w["metadata"]["name"]
        (c,) = pod_spec(w)["containers"]
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
    config = config_of(objs)
    assert config["SCNS_GATEWAY_HOST"] == "0.0.0.0"
    assert "{" in config["SCNS_KEY_PREFIX"], "the key prefix needs a Redis hash tag"
    assert float(config["SCNS_WORKER_TTL_S"]) > float(config["SCNS_HEARTBEAT_S"])
    assert config["SCNS_LOG_FORMAT"] == "json"
    (name,) = (o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"
               and o["metadata"]["name"].startswith("scns-config"))
    for w in apps(objs):
        (c,) = pod_spec(w)["containers"]
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        assert refs == [name], w["metadata"]["name"]


def test_services_migrate_at_start_unless_the_migration_job_does(target: str) -> None:
    objs = render(target)
    job = MIGRATION_JOB in by_kind(objs, "Job")
    assert job == ("migrations" in TARGETS[target].components)
    assert config_of(objs)["SCNS_MIGRATE_ON_START"] == ("0" if job else "1")


_SECRETISH = re.compile(r"(URL|PASSWORD|PASSWD|SECRET|TOKEN|DSN|CREDENTIAL)", re.IGNORECASE)
_CREDENTIAL_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*@")
CONNECTION = {"SCNS_REDIS_URL": "redis-url", "SCNS_DATABASE_URL": "database-url"}


def test_no_plain_text_secrets_in_env(target: str) -> None:
    objs = render(target)
    for w in workloads(objs):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            for e in c.get("env", []):
                if "value" not in e:
                    continue
                if e["name"].endswith("_FILE"):  # the path of a mounted Secret's file
                    assert e["value"].startswith("/"), f"{where}: {e['name']}"
                else:
                    assert not _SECRETISH.search(e["name"]), f"{where}: {e['name']} is literal"
                assert not _CREDENTIAL_URL.match(e["value"]), f"{where}: {e['name']}"
                assert "://" not in e["value"], f"{where}: {e['name']} holds a URL"
    for cm in by_kind(objs, "ConfigMap").values():
        for k, v in cm.get("data", {}).items():
            assert not _SECRETISH.search(k) and "://" not in v, f"ConfigMap {k}"


def test_the_control_plane_reads_secrets_from_files_the_executors_from_env(target: str) -> None:
    """Files for the control plane (nothing secret in its environment); the environment for the
    executors, ON PURPOSE: their jobs run as their uid and could read a mounted file, while the
    executor's environment is not readable by them (ARCHITECTURE.md "Users and isolation")."""
    for w in apps(render(target)):
        name = w["metadata"]["name"]
        (c,) = pod_spec(w)["containers"]
        env = env_of(c)
        if name in EXECUTORS:
            for var, key in CONNECTION.items():
                ref = env[var].get("valueFrom", {}).get("secretKeyRef")
                assert ref == {"name": SECRET, "key": key}, f"{name}: {var} -> {ref}"
                assert f"{var}_FILE" not in env, name
            assert not [v for v in pod_spec(w).get("volumes", []) if "secret" in v], (
                f"{name}: a Secret mounted in an executor pod is readable by its jobs")
            skip = w["metadata"].get("annotations", {}).get("checkov.io/skip1", "")
            assert skip.startswith("CKV_K8S_35="), f"{name}: say why the URLs are in env"
            continue
        refs = [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        assert not refs, f"{name}: secrets in the environment"
        if name in CONTROL_PLANE:
            for var, key in CONNECTION.items():
                assert var not in env, f"{name}: {var} and {var}_FILE"
                path = env[f"{var}_FILE"]["value"]
                assert path == f"{SECRET_DIR}/{key}", f"{name}: {var}_FILE"
                assert mounted_secret(w, c, path) == (SECRET, key), f"{name}: {var}_FILE"


def _references(workload: Obj) -> Iterator[tuple[str, str, str | None]]:
    """What a workload names: (kind, name, the key for a Secret's)."""
    pod = pod_spec(workload)
    if "serviceAccountName" in pod:
        yield "ServiceAccount", pod["serviceAccountName"], None
    if "priorityClassName" in pod:
        yield "PriorityClass", pod["priorityClassName"], None
    if workload["kind"] == "StatefulSet":
        yield "Service", workload["spec"]["serviceName"], None
    for c in containers(workload):
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                yield "ConfigMap", src["configMapRef"]["name"], None
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield "Secret", ref["name"], ref["key"]
    for volume in pod.get("volumes", []):
        secret = volume.get("secret")
        if secret is not None:
            assert secret.get("items"), f"{volume['name']}: mount only the keys it reads"
            for item in secret["items"]:
                yield "Secret", secret["secretName"], item["key"]


def test_references_resolve(target: str) -> None:
    objs = render(target)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    # Only the dev component carries a Secret; elsewhere it is created out of band.
    external = (set() if "dev-datastores" in TARGETS[target].components
                else {("Secret", SECRET)})
    for w in workloads(objs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        for kind, name, key in _references(w):
            if (kind, name) in external:
                continue
            assert (kind, name) in names, f"{where}: no {kind} {name}"
            if key is not None:
                secret = by_kind(objs, "Secret")[name]
                keys = {**secret.get("data", {}), **secret.get("stringData", {})}
                assert key in keys, f"{where}: Secret {name} has no key {key}"
        volumes = {v["name"] for v in pod_spec(w).get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in containers(w):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, where
        if w["kind"] == "StatefulSet":  # its governing Service is headless
            service = by_kind(objs, "Service")[w["spec"]["serviceName"]]
            assert service["spec"].get("clusterIP") == "None", where
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in by_kind(objs, kind).values():
            ref = obj["spec"]["scaleTargetRef"]
            assert ref.get("apiVersion", "apps/v1") == "apps/v1", obj["metadata"]["name"]
            assert (ref.get("kind", "Deployment"), ref["name"]) in names, ref


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
        assert pods[name]["app.kubernetes.io/name"] == name
        assert pods[name]["app.kubernetes.io/part-of"] == "scns-conductor"
        assert "app.kubernetes.io/component" in pods[name]
        if w["kind"] == "Job":  # the Job controller makes its own selector
            assert "selector" not in w["spec"], name
            continue
        selector = w["spec"]["selector"]["matchLabels"]
        selected = [n for n, labels in pods.items() if selects(selector, labels)]
        assert selected == [name], f"{name}'s selector matches {selected}"
    for svc in by_kind(objs, "Service").values():
        matched = [n for n, labels in pods.items() if selects(svc["spec"]["selector"], labels)]
        assert matched == [svc["metadata"]["name"]], f"Service {svc['metadata']['name']}"
    gateway = by_kind(objs, "Service")["gateway"]
    assert [(p["port"], p["targetPort"]) for p in gateway["spec"]["ports"]] == [(8080, "http")]
    pdbs = by_kind(objs, "PodDisruptionBudget")
    assert set(pdbs) == set(by_kind(objs, "Deployment")), "one budget per Deployment"
    for name, pdb in pdbs.items():
        assert selects(pdb["spec"]["selector"]["matchLabels"], pods[name]), name
        assert pdb["spec"].get("maxUnavailable") == 1, name


# --- (d) executors: rollouts, scale-in and node autoscalers never cut jobs short --------------
def test_executors_drain_before_they_stop(target: str) -> None:
    objs = render(target)
    executors = [w for w in workloads(objs) if w["metadata"]["name"] in EXECUTORS]
    assert {w["metadata"]["name"] for w in executors} >= {"executor"}
    for w in executors:
        name = w["metadata"]["name"]
        assert w["kind"] == EXECUTORS[name], name
        pod = pod_spec(w)
        (c,) = pod["containers"]
        env = env_of(c)
        # Drain (jobs finish) + kill grace (SIGTERM..SIGKILL) + requeue and goodbye, or the
        # kubelet kills the executor mid-drain: set explicitly, and summed exactly.
        drain = float(env["SCNS_DRAIN_GRACE_S"]["value"])
        kill = float(env["SCNS_KILL_GRACE_S"]["value"])
        grace = pod["terminationGracePeriodSeconds"]
        assert grace == drain + kill + EXECUTOR_SHUTDOWN_MARGIN_S, (name, grace, drain, kill)
        # A restart kills every running job: only a process wedged for minutes is restarted.
        liveness = c["livenessProbe"]
        assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 120, name
        assert liveness.get("timeoutSeconds", 1) >= 5, name
        # A new template reaches an executor when an operator replaces the drained pod.
        strategy = w["spec"]["updateStrategy"]["type"]
        assert strategy == ("RollingUpdate" if target == "dev" else "OnDelete"), name
        notes = w["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("karpenter.sh/do-not-disrupt") == "true", name
        assert notes.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false", name
        assert pod.get("shareProcessNamespace") is True, "a PID 1 that reaps orphaned jobs"
        # A stable worker id: the node's name, or the StatefulSet pod's.
        field = "spec.nodeName" if w["kind"] == "DaemonSet" else "metadata.name"
        assert env["SCNS_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == field, name
        assert env["SCNS_DATA_DIR"]["value"] == "/var/lib/scns"
        assert "SCNS_WORKER_CPUS" not in env and "SCNS_WORKER_MEMORY_MB" not in env
        res = c["resources"]
        for r in ("cpu", "memory"):  # Guaranteed QoS: the cgroup is what the kubelet reserved
            assert res["requests"][r] == res["limits"][r], f"{name} {r} requests != limits"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in ("/var/lib/scns", "/tmp"):
            assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{name}: {path}"


@pytest.mark.parametrize("name", with_component("autoscaling"))
def test_the_autoscaled_pool_follows_the_demand_for_cpus(name: str) -> None:
    objs = render(name)
    pool = by_kind(objs, "StatefulSet")["executor-pool"]
    daemon = by_kind(objs, "DaemonSet")["executor"]
    labels = pool["spec"]["template"]["metadata"]["labels"]
    assert not selects(daemon["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in pool["spec"], "KEDA owns the count; apply must not reset it"
    assert pool["spec"]["podManagementPolicy"] == "Parallel"
    (c,) = pod_spec(pool)["containers"]
    (d,) = pod_spec(daemon)["containers"]
    assert c["image"] == d["image"], "the pool runs the executor's image"
    assert c.get("imagePullPolicy") == "Always"
    env = env_of(c)
    labels_env = dict(kv.split("=", 1) for kv in env["SCNS_WORKER_LABELS"]["value"].split(","))
    assert labels_env.get("pool") == "autoscaled"
    assert float(env["SCNS_DRAIN_GRACE_S"]["value"]) >= 3600, "scale-in waits for jobs"
    # KEDA: replicas = ceil(CPUs needed beyond the other pools / one pod's CPUs)
    scaled = by_kind(objs, "ScaledObject")["executor-pool"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                        "name": "executor-pool"}
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] >= 600
    (trigger,) = scaled["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    meta = trigger["metadata"]
    assert float(meta["threshold"]) == cpus(c["resources"]["limits"]["cpu"])
    assert meta["ignoreNullValues"] == "false", "no metric must not read as no demand"
    query = " ".join(meta["query"].split())
    assert query.startswith("clamp_min(max(scns_scheduler_demand_cpus) - ")
    assert query.endswith(", 0)")
    assert 'sum(max by (pool) (scns_scheduler_worker_cpus{pool!="autoscaled"}))' in query
    assert "or vector(0)" in query
    assert query.count("(") == query.count(")")
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    down, up = behavior["scaleDown"], behavior["scaleUp"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert [(p["type"], p["value"]) for p in down["policies"]] == [("Pods", 1)]
    assert up["stabilizationWindowSeconds"] <= 60
    # The gateway: an HPA, and no replica count for `kubectl apply` to put back.
    gateway = by_kind(objs, "Deployment")["gateway"]
    assert "replicas" not in gateway["spec"]
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "gateway"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


# --- (e) the gateway and the migration Job ----------------------------------------------------
def test_gateway_leaves_the_service_before_it_stops(target: str) -> None:
    gateway = by_kind(render(target), "Deployment")["gateway"]
    pod = pod_spec(gateway)
    (c,) = pod["containers"]
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    pause = float(command[1])
    assert 3 <= pause <= 15, "long enough for endpoints to drop the pod, not more"
    assert pod["terminationGracePeriodSeconds"] >= pause + 20, "the pause, then the shutdown"


@pytest.mark.parametrize("name", with_component("migrations"))
def test_migration_job_runs_once_to_completion(name: str) -> None:
    objs = render(name)
    job = by_kind(objs, "Job")[MIGRATION_JOB]
    spec, pod = job["spec"], pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert 1 <= spec["backoffLimit"] <= 6
    assert spec["ttlSecondsAfterFinished"] >= 3600, "its log stays readable for a while"
    (c,) = pod["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv[:2] == ["scns", "migrate"], argv
    wait = float(argv[argv.index("--wait") + 1])
    assert wait >= 60
    assert spec["activeDeadlineSeconds"] > wait, "the wait fits in the deadline"
    env = env_of(c)
    assert env["SCNS_APP_ROLE"]["value"] == "scns_app"
    path = env["SCNS_MIGRATE_DATABASE_URL_FILE"]["value"]
    assert mounted_secret(job, c, path) == (SECRET, "migrate-database-url")
    for var in (*CONNECTION, *(f"{v}_FILE" for v in CONNECTION), "SCNS_MIGRATE_DATABASE_URL"):
        assert var not in env, f"the migration reads its own URL only, not {var}"
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(c), "a Job: no probes"
    notes = job["metadata"].get("annotations", {})
    assert notes.get("argocd.argoproj.io/hook") == "PreSync"
    assert notes.get("argocd.argoproj.io/hook-delete-policy") == "BeforeHookCreation"
    assert config_of(objs)["SCNS_MIGRATE_ON_START"] == "0"


# --- (f) the overlays ---------------------------------------------------------------------------
def test_dev_overlay_is_small_and_self_contained() -> None:
    objs = render("dev")
    for w in workloads(objs):
        name = w["metadata"]["name"]
        assert w["spec"].get("replicas", 1) == 1, name
        for c in containers(w):
            assert c.get("imagePullPolicy") == "IfNotPresent", name
            if is_app(w):
                assert c["image"] == f"{APP_IMAGE}:dev", name
    assert not by_kind(objs, "Job"), "dev migrates at start-up"
    assert not by_kind(objs, "ScaledObject") and not by_kind(objs, "HorizontalPodAutoscaler")
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


_DIGEST_PINNED = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}(:[0-9]+)?/[a-z0-9._/-]+@(?P<digest>\S+)$")


@pytest.mark.parametrize("name", PROD)
def test_prod_arm64_pins_every_pod_to_arm64_and_its_image_by_digest(name: str) -> None:
    objs = render(name)
    assert not set(by_kind(objs, "StatefulSet")) & DATASTORES, "no Redis/PostgreSQL in-cluster"
    assert not set(by_kind(objs, "Service")) & DATASTORES
    assert SECRET not in by_kind(objs, "Secret"), "prod's Secret is managed out of band"
    scaled = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]
              for h in by_kind(objs, "HorizontalPodAutoscaler").values()}
    for w in workloads(objs):
        where = w["metadata"]["name"]
        pod = pod_spec(w)
        assert _tolerates(pod, "kubernetes.io/arch", "arm64"), where
        if where != "executor-pool":  # its own node group (components/autoscaling)
            assert pod.get("nodeSelector", {}).get("kubernetes.io/arch") == "arm64", where
        for c in containers(w):
            match = _DIGEST_PINNED.match(c["image"])
            assert match, f"{where}: {c['image']} is not a registry image pinned by digest"
            assert is_digest(match["digest"]), c["image"]
            assert image_name(c["image"]).endswith(f"/{APP_IMAGE}"), c["image"]
            assert c.get("imagePullPolicy") == "Always", where
        if w["kind"] == "Deployment":
            replicas = scaled[where]["minReplicas"] if where in scaled else w["spec"]["replicas"]
            assert replicas >= 2, where
            keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
            assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, where
    executor = pod_spec(by_kind(objs, "DaemonSet")["executor"])
    assert executor["nodeSelector"]["scns.io/worker-pool"] == "true"
    assert _tolerates(executor, "scns.io/worker-pool", "true")
    assert MIGRATION_JOB in by_kind(objs, "Job")
    assert config_of(objs)["SCNS_MIGRATE_ON_START"] == "0"


# --- (g) credentials ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, t in TARGETS.items()
                                  if "dev-datastores" not in t.components])
def test_no_dev_credentials_outside_the_dev_component(name: str) -> None:
    rendered = json.dumps(render(name))
    assert DEV_PASSWORD not in rendered, f"{name} renders the dev password"
    assert not by_kind(render(name), "Secret"), f"{name} must not carry a Secret"


def test_no_dev_credentials_in_the_files_outside_the_dev_component() -> None:
    """Nor in their source files (an unused file could still be applied by hand)."""
    roots = [K8S / "base", K8S / "overlays" / "prod-arm64",
             *(COMPONENTS / c for c in OPTIONAL_COMPONENTS if c != "dev-datastores")]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert DEV_PASSWORD not in path.read_text("utf-8"), path
    assert not (K8S / "overlays" / "prod-arm64" / "delete-placeholder-secret.yaml").exists()


def test_dev_renders_its_placeholder_secret() -> None:
    secret = by_kind(render("dev"), "Secret")[SECRET]["stringData"]
    assert set(secret) == {"redis-url", "database-url", "migrate-database-url",
                           "postgres-password"}
    assert secret["postgres-password"] == DEV_PASSWORD
    assert DEV_PASSWORD in secret["migrate-database-url"]


# --- (h) the Tiltfile -----------------------------------------------------------------------------
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
    assert (ROOT / path).resolve() == K8S / "overlays" / "dev"
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
