"""What every service's entry point shares: the event loop, signals, supervised tasks."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def run(main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run `main` on uvloop when available and return its exit code."""
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
