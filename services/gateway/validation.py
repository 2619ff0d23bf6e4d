"""Turning request bodies and query strings into typed values, or a 4xx that says exactly what is
wrong. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared.arrays import DEFAULT_MAX_ARRAY_SIZE, ArraySpec, SpecError, parse_array
from shared.cron import MAX_LENGTH as CRON_MAX_LENGTH
from shared.cron import CronError, parse_cron, zone
from shared.db.jobs import JobSpec
from shared.db.schedules import CATCH_UP, CONCURRENCY
from shared.dependencies import Dependency, parse_dependency
from shared.lifecycle import Changes
from shared.lifecycle.policy import MAX_RETRIES
from shared.partitions import NAME as PARTITION_NAME
from shared.partitions import parse_names

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ENV_VARS = 256
MAX_ENV_VALUE = 32 * 1024
MAX_NAME = 200
MAX_TIME_LIMIT_S = 365 * 86_400
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INT_QUERY = re.compile(r"-?[0-9]{1,11}\Z")  # "--5" is not a number (int() would raise)
RESERVED_ENV = re.compile(r"^(SCNS_|SLURM_)")
MAX_RETRY_DELAY_S = 7 * 86_400
MAX_ID = 10**18 - 1  # ids are PostgreSQL bigints; 18 digits always fit
# the largest page of every listing (`?limit=`): a bigger one is a 400, and a client pages
# with `cursor` (services/cli/client.py pages so)
MAX_PAGE = 200
DEFAULT_PAGE = 100
PRIORITY_RANGE = (-(2**31) + 1, 2**31 - 2)  # what the column holds; policy narrows it per role
FIELDS = frozenset({"script", "cpus", "memory_mb", "time_limit", "name", "env", "array",
                    "dependency", "hold", "requeue", "partition", "submit_dir", "priority",
                    "begin_at", "retries", "retry_delay_s", "output", "error", "workdir",
                    "nice"})
MAX_PATH = 4096
MAX_PARTITION_LIST = 16 * 65
NICE_RANGE = (-10_000, 10_000)
PATCHABLE = {"priority": "priority", "time_limit": "time_limit_s", "cpus": "cpus",
             "memory_mb": "memory_mb", "name": "name", "begin_at": "begin_at"}


class RequestError(Exception):
    """A client error: HTTP status, machine-readable code, human message; for a refusal under
    load (429, 503) the seconds the client should wait (its `Retry-After`)."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def _bad(code: str, message: str, status: int = 400) -> RequestError:
    return RequestError(status, code, message)


