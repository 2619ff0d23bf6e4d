"""Settings: one frozen object built from `SCNS_*` variables at the entry point and passed down.

No other module reads `os.environ`. Every problem is reported at once, each naming the variable
and the rule it broke, so a bad deployment fails with one readable message.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from shared.errors import ConfigError
from shared.fencing import fence_problems
from shared.priority import Weights

T = TypeVar("T")

_HASH_TAG = re.compile(r"\{[^{}]+\}")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$")
_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_LOG_FORMATS = ("auto", "json", "text")
_CONTAINMENTS = ("auto", "cgroup", "subreaper", "none")


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "scns"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/scns"
    key_prefix: str = "{scns}:"
    # false in production: `scns migrate` (a Job, with a role that may change the schema) does
    # it, and services wait until the schema is at their version (shared/preflight.py)
    migrate_on_start: bool = True

    worker_id: str = field(default_factory=platform.node)
    worker_cpus: int | None = None
    worker_memory_mb: int | None = None
    worker_labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_s: float = 30.0
    worker_ttl_s: float = 60.0

    registry_sweep_s: float = 1.0
    reconcile_s: float = 30.0
    node_fail_grace_s: float = 60.0
    repair_grace_s: float = 5.0

    scheduler_interval_s: float = 2.0
    scheduler_batch: int = 500
    scheduler_exclusive: bool = True
    reserve_after_s: float = 300.0
    dependency_sweep_s: float = 30.0
    max_array_size: int = 100_001
    # the multifactor priority and fair share (shared/priority.py; README "Fair share")
    priority_weight_age: float = 1000.0
    priority_weight_fairshare: float = 10000.0
    priority_weight_job: float = 10.0
    priority_weight_tier: float = 100000.0
    priority_max_age_s: float = 7 * 86_400.0
    fairshare_half_life_s: float = 7 * 86_400.0
    fairshare_refresh_s: float = 5.0
    # cron schedules (services/scheduler/cron.py)
    cron_tick_s: float = 1.0
    cron_grace_s: float = 60.0  # a fire this late still runs as on time; later ones catch up
    cron_max_catchup: int = 100

    arq_poll_s: float = 0.02
    arq_max_jobs: int = 64
    kill_grace_s: float = 10.0
    # an executor cut off from the cluster has SIGKILLed its jobs this long before the cluster
    # may declare them lost and run them again (shared/fencing.py)
    fence_margin_s: float = 5.0
    drain_grace_s: float = 30.0
    audit_s: float = 30.0
    output_ttl_s: int = 7 * 86_400
    output_cap_bytes: int = 8 * 1024 * 1024
    # how jobs are kept apart on a worker (services/executor/containment.py, privilege.py)
    job_containment: str = "auto"  # auto | cgroup | subreaper | none
    job_pids_max: int = 4096  # processes and threads per job, where a pids cgroup exists
    job_user: str = "nobody"  # the account jobs run as when the executor is root
    run_as_submitter: bool = False  # root executor: the job's user's own account, if any
    jobs_dir: Path | None = None  # job directories; default $SCNS_DATA_DIR/jobs

    stream_maxlen: int = 100_000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    dead_letter_maxlen: int = 10_000

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # the gateway under abusive load (services/gateway/throttle.py; README "Pages and load")
    rate_limit_rps: float = 50.0  # per token (or client address; admins 10x); 0: no limit
    rate_limit_burst: int = 200
    max_streams: int = 512  # log follows and event streams open at once, per gateway process
    max_streams_per_token: int = 16
    follow_max_s: float = 3600.0  # a follow or event stream ends after this long
    # PostgreSQL waits (shared/db/pool.py)
    db_acquire_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0  # 0: none
    health_host: str = "0.0.0.0"
    health_port: int = 0

    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    log_level: str = "INFO"
    log_format: str = "auto"
    failpoint: str = ""  # tests only: see shared/failpoints.py
    clock_skew_s: float = 0.0  # tests only: offset of this process's wall clock (shared/clock.py)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `SCNS_*` variables; raise ConfigError listing every problem."""
        env = os.environ if env is None else env
        p = _Parser(env)
        d = cls()
        values: dict[str, object] = {
            "redis_url": p.secret("SCNS_REDIS_URL", d.redis_url),
            "database_url": p.secret("SCNS_DATABASE_URL", d.database_url),
            "key_prefix": p.text("SCNS_KEY_PREFIX", d.key_prefix),
            "migrate_on_start": p.value("SCNS_MIGRATE_ON_START", _bool, d.migrate_on_start),
            "worker_id": p.text("SCNS_WORKER_ID", env.get("NODE_NAME") or platform.node()),
            "worker_cpus": p.optional("SCNS_WORKER_CPUS", _positive_int),
            "worker_memory_mb": p.optional("SCNS_WORKER_MEMORY_MB", _positive_int),
            "worker_labels": p.value("SCNS_WORKER_LABELS", parse_labels, dict[str, str]()),
            "heartbeat_s": p.value("SCNS_HEARTBEAT_S", _positive_float, d.heartbeat_s),
            "worker_ttl_s": p.value("SCNS_WORKER_TTL_S", _positive_float, d.worker_ttl_s),
            "registry_sweep_s": p.value(
                "SCNS_REGISTRY_SWEEP_S", _positive_float, d.registry_sweep_s
            ),
            "reconcile_s": p.value("SCNS_RECONCILE_S", _positive_float, d.reconcile_s),
            "node_fail_grace_s": p.value("SCNS_NODE_FAIL_GRACE_S", _non_negative_float,
                                         d.node_fail_grace_s),
            "repair_grace_s": p.value("SCNS_REPAIR_GRACE_S", _non_negative_float,
                                      d.repair_grace_s),
            "scheduler_interval_s": p.value("SCNS_SCHEDULER_INTERVAL_S", _positive_float,
                                            d.scheduler_interval_s),
            "scheduler_batch": p.value("SCNS_SCHEDULER_BATCH", _positive_int, d.scheduler_batch),
            "scheduler_exclusive": p.value("SCNS_SCHEDULER_EXCLUSIVE", _bool,
                                           d.scheduler_exclusive),
            "reserve_after_s": p.value("SCNS_RESERVE_AFTER_S", _positive_float,
                                       d.reserve_after_s),
            "dependency_sweep_s": p.value("SCNS_DEPENDENCY_SWEEP_S", _positive_float,
                                          d.dependency_sweep_s),
            "max_array_size": p.value("SCNS_MAX_ARRAY_SIZE", _positive_int,
                                      d.max_array_size),
            "priority_weight_age": p.value("SCNS_PRIORITY_WEIGHT_AGE", _non_negative_float,
                                           d.priority_weight_age),
            "priority_weight_fairshare": p.value("SCNS_PRIORITY_WEIGHT_FAIRSHARE",
                                                 _non_negative_float,
                                                 d.priority_weight_fairshare),
            "priority_weight_job": p.value("SCNS_PRIORITY_WEIGHT_JOB", _non_negative_float,
                                           d.priority_weight_job),
            "priority_weight_tier": p.value("SCNS_PRIORITY_WEIGHT_TIER", _non_negative_float,
                                            d.priority_weight_tier),
            "priority_max_age_s": p.value("SCNS_PRIORITY_MAX_AGE_S", _positive_float,
                                          d.priority_max_age_s),
            "fairshare_half_life_s": p.value("SCNS_FAIRSHARE_HALF_LIFE_S", _positive_float,
                                             d.fairshare_half_life_s),
            "fairshare_refresh_s": p.value("SCNS_FAIRSHARE_REFRESH_S", _positive_float,
                                           d.fairshare_refresh_s),
            "cron_tick_s": p.value("SCNS_CRON_TICK_S", _positive_float, d.cron_tick_s),
            "cron_grace_s": p.value("SCNS_CRON_GRACE_S", _non_negative_float, d.cron_grace_s),
            "cron_max_catchup": p.value("SCNS_CRON_MAX_CATCHUP", _positive_int,
                                        d.cron_max_catchup),
            "arq_poll_s": p.value("SCNS_ARQ_POLL_S", _positive_float, d.arq_poll_s),
            "arq_max_jobs": p.value("SCNS_ARQ_MAX_JOBS", _positive_int, d.arq_max_jobs),
            "kill_grace_s": p.value("SCNS_KILL_GRACE_S", _positive_float, d.kill_grace_s),
            "fence_margin_s": p.value("SCNS_FENCE_MARGIN_S", _positive_float,
                                      d.fence_margin_s),
            "drain_grace_s": p.value("SCNS_DRAIN_GRACE_S", _non_negative_float,
                                     d.drain_grace_s),
            "audit_s": p.value("SCNS_AUDIT_S", _positive_float, d.audit_s),
            "output_ttl_s": p.value("SCNS_OUTPUT_TTL_S", _positive_int, d.output_ttl_s),
            "output_cap_bytes": p.value("SCNS_OUTPUT_CAP_BYTES", _positive_int,
                                        d.output_cap_bytes),
            "job_containment": p.text("SCNS_JOB_CONTAINMENT", d.job_containment).lower(),
            "job_pids_max": p.value("SCNS_JOB_PIDS_MAX", _positive_int, d.job_pids_max),
            "job_user": p.text("SCNS_JOB_USER", d.job_user),
            "run_as_submitter": p.value("SCNS_RUN_AS_SUBMITTER", _bool, d.run_as_submitter),
            "jobs_dir": p.optional("SCNS_JOBS_DIR", lambda s: Path(s).expanduser()),
            "stream_maxlen": p.value("SCNS_STREAM_MAXLEN", _positive_int, d.stream_maxlen),
            "claim_idle_ms": p.value("SCNS_CLAIM_IDLE_MS", _positive_int, d.claim_idle_ms),
            "max_deliveries": p.value("SCNS_MAX_DELIVERIES", _positive_int, d.max_deliveries),
            "dead_letter_maxlen": p.value("SCNS_DEAD_LETTER_MAXLEN", _positive_int,
                                          d.dead_letter_maxlen),
            "gateway_host": p.text("SCNS_GATEWAY_HOST", d.gateway_host),
            "gateway_port": p.value("SCNS_GATEWAY_PORT", _port, d.gateway_port),
            "rate_limit_rps": p.value("SCNS_RATE_LIMIT_RPS", _non_negative_float,
                                      d.rate_limit_rps),
            "rate_limit_burst": p.value("SCNS_RATE_LIMIT_BURST", _positive_int,
                                        d.rate_limit_burst),
            "max_streams": p.value("SCNS_MAX_STREAMS", _positive_int, d.max_streams),
            "max_streams_per_token": p.value("SCNS_MAX_STREAMS_PER_TOKEN", _positive_int,
                                             d.max_streams_per_token),
            "follow_max_s": p.value("SCNS_FOLLOW_MAX_S", _positive_float, d.follow_max_s),
            "db_acquire_timeout_s": p.value("SCNS_DB_ACQUIRE_TIMEOUT_S", _positive_float,
                                            d.db_acquire_timeout_s),
            "statement_timeout_s": p.value("SCNS_STATEMENT_TIMEOUT_S", _non_negative_float,
                                           d.statement_timeout_s),
            "health_host": p.text("SCNS_HEALTH_HOST", d.health_host),
            "health_port": p.value("SCNS_HEALTH_PORT", _port, d.health_port),
            "data_dir": p.value("SCNS_DATA_DIR", lambda s: Path(s).expanduser(), None)
            or default_data_dir(env),
            "log_level": p.text("SCNS_LOG_LEVEL", d.log_level).upper(),
            "log_format": p.text("SCNS_LOG_FORMAT", d.log_format).lower(),
            "failpoint": p.text("SCNS_FAILPOINT", ""),
            "clock_skew_s": p.value("SCNS_TEST_CLOCK_SKEW_S", float, d.clock_skew_s),
        }
        settings = cls(**values)  # type: ignore[arg-type]
        p.errors.extend(settings.problems())
        if p.errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(p.errors))
        return settings

    @property
    def weights(self) -> Weights:
        """The multifactor priority's weights (shared/priority.py)."""
        return Weights(age=self.priority_weight_age, fairshare=self.priority_weight_fairshare,
                       job=self.priority_weight_job, tier=self.priority_weight_tier,
                       max_age_s=self.priority_max_age_s)

    def problems(self) -> list[str]:
        """Cross-field and format rules; empty when the settings are usable."""
        out: list[str] = []
        if not _HASH_TAG.search(self.key_prefix):
            out.append(
                f"SCNS_KEY_PREFIX must contain a Redis hash tag such as '{{scns}}:' "
                f"(got {self.key_prefix!r}); multi-key Lua scripts need it on Redis Cluster"
            )
        if not _WORKER_ID.match(self.worker_id):
            out.append(
                "SCNS_WORKER_ID must be 1-63 characters of letters, digits, '.', '_' or '-' "
                f"starting with a letter or digit (got {self.worker_id!r})"
            )
        if self.worker_ttl_s <= self.heartbeat_s:
            out.append(
                "SCNS_WORKER_TTL_S must be greater than SCNS_HEARTBEAT_S "
                f"(got {self.worker_ttl_s:g} <= {self.heartbeat_s:g})"
            )
        out += fence_problems(self)
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            out.append(f"SCNS_REDIS_URL must start with redis://, rediss:// or unix:// "
                       f"(got {self.redis_url!r})")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            out.append("SCNS_DATABASE_URL must start with postgresql:// or postgres://")
        if self.log_format not in _LOG_FORMATS:
            out.append(f"SCNS_LOG_FORMAT must be one of {', '.join(_LOG_FORMATS)} "
                       f"(got {self.log_format!r})")
        if self.job_containment not in _CONTAINMENTS:
            out.append(f"SCNS_JOB_CONTAINMENT must be one of {', '.join(_CONTAINMENTS)} "
                       f"(got {self.job_containment!r})")
        if self.job_user in ("root", "0"):
            out.append("SCNS_JOB_USER must not be root: jobs never run as root (the default "
                       "is nobody)")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            out.append(f"SCNS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR "
                       f"(got {self.log_level!r})")
        return out

    def as_env(self) -> dict[str, str]:
        """The `SCNS_*` variables that rebuild these settings (for child processes)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("failpoint", "clock_skew_s") and not value):
                continue
            if f.name == "clock_skew_s":
                out["SCNS_TEST_CLOCK_SKEW_S"] = str(value)
                continue
            if f.name == "worker_labels":
                value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
            out["SCNS_" + f.name.upper()] = str(value)
        return out


def parse_labels(text: str) -> dict[str, str]:
    """Parse `k=v,k2=v2` into a dict; keys follow Kubernetes label-key rules."""
    labels: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.match(key):
            raise ValueError(f"expected comma-separated key=value pairs, bad item {item!r}")
        labels[key] = value
    return labels


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be zero or a positive number")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


class _Parser:
    """Collects parse errors instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name, "").strip()
        return value or default

    def value(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as e:
            detail = str(e) if str(e) and "invalid literal" not in str(e) else "not a number"
            self.errors.append(f"{name}={raw!r}: {detail}")
            return default

    def optional(self, name: str, parse: Callable[[str], T]) -> T | None:
        return self.value(name, parse, None)

    def secret(self, name: str, default: str) -> str:
        """`NAME`, or the contents of the file `NAME_FILE` names (a mounted Kubernetes Secret),
        stripped of surrounding whitespace. Both set to different values is an error."""
        return read_secret(self.env, name, default, self.errors)


def read_secret(env: Mapping[str, str], name: str, default: str, errors: list[str]) -> str:
    """See `_Parser.secret`; problems are appended to `errors` (the default is returned)."""
    direct = env.get(name, "").strip()
    path = env.get(name + "_FILE", "").strip()
    if not path:
        return direct or default
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        errors.append(f"{name}_FILE={path!r}: cannot read it ({e.__class__.__name__}: "
                      f"{e.strerror if isinstance(e, OSError) else e})")
        return direct or default
    if not value:
        errors.append(f"{name}_FILE={path!r}: the file is empty")
        return direct or default
    if direct and direct != value:
        errors.append(f"set {name} or {name}_FILE, not both (they differ)")
    return value
