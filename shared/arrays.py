"""Job array specs and job references (`12`, `12_3`). Pure.

An array spec is what sbatch's `--array` takes: comma-separated items, each an index (`5`), a
range (`0-99`) or a range with a step (`0-99:2`), and an optional `%N` throttle at the end (at
most N elements run at once): `0-99%8`, `1,3,5-7`, `0-99:2%4`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

DEFAULT_MAX_ARRAY_SIZE = 100_001
MAX_INDEX = 2**31 - 1
_ITEM = re.compile(r"^(\d{1,10})(?:-(\d{1,10})(?::(\d{1,10}))?)?$")
_REF = re.compile(r"^(\d{1,18})(?:_(\d{1,10}))?$")


class SpecError(ValueError):
    """A malformed array spec, dependency or job reference; the message says what is right."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ArraySpec:
    spec: str
    tasks: tuple[int, ...]  # ascending, distinct
    throttle: int | None

    @property
    def count(self) -> int:
        return len(self.tasks)

    @property
    def first(self) -> int:
        return self.tasks[0]

    @property
    def last(self) -> int:
        return self.tasks[-1]

    @property
    def step(self) -> int:
        """The common difference when the indexes are evenly spaced, else 1 (as Slurm sets
        SLURM_ARRAY_TASK_STEP)."""
        if len(self.tasks) < 2:
            return 1
        d = self.tasks[1] - self.tasks[0]
        if all(b - a == d for a, b in itertools.pairwise(self.tasks)):
            return d
        return 1

    def fold(self) -> str:
        """The indexes as squeue prints them: `0-99`, `1,3,5-7` (with the throttle `%8`)."""
        return fold_indexes(self.tasks) + (f"%{self.throttle}" if self.throttle else "")


FORMS = "e.g. 0-99, 1,3,5-7 or 0-99:2, optionally with a %N limit (0-99%8)"


def parse_array(text: str, *, max_size: int = DEFAULT_MAX_ARRAY_SIZE) -> ArraySpec:
    """`--array` -> the element indexes and throttle; SpecError says what is wrong."""
    raw = text.strip()
    if not raw:
        raise SpecError(f"empty array spec; {FORMS}")
    body, pct, limit = raw.partition("%")
    throttle: int | None = None
    if pct:
        if not limit.isdigit() or int(limit) < 1 or len(limit) > 10:
            raise SpecError(f"array limit {'%' + limit!r} must be a positive integer ({FORMS})")
        throttle = int(limit)
    tasks: set[int] = set()
    for item in body.split(","):
        m = _ITEM.match(item.strip())
        if not m:
            raise SpecError(f"bad array item {item.strip()!r} in {raw!r}; {FORMS}")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        step = int(m[3]) if m[3] is not None else 1
        if hi < lo:
            raise SpecError(f"array range {item.strip()!r} ends before it starts")
        if step < 1:
            raise SpecError(f"array step in {item.strip()!r} must be at least 1")
        if hi > MAX_INDEX:
            raise SpecError(f"array index {hi} is too large (at most {MAX_INDEX})")
        if (hi - lo) // step + 1 + len(tasks) > max_size:
            raise SpecError(f"array {raw!r} has more than {max_size} elements (the maximum, "
                            "SCNS_MAX_ARRAY_SIZE)")
        tasks.update(range(lo, hi + 1, step))
    if len(tasks) > max_size:
        raise SpecError(f"array {raw!r} has more than {max_size} elements (the maximum, "
                        "SCNS_MAX_ARRAY_SIZE)")
    return ArraySpec(spec=raw, tasks=tuple(sorted(tasks)), throttle=throttle)


def fold_indexes(indexes: list[int] | tuple[int, ...]) -> str:
    """Ascending indexes as ranges: [1, 3, 5, 6, 7] -> `1,3,5-7`."""
    out: list[str] = []
    xs = sorted(set(indexes))
    if len(xs) > 2 and xs[1] - xs[0] > 1 and all(
            b - a == xs[1] - xs[0] for a, b in itertools.pairwise(xs)):
        return f"{xs[0]}-{xs[-1]}:{xs[1] - xs[0]}"
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True, slots=True)
class JobRef:
    """`12` (a job, or an array's every element) or `12_3` (one element of array 12)."""

    id: int
    index: int | None = None

    def __str__(self) -> str:
        return str(self.id) if self.index is None else f"{self.id}_{self.index}"


def parse_ref(text: str) -> JobRef:
    m = _REF.match(text.strip())
    if not m or int(m[1]) < 1:
        raise SpecError(f"bad job id {text.strip()[:40]!r}: use a job id (12) or an array "
                        "element (12_3)")
    return JobRef(int(m[1]), int(m[2]) if m[2] is not None else None)
