"""docs/operations.md held to the repository, so that the runbook cannot drift from what it runs.

Offline: the guide is read as text, the production renders come from `kubectl kustomize`
(tests/deploy/kube.py), the CLI from its click group, settings and metrics from the sources.
Every object, path, variable, command, option, metric, label key and number the guide names must
exist, and the numbers it quotes must be the manifests'. Each check is a function returning the
problems it finds; the last test plants one mistake per check in a copy of the guide and makes
sure that check reports it.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import click
import pytest
import yaml

from services.cli.main import cli
from shared.fencing import CHECK_S, Fence
from shared.settings import Settings
from tests.deploy.kube import (
    COMPONENTS,
    K8S,
    ROOT,
    Obj,
    by_kind,
    containers,
    env_of,
    pod_spec,
    render,
    workloads,
)

DOC = ROOT / "docs" / "operations.md"
TITLES = (
    "What runs where",
    "Managed datastore requirements",
    "First install",
    "Upgrade",
    "Drain a node",
    "Scale",
    "Back up and restore PostgreSQL",
    "When Redis is lost",
    "Partitions, clocks and fencing",
    "Troubleshooting",
)
# What the guide operates: production, and production with the autoscaling component added the
# way that component's kustomization says (tests/deploy/kube.py renders both).
PROD = ("prod-arm64", "prod-arm64+autoscaling")
PROD_OVERLAY = K8S / "overlays" / "prod-arm64"
# Created by the operator, never rendered (a test below holds this to the overlay's comment and
# to the workloads that read it).
SECRET = "scns-connection"
OUT_OF_BAND = frozenset({("Secret", SECRET)})
GENERATED = {"ConfigMap": "scns-config"}  # a generator's name; the render appends a hash
SOURCES = [p for d in ("shared", "services") for p in sorted((ROOT / d).rglob("*.py"))]

TIMES = "\N{MULTIPLICATION SIGN}"  # as the guide writes 9 x 20 s
Problems = list[str]


# --- reading the guide --------------------------------------------------------------------------
@dataclass(frozen=True)
class Doc:
    text: str
    titles: tuple[str, ...]  # the `## ` headings, in order
    sections: dict[str, str]  # heading -> its text
    code: tuple[str, ...]  # fenced lines (continuations joined), then the inline code spans

    @classmethod
    def load(cls, path: Path) -> Doc:
        text = path.read_text("utf-8")
        titles: list[str] = []
        sections: dict[str, str] = {}
        fenced: list[str] = []
        prose: list[str] = []
        current, in_fence, pending = "", False, ""
        for line in text.splitlines():
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                prose.append("")
            elif in_fence:
                stripped = line.strip()
                if stripped.endswith("\\"):
                    pending += stripped[:-1] + " "
                else:
                    fenced.append(pending + stripped)
                    pending = ""
            elif line.startswith("## "):
                current = line[3:].strip()
                titles.append(current)
                sections[current] = ""
                prose.append("")
                continue
            else:
                prose.append(line)
            if current:
                sections[current] += line + "\n"
        inline = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", "\n".join(prose))]
        return cls(text=text, titles=tuple(titles), sections=sections,
                   code=(*fenced, *inline))


def units(text: str) -> list[str]:
    """Sentences of prose, rows of tables, lines of code: where a figure and its name meet."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.splitlines() if line.strip()]
        if any(line.startswith(("|", "```")) for line in lines):
            out += lines
        else:
            out += re.split(r"(?<=[.!?:])\s+(?=[A-Z`(*])", " ".join(lines))
    return out


def says(text: str, name: str, value: object) -> bool:
    """Some sentence or row of `text` has both `name` and `value` (as a whole number)."""
    number = re.compile(rf"(?<![\d.]){re.escape(str(value))}(?!\d|\.\d)")
    return any(name in u and number.search(u) for u in units(text))


