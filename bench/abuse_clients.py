"""The abusers of bench/abuse.py, run in a process of their own (not a test).

bench/abuse.py starts `python -m bench.abuse_clients` for its abuse phase, writes the
configuration (JSON) to its stdin, waits for its `ready` line, runs the steady workload for the
same duration, and reads the tally (one JSON line) from its stdout at the end. Apart from the
measuring process, the abusers' own CPU (a 2-core machine: they compete with the gateway for
it) does not delay the steady workload's event loop, whose latencies are the measurement.

What runs at once, each until the duration is over (then every connection is aborted):

* follower waves: `followers` connections at a time, each `GET /jobs/{id}/log?follow=1` on
  its user's long-running job or `GET /events` (SSE; one in four from `-100`, the rest live),
  opened (at most `connect_concurrency` connecting at once), held `hold` seconds, then dropped
  abruptly (a fraction with an RST: SO_LINGER 0). A fraction (`idle_fraction`) never read:
  at the drop they only look at what already arrived (the status line, if any). The next wave
  opens when the last one is dropped. Raw asyncio streams.
* listers: closed loops of `GET /jobs?limit=<max page>` (aiohttp, one connector, limit=0),
  each answer read in full. They do not honour Retry-After: they are abusers.
* big submitters: submissions of a `true` script padded with a comment of random text to
  exactly the largest allowed script size, held (they never run), paced at `big_rate`/s; every
  tenth is one byte over the limit (a 413 is the right answer).
* slow-header clients: each sends a request's bytes one at a time, `slow_byte_s` apart, then
  reads the answer; when the gateway answers or closes first, that is noted with the time.
* slow readers: each asks for a maximum-size listing with a 4 KiB receive buffer and reads it at
  `slow_read_bps`, dropping it (RST) after `slow_read_hold` s, then again.

Every answer's status is counted per source (503 and 429 split by whether Retry-After came);
`failures` are the answers >= 500 other than a 503 with Retry-After. Client-side errors
(refused, reset, timeouts, the client's own aborts) are counted apart and are not failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import resource
import socket
import struct
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

HEAD_END = b"\r\n\r\n"
RCVBUF = 4096  # the slow readers' receive buffer (the kernel doubles it)


class Tally:
    """Answers by source and status; failures; client-side errors; other outcomes."""

    def __init__(self) -> None:
        self.statuses: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.failures: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.client_errors: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.samples: dict[str, str] = {}  # "source status": the first such answer's body

    def answer(self, source: str, status: int, retry_after: bool, body: bytes | None = None
               ) -> None:
        key = str(status)
        if status in (429, 503):
            key += " with Retry-After" if retry_after else " without Retry-After"
        self.statuses[source][key] += 1
        if status >= 500 and not (status == 503 and retry_after):
            self.failures[source][key] += 1
        if status >= 400 and body is not None:
            self.samples.setdefault(f"{source} {status}", body[:300].decode(errors="replace"))

    def error(self, source: str, e: BaseException | str) -> None:
        name = e if isinstance(e, str) else type(e).__name__
        self.client_errors[source][name] += 1

    def outcome(self, source: str, what: str, n: int = 1) -> None:
        self.outcomes[source][what] += n

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {s: dict(c) for s, c in sorted(getattr(self, k).items())}
                               for k in ("statuses", "failures", "client_errors", "outcomes")}
        out["samples"] = dict(sorted(self.samples.items()))
        return out

    def merge(self, data: dict[str, Any]) -> None:
        for k in ("statuses", "failures", "client_errors", "outcomes"):
            mine = getattr(self, k)
            for source, counts in data.get(k, {}).items():
                mine[source].update(counts)
        for key, body in data.get("samples", {}).items():
            self.samples.setdefault(key, body)


def request(method: str, path: str, host: str, token: str, *, accept: str = "*/*",
            body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: {accept}\r\nUser-Agent: scns-bench-abuse\r\n")
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_head(reader: asyncio.StreamReader, within_s: float
                    ) -> tuple[int, dict[str, str]] | None:
    """The answer's status and headers; None when none came within `within_s`.
    asyncio.IncompleteReadError when the server closed first."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(HEAD_END), max(within_s, 0.001))
    except TimeoutError:
        return None
    return parse_head(raw)


