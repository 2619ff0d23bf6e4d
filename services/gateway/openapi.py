"""The gateway's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json`.

Every limit in it comes from the code that enforces it (services/gateway/validation.py, the
lifecycle policy, the token store), so the document cannot promise what the validators refuse.
Bounds the validators still write inline (CPUs, memory, a few lengths) are named once below;
tests/unit/test_openapi.py checks each against the validator at its edges, and
tests/integration/test_api_fuzz.py fuzzes a live gateway with this document.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from services.gateway import validation as v
from services.gateway.common import MAX_BODY
from services.gateway.jobs import MAX_KEY, MAX_OFFSET
from services.gateway.partitions import LIMIT_FIELDS
from shared.db.schedules import CATCH_UP, CONCURRENCY
from shared.db.tokens import MAX_LIFETIME_S, ROLES, USER_NAME
from shared.lifecycle.policy import MAX_RETRIES, USER_PRIORITY
from shared.partitions import MAX_NAMES
from shared.partitions import NAME as PARTITION_NAME
from shared.priority import Factors, Weights
from shared.states import JobState, PendingReason, WorkerState
from shared.tail import TYPES

Schema = dict[str, Any]

# Literals in the validators today (better named there); tests/unit/test_openapi.py holds each
# to what the validator accepts at its bounds, the fuzzer's boundary cases the handlers' ones.
MAX_CPUS = 100_000
MAX_MEMORY_MB = 1 << 40
MAX_SPEC = 10_000  # `array` and `dependency` strings
MAX_ATTEMPT = 1_000_000  # GET /jobs/{id}/log ?attempt=
TIME_LENGTH = (10, 40)  # validation.parse_time
LABEL_LEN = 63  # validation._selector: a selector's keys (1 to) and values (0 to) this long
TIER_RANGE = (-1000, 1000)  # validation._partition_limits
MAX_ALLOWED_USERS = 10_000  # validation._partition_access: names, each 1 to MAX_USER_LEN long
MAX_USER_LEN = 200  # also gateway.partitions._user: /users/{name}/limits
MAX_LIMIT = 10**9  # each limit: gateway.partitions.put_limits, validation._partition_limits
MAX_QUERY_TEXT: int = inspect.signature(v.query_text).parameters["max_len"].default

NO_CONTROL = "^[^\\u0000-\\u001f]*$"  # validation._text: no character below U+0020
NOT_BLANK = "\\S"
PRINTABLE = "^[^\\u0000-\\u001f\\u007f]*$"  # query_text also refuses other non-printables
ISO_TIME = ("^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}"  # years validation.parse_time takes
            "([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$")
JOB_REF = "^[1-9][0-9]{0,17}(_[0-9]{1,9})?$"  # shared.arrays.parse_ref: 12, or element 12_3
SCHEDULE_REF = f"^{v.SCHEDULE_ID.pattern}$"
SCHEDULE_NAME = f"^{v.SCHEDULE_NAME.pattern}$"
ZONE_NAME = "^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"  # shared.cron.zone's syntax check
NO_NUL = "^[^\\u0000]*$"  # what PostgreSQL cannot store (a 400 from it)
# shared.partitions.parse_names: up to MAX_NAMES names, commas between, spaces around each
# stripped; blank is the default partition
_PART = PARTITION_NAME.pattern.removeprefix("^").removesuffix("$")
PARTITION_LIST = f"^(\\s*|\\s*{_PART}\\s*(,\\s*{_PART}\\s*){{0,{MAX_NAMES - 1}}})$"
PUBLIC = ("/healthz", "/readyz", "/api/v1/openapi.json", "/", "/ui/{name}")
UNLIMITED = ("/healthz", "/readyz", "/metrics")  # never rate-limited (gateway/auth.py)
ERRORS = {
    400: "The request is not valid: the message says which field and why.",
    401: "No valid bearer token.",
    403: "The token's role may not do this, or a cross-site browser request.",
    404: "No such resource (another user's job reads as not found).",
    409: "The resource is in a state this operation is not for.",
    413: f"The body is larger than {MAX_BODY} bytes, or the script than "
         f"{v.MAX_SCRIPT_BYTES} bytes.",
    415: "A request body must be sent as `Content-Type: application/json`.",
    422: "Well formed, but the cluster can never satisfy it.",
    429: "Too many requests from this token (or, without one, this client address), or too "
         "many of its streams open: retry after `Retry-After` seconds.",
    503: "PostgreSQL or Redis is unavailable, or this gateway is overloaded (no database "
         "connection free, its most streams open): retry after `Retry-After` seconds.",
    504: "Timed out waiting for another service.",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def integer(low: int | None = None, high: int | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "integer", **extra}
    if low is not None:
        out["minimum"] = low
    if high is not None:
        out["maximum"] = high
    return out


def text(max_len: int, **extra: Any) -> Schema:
    return {"type": "string", "maxLength": max_len, "pattern": NO_CONTROL, **extra}


def time(**extra: Any) -> Schema:
    low, high = TIME_LENGTH
    return {"type": "string", "format": "date-time", "minLength": low, "maxLength": high,
            "pattern": ISO_TIME, **extra}


def obj(props: dict[str, Schema], *, required: tuple[str, ...] | None = None,
        closed: bool = False, **extra: Any) -> Schema:
    """An object; every property is required unless `required` says otherwise."""
    out: Schema = {"type": "object", "properties": props,
                   "required": sorted(props if required is None else required), **extra}
    if closed:
        out["additionalProperties"] = False
    return out


def submission_properties() -> dict[str, Schema]:
    """POST /jobs: validation.parse_submission, field by field (its keys are validation.FIELDS)."""
    low_p, high_p = v.PRIORITY_RANGE
    no_nul = "^[^\\u0000]*$"
    return {
        "script": {"type": "string", "minLength": 1, "maxLength": v.MAX_SCRIPT_BYTES,
                   "allOf": [{"pattern": NOT_BLANK}, {"pattern": no_nul}],
                   "description": f"The job's shell script: not blank, no NUL, at most "
                                  f"{v.MAX_SCRIPT_BYTES} bytes of UTF-8 (413 above)."},
        "cpus": nullable(integer(1, MAX_CPUS, default=1)),
        "memory_mb": nullable(integer(1, MAX_MEMORY_MB)),
        "time_limit": nullable(integer(1, v.MAX_TIME_LIMIT_S, description="Seconds.")),
        "name": nullable(text(v.MAX_NAME, default="job")),
        "env": {"type": ["object", "null"], "maxProperties": v.MAX_ENV_VARS,
                "propertyNames": {"pattern": v.ENV_NAME.pattern,
                                  "not": {"pattern": v.RESERVED_ENV.pattern}},
                "additionalProperties": {"type": "string", "maxLength": v.MAX_ENV_VALUE,
                                         "pattern": no_nul},
                "description": "Variables for the job; SCNS_* and SLURM_* are the scheduler's."},
        "array": nullable({"type": "string", "maxLength": MAX_SPEC, "examples": ["0-99%8"],
                           "description": "Indices: '0-99', '1,3,5-7', '0-99:2', each with an "
                                          "optional '%N' throttle."}),
        "dependency": nullable({"type": "string", "maxLength": MAX_SPEC,
                                "description": "afterok|afternotok|afterany|after:ID[:ID...] "
                                               "or singleton; ',' all, '?' any. Unknown ids "
                                               "are a 400."}),
        "hold": {"type": "boolean", "default": False},
        "requeue": {"type": "boolean", "default": False},
        # the length sits in allOf: test_openapi's length check fills a field with "/x...",
        # which is no partition name
        "partition": {"type": ["string", "null"],
                      "allOf": [{"maxLength": v.MAX_PARTITION_LIST}, {"pattern": NO_CONTROL},
                                {"pattern": PARTITION_LIST}],
                      "examples": ["big", "big,small"],
                      "description": f"Partition names, comma-separated (any of them; at most "
                                     f"{MAX_NAMES}); empty or null: the default partition. "
                                     "422 `partition` when none of them exists and admits "
                                     "its user, CPUs and time limit."},
        "submit_dir": nullable(text(v.MAX_PATH)),
        "priority": nullable(integer(low_p, high_p, description=(
            f"Higher runs first; users {USER_PRIORITY[0]}-{USER_PRIORITY[1]} (403 outside), "
            "admins any."))),
        "begin_at": nullable(time(description="PENDING (BeginTime) until then.")),
        "retries": nullable(integer(0, MAX_RETRIES)),
        "retry_delay_s": nullable(integer(0, v.MAX_RETRY_DELAY_S)),
        "output": nullable(text(v.MAX_PATH, description="%j %A %a %x %u patterns.")),
        "error": nullable(text(v.MAX_PATH)),
        "workdir": nullable(text(v.MAX_PATH, pattern="^/[^\\u0000-\\u001f]*$")),
        "nice": nullable(integer(*v.NICE_RANGE, description=(
            "Lowers the priority by N; a negative adjustment is an admin's (403)."))),
    }


def changes_properties() -> dict[str, Schema]:
    """PATCH /jobs/{id}: validation.parse_changes (its keys are validation.PATCHABLE)."""
    sub = submission_properties()
    strict = {k: {**sub[k], "type": "integer"} for k in ("priority", "cpus")}
    return {
        "priority": strict["priority"], "cpus": strict["cpus"],
        "time_limit": sub["time_limit"], "memory_mb": sub["memory_mb"],
        "name": text(v.MAX_NAME, minLength=1, allOf=[{"pattern": NOT_BLANK}]),
        "begin_at": sub["begin_at"],
    }


def job_schema() -> Schema:
    """services.gateway.common.job_json (a listing's item; GET /jobs/{id} adds script, env)."""
    when = {"type": ["string", "null"], "format": "date-time"}
    maybe_int, maybe_str = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
    props: dict[str, Schema] = {
        "id": {"type": "integer"}, "name": {"type": "string"}, "user": {"type": "string"},
        "state": {"type": "string", "enum": [str(s) for s in JobState]},
        "reason": {**maybe_str, "description": "Pending: " + ", ".join(map(str, PendingReason))},
        "cpus": {"type": "integer"}, "memory_mb": maybe_int, "time_limit": maybe_int,
        "worker_id": maybe_str, "attempt": {"type": "integer"}, "exit_code": maybe_int,
        "signal": maybe_int, "priority": {"type": "integer"}, "requeue": {"type": "boolean"},
        "cancel_requested": {"type": "boolean"}, "requeue_requested": {"type": "boolean"},
        "retries": {"type": "integer"}, "retry_delay_s": {"type": "integer"},
        "retries_used": {"type": "integer"}, "array_job_id": maybe_int,
        "array_task_id": maybe_int, "array_throttle": maybe_int, "dependency": maybe_str,
        "partition": maybe_str, "submit_dir": maybe_str, "workdir": maybe_str,
        "output": maybe_str, "error": maybe_str, "schedule_id": maybe_int,
        "submitted_at": when, "begin_at": when, "allocated_at": when, "started_at": when,
        "finished_at": when,
    }
    extra: dict[str, Schema] = {
        "peak_rss_kb": maybe_int, "cpu_s": {"type": ["number", "null"]},
        "script": {"type": "string"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "array": {"type": "object", "description": "The array's id, spec, throttle, count "
                                                   "(and per-state counts on GET)."},
    }
    return obj({**props, **extra}, required=tuple(props))


def token_schema() -> Schema:
    """services.gateway.tokens.token_json."""
    when = {"type": ["string", "null"], "format": "date-time"}
    return obj({"id": {"type": "string"}, "user": {"type": "string"},
                "role": {"type": "string", "enum": list(ROLES)},
                "created_at": {"type": "string", "format": "date-time"},
                "created_by": {"type": ["string", "null"]}, "expires_at": when,
                "revoked_at": when, "active": {"type": "boolean"}})


def schedule_properties() -> dict[str, Schema]:
    """POST /schedules: validation.parse_schedule, field by field (validation.SCHEDULE_FIELDS)."""
    return {
        "name": {"type": "string", "pattern": SCHEDULE_NAME, "minLength": 1, "maxLength": 64,
                 "description": "Unique among the owner's schedules (409 when taken)."},
        "cron": {"type": "string", "minLength": 1, "maxLength": v.MAX_CRON,
                 "allOf": [{"pattern": NOT_BLANK}, {"pattern": NO_CONTROL}],
                 "examples": ["*/5 * * * *", "30 2 * * 1-5", "@hourly"],
                 "description": "5 fields (minute hour day-of-month month day-of-week) or a "
                                "macro: @yearly, @monthly, @weekly, @daily, @hourly. A bad "
                                "expression is a 400 invalid_cron that says which field."},
        "timezone": {"type": "string", "minLength": 1, "maxLength": v.MAX_TIMEZONE,
                     "pattern": ZONE_NAME, "default": "UTC", "examples": ["Europe/Berlin"],
                     "description": "IANA time zone the expression is read in (wall clock; "
                                    "DST as ISC cron). Unknown: 400 invalid_timezone."},
        "job": ref("ScheduleJob"),
        "concurrency": {"type": "string", "enum": list(CONCURRENCY), "default": "forbid",
                        "description": "While a run is active: forbid skips the fire, allow "
                                       "runs both, replace cancels the active run."},
        "catch_up": {"type": "string", "enum": list(CATCH_UP), "default": "once",
                     "description": "Fire times missed while no scheduler ran: none, the "
                                    "latest, or all of them."},
        "max_failures": integer(0, v.MAX_FAILURES, default=v.DEFAULT_MAX_FAILURES,
                                description="Failed runs in a row that disable the "
                                            "schedule; 0: never."),
        "enabled": {"type": "boolean", "default": True},
        "user": {"type": "string", "pattern": USER_NAME.pattern, "minLength": 1,
                 "maxLength": 64, "description": "The owner (admins only; default: the "
                                                 "caller). Its jobs are the owner's."},
    }


def schedule_schema() -> Schema:
    """services.gateway.schedules.schedule_json."""
    when = {"type": ["string", "null"], "format": "date-time"}
    maybe_int = {"type": ["integer", "null"]}
    props = schedule_properties()
    return obj({
        "id": {"type": "integer"}, "name": {"type": "string"}, "user": {"type": "string"},
        "cron": {"type": "string"}, "timezone": {"type": "string"},
        "job": ref("ScheduleJobSpec"), "concurrency": props["concurrency"],
        "catch_up": props["catch_up"], "max_failures": {"type": "integer"},
        "enabled": {"type": "boolean"}, "disabled_reason": {"type": ["string", "null"]},
        "next_run_at": {**when, "description": "Null while disabled."},
        "last_run_at": when, "last_job_id": maybe_int, "run_count": {"type": "integer"},
        "failure_count": {"type": "integer"}, "consecutive_failures": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}})


def schedule_job_spec_schema() -> Schema:
    """services.gateway.schedules.schedule_job_json: the stored job, as POST /jobs names it."""
    maybe_int, maybe_str = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
    return obj({
        "script": {"type": "string"}, "cpus": {"type": "integer"}, "name": {"type": "string"},
        "memory_mb": maybe_int, "time_limit": maybe_int, "submit_dir": maybe_str,
        "requeue": {"type": "boolean"}, "priority": {"type": "integer"},
        "hold": {"type": "boolean"}, "retries": {"type": "integer"},
        "retry_delay_s": {"type": "integer"}, "workdir": maybe_str, "output": maybe_str,
        "error": maybe_str, "nice": {"type": "integer"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "array": maybe_str}, required=("cpus", "name", "priority"),
        description="Listings leave out script and env.")


def run_schema() -> Schema:
    """services.gateway.schedules.run_json."""
    return obj({
        "id": {"type": "integer"}, "schedule_id": {"type": "integer"},
        "fire_at": {"type": "string", "format": "date-time"},
        "kind": {"type": "string", "enum": ["cron", "catch-up", "manual"]},
        "job_id": {"type": ["integer", "null"]},
        "state": {"type": ["string", "null"], "description": "The job's state (final once it "
                                                             "has ended)."},
        "skipped": {"type": ["string", "null"], "description": "Why no job was made."},
        "created_at": {"type": "string", "format": "date-time"}})


def partition_properties() -> dict[str, Schema]:
    """POST /partitions: validation.parse_partition, field by field (validation.PARTITION_FIELDS;
    a PATCH takes them all but `name`)."""
    props: dict[str, Schema] = {
        "name": {"type": "string", "pattern": PARTITION_NAME.pattern,
                 "description": "Unique (409 `exists` when taken); what jobs name with "
                                "`partition`."},
        "selector": {"type": ["object", "null"], "maxProperties": v.MAX_SELECTOR,
                     "propertyNames": {"minLength": 1, "maxLength": LABEL_LEN,
                                       "pattern": NO_NUL},
                     "additionalProperties": {"type": "string", "maxLength": LABEL_LEN,
                                              "pattern": NO_NUL},
                     "examples": [{"pool": "big"}],
                     "description": "Worker labels, all of which a worker must have to belong; "
                                    "{} or null: every worker."},
        "default_time_limit": nullable(integer(1, v.MAX_TIME_LIMIT_S, description=(
            "Seconds, for its jobs that give none (not above max_time_limit: 400)."))),
        "max_time_limit": nullable(integer(1, v.MAX_TIME_LIMIT_S, description=(
            "Seconds; null: no maximum."))),
        "max_cpus_per_job": nullable(integer(1, MAX_CPUS)),
        "tier": integer(*TIER_RANGE, default=0, description="Higher is scheduled first."),
        "allowed_users": {"type": ["array", "null"], "maxItems": MAX_ALLOWED_USERS,
                          "items": {"type": "string", "minLength": 1,
                                    "maxLength": MAX_USER_LEN, "pattern": NO_NUL},
                          "description": "Who may submit to it; null: everyone."},
        "default": {"type": "boolean", "default": False,
                    "description": "Where jobs naming no partition go (becoming it takes it "
                                   "from the previous one; the default cannot be unset: 409)."},
        **partition_user_limits(),
    }
    return {k: props[k] for k in v.PARTITION_FIELDS}


def partition_user_limits() -> dict[str, Schema]:
    """Each user's limits within a partition (validation._partition_limits): in its request
    bodies and in every Partition."""
    return {
        "max_running_cpus_per_user": nullable(integer(1, MAX_LIMIT, description=(
            "CPUs each user's running jobs may hold on its workers (a job counts in every "
            "partition it named whose workers include the one it runs on; beyond: PENDING, "
            "QOSMaxCpuPerUserLimit); null: no limit."))),
        "max_pending_jobs_per_user": nullable(integer(1, MAX_LIMIT, description=(
            "Jobs naming it each user may have PENDING (a submission past it, an array "
            "counting each element: 409 `max_pending_jobs`); null: no limit."))),
    }


def partition_schema() -> Schema:
    """services.gateway.partitions.partition_json."""
    when = {"type": ["string", "null"], "format": "date-time"}
    maybe_int = {"type": ["integer", "null"]}
    count = integer(0)
    return obj({
        "name": {"type": "string"},
        "selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "default_time_limit": maybe_int, "max_time_limit": maybe_int,
        "max_cpus_per_job": maybe_int, "tier": {"type": "integer"},
        "allowed_users": {"type": ["array", "null"], "items": {"type": "string"}},
        "default": {"type": "boolean"},
        **partition_user_limits(),
        "workers": {"type": "array", "items": {"type": "string"},
                    "description": "Live workers whose labels match (any state)."},
        "nodes": obj({"ready": count, "draining": count, "down": count}),
        "total_cpus": {**count, "description": "Over its ready workers, as the next two."},
        "allocated_cpus": count, "free_cpus": count,
        "created_at": when, "updated_at": when})


def limit_properties() -> dict[str, Schema]:
    """PUT /users/{name}/limits: services.gateway.partitions.put_limits (LIMIT_FIELDS)."""
    props: dict[str, Schema] = {
        "max_running_cpus": nullable(integer(1, MAX_LIMIT, description=(
            "CPUs their running jobs may hold at once (beyond: PENDING, "
            "QOSMaxCpuPerUserLimit); null: no limit."))),
        "max_pending_jobs": nullable(integer(1, MAX_LIMIT, description=(
            "Jobs they may have PENDING (a submission past it: 409 `max_pending_jobs`); "
            "null: no limit."))),
        "shares": integer(1, MAX_LIMIT, description="Their weight in fair share."),
    }
    return {k: props[k] for k in LIMIT_FIELDS}


def weights_schema() -> Schema:
    """shared.priority.Weights.as_json: the multifactor priority's weights."""
    return obj({f.name: {"type": "number"} for f in dataclasses.fields(Weights)})


def explanation_schema() -> Schema:
    """services.gateway.explain.explain."""
    reason = {"type": "string", "enum": [str(r) for r in PendingReason]}
    return obj({
        "job_id": {"type": "integer"},
        "state": {"type": "string", "enum": [str(s) for s in JobState]},
        "reasons": {"type": "array", "items": obj({"reason": reason,
                                                   "message": {"type": "string"}}),
                    "description": "Every reason it is not running now (empty: not PENDING)."},
        "priority": {"anyOf": [obj({
            "score": {"type": "number"},
            "factors": obj({f.name: {"type": "number"} for f in dataclasses.fields(Factors)}),
            "weights": ref("Weights")}), {"type": "null"}],
            "description": "Its score, as the scheduler orders pending jobs (null: not "
                           "PENDING)."},
        "partitions": {"type": "array", "items": obj({
            "name": {"type": "string"}, "eligible": {"type": "boolean"},
            "why": {"type": ["string", "null"]}}),
            "description": "Each partition it names; why one cannot run it."},
        "ahead": {**nullable(integer(0)), "description": "Pending jobs that go first on its "
                                                         "workers."},
        "estimated_start_at": {"type": ["string", "null"], "format": "date-time"},
        "estimate": {"type": "string", "description": "How the estimate was made, or why "
                                                      "there is none."}})


def components() -> Schema:
    count_map = {"type": "object", "additionalProperties": {"type": "integer"}}
    when = {"type": ["string", "null"], "format": "date-time"}
    maybe_num, maybe_int = {"type": ["number", "null"]}, {"type": ["integer", "null"]}
    listing = {"next_cursor": {"type": ["string", "null"],
                               "description": "Pass as ?cursor= for the next page."}}
    schemas: dict[str, Schema] = {
        "Error": obj({"error": obj({"code": {"type": "string"}, "message": {"type": "string"}})}),
        "JobSubmission": obj(submission_properties(), required=("script",), closed=True),
        "JobChanges": obj(changes_properties(), required=(), closed=True, minProperties=1),
        "Job": job_schema(),
        "JobList": obj({"items": {"type": "array", "items": ref("Job")}, **listing}),
        "TestOnly": obj({"test_only": {"const": True}, "job": {"type": "object"},
                         "array_count": maybe_int}),
        "ArrayControl": obj({"array_job_id": {"type": "integer"}, "count": {"type": "integer"},
                             "stopping": {"type": "integer"}}),
        "Attempt": obj({
            "attempt": {"type": "integer"}, "worker_id": {"type": "string"},
            "cpus": {"type": "integer"}, "memory_mb": {"type": "integer"},
            "state": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
            "exit_code": maybe_int, "signal": maybe_int, "allocated_at": when,
            "started_at": when, "finished_at": when, "elapsed_s": maybe_num,
            "peak_rss_kb": maybe_int, "cpu_user_s": maybe_num, "cpu_system_s": maybe_num,
            "cpu_s": maybe_num}),
        "AttemptList": obj({"items": {"type": "array", "items": ref("Attempt")}, **listing,
                            "job": ref("Job")}),
        "Worker": obj({
            "id": {"type": "string"},
            "state": {"type": "string", "description": ", ".join(map(str, WorkerState))},
            "cpus": {"type": "integer"}, "memory_mb": {"type": "integer"},
            "allocated_cpus": {"type": "integer"}, "allocated_memory_mb": {"type": "integer"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "hostname": {"type": "string"}, "last_heartbeat": when, "drain": {"type": "boolean"}}),
        "WorkerList": obj({"items": {"type": "array", "items": ref("Worker")}, **listing,
                           "degraded": {"type": "boolean"}}),
        "WorkerDrain": obj({"id": {"type": "string"}, "state": {"type": "string"},
                            "drain": {"type": "boolean"}}),
        "Resources": obj({k: {"type": "integer"} for k in (
            "total_cpus", "allocated_cpus", "available_cpus", "total_memory_mb",
            "allocated_memory_mb", "available_memory_mb")} | {"utilization": {"type": "number"}}),
        "QueueStats": obj({"states": count_map, "pending_reasons": count_map, "cpus": count_map,
                           "window": {"type": "string"}}),
        "TokenRequest": obj({
            "user": {"type": "string", "pattern": USER_NAME.pattern, "minLength": 1,
                     "maxLength": 64},
            "role": {"type": "string", "enum": list(ROLES), "default": "user"},
            "expires_in_s": nullable(integer(1, MAX_LIFETIME_S))}, required=("user",),
            closed=True),
        "Token": token_schema(),
        "NewToken": {"allOf": [ref("Token"), obj({"token": {
            "type": "string", "description": "Shown here only; keep it secret."}})]},
        "TokenRevoked": ref("Token"),
        "TokenList": obj({"items": {"type": "array", "items": ref("Token")}, **listing}),
        "ScheduleJob": obj({k: p for k, p in submission_properties().items()
                            if k not in v.SCHEDULE_JOB_REFUSED}, required=("script",),
                           closed=True, description="A POST /jobs body without begin_at or "
                                                    "dependency (a 400: a fire time is the "
                                                    "job's begin time)."),
        "ScheduleRequest": obj(schedule_properties(), required=("name", "cron", "job"),
                               closed=True),
        "ScheduleChanges": obj({k: p for k, p in schedule_properties().items()
                                if k in v.SCHEDULE_PATCHABLE}, required=(), closed=True,
                               minProperties=1, description="Merged onto the schedule and "
                               "validated whole; `job` replaces the job."),
        "Schedule": schedule_schema(),
        "ScheduleJobSpec": schedule_job_spec_schema(),
        "ScheduleList": obj({"items": {"type": "array", "items": ref("Schedule")}, **listing}),
        "Run": run_schema(),
        "RunList": obj({"items": {"type": "array", "items": ref("Run")}, **listing}),
        "Triggered": obj({"run": ref("Run"),
                          "job": {"anyOf": [ref("Job"), {"type": "null"}]}}),
        "PartitionRequest": obj(partition_properties(), required=("name",), closed=True),
        "PartitionChanges": obj({k: p for k, p in partition_properties().items()
                                 if k != "name"}, required=(), closed=True, minProperties=1),
        "Partition": partition_schema(),
        "PartitionList": obj({"items": {"type": "array", "items": ref("Partition")}}),
        "LimitsRequest": obj(limit_properties(), required=(), closed=True,
                             description="Fields left out keep their value."),
        "Limits": obj({"user": {"type": "string"}, "max_running_cpus": maybe_int,
                       "max_pending_jobs": maybe_int, "shares": {"type": "integer"},
                       "running_cpus": {"type": "integer"},
                       "pending_jobs": {"type": "integer"}}),
        "Weights": weights_schema(),
        "FairShare": obj({
            "items": {"type": "array", "items": obj({
                "user": {"type": "string"}, "usage_cpu_s": {"type": "number"},
                "running_cpus": {"type": "integer"}, "shares": {"type": "integer"},
                "share": {"type": "number"}, "usage_share": {"type": "number"},
                "factor": {"type": "number"}})},
            "half_life_s": {"type": "number"}, "updated_at": when,
            "weights": ref("Weights")}),
        "Explanation": explanation_schema(),
        "Readiness": obj({"ready": {"type": "boolean"}, "degraded": {"type": "boolean"},
                          "stopping": {"type": "boolean"}, "checks": obj({
            "redis": {"type": "boolean"}, "postgresql": {"type": "boolean"}})}),
    }
    return {"schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}


def body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def answer(description: str, schema: Schema | None = None, *,
           media: str = "application/json", **extra: Any) -> Schema:
    out: Schema = {"description": description, **extra}
    out["content"] = {media: {"schema": schema if schema is not None else {"type": "object"}}}
    return out


RETRY_AFTER: Schema = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def op(op_id: str, tag: str, summary: str, ok: dict[int, Schema], errors: tuple[int, ...],
       *, limited: bool = True, **extra: Any) -> Schema:
    """An operation; every secured one may also answer 401, 403 and 503, and every `limited`
    one (all but the probes and /metrics) 429."""
    codes = set(errors) | ({401, 403, 503} if extra.get("security") != [] else set())
    codes |= {429} if limited else set()
    responses = {str(code): resp for code, resp in sorted(ok.items())}
    for code in sorted(codes):
        responses[str(code)] = answer(ERRORS[code], ref("Error"))
        if code in (429, 503):
            responses[str(code)]["headers"] = RETRY_AFTER
    return {"operationId": op_id, "tags": [tag], "summary": summary, "responses": responses,
            **extra}


def param(name: str, where: str, schema: Schema, description: str = "", **extra: Any
          ) -> Schema:
    """A parameter; the query helpers in validation.py read `?key=` (empty) as no key at all."""
    out: Schema = {"name": name, "in": where, "required": where == "path", "schema": schema,
                   **({"allowEmptyValue": True} if where == "query" else {}), **extra}
    if description:
        out["description"] = description
    return out


def page_limit() -> Schema:
    return param("limit", "query", integer(1, v.MAX_PAGE, default=v.DEFAULT_PAGE),
                 f"Items per page (at most {v.MAX_PAGE}: follow next_cursor for more).")


JOB_ID = param("job_id", "path", {"type": "string", "pattern": JOB_REF},
               "A job id (12), or one array element (12_3); an array's id addresses it whole.")


def job_paths() -> dict[str, Schema]:
    job = answer("The job.", ref("Job"))
    changed = {200: answer("Done.", {"anyOf": [ref("Job"), ref("ArrayControl")]}),
               202: answer("Its executor has been asked to stop it (a RUNNING job).",
                           {"anyOf": [ref("Job"), ref("ArrayControl")]})}
    listing = [
        param("state", "query", {"type": "array", "items": {
            "type": "string", "enum": [str(s) for s in JobState]}}, "Any of these states.",
            style="form", explode=False),
        *(param(k, "query", {"type": "string", "maxLength": MAX_QUERY_TEXT, "pattern": PRINTABLE})
          for k in ("user", "name")),
        *(param(k, "query", {"type": "string", "pattern": f"^[0-9]{{1,{len(str(v.MAX_ID))}}}$"})
          for k in ("cursor", "array_job_id", "schedule_id")),
        *(param(k, "query", time()) for k in ("since", "until")),
        page_limit(),
    ]
    control = {
        "cancel": ("Cancel (an array's id: every element).", (400, 404, 409, 415)),
        "hold": ("Hold a PENDING job (reason Held).", (400, 404, 409, 415)),
        "release": ("Release a held job.", (400, 404, 409, 415)),
        "requeue": ("A terminal or RUNNING job: a new PENDING attempt.", (400, 404, 409, 415)),
    }
    paths: dict[str, Schema] = {
        "/api/v1/jobs": {
            "post": op("submitJob", "jobs", "Submit a job (or an array of jobs); 409 "
                       "`max_pending_jobs` past its user's limit or a named partition's "
                       "max_pending_jobs_per_user (an array counts each element), 422 "
                       "`partition` when none of its partitions can run it.", {
                201: answer("Created.", ref("Job")),
                200: answer("Replayed by Idempotency-Key, or ?test_only=1's preview.",
                            {"anyOf": [ref("Job"), ref("TestOnly")]},
                            headers={"Idempotent-Replayed": {"schema": {"type": "string"}}})},
                (400, 409, 413, 415, 422), requestBody=body(ref("JobSubmission")),
                parameters=[
                    param("Idempotency-Key", "header", {
                        "type": "string", "minLength": 1, "maxLength": MAX_KEY,
                        "pattern": "^[\\u0020-\\u007e]+$"},
                        "The same key again returns the first job (409 if the body differs)."),
                    param("test_only", "query", {"type": "string", "examples": ["1"]},
                          "1, true or yes: validate only (like sbatch --test-only).")]),
            "get": op("listJobs", "jobs", "Jobs, newest first (no script or env).",
                      {200: answer("A page.", ref("JobList"))}, (400,), parameters=listing),
        },
        "/api/v1/jobs/{job_id}": {
            "parameters": [JOB_ID],
            "get": op("getJob", "jobs", "One job, with its script and environment.",
                      {200: job}, (400, 404)),
            "patch": op("updateJob", "jobs", "Change a PENDING job (like scontrol update).",
                        {200: job}, (400, 404, 409, 413, 415, 422),
                        requestBody=body(ref("JobChanges"))),
            "delete": op("cancelJob", "jobs", control["cancel"][0], changed, control["cancel"][1]),
        },
        "/api/v1/jobs/{job_id}/explain": {
            "parameters": [JOB_ID],
            "get": op("explainJob", "jobs", "Why a job is PENDING: every reason, its priority "
                      "factors, and when it is expected to start.",
                      {200: answer("The explanation.", ref("Explanation"))}, (400, 404)),
        },
        "/api/v1/jobs/{job_id}/attempts": {
            "parameters": [JOB_ID],
            "get": op("jobAttempts", "jobs", "Accounting: one item per placed attempt.",
                      {200: answer("Attempts.", ref("AttemptList"))}, (400, 404)),
        },
        "/api/v1/jobs/{job_id}/log": {
            "parameters": [JOB_ID],
            "get": op("jobLog", "jobs", "An attempt's output.", {
                200: answer("The text so far (with follow=1: until the job ends, or "
                            "SCNS_FOLLOW_MAX_S passes).",
                            {"type": "string"}, media="text/plain")}, (400, 404), parameters=[
                param("stream", "query", {"type": "string", "enum": ["stdout", "stderr"],
                                          "default": "stdout"}, allowEmptyValue=False),
                param("attempt", "query", integer(1, MAX_ATTEMPT)),
                param("offset", "query", integer(0, MAX_OFFSET),
                      "Bytes of the text the client already has: they are not sent again "
                      "(a follow that ended before the job resumes where it was)."),
                param("follow", "query", {"type": "string", "examples": ["1"]},
                      "1, true or yes: stream until the job ends (at most "
                      "SCNS_FOLLOW_MAX_S; one of the token's stream slots).")]),
        },
    }
    for verb in ("hold", "release", "requeue"):
        summary, errors = control[verb]
        paths[f"/api/v1/jobs/{{job_id}}/{verb}"] = {
            "parameters": [JOB_ID], "post": op(f"{verb}Job", "jobs", summary, changed, errors)}
    return paths


def cluster_paths() -> dict[str, Schema]:
    worker = param("worker_id", "path", {"type": "string", "minLength": 1})
    token_id = param("token_id", "path", {"type": "string", "minLength": 1})
    drain = {verb: op(f"{verb}Worker", "cluster", f"{verb.title()} a worker (admin).",
                      {200: answer("Its state now.", ref("WorkerDrain"))}, (404, 415))
             for verb in ("drain", "resume")}
    return {
        "/api/v1/workers": {"get": op("listWorkers", "cluster", "Workers and their capacity.",
                                      {200: answer("Workers.", ref("WorkerList"))}, ())},
        "/api/v1/workers/{worker_id}/drain": {"parameters": [worker], "post": drain["drain"]},
        "/api/v1/workers/{worker_id}/resume": {"parameters": [worker], "post": drain["resume"]},
        "/api/v1/resources": {"get": op("resources", "cluster", "Cluster CPUs and memory.",
                                        {200: answer("Totals.", ref("Resources"))}, ())},
        "/api/v1/queues/stats": {"get": op("queueStats", "cluster", "Jobs per state and reason.",
                                           {200: answer("Counts.", ref("QueueStats"))}, ())},
        "/api/v1/admin/reconcile": {"post": op(
            "reconcile", "cluster", "A reconciler pass now (admin); 503 when none runs.",
            {200: answer("The reconciler's report.")}, (415, 504))},
        "/api/v1/tokens": {
            "post": op("createToken", "tokens", "Make a token (admin); shown only here.",
                       {201: answer("Created.", ref("NewToken"))}, (400, 413, 415),
                       requestBody=body(ref("TokenRequest"))),
            "get": op("listTokens", "tokens", "Tokens (admin), never their secret.",
                      {200: answer("Tokens.", ref("TokenList"))}, (400,), parameters=[
                          param("user", "query", {"type": "string", "maxLength": 64,
                                                  "pattern": PRINTABLE}),
                          param("cursor", "query", {"type": "string", "pattern":
                                                    "^[A-Za-z0-9]{1,64}$"},
                                "The previous page's next_cursor."),
                          page_limit()]),
        },
        "/api/v1/tokens/{token_id}": {"parameters": [token_id], "delete": op(
            "revokeToken", "tokens", "Revoke a token (admin; again: the same answer).",
            {200: answer("Revoked.", ref("TokenRevoked"))}, (404, 415))},
    }


def partition_paths() -> dict[str, Schema]:
    """services/gateway/partitions.py: partitions (admins write), limits and fair share."""
    one = {200: answer("The partition.", ref("Partition"))}
    name = param("name", "path", {"type": "string", "pattern": PARTITION_NAME.pattern},
                 "A partition's name (any other: not found).")
    user = param("name", "path", {"type": "string", "minLength": 1, "maxLength": MAX_USER_LEN,
                                  "pattern": NO_NUL},
                 "A user name (a user: their own; another's is not found).")
    limits = {200: answer("Their limits and what they hold now.", ref("Limits"))}
    return {
        "/api/v1/partitions": {
            "get": op("listPartitions", "partitions", "Partitions, by tier (highest first), "
                      "then name, with their workers and CPUs.",
                      {200: answer("Partitions.", ref("PartitionList"))}, ()),
            "post": op("createPartition", "partitions", "Make a partition (admin).",
                       {201: answer("Created.", ref("Partition"))}, (400, 409, 413, 415),
                       requestBody=body(ref("PartitionRequest"))),
        },
        "/api/v1/partitions/{name}": {
            "parameters": [name],
            "get": op("getPartition", "partitions", "One partition.", one, (404,)),
            "patch": op("updatePartition", "partitions", "Change a partition (admin).", one,
                        (400, 404, 409, 413, 415), requestBody=body(ref("PartitionChanges"))),
            "delete": op("deletePartition", "partitions", "Delete a partition (admin); 409 "
                         "while pending or running jobs name it, or it is the default.",
                         {204: {"description": "Deleted."}}, (404, 409, 415)),
        },
        "/api/v1/users/{name}/limits": {
            "parameters": [user],
            "get": op("getUserLimits", "partitions", "A user's limits and shares (with none "
                      "set: no limits, 1 share).", limits, (400, 404)),
            "put": op("putUserLimits", "partitions", "Set a user's limits (admin).", limits,
                      (400, 404, 413, 415), requestBody=body(ref("LimitsRequest"))),
        },
        "/api/v1/share": {"get": op(
            "fairShare", "partitions", "Fair share: each user's decayed usage, share and "
            "factor, and the priority weights.", {200: answer("The table.", ref("FairShare"))},
            ())},
    }


SCHEDULE_ID = param("schedule_id", "path", {"type": "string", "pattern": SCHEDULE_REF},
                    "A schedule id; another user's schedule is not found.")


def schedule_paths() -> dict[str, Schema]:
    one = {200: answer("The schedule.", ref("Schedule"))}
    digits = {"type": "string", "pattern": f"^[0-9]{{1,{len(str(v.MAX_ID))}}}$"}
    name = {"type": "string", "pattern": SCHEDULE_NAME, "maxLength": 64}
    paths: dict[str, Schema] = {
        "/api/v1/schedules": {
            "post": op("createSchedule", "schedules", "Make a cron schedule of jobs.", {
                201: answer("Created.", ref("Schedule"))}, (400, 409, 413, 415, 422),
                requestBody=body(ref("ScheduleRequest"))),
            "get": op("listSchedules", "schedules", "Schedules by id (a user: theirs; an "
                      "admin: everyone's, or ?user=).",
                      {200: answer("A page.", ref("ScheduleList"))}, (400,), parameters=[
                          param("user", "query", name, "Admins: one user's (a user: 403 for "
                                                       "another's)."),
                          param("name", "query", name),
                          param("cursor", "query", digits),
                          page_limit()]),
        },
        "/api/v1/schedules/{schedule_id}": {
            "parameters": [SCHEDULE_ID],
            "get": op("getSchedule", "schedules", "One schedule, with its job's script.", one,
                      (400, 404)),
            "patch": op("updateSchedule", "schedules", "Change a schedule (jobs already made "
                        "stay as they are).", one, (400, 404, 409, 413, 415, 422),
                        requestBody=body(ref("ScheduleChanges"))),
            "delete": op("deleteSchedule", "schedules", "Delete a schedule and its history; "
                         "the jobs it made carry on.", {204: {"description": "Deleted."}},
                         (400, 404, 415)),
        },
        "/api/v1/schedules/{schedule_id}/trigger": {
            "parameters": [SCHEDULE_ID],
            "post": op("triggerSchedule", "schedules", "One run now, under the schedule's "
                       "concurrency (forbid with a run active: 409).", {
                           201: answer("The run and its job.", ref("Triggered"))},
                       (400, 404, 409, 415)),
        },
        "/api/v1/schedules/{schedule_id}/runs": {
            "parameters": [SCHEDULE_ID],
            "get": op("scheduleRuns", "schedules", "Runs, newest first: fire time, job, state.",
                      {200: answer("A page.", ref("RunList"))}, (400, 404), parameters=[
                          param("cursor", "query", digits),
                          page_limit()]),
        },
    }
    for verb, summary in (("enable", "Fire again, from the next fire time after now (the "
                                     "failure streak is cleared)."),
                          ("disable", "Stop firing (its jobs carry on).")):
        paths[f"/api/v1/schedules/{{schedule_id}}/{verb}"] = {
            "parameters": [SCHEDULE_ID],
            "post": op(f"{verb}Schedule", "schedules", summary, one, (400, 404, 409, 415)
                       if verb == "enable" else (400, 404, 415))}
    return paths


# shared/tail.py's Start.parse and Position.parse: what `from` and Last-Event-ID take
EVENT_ID = f"[0-9]{{1,20}}-[0-9]{{1,20}}(:({'|'.join(TYPES)}))?"  # each part below 2^64
START = (f"^(now|\\$|0|0-0|begin|-([1-9][0-9]{{0,4}}|100000)|{EVENT_ID}|"
         f"{ISO_TIME.removeprefix('^').removesuffix('$')})$")


def stream_paths() -> dict[str, Schema]:
    """GET /events (services/gateway/events.py; its filters are shared/tail.py's)."""
    group = obj({"stream": {"type": "string"}, "name": {"type": "string"},
                 "group": {"type": "string"}, "consumers": integer(0),
                 "pending": integer(0), "lag": nullable(integer(0)),
                 "oldest_pending_s": {"type": ["number", "null"], "minimum": 0},
                 "last_delivered_id": {"type": "string"}})
    sse = {**obj({"id": {"type": "string", "pattern": f"^{EVENT_ID}$"},
                  "event": {"enum": list(TYPES)},
                  "data": {"type": "string", "contentMediaType": "application/json"}},
                 required=()),  # the first message is an id alone: where the stream starts
           "description": (
        "`retry:` and `id:` (where the stream starts) once, then per event `id: <stream "
        "id>:<type>`, `event: <type>` and `data:` "
        "the event's JSON (as published, plus `stream_id`, and for job events `job`: {ref, "
        "user, name}); `: keep-alive` comments every 15 s. Send the last id back as "
        "`Last-Event-ID` to resume right after it.")}
    return {
        "/api/v1/events": {"get": op(
            "events", "streams", "Server-Sent Events: the event streams, merged in order "
            "(an admin sees every event, a user their own jobs' and schedules').",
            {200: answer("An event stream (with follow=0 it ends after what is there; "
                         "followed, after SCNS_FOLLOW_MAX_S at most).",
                         sse, media="text/event-stream")}, (400, 404), parameters=[
                param("types", "query", {"type": "string", "pattern": f"^(({'|'.join(TYPES)})"
                                         f"(,({'|'.join(TYPES)}))*)?$"},
                      "Event types, comma-separated (default: all)."),
                param("from", "query", {"type": "string", "pattern": START, "examples": [
                    "1764680531204-0", "1764680531204-0:job-finished", "-50",
                    "2026-12-02T13:00:00Z", "now", "0"]},
                    "After a stream id or event id, from an ISO 8601 time (UTC without a "
                    "zone), the last N (-N), now (the default) or the beginning (0)."),
                param("job", "query", {"type": "string", "pattern": JOB_REF},
                      "One job's events; an array's id: every element's."),
                param("worker", "query", text(MAX_QUERY_TEXT, pattern=PRINTABLE),
                      "One worker's events."),
                param("where", "query", {"type": "string", "pattern": "^[^=]+=.*$"},
                      "FIELD=VALUE (e.g. state=FAILED, job.user=ann); repeatable."),
                param("follow", "query", {"type": "string", "examples": ["0"]},
                      "0, false or no: end after the events already there."),
                param("Last-Event-ID", "header", {"type": "string", "pattern": f"^({EVENT_ID})?$"},
                      "Resume right after this event (wins over `from`; empty: none).")])},
        "/api/v1/streams": {"get": op(
            "streams", "streams", "Each consumer group's pending entries and lag (admin): "
            "why is nothing moving?", {200: answer("The groups.", obj({
                "types": {"type": "array", "items": {"enum": list(TYPES)}},
                "items": {"type": "array", "items": group}}))}, ())},
    }


def dashboard_paths() -> dict[str, Schema]:
    """The dashboard (services/gateway/dashboard.py): public; the page asks for a token."""
    public: dict[str, Any] = {"security": []}
    page = {"description": "The file.", "content": {"text/html": {"schema": {"type": "string"}}}}
    not_modified = {"description": "Unchanged since the ETag sent in If-None-Match."}
    return {
        "/": {"get": op("dashboard", "dashboard", "The dashboard (HTML).",
                        {200: page, 304: not_modified}, (), **public)},
        "/ui/{name}": {"get": op(
            "dashboardFile", "dashboard", "One of the dashboard's static files.",
            {200: {"description": "The file (JavaScript, CSS, SVG or HTML).",
                   "content": {"*/*": {"schema": {"type": "string"}}}}, 304: not_modified},
            (404,), **public, parameters=[param("name", "path", {
                "type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[a-z]+$"})])},
    }


def service_paths() -> dict[str, Schema]:
    public: dict[str, Any] = {"security": []}
    return {
        "/healthz": {"get": op("healthz", "service", "Liveness.", {
            200: answer("Alive.", obj({"status": {"const": "ok"}}))}, (), limited=False,
            **public)},
        "/readyz": {"get": op("readyz", "service", "Readiness: ready while this gateway "
            "serves, with Redis or PostgreSQL away too (`degraded`, `checks`: it answers 503 "
            "for what needs them); not ready once it is stopping.", {
            200: answer("Serving.", ref("Readiness")),
            503: answer("Stopping.", ref("Readiness"))},
            (), limited=False, **public)},
        "/metrics": {"get": op("metrics", "service", "Prometheus metrics (any valid token).", {
            200: answer("Text exposition format.", {"type": "string"}, media="text/plain")}, (),
            limited=False)},
        "/api/v1/openapi.json": {"get": op("openapi", "service", "This document.", {
            200: answer("OpenAPI 3.1.", {"type": "object"})}, (), **public)},
    }


def _version() -> str:
    try:
        return metadata.version("scns-conductor")
    except metadata.PackageNotFoundError:
        return "0"


@functools.cache
def spec() -> dict[str, Any]:
    """The document (built once; callers must not change it)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "SCNS Conductor API", "version": _version(),
                 "description": "Batch jobs on a CPU cluster. Errors are "
                                "{\"error\": {\"code\", \"message\"}}."},
        "security": [{"bearer": []}],
        "paths": {**job_paths(), **schedule_paths(), **cluster_paths(), **partition_paths(),
                  **stream_paths(), **service_paths(), **dashboard_paths()},
        "components": components(),
    }


@functools.cache
def _encoded() -> bytes:
    return orjson.dumps(spec())


routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi_json(_: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type="application/json")
