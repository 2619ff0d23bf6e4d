from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import shared.cron
from shared.cron import Cron, CronError, due_fires, next_fire, parse_cron, previous_fire, zone

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)
TICK = timedelta(microseconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def local(z: ZoneInfo, month: int, day: int, hour: int, minute: int, fold: int = 0) -> datetime:
    """A wall time in 2026, as a UTC instant (aware datetimes in a repeated hour compare
    unequal across zones, PEP 495)."""
    return datetime(2026, month, day, hour, minute, tzinfo=z, fold=fold).astimezone(UTC)


def chain(expr: str, tz: ZoneInfo | str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire in (start, end] by chaining next_fire; checks the chain only moves forward."""
    fires: list[datetime] = []
    at = start
    while (at := next_fire(expr, tz, at)) <= end:
        assert not fires or at > fires[-1]
        assert at.tzinfo is UTC
        fires.append(at)
    return fires


def chain_back(expr: str, tz: ZoneInfo | str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire in (start, end] by chaining previous_fire down from end, ascending."""
    fires: list[datetime] = []
    at = end
    while (fire := previous_fire(expr, tz, at)) is not None and fire > start:
        assert not fires or fire < fires[-1]
        fires.append(fire)
        at = fire - TICK
    return fires[::-1]


def per_local_day(fires: list[datetime], z: ZoneInfo) -> Counter[date]:
    return Counter(f.astimezone(z).date() for f in fires)


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expr", "wall_clock"),
    [
        ("@hourly", "0 * * * *", False),
        ("@daily", "0 0 * * *", True),
        ("@midnight", "0 0 * * *", True),
        ("@weekly", "0 0 * * 0", True),
        ("@monthly", "0 0 1 * *", True),
        ("@yearly", "0 0 1 1 *", True),
        ("@ANNUALLY", "0 0 1 1 *", True),
        ("30 2 * * *", "30 2 * * *", True),
        ("*/15 * * * *", "*/15 * * * *", False),
        ("0 */2 * * *", "0 */2 * * *", False),
        ("0 9-17/2 * * MON-FRI", "0 9-17/2 * * MON-FRI", True),
        ("  0   12  29 2  * ", "0 12 29 2 *", True),
    ],
)
def test_parse_cron(source: str, expr: str, wall_clock: bool) -> None:
    assert parse_cron(source) == Cron(expr=expr, source=source.strip(), wall_clock=wall_clock)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * *", "use 5 fields: minute hour day-of-month month day-of-week"),
        ("abc", "has 1 field(s)"),
        ("61 * * * *", "minute field '61' is out of range 0-59"),
        ("* 25 * * *", "hour field '25' is out of range 0-23"),
        ("* * 32 * *", "day-of-month field '32' is out of range 1-31"),
        ("* * 0 * *", "day-of-month field '0' is out of range 1-31"),
        ("* * * 13 *", "month field '13' is out of range 1-12"),
        ("* * * * 8", "day-of-week field '8' is out of range 0-7"),
        ("0 1-30 * * *", "hour field '1-30': 30 is out of range 0-23"),
        ("*/0 * * * *", "step"),
        ("* * * * FUN", "day-of-week field 'FUN' is not valid"),
        ("* * * FOO *", "month field 'FOO' is not valid"),
        ("H * * * *", "not supported"),
        ("0 0 30 2 *", "never fires: day-of-month '30' never occurs in month '2'"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@reboot", "@reboot is not supported: a schedule needs fire times"),
        ("@often", "unknown macro '@often'"),
        ("* * * * * *", "use 5 fields: minute hour day-of-month month day-of-week (seconds"),
        ("0 0 * * * * 2026", "(seconds are not supported)"),
        ("* " * 101, "too long"),
    ],
)
def test_parse_cron_refuses(expr: str, message: str) -> None:
    with pytest.raises(CronError) as info:
        parse_cron(expr)
    assert message in str(info.value)


def test_cron_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="hour field"):
        parse_cron("0 24 * * *")


