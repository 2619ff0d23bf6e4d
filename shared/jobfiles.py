"""Reading the files in a job's directory, which the job itself can change.

A job runs as a process that can write its own directory: it can replace `stdout` with a
directory, a FIFO or a symbolic link to a file it should not read through us, or write anything
into `status` and `pid`. So every read here opens relative to the directory without following
links (the directory itself included), refuses anything but a regular file, reads a bounded
amount and parses numbers strictly. A bad file is an answer ("unreadable"), never an exception
that could stop the task serving every other job of the worker.

When the job runs as another user than the reader (a root executor), a file whose content is
passed on (its output) must also belong to the job's user (`owner`): a hard link the job made
to a file of someone else's is then refused, not read with the reader's rights.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_SMALL = 64  # bytes of `status` or `pid` we ever look at
MAX_PID = 1 << 22  # Linux's pid_max ceiling
MAX_STATUS = 255


class NotRegular(OSError):
    """The path is not a regular file (a directory, FIFO, socket, device or a link)."""


class NotOwned(NotRegular):
    """The file does not belong to the job's user."""


def check_owner(fd: int, owner: int | None, path: object) -> None:
    if owner is not None and os.fstat(fd).st_uid != owner:
        raise NotOwned(f"{path} does not belong to the job's user")


def open_regular(jobdir: Path, name: str, *, owner: int | None = None) -> int:
    """A read-only descriptor of `jobdir/name`, which must be a regular file reached without
    following a symbolic link (and, with `owner`, belong to that uid); raises OSError
    (NotRegular) otherwise. The caller closes it."""
    dfd = os.open(jobdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # O_NONBLOCK: opening a FIFO a job put there must not wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"{jobdir / name} is not a regular file")
        check_owner(fd, owner, jobdir / name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(jobdir: Path, name: str, limit: int = MAX_SMALL) -> bytes | None:
    """Up to `limit` bytes of a small regular file; None when absent or not a regular file."""
    try:
        fd = open_regular(jobdir, name)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _number(text: bytes, *, low: int, high: int) -> int | None:
    value = text.strip()
    if not value or len(value) > 10 or not value.isdigit():
        return None
    n = int(value)
    return n if low <= n <= high else None


@dataclass(frozen=True, slots=True)
class Status:
    """The wrapper's record of a job's exit status: absent, a valid shell status (0-255), or
    present but unreadable (someone else wrote it)."""

    present: bool
    value: int | None

    @property
    def tampered(self) -> bool:
        return self.present and self.value is None


def read_status(jobdir: Path) -> Status:
    raw = read_small(jobdir, "status")
    if raw is None:
        return Status(present=False, value=None)
    return Status(present=True, value=_number(raw, low=0, high=MAX_STATUS))


def read_pids(jobdir: Path) -> tuple[int, int | None] | None:
    """(job pid, wrapper pid) as the wrapper recorded them; None when absent or malformed."""
    raw = read_small(jobdir, "pid")
    if raw is None:
        return None
    parts = raw.split()
    if not 1 <= len(parts) <= 2:
        return None
    child = _number(parts[0], low=2, high=MAX_PID)
    wrapper = _number(parts[1], low=2, high=MAX_PID) if len(parts) == 2 else None
    if child is None or (len(parts) == 2 and wrapper is None):
        return None
    return child, wrapper


def size_of(fd: int) -> int:
    with contextlib.suppress(OSError):
        return os.fstat(fd).st_size
    return 0
