"""Versioned, frozen event models and their orjson wire format.

An event travels as one stream entry with a single field `e` holding
`{"type", "v", "id", "at", ...payload}`. `id` is unique per event (not per stream entry), so a
consumer can recognise a duplicate even when it was published twice. A newer schema version than
this code understands is a decode error (the entry goes to the dead-letter stream rather than
being half-understood); unknown extra fields within a known version are ignored.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson

from shared.errors import EventDecodeError

FIELD = b"e"


def new_event_id() -> str:
    """A random (version 4) UUID in hex, as `uuid.uuid4().hex` gives it, without building a UUID
    object: the scheduler makes one per placement, and the object was a third of its event's
    cost."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return b.hex()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    event_id: str = field(default_factory=new_event_id)
    occurred_at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _payload_names(type(self))}

    def encode(self) -> bytes:
        body = {"type": self.TYPE, "v": self.VERSION, "id": self.event_id,
                "at": self.occurred_at, **self.payload()}
        return orjson.dumps(body)


_PAYLOAD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _payload_names(cls: type[Event]) -> tuple[str, ...]:
    """An event type's payload fields, looked up once (dataclasses.fields() on every event cost
    more than its encoding)."""
    names = _PAYLOAD_NAMES.get(cls)
    if names is None:
        names = _PAYLOAD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                            if f.name not in ("event_id", "occurred_at"))
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerJoined(Event):
    TYPE: ClassVar[str] = "worker-joined"
    worker_id: str
    incarnation: str
    hostname: str
    cpus: int
    memory_mb: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLeft(Event):
    TYPE: ClassVar[str] = "worker-left"
    worker_id: str
    incarnation: str
    reason: str  # shutdown | expired | restarted


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSubmitted(Event):
    TYPE: ClassVar[str] = "job-submitted"
    job_id: int  # for an array, its id (one event per array, not per element)
    cpus: int
    memory_mb: int | None = None
    priority: int = 0
    array_size: int | None = None  # elements, for an array
    dependency: bool = False  # it waits for a dependency (the scheduler decides it)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAllocated(Event):
    TYPE: ClassVar[str] = "job-allocated"
    job_id: int
    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStarted(Event):
    TYPE: ClassVar[str] = "job-started"
    job_id: int
    attempt: int
    worker_id: str
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFinished(Event):
    """An attempt ended. `next_attempt` is set when the job goes on as a new attempt (a retry, a
    requeue): then the job itself has not ended, and only the last attempt's end is final."""

    TYPE: ClassVar[str] = "job-finished"
    job_id: int
    attempt: int
    worker_id: str | None
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    elapsed_s: float | None = None
    next_attempt: int | None = None

    @property
    def final(self) -> bool:
        return self.next_attempt is None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequeued(Event):
    """A finished job starts over as a new attempt (an explicit requeue)."""

    TYPE: ClassVar[str] = "job-requeued"
    job_id: int
    attempt: int
    reason: str = "requeue"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdated(Event):
    """A pending job was held, released or changed (scontrol hold / release / update)."""

    TYPE: ClassVar[str] = "job-updated"
    job_id: int
    attempt: int
    change: str  # hold | release | update | cancel (an array's elements, all at once)
    reason: str | None = None
    array: bool = False  # job_id is an array's id, and the change was to its elements
    count: int | None = None  # elements changed, for an array


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested(Event):
    """On a worker's control stream: stop this attempt (SIGTERM, grace, SIGKILL); with
    `requeue`, the job then starts over as a new attempt instead of ending CANCELLED."""

    TYPE: ClassVar[str] = "job-cancel-requested"
    job_id: int
    attempt: int
    requeue: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleFired(Event):
    """A schedule's fire time was acted on: it made `job_id`, or was skipped (`skipped` says
    why: the previous run still active, missed while no scheduler ran, ...)."""

    TYPE: ClassVar[str] = "schedule-fired"
    schedule_id: int
    name: str
    user: str
    fire_at: str  # ISO 8601 UTC
    kind: str  # cron | catch-up | manual
    job_id: int | None = None
    skipped: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDisabled(Event):
    """A schedule stopped firing by itself (consecutive failed runs, an expression that no
    longer parses); `scns schedule enable` starts it again."""

    TYPE: ClassVar[str] = "schedule-disabled"
    schedule_id: int
    name: str
    user: str
    reason: str


EVENT_TYPES: Mapping[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (WorkerJoined, WorkerLeft, JobSubmitted, JobAllocated, JobStarted, JobFinished,
                JobRequeued, JobUpdated, CancelRequested, ScheduleFired, ScheduleDisabled)
}

E = TypeVar("E", bound=Event)


def decode(data: bytes | str) -> Event:
    """Decode one entry's `e` field into its event model."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise EventDecodeError(f"entry is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise EventDecodeError("entry is not a JSON object")
    cls = EVENT_TYPES.get(body.get("type", ""))
    if cls is None:
        raise EventDecodeError(f"unknown event type {body.get('type')!r}")
    version = body.get("v")
    if not isinstance(version, int) or version > cls.VERSION or version < 1:
        raise EventDecodeError(f"{cls.TYPE}: unsupported schema version {version!r}")
    if not isinstance(body.get("id"), str) or not isinstance(body.get("at"), int | float):
        raise EventDecodeError(f"{cls.TYPE}: missing event id or timestamp")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in body.items() if k in names}
    kwargs["event_id"] = body.get("id")
    kwargs["occurred_at"] = body.get("at")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise EventDecodeError(f"{cls.TYPE}: bad payload: {e}") from e


def decode_as(data: bytes | str, cls: type[E]) -> E:
    event = decode(data)
    if not isinstance(event, cls):
        raise EventDecodeError(f"expected {cls.TYPE}, got {event.TYPE}")
    return event
