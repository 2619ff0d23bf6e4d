"""Named crash points for fault-injection tests (like FoundationDB's buggify or TiKV's fail-rs).

A service's entry point calls `configure(settings.failpoint)`; `hit(name)` then SIGKILLs the
process when `name` matches, at exactly that point of a multi-step operation. Unset (the default,
and always in production), `hit` is one string comparison.
"""

from __future__ import annotations

import os
import signal

_armed = ""


def configure(name: str) -> None:
    global _armed  # noqa: PLW0603 - set once, at the entry point
    _armed = name


def hit(name: str) -> None:
    if _armed and _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """True when the process was started with this failpoint (a behaviour switched off to show
    that a test notices its absence)."""
    return bool(_armed) and _armed == name


_raised: set[str] = set()


def raise_once(name: str, error: BaseException) -> None:
    """Raise `error` the first time `name` is reached in this process (a lost answer, say),
    then never again."""
    if _armed and _armed == name and name not in _raised:
        _raised.add(name)
        raise error
