"""Ship job output from the node's files to Redis, so the gateway can serve it from anywhere.

The files under the job directory are the complete record on the node. Redis gets a copy in
chunks (a stream per job attempt and output stream). Long jobs are shipped as they run (every
second, only files that grew), short ones once at the end.

What Redis holds is bounded, whatever the job does and whatever becomes of its executor:
- Size: each stream is charged the UTF-8 bytes of every entry (what Redis stores, so undecodable
  bytes shown as U+FFFD count three times) plus ENTRY_COST for the entry itself; at
  SCNS_OUTPUT_CAP_BYTES it ends with a truncation note. A job printing one byte a second thus
  cannot pile up millions of entries: a stream has at most cap / (ENTRY_COST + 1) data entries,
  then the note and the end-of-file entry.
- Time: the keys get SCNS_OUTPUT_TTL_S with their first entry, in the same transaction, and the
  TTL is renewed by every ship that writes and, for a quiet running job, every quarter TTL. An
  attempt whose executor vanished leaves keys that expire on their own; a finished one keeps its
  output for the TTL after the end.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.jobfiles import open_regular, size_of
from shared.keys import Keys

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
CHUNK = 64 * 1024
# What a stream entry costs Redis besides its text (entry id, listpack and radix-tree nodes):
# measured at 17-30 bytes for short lines and ~90 for 1 KiB ones on Redis 7 with the default
# stream-node-max-* settings. Charged against the cap so that the number of entries is bounded.
ENTRY_COST = 64


@dataclass(slots=True)
class _Cursor:
    offset: int = 0
    charged: int = 0  # bytes counted against the cap: entries' UTF-8 text + ENTRY_COST each
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
    # When (shipper's clock) the keys' TTL was last set; None while nothing was written.
    ttl_set_at: float | None = None


class OutputShipper:
    def __init__(self, redis: Redis, keys: Keys, *, cap_bytes: int, ttl_s: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.keys = keys
        self.cap_bytes = cap_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        # A quiet running job's keys are renewed this often, well before they could expire.
        self.renew_s = ttl_s / 4

    async def ship(self, tail: Tail, *, final: bool = False) -> int:
        """Send what was written since the last call; returns bytes shipped.

        Entries and the TTL of both keys go in one transaction: a key never exists without its
        TTL, even when the executor dies between two commands."""
        chunks: list[tuple[str, str]] = []
        for name, cur in tail.cursors.items():
            chunks.extend((name, text) for text in self._read_new(tail, name, cur, final))
        now = self.clock()
        if not chunks and not self._renewal_due(tail, now, final):
            return 0  # nothing new; a job that never wrote anything leaves no keys behind
        keys = [self.keys.job_output(tail.job_id, tail.attempt, name) for name in STREAMS]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, text in chunks:
                    pipe.xadd(self.keys.job_output(tail.job_id, tail.attempt, name), {"d": text})
                for key in keys:
                    if final:
                        pipe.xadd(key, {"eof": "1"})
                    pipe.expire(key, self.ttl_s)  # a no-op on a stream never written
                await pipe.execute()
        except RedisError as e:
            log.warning("could not ship output (it stays in %s): %s", tail.jobdir, e,
                        extra={"event": "output-ship-failed", "job_id": tail.job_id})
            return 0
        tail.ttl_set_at = now
        return sum(len(t) for _, t in chunks)

    def _renewal_due(self, tail: Tail, now: float, final: bool) -> bool:
        """With nothing new to send: whether to write anyway (the end-of-file entries, or a
        running job's TTL renewal). Never for an attempt that never had anything to ship."""
        if final:
            return tail.ttl_set_at is not None or any(c.charged for c in tail.cursors.values())
        return tail.ttl_set_at is not None and now - tail.ttl_set_at >= self.renew_s

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
        """New text, one entry per read, while the cap has room; then the truncation note."""
        out: list[str] = []
        size = size_of(fd)
        if size <= cur.offset:
            return out
        os.lseek(fd, cur.offset, os.SEEK_SET)
        while cur.offset < size and not cur.truncated:
            room = self.cap_bytes - cur.charged - ENTRY_COST
            if room <= 0:
                cur.truncated = True  # more to come and no room for it
                break
            data = os.read(fd, min(CHUNK, room, size - cur.offset))
            if not data:
                break
            cur.offset += len(data)
            encoded = cur.decoder.decode(data, final=final and cur.offset >= size).encode()
            if len(encoded) > room:
                # replacement characters made it longer than the bytes read: keep what fits
                encoded = encoded[:room].decode(errors="ignore").encode()
                cur.truncated = True
            if encoded:
                cur.charged += len(encoded) + ENTRY_COST
                out.append(encoded.decode())
        if cur.truncated:
            out.append(f"\n[scns: output truncated here, SCNS_OUTPUT_CAP_BYTES={self.cap_bytes} "
                       f"reached; the full file is {path} on the worker]\n")
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