# --- next_fire -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("@hourly", "UTC", utc(2026, 5, 1, 12, 0), utc(2026, 5, 1, 13, 0)),  # strictly after
        ("@hourly", "UTC", utc(2026, 5, 1, 12, 0, 30), utc(2026, 5, 1, 13, 0)),
        ("@daily", "UTC", utc(2026, 5, 1, 12, 0), utc(2026, 5, 2, 0, 0)),
        ("@weekly", "UTC", utc(2026, 5, 1, 12, 0), utc(2026, 5, 3, 0, 0)),  # a Sunday
        ("@monthly", "UTC", utc(2026, 5, 1, 0, 0), utc(2026, 6, 1, 0, 0)),
        ("@yearly", "UTC", utc(2026, 5, 1, 12, 0), utc(2027, 1, 1, 0, 0)),
        ("* * * * *", "UTC", utc(2026, 5, 1, 12, 0, 59, 999999), utc(2026, 5, 1, 12, 1)),
        ("*/7 * * * *", "UTC", utc(2026, 5, 1, 12, 56), utc(2026, 5, 1, 13, 0)),
        ("*/7 * * * *", "UTC", utc(2026, 5, 1, 12, 50), utc(2026, 5, 1, 12, 56)),
        ("0,15,45 * * * *", "UTC", utc(2026, 5, 1, 12, 16), utc(2026, 5, 1, 12, 45)),
        # Friday 1 May 2026 after the last slot of the day -> Monday 09:00
        ("0 9-17/2 * * 1-5", "UTC", utc(2026, 5, 1, 17, 0), utc(2026, 5, 4, 9, 0)),
        ("0 9-17/2 * * 1-5", "UTC", utc(2026, 5, 4, 9, 0), utc(2026, 5, 4, 11, 0)),
        ("0 8 * * MON-FRI", "UTC", utc(2026, 5, 2, 0, 0), utc(2026, 5, 4, 8, 0)),
        ("0 0 1 JAN *", "UTC", utc(2026, 5, 1), utc(2027, 1, 1)),
        ("0 12 29 2 *", "UTC", utc(2025, 3, 1), utc(2028, 2, 29, 12, 0)),
        ("0 0 L * *", "UTC", utc(2026, 2, 10), utc(2026, 2, 28)),
        ("0 0 L 2 *", "UTC", utc(2027, 3, 1), utc(2028, 2, 29)),
        ("0 0 * * 1#2", "UTC", utc(2026, 5, 1), utc(2026, 5, 11)),  # second Monday
        ("30 9 * * *", "Asia/Kolkata", utc(2026, 5, 1), utc(2026, 5, 1, 4, 0)),
        ("0 9 * * *", "America/New_York", utc(2026, 1, 15), utc(2026, 1, 15, 14, 0)),
        ("0 9 * * *", "America/New_York", utc(2026, 7, 15), utc(2026, 7, 15, 13, 0)),
        ("0 0 * * *", None, utc(2026, 7, 15), utc(2026, 7, 16)),
    ],
)
def test_next_fire(expr: str, tz: str | None, after: datetime, expected: datetime) -> None:
    result = next_fire(expr, zone(tz), after)
    assert result == expected
    assert result.tzinfo is UTC


