"""Ship job output from the node's files to Redis, so the gateway can serve it from anywhere.

The files under the job directory are the complete record on the node. Redis gets a copy in
chunks (a stream per job attempt and output stream) up to SCNS_OUTPUT_CAP_BYTES, then a
truncation note; the copy expires SCNS_OUTPUT_TTL_S after the job ends. Long jobs are shipped as
they run (every second, only files that grew), short ones once at the end.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.jobfiles import open_regular, size_of
from shared.keys import Keys

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
CHUNK = 64 * 1024


@dataclass(slots=True)
class _Cursor:
    offset: int = 0
    shipped: int = 0
    truncated: bool = False
    broken: bool = False  # the job replaced its output file with something unreadable
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


@dataclass(slots=True)
class Tail:
    """Shipping state of one job attempt."""

    job_id: int
    attempt: int
    jobdir: Path
    cursors: dict[str, _Cursor] = field(default_factory=lambda: {s: _Cursor() for s in STREAMS})


class OutputShipper:
    def __init__(self, redis: Redis, keys: Keys, *, cap_bytes: int, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.cap_bytes = cap_bytes
        self.ttl_s = ttl_s

    async def ship(self, tail: Tail, *, final: bool = False) -> int:
        """Send what was written since the last call; returns bytes shipped."""
        chunks: list[tuple[str, str]] = []
        for name, cur in tail.cursors.items():
            chunks.extend((name, text) for text in self._read_new(tail, name, cur, final))
        if not chunks and (not final or not any(c.shipped for c in tail.cursors.values())):
            return 0  # nothing new; a job that never wrote anything leaves no keys behind
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, text in chunks:
                    pipe.xadd(self.keys.job_output(tail.job_id, tail.attempt, name), {"d": text})
                if final:
                    for name in STREAMS:
                        key = self.keys.job_output(tail.job_id, tail.attempt, name)
                        pipe.xadd(key, {"eof": "1"})
                        pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except RedisError as e:
            log.warning("could not ship output (it stays in %s): %s", tail.jobdir, e,
                        extra={"job_id": tail.job_id})
            return 0
        return sum(len(t) for _, t in chunks)

    async def reset(self, tail: Tail) -> None:
        """Forget what was shipped for this attempt (it will be shipped again from the files)."""
        with contextlib.suppress(RedisError):
            await self.redis.delete(*(self.keys.job_output(tail.job_id, tail.attempt, s)
                                      for s in STREAMS))

    def _read_new(self, tail: Tail, name: str, cur: _Cursor, final: bool) -> list[str]:
        """What was appended since the last call. The file is the job's to change: it is read
        without following links and only while it is a regular file (shared/jobfiles.py); once
        it is not, this stream says so and stops, and no other job is affected."""
        if cur.truncated or cur.broken:
            return []
        try:
            fd, path = self._open(tail, name)
        except FileNotFoundError:
            return []  # not written yet (or moved away by the job)
        except OSError as e:
            cur.broken = True
            log.warning("job %s's %s is unusable: %s", tail.job_id, name, e,
                        extra={"event": "output-unreadable", "job_id": tail.job_id})
            return [self._unusable(tail, name, e)]
        try:
            return self._read_fd(fd, path, cur, final)
        except OSError as e:
            cur.broken = True
            log.warning("could not read %s of job %s: %s", path, tail.job_id, e,
                        extra={"event": "output-unreadable", "job_id": tail.job_id})
            return []
        finally:
            os.close(fd)

    def _open(self, tail: Tail, name: str) -> tuple[int, Path]:
        """A read-only descriptor of the stream's file (the caller closes it) and its path.
        FileNotFoundError: nothing to read yet; another OSError: the file cannot be used."""
        return open_regular(tail.jobdir, name), tail.jobdir / name

    def _unusable(self, tail: Tail, name: str, e: OSError) -> str:
        """The note that ends a stream whose file the job made unusable."""
        return (f"\n[scns: {name} of job {tail.job_id} is no longer a regular file; output "
                "stops here]\n")

    def _read_fd(self, fd: int, path: Path, cur: _Cursor, final: bool) -> list[str]:
        out: list[str] = []
        size = size_of(fd)
        if size <= cur.offset:
            return out
        os.lseek(fd, cur.offset, os.SEEK_SET)
        while cur.offset < size:
            room = self.cap_bytes - cur.shipped
            if room <= 0:
                cur.truncated = True
                out.append(f"\n[scns: output truncated after {self.cap_bytes} bytes; the "
                           f"full file is {path} on the worker]\n")
                break
            data = os.read(fd, min(CHUNK, room, size - cur.offset))
            if not data:
                break
            cur.offset += len(data)
            cur.shipped += len(data)
            text = cur.decoder.decode(data, final=final and cur.offset >= size)
            if text:
                out.append(text)
        return out


async def read_output(redis: Redis, keys: Keys, *, job_id: int, attempt: int, stream: str,
                      after: str = "-") -> tuple[str, str, bool]:
    """(text, last entry id, eof) of what has been shipped, from `after` (exclusive)."""
    start = after if after == "-" else "(" + after
    entries = await redis.xrange(keys.job_output(job_id, attempt, stream), start, "+")
    text = "".join(f.get("d", "") for _, f in entries)
    eof = any(f.get("eof") == "1" for _, f in entries)
    last = entries[-1][0] if entries else after
    return text, last, eof