def segments(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as words (quotes honoured where they parse)."""
    line = re.sub(r"(^|\s)#.*$", "", line)
    for part in re.split(r"\|\||&&|;|\||\$\(|\)|`|\s--\s", line):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        while words and (words[0] in {"{", "}", "!", "do", "then", "until", "while", "if",
                                      "env", "export"}
                         or re.match(r"^[A-Za-z_]\w*=", words[0])):
            words.pop(0)
        if words:
            yield words


@functools.cache
def guide() -> Doc:
    return Doc.load(DOC)


@functools.cache
def objects() -> tuple[Obj, ...]:
    seen: dict[tuple[str, str], Obj] = {}
    for target in PROD:
        for o in render(target):
            seen.setdefault((o["kind"], o["metadata"]["name"]), o)
    return tuple(seen.values())


def names(objs: tuple[Obj, ...]) -> set[tuple[str, str]]:
    out = {(o["kind"], o["metadata"]["name"]) for o in objs} | OUT_OF_BAND
    for kind, generated in GENERATED.items():
        if any(k == kind and n.startswith(generated + "-") for k, n in out):
            out.add((kind, generated))
    return out


# --- (a) the sections ---------------------------------------------------------------------------
def title_problems(doc: Doc) -> Problems:
    return [] if doc.titles == TITLES else [
        f"the `## ` sections are {list(doc.titles)}, want exactly {list(TITLES)}"]


# --- (b) paths ------------------------------------------------------------------------------------
PATH = re.compile(r"(?<![\w./-])((?:deploy|shared|services|docs|tests|examples)/[\w./-]*[\w-])")
K8S_PATH = re.compile(r"(?<![\w./-])((?:overlays|components|base)/[\w./-]*[\w-])")


def path_problems(doc: Doc, objs: tuple[Obj, ...]) -> Problems:
    deployments = set(by_kind(list(objs), "Deployment"))
    out: Problems = []
    for path in sorted(set(PATH.findall(doc.text))):
        head, _, rest = path.partition("/")
        if (ROOT / path).exists() or (head == "deploy" and rest in deployments):
            continue  # `deploy/gateway` is kubectl's name for a Deployment
        out.append(f"{path}: no such file or directory in the repository")
    out += [f"{p}: not under deploy/k8s" for p in sorted(set(K8S_PATH.findall(doc.text)))
            if not (K8S / p).exists()]
    return out


# --- (c) settings -------------------------------------------------------------------------------
@functools.cache
def readable_variables() -> frozenset[str]:
    """Every SCNS_* variable some code reads: the settings, the URL files, the CLI's own."""
    settings = (ROOT / "shared" / "settings.py").read_text("utf-8")
    read = set(re.findall(r'"(SCNS_[A-Z0-9_]+)"', settings))
    fields_ = {"SCNS_" + f.name.upper() for f in fields(Settings)}
    out = read & fields_  # a field, read under its own name
    for path in SOURCES:
        src = path.read_text("utf-8")
        # `NAME`, or the file `NAME_FILE` names (shared/settings.py read_secret)
        for name in re.findall(r'(?:\.secret|read_secret)\([^)]*?"(SCNS_[A-Z0-9_]+)"', src):
            out |= {name, name + "_FILE"}
        if path.parent.name == "cli":  # the CLI's own: where it finds the gateway, and so on
            out |= set(re.findall(r'(?:environ\.get|env\.get)\(\s*"(SCNS_[A-Z0-9_]+)"', src))
            out |= set(re.findall(r'envvar="(SCNS_[A-Z0-9_]+)"', src))
    return frozenset(out)


def variable_problems(doc: Doc) -> Problems:
    known = readable_variables()
    return [f"{v}: no code reads this variable" for v in
            sorted(set(re.findall(r"\bSCNS_[A-Z0-9_]*[A-Z0-9]\b", doc.text)) - known)]


# --- (d) the CLI ----------------------------------------------------------------------------------
def scns_problems(words: list[str]) -> Problems:
    cmd: click.Command = cli
    path = ["scns"]
    rest = words[1:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            return [f"`{' '.join([*path, rest[0]])}`: no such command"]
        cmd, path, rest = sub, [*path, rest[0]], rest[1:]
    if isinstance(cmd, click.Group):
        return []  # a group named alone (`scns token`)
    options = {"--help", "-h"} | {o for p in cmd.params if isinstance(p, click.Option)
                                  for o in (*p.opts, *p.secondary_opts)}
    out: Problems = []
    for word in rest:
        option = word.strip("[]").split("=", 1)[0]  # `[--timeout S]`, `--wait=600`
        if re.match(r"^--?[A-Za-z]", option) and option not in options:
            out.append(f"`{' '.join(path)}` has no option {option}")
    return out


def command_problems(doc: Doc) -> Problems:
    out: Problems = []
    for line in doc.code:
        for words in segments(line):
            if words[0] == "scns" and len(words) > 1:
                out += scns_problems(words)
    return sorted(set(out))


# --- (e) Kubernetes objects ---------------------------------------------------------------------
KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "ds": "DaemonSet", "daemonset": "DaemonSet", "daemonsets": "DaemonSet",
    "sts": "StatefulSet", "statefulset": "StatefulSet", "statefulsets": "StatefulSet",
    "job": "Job", "jobs": "Job",
    "svc": "Service", "service": "Service", "services": "Service",
    "hpa": "HorizontalPodAutoscaler", "horizontalpodautoscaler": "HorizontalPodAutoscaler",
    "scaledobject": "ScaledObject", "scaledobjects": "ScaledObject",
    "pdb": "PodDisruptionBudget", "poddisruptionbudget": "PodDisruptionBudget",
    "networkpolicy": "NetworkPolicy", "networkpolicies": "NetworkPolicy",
    "netpol": "NetworkPolicy",
    "priorityclass": "PriorityClass", "pc": "PriorityClass",
    "serviceaccount": "ServiceAccount", "sa": "ServiceAccount",
    "namespace": "Namespace", "ns": "Namespace",
    "secret": "Secret", "secrets": "Secret",
    "configmap": "ConfigMap", "cm": "ConfigMap",
}
UNNAMED = frozenset({"pod", "pods", "po", "node", "nodes", "no"})  # named by the cluster
NAMING_VERBS = frozenset({"get", "describe", "delete", "edit", "scale", "wait", "annotate",
                          "label", "patch", "logs"})
VALUE_FLAGS = frozenset({"-n", "--namespace", "-l", "--selector", "--field-selector", "-o",
                         "--output", "-c", "--container", "--for", "--timeout", "--replicas",
                         "-f", "--filename", "-k", "--kustomize", "-L", "--label-columns",
                         "--context", "--since", "--tail"})
SLASHED = re.compile(r"(?<![\w./-])([a-z]+)/([a-z0-9][a-z0-9.-]*)(?![\w./-]*/)")


def kubectl_references(words: list[str]) -> Iterator[tuple[str, str]]:
    """(kind, name) of the objects a kubectl command names as `kind name`; `-l` selectors as
    ("selector", "k=v,...")."""
    positional: list[str] = []
    it = iter(words[1:])
    for word in it:
        flag = word.split("=", 1)[0]
        if flag in VALUE_FLAGS:
            value = word.split("=", 1)[1] if "=" in word else next(it, "")
            if flag in {"-l", "--selector"}:
                yield "selector", value
        elif not word.startswith("-"):
            positional.append(word)
    if len(positional) < 3 or "/" in positional[1]:
        return
    verb, kind = positional[0], positional[1].split(".")[0]
    if verb == "create":
        if kind == "namespace":
            yield "Namespace", positional[2]
        elif kind == "secret" and len(positional) > 3:
            yield "Secret", positional[3]
    elif verb in NAMING_VERBS and kind not in UNNAMED:
        for name in positional[2:]:
            if "/" not in name and "=" not in name:
                yield KINDS.get(kind, f"unknown kind {kind!r}"), name


def object_problems(doc: Doc, objs: tuple[Obj, ...]) -> Problems:
    existing = names(objs)
    templates = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads(list(objs))]
    out: Problems = []
    for line in doc.code:
        for alias, name in SLASHED.findall(line):
            if alias in KINDS and not (ROOT / f"{alias}/{name}").exists() \
                    and (KINDS[alias], name) not in existing:
                out.append(f"{alias}/{name}: no {KINDS[alias]} {name!r} in {' or '.join(PROD)}")
        for words in segments(line):
            if words[0] != "kubectl":
                continue
            for kind, name in kubectl_references(words):
                if kind == "selector":
                    want = dict(p.split("=", 1) for p in name.split(",") if "=" in p)
                    if not any(want.items() <= labels.items() for labels in templates):
                        out.append(f"-l {name}: selects no pod of {' or '.join(PROD)}")
                elif (kind, name) not in existing:
                    out.append(f"{kind} {name!r}: not in {' or '.join(PROD)}")
    return sorted(set(out))


