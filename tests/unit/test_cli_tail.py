"""`scns tail` without a server (services/cli/tail.py): what `--from` means, what the gateway is
asked for, one line per event of every type, the Server-Sent Events parser over any chunking,
resuming a dropped stream with `Last-Event-ID`, and the `--lag` table."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from rich.console import Console

from services.cli import tail
from services.cli.client import ApiError
from services.cli.tail import (
    DEFAULT_LAST,
    Request,
    clock_of,
    follow_log,
    from_gateway,
    json_line,
    lag_table,
    parse_from,
    sse_events,
    start_query,
    summary,
    text_line,
)
from shared.errors import ConductorError
from shared.events import EVENT_TYPES, decode
from shared.tail import BEFORE_ALL, Position, PositionError, Start, decode_entry

ZONE = timezone(timedelta(hours=5, minutes=30), "IST")  # not UTC, no daylight saving
NOW = datetime(2026, 12, 2, 13, 0, 0, tzinfo=UTC)  # 18:30 in ZONE
SID = "1764680531204-0"  # 2025-12-02T13:02:11.204Z
ESC = "\x1b["


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> tzinfo:
    monkeypatch.setattr(tail, "local_zone", lambda: ZONE)
    return ZONE


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "local_zone", lambda: UTC)


# ---------------------------------------------------------------------------------- --from


def test_no_from_is_the_last_10() -> None:
    assert parse_from(None, NOW) == Start(last=DEFAULT_LAST) == Start(last=10)


@pytest.mark.parametrize(("text", "back"), [
    ("10m", timedelta(minutes=10)), ("2h", timedelta(hours=2)), ("90s", timedelta(seconds=90)),
    ("1d", timedelta(days=1)), ("500ms", timedelta(milliseconds=500)),
    ("1.5h", timedelta(minutes=90)), ("0s", timedelta(0)), (" 10m ", timedelta(minutes=10)),
])
def test_a_duration_is_back_from_now(text: str, back: timedelta) -> None:
    assert parse_from(text, NOW) == Start(at_ms=ms(NOW - back))


def test_a_duration_does_not_depend_on_the_zone(zone: tzinfo) -> None:
    assert parse_from("10m", NOW.astimezone(zone)) == parse_from("10m", NOW)


def test_a_clock_time_is_today_in_the_local_zone(zone: tzinfo) -> None:
    assert parse_from("13:02", NOW) == Start(at_ms=ms(datetime(2026, 12, 2, 13, 2,
                                                               tzinfo=zone)))
    assert parse_from("9:05", NOW) == Start(at_ms=ms(datetime(2026, 12, 2, 9, 5, tzinfo=zone)))


def test_a_clock_time_takes_seconds_and_fractions(zone: tzinfo) -> None:
    assert parse_from("13:02:11", NOW) == Start(at_ms=ms(datetime(2026, 12, 2, 13, 2, 11,
                                                                  tzinfo=zone)))
    assert parse_from("13:02:11.204", NOW) == Start(at_ms=ms(datetime(
        2026, 12, 2, 13, 2, 11, 204_000, tzinfo=zone)))


def test_today_is_the_local_date_not_utcs(zone: tzinfo) -> None:
    late = datetime(2026, 12, 2, 20, 0, tzinfo=UTC)  # already 01:30 on the 3rd in ZONE
    assert parse_from("00:15", late) == Start(at_ms=ms(datetime(2026, 12, 3, 0, 15,
                                                                tzinfo=zone)))


@pytest.mark.parametrize("text", ["25:00", "13:60", "13:02:61"])
def test_an_impossible_clock_time_is_a_position_error(text: str) -> None:
    with pytest.raises(PositionError):
        parse_from(text, NOW)


def test_scns_tail_from_an_impossible_clock_time_is_a_usage_error() -> None:
    result = CliRunner().invoke(tail.tail, ["--from", "25:00"])
    assert result.exit_code == 2, result.exception
    assert "--from" in result.output


def test_an_iso_time_with_a_zone(zone: tzinfo) -> None:
    assert parse_from("2026-12-02T13:00:00Z", NOW) == Start(at_ms=ms(NOW))
    assert parse_from("2026-12-02T14:00:00+01:00", NOW) == Start(at_ms=ms(NOW))


def test_an_iso_time_without_a_zone_is_local(zone: tzinfo) -> None:
    assert parse_from("2026-12-02T13:00:00", NOW) == Start(at_ms=ms(datetime(
        2026, 12, 2, 13, tzinfo=zone)))
    assert parse_from("2026-12-02", NOW) == Start(at_ms=ms(datetime(2026, 12, 2, tzinfo=zone)))


def test_a_bad_iso_time_is_a_position_error() -> None:
    with pytest.raises(PositionError, match="not an ISO 8601 time"):
        parse_from("2026-13-01", NOW)


def test_an_iso_time_out_of_range_is_a_position_error() -> None:
    with pytest.raises(PositionError):
        start_query(parse_from("0001-01-01T00:00:00+05:00", NOW))


def test_ids_minus_n_now_and_0_are_starts_parse() -> None:
    assert parse_from(SID, NOW) == Start(position=Position.parse(SID))
    assert parse_from(f"{SID}:job-finished", NOW) == Start(position=Position.parse(
        f"{SID}:job-finished"))
    assert parse_from("-5", NOW) == Start(last=5)
    assert parse_from("now", NOW) == Start()
    assert parse_from("0", NOW) == Start(position=Position(0, 0, BEFORE_ALL))


@pytest.mark.parametrize("text", ["yesterday", "10", "10y", "-0", "1-0:nope"])
def test_garbage_is_a_position_error(text: str) -> None:
    with pytest.raises(PositionError):
        parse_from(text, NOW)


# ------------------------------------------------------------------------------ start_query


def test_start_query_of_the_beginning_is_0_0() -> None:
    assert start_query(Start(position=Position(0, 0, BEFORE_ALL))) == "0-0"


def test_start_query_of_a_millisecond_is_just_after_the_one_before() -> None:
    start = Start(position=Position.at_ms(1764680531204))
    assert start_query(start) == f"1764680531203-{2**64 - 1}"
    assert Position.parse(start_query(start)) < Position(1764680531204, 0, "job-finished")
    assert Position.parse(start_query(start)) > Position(1764680531203, 2**64 - 1, "worker-left")


def test_start_query_of_a_stream_id() -> None:
    assert start_query(Start(position=Position.parse(SID))) == SID


def test_start_query_of_an_event_id_keeps_its_type() -> None:
    assert start_query(Start(position=Position.parse(f"{SID}:job-finished"))) == (
        f"{SID}:job-finished")


def test_start_query_of_a_time_is_utc_iso_with_z(zone: tzinfo) -> None:
    assert start_query(Start(at_ms=1764680531204)) == "2025-12-02T13:02:11.204Z"


def test_start_query_of_the_last_n_and_now() -> None:
    assert start_query(Start(last=25)) == "-25"
    assert start_query(Start()) == "now"


@pytest.mark.parametrize("start", [
    Start(position=Position(0, 0, BEFORE_ALL)), Start(position=Position.parse(SID)),
    Start(position=Position.parse(f"{SID}:worker-left")), Start(at_ms=1764680531204),
    Start(at_ms=ms(NOW)), Start(last=1), Start(last=100_000), Start(),
])
def test_the_gateway_reads_the_start_that_was_asked_for(start: Start) -> None:
    assert Start.parse(start_query(start)) == start


# ------------------------------------------------------------------------ one line per event

BODIES: dict[str, dict[str, Any]] = {
    "worker-joined": {"worker_id": "arm-node-07", "incarnation": "b7e1", "hostname": "arm07.lab",
                      "cpus": 64, "memory_mb": 262144, "labels": {"gpu": "none"}},
    "worker-left": {"worker_id": "arm-node-07", "incarnation": "b7e1", "reason": "expired"},
    "job-submitted": {"job_id": 4013, "cpus": 2, "memory_mb": 4096, "priority": 5,
                      "array_size": None, "dependency": False},
    "job-allocated": {"job_id": 4013, "attempt": 1, "worker_id": "arm-node-07", "cpus": 2,
                      "memory_mb": 4096},
    "job-started": {"job_id": 4013, "attempt": 1, "worker_id": "arm-node-07", "pid": 31337},
    "job-finished": {"job_id": 4013, "attempt": 1, "worker_id": "arm-node-07",
                     "state": "FAILED", "exit_code": 3, "signal": None, "reason": None,
                     "elapsed_s": 1.94, "next_attempt": None},
    "job-requeued": {"job_id": 4013, "attempt": 2, "reason": "requeue"},
    "job-updated": {"job_id": 4013, "attempt": 1, "change": "hold", "reason": "maintenance",
                    "array": False, "count": None},
    "job-cancel-requested": {"job_id": 4013, "attempt": 1, "requeue": True},
    "schedule-fired": {"schedule_id": 3, "name": "nightly", "user": "ann",
                       "fire_at": "2026-12-02T02:00:00Z", "kind": "cron", "job_id": 4013,
                       "skipped": None},
    "schedule-disabled": {"schedule_id": 3, "name": "nightly", "user": "ann",
                          "reason": "5 failed runs in a row"},
}
WORDS: dict[str, list[str]] = {
    "worker-joined": ["arm-node-07", "cpus=64", "memory_mb=262144", "hostname=arm07.lab"],
    "worker-left": ["arm-node-07", "reason=expired"],
    "job-submitted": ["4013", "cpus=2", "memory_mb=4096", "priority=5"],
    "job-allocated": ["4013", "worker=arm-node-07", "attempt=1", "cpus=2"],
    "job-started": ["4013", "worker=arm-node-07", "attempt=1", "pid=31337"],
    "job-finished": ["4013", "FAILED", "exit=3", "worker=arm-node-07", "1.9s"],
    "job-requeued": ["4013", "attempt=2", "reason=requeue"],
    "job-updated": ["4013", "hold", "reason=maintenance"],
    "job-cancel-requested": ["job_id=4013", "attempt=1", "requeue=True"],
    "schedule-fired": ["nightly", "job=4013", "kind=cron", "fire_at=2026-12-02T02:00:00Z",
                       "user=ann"],
    "schedule-disabled": ["nightly", "reason=5 failed runs in a row", "user=ann"],
}


def event(kind: str, **extra: Any) -> dict[str, Any]:
    """As a reader shows it (shared/tail.py enriched): the published body and its stream id."""
    return {"type": kind, "v": 1, "id": "0f9c2d", "at": 1764680531.2, **BODIES[kind],
            "stream_id": SID, **extra}


def test_there_is_a_body_for_every_event_type() -> None:
    assert set(BODIES) == set(WORDS) == set(EVENT_TYPES)
    for kind, cls in EVENT_TYPES.items():  # each body is one the publisher could send
        body = orjson.dumps({"type": kind, "v": 1, "id": "x", "at": 1.0, **BODIES[kind]})
        assert isinstance(decode(body), cls)


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_summary_has_the_key_words(kind: str) -> None:
    words = summary(event(kind))
    assert all(w in words for w in WORDS[kind]), words


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_text_line_has_the_time_type_and_words(kind: str, utc: None) -> None:
    line = text_line(event(kind), color=False)
    assert line.startswith(f"13:02:11.204  {kind}")
    assert all(f"  {w}" in line for w in WORDS[kind]), line
    assert ESC not in line


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_text_line_in_colour_has_escapes_and_the_words(kind: str, utc: None) -> None:
    line = text_line(event(kind), color=True)
    assert ESC in line
    assert kind in line
    assert all(w in line for w in WORDS[kind]), line


def test_text_line_paints_the_state_word(utc: None) -> None:
    line = text_line(event("job-finished"), color=True)
    assert click.style("FAILED", fg="red", bold=True) in line


def test_text_line_with_ids_starts_with_the_stream_id(utc: None) -> None:
    assert text_line(event("job-started"), color=False, ids=True).startswith(
        f"{SID}  13:02:11.204  job-started")


def test_a_job_event_shows_the_job_ref_when_known() -> None:
    e = event("job-finished", job_id=4026, job={"ref": "4013_13", "user": "ann", "name": "x"})
    assert summary(e)[0] == "4013_13"
    assert summary(event("job-finished"))[0] == "4013"


def test_a_job_event_without_a_job_id_shows_a_question_mark() -> None:
    assert summary({"type": "job-requeued", "attempt": 2})[0] == "?"


def test_a_finished_job_shows_signal_reason_and_the_next_attempt() -> None:
    words = summary(event("job-finished", state="NODE_FAIL", exit_code=None, signal=9,
                          reason="worker lost", elapsed_s=12, next_attempt=2))
    assert words == ["4013", "NODE_FAIL", "signal=9", "worker=arm-node-07",
                     "reason=worker lost", "12.0s", "→ attempt 2"]


def test_a_finished_job_shows_exit_0_and_no_missing_fields() -> None:
    words = summary(event("job-finished", state="COMPLETED", exit_code=0, worker_id=None,
                          elapsed_s=None))
    assert words == ["4013", "COMPLETED", "exit=0"]


def test_a_skipped_schedule_fire_says_why() -> None:
    words = summary(event("schedule-fired", job_id=None, skipped="previous run active"))
    assert "skipped=previous run active" in words
    assert not any(w.startswith("job=") for w in words)


def test_an_unknown_type_shows_its_fields_but_not_the_envelope() -> None:
    words = summary({"type": "job-teleported", "v": 1, "id": "x", "at": 1.0,
                     "stream_id": SID, "job": {"ref": "1"}, "job_id": 1, "to": "mars"})
    assert words == ["job_id=1", "to=mars"]


def test_text_line_of_an_undecodable_entry_shows_its_text(utc: None) -> None:
    e = decode_entry("job-finished", SID, {"e": "not json at all"}).json()
    assert "not json at all" in text_line(e, color=False)


def test_clock_of_is_the_stream_ids_millisecond_in_the_local_zone(zone: tzinfo) -> None:
    assert clock_of({"stream_id": SID, "at": 0}) == "18:32:11.204"


def test_clock_of_without_a_stream_id_is_the_events_time(utc: None) -> None:
    assert clock_of({"at": 1764680531.2049}) == "13:02:11.204"
    assert clock_of({}) == "00:00:00.000"


def test_json_line_round_trips() -> None:
    e = event("job-finished", job={"ref": "4013_13", "user": "ånn", "name": "naïve ✓"})
    line = json_line(e)
    assert "\n" not in line
    assert orjson.loads(line) == e


# ---------------------------------------------------------------------------- SSE parsing

SAMPLE = (
    b"retry: 2000\n: from 1764680531204-0\n\n"
    b"id: 1764680531204-0:job-submitted\nevent: job-submitted\n"
    b'data: {"type":"job-submitted","job_id":1,"name":"a: b"}\n\n'
    b": keep-alive\n\n"
    b"id: 1764680531205-3:job-finished\r\nevent: job-finished\r\n"
    b'data: {"type":"job-finished",\r\ndata:  "job_id":1,\r\ndata:"state":"FAILED"}\r\n\r\n'
    b'data: {"no_id":"\xc3\xa5"}\n\n'
    b"id: 1764680531206-0:worker-left\n"  # an event cut off before its blank line: not whole
    b'data: {"type":"worker-left"}\n'
)
EVENTS = [
    ("1764680531204-0:job-submitted", {"type": "job-submitted", "job_id": 1, "name": "a: b"}),
    ("1764680531205-3:job-finished", {"type": "job-finished", "job_id": 1, "state": "FAILED"}),
    (None, {"no_id": "å"}),
]


def test_sse_events_of_a_whole_stream() -> None:
    assert list(sse_events([SAMPLE])) == EVENTS


@pytest.mark.parametrize("cut", range(len(SAMPLE) + 1))
def test_sse_events_split_anywhere(cut: int) -> None:
    assert list(sse_events([SAMPLE[:cut], SAMPLE[cut:]])) == EVENTS


def test_sse_events_a_byte_at_a_time_with_empty_chunks() -> None:
    chunks = itertools.chain.from_iterable((SAMPLE[i:i + 1], b"") for i in range(len(SAMPLE)))
    assert list(sse_events(chunks)) == EVENTS


def test_sse_events_of_no_events() -> None:
    assert list(sse_events([])) == []
    assert list(sse_events([b": from 1-0\n\n", b": keep-alive\n\n"])) == []


def test_sse_events_reads_lazily() -> None:
    def chunks() -> Iterator[bytes]:
        yield b'id: 1-0:job-started\ndata: {"a":1}\n\n'
        raise AssertionError("read past the first event")

    assert next(sse_events(chunks())) == ("1-0:job-started", {"a": 1})


# -------------------------------------------------------------------- from_gateway: resume


def frame(event_id: str, n: int) -> bytes:
    return f'id: {event_id}\nevent: job-started\ndata: {{"n": {n}}}\n\n'.encode()


class FlakyGateway:
    """`Client.stream` as a script: per call, the chunks it yields, then an exception or not."""

    def __init__(self, *script: tuple[Iterable[bytes], BaseException | None]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, dict[str, Any], Mapping[str, str] | None]] = []

    def stream(self, path: str, query: Mapping[str, Any],
               headers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        self.calls.append((path, dict(query), headers))
        chunks, error = self.script[len(self.calls) - 1]
        yield from chunks
        if error is not None:
            raise error


def request(*, follow: bool, start: Start | None = None) -> Request:
    return Request(types=("job-started", "job-finished"), start=start or Start(last=10),
                   follow=follow, job="4013", worker=None, where=("state=FAILED",))


def dropping(error: BaseException) -> FlakyGateway:
    return FlakyGateway(([frame("5-0:job-started", 1), frame("6-1:job-started", 2)], error),
                        ([frame("7-0:job-started", 3)], None))


def test_from_gateway_asks_for_the_request() -> None:
    gw = FlakyGateway(([frame("5-0:job-started", 1)], None))
    assert list(from_gateway(gw, request(follow=False))) == [{"n": 1}]  # type: ignore[arg-type]
    assert gw.calls == [("/api/v1/events",
                         {"types": "job-started,job-finished", "from": "-10", "job": "4013",
                          "worker": None, "follow": "0", "where": ["state=FAILED"]}, None)]


def test_from_gateway_resumes_after_the_last_event_id(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    gw = dropping(ConductorError("connection reset"))
    slept: list[float] = []
    got = list(itertools.islice(
        from_gateway(gw, request(follow=True), sleep=slept.append), 3))  # type: ignore[arg-type]
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [headers for _, _, headers in gw.calls] == [None, {"Last-Event-ID": "6-1:job-started"}]
    assert gw.calls[1][1]["follow"] == "1"
    assert slept == [0.5]
    assert "resuming" in capsys.readouterr().err


def test_from_gateway_without_follow_lets_the_error_through() -> None:
    gw = dropping(ConductorError("connection reset"))
    got: list[dict[str, Any]] = []
    with pytest.raises(ConductorError, match="connection reset"):
        got.extend(from_gateway(gw, request(follow=False), sleep=pytest.fail))  # type: ignore[arg-type]
    assert got == [{"n": 1}, {"n": 2}]
    assert len(gw.calls) == 1


def test_from_gateway_resumes_after_an_os_error_and_a_busy_gateway() -> None:
    for error in (OSError("broken pipe"), ApiError(503, "unavailable", "busy")):
        gw = dropping(error)
        got = list(itertools.islice(from_gateway(gw, request(follow=True),  # type: ignore[arg-type]
                                                 sleep=lambda _: None), 3))
        assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert gw.calls[1][2] == {"Last-Event-ID": "6-1:job-started"}


def test_from_gateway_does_not_retry_a_refusal() -> None:
    gw = FlakyGateway(([], ApiError(401, "unauthorized", "no token")))
    with pytest.raises(ApiError, match="no token"):
        list(from_gateway(gw, request(follow=True), sleep=pytest.fail))  # type: ignore[arg-type]


def test_from_gateway_backs_off_until_an_event_comes() -> None:
    down = ConductorError("refused")
    gw = FlakyGateway(*[([], down)] * 5, ([frame("1-0:job-started", 1)], down),
                      ([frame("2-0:job-started", 2)], None))
    slept: list[float] = []
    got = list(itertools.islice(
        from_gateway(gw, request(follow=True), sleep=slept.append), 2))  # type: ignore[arg-type]
    assert got == [{"n": 1}, {"n": 2}]
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 0.5]


def test_from_gateway_keeps_the_last_id_across_events_without_one() -> None:
    gw = FlakyGateway(([frame("5-0:job-started", 1), b'data: {"n": 2}\n\n'],
                       ConductorError("reset")), ([frame("7-0:job-started", 3)], None))
    got = list(itertools.islice(from_gateway(gw, request(follow=True),  # type: ignore[arg-type]
                                             sleep=lambda _: None), 3))
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert gw.calls[1][2] == {"Last-Event-ID": "5-0:job-started"}


# ------------------------------------------------------------------------------------- lag


def lag_text(rows: list[dict[str, Any]]) -> list[str]:
    console = Console(record=True, width=200)
    console.print(lag_table(rows))
    return console.export_text().splitlines()


def group(stream: str, *, lag: int | None, oldest: float | None) -> dict[str, Any]:
    return {"stream": stream, "name": stream, "group": "scheduler", "consumers": 1,
            "pending": 0 if oldest is None else 3, "lag": lag, "oldest_pending_s": oldest,
            "last_delivered_id": SID}


@pytest.mark.parametrize(("lag", "oldest", "slow"), [
    (0, None, False), (0, 9.9, False), (None, None, False), (None, 3.0, False),
    (1, None, True), (250, 0.5, True), (0, 10.0, True), (None, 42.0, True),
])
def test_lag_table_marks_a_slow_consumer(lag: int | None, oldest: float | None,
                                         slow: bool) -> None:
    header, row = lag_text([group("job-finished", lag=lag, oldest=oldest)])
    assert "STREAM" in header and "OLDEST PENDING" in header
    assert row.startswith("job-finished")
    assert ("← slow consumer" in row) is slow


def test_lag_table_shows_unknowns_and_seconds() -> None:
    _, unknown, known = lag_text([group("worker-left", lag=None, oldest=None),
                                  group("job-started", lag=7, oldest=12.345)])
    assert "?" in unknown.split() and "-" in unknown.split()
    assert "7" in known.split() and "12.3s" in known.split()


def test_lag_table_does_not_read_names_as_markup() -> None:
    (_, row) = lag_text([group("job-[bold]x[/bold]", lag=0, oldest=None)])
    assert "job-[bold]x[/bold]" in row


# ------------------------------------------------------------ follow_log: scns logs -f resumes


class LogGateway(FlakyGateway):
    """A job's log and record through `Client.stream` and `Client.call`: each stream call plays
    its script on the bytes after its `offset`; `states` is what each look at the job says."""

    def __init__(self, text: bytes, *script: tuple[int, BaseException | None],
                 states: Iterable[tuple[str, int]]) -> None:
        super().__init__()
        self.text, self.plays, self.states = text, list(script), list(states)
        self.looks = 0

    def stream(self, path: str, query: Mapping[str, Any],
               headers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        self.calls.append((path, dict(query), headers))
        offset = int(query["offset"])
        if query.get("follow") != "1":  # the rest, as it is now
            yield self.text[offset:]
            return
        upto, error = self.plays.pop(0)  # this follow gets up to byte `upto`, in two pieces
        middle = (offset + upto) // 2
        yield self.text[offset:middle]
        yield self.text[middle:upto]
        if error is not None:
            raise error

    def call(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("GET", "/api/v1/jobs/7")
        state, attempt = self.states[min(self.looks, len(self.states) - 1)]
        self.looks += 1
        return {"state": state, "attempt": attempt}


TEXT = "ligne 1: été ☃\nligne 2\nfin ✓\n".encode()


def follow(gw: LogGateway) -> tuple[bytes, list[float]]:
    out: list[bytes] = []
    slept: list[float] = []
    follow_log(gw, "7", "stdout", out.append, sleep=slept.append)  # type: ignore[arg-type]
    return b"".join(out), slept


def test_follow_log_resumes_each_ended_follow_after_the_bytes_it_has() -> None:
    # two follows end at the gateway's longest time (the job still runs), the third with the job;
    # the second ends inside a multi-byte character: the resume point is a byte count
    inside = TEXT.index("é".encode()) + 1
    gw = LogGateway(TEXT, (inside, None), (20, None), (len(TEXT) - 3, None),
                    states=[("PENDING", 2), ("RUNNING", 2), ("RUNNING", 2), ("COMPLETED", 2)])
    out, slept = follow(gw)
    assert out == TEXT  # whole, each byte once (the last 3 from the closing read)
    assert [(q["offset"], q.get("follow"), q["attempt"]) for _, q, _ in gw.calls] == [
        (0, "1", 2), (inside, "1", 2), (20, "1", 2), (len(TEXT) - 3, None, 2)]
    assert slept == []


def test_follow_log_resumes_after_a_broken_follow_and_a_busy_gateway(
        capsys: pytest.CaptureFixture[str]) -> None:
    gw = LogGateway(TEXT, (10, ConductorError("connection reset")),
                    (10, ApiError(503, "unavailable", "busy", retry_after_s=2.0)),
                    (12, OSError("broken pipe")), (len(TEXT), None),
                    states=[("RUNNING", 1), ("FAILED", 1)])
    out, slept = follow(gw)
    assert out == TEXT
    assert [q["offset"] for _, q, _ in gw.calls] == [0, 10, 10, 12, len(TEXT)]
    # a Retry-After longer than the backoff is kept; bytes received start the backoff over
    assert slept == [0.5, 2.0, 0.5]
    err = capsys.readouterr().err
    assert "resuming" in err and "busy" in err


def test_follow_log_ends_with_its_attempt_and_lets_a_refusal_through() -> None:
    # the job was requeued meanwhile: attempt 1 ended, the follow of it ends too
    gw = LogGateway(TEXT, (len(TEXT), None), states=[("RUNNING", 1), ("PENDING", 2)])
    assert follow(gw) == (TEXT, [])
    gone = LogGateway(TEXT, (0, ApiError(404, "not_found", "no such job")),
                      states=[("RUNNING", 1)])
    with pytest.raises(ApiError, match="no such job"):
        follow(gone)
