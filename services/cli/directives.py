"""`#SCNS` / `#SBATCH` directives in a job script, and Slurm's time and size formats. Pure (the
current time is an argument).

What sbatch does, and so what this does (sbatch(1), DESCRIPTION; src/sbatch/opt.c):
- directives are the lines that *begin* with `#SBATCH` (or `#SCNS`, which takes the same
  options) followed by options exactly as on the command line. An indented `  #SBATCH` or a
  `# SBATCH` is an ordinary comment, not a directive.
- "Once the first non-comment, non-whitespace line has been reached in the script, no more
  #SBATCH directives will be processed": reading stops at the first command. The shebang and
  blank lines are comments or whitespace, so they do not stop it.
- a directive's words are split like a shell's (quotes group, a backslash escapes) and an
  unquoted `#` starts a comment that runs to the end of the line.
- an option sbatch does not recognise, or a stray word, is an error, as in sbatch; so is an
  option this cluster cannot honour (GPUs, several nodes). Administrative
  options with no meaning here (account, QOS, mail) are accepted with one warning each.
- for an option given twice the last one wins. Command-line options win over directives.
- `-p/--partition` takes a comma-separated list of partition names (any of them may run the
  job); only its syntax is checked here: which partitions exist, and whether they admit the job,
  is the gateway's to say at submit.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.arrays import SpecError, parse_array
from shared.dependencies import parse_dependency

UNLIMITED = ("UNLIMITED", "INFINITE", "-1")
TIME_FORMS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
MEMORY_FORMS = ("megabytes, or a size with a K, M, G or T suffix, optionally followed by B "
                "(e.g. 512, 512M, 4G, 4GB)")
PARTITION = "default"  # the partition a job goes to when it names none (the gateway's default)
PARTITION_FORMS = ("partition names (1 to 64 letters, digits, '.', '_' or '-'), comma-separated "
                   "(e.g. big or big,small)")
NICE_DEFAULT = 100  # sbatch: "With no adjustment value the scheduling priority is decreased by 100"
NICE_MAX = 2**31 - 3  # sbatch: |adjustment| <= NICE_OFFSET - 3

_DIRECTIVE = re.compile(r"^#(SBATCH|SCNS)(?:\s+(.*))?$")  # at the very start of the line
_INDENTED = re.compile(r"^\s+#(?:SBATCH|SCNS)(?:\s|$)")
_TIME = re.compile(r"^(?:([0-9]{1,9})-)?([0-9]{1,9})(?::([0-9]{1,9}))?(?::([0-9]{1,9}))?$")
_MEM = re.compile(r"^([0-9]{1,15})(?:([KMGT])B?)?$", re.IGNORECASE)
_COUNT = re.compile(r"^[0-9]{1,9}$")
_INT = re.compile(r"^[+-]?[0-9]{1,10}$")
_NODES = re.compile(r"^([0-9]{1,9})(?:-([0-9]{1,9}))?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class DirectiveError(ValueError):
    pass


class _Bad(Exception):
    """Internal: a malformed value; the message says what is expected (the caller adds the option
    and the line)."""


@dataclass(slots=True)
class Directives:
    cpus: int | None = None  # -c/--cpus-per-task
    ntasks: int | None = None  # -n/--ntasks (or --ntasks-per-node: jobs run on one node)
    time_limit: int | None = None  # -t/--time, seconds; None: not given or unlimited
    memory_mb: int | None = None  # --mem, or --mem-per-cpu x total_cpus
    name: str | None = None  # -J/--job-name
    requeue: bool | None = None  # --requeue / --no-requeue
    hold: bool | None = None  # -H/--hold
    partition: str | None = None  # -p/--partition: names, comma-separated (any of them)
    begin_at: datetime | None = None  # -b/--begin, aware (UTC)
    priority: int | None = None  # --priority
    env: dict[str, str] = field(default_factory=dict)  # --export NAME=value items
    warnings: list[str] = field(default_factory=list)
    array: str | None = None  # -a/--array, the raw spec (valid for shared.arrays.parse_array)
    dependency: str | None = None  # -d/--dependency, raw (valid for parse_dependency)
    output: str | None = None  # -o/--output path pattern (%j, %A, %a, ...), raw
    error: str | None = None  # -e/--error path pattern, raw
    chdir: str | None = None  # -D/--chdir
    nice: int | None = None  # --nice[=adjustment]; --nice alone is 100
    # --export NAMEs (no `=`): the CLI copies their values from the submitting environment
    export_names: list[str] = field(default_factory=list)
    export_mode: str | None = None  # "ALL" or "NONE" when --export says so
    mem_per_cpu_mb: int | None = None  # --mem-per-cpu (memory_mb already multiplied out)

    @property
    def total_cpus(self) -> int | None:
        if self.cpus is None and self.ntasks is None:
            return None
        return (self.cpus or 1) * (self.ntasks or 1)

    def memory_for(self, cpus: int) -> int | None:
        """The job's memory (MB) when it gets `cpus` CPUs (e.g. after a command-line -c):
        --mem-per-cpu times the CPUs, else --mem."""
        if self.mem_per_cpu_mb is not None:
            return self.mem_per_cpu_mb * cpus
        return self.memory_mb


def parse_time(text: str) -> int | None:
    """Slurm time limit -> seconds; None means no limit.

    As sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    "days-hours:minutes", "days-hours:minutes:seconds"; 0 (and UNLIMITED, INFINITE, -1) means
    no limit. Seconds are kept (sbatch rounds them up to a minute)."""
    try:
        return _time(text)
    except _Bad as e:
        raise DirectiveError(f"--time={text}: {e}") from None


def _time(text: str) -> int | None:
    t = text.strip()
    if t.upper() in UNLIMITED:
        return None
    m = _TIME.match(t)
    if not m:
        raise _Bad(f"expected {TIME_FORMS}")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif b is None:  # minutes
        h, mi, s = 0, int(a), 0
    elif c is None:  # MM:SS
        h, mi, s = 0, int(a), int(b)
    else:  # HH:MM:SS
        h, mi, s = int(a), int(b), int(c)
    seconds = int(days or 0) * 86400 + h * 3600 + mi * 60 + s
    return seconds or None  # "A time limit of zero requests that no time limit be imposed"


def parse_partitions(text: str) -> str:
    """sbatch --partition: one partition name or several, comma-separated ("a,b": any of them)
    -> the list as the API takes it (items stripped, each once, in order). Only the syntax is
    checked; the gateway says whether the partitions exist and admit the job."""
    try:
        return _partitions(text)
    except _Bad as e:
        raise DirectiveError(f"--partition={text}: {e}") from None


def _partitions(text: str) -> str:
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not name:
            raise _Bad(f"an empty partition name; expected {PARTITION_FORMS}")
        if not _PARTITION.match(name):
            raise _Bad(f"{name!r} is not a partition name; expected {PARTITION_FORMS}")
    return ",".join(dict.fromkeys(names))


def parse_memory(text: str) -> int:
    """sbatch --mem: a number with an optional K/M/G/T suffix, itself optionally followed by B
    (default unit M) -> MB; kilobytes round up to whole megabytes, as sbatch does."""
    try:
        return _memory(text)
    except _Bad as e:
        raise DirectiveError(f"--mem={text}: {e}") from None


def _memory(text: str) -> int:
    m = _MEM.match(text.strip())
    if not m:
        raise _Bad(f"expected {MEMORY_FORMS}")
    n, unit = int(m[1]), (m[2] or "M").upper()
    mb = {"K": -(-n // 1024), "M": n, "G": n * 1024, "T": n * 1024 * 1024}[unit]
    if mb < 1:
        raise _Bad("0 asks for all of a node's memory, which cannot be honoured here; give a "
                   "size such as 4G")
    return mb


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


# --- the options -----------------------------------------------------------------------------

_NO_VALUE, _VALUE, _OPTIONAL_VALUE = 0, 1, 2


@dataclass(slots=True)
class _Ctx:
    d: Directives
    now: datetime | None
    lineno: int = 0
    mem_line: int | None = None
    per_cpu_line: int | None = None
    tasks_per_node: int | None = None


_Handler = Callable[[_Ctx, str, str | None], None]


def _shown(opt: str, value: str | None) -> str:
    """An option as the user wrote it, for messages: `--time=banana`, `-t banana`."""
    if value is None:
        return opt
    return f"{opt}={shlex.quote(value)}" if opt.startswith("--") else f"{opt} {shlex.quote(value)}"


def _text(value: str | None) -> str:
    if not value:
        raise _Bad("expected a value")
    return value


def _count(value: str | None) -> int:
    if value is None or not _COUNT.match(value) or int(value) < 1:
        raise _Bad("expected a positive integer")
    return int(value)


def _set_cpus(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.cpus = _count(value)


def _set_ntasks(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.ntasks = _count(value)


def _set_tasks_per_node(c: _Ctx, opt: str, value: str | None) -> None:
    # "If used with the --ntasks option, the --ntasks option will take precedence"; on one node
    # it is the number of tasks.
    c.tasks_per_node = _count(value)


def _set_time(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.time_limit = _time(_text(value))


def _set_mem(c: _Ctx, opt: str, value: str | None) -> None:
    # "The --mem, --mem-per-cpu and --mem-per-gpu options are mutually exclusive."
    if c.per_cpu_line is not None:
        raise DirectiveError(f"{opt} and --mem-per-cpu (line {c.per_cpu_line}) are mutually "
                             "exclusive; give one of them")
    c.d.memory_mb = _memory(_text(value))
    c.mem_line = c.lineno


def _set_mem_per_cpu(c: _Ctx, opt: str, value: str | None) -> None:
    if c.mem_line is not None:
        raise DirectiveError(f"{opt} and --mem (line {c.mem_line}) are mutually exclusive; "
                             "give one of them")
    c.d.mem_per_cpu_mb = _memory(_text(value))
    c.per_cpu_line = c.lineno


def _set_name(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.name = _text(value)


def _set_partition(c: _Ctx, opt: str, value: str | None) -> None:
    # "-p, --partition=<partition_names>": "may be specified as a comma separated list of
    # partitions"; the gateway knows which exist, so only the syntax is checked here
    c.d.partition = _partitions(_text(value))


def _set_begin(c: _Ctx, opt: str, value: str | None) -> None:
    text = _text(value)
    try:
        c.d.begin_at = parse_begin(text, c.now or datetime.now(local_zone()))
    except DirectiveError:
        raise DirectiveError(f"bad begin time {text!r} for {opt}; use {BEGIN_FORMS}") from None


def _set_priority(c: _Ctx, opt: str, value: str | None) -> None:
    if value is None or not _INT.match(value):
        raise DirectiveError(f"{opt} must be an integer, got {value!r}")
    c.d.priority = int(value)


def _set_nice(c: _Ctx, opt: str, value: str | None) -> None:
    if value is None:
        c.d.nice = NICE_DEFAULT
        return
    if not _INT.match(value) or abs(int(value)) > NICE_MAX:
        raise _Bad(f"expected an integer adjustment from -{NICE_MAX} to {NICE_MAX} (--nice "
                   f"alone is {NICE_DEFAULT})")
    c.d.nice = int(value)


def _set_array(c: _Ctx, opt: str, value: str | None) -> None:
    text = _text(value).strip()
    try:
        parse_array(text)
    except SpecError as e:
        raise _Bad(str(e)) from None
    c.d.array = text


def _set_dependency(c: _Ctx, opt: str, value: str | None) -> None:
    text = _text(value).strip()
    try:
        parse_dependency(text)
    except SpecError as e:
        raise _Bad(str(e)) from None
    c.d.dependency = text


def _set_output(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.output = _text(value)


def _set_error(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.error = _text(value)


def _set_chdir(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.chdir = _text(value)


_EXPORT_FORMS = "expected ALL, NONE, NAME or NAME=value, comma separated (e.g. ALL,FOO=bar)"


def _set_export(c: _Ctx, opt: str, value: str | None) -> None:
    # "--export={[ALL,]<environment_variables>|ALL|NONE}": a NAME propagates the submitting
    # environment's value, NAME=value sets one. The last --export wins, as any option.
    mode: str | None = None
    env: dict[str, str] = {}
    names: list[str] = []
    for item in _text(value).split(","):
        key, eq, val = item.partition("=")
        if not eq and key.upper() in ("ALL", "NONE"):
            if mode not in (None, key.upper()):
                raise _Bad(f"ALL and NONE contradict each other; {_EXPORT_FORMS}")
            mode = key.upper()
        elif not _NAME.match(key):
            if item:
                raise _Bad(f"{key!r} is not a variable name; {_EXPORT_FORMS}")
        elif eq:
            env[key] = val
        elif key not in names:
            names.append(key)
    c.d.env, c.d.export_names, c.d.export_mode = env, names, mode


def _set_nodes(c: _Ctx, opt: str, value: str | None) -> None:
    # "-N, --nodes=<minnodes>[-maxnodes]"
    m = _NODES.match(_text(value))
    if not m or int(m[1]) < 1:
        raise _Bad("expected a node count: 1 (or 1-1), as jobs run on one node")
    if int(m[1]) > 1 or int(m[2] or 1) > 1:
        raise DirectiveError(f"{_shown(opt, value)} cannot be honoured: jobs run on one node")


def _refuse_gpus(c: _Ctx, opt: str, value: str | None) -> None:
    raise DirectiveError(f"{_shown(opt, value)} cannot be honoured: this cluster has no GPUs")


def _set_gres(c: _Ctx, opt: str, value: str | None) -> None:
    text = _text(value)
    if text.lower() == "none":  # "--gres=none": no generic resources
        return
    if any(item.strip().lower().startswith("gpu") for item in text.split(",")):
        _refuse_gpus(c, opt, value)
    raise DirectiveError(f"{_shown(opt, value)} cannot be honoured: this cluster has no generic "
                         "resources (GRES)")


def _warn(why: str) -> _Handler:
    def warn(c: _Ctx, opt: str, value: str | None) -> None:
        _text(value)
        c.d.warnings.append(f"line {c.lineno}: {_shown(opt, value)} ignored: {why}")
    return warn


def _set_open_mode(c: _Ctx, opt: str, value: str | None) -> None:
    if (value or "").lower() not in ("append", "truncate"):
        raise _Bad("expected append or truncate")
    _warn("output files are opened by the executor")(c, opt, value)


def _set_requeue(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.requeue = opt == "--requeue"


def _set_hold(c: _Ctx, opt: str, value: str | None) -> None:
    c.d.hold = True


def _refuse_wrap(c: _Ctx, opt: str, value: str | None) -> None:
    raise DirectiveError(f"{opt} is not a directive: it replaces the script, and this is the "
                         "script")


_GPU_OPTIONS = ("--gpus-per-node", "--gpus-per-task", "--gpus-per-socket",
                "--cpus-per-gpu", "--mem-per-gpu", "--gpu-bind", "--gpu-freq")

# long name -> (short name, takes a value, handler)
_OPTIONS: dict[str, tuple[str | None, int, _Handler]] = {
    "--array": ("-a", _VALUE, _set_array),
    "--begin": ("-b", _VALUE, _set_begin),
    "--chdir": ("-D", _VALUE, _set_chdir),
    "--cpus-per-task": ("-c", _VALUE, _set_cpus),
    "--dependency": ("-d", _VALUE, _set_dependency),
    "--error": ("-e", _VALUE, _set_error),
    "--export": (None, _VALUE, _set_export),
    "--hold": ("-H", _NO_VALUE, _set_hold),
    "--job-name": ("-J", _VALUE, _set_name),
    "--mem": (None, _VALUE, _set_mem),
    "--mem-per-cpu": (None, _VALUE, _set_mem_per_cpu),
    "--nice": (None, _OPTIONAL_VALUE, _set_nice),
    "--no-requeue": (None, _NO_VALUE, _set_requeue),
    "--nodes": ("-N", _VALUE, _set_nodes),
    "--ntasks": ("-n", _VALUE, _set_ntasks),
    "--ntasks-per-node": (None, _VALUE, _set_tasks_per_node),
    "--output": ("-o", _VALUE, _set_output),
    "--partition": ("-p", _VALUE, _set_partition),
    "--priority": (None, _VALUE, _set_priority),
    "--requeue": (None, _NO_VALUE, _set_requeue),
    "--time": ("-t", _VALUE, _set_time),
    "--gres": (None, _VALUE, _set_gres),
    **{name: (None, _VALUE, _refuse_gpus) for name in _GPU_OPTIONS},
    "--gpus": ("-G", _VALUE, _refuse_gpus),
    "--wrap": (None, _VALUE, _refuse_wrap),
    "--account": ("-A", _VALUE, _warn("this cluster has no accounts")),
    "--qos": ("-q", _VALUE, _warn("this cluster has no QOS levels")),
    "--mail-type": (None, _VALUE, _warn("this cluster sends no mail")),
    "--mail-user": (None, _VALUE, _warn("this cluster sends no mail")),
    "--open-mode": (None, _VALUE, _set_open_mode),
    "--comment": (None, _VALUE, _warn("job comments are not kept")),
}
_SHORT: dict[str, str] = {short: long for long, (short, _, _) in _OPTIONS.items() if short}


def parse_directives(script: str, now: datetime | None = None) -> Directives:
    """The directives of a script; `now` (default: the current local time) anchors relative
    begin times such as `--begin=now+1hour`. DirectiveError ("line N: ...") for a directive
    that is malformed, unknown or cannot be honoured."""
    ctx = _Ctx(Directives(), now)
    for lineno, raw in enumerate(script.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r")  # CRLF scripts
        m = _DIRECTIVE.match(line)
        if not m:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                break  # the first command: sbatch reads no further
            if _INDENTED.match(line):
                ctx.d.warnings.append(f"line {lineno}: an indented #SBATCH is not a directive "
                                      "(sbatch reads only lines that begin with it); ignored")
            continue
        try:
            words = shlex.split(m[2] or "", comments=True)
        except ValueError:  # shlex: "No closing quotation"
            raise DirectiveError(f"line {lineno}: unmatched quote in {line.strip()!r}") from None
        ctx.lineno = lineno
        _parse_words(ctx, words)
    d = ctx.d
    if d.ntasks is None and ctx.tasks_per_node is not None:
        d.ntasks = ctx.tasks_per_node
    if d.mem_per_cpu_mb is not None:
        d.memory_mb = d.memory_for(d.total_cpus or 1)
    return d


def _parse_words(c: _Ctx, words: list[str]) -> None:
    """One directive's words, as getopt_long reads sbatch's argv: `--opt=value`, `--opt value`,
    `-o value`, `-ovalue`, grouped flags (`-Hc4`); `--nice` takes a value only after `=`."""
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            kind = _lookup(c, name)[1]
            if kind == _NO_VALUE and eq:
                raise DirectiveError(f"line {c.lineno}: {name} takes no value, got {word!r}")
            if kind == _VALUE and not eq:
                if i >= len(words):
                    raise DirectiveError(f"line {c.lineno}: {name} needs a value")
                value, i = words[i], i + 1
            _apply(c, name, name, value if eq or kind == _VALUE else None)
        elif word.startswith("-") and len(word) > 1 and word != "--":
            i = _parse_short(c, word, words, i)
        else:
            raise DirectiveError(f"line {c.lineno}: unexpected argument {word!r} (options only; "
                                 "an optional value such as --nice's needs '=')")


def _parse_short(c: _Ctx, word: str, words: list[str], i: int) -> int:
    j = 1
    while j < len(word):
        short = "-" + word[j]
        long, kind = _lookup(c, short)
        if kind == _NO_VALUE:
            _apply(c, short, long, None)
            j += 1
            continue
        value = word[j + 1:]
        if not value:
            if i >= len(words):
                raise DirectiveError(f"line {c.lineno}: {short} needs a value")
            value, i = words[i], i + 1
        _apply(c, short, long, value)
        break
    return i


def _lookup(c: _Ctx, opt: str) -> tuple[str, int]:
    """An option's long name and whether it takes a value; DirectiveError if it is unknown."""
    long = _SHORT.get(opt, opt)
    if long not in _OPTIONS:
        known = [*_OPTIONS, *_SHORT]
        close = difflib.get_close_matches(opt, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close and opt.startswith("--") else ""
        raise DirectiveError(f"line {c.lineno}: unknown option {opt}{hint}: not a directive "
                             "this cluster understands")
    return long, _OPTIONS[long][1]


def _apply(c: _Ctx, opt: str, long: str, value: str | None) -> None:
    handler = _OPTIONS[long][2]
    try:
        handler(c, opt, value)
    except _Bad as e:
        raise DirectiveError(f"line {c.lineno}: {_shown(opt, value)}: {e}") from None
    except DirectiveError as e:
        raise DirectiveError(f"line {c.lineno}: {e}") from None
