"""Offline checks of requirements.lock, the image's hashed runtime dependencies (`make lock`).

The lock must agree with pyproject.toml's [project].dependencies (a dependency changed there
without `make lock` fails here), pin everything with == and sha256 hashes (pip's
--require-hashes refuses anything less), hold no development tool, and be what the Dockerfile's
build stage installs, with --require-hashes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = "requirements.lock"
_HASH = re.compile(r"\s--hash=(\S+)")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# Never in a production image, whether or not pyproject's extras name them today.
_DEV_TOOLS = {"pytest", "ruff", "mypy", "uv", "pip-tools", "coverage", "hypothesis", "pip",
              "setuptools", "wheel"}


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _runtime_requirements() -> list[Requirement]:
    deps = _pyproject()["dependencies"]
    assert isinstance(deps, list)
    return [Requirement(d) for d in deps]


def _lock_text() -> str:
    return (ROOT / LOCK).read_text("utf-8")


def _lock_entries() -> list[Pin]:
    """Every requirement line of the lock, as pip reads it: continuations joined, comments cut."""
    entries = []
    for raw in _lock_text().replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        assert not line.startswith("-"), f"an option in the lock: {line!r}"
        hashes = tuple(_HASH.findall(line))
        entries.append(Pin(Requirement(_HASH.sub("", line).strip()), hashes))
    assert entries, f"{LOCK} holds no requirement"
    return entries


def _lock() -> dict[NormalizedName, Pin]:
    return {canonicalize_name(p.requirement.name): p for p in _lock_entries()}


def _pinned_version(pin: Pin) -> str:
    (spec,) = pin.requirement.specifier
    return spec.version


def test_lock_pins_every_runtime_dependency_at_pyprojects_version() -> None:
    lock = _lock()
    for req in _runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is in pyproject but not in {LOCK}: run `make lock`"
        (spec,) = req.specifier  # pyproject pins its runtime dependencies with ==
        assert spec.operator == "==", req
        assert _pinned_version(lock[name]) == spec.version, (
            f"{req.name}: pyproject says {spec.version}, {LOCK} {_pinned_version(lock[name])}: "
            "run `make lock`")


def test_lock_keeps_pyprojects_markers() -> None:
    """uvloop's `sys_platform != 'win32'` and the like survive locking."""
    lock = _lock()
    marked = [r for r in _runtime_requirements() if r.marker is not None]
    assert marked, "pyproject has a dependency with an environment marker (uvloop)"
    for req in marked:
        assert lock[canonicalize_name(req.name)].requirement.marker == req.marker, req


def test_lock_holds_what_runtime_extras_add() -> None:
    """redis[hiredis]: the lock has no extras syntax, so what the extra adds is its own line."""
    lock = _lock()
    with_extras = [r for r in _runtime_requirements() if r.extras]
    assert with_extras, "pyproject asks for redis[hiredis]"
    for req in with_extras:
        # its own metadata, as `make install` installed it (the version pyproject pins)
        requires = [Requirement(r) for r in metadata.requires(req.name) or ()]
        for extra in req.extras:
            added = [r for r in requires if r.marker is not None
                     and r.marker.evaluate({"extra": extra})
                     and not r.marker.evaluate({"extra": ""})]
            assert added, f"{req.name}[{extra}] adds nothing?"
            for r in added:
                assert canonicalize_name(r.name) in lock, f"{req.name}[{extra}] needs {r.name}"


def test_every_lock_entry_is_pinned_and_hashed_once() -> None:
    entries = _lock_entries()
    names = [canonicalize_name(p.requirement.name) for p in entries]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for pin in entries:
        req = pin.requirement
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{req} is not pinned with =="
        assert "*" not in specs[0].version, f"{req}: a wildcard is no pin"
        assert not req.extras and req.url is None, f"{req}: extras or a URL in the lock"
        assert pin.hashes, f"{req.name} has no --hash: pip's --require-hashes refuses it"
        for h in pin.hashes:
            assert _SHA256.fullmatch(h), f"{req.name}: {h} is not a sha256"
        assert len(set(pin.hashes)) == len(pin.hashes), f"{req.name}: a hash twice"