@functools.cache
def manifest_text() -> str:
    return "\n".join(p.read_text("utf-8") for p in sorted(K8S.rglob("*.yaml")))


LABEL_KEY = re.compile(r"(?<![\w./-])((?:[a-z0-9-]+\.)+[a-z]{2,}/[A-Za-z0-9][\w.-]*[\w])")


def key_problems(doc: Doc) -> Problems:
    """Label and annotation keys (and API groups) the guide names appear in deploy/k8s."""
    text = manifest_text()
    return sorted({f"{key}: appears nowhere under deploy/k8s" for line in doc.code
                   for key in LABEL_KEY.findall(line) if key not in text})


@functools.cache
def defined_in() -> dict[tuple[str, str], str]:
    """(kind, name) -> `base` or `components/<name>`: the directory whose files define it."""
    out: dict[tuple[str, str], str] = {}
    for where, directory in [("base", K8S / "base"),
                             *((f"components/{c.name}", c) for c in sorted(COMPONENTS.iterdir()))]:
        for path in sorted(directory.glob("*.yaml")):
            for o in yaml.safe_load_all(path.read_text("utf-8")):
                if o and "metadata" in o and o.get("kind") not in {"Kustomization", "Component"}:
                    out.setdefault((o["kind"], o["metadata"]["name"]), where)
    return out


