"""A fault-injecting TCP proxy: one thread with a selector loop, any number of links, faults changed at run time.

A *link* is a listening port that forwards every connection it accepts to one target address (the campaign
uses one link per (source node, destination node, channel)). Per link, `LinkFaults` says:

- `delay_ms`: every chunk of bytes is held this long before it is passed on, in each direction (so a round
  trip grows by twice this); order is kept.
- `bandwidth_bytes_per_s`: a token bucket per direction (burst BANDWIDTH_BURST_S worth of bytes); 0 = no limit.
- `loss_rate`: bytes are never dropped out of a TCP stream (that would break the framing and test nothing a
  real network does: TCP retransmits). Loss shows up the way TCP shows it: each chunk, with probability
  `loss_rate`, stalls its direction for LOSS_STALL_MS (a retransmission timeout; later bytes wait behind it),
  and with probability `loss_rate * LOSS_RESET_SHARE` the connection is reset (RST on both sides), as when
  retransmissions give up or a middlebox drops state.
- `blackhole`: nothing moves: no byte is read or written on the link's connections, and a new connection is
  accepted but not connected on until the blackhole is lifted (a dead path, not a refused one).

`reset_link(name)` resets every connection of a link now. Buffers are bounded: a direction holds at most
`buffer_bytes_max` (reading from its source stops until it drains), and a link holds at most
CONNECTIONS_PER_LINK_MAX connections (more are refused by closing them).
"""

from __future__ import annotations

import contextlib
import errno
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

# the proxy's sockets give up on a dead path as the nodes' own do; else a partition behind the proxy would
# leave the node's side alive (the proxy acknowledges its bytes) and recovery would wait on TCP's
# retransmission back-off, which no real path imposes on a node that drops dead connections
from shmraft.net.links import tune_peer_socket as _tune

FORWARD_CHUNK_BYTES: Final = 64 * 1024
BUFFER_BYTES_MAX_DEFAULT: Final = 1024 * 1024  # per direction of a connection
CONNECTIONS_PER_LINK_MAX: Final = 64
LOSS_STALL_MS: Final = 200.0  # Linux's minimum retransmission timeout
LOSS_RESET_SHARE: Final = 0.05  # share of loss events that reset the connection instead of stalling it
BANDWIDTH_BURST_S: Final = 0.02  # token bucket depth, in seconds of the link's rate
LOOP_TICK_S: Final = 0.05  # longest the loop sleeps without an event (settings are re-read at least this often)
CONNECT_TIMEOUT_S: Final = 5.0  # an onward connection not made in this time is given up (both sides closed)


@dataclass(frozen=True)
class LinkFaults:
    """What a link does to its traffic; the default is a clean link."""

    delay_ms: float = 0.0
    loss_rate: float = 0.0
    bandwidth_bytes_per_s: float = 0.0
    blackhole: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay_ms <= 60_000:
            raise ValueError(f"delay_ms: expected 0..60000, got {self.delay_ms}")
        if not 0.0 <= self.loss_rate <= 1.0:
            raise ValueError(f"loss_rate: expected 0..1, got {self.loss_rate}")
        if self.bandwidth_bytes_per_s < 0:
            raise ValueError(f"bandwidth_bytes_per_s: expected >= 0 (0 = unlimited), got {self.bandwidth_bytes_per_s}")


CLEAN: Final = LinkFaults()


@dataclass
class LinkStats:
    connections: int = 0
    bytes_forwarded: int = 0
    resets: int = 0
    stalls: int = 0
    refused: int = 0


@dataclass(eq=False)
class _Direction:
    src: socket.socket
    dst: socket.socket
    queue: deque = field(default_factory=deque)  # [due monotonic s, bytearray]
    queued_bytes: int = 0
    eof: bool = False  # the source has closed its sending side
    shut: bool = False  # ...and we passed that on after draining
    tokens: float = 0.0
    refill_at: float = 0.0
    last_due: float = 0.0
    want_write: bool = False  # the last send would have blocked: wake on writable


@dataclass(eq=False)
class _Pair:
    link: _Link
    client: socket.socket
    upstream: socket.socket | None = None
    connected: bool = False
    connect_started: float = 0.0
    up: _Direction | None = None  # client -> target
    down: _Direction | None = None  # target -> client


@dataclass(eq=False)
class _Link:
    name: str
    listener: socket.socket
    target: tuple[str, int]
    faults: LinkFaults = CLEAN
    pairs: set[_Pair] = field(default_factory=set)
    stats: LinkStats = field(default_factory=LinkStats)


