"""A fault-injecting TCP proxy on loopback: network partitions for the chaos suite.

One proxy per (group of clients, upstream server): it listens on a free 127.0.0.1 port and
forwards every connection to the upstream port (Redis or PostgreSQL). The services of one group
(an executor, the scheduler) are given the proxy's port instead of the server's, so the driver
can cut that group off from that server while everything else keeps talking to it directly.

It runs its own event loop in its own thread, so that a busy driver loop (submitting, checking,
waiting on subprocesses) can never delay the forwarding and pass for a network fault itself.
Its controls are thread-safe and return once applied.

What a cut models, and why this way
-----------------------------------
`cut()` is a pulled cable between the group and the server, not a dead server:

* connections stay open and nothing crosses, in either direction. The proxy stops *reading*
  both sockets of every connection (`pause_reading`): what a client writes lands in the kernel's
  socket buffers (its `write()` succeeds, as it does until the send buffer fills in a real
  partition) and is not delivered; the server's answers stay in its buffers too, so reads get
  nothing. Nor does a close cross: a client that gives up and closes, or a server that dies,
  goes unnoticed on the other side (no FIN or RST gets through a pulled cable);
* new connections are accepted and held in the same silence, never connected upstream while
  the cut lasts. A real partition drops the SYN, so the client's connect hangs until its own
  timeout; on loopback the kernel completes the handshake of any listening socket whether or not
  we call accept() (the backlog), so silence after the handshake is the closest we can get, and
  it makes the client wait for a timeout either way (its connect or handshake timeout, e.g.
  Redis's HELLO/PING or PostgreSQL's startup message go unanswered). Refusing them instead
  (closing the listener: ECONNREFUSED at once) would model a server that is down and reachable,
  which fails fast and is much kinder than a partition.

`heal(mode)` ends it:

* "reset": every connection that existed during the cut is aborted on both sides (as when the
  connection state was lost: a NAT or firewall forgot it, a host rebooted); new ones forward
  normally. Clients see a reset or EOF on their next read and reconnect;
* "resume": forwarding starts again on the held connections: the bytes queued during the cut
  are delivered, late (as TCP retransmits them after a short partition), then any close that
  happened meanwhile. Held new connections are connected upstream now, their queued bytes
  (a startup message, a command) delivered. This is where stale requests from a cut-off
  process arrive after the cluster has moved on.

Counters (`stats()`): connections accepted and closed, held by a cut, reset and resumed by a
heal, bytes forwarded each way, cuts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
HealMode = Literal["reset", "resume"]


@dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted from clients
    upstream_failed: int = 0  # the upstream refused or was down: the client was closed
    closed: int = 0  # connections that ended (either side closed, or a reset)
    cuts: int = 0
    held: int = 0  # connections open while a cut started, or accepted during one
    held_new: int = 0  # of those, accepted during the cut (not yet connected upstream)
    reset: int = 0  # aborted by heal("reset")
    resumed: int = 0  # forwarded again by heal("resume")
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes to the other side."""

    def __init__(self, conn: _Conn, upstream: bool) -> None:
        self.conn = conn
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.peer_full = False  # the other side's write buffer is full: stop reading
        self.reading = True

    # --- reading is paused by a cut, by back pressure, or until the upstream is connected --
    def update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        want = not (self.conn.proxy.is_cut_for(self.conn) or self.peer_full
                    or self.conn.connecting)
        if want and not self.reading:
            t.resume_reading()
        elif not want and self.reading:
            t.pause_reading()
        self.reading = want

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.update_reading()

    def data_received(self, data: bytes) -> None:
        other = self.conn.other(self)
        if other is None or other.transport is None or other.transport.is_closing():
            return
        other.transport.write(data)
        stats = self.conn.proxy.stats_
        if self.upstream:
            stats.bytes_down += len(data)
        else:
            stats.bytes_up += len(data)

    def eof_received(self) -> bool | None:
        self.conn.close()  # closes the other side after flushing what it was given
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()

    # --- back pressure: the other side reads no more than this side can write -------------
    def pause_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None:
            other.peer_full = True
            other.update_reading()

    def resume_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None:
            other.peer_full = False
            other.update_reading()