def inventory_problems(doc: Doc, objs: tuple[Obj, ...]) -> Problems:
    """`What runs where` has a row for every production object naming its kind and its source."""
    rows = [u for u in units(doc.sections.get("What runs where", "")) if u.startswith("|")]
    sources = defined_in()
    out: Problems = []
    for kind, name in sorted(names(objs)):
        if kind in GENERATED and name != GENERATED[kind]:
            continue  # the hashed name: its generator's name is what the guide gives
        source = ("out of band" if (kind, name) in OUT_OF_BAND
                  else "base" if kind in GENERATED else sources[(kind, name)])
        mine = [r for r in rows if f"`{name}`" in r and kind in r]
        if not mine:
            out.append(f"What runs where: no row names {kind} `{name}`")
        elif not any(source in r for r in mine):
            out.append(f"What runs where: the row of {kind} `{name}` does not say it comes "
                       f"from {source}")
    return out


def secret_problems(doc: Doc, objs: tuple[Obj, ...]) -> Problems:
    """The keys the guide puts in the Secret are exactly those the workloads read."""
    read: set[str] = set()
    for w in workloads(list(objs)):
        for c in containers(w):
            for e in env_of(c).values():
                ref = e.get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("name") == SECRET:
                    read.add(ref["key"])
        for v in pod_spec(w).get("volumes", []):
            if v.get("secret", {}).get("secretName") == SECRET:
                read |= {i["key"] for i in v["secret"].get("items", [])}
    created = set(re.findall(r"--from-literal=([\w-]+)=", doc.text))
    out: Problems = []
    if created != read:
        out.append(f"the guide's Secret {SECRET} has keys {sorted(created)}; the workloads read "
                   f"{sorted(read)}")
    table = {k for k in read if any(u.startswith(f"| `{k}`") for u in units(doc.text))}
    out += [f"no row of the Secret's table for the key {k}" for k in sorted(read - table)]
    return out


