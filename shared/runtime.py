"""What every service's entry point shares: the event loop, signals, supervised tasks, and
keeping its secrets to itself.

Every service holds the database and Redis URLs (its environment, its memory). On Linux it makes
itself non-dumpable at start-up (PR_SET_DUMPABLE 0): its /proc/<pid>/environ, mem, fd and maps
then belong to root and it cannot be ptraced, so a process of the same user (a job run by an
executor that is not root) cannot read them. A child it execs is dumpable again (the kernel
resets the flag on exec), so jobs and embedded servers are unaffected. No core dumps either.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shared.errors import ConfigError, PreflightError

log = logging.getLogger(__name__)


PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0 on this process (Linux; elsewhere a no-op that returns False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def dumpable() -> bool | None:
    """This process's dumpable flag (None where it cannot be read)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) > 0
    except (OSError, AttributeError):
        return None


# The cyclic collector's generation thresholds: CPython's (700, 10, 10) but a full collection
# ten times rarer. What the services make and drop is freed by reference counting (their full
# collections found next to nothing to collect), and with start-up frozen the rule that holds
# a full collection back until a quarter of the long-lived objects are new counts from a few
# thousand: the gateway under a thousand connections ran one every 5 to 10 s.
GC_THRESHOLDS = (700, 10, 100)


def freeze_heap() -> int:
    """Move what start-up made (modules, classes, functions: tens of thousands of objects that
    live as long as the process) out of the cyclic collector's reach, set GC_THRESHOLDS, and
    return how many were frozen. A full collection walks every object it tracks: in a gateway
    holding a thousand connections it stalled every request for 50 to 120 ms; frozen, the
    start-up objects are never walked again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


def run(main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run `main` on uvloop when available and return its exit code. The process is made
    non-dumpable first (see the module docstring), and what its imports made is frozen
    (`freeze_heap`)."""
    if not make_undumpable() and sys.platform.startswith("linux"):
        log.warning("could not make this process non-dumpable: its environment may be "
                    "readable by other processes of its user")
    freeze_heap()
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main()) or 0
    except KeyboardInterrupt:
        return 130
    except (ConfigError, PreflightError) as e:
        return fatal(e)


EX_CONFIG = 78  # sysexits.h: the configuration or the environment is wrong


def fatal(error: Exception) -> int:
    """A refusal to start: one line (through the log once it is configured, else on stderr),
    no traceback, status 78. In Kubernetes, terminationMessagePolicy FallbackToLogsOnError
    shows the line in `kubectl describe pod`."""
    if logging.getLogger().handlers:
        log.critical("%s", error, extra={"event": "refused-to-start"})
    else:
        print(f"scns: fatal: {error}", file=sys.stderr, flush=True)
    return EX_CONFIG


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set `stop` (phase one of a two-phase shutdown); a second one exits."""
    loop = asyncio.get_running_loop()
    count = 0

    def handler(signum: int) -> None:
        nonlocal count
        count += 1
        if count > 1:
            log.warning("second signal, exiting at once", extra={"signal": signum})
            sys.exit(1)
        log.info("stopping", extra={"event": "shutdown", "signal": signal.Signals(signum).name})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


async def supervise(tasks: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event) -> None:
    """Run named background tasks until `stop` is set or one of them ends.

    A task that dies takes the service down (logged, re-raised) so that the orchestrator
    restarts it instead of it limping on without, say, its heartbeat.
    """
    running = {asyncio.create_task(coro, name=name): name for name, coro in tasks.items()}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({*running, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper:
                continue
            name = running[task]
            if task.cancelled():
                raise RuntimeError(f"task {name} was cancelled")
            exc = task.exception()
            if exc is not None:
                log.error("task %s died", name, exc_info=exc, extra={"task": name})
                raise exc
            if not stop.is_set():
                raise RuntimeError(f"task {name} ended before the service was stopped")
    finally:
        stop.set()
        stopper.cancel()
        pending = [t for t in running if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=10)
            for t in still:
                t.cancel()
            await asyncio.gather(*still, return_exceptions=True)
