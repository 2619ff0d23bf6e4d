"""The merged reader of the event streams without a server (shared/tail.py): positions in the
merged order and the XRANGE/XREAD ids they become, where a reader starts (`from`), which entries
a filter lets through, and what a reader shows of an entry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import EVENT_TYPES
from shared.tail import (
    AFTER_ALL,
    BEFORE_ALL,
    JOB_TYPES,
    MAX_BACK,
    TYPES,
    Entry,
    Filter,
    JobInfo,
    Position,
    PositionError,
    Start,
    check_types,
    decode_entry,
    enriched,
    field_text,
    parse_time_ms,
    parse_where,
    split_id,
)

MAX = 2**64 - 1
ID = "1764680531204"  # a stream id's millisecond part, as Redis gives it


def entry(kind: str, stream_id: str, **body: Any) -> Entry:
    return Entry(kind, stream_id, {"type": kind, "v": 1, "id": "x", "at": 1.0, **body})


def utc_ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------------------------------ TYPES


def test_types_are_every_streamed_event_type_sorted_without_cancel_requests() -> None:
    assert list(TYPES) == sorted(TYPES)
    assert set(TYPES) == set(EVENT_TYPES) - {"job-cancel-requested"}
    assert all(BEFORE_ALL < t < AFTER_ALL for t in TYPES)
    assert {t for t in TYPES if t.startswith("job-")} == JOB_TYPES


# ---------------------------------------------------------------------------- Position.parse


def test_a_bare_stream_id_is_after_that_id_in_every_stream() -> None:
    p = Position.parse(f"{ID}-7")
    assert p == Position(int(ID), 7, AFTER_ALL)
    assert p.stream_id == f"{ID}-7"


def test_an_event_id_is_after_that_one_event() -> None:
    assert Position.parse(f"{ID}-0:job-finished") == Position(int(ID), 0, "job-finished")


def test_parse_ignores_surrounding_blanks() -> None:
    assert Position.parse(f"  {ID}-1\n") == Position(int(ID), 1)


def test_the_largest_parts_below_2_64_parse() -> None:
    assert Position.parse("9999999999999999999-9999999999999999999") == Position(
        9999999999999999999, 9999999999999999999)


@pytest.mark.parametrize("text", ["", "abc", "17", "17-", "-17-0", "17-0-1", "17.5-0",
                                  "17-0:", "17-0:Job-Finished", "17-0 job-finished",
                                  "1-0:job-finished:x"])
def test_a_bad_id_is_a_position_error_naming_it(text: str) -> None:
    with pytest.raises(PositionError, match="is not a stream id") as err:
        Position.parse(text)
    assert repr(text.strip()[:60]) in str(err.value)


def test_a_long_bad_id_is_cut_short_in_the_message() -> None:
    with pytest.raises(PositionError) as err:
        Position.parse("x" * 500)
    assert len(str(err.value)) < 150


@pytest.mark.parametrize("kind", ["nope", "job-cancel-requested", "job"])
def test_an_unknown_type_is_a_position_error_listing_the_types(kind: str) -> None:
    with pytest.raises(PositionError, match="is not an event type") as err:
        Position.parse(f"{ID}-0:{kind}")
    assert repr(kind) in str(err.value)
    assert all(t in str(err.value) for t in TYPES)


@pytest.mark.parametrize("text", [f"{2**64}-0", f"0-{2**64}", f"{10**25}-0"])
def test_parts_of_2_64_or_more_are_a_position_error(text: str) -> None:
    with pytest.raises(PositionError):
        Position.parse(text)


def test_a_part_of_2_64_says_parts_are_below_2_64() -> None:
    with pytest.raises(PositionError, match="2\\^64"):
        Position.parse(f"{2**64}-0")


def test_the_largest_stream_id_parses() -> None:
    assert Position.parse(f"{MAX}-{MAX}") == Position(MAX, MAX)


# ------------------------------------------------------------------------------- ordering


def test_an_entry_is_after_a_position_by_id_then_type() -> None:
    p = Position.parse(f"{ID}-5:job-started")
    assert entry("job-finished", f"{ID}-5").position < p  # same id, a type below: seen
    assert not entry("job-started", f"{ID}-5").position > p  # the event itself: seen
    assert entry("worker-left", f"{ID}-5").position > p  # same id, a type above: not yet
    assert entry("job-allocated", f"{ID}-6").position > p
    assert entry("worker-left", f"{ID}-4").position < p


def test_a_bare_id_is_after_every_type_at_that_id() -> None:
    p = Position.parse(f"{ID}-5")
    assert all(entry(t, f"{ID}-5").position < p for t in TYPES)
    assert all(entry(t, f"{ID}-6").position > p for t in TYPES)


def test_at_ms_is_before_every_entry_of_that_millisecond() -> None:
    p = Position.at_ms(int(ID))
    assert p == Position(int(ID), 0, BEFORE_ALL)
    assert all(entry(t, f"{ID}-0").position > p for t in TYPES)
    assert all(entry(t, f"{int(ID) - 1}-{MAX}").position < p for t in TYPES)


def test_at_ms_before_1970_is_the_beginning() -> None:
    assert Position.at_ms(-5) == Position(0, 0, BEFORE_ALL)


def test_ids_order_by_number_not_text() -> None:
    assert Position.parse("9-0") < Position.parse("10-0")
    assert Position.parse("1-9") < Position.parse("1-10")


def test_split_id() -> None:
    assert split_id(f"{ID}-7") == (int(ID), 7)
    assert split_id("12") == (12, 0)


# ------------------------------------------------------------------ Position.start / .after


def test_start_of_a_bare_id_is_exclusive_in_every_stream() -> None:
    p = Position.parse(f"{ID}-5")
    assert {p.start(t) for t in TYPES} == {f"({ID}-5"}


def test_start_of_an_event_id_is_exclusive_up_to_its_type_and_inclusive_above() -> None:
    p = Position.parse(f"{ID}-5:job-started")
    assert p.start("job-finished") == f"({ID}-5"
    assert p.start("job-started") == f"({ID}-5"
    assert p.start("job-submitted") == f"{ID}-5"
    assert p.start("worker-left") == f"{ID}-5"


def test_start_of_a_time_is_inclusive() -> None:
    assert {Position.at_ms(int(ID)).start(t) for t in TYPES} == {f"{ID}-0"}


def test_start_of_the_beginning_is_0_0() -> None:
    assert Position(0, 0, BEFORE_ALL).start("job-finished") == "0-0"


def test_after_is_the_id_itself_up_to_the_positions_type() -> None:
    p = Position.parse(f"{ID}-5:job-started")
    assert p.after("job-finished") == f"{ID}-5"
    assert p.after("job-started") == f"{ID}-5"
    assert Position.parse(f"{ID}-5").after("worker-left") == f"{ID}-5"


def test_after_is_the_previous_id_above_the_positions_type() -> None:
    assert Position.parse(f"{ID}-5:job-started").after("worker-left") == f"{ID}-4"


def test_after_seq_0_is_the_previous_milliseconds_last_id() -> None:
    assert Position.parse(f"{ID}-0:job-started").after("worker-left") == f"{int(ID) - 1}-{MAX}"
    assert Position.at_ms(int(ID)).after("job-finished") == f"{int(ID) - 1}-{MAX}"


def test_after_the_beginning_is_0_0() -> None:
    assert Position(0, 0, BEFORE_ALL).after("job-finished") == "0-0"
    assert Position.at_ms(0).after("worker-left") == "0-0"


# ------------------------------------------------------------------------ the merged order

KEYS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.sampled_from(TYPES)),
                unique=True, max_size=30).map(lambda ks: [k for k in ks if k[:2] != (0, 0)])


@settings(max_examples=150, deadline=None)
@given(keys=KEYS, data=st.data())
def test_resuming_after_an_event_id_gives_exactly_the_entries_after_it(
        keys: list[tuple[int, int, str]], data: st.DataObject) -> None:
    entries = [entry(kind, f"{ms}-{seq}") for ms, seq, kind in keys]
    ordered = sorted(entries, key=lambda e: e.position)
    assert [e.position for e in ordered] == sorted(Position(*k) for k in keys)
    for k, seen in enumerate(ordered):
        resume = Position.parse(seen.event_id)
        assert resume == seen.position
        after = sorted((e for e in entries if e.position > resume), key=lambda e: e.position)
        assert after == ordered[k + 1:]
    if entries:  # shuffled: the merge does not depend on the order the streams were read in
        shuffled = data.draw(st.permutations(entries))
        assert sorted(shuffled, key=lambda e: e.position) == ordered


def _ids_from(start: str, stream: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Redis XRANGE from `start` (`(id` exclusive, `id` inclusive)."""
    lo = split_id(start.removeprefix("("))
    return [i for i in stream if (i > lo if start.startswith("(") else i >= lo)]