def test_lock_holds_no_development_or_test_package() -> None:
    lock = set(_lock())
    runtime = {canonicalize_name(r.name) for r in _runtime_requirements()}
    extras = _pyproject()["optional-dependencies"]
    assert isinstance(extras, dict)
    dev_only = {canonicalize_name(n) for n in _DEV_TOOLS}
    for group in ("local", "test", "dev"):
        dev_only |= {canonicalize_name(Requirement(r).name) for r in extras[group]}
    dev_only -= runtime | {canonicalize_name("scns-conductor")}
    assert not lock & dev_only, f"development packages in {LOCK}: {sorted(lock & dev_only)}"
    assert canonicalize_name("scns-conductor") not in lock, "the project itself is not locked"


def test_lock_says_how_to_regenerate_it_and_make_lock_does() -> None:
    header = _lock_text().split("\n\n")[0].splitlines()[:5]
    assert any(line.strip() == "#    make lock" for line in header), header
    makefile = (ROOT / "Makefile").read_text("utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony is not None and "lock" in phony.group(1).split()
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None, "the Makefile has no `lock` target"
    command = recipe.group(1).replace("\\\n", " ")
    for flag in ("pip compile pyproject.toml", "--generate-hashes", "--universal",
                 "--python-version 3.11", f"--output-file {LOCK}", "--custom-compile-command"):
        assert flag in command, f"`make lock` lacks {flag!r}"


# --- the Dockerfile's build stage ---------------------------------------------------------------
def _stage_instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Dockerfile, continuations joined."""
    text = (ROOT / "Dockerfile").read_text("utf-8")
    lines = [line for line in text.replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    current, found = "", []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            current = rest.split()[-1] if " as " in rest.lower() else ""
        elif current == stage:
            found.append((word.upper(), " ".join(rest.split())))
    return found


def _pip_installs(instructions: list[tuple[str, str]]) -> list[str]:
    return [cmd.strip() for word, rest in instructions if word == "RUN"
            for cmd in re.split(r"&&|;", rest) if re.search(r"\bpip install\b", cmd)]


def test_dockerfile_build_stage_installs_the_lock_with_hashes() -> None:
    build = _stage_instructions("build")
    assert build, "the Dockerfile has a stage named build"
    copies = [i for i, (word, rest) in enumerate(build)
              if word == "COPY" and LOCK in rest.split()[:-1]]
    installs = [i for i, (word, rest) in enumerate(build)
                if word == "RUN" and f"-r {LOCK}" in rest]
    assert copies, f"the build stage COPYs no {LOCK}"
    assert installs, f"the build stage installs nothing from {LOCK}"
    assert copies[0] < installs[0], f"{LOCK} is installed before it is copied"
    command = build[installs[0]][1]
    for flag in ("--require-hashes", "--only-binary=:all:", "--no-deps"):
        assert flag in command.split(), f"the lock is installed without {flag}"


def test_dockerfile_installs_nothing_outside_the_lock() -> None:
    """Every other pip install is --no-deps: no dependency is resolved, unhashed, by pip."""
    installs = _pip_installs(_stage_instructions("build"))
    assert installs
    for cmd in installs:
        assert "--no-deps" in cmd.split(), f"pip resolves dependencies outside the lock: {cmd}"
        if "-r" in cmd.split():
            assert f"-r {LOCK}" in cmd and "--require-hashes" in cmd.split(), cmd
    for stage in ("base", "dev", "runtime"):
        assert not _pip_installs(_stage_instructions(stage)), f"pip install in stage {stage}"


def test_dockerignore_lets_the_lock_into_the_context() -> None:
    """.dockerignore is an allow-list (`*` first): without this, `COPY requirements.lock` fails."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert f"!{LOCK}" in rules, f".dockerignore does not let {LOCK} into the build context"