# --- (f) metrics ----------------------------------------------------------------------------------
@functools.cache
def exported_metrics() -> frozenset[str]:
    made = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary|\w+MetricFamily)\(\s*"
                      r'"(scns_[a-z_]+)"')
    return frozenset(m for p in SOURCES for m in made.findall(p.read_text("utf-8")))


@functools.cache
def database_roles() -> frozenset[str]:
    sql = (ROOT / "deploy" / "sql" / "roles.sql").read_text("utf-8")
    return frozenset(re.findall(r"^CREATE ROLE (\w+)", sql, re.MULTILINE))


def metric_problems(doc: Doc) -> Problems:
    exported, roles = exported_metrics(), database_roles()
    out: Problems = []
    for name in sorted(set(re.findall(r"\bscns_[a-z_]+\b", doc.text))):
        base = re.sub(r"_(bucket|count|sum|created)$", "", name)
        if name not in exported and base not in exported and name not in roles:
            out.append(f"{name}: no metric of that name is exported (nor a role of roles.sql)")
    return out


# --- (g) the manifests' numbers -------------------------------------------------------------------
def executor_numbers(workload: Obj) -> tuple[int, int, int]:
    """terminationGracePeriodSeconds, SCNS_DRAIN_GRACE_S, SCNS_KILL_GRACE_S."""
    (c,) = (c for c in containers(workload) if c["name"] == "executor")
    env = env_of(c)
    return (int(pod_spec(workload)["terminationGracePeriodSeconds"]),
            int(env["SCNS_DRAIN_GRACE_S"]["value"]), int(env["SCNS_KILL_GRACE_S"]["value"]))


def fence_problems(doc: Doc, fence: Fence) -> Problems:
    """The fence's timeline with the manifests' figures (shared/fencing.py)."""
    out: Problems = list(fence.problems())
    term = (f"({fence.ttl_s:g} + {fence.grace_s:g} - {fence.kill_grace_s:g} - "
            f"{fence.margin_s:g} - {CHECK_S:g} = {fence.term_after_s:g} s")
    if term not in doc.sections.get("When Redis is lost", ""):
        out.append(f"When Redis is lost: does not say {term!r}")
    for when in (fence.term_after_s, fence.killed_by_s, fence.lost_after_s):
        if f"({when:g})" not in doc.sections.get("Partitions, clocks and fencing", ""):
            out.append(f"Partitions, clocks and fencing: does not say '({when:g})'")
    return out