class _Conn:
    """A client connection and, once connected, its upstream connection."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, upstream=False)
        self.server: _Side | None = None
        self.connecting = True  # the client is not read until the upstream is there
        self.dialled = False  # the upstream connection was asked for
        self.held_since_cut = 0  # the cut that held it (0: none); a cut counts from 1
        self.closed = False

    def other(self, side: _Side) -> _Side | None:
        return self.server if side is self.client else self.client

    def sides(self) -> list[_Side]:
        return [s for s in (self.client, self.server) if s is not None]

    def update(self) -> None:
        for s in self.sides():
            s.update_reading()

    def dial(self) -> None:
        if not self.dialled:
            self.dialled = True
            task = self.proxy.loop.create_task(self.connect_upstream())
            self.proxy.tasks.add(task)  # a reference, until it is done
            task.add_done_callback(self.proxy.tasks.discard)

    async def connect_upstream(self) -> None:
        try:
            _, side = await self.proxy.loop.create_connection(
                lambda: _Side(self, upstream=True), self.proxy.upstream_host,
                self.proxy.upstream_port)
        except OSError:
            self.proxy.stats_.upstream_failed += 1
            self.abort()
            return
        if self.closed:  # the client went away (or a reset) meanwhile
            if side.transport is not None:
                side.transport.abort()
            return
        self.server = side
        self.connecting = False
        self.update()

    def close(self) -> None:
        """An orderly close: what was already written is flushed."""
        self._end(abort=False)

    def abort(self) -> None:
        """Both sockets closed at once, buffers dropped (the peers see a reset or EOF)."""
        self._end(abort=True)

    def _end(self, *, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.conns.discard(self)
        self.proxy.stats_.closed += 1
        for s in self.sides():
            if s.transport is not None:
                (s.transport.abort if abort else s.transport.close)()


class FaultProxy:
    """See the module's docstring. `start()` before use, `stop()` after; `port` is where
    clients connect."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 name: str = "proxy") -> None:
        self.name = name
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.stats_ = ProxyStats()
        self.conns: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # --- life -------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name=f"fault-proxy-{self.name}")
        self._thread.start()
        self._call(self._listen)
        return self

    async def _listen(self) -> None:
        self._server = await self.loop.create_server(self._accept, "127.0.0.1", 0,
                                                     backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._close_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None
        if not self.loop.is_running():
            self.loop.close()

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.abort()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- controls (thread-safe) -------------------------------------------------------------
    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Partition: nothing crosses in either direction, connections are held open."""
        self._call(self._do_cut)

    def heal(self, mode: HealMode = "reset") -> None:
        """End the partition: "reset" aborts every connection held by it, "resume" delivers
        what was queued on them and forwards again."""
        if mode not in ("reset", "resume"):
            raise ValueError(f"heal mode must be 'reset' or 'resume', not {mode!r}")
        self._call(lambda: self._do_heal(mode))

    def stats(self) -> ProxyStats:
        return self._call(self._snapshot)

    async def _snapshot(self) -> ProxyStats:
        return ProxyStats(**self.stats_.as_dict())

    async def _do_cut(self) -> None:
        if self._cut:
            return
        self._cut = True
        self.stats_.cuts += 1
        for c in self.conns:
            c.held_since_cut = self.stats_.cuts
            self.stats_.held += 1
            c.update()

    async def _do_heal(self, mode: HealMode) -> None:
        if not self._cut:
            return
        self._cut = False
        held = [c for c in self.conns if c.held_since_cut == self.stats_.cuts]
        for c in held:
            c.held_since_cut = 0
            if mode == "reset":
                self.stats_.reset += 1
                c.abort()
            else:
                self.stats_.resumed += 1
                c.dial()  # accepted during the cut: its SYN "arrives" now
                c.update()

    def is_cut_for(self, conn: _Conn) -> bool:
        return self._cut

    # --- accepting --------------------------------------------------------------------------
    def _accept(self) -> _Side:
        conn = _Conn(self)
        self.conns.add(conn)
        self.stats_.accepted += 1
        if self._cut:
            conn.held_since_cut = self.stats_.cuts
            self.stats_.held += 1
            self.stats_.held_new += 1
        else:
            conn.dial()
        return conn.client

    # --- plumbing ---------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        """Run a coroutine on the proxy's loop and wait for it (from any thread but that one)."""
        if self._thread is None:
            raise RuntimeError(f"proxy {self.name} is not running")
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)