def test_next_fire_accepts_a_parsed_cron_and_a_zone_name() -> None:
    after = datetime(2026, 5, 1, 12, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # 06:30 UTC
    assert next_fire(parse_cron("0 * * * *"), "Asia/Kolkata", after) == utc(2026, 5, 1, 7, 30)


def test_day_of_month_or_day_of_week() -> None:
    fires = chain("0 0 13 * 5", "UTC", utc(2026, 1, 31), utc(2026, 4, 30))
    days = [f.date() for f in fires]
    assert all(d.day == 13 or d.weekday() == 4 for d in days)
    assert date(2026, 2, 13) in days  # both: Friday the 13th, once
    assert date(2026, 4, 13) in days  # a Monday: the 13th alone
    assert date(2026, 4, 3) in days  # a Friday alone
    assert len(days) == len(set(days)) == 12 + 1  # Fridays + the 13th of April


# --- daylight-saving time ------------------------------------------------------------------

TRANSITIONS = [  # zone, spring-forward day, fall-back day
    pytest.param(BERLIN, date(2026, 3, 29), date(2026, 10, 25), id="Berlin"),
    pytest.param(NEW_YORK, date(2026, 3, 8), date(2026, 11, 1), id="New_York"),
]


def day_window(z: ZoneInfo, day: date, days: int = 0) -> tuple[datetime, datetime]:
    """From just before local midnight starting `day` - days to the end of `day` + days."""
    start = datetime.combine(day - timedelta(days=days), datetime.min.time(), z)
    end = datetime.combine(day + timedelta(days=days + 1), datetime.min.time(), z)
    return start.astimezone(UTC) - TICK, end.astimezone(UTC) - TICK


@pytest.mark.parametrize(("z", "spring", "fall"), TRANSITIONS)
def test_daily_wall_clock_fires_once_per_day_around_transitions(
    z: ZoneInfo, spring: date, fall: date
) -> None:
    for day in (spring, fall):
        fires = chain("30 2 * * *", z, *day_window(z, day, days=3))
        assert set(per_local_day(fires, z).values()) == {1}
        assert len(fires) == 7
    [gap] = chain("30 2 * * *", z, *day_window(z, spring))
    assert gap == datetime.combine(spring, datetime.min.time(), z).replace(hour=3)  # after gap


def test_spring_forward_fires_at_the_end_of_the_gap() -> None:
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 0)
    assert next_fire("30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12)) == utc(2026, 3, 8, 7, 0)
    # Every minute of the skipped hour collapses into one fire at 03:00 local.
    fires = chain("* 2 * * *", BERLIN, *day_window(BERLIN, date(2026, 3, 29), days=1))
    per_day = per_local_day(fires, BERLIN)
    assert per_day == {date(2026, 3, 28): 60, date(2026, 3, 29): 1, date(2026, 3, 30): 60}
    assert utc(2026, 3, 29, 1, 0) in fires


def test_fall_back_wall_clock_fires_at_the_first_occurrence() -> None:
    # Berlin repeats 02:00-02:59; New York repeats 01:00-01:59.
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 10, 24, 12)) == local(BERLIN, 10, 25, 2, 30)
    first = local(NEW_YORK, 11, 1, 1, 30)
    assert (
        next_fire("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12)) == first == utc(2026, 11, 1, 5, 30)
    )
    assert next_fire("30 1 * * *", NEW_YORK, first) == utc(2026, 11, 2, 6, 30)


def test_fall_back_wildcard_hour_fires_at_both_occurrences() -> None:
    first, second = local(NEW_YORK, 11, 1, 1, 30), local(NEW_YORK, 11, 1, 1, 30, fold=1)
    assert next_fire("30 * * * *", NEW_YORK, utc(2026, 11, 1, 5)) == first
    assert next_fire("30 * * * *", NEW_YORK, first) == second == utc(2026, 11, 1, 6, 30)
    assert next_fire("30 * * * *", NEW_YORK, second) == utc(2026, 11, 1, 7, 30)


@pytest.mark.parametrize(("z", "spring", "fall"), TRANSITIONS)
def test_every_30_minutes_counts_real_time(z: ZoneInfo, spring: date, fall: date) -> None:
    for day, expected in ((spring, 46), (fall, 50), (spring - timedelta(days=1), 48)):
        fires = chain("*/30 * * * *", z, *day_window(z, day))
        assert len(fires) == expected
        assert len(set(fires)) == expected
        assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize(("z", "spring", "fall"), TRANSITIONS)
@pytest.mark.parametrize("expr", ["30 2 * * *", "*/30 * * * *", "15 1-3 * * *", "* 1 * * *"])
def test_previous_fire_mirrors_next_fire(z: ZoneInfo, spring: date, fall: date, expr: str) -> None:
    for day in (spring, fall):
        window = day_window(z, day, days=1)
        assert chain_back(expr, z, *window) == chain(expr, z, *window)


@pytest.mark.parametrize(
    ("zone_name", "day"),
    [
        ("Europe/Berlin", date(2026, 3, 29)),
        ("Europe/Berlin", date(2026, 10, 25)),
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
        ("Australia/Lord_Howe", date(2026, 4, 5)),  # a 30-minute shift
        ("Australia/Lord_Howe", date(2026, 10, 4)),
    ],
)
@pytest.mark.parametrize(
    ("expr", "minutes", "hours"),
    [
        ("*/30 * * * *", {0, 30}, None),
        ("45 * * * *", {45}, None),
        ("30 2 * * *", {30}, {2}),
        ("0,40 1-2 * * *", {0, 40}, {1, 2}),
        ("*/20 2 * * *", {0, 20, 40}, {2}),
    ],
)
def test_matches_a_minute_by_minute_oracle(
    zone_name: str, day: date, expr: str, minutes: set[int], hours: set[int] | None
) -> None:
    """Walk real time minute by minute and apply the ISC cron DST rules by hand."""
    z = ZoneInfo(zone_name)
    start, end = day_window(z, day, days=1)

    def matches(wall: datetime) -> bool:
        return wall.minute in minutes and (hours is None or wall.hour in hours)

    expected: set[datetime] = set()
    instant = start.replace(second=0, microsecond=0) + MINUTE
    while instant <= end:
        wall, before = instant.astimezone(z), (instant - MINUTE).astimezone(z)
        if matches(wall) and (hours is None or wall.fold == 0):
            expected.add(instant)
        skipped = wall.replace(tzinfo=None) - before.replace(tzinfo=None) - MINUTE
        if hours is not None and skipped > timedelta(0):  # the clock jumped: a gap
            gap = [before.replace(tzinfo=None) + MINUTE * (i + 1) for i in range(skipped // MINUTE)]
            if any(matches(w) for w in gap):
                expected.add(instant)
        instant += MINUTE
    assert chain(expr, z, start, end) == sorted(expected)
    assert chain_back(expr, z, start, end) == sorted(expected)


@pytest.mark.parametrize(
    ("z", "transition"),
    [
        (BERLIN, utc(2026, 3, 29, 1)),
        (BERLIN, utc(2026, 10, 25, 1)),
        (NEW_YORK, utc(2026, 3, 8, 7)),
        (NEW_YORK, utc(2026, 11, 1, 6)),
    ],
)
@pytest.mark.parametrize("expr", ["*/30 * * * *", "30 2 * * *", "15 1-3 * * *"])
def test_every_starting_point_near_a_transition(
    z: ZoneInfo, transition: datetime, expr: str
) -> None:
    """From any instant, next/previous_fire agree with the chained list of fires."""
    fires = chain(expr, z, transition - timedelta(days=2), transition + timedelta(days=2))
    at = transition - timedelta(hours=4)
    while at < transition + timedelta(hours=4):
        for point in (at, at + timedelta(seconds=30)):
            later = [f for f in fires if f > point]
            earlier = [f for f in fires if f <= point]
            assert next_fire(expr, z, point) == later[0]
            assert previous_fire(expr, z, point) == earlier[-1]
        at += 5 * MINUTE


# --- previous_fire -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "at", "expected"),
    [
        ("@hourly", "UTC", utc(2026, 5, 1, 12, 0), utc(2026, 5, 1, 12, 0)),  # at is included
        ("@hourly", "UTC", utc(2026, 5, 1, 12, 59, 59), utc(2026, 5, 1, 12, 0)),
        ("@hourly", "UTC", utc(2026, 5, 1, 11, 59, 59, 999999), utc(2026, 5, 1, 11, 0)),
        ("*/7 * * * *", "UTC", utc(2026, 5, 1, 13, 6), utc(2026, 5, 1, 13, 0)),
        ("*/7 * * * *", "UTC", utc(2026, 5, 1, 12, 59), utc(2026, 5, 1, 12, 56)),
        ("0 12 29 2 *", "UTC", utc(2028, 2, 29, 11, 59), utc(2024, 2, 29, 12, 0)),
        ("0 9-17/2 * * 1-5", "UTC", utc(2026, 5, 4, 8, 0), utc(2026, 5, 1, 17, 0)),
        ("30 9 * * *", "Asia/Kolkata", utc(2026, 5, 1, 3, 59), utc(2026, 4, 30, 4, 0)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 0)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 59), utc(2026, 3, 28, 1, 30)),
        ("30 1 * * *", "America/New_York", utc(2026, 11, 1, 7), utc(2026, 11, 1, 5, 30)),
        ("30 * * * *", "America/New_York", utc(2026, 11, 1, 7), utc(2026, 11, 1, 6, 30)),
    ],
)
def test_previous_fire(expr: str, tz: str, at: datetime, expected: datetime) -> None:
    result = previous_fire(expr, tz, at)
    assert result == expected
    assert result is not None and result.tzinfo is UTC