def number_problems(doc: Doc, objs: tuple[Obj, ...]) -> Problems:
    out: Problems = []

    def need(section: str, name: str, value: object, *, only: bool = False) -> None:
        text = doc.sections.get(section, "")
        if not says(text, name, value):
            out.append(f"{section}: no sentence or row gives {name} as {value}")
        if only:  # and none gives it another figure
            out.extend(f"{section}: {u!r} gives {name} another figure than {value}"
                       for u in units(text) if name in u and re.search(r"\d", u)
                       and not says(u, name, value))

    def formula(section: str, text: str) -> None:
        if text not in doc.sections.get(section, ""):
            out.append(f"{section}: does not say {text!r}")

    listing = list(objs)
    executor = by_kind(listing, "DaemonSet")["executor"]
    pool = by_kind(listing, "StatefulSet")["executor-pool"]
    scaled = by_kind(listing, "ScaledObject")["executor-pool"]
    for section, workload in (("Drain a node", executor), ("Scale", pool)):
        grace, drain, kill = executor_numbers(workload)
        need(section, "SCNS_DRAIN_GRACE_S", drain)
        need(section, "terminationGracePeriodSeconds", grace)
        formula(section, f"{grace} = {drain} + {kill} + {grace - drain - kill}")
    _, drain, kill = executor_numbers(executor)
    need("Drain a node", "SCNS_KILL_GRACE_S", kill)
    for workload in (executor, pool):  # the table of the two pools: one row per figure
        grace, drain, kill = executor_numbers(workload)
        need("Scale", "| `SCNS_DRAIN_GRACE_S`", drain)
        need("Scale", "| `terminationGracePeriodSeconds`", grace)
    (c,) = containers(executor)
    live = c["livenessProbe"]
    formula("Drain a node", f"{live['failureThreshold']} {TIMES} {live['periodSeconds']} s")
    (trigger,) = scaled["spec"]["triggers"]
    threshold = trigger["metadata"]["threshold"]
    need("Scale", "threshold", threshold, only=True)
    (pc,) = containers(pool)
    need("Scale", "CPUs", pc["resources"]["requests"]["cpu"])
    spec = scaled["spec"]
    need("Scale", "KEDA", f"{spec['minReplicaCount']} to {spec['maxReplicaCount']}")
    if " ".join(trigger["metadata"]["query"].split()) not in " ".join(doc.text.split()):
        out.append("Scale: the ScaledObject's query is not quoted as it is")
    replicas = ", ".join(f"{d} {w['spec']['replicas']}" for d, w in
                         by_kind(render("prod-arm64"), "Deployment").items())
    for part in replicas.split(", "):
        formula("Scale", part)
    # the shared settings: how long an executor keeps its jobs without Redis, the reconciler's
    # period (scns-config, else the settings' defaults)
    config = next(o["data"] for o in objs if o["kind"] == "ConfigMap")
    default = Settings()
    ttl = int(config.get("SCNS_WORKER_TTL_S", default.worker_ttl_s))
    fail = int(config.get("SCNS_NODE_FAIL_GRACE_S", default.node_fail_grace_s))
    _, _, kill = executor_numbers(executor)
    margin = int(config.get("SCNS_FENCE_MARGIN_S", default.fence_margin_s))
    out += fence_problems(doc, Fence(ttl_s=ttl, grace_s=fail, kill_grace_s=kill,
                                     margin_s=margin))
    need("When Redis is lost", "SCNS_RECONCILE_S",
         int(config.get("SCNS_RECONCILE_S", default.reconcile_s)))
    # the placeholders an unedited production overlay carries, quoted by Troubleshooting
    images = yaml.safe_load((PROD_OVERLAY / "kustomization.yaml").read_text("utf-8"))["images"]
    for image in images:
        formula("Troubleshooting", image["digest"])
    policy = yaml.safe_load((PROD_OVERLAY / "network-policy-datastores.yaml").read_text("utf-8"))
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            formula("Troubleshooting", peer["ipBlock"]["cidr"])
            formula("First install", peer["ipBlock"]["cidr"])
    return out


# --- the tests ----------------------------------------------------------------------------------
def test_the_sections_are_the_ten_in_order() -> None:
    assert title_problems(guide()) == []


def test_every_path_named_exists() -> None:
    assert path_problems(guide(), objects()) == []


def test_every_variable_named_is_read_by_the_code() -> None:
    assert variable_problems(guide()) == []


def test_every_scns_command_and_option_exists() -> None:
    assert command_problems(guide()) == []


def test_every_kubectl_object_and_selector_exists_in_production() -> None:
    assert object_problems(guide(), objects()) == []


def test_every_label_and_annotation_key_exists() -> None:
    assert key_problems(guide()) == []


def test_what_runs_where_lists_every_production_object_and_its_source() -> None:
    assert inventory_problems(guide(), objects()) == []


def test_the_secret_has_the_keys_the_workloads_read() -> None:
    assert secret_problems(guide(), objects()) == []
    comment = (PROD_OVERLAY / "kustomization.yaml").read_text("utf-8")
    assert f"create secret generic {SECRET}" in comment, "the overlay no longer says how"
    assert ("Secret", SECRET) not in {(o["kind"], o["metadata"]["name"]) for o in objects()}


def test_every_metric_named_is_exported() -> None:
    assert metric_problems(guide()) == []


def test_the_numbers_are_the_manifests() -> None:
    assert number_problems(guide(), objects()) == []


