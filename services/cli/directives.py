"""`#SCNS` / `#SBATCH` directives in a job script, and Slurm's time formats. Pure (the current
time is an argument).

Like sbatch, directives are read from the comment block at the top of the script (after the
shebang) and stop at the first line that is neither blank nor a comment. Command-line options
win over directives. `#SCNS` accepts the same options as `#SBATCH`.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    begin_at: datetime | None = None
    priority: int | None = None
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


BEGIN_FORMS = ("now, now+N[s|m|h|d] (e.g. now+90, now+30minutes, now+1hour), HH:MM[:SS], "
               "today, tomorrow, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (local time unless it "
               "ends in Z or +HH:MM)")
WINDOW_FORMS = BEGIN_FORMS.replace("now+N[s|m|h|d] (e.g. now+90, now+30minutes, now+1hour)",
                                   "now-N[s|m|h|d] (e.g. now-2hours, now-7d)")
_NOW = re.compile(r"^now(?:([+-])(\d{1,9})([a-z]*))?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
          "w": 604800, "week": 604800, "weeks": 604800}
_NAMED = {"midnight": "00:00", "noon": "12:00"}


def local_zone() -> tzinfo:
    """This machine's time zone, with its daylight-saving rules when they can be found ($TZ or
    /etc/localtime); else its current UTC offset."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        pass
    return datetime.now().astimezone().tzinfo or UTC


def parse_begin(text: str, now: datetime) -> datetime:
    """sbatch --begin -> an aware time (UTC). `now` is the current time in the user's zone
    (naive: this machine's local time); times without an offset are read in that zone.

    Accepted: now, now+N[unit] (seconds by default; s/m/h/d/w or sec/min/hour/day/week, e.g.
    now+1hour), HH:MM[:SS] (today, or tomorrow if that time has passed), midnight, noon, today,
    tomorrow, an ISO 8601 date or date and time (2026-11-24, 2026-11-24T02:30[:00][Z|+01:00])."""
    return _parse_when(text, now, future=True, what="begin time", forms=BEGIN_FORMS)


def parse_window(text: str, now: datetime) -> datetime:
    """A start or end of a history window (sacct -S/-E): as parse_begin, but it may look back
    (now-N[unit]), and HH:MM[:SS] is today even when it has passed."""
    return _parse_when(text, now, future=False, what="time", forms=WINDOW_FORMS)


def to_utc_iso(at: datetime) -> str:
    """An aware time as the API takes it: ISO 8601 in UTC with `Z`, to the second."""
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_when(text: str, now: datetime, *, future: bool, what: str, forms: str) -> datetime:
    if now.tzinfo is None:
        now = now.astimezone()
    zone = now.tzinfo
    t = text.strip().lower()
    t = _NAMED.get(t, t)
    bad = DirectiveError(f"bad {what} {text!r}; use {forms}")
    try:
        if m := _NOW.match(t):
            sign, n, unit = m.groups()
            if sign is None:
                return now.astimezone(UTC)
            if unit not in _UNITS or (future and sign == "-"):
                raise bad
            delta = timedelta(seconds=int(n) * _UNITS[unit])
            return now.astimezone(UTC) + (delta if sign == "+" else -delta)
        if t in ("today", "tomorrow"):
            day = now.date() + timedelta(days=1 if t == "tomorrow" else 0)
            return _at(day, time(), zone)
        if m := _CLOCK.match(t):
            h, mi, sec = int(m[1]), int(m[2]), int(m[3] or 0)
            if h > 23 or mi > 59 or sec > 59:
                raise bad
            at = _at(now.date(), time(h, mi, sec), zone)
            if future and at < now:
                at = _at(now.date() + timedelta(days=1), time(h, mi, sec), zone)
            return at
        if not t[:4].isdigit() or len(t) < 10:
            raise bad
        at = datetime.fromisoformat(t.upper())
    except (ValueError, OverflowError) as e:
        if isinstance(e, DirectiveError):
            raise
        raise bad from e
    return (at if at.tzinfo else at.replace(tzinfo=zone)).astimezone(UTC)


def _at(day: date, clock: time, zone: tzinfo | None) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def _positive(value: str, what: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise DirectiveError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


_OPTIONS = {  # option -> (attribute, takes a value)
    "-c": "cpus", "--cpus-per-task": "cpus", "-n": "ntasks", "--ntasks": "ntasks",
    "-t": "time", "--time": "time", "--mem": "mem", "-J": "name", "--job-name": "name",
    "-p": "partition", "--partition": "partition", "--export": "export",
    "-b": "begin", "--begin": "begin", "--priority": "priority",
}
_FLAGS = {"--requeue": ("requeue", True), "--no-requeue": ("requeue", False),
          "-H": ("hold", True), "--hold": ("hold", True)}


def _apply(d: Directives, opt: str, value: str, now: datetime | None) -> None:
    kind = _OPTIONS[opt]
    if kind in ("cpus", "ntasks"):
        setattr(d, kind, _positive(value, opt))
    elif kind in ("name", "partition"):
        setattr(d, kind, value)
    elif kind == "time":
        d.time_limit = parse_time(value)
    elif kind == "mem":
        d.memory_mb = parse_memory(value)
    elif kind == "begin":
        d.begin_at = parse_begin(value, now or datetime.now(local_zone()))
    elif kind == "priority":
        if not re.fullmatch(r"[+-]?\d{1,10}", value):
            raise DirectiveError(f"{opt} must be an integer, got {value!r}")
        d.priority = int(value)
    elif kind == "export":
        for item in value.split(","):
            k, sep, v = item.partition("=")
            if sep:
                d.env[k] = v
            elif k.upper() not in ("ALL", "NONE", ""):
                d.warnings.append(f"--export={k}: only NAME=value items are supported")


def parse_directives(script: str, now: datetime | None = None) -> Directives:
    """The directives of a script; `now` (default: the current local time) anchors relative
    begin times such as `--begin=now+1hour`."""
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
        _parse_words(d, words, lineno, now)
    return d


def _parse_words(d: Directives, words: list[str], lineno: int, now: datetime | None) -> None:
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
                _apply(d, opt, value, now)
            except DirectiveError as e:
                raise DirectiveError(f"line {lineno}: {e}") from e
        else:
            d.warnings.append(f"line {lineno}: {word} is not supported and was ignored")
        i += 1
