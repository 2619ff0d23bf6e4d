"""One exception root for the whole system, with meaningful subclasses."""

from __future__ import annotations


class ConductorError(Exception):
    """Root of every error SCNS Conductor raises on purpose."""


class ConfigError(ConductorError):
    """A setting is missing or invalid; the message names the variable and the rule."""


class InfraError(ConductorError):
    """Redis or PostgreSQL could not be reached or started."""


class PreflightError(ConductorError):
    """A datastore is set up in a way we refuse to run on (shared/preflight.py); the message
    says what to change. Entry points exit with status 78 (EX_CONFIG) on it, no traceback."""


class EventDecodeError(ConductorError):
    """A stream entry could not be decoded into a known event (poison message)."""


class InvalidTransition(ConductorError):
    """A job state change that the state machine does not allow."""


class WorkerIdConflict(ConductorError):
    """Another live process on a different host holds this worker id."""


class NotFound(ConductorError):
    """The requested object does not exist."""


class IdempotencyConflict(ConductorError):
    """An idempotency key was sent again with a different request than the one it first made."""


class NotAllowed(ConductorError):
    """The caller may not do this (a role or an ownership rule says no)."""


class Unsatisfiable(ConductorError):
    """A request no worker of this cluster could ever satisfy."""


class PoolBusy(InfraError, TimeoutError):
    """No PostgreSQL connection came free within the pool's acquire timeout: the pool is
    exhausted (or PostgreSQL is slow to accept a new connection). A TimeoutError, so every
    "retry later" path (shared/db UNAVAILABLE) treats it as one; the gateway answers 503 with
    Retry-After."""