Check = Callable[[Doc], Problems]
CHECKS: dict[str, Check] = {
    "titles": title_problems,
    "paths": lambda d: path_problems(d, objects()),
    "variables": variable_problems,
    "commands": command_problems,
    "objects": lambda d: object_problems(d, objects()),
    "keys": key_problems,
    "inventory": lambda d: inventory_problems(d, objects()),
    "secret": lambda d: secret_problems(d, objects()),
    "metrics": metric_problems,
    "numbers": lambda d: number_problems(d, objects()),
}
# One planted mistake per check and kind of fact: (check, what the guide says, the mistake).
MISTAKES = [
    ("titles", "## Scale\n", "## Scaling\n"),
    ("titles", "## Upgrade\n", "## Upgrades\n"),
    ("paths", "shared/preflight.py", "shared/preflights.py"),
    ("paths", "`components/autoscaling`", "`components/autoscale`"),
    ("paths", "deploy/scheduler --previous", "deploy/schedulers --previous"),
    ("variables", "`SCNS_APP_ROLE`", "`SCNS_APPS_ROLE`"),
    ("variables", "SCNS_DEPENDENCY_SWEEP_S", "SCNS_DEPENDENCIES_SWEEP_S"),
    ("commands", "scns resume NODE\n", "scns undrain NODE\n"),
    ("commands", "--wait --timeout 86400", "--wait --time-out 86400"),
    ("commands", "scns token create alice", "scns token make alice"),
    ("commands", "scns token create alice --admin", "scns token create alice --root"),
    ("objects", "job/scns-migrate --timeout", "job/scns-migration --timeout"),
    ("objects", "get ds executor ", "get ds executors "),
    ("objects", "describe scaledobject executor-pool", "describe scaledobject executor-pod"),
    ("objects", "-l app.kubernetes.io/name=executor-pool", "-l app.kubernetes.io/name=pool"),
    ("keys", "`karpenter.sh/do-not-disrupt: \"true\"`", "`karpenter.sh/do-not-evict: \"true\"`"),
    ("inventory", "| `scns-migrate` | Job |", "| `scns-migration` | Job |"),
    ("inventory", "| `scns-migrate` | Job | `components/migrations`",
     "| `scns-migrate` | Job | base"),
    ("secret", "--from-literal=migrate-database-url=", "--from-literal=migration-url="),
    ("metrics", "`scns_scheduler_demand_cpus`:", "`scns_scheduler_demand_cpu`:"),
    ("numbers", "(90 s) to finish", "(60 s) to finish"),
    ("numbers", "120 = 90 + 10 + 20 (20 s", "120 = 80 + 10 + 30 (20 s"),
    ("numbers", "| 90 | 3600 |", "| 90 | 7200 |"),
    ("numbers", f"9 {TIMES} 20 s", f"5 {TIMES} 20 s"),
    ("numbers", "the threshold being 14 CPUs", "the threshold being 16 CPUs"),
    ("numbers", "(0 to 20)", "(0 to 50)"),
    ("numbers", "(60 + 60 - 10 - 5 - 0.5 = 104.5 s", "(60 + 60 - 10 - 5 - 0.5 = 105 s"),
    ("numbers", "| TTL + GRACE - MARGIN (115) |", "| TTL + GRACE - MARGIN (110) |"),
    ("numbers", "`SCNS_RECONCILE_S`, 30 s", "`SCNS_RECONCILE_S`, 60 s"),
    ("numbers", "192.0.2.0/24", "192.0.2.0/25"),
]


@pytest.mark.parametrize(("check", "right", "wrong"), MISTAKES,
                         ids=[f"{c}:{w.strip()[:40]}" for c, _, w in MISTAKES])
def test_each_check_catches_a_planted_mistake(check: str, right: str, wrong: str,
                                              tmp_path: Path) -> None:
    text = DOC.read_text("utf-8")
    assert right in text, f"the guide no longer says {right!r}: update this mistake"
    copy = tmp_path / "operations.md"
    copy.write_text(text.replace(right, wrong), "utf-8")
    assert CHECKS[check](guide()) == [], "the guide itself must pass first"
    assert CHECKS[check](Doc.load(copy)), f"{check} did not notice {wrong!r}"
