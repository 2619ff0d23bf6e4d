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
