"""The job lifecycle: the one owner of every job transition (see core.py and controls.py)."""

from __future__ import annotations

from shared.lifecycle.controls import Lifecycle
from shared.lifecycle.core import Placed
from shared.lifecycle.groups import ArrayChange, Changed, Resolved
from shared.lifecycle.policy import (
    FollowUp,
    Role,
    check_nice,
    check_priority,
    follow_up,
    retry_delay,
)
from shared.lifecycle.store import Allocated, Changes, Ended

__all__ = ["Allocated", "ArrayChange", "Changed", "Changes", "Ended", "FollowUp", "Lifecycle",
           "Placed", "Resolved", "Role", "check_nice", "check_priority", "follow_up",
           "retry_delay"]
