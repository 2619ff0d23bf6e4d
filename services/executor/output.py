"""Shipping a job's output from its own `--output` / `--error` files.

shared/output.py ships `$jobdir/stdout` and `$jobdir/stderr`. A job with `--output` or
`--error` writes that stream straight into its own file instead (scripts.py): its tail
(`JobTail.sources`) names those files, and `JobOutputShipper` reads them, with the same
cursors, cap and truncation note, so the log API serves exactly the bytes in the user's file.
A stream not named there is read from the job directory as before.

Such a file lies outside the job directory, wherever the job may write, and the executor reads
it with its own rights, by path. So it is opened without following a final symbolic link (and
without waiting on a FIFO); it must be a regular file, never a /proc one (through a directory
link the job planted, /proc/self would be the executor's), and it must stay the file first read
(same device and inode). A job that replaces it with anything else gets a note in its log and
no more of that stream shipped; no other job is affected. When the job runs as another user than
the executor (a root executor: privilege.py), the file must also belong to that user (the tail's
`owner`), in its own directory as elsewhere: through a directory it swapped for a link, or a hard
link it made, a job would otherwise have us ship a file only root may read.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from shared.jobfiles import NotOwned, NotRegular, check_owner, open_regular
from shared.output import OutputShipper, Tail, _Cursor


@dataclass(slots=True)
class JobTail(Tail):
    """A tail whose streams may come from the job's own files."""

    sources: dict[str, str] = field(default_factory=dict)  # stream -> absolute path
    pinned: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (dev, ino)
    owner: int | None = None  # the uid its files must belong to (None: not checked)

    def use_job_directory(self) -> None:
        """Ship both streams from the job directory (the wrapper wrote there instead)."""
        self.sources.clear()
        self.pinned.clear()
        self.cursors = {s: _Cursor() for s in ("stdout", "stderr")}


@functools.cache
def _proc_device() -> int | None:
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return None


def open_own(path: str, pinned: tuple[int, int] | None, owner: int | None = None
             ) -> tuple[int, tuple[int, int]]:
    """A read-only descriptor of a job's output file and its (device, inode); raises OSError
    (NotRegular for a file we will not read). The caller closes the descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or st.st_dev == _proc_device():
            raise NotRegular(f"{path} is not a regular file")
        if pinned is not None and ident != pinned:
            raise NotRegular(f"{path} was replaced")
        check_owner(fd, owner, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, ident


class JobOutputShipper(OutputShipper):
    """Reads a stream from the job's own file when its tail names one (pinned to the file
    first read), else from the job directory."""

    def _open(self, tail: Tail, name: str) -> tuple[int, Path]:
        if not isinstance(tail, JobTail):
            return super()._open(tail, name)
        if name not in tail.sources:
            return open_regular(tail.jobdir, name, owner=tail.owner), tail.jobdir / name
        fd, ident = open_own(tail.sources[name], tail.pinned.get(name), tail.owner)
        tail.pinned[name] = ident
        return fd, Path(tail.sources[name])

    def _unusable(self, tail: Tail, name: str, e: OSError) -> str:
        if isinstance(e, NotOwned):
            return (f"\n[scns: {name} of job {tail.job_id} is not a file of the job's user; "
                    "output stops here]\n")
        if not isinstance(tail, JobTail) or name not in tail.sources:
            return super()._unusable(tail, name, e)
        return (f"\n[scns: {name} of job {tail.job_id} cannot be read from "
                f"{tail.sources[name]} ({e.strerror or e}); output stops here]\n")