# --- due_fires -----------------------------------------------------------------------------


def test_due_fires_ten_missed_periods() -> None:
    fires, dropped = due_fires(
        "@hourly", "UTC", utc(2026, 5, 1, 0, 30), utc(2026, 5, 1, 10, 30), limit=100
    )
    assert fires == [utc(2026, 5, 1, h) for h in range(1, 11)]
    assert not dropped


def test_due_fires_includes_both_ends() -> None:
    fires, dropped = due_fires("@hourly", "UTC", utc(2026, 5, 1, 1), utc(2026, 5, 1, 10), limit=10)
    assert fires == [utc(2026, 5, 1, h) for h in range(1, 11)]
    assert not dropped  # exactly the limit: nothing older was dropped


def test_due_fires_keeps_the_latest_and_reports_the_drop() -> None:
    since, now = utc(2026, 5, 1, 0, 30), utc(2026, 5, 1, 10, 30)
    assert due_fires("@hourly", "UTC", since, now, limit=3) == (
        [utc(2026, 5, 1, 8), utc(2026, 5, 1, 9), utc(2026, 5, 1, 10)],
        True,
    )
    assert due_fires("@hourly", "UTC", since, now, limit=0) == ([], True)
    assert due_fires("@hourly", "UTC", now, since, limit=5) == ([], False)
    assert due_fires("@hourly", "UTC", utc(2026, 5, 1, 0, 1), utc(2026, 5, 1, 0, 59), limit=5) == (
        [],
        False,
    )


