"""Partitions: named sets of workers chosen by label, and what a job may ask of each. Pure.

A worker belongs to a partition when every `key: value` of the partition's selector is among its
labels (an empty selector takes every worker), so a worker may belong to several. A job names
one partition or several (`"a,b"`: any of them) and may run in each named partition that exists,
admits its user, its CPU count and its time limit; those are its *eligible* partitions and the
workers it may be placed on are theirs. A job none of whose partitions is eligible is refused at
submit (a 4xx that says why for each); one that becomes so later (an admin narrowed a partition)
waits with reason `PartitionTimeLimit` or `PartitionConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.states import PendingReason

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_NAMES = 16


class PartitionError(ValueError):
    """A job's partitions cannot run it (the message says why, per partition)."""

    def __init__(self, message: str, reason: str = PendingReason.PARTITION_CONFIG) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    name: str
    selector: Mapping[str, str]
    default_time_limit: int | None = None
    max_time_limit: int | None = None
    max_cpus_per_job: int | None = None
    tier: int = 0
    allowed_users: tuple[str, ...] | None = None  # None: everyone
    default: bool = False
    max_running_cpus_per_user: int | None = None  # each user's, within this partition
    max_pending_jobs_per_user: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())

    def refusal(self, *, user: str, cpus: int, time_limit_s: int | None
                ) -> tuple[str, str] | None:
        """(pending reason, why) this partition cannot run such a job; None if it can."""
        if self.allowed_users is not None and user not in self.allowed_users:
            return PendingReason.PARTITION_CONFIG, f"user {user} is not allowed in it"
        if self.max_cpus_per_job is not None and cpus > self.max_cpus_per_job:
            return (PendingReason.PARTITION_CONFIG,
                    f"{cpus} CPUs above its maximum of {self.max_cpus_per_job} per job")
        limit = time_limit_s if time_limit_s is not None else self.default_time_limit
        if self.max_time_limit is not None and (limit is None or limit > self.max_time_limit):
            shown = "no time limit" if limit is None else f"time limit {limit} s"
            return (PendingReason.PARTITION_TIME_LIMIT,
                    f"{shown} above its maximum of {self.max_time_limit} s")
        return None


def parse_names(text: str | None) -> list[str] | None:
    """`"a,b"` -> ["a", "b"]; None or "" -> None (the default partition). ValueError if bad."""
    if text is None or not text.strip():
        return None
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ValueError(f"invalid partition name {bad[0]!r} (letters, digits, '_', '.', '-'; "
                         f"at most 64)")
    if len(names) > MAX_NAMES:
        raise ValueError(f"at most {MAX_NAMES} partitions per job")
    return list(dict.fromkeys(names))  # in order, once each


def joined(names: Iterable[str]) -> str:
    return ",".join(names)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """Which of a job's partitions may run it, and why each other one may not."""

    eligible: tuple[Partition, ...]
    refused: tuple[tuple[str, str, str], ...]  # (partition name, pending reason, why)

    @property
    def reason(self) -> str:
        """The pending reason of a job with no eligible partition."""
        kinds = {r for _, r, _ in self.refused}
        return (PendingReason.PARTITION_TIME_LIMIT if kinds == {PendingReason.PARTITION_TIME_LIMIT}
                else PendingReason.PARTITION_CONFIG)

    @property
    def message(self) -> str:
        return "; ".join(f"partition {n}: {why}" for n, _, why in self.refused)

    @property
    def tier(self) -> int:
        return max((p.tier for p in self.eligible), default=0)

    @property
    def default_time_limit(self) -> int | None:
        """The first eligible partition's default time limit (as named)."""
        return next((p.default_time_limit for p in self.eligible
                     if p.default_time_limit is not None), None)


def judge(names: Sequence[str], partitions: Mapping[str, Partition], *, user: str, cpus: int,
          time_limit_s: int | None) -> Verdict:
    eligible: list[Partition] = []
    refused: list[tuple[str, str, str]] = []
    for name in names:
        p = partitions.get(name)
        if p is None:
            refused.append((name, PendingReason.PARTITION_CONFIG, "no such partition"))
            continue
        why = p.refusal(user=user, cpus=cpus, time_limit_s=time_limit_s)
        if why is None:
            eligible.append(p)
        else:
            refused.append((name, *why))
    return Verdict(eligible=tuple(eligible), refused=tuple(refused))


def default_partition(partitions: Mapping[str, Partition]) -> Partition | None:
    return next((p for p in partitions.values() if p.default), None)


def resolve(text: str | None, partitions: Mapping[str, Partition]) -> list[str]:
    """The partition names a submission asks for, the default one when it names none."""
    names = parse_names(text)
    if names is not None:
        return names
    d = default_partition(partitions)
    if d is None:
        raise PartitionError("no partition given and there is no default partition; name one "
                             "with -p/--partition (scns partition list)")
    return [d.name]


def check_submission(text: str | None, partitions: Mapping[str, Partition], *, user: str,
                     cpus: int, time_limit_s: int | None) -> tuple[str, int | None]:
    """(the job's partition list, its time limit: its own or its partition's default), or
    PartitionError naming why every named partition refuses it."""
    names = resolve(text, partitions)
    v = judge(names, partitions, user=user, cpus=cpus, time_limit_s=time_limit_s)
    if not v.eligible:
        raise PartitionError(f"no partition can run this job: {v.message}", v.reason)
    limit = time_limit_s if time_limit_s is not None else v.default_time_limit
    return joined(names), limit
