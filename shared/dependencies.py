"""Job dependencies as sbatch's `--dependency` writes them, and how an edge is decided. Pure.

`afterok:12:13,afterany:14` (`,`: all must be met), `afterok:12?afternotok:13` (`?`: any one),
`after:12`, `afterany:12_3` (one array element), `afterok:12` where 12 is an array (every
element), `singleton`. The decisions (met, never, still waiting) are the same ones the SQL in
queries.sql (`resolve_dependencies`) makes; tests hold the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.arrays import JobRef, SpecError, parse_ref
from shared.states import TERMINAL, JobState

MAX_EDGES = 100


class Kind(StrEnum):
    AFTER = "after"  # the target has started (or ended without starting)
    AFTERANY = "afterany"  # the target has ended, in any state
    AFTEROK = "afterok"  # the target COMPLETED
    AFTERNOTOK = "afternotok"  # the target ended in a state other than COMPLETED
    SINGLETON = "singleton"  # no earlier job of the same name and user is still in the system


class EdgeState(StrEnum):
    WAITING = "waiting"
    MET = "met"
    NEVER = "never"


FORMS = ("e.g. afterok:12, afterany:12:13_4, afternotok:12, after:12 or singleton; "
         "',' joins conditions that must all hold, '?' conditions of which one must")


@dataclass(frozen=True, slots=True)
class Edge:
    kind: Kind
    target: JobRef | None  # None for singleton


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependency:
    expr: str
    edges: tuple[Edge, ...]
    any_of: bool

    @property
    def targets(self) -> list[JobRef]:
        return [e.target for e in self.edges if e.target is not None]


def parse_dependency(text: str) -> Dependency:
    raw = text.strip()
    if not raw:
        raise SpecError(f"empty dependency; {FORMS}")
    if "," in raw and "?" in raw:
        raise SpecError(f"dependency {raw!r} mixes ',' and '?'; use one of them ({FORMS})")
    any_of = "?" in raw
    edges: list[Edge] = []
    for clause in raw.split("?" if any_of else ","):
        kind_text, _, rest = clause.strip().partition(":")
        try:
            kind = Kind(kind_text.strip().lower())
        except ValueError:
            raise SpecError(f"unknown dependency type {kind_text.strip()!r}; {FORMS}") from None
        if kind is Kind.SINGLETON:
            if rest:
                raise SpecError("singleton takes no job ids")
            edges.append(Edge(kind, None))
            continue
        if not rest:
            raise SpecError(f"{kind} needs at least one job id ({kind}:12)")
        for item in rest.split(":"):
            ref_text = item.strip().partition("+")[0]  # sbatch's after:ID+minutes: not kept
            if item.strip() != ref_text:
                raise SpecError(f"{item.strip()!r}: a delay (+minutes) is not supported")
            edges.append(Edge(kind, parse_ref(ref_text)))
    unique = tuple(dict.fromkeys(edges))
    if len(unique) > MAX_EDGES:
        raise SpecError(f"a dependency may name at most {MAX_EDGES} jobs")
    return Dependency(expr=raw, edges=unique, any_of=any_of)


def decide_job(kind: Kind, state: JobState) -> EdgeState:
    """An edge on one job in `state`."""
    ended = state in TERMINAL
    if kind is Kind.AFTER:
        return EdgeState.MET if state not in (JobState.PENDING, JobState.ALLOCATED) \
            else EdgeState.WAITING
    if kind is Kind.AFTERANY:
        return EdgeState.MET if ended else EdgeState.WAITING
    if kind is Kind.AFTEROK:
        if not ended:
            return EdgeState.WAITING
        return EdgeState.MET if state is JobState.COMPLETED else EdgeState.NEVER
    if kind is Kind.AFTERNOTOK:
        if not ended:
            return EdgeState.WAITING
        return EdgeState.NEVER if state is JobState.COMPLETED else EdgeState.MET
    raise ValueError(f"{kind} is not decided per job")


def decide_array(kind: Kind, *, unstarted: bool, active: bool, failed: bool) -> EdgeState:
    """An edge on a whole array: `unstarted` = some element is PENDING or ALLOCATED, `active`
    = some element has not ended, `failed` = some element ended other than COMPLETED."""
    if kind is Kind.AFTER:
        return EdgeState.WAITING if unstarted else EdgeState.MET
    if kind is Kind.AFTERANY:
        return EdgeState.WAITING if active else EdgeState.MET
    if kind is Kind.AFTEROK:
        if failed:
            return EdgeState.NEVER
        return EdgeState.WAITING if active else EdgeState.MET
    if kind is Kind.AFTERNOTOK:
        if active:
            return EdgeState.WAITING
        return EdgeState.MET if failed else EdgeState.NEVER
    raise ValueError(f"{kind} is not decided per array")


def combine(states: list[EdgeState], *, any_of: bool) -> EdgeState:
    """The dependency from its edges: all must be met (`,`), or one (`?`)."""
    if any_of:
        if EdgeState.MET in states:
            return EdgeState.MET
        return EdgeState.NEVER if all(s is EdgeState.NEVER for s in states) \
            else EdgeState.WAITING
    if EdgeState.NEVER in states:
        return EdgeState.NEVER
    return EdgeState.MET if all(s is EdgeState.MET for s in states) else EdgeState.WAITING