def croniter_steps(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """From now on, count what shared.cron asks of croniter: iterators made and steps taken
    (`next`, `prev`). A step is the unit of work of a fire-time lookup; counting them instead of
    timing them gives the same verdict on every machine."""
    steps: Counter[str] = Counter()

    def counted(*args: Any, **kwargs: Any) -> Any:
        it = croniter(*args, **kwargs)
        steps["iterators"] += 1
        get_next, get_prev = it.get_next, it.get_prev

        def next_step(*a: Any, **kw: Any) -> Any:
            steps["next"] += 1
            return get_next(*a, **kw)

        def prev_step(*a: Any, **kw: Any) -> Any:
            steps["prev"] += 1
            return get_prev(*a, **kw)

        it.get_next, it.get_prev = next_step, prev_step
        return it

    monkeypatch.setattr(shared.cron, "croniter", counted)
    return steps


def test_due_fires_after_a_year_long_outage_costs_no_more_than_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parse_cron("* * * * *")  # parsed (and cached) before counting: a cached parse costs no step
    now = utc(2026, 5, 1, 12, 0, 30)
    steps = croniter_steps(monkeypatch)
    fires, dropped = due_fires(
        "* * * * *", "Europe/Berlin", now - timedelta(days=365), now, limit=100
    )
    assert dropped
    assert fires == [utc(2026, 5, 1, 12) - MINUTE * i for i in range(99, -1, -1)]
    # one croniter step per fire kept, and one to find the limit reached: nothing for the other
    # 525,000 missed minutes
    assert steps == Counter(iterators=101, prev=101)
    year = steps.copy()
    steps.clear()
    assert due_fires("* * * * *", "Europe/Berlin", now - timedelta(hours=2), now,
                     limit=100) == (fires, True)
    assert steps == year  # exactly the work of a two-hour outage


def test_due_fires_across_fall_back() -> None:
    start, end = day_window(NEW_YORK, date(2026, 11, 1))
    fires, dropped = due_fires("*/30 * * * *", NEW_YORK, start, end, limit=1000)
    assert len(fires) == 50 and not dropped
    assert fires == chain("*/30 * * * *", NEW_YORK, start, end)


def test_next_fire_is_one_croniter_step_in_steady_state(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_cron("* * * * *")  # parsed (and cached) before counting: a cached parse costs no step
    after = utc(2026, 5, 1)
    steps = croniter_steps(monkeypatch)
    for _ in range(1000):
        after = next_fire("* * * * *", "UTC", after)
    assert after == utc(2026, 5, 1) + 1000 * MINUTE
    assert steps == Counter(iterators=1000, next=1000)  # one croniter step a call, no more


# --- time zones and inputs -----------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "UTC"])
def test_zone_defaults_to_utc(name: str | None) -> None:
    assert zone(name) == ZoneInfo("UTC")


def test_zone_by_name() -> None:
    assert zone("Asia/Kolkata").utcoffset(datetime(2026, 1, 1)) == timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Europe/Pariss", "unknown time zone 'Europe/Pariss' (did you mean Europe/Paris?)"),
        ("europe/paris", "did you mean Europe/Paris?"),
        ("America/NewYork", "did you mean America/New_York?"),
        ("Nowhere/Atlantis", "unknown time zone 'Nowhere/Atlantis'"),
        ("America", "unknown time zone"),  # a directory of the database
        ("../etc/passwd", "invalid time zone name"),
        ("/etc/passwd", "invalid time zone name"),
        ("Europe/../../etc/passwd", "invalid time zone name"),
        ("Europe/Paris\x00", "invalid time zone name"),
        ("A" * 65, "invalid time zone name"),
    ],
)
def test_zone_refuses(name: str, message: str) -> None:
    with pytest.raises(CronError) as info:
        zone(name)
    assert message in str(info.value)


def test_next_fire_refuses_a_bad_zone_name() -> None:
    with pytest.raises(CronError, match="did you mean Europe/Paris"):
        next_fire("@daily", "Europe/Pariss", utc(2026, 5, 1))


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 5, 1, 12)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire("@hourly", "UTC", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        previous_fire("@hourly", "UTC", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        due_fires("@hourly", "UTC", naive, utc(2026, 5, 1), limit=5)
