"""An emulated network link in front of the sandbox's listeners (`--rtt-ms`, `--bandwidth-mbit`).

A TCP proxy: every listener of the site (core, and storage of `--redirect-downloads`) gets a
port of the link, and the site announces those. Bytes are forwarded, not interpreted, so TLS
handshakes pay their own round trips. What is emulated:

* latency: each byte arrives RTT/2 after it has left, in order;
* bandwidth: each direction is ONE link, shared by every connection: a chunk leaves when the
  link is free (`free_at`) and occupies it for its size / rate;
* the TCP handshake: a new connection's first byte leaves one RTT after the connect;
* a window: a connection-direction holds at most `window` bytes not yet acknowledged (an
  acknowledgement returns RTT/2 after delivery), then the sender is paused (backpressure).

Not emulated: loss, slow start, congestion control per connection (they share the link in
turns of up to a window each, not fairly packet by packet).

It runs in its own process (`python -m fwfs.sandbox.link`), so the site's HTTP threads and
its GIL do not slow the link, and the link's timers do not wait for the site. The process
exits when its stdin closes: a site that dies leaves no link behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from typing import IO

log = logging.getLogger("fwfs.sandbox.link")

# Slack above the bandwidth-delay product: timer lateness and whole chunks in the pipe. Small,
# because every byte of window beyond the pipe waits in the link's queue, in front of the
# other connections' bytes (bufferbloat).
WINDOW_SLACK = 2 << 20
UNLIMITED_WINDOW = 16 << 20  # no rate: latency only; 16 MiB per RTT is 400 MB/s at 40 ms
_EOF = b""  # a queued chunk of no bytes: the sender closed its side


@dataclass(frozen=True)
class LinkSpec:
    rtt_ms: float = 0.0
    bandwidth_mbit: float | None = None  # None: no limit, latency only

    @property
    def enabled(self) -> bool:
        return self.rtt_ms > 0 or bool(self.bandwidth_mbit)

    @property
    def rate(self) -> float | None:
        """Bytes per second, or None."""
        return self.bandwidth_mbit * 1e6 / 8 if self.bandwidth_mbit else None

    @property
    def window(self) -> int:
        """Bytes a connection may have in flight per direction: the bandwidth-delay product
        and a little (one connection fills the link), not more (few bytes queue)."""
        if self.rate is None:
            return UNLIMITED_WINDOW
        return int(self.rate * self.rtt_ms / 1000) + WINDOW_SLACK

    def announce(self) -> dict[str, float | None]:
        return {"rtt_ms": self.rtt_ms, "bandwidth_mbit": self.bandwidth_mbit}


class Direction:
    """One direction of the link, shared by all connections: serialises their bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: LinkSpec) -> None:
        self.loop = loop
        self.rate = spec.rate
        self.half_rtt = spec.rtt_ms / 2000
        self.free_at = 0.0

    def arrival(self, n: int, not_before: float) -> float:
        """When a chunk of n bytes, sent now, has fully arrived at the other end."""
        depart = max(self.loop.time(), self.free_at, not_before)
        self.free_at = depart + (n / self.rate if self.rate else 0.0)
        return self.free_at + self.half_rtt