def _int(body: Mapping[str, Any], key: str, *, minimum: int, maximum: int | None = None
         ) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("invalid_field", f"'{key}' must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise _bad("invalid_field", f"'{key}' must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _bad("invalid_field", f"'{key}' must be at most {maximum}, got {value}")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise _bad("invalid_field", f"'{key}' must be true or false")
    return value


def _text(body: Mapping[str, Any], key: str, *, max_len: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("invalid_field", f"'{key}' must be a string")
    if len(value) > max_len:
        raise _bad("invalid_field", f"'{key}' is longer than {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise _bad("invalid_field", f"'{key}' must not contain control characters")
    return value


def parse_time(value: Any, key: str) -> datetime:
    """ISO 8601 (`2026-11-24T02:30:00Z`, `...+01:00`; without an offset: UTC)."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise _bad("invalid_field", f"'{key}' must be an ISO 8601 time such as "
                                    "2026-11-24T02:30:00Z")
    try:
        at = datetime.fromisoformat(value)
    except ValueError as e:
        raise _bad("invalid_field", f"'{key}' is not an ISO 8601 time: {value!r} (e.g. "
                                    "2026-11-24T02:30:00Z)") from e
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-01:00 is in UTC past what a datetime holds
        at.astimezone(UTC)
    except OverflowError as e:
        raise _bad("invalid_field", f"'{key}' is out of range: {value!r}") from e
    if not 1970 <= at.year <= 9999:
        raise _bad("invalid_field", f"'{key}' is out of range: {value!r}")
    return at


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("invalid_field", "'env' must be an object of NAME: value strings")
    if len(value) > MAX_ENV_VARS:
        raise _bad("invalid_field", f"'env' has more than {MAX_ENV_VARS} variables")
    for name, v in value.items():
        if not ENV_NAME.fullmatch(name):
            raise _bad("invalid_field", f"env name {name!r} is not valid: names match "
                                        "[A-Za-z_][A-Za-z0-9_]*")
        if RESERVED_ENV.match(name):
            raise _bad("invalid_field", f"env name {name!r} is reserved (SCNS_* and SLURM_* are "
                                        "set by the scheduler)")
        if not isinstance(v, str):
            raise _bad("invalid_field", f"env value of {name} must be a string")
        if len(v) > MAX_ENV_VALUE or "\x00" in v:
            raise _bad("invalid_field", f"env value of {name} is too long or contains NUL")
    return dict(value)


def parse_submission(body: Any, *, user: str, largest_cpus: int | None,
                     largest_memory_mb: int | None,
                     max_array_size: int = DEFAULT_MAX_ARRAY_SIZE) -> JobSpec:
    """Validate a POST /jobs body. `largest_*` describe the biggest live worker (None when no
    worker is live: the job may wait for one). The spec's priority is the one asked for less
    the `nice` adjustment (both checked against the caller's role by the handler)."""
    if not isinstance(body, dict):
        raise _bad("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad("unknown_field", f"unknown field(s): {', '.join(unknown)}; allowed: "
                                    f"{', '.join(sorted(FIELDS))}")
    script = body.get("script")
    if script is None:
        raise _bad("missing_field", "'script' is required")
    if not isinstance(script, str):
        raise _bad("invalid_field", "'script' must be a string")
    if not script.strip():
        raise _bad("invalid_field", "'script' is empty")
    size = len(script.encode("utf-8", errors="surrogatepass"))
    if size > MAX_SCRIPT_BYTES:
        raise _bad("too_large", f"'script' is {size} bytes; the limit is {MAX_SCRIPT_BYTES}", 413)
    if "\x00" in script:
        raise _bad("invalid_field", "'script' contains a NUL byte")
    script = script.replace("\r\n", "\n")  # a script saved on Windows runs as written
    cpus = _int(body, "cpus", minimum=1, maximum=100_000) or 1
    memory_mb = _int(body, "memory_mb", minimum=1, maximum=1 << 40)
    time_limit = _int(body, "time_limit", minimum=1, maximum=MAX_TIME_LIMIT_S)
    check_fits(cpus=cpus, memory_mb=memory_mb, largest_cpus=largest_cpus,
               largest_memory_mb=largest_memory_mb)
    partition = _partition_names(_text(body, "partition", max_len=MAX_PARTITION_LIST))
    name = _text(body, "name", max_len=MAX_NAME) or "job"
    submit_dir = _text(body, "submit_dir", max_len=4096)
    priority = _int(body, "priority", minimum=PRIORITY_RANGE[0], maximum=PRIORITY_RANGE[1])
    begin_at = parse_time(body["begin_at"], "begin_at") if body.get("begin_at") is not None \
        else None
    nice = _int(body, "nice", minimum=NICE_RANGE[0], maximum=NICE_RANGE[1]) or 0
    array = _array(body.get("array"), max_array_size)
    dep = _dependency(body.get("dependency"))
    workdir = _text(body, "workdir", max_len=MAX_PATH)
    if workdir is not None and not workdir.startswith("/"):
        raise _bad("invalid_field", f"'workdir' must be an absolute path, got {workdir!r}")
    return JobSpec(script=script, cpus=cpus, name=name, user=user, memory_mb=memory_mb,
                   time_limit_s=time_limit, env=_env(body.get("env")), submit_dir=submit_dir,
                   partition=partition, requeue=_bool(body, "requeue"), hold=_bool(body, "hold"),
                   priority=(priority or 0) - nice, nice=nice, begin_at=begin_at,
                   array=array, dependency=dep.expr if dep else None, dependency_edges=dep,
                   workdir=workdir, stdout_path=_text(body, "output", max_len=MAX_PATH) or None,
                   stderr_path=_text(body, "error", max_len=MAX_PATH) or None,
                   retries=_int(body, "retries", minimum=0, maximum=MAX_RETRIES) or 0,
                   retry_delay_s=_int(body, "retry_delay_s", minimum=0,
                                      maximum=MAX_RETRY_DELAY_S) or 0)


def _partition_names(text: str | None) -> str | None:
    """A comma list of partition names (any of them), or None: the default partition. Whether
    they exist and admit the job is the gateway's check (partitions.admit)."""
    try:
        names = parse_names(text)
    except ValueError as e:
        raise _bad("invalid_field", f"'partition': {e}") from e
    return ",".join(names) if names else None


PARTITION_FIELDS = ("name", "selector", "default_time_limit", "max_time_limit",
                    "max_cpus_per_job", "tier", "allowed_users", "default",
                    "max_running_cpus_per_user", "max_pending_jobs_per_user")
MAX_SELECTOR = 32


def _selector(sel: Any) -> dict[str, str]:
    if not isinstance(sel, dict) or len(sel) > MAX_SELECTOR or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 63 and len(v) <= 63
            for k, v in sel.items()):
        raise _bad("invalid_field", "'selector' must be an object of label: value strings "
                                    "(a worker belongs when all match; {} = every worker)")
    return dict(sel)


def _partition_limits(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, high in (("default_time_limit", MAX_TIME_LIMIT_S),
                      ("max_time_limit", MAX_TIME_LIMIT_S), ("max_cpus_per_job", 100_000),
                      ("max_running_cpus_per_user", 10**9),
                      ("max_pending_jobs_per_user", 10**9)):
        if key in body:
            value = body[key]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 1 <= value <= high):
                raise _bad("invalid_field", f"'{key}' must be an integer from 1 to {high}, or "
                                            "null")
            out[key] = value
    if "tier" in body:
        tier = body["tier"]
        if not isinstance(tier, int) or isinstance(tier, bool) or not -1000 <= tier <= 1000:
            raise _bad("invalid_field", "'tier' must be an integer from -1000 to 1000 (higher "
                                        "is scheduled first)")
        out["tier"] = tier
    return out


def _partition_access(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "allowed_users" in body:
        users = body["allowed_users"]
        if users is not None and (not isinstance(users, list) or len(users) > 10_000 or not all(
                isinstance(u, str) and 1 <= len(u) <= 200 for u in users)):
            raise _bad("invalid_field", "'allowed_users' must be a list of user names, or null "
                                        "(everyone)")
        out["allowed_users"] = tuple(sorted(set(users))) if users is not None else None
    if "default" in body:
        if not isinstance(body["default"], bool):
            raise _bad("invalid_field", "'default' must be true or false")
        out["default"] = body["default"]
    return out


def parse_partition(body: Any, *, creating: bool) -> dict[str, Any]:
    """A POST /partitions body (every field; `name` required) or a PATCH (the fields to change,
    never `name`): Partition field -> value."""
    if not isinstance(body, dict) or (not creating and not body):
        raise _bad("invalid_body", "send a JSON object with any of "
                                   f"{', '.join(PARTITION_FIELDS[1:])}")
    allowed = PARTITION_FIELDS if creating else PARTITION_FIELDS[1:]
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _bad("unknown_field", f"unknown field(s): {', '.join(unknown)}; allowed: "
                                    f"{', '.join(allowed)}")
    out: dict[str, Any] = {}
    if creating:
        name = body.get("name")
        if not isinstance(name, str) or not PARTITION_NAME.match(name):
            raise _bad("invalid_field", "'name' is required: 1 to 64 letters, digits, '_', '.' "
                                        "or '-'")
        out["name"] = name
    if "selector" in body or creating:
        sel = body.get("selector")
        out["selector"] = _selector({} if sel is None else sel)
    out.update(_partition_limits(body))
    out.update(_partition_access(body))
    d, m = out.get("default_time_limit"), out.get("max_time_limit")
    if d is not None and m is not None and d > m:
        raise _bad("invalid_field", f"'default_time_limit' ({d} s) is above 'max_time_limit' "
                                    f"({m} s)")
    return out


def _array(value: Any, max_size: int) -> ArraySpec | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 10_000:
        raise _bad("invalid_field", "'array' must be a string such as \"0-99%8\"")
    try:
        return parse_array(value, max_size=max_size)
    except SpecError as e:
        raise _bad("invalid_field", f"'array': {e}") from e


def _dependency(value: Any) -> Dependency | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 10_000:
        raise _bad("invalid_field", "'dependency' must be a string such as \"afterok:12\"")
    try:
        return parse_dependency(value)
    except SpecError as e:
        raise _bad("invalid_field", f"'dependency': {e}") from e


def check_fits(*, cpus: int | None, memory_mb: int | None, largest_cpus: int | None,
               largest_memory_mb: int | None) -> None:
    """422 for a request no live worker could ever hold (None: no worker is live yet)."""
    if largest_cpus is not None and cpus is not None and cpus > largest_cpus:
        raise _bad("unsatisfiable", f"{cpus} CPUs can never be satisfied: the largest worker "
                                    f"has {largest_cpus}", 422)
    if largest_memory_mb is not None and memory_mb is not None and memory_mb > largest_memory_mb:
        raise _bad("unsatisfiable", f"{memory_mb} MB of memory can never be satisfied: the "
                                    f"largest worker has {largest_memory_mb} MB", 422)


def parse_changes(body: Any) -> Changes:
    """A PATCH /jobs/{id} body: the fields to change (`null` removes a time limit, memory
    request or begin time)."""
    if not isinstance(body, dict) or not body:
        raise _bad("invalid_body", "send a JSON object with the fields to change: "
                                   f"{', '.join(PATCHABLE)}")
    unknown = sorted(set(body) - set(PATCHABLE))
    if unknown:
        raise _bad("unknown_field", f"cannot change {', '.join(unknown)}; a pending job's "
                                    f"{', '.join(PATCHABLE)} can be changed")
    values: dict[str, Any] = {}
    for key in body:
        if key == "begin_at":
            values["begin_at"] = None if body[key] is None else parse_time(body[key], key)
        elif key == "name":
            if body[key] is None or not str(body[key]).strip():
                raise _bad("invalid_field", "'name' must be a non-empty string")
            values["name"] = _text(body, key, max_len=MAX_NAME)
        elif key == "priority":
            if body[key] is None:
                raise _bad("invalid_field", "'priority' must be an integer")
            values["priority"] = _int(body, key, minimum=PRIORITY_RANGE[0],
                                      maximum=PRIORITY_RANGE[1])
        elif key == "cpus":
            if body[key] is None:
                raise _bad("invalid_field", "'cpus' must be an integer")
            values["cpus"] = _int(body, key, minimum=1, maximum=100_000)
        elif key == "time_limit":
            values["time_limit_s"] = _int(body, key, minimum=1, maximum=MAX_TIME_LIMIT_S)
        else:
            values["memory_mb"] = _int(body, key, minimum=1, maximum=1 << 40)
    return Changes(set=frozenset(PATCHABLE[k] for k in body), **values)


def query_text(query: Mapping[str, str], key: str, *, max_len: int = 200) -> str | None:
    """A free-text query parameter: bounded, printable (PostgreSQL text cannot hold NUL)."""
    value = query.get(key)
    if not value:
        return None
    if len(value) > max_len or not value.isprintable():
        raise _bad("invalid_query", f"'{key}' must be at most {max_len} printable characters")
    return value


def query_id(query: Mapping[str, str], key: str) -> int | None:
    value = query.get(key)
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
        raise _bad("invalid_query", f"'{key}' must be a job id (digits), got {value[:40]!r}")
    return int(value)


def query_int(query: Mapping[str, str], key: str, *, default: int, low: int, high: int) -> int:
    value = query.get(key)
    if value is None or value == "":
        return default
    if not INT_QUERY.match(value) or not low <= int(value) <= high:
        raise _bad("invalid_query", f"'{key}' must be an integer from {low} to {high}")
    return int(value)


def query_limit(query: Mapping[str, str], *, default: int = DEFAULT_PAGE) -> int:
    """`?limit=`, the page size of a listing: 1 to MAX_PAGE."""
    value = query.get("limit")
    if value is None or value == "":
        return default
    if not INT_QUERY.match(value) or not 1 <= int(value) <= MAX_PAGE:
        raise _bad("invalid_query", f"'limit' must be an integer from 1 to {MAX_PAGE} (the "
                                    "largest page; follow next_cursor for the rest)")
    return int(value)


def query_time(query: Mapping[str, str], key: str) -> datetime | None:
    value = query.get(key)
    if not value:
        return None
    try:
        return parse_time(value, key)
    except RequestError as e:
        raise _bad("invalid_query", e.message) from e


# --- schedules (POST and PATCH /schedules) ----------------------------------------------------
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the schedules_name CHECK, fully matched
SCHEDULE_ID = re.compile(r"[1-9][0-9]{0,17}")  # a bigint id, no sign, no leading zero
SCHEDULE_FIELDS = frozenset({"name", "cron", "timezone", "job", "concurrency", "catch_up",
                             "max_failures", "enabled", "user"})
SCHEDULE_PATCHABLE = frozenset({"name", "cron", "timezone", "job", "concurrency", "catch_up",
                                "max_failures"})
SCHEDULE_JOB_REFUSED = {
    "begin_at": "a schedule's job cannot have 'begin_at': its fire time is its begin time",
    "dependency": "a schedule's job cannot have 'dependency': each fire makes a new job; "
                  "'concurrency' says what a run does while the previous one is active",
}
MAX_CRON = CRON_MAX_LENGTH
MAX_TIMEZONE = 64
MAX_FAILURES = 1000
DEFAULT_MAX_FAILURES = 3
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-'"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleBody:
    """A validated POST /schedules body (PATCH: the current schedule with the changes merged
    in). `job` is None when a PATCH leaves the job as it is; `user` is the owner asked for
    (None: the caller)."""

    name: str
    cron: str
    timezone: str
    job: JobSpec | None
    concurrency: str
    catch_up: str
    max_failures: int
    enabled: bool = True
    user: str | None = None


def _choice(body: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if value not in choices:
        raise _bad("invalid_field", f"'{key}' must be {', '.join(choices[:-1])} or "
                                    f"{choices[-1]}, got {str(value)[:40]!r}")
    return str(value)


def _schedule_name(value: Any, key: str = "name") -> str:
    if not isinstance(value, str) or not SCHEDULE_NAME.fullmatch(value):
        shown = f", got {value[:70]!r}" if isinstance(value, str) else ""
        raise _bad("invalid_field", f"'{key}' must be {NAME_RULE}{shown}")
    return value


def parse_cron_field(value: Any) -> str:
    """A cron expression as it is stored (stripped), or a 400 `invalid_cron` saying why."""
    if not isinstance(value, str):
        raise _bad("invalid_cron", "'cron' must be a string such as \"30 2 * * *\" or "
                                   "\"@hourly\"")
    try:
        return parse_cron(_text({"cron": value}, "cron", max_len=MAX_CRON) or "").source
    except RequestError as e:  # too long, or a control character
        raise _bad("invalid_cron", e.message) from e
    except CronError as e:
        raise _bad("invalid_cron", f"'cron': {e}") from e


def parse_timezone_field(value: Any) -> str:
    """An IANA time zone name, or a 400 `invalid_timezone` (with a suggestion when one is
    close)."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise _bad("invalid_timezone", "'timezone' must be an IANA time zone name such as "
                                       "Europe/Berlin or UTC")
    try:
        return zone(value).key
    except CronError as e:
        raise _bad("invalid_timezone", f"'timezone': {e}") from e


def parse_schedule_job(body: Any, *, user: str, largest_cpus: int | None,
                       largest_memory_mb: int | None, max_array_size: int,
                       default_name: str) -> JobSpec:
    """A schedule's `job`: a POST /jobs body, validated as one (its messages prefixed
    "job: "), without a begin time or a dependency; a job without a name is named after its
    schedule."""
    if not isinstance(body, dict):
        raise _bad("invalid_field", "'job' must be an object: a POST /jobs body such as "
                                    "{\"script\": \"#!/bin/sh\\necho hi\\n\"}")
    for key, why in SCHEDULE_JOB_REFUSED.items():
        if key in body:  # even null or "": what a schedule's jobs wait for is not theirs to say
            raise _bad("invalid_field", f"job: {why}")
    try:
        spec = parse_submission(body, user=user, largest_cpus=largest_cpus,
                                largest_memory_mb=largest_memory_mb,
                                max_array_size=max_array_size)
    except RequestError as e:
        raise RequestError(e.status, e.code, f"job: {e.message}") from e
    low, high = PRIORITY_RANGE
    if not low <= spec.priority <= high:  # made at fire time, where nobody sees a 400
        raise _bad("invalid_field", f"job: 'priority' less 'nice' must be from {low} to {high}, "
                                    f"got {spec.priority}")
    if not body.get("name"):
        spec = replace(spec, name=default_name)
    return spec


def parse_schedule(body: Any, *, user: str, largest_cpus: int | None,
                   largest_memory_mb: int | None, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
                   current: Mapping[str, Any] | None = None) -> ScheduleBody:
    """Validate a POST /schedules body, or with `current` (the schedule's name, cron,
    timezone, concurrency, catch_up and max_failures) a PATCH body merged onto it. `user` owns
    the job. Pure: cron expressions and zones are checked by shared.cron."""
    patch = current is not None
    if not isinstance(body, dict) or (patch and not body):
        raise _bad("invalid_body", "send a JSON object" + (
            f" with the fields to change: {', '.join(sorted(SCHEDULE_PATCHABLE))}" if patch
            else ""))
    allowed = SCHEDULE_PATCHABLE if patch else SCHEDULE_FIELDS
    unknown = sorted(set(body) - allowed)
    if unknown:
        hint = (" (enable and disable have routes of their own: POST /schedules/{id}/enable "
                "and /disable)" if "enabled" in unknown and patch else "")
        raise _bad("unknown_field", f"unknown field(s): {', '.join(unknown)[:200]}; allowed: "
                                    f"{', '.join(sorted(allowed))}{hint}")
    if not patch:
        for key in ("name", "cron", "job"):
            if key not in body:
                raise _bad("missing_field", f"'{key}' is required")
    for key in body:
        if body[key] is None:
            raise _bad("invalid_field", f"'{key}' must not be null")
    merged: dict[str, Any] = {**(current or {}), **body}
    name = _schedule_name(merged["name"])
    cron = parse_cron_field(merged["cron"])
    tz = parse_timezone_field(merged.get("timezone", "UTC"))
    concurrency = _choice(merged, "concurrency", CONCURRENCY, "forbid")
    catch_up = _choice(merged, "catch_up", CATCH_UP, "once")
    max_failures = _int(merged, "max_failures", minimum=0, maximum=MAX_FAILURES)
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _bad("invalid_field", "'enabled' must be true or false")
    owner = merged.get("user")
    if owner is not None:
        owner = _schedule_name(owner, "user")
    job = None
    if "job" in body:
        job = parse_schedule_job(body["job"], user=owner or user, largest_cpus=largest_cpus,
                                 largest_memory_mb=largest_memory_mb,
                                 max_array_size=max_array_size, default_name=name)
    return ScheduleBody(name=name, cron=cron, timezone=tz, job=job, concurrency=concurrency,
                        catch_up=catch_up, enabled=enabled, user=owner,
                        max_failures=DEFAULT_MAX_FAILURES if max_failures is None
                        else max_failures)