POSITIONS = st.builds(Position, st.integers(0, 4), st.integers(0, 3),
                      st.sampled_from((BEFORE_ALL, AFTER_ALL, *TYPES)))


@settings(max_examples=150, deadline=None)
@given(keys=KEYS, p=POSITIONS)
def test_start_and_after_read_exactly_the_entries_after_a_position(
        keys: list[tuple[int, int, str]], p: Position) -> None:
    at_entries = [Position(ms, seq, t) for ms, seq, kind in keys
                  for t in (BEFORE_ALL, kind, AFTER_ALL)]
    for q in (p, *at_entries):
        for kind in TYPES:
            stream = sorted((ms, seq) for ms, seq, t in keys if t == kind)
            wanted = [i for i in stream if Position(*i, kind) > q]
            assert _ids_from(q.start(kind), stream) == wanted  # XRANGE
            assert [i for i in stream if i > split_id(q.after(kind))] == wanted  # XREAD


# ------------------------------------------------------------------------------ Start.parse


@pytest.mark.parametrize("text", [None, "", "   "])
def test_no_from_is_now(text: str | None) -> None:
    assert Start.parse(text) == Start()


@pytest.mark.parametrize("text", [None, ""])
def test_no_from_with_a_default_is_the_last_n(text: str | None) -> None:
    assert Start.parse(text, default_last=10) == Start(last=10)


