"""Cron schedules: parsing, next/previous fire times and catch-up (pure, no I/O).

An expression is the classic 5 fields (minute hour day-of-month month day-of-week, or a
macro such as @daily), evaluated by croniter on the local wall clock of a time zone. Every
instant going in must be timezone-aware; every instant coming out is in UTC.

Daylight-saving time follows ISC/Vixie cron:

* An expression with a specific hour ("30 2 * * *", ``Cron.wall_clock``) names a wall-clock
  time. When the clock skips it (spring forward) the job fires once at the first instant
  after the gap, and several skipped times collapse into that one instant. When the clock
  shows it twice (fall back) the job fires once, at the first occurrence.
* An expression whose hour field starts with "*" ("*/15 * * * *", "@hourly") runs in real
  time: skipped wall times are simply skipped and repeated wall times fire at both
  occurrences.

Near a transition a few hours of wall times are examined so that chained results are
strictly increasing; elsewhere a call costs one croniter step.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, croniter

MAX_LENGTH = 200
HORIZON_YEARS = 50  # longest gap searched between two fire times (Feb 29 on a Monday: 40)
_NEAR = timedelta(hours=3)  # more than any UTC offset change of a DST transition
_ZERO = timedelta(0)
_TICK = timedelta(microseconds=1)
_USAGE = "use 5 fields: minute hour day-of-month month day-of-week"
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = (  # name, lowest, highest, what one value may be
    ("minute", 0, 59, "0-59"),
    ("hour", 0, 23, "0-23"),
    ("day-of-month", 1, 31, "1-31, L (last day) or nW (weekday nearest day n)"),
    ("month", 1, 12, "1-12 or JAN-DEC"),
    ("day-of-week", 0, 7, "0-7 (0 and 7 are Sunday), SUN-SAT, Ln (last) or n#k (k-th)"),
)
_HASHED = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.ASCII)
_NUMBER = re.compile(r"[0-9]+")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", re.ASCII)


class CronError(ValueError):
    """An unusable cron expression or time zone; ``str(e)`` is meant for the end user."""


@dataclass(frozen=True, slots=True)
class Cron:
    expr: str  # normalized 5-field expression (macros expanded)
    source: str  # what the user wrote, stripped
    wall_clock: bool  # the hour field is not a wildcard: DST rules for wall-clock times


def parse_cron(expr: str) -> Cron:
    return _parse(expr.strip())


@functools.lru_cache(maxsize=512)
def _parse(source: str) -> Cron:
    if not source:
        raise CronError(f"the cron expression is empty: {_USAGE}")
    if len(source) > MAX_LENGTH:
        raise CronError(f"the cron expression is too long ({len(source)} > {MAX_LENGTH} chars)")
    if source.startswith("@"):
        macro = source.lower()
        if macro == "@reboot":
            raise CronError("@reboot is not supported: a schedule needs fire times")
        if macro not in _MACROS:
            raise CronError(f"unknown macro '{source}' (known: {', '.join(_MACROS)})")
        fields = _MACROS[macro].split()
    else:
        fields = source.split()
    if len(fields) != 5:
        seconds = " (seconds are not supported)" if len(fields) in (6, 7) else ""
        raise CronError(f"'{source}' has {len(fields)} field(s); {_USAGE}{seconds}")
    for index, text in enumerate(fields):
        _check_field(index, text)
    expr = " ".join(fields)
    try:
        it = croniter(expr, datetime(2000, 1, 1), max_years_between_matches=HORIZON_YEARS)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise _explain(fields, source, exc) from None
    try:
        it.get_next()
    except CroniterBadDateError:
        if fields[2] != "*" and fields[3] != "*" and fields[4] in ("*", "?"):
            why = f"day-of-month '{fields[2]}' never occurs in month '{fields[3]}'"
        else:
            why = f"no calendar date matches '{source}'"
        raise CronError(f"never fires: {why}") from None
    return Cron(expr, source, wall_clock=not fields[1].startswith("*"))


def _check_field(index: int, text: str) -> None:
    """Refuse what croniter would explain badly: out-of-range numbers, bad steps, H and R."""
    name, lowest, highest, _ = _FIELDS[index]
    if _HASHED.fullmatch(text.lower()):
        raise CronError(f"{name} field '{text}': H and R (hashed, random) are not supported")
    for item in text.split(","):
        value, slash, step = item.partition("/")
        if slash and not (step.isascii() and step.isdigit() and int(step) > 0):
            raise CronError(f"{name} field '{text}': the step after '/' must be 1 or more")
        for number in _NUMBER.findall(value.partition("#")[0]):
            if not lowest <= int(number) <= highest:
                where = f"'{text}'" if number == text else f"'{text}': {number}"
                raise CronError(f"{name} field {where} is out of range {lowest}-{highest}")


def _explain(fields: list[str], source: str, exc: Exception) -> CronError:
    """Name the first field croniter refuses on its own, else pass its message on."""
    for index, (name, _, _, values) in enumerate(_FIELDS):
        alone = " ".join(fields[index] if i == index else "*" for i in range(5))
        try:
            croniter.expand(alone)
        except (ValueError, TypeError, KeyError, IndexError):
            return CronError(
                f"{name} field '{fields[index]}' is not valid: use {values}, "
                "'*', ranges a-b, lists a,b and steps /n"
            )
    return CronError(f"invalid cron expression '{source}': {exc}")


def zone(name: str | None) -> ZoneInfo:
    """The IANA time zone ``name``; None or "" means UTC."""
    key = (name or "").strip() or "UTC"
    if len(key) > 64 or not _ZONE_NAME.fullmatch(key):
        raise CronError(f"invalid time zone name {name!r}: use an IANA name like Europe/Paris")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    names = _zone_names()
    guess = names.get(key.lower()) or next(
        (names[m] for m in difflib.get_close_matches(key.lower(), list(names), n=1)), None
    )
    hint = f"did you mean {guess}?" if guess else "use an IANA name like Europe/Paris"
    raise CronError(f"unknown time zone '{key}' ({hint})")


@functools.cache
def _zone_names() -> dict[str, str]:
    return {n.lower(): n for n in available_timezones()}


def next_fire(cron: Cron | str, tz: ZoneInfo | str, after: datetime) -> datetime:
    """The earliest fire instant strictly after ``after``, in UTC."""
    c, z, a = _cron(cron), _tz(tz), _utc(after, "after")
    found = _next(c, z, a)
    if found is None:
        raise CronError(f"'{c.source}' does not fire after {a.isoformat()}")
    return found


def previous_fire(cron: Cron | str, tz: ZoneInfo | str, at: datetime) -> datetime | None:
    """The latest fire instant at or before ``at``, in UTC; None if none within the horizon."""
    return _previous(_cron(cron), _tz(tz), _utc(at, "at"))


def due_fires(
    cron: Cron | str, tz: ZoneInfo | str, since: datetime, now: datetime, *, limit: int
) -> tuple[list[datetime], bool]:
    """Fire instants in [since, now], ascending: the latest ``limit`` of them, and whether
    older ones were dropped because of the limit."""
    c, z, lo, at = _cron(cron), _tz(tz), _utc(since, "since"), _utc(now, "now")
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    fires: list[datetime] = []
    while (fire := _previous(c, z, at)) is not None and fire >= lo:
        if len(fires) == limit:
            return fires[::-1], True
        fires.append(fire)
        at = fire - _TICK
    return fires[::-1], False


def _cron(cron: Cron | str) -> Cron:
    return cron if isinstance(cron, Cron) else parse_cron(cron)


def _tz(tz: ZoneInfo | str) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else zone(tz)


def _utc(value: datetime, what: str) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {value.isoformat()}")
    return value.astimezone(UTC)


def _offset(z: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(z).utcoffset() or _ZERO


def _local(z: ZoneInfo, instant: datetime) -> datetime:
    return instant.astimezone(z).replace(tzinfo=None)


def _near(z: ZoneInfo, instant: datetime) -> bool:
    return _offset(z, instant - _NEAR) != _offset(z, instant + _NEAR)


def _walls(c: Cron, start: datetime, *, backwards: bool) -> Iterator[datetime]:
    """Naive wall times matching ``c`` strictly after (before) the naive ``start``."""
    it = croniter(c.expr, start, max_years_between_matches=HORIZON_YEARS)
    step = it.get_prev if backwards else it.get_next
    while True:
        try:
            wall: datetime = step(datetime)
        except (ValueError, OverflowError):  # nothing within the horizon, or year 1 / 9999
            return
        yield wall


def _instants(c: Cron, z: ZoneInfo, wall: datetime) -> list[datetime]:
    """The UTC instants at which the wall time ``wall`` fires, by the DST rules above."""
    first = wall.replace(tzinfo=z).astimezone(UTC)
    second = wall.replace(tzinfo=z, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # the clock shows this time twice
        return [first] if c.wall_clock else [first, second]
    # the clock skips this time: second (old offset) < transition <= first (new offset)
    return [_transition(z, second, first)] if c.wall_clock else []


def _transition(z: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] whose UTC offset differs from the one at before."""
    old = _offset(z, before)
    lo, hi = math.floor(before.timestamp()), math.ceil(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(z, datetime.fromtimestamp(mid, UTC)) == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _next(c: Cron, z: ZoneInfo, after: datetime) -> datetime | None:
    # Walls before local(after) map to later instants when the clock goes back soon.
    back = max(_ZERO, _offset(z, after) - _offset(z, after + _NEAR))
    best: datetime | None = None
    stop: datetime | None = None  # walls beyond this cannot map to anything before best
    for wall in _walls(c, _local(z, after) - back, backwards=False):
        if stop is not None and wall > stop:
            break
        for instant in _instants(c, z, wall):
            if instant > after and (best is None or instant < best):
                best = instant
                stop = _local(z, best) + max(_ZERO, _offset(z, best - _NEAR) - _offset(z, best))
        if best is not None and not _near(z, best):
            break  # steady state: wall order is instant order around best
    return best


def _previous(c: Cron, z: ZoneInfo, at: datetime) -> datetime | None:
    # Walls after local(at) map to earlier instants when the clock went back recently.
    ahead = max(_ZERO, _offset(z, at - _NEAR) - _offset(z, at))
    top = (_local(z, at) + ahead).replace(second=0, microsecond=0) + timedelta(minutes=1)
    best: datetime | None = None
    stop: datetime | None = None  # walls before this cannot map to anything after best
    for wall in _walls(c, top, backwards=True):
        if stop is not None and wall < stop:
            break
        for instant in _instants(c, z, wall):
            if instant <= at and (best is None or instant > best):
                best = instant
                stop = _local(z, best) - max(_ZERO, _offset(z, best) - _offset(z, best + _NEAR))
        if best is not None and not _near(z, best):
            break
    return best