def scan_sockets(pid: int, port: int) -> dict[str, Any]:
    """The gateway's TCP sockets: clients (on its API port, by state) and the rest (its Redis
    and PostgreSQL connections); TIME_WAIT has no owner and is not counted. bench/abuse.py
    runs it in a process of its own: with thousands of sockets a scan takes a CPU-bound
    tenth of a second, which would delay the measuring event loop."""
    import psutil

    t = time.perf_counter()
    source = "the gateway process's sockets"
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.AccessDenied:  # not root, the gateway undumpable: its port tells
        source = "system-wide, by the gateway's port"
        conns = [c for c in psutil.net_connections(kind="tcp")
                 if c.laddr and c.laddr.port == port and c.status != "TIME_WAIT"]
    clients = [c for c in conns if c.laddr and c.laddr.port == port
               and c.status != psutil.CONN_LISTEN]
    return {"clients": len(clients), "clients_by_state": dict(Counter(c.status for c in clients)),
            "other": sum(1 for c in conns if c.laddr and c.laddr.port != port),
            "source": source, "scan_ms": round((time.perf_counter() - t) * 1000, 1)}


def quiet_worker() -> None:
    """A scan process ignores Ctrl-C: its parent ends it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """A whole small answer: status, headers and (up to 2 KiB of) its body."""
    raw = await reader.readuntil(HEAD_END)
    status, headers = parse_head(raw)
    length = min(int(headers.get("content-length", "0")), 2048)
    body = b""
    with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
        body = await asyncio.wait_for(reader.readexactly(length), 2.0)
    return status, headers, body


def abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    """Drop a connection at once; with `rst`, SO_LINGER 0 makes the close an RST."""
    if rst:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Config:
    host: str
    port: int
    duration_s: float
    tokens: list[dict[str, Any]]  # {token, user, follow_job}
    max_page: int
    max_script_bytes: int
    followers: int = 2000
    connect_concurrency: int = 128
    connect_timeout_s: float = 10.0
    hold_s: tuple[float, float] = (2.0, 6.0)
    idle_fraction: float = 0.3
    rst_fraction: float = 0.5
    sse_fraction: float = 0.5
    listers: int = 4
    big_rate: float = 2.0
    big_loops: int = 2
    slow_headers: int = 50
    slow_byte_s: float = 0.1
    slow_readers: int = 50
    slow_read_bps: int = 4096
    slow_read_hold_s: float = 15.0
    seed: int = 1


@dataclass
class Abusers:
    cfg: Config
    tally: Tally = field(default_factory=Tally)
    rng: random.Random = field(default_factory=random.Random)
    open_now: int = 0
    peak_open: int = 0
    opened: int = 0
    waves: int = 0
    bytes_read: Counter[str] = field(default_factory=Counter)
    listed_items: int | None = None
    server_closed_slow_headers_s: list[float] = field(default_factory=list)
    bodies: tuple[bytes, bytes] = (b"", b"")  # the big submissions' (fits, one byte over)
    session: aiohttp.ClientSession | None = None
    _next_big: float = 0.0

    @property
    def addr(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def token(self, i: int) -> dict[str, Any]:
        return self.cfg.tokens[i % len(self.cfg.tokens)]

    def _opened(self) -> None:
        self.open_now += 1
        self.opened += 1
        self.peak_open = max(self.peak_open, self.open_now)

    async def run(self) -> None:
        """Every abuser at once, for the duration; then every connection is dropped."""
        cfg = self.cfg
        self.rng.seed(cfg.seed)
        if not self.bodies[0]:
            self.bodies = self.big_bodies()
        jobs = [self.follow_waves()]
        jobs += [self.lister(j) for j in range(cfg.listers)]
        jobs += [self.big_submitter(j) for j in range(cfg.big_loops if cfg.big_rate > 0 else 0)]
        jobs += [self.slow_header_client(j) for j in range(cfg.slow_headers)]
        jobs += [self.slow_reader(j) for j in range(cfg.slow_readers)]
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(f"http://{self.addr}", connector=connector,
                                         timeout=timeout) as self.session:
            tasks = [asyncio.create_task(j) for j in jobs]
            await asyncio.sleep(cfg.duration_s)
            for t in tasks:
                t.cancel()
            # bounded: a connection stuck in the kernel must not keep the tally from the bench
            done, stuck = await asyncio.wait(tasks, timeout=10)
            for t in stuck:
                self.tally.outcome("abusers", f"{t.get_name()} did not end within 10 s of "
                                   "being cancelled")
        for t in done:
            r = t.exception() if not t.cancelled() else None
            if isinstance(r, Exception):
                self.tally.error("abuser-crashed", f"{type(r).__name__}: {r}")

    # --- (a) follow connections, in waves ---------------------------------------------------
    async def follow_waves(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.duration_s
        connecting = asyncio.Semaphore(self.cfg.connect_concurrency)
        while self.cfg.followers > 0 and end - loop.time() > self.cfg.hold_s[0] + 1.0:
            self.waves += 1
            await asyncio.gather(*(self.follower(i, connecting, end)
                                   for i in range(self.cfg.followers)))
            await asyncio.sleep(0.2)

    def _follow_target(self, i: int) -> tuple[str, str, str]:
        """(source, path, Accept) of follower i."""
        tok = self.token(i)
        if self.rng.random() < self.cfg.sse_fraction:
            path = "/api/v1/events" + ("?from=-100" if i % 4 == 0 else "")
            return "follow-sse", path, "text/event-stream"
        return "follow-log", f"/api/v1/jobs/{tok['follow_job']}/log?follow=1", "*/*"

    async def follower(self, i: int, connecting: asyncio.Semaphore, end: float) -> None:
        loop = asyncio.get_running_loop()
        source, path, accept = self._follow_target(i)
        idle = self.rng.random() < self.cfg.idle_fraction
        rst = self.rng.random() < self.cfg.rst_fraction
        try:
            async with connecting:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.cfg.host, self.cfg.port, limit=4096),
                    self.cfg.connect_timeout_s)
                writer.write(request("GET", path, self.addr, self.token(i)["token"],
                                     accept=accept))
        except (OSError, TimeoutError) as e:
            self.tally.error(source, f"connect: {type(e).__name__}")
            return
        self._opened()
        hold = min(self.rng.uniform(*self.cfg.hold_s), max(end - loop.time(), 0.1))
        try:
            if idle:
                await self._idle(source, reader, hold)
            else:
                await self._read_stream(source, reader, loop.time() + hold)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            self.tally.error(source, e)
        finally:
            abort(writer, rst)
            self.open_now -= 1
            self.tally.outcome(source, f"dropped by the client ({'RST' if rst else 'FIN'})")

    async def _idle(self, source: str, reader: asyncio.StreamReader, hold: float) -> None:
        """Read nothing while held; at the drop, only what already arrived."""
        await asyncio.sleep(hold)
        self.tally.outcome(source, "never read (slow client)")
        try:
            head = await read_head(reader, 0.01)
        except asyncio.IncompleteReadError:
            self.tally.outcome(source, "closed by the server before any answer")
            return
        if head is None:
            self.tally.outcome(source, "no answer had arrived at the drop")
        else:
            self.tally.answer(source, head[0], "retry-after" in head[1])

    async def _answer_head(self, source: str, reader: asyncio.StreamReader, until: float
                           ) -> tuple[int, dict[str, str]] | None:
        """The answer's status line and headers, tallied; None (with its outcome) when none
        came before `until`."""
        try:
            head = await read_head(reader, until - asyncio.get_running_loop().time())
        except asyncio.IncompleteReadError:
            self.tally.outcome(source, "closed by the server before any answer")
            return None
        if head is None:
            self.tally.outcome(source, "no answer within the hold")
            return None
        self.tally.answer(source, head[0], "retry-after" in head[1])
        return head

    async def _read_stream(self, source: str, reader: asyncio.StreamReader, until: float
                           ) -> None:
        loop = asyncio.get_running_loop()
        if await self._answer_head(source, reader, until) is None:
            return
        while (left := until - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                return
            if not chunk:
                self.tally.outcome(source, "ended by the server before the client dropped")
                return
            self.bytes_read[source] += len(chunk)

    # --- (b) maximum-size listings --------------------------------------------------------
    async def lister(self, j: int) -> None:
        url = f"/api/v1/jobs?limit={self.cfg.max_page}"
        headers = {"Authorization": f"Bearer {self.token(j)['token']}"}
        assert self.session is not None
        while True:
            try:
                async with self.session.get(url, headers=headers) as r:
                    body = await r.read()
                    self.tally.answer("list", r.status, "Retry-After" in r.headers, body)
                    self.bytes_read["list"] += len(body)
                    if r.status == 200 and self.listed_items is None:
                        self.listed_items = len(orjson.loads(body)["items"])
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                self.tally.error("list", e)
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.tally.outcome("list", "unanswered when the abuse ended")
                raise

    # --- (c) submissions of the largest allowed script ------------------------------------
    def big_bodies(self) -> tuple[bytes, bytes]:
        """A held `true` padded with a comment of random text to exactly the limit, and the
        same one byte over it."""
        head = "true\n# "
        n = self.cfg.max_script_bytes - len(head) - 1
        pad = base64.b64encode(os.urandom(n)).decode()[:n]
        script = head + pad + "\n"
        assert len(script.encode()) == self.cfg.max_script_bytes
        fits = orjson.dumps({"script": script, "hold": True, "name": "abuse-big"})
        over = orjson.dumps({"script": script + "#", "hold": True, "name": "abuse-big-over"})
        return fits, over

    async def big_submitter(self, j: int) -> None:
        loop = asyncio.get_running_loop()
        fits, over = self.bodies
        assert self.session is not None
        n = 0
        while True:
            now = loop.time()
            self._next_big = max(self._next_big, now - 1.0)  # a late loop does not burst
            due = self._next_big
            self._next_big += 1 / self.cfg.big_rate
            await asyncio.sleep(max(0.0, due - now))
            n += 1
            oversize = n % 10 == 0
            source = "big-submit-over-limit" if oversize else "big-submit"
            headers = {"Authorization": f"Bearer {self.token(j + n)['token']}",
                       "Content-Type": "application/json"}
            try:
                async with self.session.post("/api/v1/jobs", data=over if oversize else fits,
                                             headers=headers) as r:
                    self.tally.answer(source, r.status, "Retry-After" in r.headers,
                                      await r.read())
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                self.tally.error(source, e)
            except asyncio.CancelledError:
                self.tally.outcome(source, "unanswered when the abuse ended")
                raise

    # --- (d) slow clients -----------------------------------------------------------------
    async def slow_header_client(self, j: int) -> None:
        """Requests sent a byte at a time; what the gateway does about it."""
        source = "slow-headers"
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.rng.uniform(0, 2))  # not all in step
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.cfg.host, self.cfg.port),
                    self.cfg.connect_timeout_s)
            except (OSError, TimeoutError) as e:
                self.tally.error(source, f"connect: {type(e).__name__}")
                await asyncio.sleep(1.0)
                continue
            self._opened()
            tok = self.token(j)
            req = request("GET", f"/api/v1/jobs/{tok['follow_job']}", self.addr, tok["token"])
            answer = asyncio.create_task(read_answer(reader))
            started = loop.time()
            settled = False
            try:
                sent_all = await self._send_slowly(writer, req, answer)
                done, _ = await asyncio.wait([answer], timeout=10)
                settled = True
                self._slow_header_outcome(source, answer if done else None,
                                          loop.time() - started, cut=not sent_all)
            except OSError as e:
                settled = True
                self.tally.error(source, e)
            finally:
                if not settled:
                    self.tally.outcome(source, "still sending when the abuse ended")
                answer.cancel()
                abort(writer, rst=True)
                self.open_now -= 1

    async def _send_slowly(self, writer: asyncio.StreamWriter, req: bytes,
                           answer: asyncio.Task[Any]) -> bool:
        """Whether every byte went before the gateway answered or closed."""
        for k in range(len(req)):
            if answer.done():
                return False
            writer.write(req[k:k + 1])
            await writer.drain()
            await asyncio.sleep(self.cfg.slow_byte_s)
        return True

    def _slow_header_outcome(self, source: str, answer: asyncio.Task[Any] | None,
                             took: float, *, cut: bool) -> None:
        if answer is None:
            self.tally.outcome(source, "no answer 10 s after the last byte")
            return
        try:
            head = answer.result()
        except asyncio.IncompleteReadError:
            self.tally.outcome(source, "closed by the server without an answer")
            self.server_closed_slow_headers_s.append(took)
            return
        except (OSError, asyncio.LimitOverrunError) as e:
            self.tally.error(source, e)
            return
        self.tally.answer(source, head[0], "retry-after" in head[1], head[2])
        if cut:  # answered (a 408, say) before the request was whole
            self.tally.outcome(source, "answered by the server before the headers were whole")
            self.server_closed_slow_headers_s.append(took)
        else:
            self.tally.outcome(source, "request sent whole and answered")

    async def slow_reader(self, j: int) -> None:
        """A maximum-size listing read at `slow_read_bps` through a small receive buffer."""
        source = "slow-read"
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.rng.uniform(0, 2))
        tok = self.token(j)
        req = request("GET", f"/api/v1/jobs?limit={self.cfg.max_page}", self.addr, tok["token"])
        while True:
            try:
                reader, writer = await self._small_buffer_connection()
            except (OSError, TimeoutError) as e:
                self.tally.error(source, f"connect: {type(e).__name__}")
                await asyncio.sleep(1.0)
                continue
            self._opened()
            try:
                writer.write(req)
                await self._read_slowly(source, reader, loop.time() + self.cfg.slow_read_hold_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self.tally.error(source, e)
            except asyncio.CancelledError:
                self.tally.outcome(source, "still reading when the abuse ended")
                raise
            finally:
                abort(writer, rst=True)
                self.open_now -= 1

    async def _small_buffer_connection(self) -> tuple[asyncio.StreamReader,
                                                      asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (self.cfg.host, self.cfg.port)),
                                   self.cfg.connect_timeout_s)
            return await asyncio.open_connection(sock=sock, limit=1024)
        except BaseException:
            sock.close()
            raise

    async def _read_slowly(self, source: str, reader: asyncio.StreamReader, until: float
                           ) -> None:
        loop = asyncio.get_running_loop()
        if (head := await self._answer_head(source, reader, until)) is None:
            return
        length = int(head[1].get("content-length", "-1"))
        chunk = max(self.cfg.slow_read_bps // 10, 1)
        got = 0
        while (left := until - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(chunk), left)
            except TimeoutError:
                break
            if not data:
                self.tally.outcome(source, "read to the end" if got >= length >= 0
                                   else "closed by the server mid-answer")
                return
            got += len(data)
            self.bytes_read[source] += len(data)
            if got >= length >= 0:
                self.tally.outcome(source, "read to the end")
                return
            await asyncio.sleep(len(data) / self.cfg.slow_read_bps)
        self.tally.outcome(source, "dropped mid-answer by the client (RST)")

    def summary(self, cpu_s: float) -> dict[str, Any]:
        closed = sorted(self.server_closed_slow_headers_s)
        return {
            "tally": self.tally.as_json(), "waves": self.waves, "connections_opened":
            self.opened, "peak_open_connections": self.peak_open,
            "bytes_read": dict(self.bytes_read), "listed_items_per_page": self.listed_items,
            "slow_headers_cut_by_server_after_s": {
                "n": len(closed), "min": round(closed[0], 1) if closed else None,
                "max": round(closed[-1], 1) if closed else None},
            "cpu_s": round(cpu_s, 2),
        }


async def amain(cfg: Config) -> None:
    abusers = Abusers(cfg)
    abusers.bodies = abusers.big_bodies()
    print("ready", flush=True)
    started = time.monotonic()
    await abusers.run()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = abusers.summary(usage.ru_utime + usage.ru_stime)
    out["wall_s"] = round(time.monotonic() - started, 1)
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    sys.stdout.flush()
    os._exit(0)  # the tally is out: no event-loop shutdown to wait for (nor to hang in)


def main() -> int:
    raw = orjson.loads(sys.stdin.buffer.read())
    raw["hold_s"] = tuple(raw["hold_s"])
    cfg = Config(**raw)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(amain(cfg))  # writes the tally and exits
    except KeyboardInterrupt:
        return 130
    return 1  # not reached

if __name__ == "__main__":
    raise SystemExit(main())
