"""The wall clock of this process, with an offset that only tests set.

Every wall-clock read of the services goes through here, so that the chaos suite can run each
service with its clock off by a few seconds (SCNS_TEST_CLOCK_SKEW_S) and show that nothing safe
depends on clocks agreeing: deadlines are monotonic durations, and the times the cluster compares
are PostgreSQL's (shared/fencing.py). Durations use `time.monotonic()`, never this.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, timedelta

_offset = [0.0]  # seconds added to the system's clock (tests only)


def configure(skew_s: float) -> None:
    _offset[0] = skew_s


def time() -> float:
    """Seconds since the epoch, as this process's (possibly skewed) clock says."""
    return _time.time() + _offset[0]


def now_ms() -> int:
    return int(time() * 1000)


def utcnow() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=_offset[0])