@pytest.mark.parametrize("text", ["now", "$", " now "])
def test_now(text: str) -> None:
    assert Start.parse(text, default_last=10) == Start()


@pytest.mark.parametrize("text", ["0", "0-0", "begin"])
def test_the_beginning_is_before_every_entry(text: str) -> None:
    start = Start.parse(text)
    assert start == Start(position=Position(0, 0, BEFORE_ALL))
    assert start.position is not None
    assert entry("job-allocated", "0-1").position > start.position


@pytest.mark.parametrize(("text", "n"), [("-1", 1), ("-10", 10), (f"-{MAX_BACK}", MAX_BACK)])
def test_minus_n_is_the_last_n(text: str, n: int) -> None:
    assert Start.parse(text) == Start(last=n)


@pytest.mark.parametrize("text", ["-0", f"-{MAX_BACK + 1}", "-00"])
def test_minus_n_out_of_bounds_is_a_position_error(text: str) -> None:
    with pytest.raises(PositionError, match=f"1 to {MAX_BACK}"):
        Start.parse(text)


def test_a_stream_id_starts_after_it_in_every_stream() -> None:
    assert Start.parse(f"{ID}-3") == Start(position=Position(int(ID), 3, AFTER_ALL))


def test_an_event_id_starts_after_that_event() -> None:
    assert Start.parse(f"{ID}-3:worker-left") == Start(position=Position(int(ID), 3,
                                                                        "worker-left"))


