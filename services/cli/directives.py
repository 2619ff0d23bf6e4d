"""`#SCNS` / `#SBATCH` directives in a job script, and Slurm's time format. Pure.

Like sbatch, directives are read from the comment block at the top of the script (after the
shebang) and stop at the first line that is neither blank nor a comment. Command-line options
win over directives. `#SCNS` accepts the same options as `#SBATCH`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_DIRECTIVE = re.compile(r"^#(SBATCH|SCNS)\s+(.*)$")
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
UNLIMITED = ("UNLIMITED", "INFINITE", "-1")


class DirectiveError(ValueError):
    pass


@dataclass(slots=True)
class Directives:
    cpus: int | None = None
    ntasks: int | None = None
    time_limit: int | None = None
    memory_mb: int | None = None
    name: str | None = None
    requeue: bool | None = None
    hold: bool | None = None
    partition: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_cpus(self) -> int | None:
        if self.cpus is None and self.ntasks is None:
            return None
        return (self.cpus or 1) * (self.ntasks or 1)


def parse_time(text: str) -> int | None:
    """Slurm time limit -> seconds; None means unlimited.

    Accepted: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (as sbatch --time)."""
    t = text.strip()
    if t.upper() in UNLIMITED:
        return None
    days = 0
    if "-" in t:
        d, _, t = t.partition("-")
        if not d.isdigit():
            raise DirectiveError(f"bad time {text!r}")
        days = int(d)
        parts = t.split(":")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise DirectiveError(f"bad time {text!r}")
        h, m, s = ([int(p) for p in parts] + [0, 0])[:3]
    else:
        parts = t.split(":")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise DirectiveError(f"bad time {text!r}; use minutes, MM:SS, HH:MM:SS or "
                                 "D-HH:MM:SS")
        nums = [int(p) for p in parts]
        if len(nums) == 1:
            h, m, s = 0, nums[0], 0
        elif len(nums) == 2:
            h, m, s = 0, nums[0], nums[1]
        else:
            h, m, s = nums
    seconds = days * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise DirectiveError(f"time limit {text!r} must be positive")
    return seconds


def parse_memory(text: str) -> int:
    """sbatch --mem: a number with an optional K/M/G/T suffix (default M) -> MB."""
    m = _MEM.match(text.strip())
    if not m:
        raise DirectiveError(f"bad memory size {text!r}; use e.g. 512M or 4G")
    n, unit = int(m[1]), m[2].upper() or "M"
    mb = {"K": n / 1024, "M": n, "G": n * 1024, "T": n * 1024 * 1024}[unit]
    if mb < 1:
        raise DirectiveError(f"memory {text!r} is less than 1 MB")
    return int(mb)


def _positive(value: str, what: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise DirectiveError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


_OPTIONS = {  # option -> (attribute, takes a value)
    "-c": "cpus", "--cpus-per-task": "cpus", "-n": "ntasks", "--ntasks": "ntasks",
    "-t": "time", "--time": "time", "--mem": "mem", "-J": "name", "--job-name": "name",
    "-p": "partition", "--partition": "partition", "--export": "export",
}
_FLAGS = {"--requeue": ("requeue", True), "--no-requeue": ("requeue", False),
          "-H": ("hold", True), "--hold": ("hold", True)}


def _apply(d: Directives, opt: str, value: str) -> None:
    kind = _OPTIONS[opt]
    if kind == "cpus":
        d.cpus = _positive(value, opt)
    elif kind == "ntasks":
        d.ntasks = _positive(value, opt)
    elif kind == "time":
        d.time_limit = parse_time(value)
    elif kind == "mem":
        d.memory_mb = parse_memory(value)
    elif kind == "name":
        d.name = value
    elif kind == "partition":
        d.partition = value
    elif kind == "export":
        for item in value.split(","):
            k, sep, v = item.partition("=")
            if sep:
                d.env[k] = v
            elif k.upper() not in ("ALL", "NONE", ""):
                d.warnings.append(f"--export={k}: only NAME=value items are supported")


def parse_directives(script: str) -> Directives:
    d = Directives()
    for lineno, line in enumerate(script.splitlines(), start=1):
        stripped = line.strip()
        if lineno == 1 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        m = _DIRECTIVE.match(stripped)
        if not m:
            continue
        try:
            words = shlex.split(m[2], comments=True)
        except ValueError as e:
            raise DirectiveError(f"line {lineno}: {e}") from e
        _parse_words(d, words, lineno)
    return d


def _parse_words(d: Directives, words: list[str], lineno: int) -> None:
    i = 0
    while i < len(words):
        word = words[i]
        opt, eq, value = word.partition("=")
        if opt in _FLAGS:
            attr, flag = _FLAGS[opt]
            setattr(d, attr, flag)
        elif opt in _OPTIONS:
            if not eq:
                if i + 1 >= len(words):
                    raise DirectiveError(f"line {lineno}: {opt} needs a value")
                i += 1
                value = words[i]
            try:
                _apply(d, opt, value)
            except DirectiveError as e:
                raise DirectiveError(f"line {lineno}: {e}") from e
        else:
            d.warnings.append(f"line {lineno}: {word} is not supported and was ignored")
        i += 1
