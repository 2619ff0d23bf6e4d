from __future__ import annotations

import dataclasses

import orjson
import pytest

from shared.errors import EventDecodeError
from shared.events import (
    EVENT_TYPES,
    JobFinished,
    JobSubmitted,
    WorkerJoined,
    WorkerLeft,
    decode,
    decode_as,
)


def test_round_trip_every_type() -> None:
    samples = [
        WorkerJoined(worker_id="w1", incarnation="i1", hostname="h", cpus=4, memory_mb=1024,
                     labels={"arch": "aarch64"}),
        WorkerLeft(worker_id="w1", incarnation="i1", reason="expired"),
        JobSubmitted(job_id=7, cpus=2),
        JobFinished(job_id=7, attempt=1, worker_id="w1", state="COMPLETED", exit_code=0),
    ]
    for e in samples:
        back = decode(e.encode())
        assert back == e
        assert type(back) is type(e)


def test_event_ids_are_unique() -> None:
    ids = {JobSubmitted(job_id=1, cpus=1).event_id for _ in range(1000)}
    assert len(ids) == 1000


def test_events_are_frozen() -> None:
    e = JobSubmitted(job_id=1, cpus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.cpus = 3  # type: ignore[misc]


def test_wire_format_carries_type_version_and_id() -> None:
    e = WorkerLeft(worker_id="w", incarnation="i", reason="shutdown")
    body = orjson.loads(e.encode())
    assert body["type"] == "worker-left"
    assert body["v"] == 1
    assert body["id"] == e.event_id


def test_unknown_fields_in_a_known_version_are_ignored() -> None:
    body = orjson.loads(JobSubmitted(job_id=3, cpus=1).encode())
    body["future_field"] = 1
    assert decode(orjson.dumps(body)) == JobSubmitted(job_id=3, cpus=1, event_id=body["id"],
                                                      occurred_at=body["at"])


@pytest.mark.parametrize("raw", [
    b"not json", b"[1,2]", b'{"type":"nope","v":1}',
    b'{"type":"job-submitted","v":99,"id":"x","at":1,"job_id":1,"cpus":1}',
    b'{"type":"job-submitted","v":1,"id":"x","at":1}',
    b'{"type":"job-submitted","v":1,"job_id":1,"cpus":1}',
])
def test_bad_entries_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode(raw)


def test_decode_as_checks_the_type() -> None:
    raw = JobSubmitted(job_id=1, cpus=1).encode()
    assert decode_as(raw, JobSubmitted).job_id == 1
    with pytest.raises(EventDecodeError, match="expected worker-left"):
        decode_as(raw, WorkerLeft)


def test_the_six_architecture_types_exist() -> None:
    assert set(EVENT_TYPES) >= {"worker-joined", "worker-left", "job-submitted",
                                "job-allocated", "job-started", "job-finished"}