def test_an_event_id_of_an_unknown_type_is_a_position_error() -> None:
    with pytest.raises(PositionError, match="is not an event type"):
        Start.parse(f"{ID}-3:job-cancel-requested")


@pytest.mark.parametrize("text", ["2026-12-02T13:00:00Z", "2026-12-02T13:00:00z",
                                  "2026-12-02T13:00:00+00:00", "2026-12-02T14:00:00+01:00",
                                  "2026-12-02T08:00:00-05:00", "2026-12-02T13:00:00.000Z"])
def test_an_iso_time_with_a_zone(text: str) -> None:
    assert Start.parse(text) == Start(at_ms=utc_ms(2026, 12, 2, 13))


def test_an_iso_time_without_a_zone_is_utc() -> None:
    assert Start.parse("2026-12-02T13:00:00") == Start(at_ms=utc_ms(2026, 12, 2, 13))
    assert Start.parse("2026-12-02") == Start(at_ms=utc_ms(2026, 12, 2))


def test_an_iso_time_keeps_its_milliseconds() -> None:
    assert Start.parse("2026-12-02T13:00:00.204Z") == Start(
        at_ms=utc_ms(2026, 12, 2, 13) + 204)


def test_an_iso_time_is_exact_to_the_millisecond() -> None:
    assert parse_time_ms("1978-07-28T16:06:31.154Z") == 270489991154


@pytest.mark.parametrize("text", ["yesterday", "12", "13:02", "2026-13-01", "abc-def",
                                  "-1-0", "-x", "1e3"])
def test_garbage_is_a_position_error_saying_what_from_takes(text: str) -> None:
    with pytest.raises(PositionError, match="expected a stream id"):
        Start.parse(text)


