"""Rendering deploy/k8s offline, and reading what it renders (shared by tests/deploy).

A *target* is a kustomization: the three in the repository (base, dev, prod-arm64) and ones
generated on the fly on top of them, each adding optional components, so that every
combination a user may build is rendered and checked like the shipped overlays. Nothing here
talks to a cluster: `kubectl kustomize` runs client-side only.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPONENTS = K8S / "components"
NAMESPACE = "scns"
Obj = dict[str, Any]

# Optional components (deploy/k8s/components), in the order a generated kustomization lists them.
OPTIONAL_COMPONENTS = ("network-policy", "dev-datastores", "migrations", "autoscaling")


@dataclass(frozen=True)
class Target:
    """A kustomization to render: `path` in the repository, or generated on top of the target
    `on_top_of` adding the components `adds`. `components`: every optional one in effect."""

    name: str
    components: frozenset[str]
    path: Path | None = None
    on_top_of: str = ""
    adds: tuple[str, ...] = ()


def _targets() -> dict[str, Target]:
    out = {
        "base": Target("base", frozenset(), K8S / "base"),
        "dev": Target("dev", frozenset({"dev-datastores", "network-policy"}),
                      K8S / "overlays" / "dev"),
        "prod-arm64": Target("prod-arm64", frozenset({"network-policy", "migrations"}),
                             K8S / "overlays" / "prod-arm64"),
    }
    # The base with every non-empty subset of the optional components...
    for n in range(1, len(OPTIONAL_COMPONENTS) + 1):
        for combo in itertools.combinations(OPTIONAL_COMPONENTS, n):
            name = "+".join(("base", *combo))
            out[name] = Target(name, frozenset(combo), on_top_of="base", adds=combo)
    # ...and production with autoscaling, the way its component says to enable it.
    prod = out["prod-arm64"]
    out["prod-arm64+autoscaling"] = Target("prod-arm64+autoscaling",
                                           prod.components | {"autoscaling"},
                                           on_top_of="prod-arm64", adds=("autoscaling",))
    return out


TARGETS = _targets()
IN_REPO = tuple(name for name, t in TARGETS.items() if t.path is not None)


def with_component(component: str) -> list[str]:
    return [name for name, t in TARGETS.items() if component in t.components]


def _generated_kustomization(target: Target, where: Path) -> str:
    """Like an overlay of a user's own: relative paths (kustomize refuses absolute ones), and
    no `namespace:` (a user following a component's instructions may not set one either, so
    the components name their namespace themselves)."""
    def rel(path: Path) -> str:
        return os.path.relpath(path, where)

    below = TARGETS[target.on_top_of].path
    assert below is not None, "generate on top of a kustomization in the repository"
    return yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [rel(below)],
        "components": [rel(COMPONENTS / c) for c in target.adds],
    })


@functools.cache
def _kustomize(name: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: cannot run `kubectl kustomize`")
    target = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix="scns-kustomize-") as tmp:
        path = target.path
        if path is None:
            path = Path(tmp)
            (path / "kustomization.yaml").write_text(_generated_kustomization(target, path),
                                                     "utf-8")
        proc = subprocess.run(
            [kubectl, "kustomize", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert proc.returncode == 0, f"kubectl kustomize {name} failed:\n{proc.stderr}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(proc.stdout, Loader=loader) if doc)


def render(target: str) -> list[Obj]:
    return list(_kustomize(target))


def render_text(target: str) -> str:
    """The rendered manifests as one YAML stream (what `kubectl apply -f -` would get)."""
    return yaml.safe_dump_all(render(target), sort_keys=False)


# --- reading objects -----------------------------------------------------------------------------
SERVING_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet"})  # long-running pods
WORKLOAD_KINDS = SERVING_KINDS | {"Job"}
CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "PriorityClass"})
APP_IMAGE = "scns-conductor"
# Workloads that run executors (jobs run inside their pods), and the kind each must be.
EXECUTORS = {"executor": "DaemonSet", "executor-pool": "StatefulSet"}
CONTROL_PLANE = frozenset({"registry", "scheduler", "reconciler", "gateway"})
MIGRATION_JOB = "scns-migrate"


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def serving(objs: list[Obj]) -> list[Obj]:
    """Workloads whose pods run until stopped (as opposed to a Job's, which run to completion)."""
    return [o for o in objs if o["kind"] in SERVING_KINDS]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def image_name(image: str) -> str:
    """`registry:5000/scns/scns-conductor:1.0@sha256:...` -> `registry:5000/scns/scns-conductor`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def is_app(workload: Obj) -> bool:
    """A workload running the scns-conductor image (as opposed to a dev datastore)."""
    return any(image_name(c["image"]).rsplit("/", 1)[-1] == APP_IMAGE
               for c in containers(workload))


def apps(objs: list[Obj]) -> list[Obj]:
    return [w for w in workloads(objs) if is_app(w)]


def by_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def config_of(objs: list[Obj]) -> dict[str, str]:
    """The data of scns-config, the settings every service reads (a generated ConfigMap)."""
    (config,) = (o for o in objs if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"].startswith("scns-config"))
    data: dict[str, str] = config["data"]
    return data


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: probe uses undeclared port {port!r}"
    return int(named[port])


def cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("14", "500m", 2) in CPUs."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def matches(selector: Obj, labels: dict[str, str]) -> bool:
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


def mounted_secret(workload: Obj, container: Obj, path: str) -> tuple[str, str]:
    """The (Secret, key) whose file `container` reads at `path`, through a `secret` volume."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    where = f"{workload['metadata']['name']}/{container['name']}"
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        volume = volumes[mount["name"]]
        if not path.startswith(prefix) or "secret" not in volume:
            continue
        assert mount.get("readOnly") is True, f"{where}: {mount['mountPath']} is writable"
        # subPath mounts never see an updated Secret and hide the volume's atomic swaps
        assert "subPath" not in mount, f"{where}: subPath mount of a Secret"
        secret = volume["secret"]
        # group-readable (fsGroup) at most: nothing for other users of the node's files
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{where}: world-readable"
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        rel = path[len(prefix):]
        key = items.get(rel) if items else rel
        assert key, f"{where}: the volume {mount['name']} has no file {rel!r}"
        return str(secret["secretName"]), key
    raise AssertionError(f"{where}: no Secret mounted where {path} is")


# --- schemas ---------------------------------------------------------------------------------
def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


OLDEST_KUBERNETES = (1, 30)  # the oldest we claim to support
# Every minor version from there to the newest the schema package ships.
K8S_VERSIONS = tuple(f"{major}.{minor}" for major, minor in sorted(
    {_minor(v) for v in all_versions() if _minor(v) >= OLDEST_KUBERNETES}))
KEDA_SCHEMA = Path(__file__).with_name("keda_scaledobject.schema.json")
CUSTOM_RESOURCES = {("keda.sh/v1alpha1", "ScaledObject"): KEDA_SCHEMA}


@functools.cache
def custom_resource_validator(schema: Path) -> jsonschema.protocols.Validator:
    contents = json.loads(schema.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(contents)
    cls.check_schema(contents)
    validator: jsonschema.protocols.Validator = cls(contents)
    return validator


@functools.cache
def _schema_problems(text: str, version: str) -> tuple[str, ...]:
    obj = json.loads(text)
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    custom = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
    if custom is not None:  # kubernetes-validate knows only the built-in kinds
        errors = custom_resource_validator(custom).iter_errors(obj)
        return tuple(sorted(f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                            for e in errors))
    try:
        # strict: unknown fields (a typo such as `readinesProbe`) are errors too.
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return (f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}",)
    except kubernetes_validate.SchemaNotFoundError as e:
        return (e.message,)
    return ()


def schema_problems(obj: Obj, version: str) -> tuple[str, ...]:
    """What the Kubernetes `version` schema (or ours, for a custom resource) finds wrong."""
    return _schema_problems(json.dumps(obj, sort_keys=True), version)


_HEX64 = re.compile(r"^sha256:[0-9a-f]{64}$")


def is_digest(text: str) -> bool:
    return bool(_HEX64.match(text))
