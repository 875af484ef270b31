"""Peer links: non-blocking TCP connections between nodes on one channel (data or consensus).

One `PeerLinks` per worker and channel. It listens for the other nodes, connects out to each of them
(reconnecting with bounded back-off), greets with HELLO (refusing strangers: another cluster, an unknown
node id) and moves opaque bodies: `send(peer_id, body)` out on our connection to that peer, and every body
received from any peer to `on_message(peer_id, body)`. It runs inside the worker's selector loop: every
registered key's `data` is a callable taking the event mask.

Limits: each outgoing queue holds at most `outbuf_max_bytes`; past it the connection is dropped and
re-made (Raft resends what was lost), so a dead or slow peer never makes this process grow.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.peer import (
    Channel,
    Hello,
    PeerKind,
    PeerReader,
    decode_hello,
    encode_hello,
    encode_peer,
    encode_refused,
)

log = logging.getLogger("shmraft.net")

RECV_BYTES: Final = 256 * 1024
OUTBUF_MAX_BYTES_DEFAULT: Final = 64 * 1024 * 1024
RECONNECT_BACKOFF_MIN_MS: Final = 20
RECONNECT_BACKOFF_MAX_MS: Final = 1000
INBOUND_MAX: Final = 64  # inbound connections held at once (the members, plus strangers being refused)
HELLO_TIMEOUT_MS: Final = 2000  # an inbound connection that does not greet within this is dropped


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer_id: int  # 0 until an inbound peer has said HELLO
    outbound: bool
    reader: PeerReader
    out: bytearray = field(default_factory=bytearray)
    connected: bool = False
    greeted: bool = False
    opened_ms: float = 0.0


class PeerLinks:
    """Connections to and from the other members on one channel."""

    def __init__(self, sel: selectors.BaseSelector, *, cluster_id: str, node_id: int, channel: Channel,
                 bind: tuple[str, int], peers: dict[int, tuple[str, int]],
                 on_message: Callable[[int, memoryview], None], on_disconnect: Callable[[int], None],
                 outbuf_max_bytes: int = OUTBUF_MAX_BYTES_DEFAULT, body_max_bytes: int | None = None) -> None:
        self.sel = sel
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.channel = channel
        self.peers = dict(peers)
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.outbuf_max_bytes = outbuf_max_bytes
        self.body_max_bytes = body_max_bytes
        self._out: dict[int, _Conn] = {}
        self._inbound: set[_Conn] = set()
        self._retry_at_ms: dict[int, float] = {}
        self._backoff_ms: dict[int, float] = {}
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(bind)
        self.listener.listen(128)
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.refusals = 0

    # --- sending ---------------------------------------------------------------------------------------

    def send(self, peer_id: int, body: bytes | bytearray | memoryview) -> bool:
        """Queue one body for a peer. False when there is no usable connection (the caller's protocol retries)."""
        conn = self._out.get(peer_id)
        if conn is None:
            self._connect(peer_id)
            conn = self._out.get(peer_id)
            if conn is None:
                return False
        if len(conn.out) + len(body) > self.outbuf_max_bytes:
            log.warning("peer %d (%s): outgoing queue over %d bytes, dropping the connection",
                        peer_id, self.channel.name, self.outbuf_max_bytes)
            self._close(conn)
            return False
        conn.out += encode_peer(PeerKind.RAFT, body)
        if conn.connected:
            self._flush(conn)
        return True

    def connected(self, peer_id: int) -> bool:
        conn = self._out.get(peer_id)
        return conn is not None and conn.connected

    def queued_bytes(self, peer_id: int) -> int:
        conn = self._out.get(peer_id)
        return len(conn.out) if conn else 0

    def maintain(self) -> None:
        """Called each loop: (re)connect to peers whose back-off has passed; drop silent inbound strangers."""
        now = _now_ms()
        for peer_id in self.peers:
            if peer_id not in self._out and now >= self._retry_at_ms.get(peer_id, 0.0):
                self._connect(peer_id)
        for conn in list(self._inbound):
            if not conn.greeted and now - conn.opened_ms > HELLO_TIMEOUT_MS:
                log.warning("%s channel: inbound connection sent no HELLO in %d ms, dropped",
                            self.channel.name, HELLO_TIMEOUT_MS)
                self._close(conn)

    def close(self) -> None:
        for conn in [*self._out.values(), *self._inbound]:
            self._close(conn, notify=False)
        try:
            self.sel.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.listener.close()

    # --- connection handling ----------------------------------------------------------------------------

    def _connect(self, peer_id: int) -> None:
        if _now_ms() < self._retry_at_ms.get(peer_id, 0.0):
            return
        host, port = self.peers[peer_id]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, peer_id, True, PeerReader(self.body_max_bytes or 1 << 20), opened_ms=_now_ms())
        conn.out += encode_hello(Hello(self.cluster_id, self.node_id, self.channel))
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._schedule_retry(peer_id)
            return
        self._out[peer_id] = conn
        self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, lambda mask: self._on_event(conn, mask))

    def _schedule_retry(self, peer_id: int) -> None:
        backoff = min(self._backoff_ms.get(peer_id, RECONNECT_BACKOFF_MIN_MS / 2) * 2, RECONNECT_BACKOFF_MAX_MS)
        self._backoff_ms[peer_id] = backoff
        self._retry_at_ms[peer_id] = _now_ms() + backoff

    def _accept(self, _mask: int) -> None:
        try:
            sock, _addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._inbound) >= INBOUND_MAX:
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, 0, False, PeerReader(self.body_max_bytes or 1 << 20), connected=True,
                     opened_ms=_now_ms())
        self._inbound.add(conn)
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._on_event(conn, mask))

    def _on_event(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            if not conn.connected:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._close(conn)
                    return
                conn.connected = True
                self._backoff_ms.pop(conn.peer_id, None)
            self._flush(conn)
        if mask & selectors.EVENT_READ:
            self._read(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del conn.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        try:
            self.sel.modify(conn.sock, want, self.sel.get_key(conn.sock).data)
        except (KeyError, ValueError):
            pass

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.reader.feed(data)
        try:
            while (item := conn.reader.next()) is not None:
                kind, body = item
                if not self._handle(conn, kind, body):
                    return
        except RemoteProtocolError as exc:
            who = f"peer {conn.peer_id}" if conn.peer_id else "unidentified peer"
            log.warning("%s channel: %s broke the peer protocol (%s); connection dropped",
                        self.channel.name, who, exc)
            self._close(conn)

    def _handle(self, conn: _Conn, kind: PeerKind, body: memoryview) -> bool:
        if kind is PeerKind.REFUSED:
            log.error("%s channel: peer %d refused us: %s", self.channel.name, conn.peer_id,
                      bytes(body).decode("utf-8", "replace"))
            self._close(conn)
            return False
        if kind is PeerKind.HELLO:
            hello = decode_hello(body)
            if conn.outbound:  # the acceptor's answer: we are in
                conn.greeted = True
                return True
            reason = self._refusal(hello)
            if reason:
                self.refusals += 1
                log.error("%s channel: refused a connection: %s", self.channel.name, reason)
                conn.out += encode_refused(reason)
                self._flush(conn)
                self._close(conn, notify=False)
                return False
            conn.peer_id = hello.node_id
            conn.greeted = True
            conn.out += encode_hello(Hello(self.cluster_id, self.node_id, self.channel))
            self._flush(conn)
            return True
        if not conn.outbound and not conn.greeted:
            raise RemoteProtocolError("peer kind", "HELLO first", kind.name)
        self.on_message(conn.peer_id, body)
        return True

    def _refusal(self, hello: Hello) -> str:
        if hello.cluster_id != self.cluster_id:
            return f"cluster id: expected {self.cluster_id!r}, got {hello.cluster_id!r}"
        if hello.node_id not in self.peers:
            return f"node id: expected one of {sorted(self.peers)}, got {hello.node_id}"
        if hello.channel != self.channel:
            return f"channel: expected {self.channel.name}, got {hello.channel.name}"
        return ""

    def _close(self, conn: _Conn, notify: bool = True) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if conn.outbound:
            if self._out.get(conn.peer_id) is conn:
                del self._out[conn.peer_id]
                self._schedule_retry(conn.peer_id)
        else:
            self._inbound.discard(conn)
        if notify and conn.peer_id and conn.greeted:
            self.on_disconnect(conn.peer_id)


def _now_ms() -> float:
    return time.monotonic() * 1000.0