@pytest.mark.parametrize("text", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00"])
def test_a_time_before_1970_is_a_position_error(text: str) -> None:
    with pytest.raises(PositionError, match="year is out of range"):
        Start.parse(text)


# ------------------------------------------------------------------------------ check_types


def test_no_types_is_every_type() -> None:
    assert check_types([]) == TYPES


def test_types_are_sorted_and_deduplicated() -> None:
    assert check_types(["worker-left", "job-finished", "worker-left"]) == (
        "job-finished", "worker-left")


@pytest.mark.parametrize("names", [["nope"], ["job-finished", "job-cancel-requested"]])
def test_an_unknown_type_is_an_error(names: list[str]) -> None:
    with pytest.raises(PositionError, match="unknown event type"):
        check_types(names)


# ---------------------------------------------------------------------------------- Filter

ANN = JobInfo(7, "ann", "train", None, None)
BOB = JobInfo(8, "bob", "eval", None, None)
ELEMENT = JobInfo(13, "ann", "sweep", 12, 1)  # 12_1


def finished(job_id: int = 7, **body: Any) -> Entry:
    return entry("job-finished", f"{ID}-0", job_id=job_id, attempt=1, worker_id="w1",
                 state="FAILED", exit_code=3, **body)


def test_the_default_filter_matches_everything() -> None:
    assert Filter().matches(finished(), None)
    assert Filter().matches(entry("worker-joined", "1-0", worker_id="w1"), None)


def test_types() -> None:
    flt = Filter(types=frozenset({"job-finished"}))
    assert flt.matches(finished(), ANN)
    assert not flt.matches(entry("job-started", "1-0", job_id=7), ANN)


def test_an_owner_sees_their_job_events() -> None:
    assert Filter(owner="ann").matches(finished(7), ANN)


def test_an_owner_does_not_see_others_job_events() -> None:
    assert not Filter(owner="ann").matches(finished(8), BOB)


def test_an_owner_does_not_see_a_job_event_of_an_unknown_job() -> None:
    assert not Filter(owner="ann").matches(finished(7), None)


def test_an_owner_sees_their_schedule_events_by_the_bodys_user() -> None:
    flt = Filter(owner="ann")
    assert flt.matches(entry("schedule-fired", "1-0", name="n", user="ann", job_id=8), BOB)
    assert not flt.matches(entry("schedule-disabled", "1-0", name="n", user="bob"), None)


def test_an_owner_never_sees_worker_events() -> None:
    flt = Filter(owner="ann")
    assert not flt.matches(entry("worker-joined", "1-0", worker_id="w1", cpus=4), None)
    assert not flt.matches(entry("worker-left", "1-0", worker_id="w1"), ANN)


def test_filters_need_jobs_only_for_an_owner_or_an_array() -> None:
    assert not Filter(job_ids=frozenset({7}), worker="w1").needs_jobs()
    assert Filter(owner="ann").needs_jobs()
    assert Filter(array_id=12).needs_jobs()


def test_job_ids() -> None:
    flt = Filter(job_ids=frozenset({7}))
    assert flt.matches(finished(7), None)
    assert not flt.matches(finished(8), None)
    assert not flt.matches(entry("worker-left", "1-0", worker_id="w1"), None)


def test_an_array_matches_its_elements_by_their_array_job_id() -> None:
    flt = Filter(job_ids=frozenset({12}), array_id=12)
    assert flt.matches(finished(13), ELEMENT)
    assert flt.matches(entry("job-submitted", "1-0", job_id=12, array_size=3), None)
    assert not flt.matches(finished(8), BOB)
    assert not flt.matches(finished(13), None)  # an element is known by its job info


def test_worker() -> None:
    flt = Filter(worker="w1")
    assert flt.matches(finished(), ANN)
    assert flt.matches(entry("worker-left", "1-0", worker_id="w1"), None)
    assert not flt.matches(entry("worker-left", "1-0", worker_id="w2"), None)
    assert not flt.matches(entry("job-submitted", "1-0", job_id=7), ANN)


def test_where_compares_a_fields_text() -> None:
    assert Filter(where=(("state", "FAILED"), ("exit_code", "3"))).matches(finished(), ANN)
    assert not Filter(where=(("state", "COMPLETED"),)).matches(finished(), ANN)
    assert not Filter(where=(("missing", "x"),)).matches(finished(), ANN)


def test_where_sees_the_added_job_info() -> None:
    flt = Filter(where=(("job.user", "ann"),))
    assert flt.matches(finished(7), ANN)
    assert not flt.matches(finished(8), BOB)
    assert not flt.matches(finished(7), None)
    assert Filter(where=(("job.ref", "12_1"),)).matches(finished(13), ELEMENT)


def test_where_null_and_booleans() -> None:
    e = entry("job-submitted", "1-0", job_id=7, cpus=2, array_size=None, dependency=True)
    assert Filter(where=(("array_size", "null"), ("dependency", "true"))).matches(e, None)
    assert not Filter(where=(("dependency", "True"),)).matches(e, None)


def test_where_sees_the_type_and_stream_id() -> None:
    flt = Filter(where=(("type", "job-finished"), ("stream_id", f"{ID}-0")))
    assert flt.matches(finished(), None)


# ------------------------------------------------------------------------ where / field_text


def test_parse_where() -> None:
    assert parse_where(["state=FAILED", " job.user =ann", "reason=a=b", "signal="]) == (
        ("state", "FAILED"), ("job.user", "ann"), ("reason", "a=b"), ("signal", ""))


@pytest.mark.parametrize("item", ["state", "=FAILED", "  =x", ""])
def test_parse_where_without_a_field_and_value_is_an_error(item: str) -> None:
    with pytest.raises(PositionError, match="expected FIELD=VALUE"):
        parse_where([item])


@pytest.mark.parametrize(("name", "text"), [
    ("state", "FAILED"), ("exit_code", "0"), ("elapsed", "1.5"), ("job.user", "ann"),
    ("job.tags", '["a",1]'), ("job", '{"user":"ann","tags":["a",1],"n":null}'),
    ("signal", "null"), ("job.n", "null"), ("ok", "true"), ("held", "false"),
    ("missing", None), ("job.missing", None), ("state.x", None), ("job.tags.0", None),
])
def test_field_text(name: str, text: str | None) -> None:
    body = {"state": "FAILED", "exit_code": 0, "elapsed": 1.5, "signal": None, "ok": True,
            "held": False, "job": {"user": "ann", "tags": ["a", 1], "n": None}}
    assert field_text(body, name) == text


# --------------------------------------------------------------------------- what is shown


def test_job_info_ref() -> None:
    assert ANN.ref == "7"
    assert ELEMENT.ref == "12_1"
    assert JobInfo(12, "ann", "x", 12, None).ref == "12"
    assert ELEMENT.json() == {"ref": "12_1", "user": "ann", "name": "sweep"}


def test_enriched_is_the_body_with_its_type_and_stream_id() -> None:
    e = entry("worker-left", f"{ID}-2", worker_id="w1", reason="expired")
    assert enriched(e, None) == {**e.body, "type": "worker-left", "stream_id": f"{ID}-2"}
    assert "job" not in enriched(e, None)


def test_enriched_adds_whose_job_it_is() -> None:
    assert enriched(finished(13), ELEMENT)["job"] == {"ref": "12_1", "user": "ann",
                                                     "name": "sweep"}


def test_enriched_submission_of_an_array_names_the_array() -> None:
    first = JobInfo(12, "ann", "sweep", 12, 0)  # the array's id is its first element's
    e = entry("job-submitted", "1-0", job_id=12, cpus=1, array_size=4)
    assert enriched(e, first)["job"]["ref"] == "12"
    assert first.ref == "12_0"  # unchanged: other events of element 0 say 12_0
    assert enriched(finished(12), first)["job"]["ref"] == "12_0"


def test_enriched_submission_of_a_single_job_keeps_its_ref() -> None:
    e = entry("job-submitted", "1-0", job_id=7, cpus=1, array_size=None)
    assert enriched(e, ANN)["job"]["ref"] == "7"


def test_enriched_does_not_change_the_entry() -> None:
    e = finished(7)
    before = dict(e.body)
    enriched(e, ANN)["state"] = "x"
    assert e.body == before


# ---------------------------------------------------------------------------------- entries


def test_entry_ids() -> None:
    e = finished()
    assert e.event_id == f"{ID}-0:job-finished"
    assert e.position == Position(int(ID), 0, "job-finished")
    assert e.job_id == 7
    assert e.worker_id == "w1"


def test_entry_job_id_and_worker_id_must_have_their_types() -> None:
    e = entry("job-finished", "1-0", job_id=True, worker_id=5)
    assert e.job_id is None
    assert e.worker_id is None
    assert entry("job-finished", "1-0", job_id="7").job_id is None


def test_decode_entry() -> None:
    body = {"type": "job-started", "job_id": 7, "attempt": 1, "worker_id": "w1"}
    e = decode_entry("job-started", f"{ID}-0", {"e": orjson.dumps(body).decode()})
    assert e == Entry("job-started", f"{ID}-0", body)


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"text"', "null", "{"])
def test_an_undecodable_entry_is_kept_with_its_text(raw: str) -> None:
    e = decode_entry("job-finished", f"{ID}-0", {"e": raw})
    assert e.body == {"type": "job-finished", "undecodable": raw}
    assert e.json()["stream_id"] == f"{ID}-0"


def test_an_entry_without_the_field_is_undecodable() -> None:
    e = decode_entry("worker-left", "1-0", {"other": "{}"})
    assert e.body == {"type": "worker-left", "undecodable": ""}


def test_an_undecodable_entrys_text_is_cut_at_1000_characters() -> None:
    e = decode_entry("worker-left", "1-0", {"e": "x" * 5000})
    assert e.body["undecodable"] == "x" * 1000