class Half:
    """One direction of one connection: src's bytes, delayed, written to dst."""

    def __init__(
        self,
        conn: _Conn,
        direction: Direction,
        src: asyncio.Transport,
        window: int,
        not_before: float,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.loop = direction.loop
        self.src = src
        self.dst: asyncio.Transport | None = None
        self.window = window
        self.not_before = not_before
        self.queue: deque[tuple[float, bytes]] = deque()
        self.in_flight = 0  # queued, plus delivered but not yet acknowledged
        self.paused = False
        self.done = False

    def send(self, data: bytes) -> None:
        when = self.direction.arrival(len(data), self.not_before)
        self.queue.append((when, data))
        self.in_flight += len(data)
        self.loop.call_at(when, self.flush)
        self._throttle()

    def close(self) -> None:
        """src has closed (or half-closed) its side: pass that on after the bytes before it."""
        if not self.done:
            self.done = True
            self.send(_EOF)

    def flush(self) -> None:
        # Timers with equal deadlines may fire in any order: deliver every chunk that is due.
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            when, data = self.queue.popleft()
            dst = self.dst
            if dst is None or dst.is_closing():
                continue
            if not data:  # _EOF
                if dst.can_write_eof():
                    dst.write_eof()
                self.conn.check()
                continue
            dst.write(data)
            # From when it was due, not from now: a late timer (a busy machine) must not
            # shrink the window, or the link would run below its rate.
            self.loop.call_at(when + self.direction.half_rtt, self._acked, len(data))
        self._throttle()

    def _acked(self, n: int) -> None:
        self.in_flight -= n
        self._throttle()

    def _throttle(self) -> None:
        """Pause the sender while its window is full (bytes still in dst's buffer count)."""
        buffered = self.dst.get_write_buffer_size() if self.dst is not None else 0
        full = self.in_flight + buffered >= self.window
        if full and not self.paused and not self.src.is_closing():
            self.paused = True
            self.src.pause_reading()
        elif not full and self.paused and not self.src.is_closing():
            self.paused = False
            self.src.resume_reading()


SOCKET_BUFFER = 4 << 20
READ_SIZE = 1 << 20


def _tune(transport: asyncio.Transport) -> None:
    """Big kernel buffers and reads: the loop wakes per MiB, not per few KiB, which keeps
    the link's CPU low at 1 Gbit/s (bytes in kernel buffers are delivered, as a real
    receiver's kernel would hold them; the window counts the link's own bytes only)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    if hasattr(transport, "max_size"):  # asyncio's selector transports: bytes per recv()
        transport.max_size = READ_SIZE


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: its bytes go out through `out`."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.out: Half | None = None  # the direction this socket's bytes travel
        self.back: Half | None = None  # the direction that writes to this socket

    def data_received(self, data: bytes) -> None:
        if self.out is not None:
            self.out.send(data)

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.close()
        return True  # keep the other direction open: a client may half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out is not None:
            self.out.close()
        if self.back is not None:
            self.back.done = True  # nobody left to deliver to
            self.back.queue.clear()
        self.conn.check()

    def pause_writing(self) -> None:
        pass  # the window (which counts this buffer) pauses the sender instead

    def resume_writing(self) -> None:
        if self.back is not None:
            self.back._throttle()


class _Conn:
    """A client's connection and the site's socket it is forwarded to."""

    def __init__(self, link: Link, upstream: tuple[str, int]) -> None:
        self.link = link
        self.upstream = upstream
        self.client = _Client(self)
        self.site = _Side(self)

    def check(self) -> None:
        """Both directions closed and delivered: close both sockets."""
        halves = [self.client.out, self.site.out]
        if all(h is not None and h.done and not h.queue for h in halves):
            for side in (self.client, self.site):
                if side.transport is not None:
                    side.transport.close()
                    self.link.transports.discard(side.transport)

    def connected(self, transport: asyncio.Transport) -> None:
        link = self.link
        link.transports.add(transport)
        _tune(transport)
        self.client.transport = transport
        window = link.spec.window
        # The handshake: the client's first byte leaves one RTT after its connect.
        handshake = link.loop.time() + link.spec.rtt_ms / 1000
        self.client.out = Half(self, link.up, transport, window, handshake)
        transport.pause_reading()  # until the site's socket exists
        link.loop.create_task(self._connect(transport, window))

    async def _connect(self, transport: asyncio.Transport, window: int) -> None:
        link = self.link
        try:
            up, _ = await link.loop.create_connection(lambda: self.site, *self.upstream)
        except OSError as err:
            log.warning("link: cannot reach %s:%d: %s", *self.upstream, err)
            transport.close()
            return
        assert isinstance(up, asyncio.Transport)
        if transport.is_closing():
            up.close()
            return
        link.transports.add(up)
        _tune(up)
        self.site.transport = up
        self.site.out = Half(self, link.down, up, window, 0.0)
        self.site.out.dst = transport
        assert self.client.out is not None
        self.client.out.dst = up
        self.client.back, self.site.back = self.site.out, self.client.out
        transport.resume_reading()


class _Client(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.conn.connected(transport)


class Link:
    """The link's listeners: each forwards to its upstream through the shared directions."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.up = Direction(self.loop, spec)  # client -> site
        self.down = Direction(self.loop, spec)  # site -> client
        self.servers: list[asyncio.Server] = []
        self.transports: set[asyncio.Transport] = set()

    async def listen(self, host: str, port: int, upstream: tuple[str, int]) -> int:
        server = await self.loop.create_server(
            lambda: _Conn(self, upstream).client, host, port, reuse_address=True
        )
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for transport in list(self.transports):
            transport.abort()


async def _run(spec: LinkSpec, host: str, upstreams: list[tuple[int, str, int]]) -> None:
    link = Link(spec)
    ports = [await link.listen(host, port, (uh, up)) for port, uh, up in upstreams]
    sys.stdout.write(json.dumps({"ports": ports}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = link.loop
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def lifeline() -> None:
        # The site holds our stdin: EOF means it has gone, whatever the way it went.
        if not os.read(0, 4096):
            stop.set()

    loop.add_reader(0, lifeline)
    await stop.wait()
    loop.remove_reader(0)
    link.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fwfs.sandbox.link")
    p.add_argument("--rtt-ms", type=float, default=0.0)
    p.add_argument("--bandwidth-mbit", type=float)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--forward",
        action="append",
        default=[],
        metavar="PORT=HOST:PORT",
        help="listen on PORT (0: any), forward to HOST:PORT; prints {ports} once listening",
    )
    args = p.parse_args(argv)
    upstreams = []
    for item in args.forward:
        port, _, target = item.partition("=")
        uhost, _, uport = target.rpartition(":")
        upstreams.append((int(port), uhost, int(uport)))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    asyncio.run(_run(LinkSpec(args.rtt_ms, args.bandwidth_mbit), args.host, upstreams))
    return 0


class LinkProcess:
    """The link as a child process of the site; `stop()` (or the site's death) ends it."""

    def __init__(self, spec: LinkSpec, host: str, forwards: list[tuple[int, str, int]]) -> None:
        argv = [sys.executable, "-m", "fwfs.sandbox.link", "--rtt-ms", str(spec.rtt_ms)]
        if spec.bandwidth_mbit:
            argv += ["--bandwidth-mbit", str(spec.bandwidth_mbit)]
        argv += ["--host", host]
        for port, uhost, uport in forwards:
            argv += ["--forward", f"{port}={uhost}:{uport}"]
        self.spec = spec
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the link emulator exited with {code} before listening")
        self.ports: list[int] = json.loads(line)["ports"]

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