class FaultProxy:
    """The proxy. `add_link` before or after `start()`; `set_faults`/`reset_link` at any time from any thread."""

    def __init__(self, seed: int | None = None, buffer_bytes_max: int = BUFFER_BYTES_MAX_DEFAULT) -> None:
        self.rng = random.Random(seed)
        self.buffer_bytes_max = buffer_bytes_max
        self._sel = selectors.DefaultSelector()
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()
        self._pending_resets: list[str] = []
        self._new_links: list[_Link] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # --- control (any thread) -----------------------------------------------------------------------------------

    def add_link(self, name: str, listen: tuple[str, int], target: tuple[str, int]) -> int:
        """Listen on `listen` (port 0: any free port) and forward to `target`; returns the port listened on."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(listen)
        except OSError:
            sock.close()
            raise
        sock.listen(CONNECTIONS_PER_LINK_MAX)
        sock.setblocking(False)
        link = _Link(name, sock, target)
        with self._lock:
            if name in self._links:
                sock.close()
                raise ValueError(f"link name: expected a new name, got {name!r} (already a link)")
            self._links[name] = link
            self._new_links.append(link)  # registered by the loop's thread
        self._wake()
        return sock.getsockname()[1]

    def links(self) -> list[str]:
        with self._lock:
            return list(self._links)

    def set_faults(self, name: str, faults: LinkFaults) -> None:
        with self._lock:
            self._links[name].faults = faults
        self._wake()

    def update_faults(self, name: str, **changes: float | bool) -> LinkFaults:
        with self._lock:
            link = self._links[name]
            link.faults = replace(link.faults, **changes)
            out = link.faults
        self._wake()
        return out

    def faults(self, name: str) -> LinkFaults:
        with self._lock:
            return self._links[name].faults

    def clear(self) -> None:
        """Every link clean again."""
        with self._lock:
            for link in self._links.values():
                link.faults = CLEAN
        self._wake()

    def reset_link(self, name: str) -> None:
        """Reset (RST) every open connection of the link, from the proxy's thread."""
        with self._lock:
            if name not in self._links:
                raise KeyError(name)
            self._pending_resets.append(name)
        self._wake()

    def stats(self, name: str) -> LinkStats:
        with self._lock:
            return replace(self._links[name].stats)

    def open_connections(self, name: str) -> int:
        with self._lock:
            return len(self._links[name].pairs)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
        for link in list(self._links.values()):
            for pair in list(link.pairs):
                self._close_pair(pair, reset=False)
            with contextlib.suppress(KeyError, ValueError, RuntimeError):
                self._sel.unregister(link.listener)
            link.listener.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # --- the loop (proxy thread) ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._apply_resets()
                with self._lock:
                    fresh, self._new_links = self._new_links, []
                for link in fresh:
                    self._sel.register(link.listener, selectors.EVENT_READ, link)
                timeout = self._pump_all(now)
                self._update_interest()
                for key, mask in self._sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_r.recv(4096)
                    elif isinstance(key.data, _Link):
                        self._accept(key.data)
                    else:
                        pair, sock = key.data
                        if pair.link.pairs and pair in pair.link.pairs:
                            self._on_event(pair, sock, mask)
        except BaseException as exc:  # recorded for the owner; the proxy stops forwarding
            self.error = exc
            raise

    def _apply_resets(self) -> None:
        with self._lock:
            names, self._pending_resets = self._pending_resets, []
        for name in names:
            link = self._links[name]
            for pair in list(link.pairs):
                link.stats.resets += 1
                self._close_pair(pair, reset=True)

    def _accept(self, link: _Link) -> None:
        try:
            sock, _ = link.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(link.pairs) >= CONNECTIONS_PER_LINK_MAX:
            link.stats.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        _tune(sock)
        pair = _Pair(link, sock)
        link.pairs.add(pair)
        link.stats.connections += 1
        self._sel.register(sock, selectors.EVENT_READ, (pair, sock))
        if not link.faults.blackhole:
            self._connect_upstream(pair)

    def _connect_upstream(self, pair: _Pair) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        _tune(up)
        err = up.connect_ex(pair.link.target)
        if err not in (0, errno.EINPROGRESS):
            up.close()
            self._close_pair(pair, reset=True)
            return
        pair.upstream = up
        pair.connect_started = time.monotonic()
        pair.up = _Direction(pair.client, up)
        pair.down = _Direction(up, pair.client)
        self._sel.register(up, selectors.EVENT_WRITE, (pair, up))

    def _on_event(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if sock is pair.upstream and not pair.connected:
            if not mask & selectors.EVENT_WRITE:
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close_pair(pair, reset=True)
                return
            pair.connected = True
        if pair.link.faults.blackhole:
            return
        if mask & selectors.EVENT_READ:
            direction = pair.up if sock is pair.client else pair.down
            if direction is not None:
                self._read(pair, direction)

    def _read(self, pair: _Pair, d: _Direction) -> None:
        try:
            data = d.src.recv(min(FORWARD_CHUNK_BYTES, max(1, self.buffer_bytes_max - d.queued_bytes)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_pair(pair, reset=True)
            return
        if not data:
            d.eof = True
            return
        faults = pair.link.faults
        now = time.monotonic()
        due = now + faults.delay_ms / 1000.0
        if faults.loss_rate and self.rng.random() < faults.loss_rate:
            if self.rng.random() < LOSS_RESET_SHARE:
                pair.link.stats.resets += 1
                self._close_pair(pair, reset=True)
                return
            pair.link.stats.stalls += 1
            due += LOSS_STALL_MS / 1000.0
        due = max(due, d.last_due)  # a stream keeps its order
        d.last_due = due
        d.queue.append([due, bytearray(data)])
        d.queued_bytes += len(data)

    def _pump_all(self, now: float) -> float:
        """Send what is due on every connection; returns how long the loop may sleep."""
        timeout = LOOP_TICK_S
        with self._lock:
            links = list(self._links.values())
        for link in links:
            if link.faults.blackhole:
                continue
            for pair in list(link.pairs):
                if pair.upstream is None:
                    self._connect_upstream(pair)
                    continue
                if not pair.connected:
                    if now - pair.connect_started > CONNECT_TIMEOUT_S:
                        self._close_pair(pair, reset=True)
                    continue
                for d in (pair.up, pair.down):
                    wait = self._pump(pair, d, now)
                    if pair not in link.pairs:
                        break
                    timeout = min(timeout, wait)
                if pair in link.pairs and pair.up.shut and pair.down.shut:
                    self._close_pair(pair, reset=False)
        return max(0.0, timeout)

    def _pump(self, pair: _Pair, d: _Direction, now: float) -> float:
        rate = pair.link.faults.bandwidth_bytes_per_s
        d.want_write = False
        while d.queue:
            due, chunk = d.queue[0]
            if due > now:
                return due - now
            allowed = len(chunk)
            if rate:
                burst = max(rate * BANDWIDTH_BURST_S, 1024.0)
                d.tokens = min(burst, d.tokens + (now - d.refill_at) * rate)
                d.refill_at = now
                if d.tokens < 1.0:
                    return (1.0 - d.tokens) / rate
                allowed = min(allowed, int(d.tokens))
            try:
                n = d.dst.send(memoryview(chunk)[:allowed])
            except (BlockingIOError, InterruptedError):
                d.want_write = True  # the selector wakes us when writable
                return LOOP_TICK_S
            except OSError:
                self._close_pair(pair, reset=True)
                return LOOP_TICK_S
            if rate:
                d.tokens -= n
            pair.link.stats.bytes_forwarded += n
            d.queued_bytes -= n
            if n == len(chunk):
                d.queue.popleft()
            else:
                del chunk[:n]
                if not rate or d.tokens >= 1.0:
                    d.want_write = True
                    return LOOP_TICK_S
        if d.eof and not d.shut:
            d.shut = True
            with contextlib.suppress(OSError):
                d.dst.shutdown(socket.SHUT_WR)
        return LOOP_TICK_S

    def _update_interest(self) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            for pair in link.pairs:
                black = link.faults.blackhole
                for sock, out, inn in ((pair.client, pair.up, pair.down), (pair.upstream, pair.down, pair.up)):
                    if sock is None:
                        continue
                    if sock is pair.upstream and not pair.connected:
                        mask = selectors.EVENT_WRITE
                    elif black:
                        mask = 0
                    else:
                        mask = 0
                        if out is None or (not out.eof and out.queued_bytes < self.buffer_bytes_max):
                            mask |= selectors.EVENT_READ
                        if out is None:  # no onward connection yet: leave the client's bytes in its socket
                            mask = 0
                        if inn is not None and inn.want_write:
                            mask |= selectors.EVENT_WRITE
                    self._set_mask(sock, mask, (pair, sock))

    def _set_mask(self, sock: socket.socket, mask: int, data: object) -> None:
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if mask:
                self._sel.register(sock, mask, data)
            return
        if mask == 0:
            self._sel.unregister(sock)
        elif key.events != mask:
            self._sel.modify(sock, mask, data)

    def _close_pair(self, pair: _Pair, reset: bool) -> None:
        pair.link.pairs.discard(pair)
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
