"""Peer links: non-blocking TCP (optionally TLS) connections between nodes on one channel (data or consensus).

One `PeerLinks` per worker and channel. It listens for the other nodes, connects out to each of them
(reconnecting with bounded back-off), authenticates every connection both ways with the cluster secret
(HELLO / CHALLENGE / PROOF / WELCOME, shmraft/wire/peer.py; MACs in shmraft/net/auth.py) and only then moves
opaque bodies: `send(peer_id, body)` out on our connection to that peer, and every body received from any
authenticated peer to `on_message(peer_id, body)`. Strangers (another cluster, an unknown node id, a wrong
secret, garbage) are refused with a REFUSED reason, logged on both sides, and counted in `refusals`; with
`admit_non_members` (the workers' links) a node id that is not a member is admitted once it proves the cluster
secret, and `send` to it uses its connection to us (a node removed while it was down learns its removal).
It runs inside the worker's selector loop: every registered key's `data` is a callable taking the event mask.

With TLS (`PeerSecurity.tls_*`), the TLS handshake (mutual, CA-checked) comes first and the HMAC
handshake runs inside it.

Limits: each outgoing queue holds at most `outbuf_max_bytes` (bodies queued before authentication count
too); past it the connection is dropped and re-made (Raft resends what was lost), so a dead or slow peer
never makes this process grow. At most `inbound_max` inbound connections are held; a connection not
authenticated within `handshake_timeout_ms` is dropped; bodies before authentication are at most
HANDSHAKE_BODY_MAX_BYTES.
"""

from __future__ import annotations

import enum
import errno
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from shmraft.config import PEER_HANDSHAKE_TIMEOUT_MS, PEER_INBOUND_CONNECTIONS_MAX
from shmraft.net import auth, tls
from shmraft.net.auth import ROLE_ACCEPTOR, ROLE_CONNECTOR, Secret, handshake_mac, mac_matches, new_nonce
from shmraft.net.ratelog import RateLimitedLog
from shmraft.net.serving import ACCEPT_BATCH_MAX, ACCEPT_PAUSE_MS, FD_EXHAUSTED, RECV_BYTES
from shmraft.raft.messages import Channel
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.peer import (
    HANDSHAKE_BODY_MAX_BYTES,
    Challenge,
    Hello,
    PeerKind,
    PeerReader,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_refused,
    decode_welcome,
    encode_challenge,
    encode_hello,
    encode_peer,
    encode_proof,
    encode_refused,
    encode_welcome,
)

if TYPE_CHECKING:
    from shmraft.config import NodeConfig

log = logging.getLogger("shmraft.net")

OUTBUF_MAX_BYTES_DEFAULT: Final = 64 * 1024 * 1024
BODY_MAX_BYTES_DEFAULT: Final = 1 << 20
RECONNECT_BACKOFF_MIN_MS: Final = 20
TCP_USER_TIMEOUT_MS: Final = 2000  # sent data unacknowledged this long: the path is dead, drop and re-make
KEEPALIVE_IDLE_S: Final = 1  # an idle connection (a receive-only side) is probed after this long ...
KEEPALIVE_INTERVAL_S: Final = 1  # ... every this long ...
KEEPALIVE_PROBES: Final = 2  # ... and dropped after this many unanswered probes
RECONNECT_BACKOFF_MAX_MS: Final = 1000
REFUSED_RETRY_MS: Final = 5000  # after a refusal (either way) a misconfiguration is likely: retry slowly
INBOUND_MAX: Final = PEER_INBOUND_CONNECTIONS_MAX  # default of `inbound_max`
HELLO_TIMEOUT_MS: Final = PEER_HANDSHAKE_TIMEOUT_MS  # default of `handshake_timeout_ms`
LIMIT_LOG_INTERVAL_S: Final = 1.0  # "inbound limit reached" is logged at most this often


class _State(enum.Enum):
    CONNECTING = "tcp connect"  # outbound, TCP not yet established
    TLS = "tls handshake"
    HELLO_SENT = "awaiting CHALLENGE"  # outbound
    PROOF_SENT = "awaiting WELCOME"  # outbound
    AWAIT_HELLO = "awaiting HELLO"  # inbound
    AWAIT_PROOF = "awaiting PROOF"  # inbound
    READY = "authenticated"


@dataclass(frozen=True)
class PeerSecurity:
    """What a PeerLinks needs to authenticate: the cluster secret, and TLS contexts when TLS is on."""

    secret: Secret
    tls_server: ssl.SSLContext | None = None
    tls_client: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: NodeConfig) -> PeerSecurity:
        secret = auth.cluster_secret(config)
        if not config.tls_enabled:
            return cls(secret)
        files = (config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
        return cls(secret, tls.peer_context(*files, server_side=True), tls.peer_context(*files, server_side=False))


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer_id: int  # 0 until an inbound peer has said HELLO
    outbound: bool
    reader: PeerReader
    state: _State
    out: bytearray = field(default_factory=bytearray)
    held: bytearray = field(default_factory=bytearray)  # RAFT frames queued before authentication
    opened_ms: float = 0.0
    connector_nonce: bytes = b""
    acceptor_nonce: bytes = b""
    tls_want: int = selectors.EVENT_READ
    closed: bool = False


class PeerLinks:
    """Connections to and from the other members on one channel."""

    def __init__(
        self,
        sel: selectors.BaseSelector,
        *,
        cluster_id: str,
        node_id: int,
        channel: Channel,
        bind: tuple[str, int],
        peers: dict[int, tuple[str, int]],
        on_message: Callable[[int, memoryview], None],
        on_disconnect: Callable[[int], None],
        security: PeerSecurity,
        outbuf_max_bytes: int = OUTBUF_MAX_BYTES_DEFAULT,
        body_max_bytes: int | None = None,
        inbound_max: int = INBOUND_MAX,
        handshake_timeout_ms: int = HELLO_TIMEOUT_MS,
        admit_non_members: bool = False,
    ) -> None:
        self.sel = sel
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.channel = channel
        self.peers = dict(peers)
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.security = security
        self.outbuf_max_bytes = outbuf_max_bytes
        self.body_max_bytes = body_max_bytes or BODY_MAX_BYTES_DEFAULT
        self.inbound_max = inbound_max
        self.handshake_timeout_ms = handshake_timeout_ms
        # Admit a node that is not (or no longer) a member when it proves the cluster secret, and answer it on
        # its own connection: a node removed while it was down learns its removal from the leader's answer to
        # its pre-vote (raft/core.py `_tell_removed`); the core counts nothing from a non-member.
        self.admit_non_members = admit_non_members
        self._out: dict[int, _Conn] = {}
        self._inbound: set[_Conn] = set()
        self._retry_at_ms: dict[int, float] = {}
        self._backoff_ms: dict[int, float] = {}
        self._limit_logged_at = 0.0
        self._limit_suppressed = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(bind)
        self.listener.listen(128)
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.refusals = 0  # connections refused (by us, either side of the handshake)
        self.badlog = RateLimitedLog(log)  # strangers and broken peers: a clear line each, never a flood
        self._accept_paused_until_ms = 0.0

    # --- sending ---------------------------------------------------------------------------------------

    def send(self, peer_id: int, body: bytes | bytearray | memoryview) -> bool:
        """Queue one body for a peer (held until the connection is authenticated).

        False when there is no usable connection (the caller's protocol retries)."""
        conn = self._out.get(peer_id)
        if conn is None:
            if peer_id not in self.peers:
                conn = self._non_member_inbound(peer_id)
                if conn is None:
                    return False  # not (or no longer) a member, and not connected to us
                return self._queue(conn, peer_id, body)
            self._connect(peer_id)
            conn = self._out.get(peer_id)
            if conn is None:
                return False
        return self._queue(conn, peer_id, body)

    def _non_member_inbound(self, peer_id: int) -> _Conn | None:
        """An authenticated connection from a non-member to us, to answer it on (`admit_non_members`)."""
        if not self.admit_non_members:
            return None
        return next((c for c in self._inbound if c.peer_id == peer_id and c.state is _State.READY), None)

    def _queue(self, conn: _Conn, peer_id: int, body: bytes | bytearray | memoryview) -> bool:
        """Queue `body` on `conn` (held until it is authenticated); False when over the queue limit (dropped)."""
        if len(conn.out) + len(conn.held) + len(body) > self.outbuf_max_bytes:
            log.warning(
                "peer %d (%s): outgoing queue over %d bytes, dropping the connection",
                peer_id,
                self.channel.name,
                self.outbuf_max_bytes,
            )
            self._close(conn)
            return False
        if conn.state is not _State.READY:
            conn.held += encode_peer(PeerKind.RAFT, body)
            return True
        conn.out += encode_peer(PeerKind.RAFT, body)
        self._flush(conn)
        return True

    def connected(self, peer_id: int) -> bool:
        """Our connection to the peer is up and authenticated."""
        conn = self._out.get(peer_id)
        return conn is not None and conn.state is _State.READY

    def authenticated_inbound(self) -> list[int]:
        """Peers whose connections to us are authenticated."""
        return sorted(c.peer_id for c in self._inbound if c.state is _State.READY)

    def queued_bytes(self, peer_id: int) -> int:
        conn = self._out.get(peer_id)
        return len(conn.out) + len(conn.held) if conn else 0

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """The members changed (a membership change took effect): connect to new ones at the next `maintain`,
        close every connection to and from removed ones (without `on_disconnect`: they are gone, not failed),
        and re-make the connection to a member whose address changed. Removed members' HELLOs are refused."""
        old, self.peers = self.peers, dict(peers)
        for peer_id, addr in old.items():
            if self.peers.get(peer_id) == addr:
                continue
            conn = self._out.get(peer_id)
            if conn is not None:
                self._close(conn, notify=False)
            self._retry_at_ms.pop(peer_id, None)
            self._backoff_ms.pop(peer_id, None)
            if peer_id not in self.peers:
                for c in [c for c in self._inbound if c.peer_id == peer_id]:
                    self._close(c, notify=False)
                log.info("%s channel: node %d is no longer a member: connections closed", self.channel.name, peer_id)
        for peer_id in self.peers.keys() - old.keys():
            log.info(
                "%s channel: node %d joined the members at %s:%d", self.channel.name, peer_id, *self.peers[peer_id]
            )

    def maintain(self) -> None:
        """Called each loop: (re)connect to peers whose back-off has passed; drop unauthenticated laggards."""
        now = _now_ms()
        for peer_id in self.peers:
            if peer_id not in self._out and now >= self._retry_at_ms.get(peer_id, 0.0):
                self._connect(peer_id)
        for conn in [*self._out.values(), *self._inbound]:
            if conn.state is not _State.READY and now - conn.opened_ms > self.handshake_timeout_ms:
                if not conn.outbound or conn.state is not _State.CONNECTING:  # unanswered connects are quiet
                    self.badlog.warning(
                        "handshake timeout",
                        "%s channel: %s: handshake not done in %d ms (%s); connection dropped",
                        self.channel.name,
                        self._who(conn),
                        self.handshake_timeout_ms,
                        conn.state.value,
                    )
                self._close(conn)
        if self._accept_paused_until_ms and now >= self._accept_paused_until_ms:
            self._accept_paused_until_ms = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.badlog.flush()

    def close(self) -> None:
        self.badlog.flush(force=True)
        for conn in [*self._out.values(), *self._inbound]:
            self._close(conn, notify=False)
        try:
            self.sel.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.listener.close()

    # --- connection handling ----------------------------------------------------------------------------

    def _who(self, conn: _Conn) -> str:
        if conn.outbound:
            host, port = self.peers.get(conn.peer_id, ("?", 0))
            return f"peer {conn.peer_id} at {host}:{port}"
        try:
            host, port = conn.sock.getpeername()[:2]
            addr = f"{host}:{port}"
        except OSError:
            addr = "?"
        return f"node {conn.peer_id} from {addr}" if conn.peer_id else f"connection from {addr}"

    def _connect(self, peer_id: int) -> None:
        if _now_ms() < self._retry_at_ms.get(peer_id, 0.0):
            return
        host, port = self.peers[peer_id]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        tune_peer_socket(sock)
        conn = _Conn(
            sock,
            peer_id,
            True,
            PeerReader(HANDSHAKE_BODY_MAX_BYTES),
            _State.CONNECTING,
            opened_ms=_now_ms(),
            connector_nonce=new_nonce(),
        )
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._schedule_retry(peer_id)
            return
        self._out[peer_id] = conn
        self._register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _register(self, conn: _Conn, events: int) -> None:
        self.sel.register(conn.sock, events, lambda mask: self._on_event(conn, mask))

    def _schedule_retry(self, peer_id: int, at_least_ms: float = 0.0) -> None:
        backoff = min(self._backoff_ms.get(peer_id, RECONNECT_BACKOFF_MIN_MS / 2) * 2, RECONNECT_BACKOFF_MAX_MS)
        self._backoff_ms[peer_id] = backoff
        self._retry_at_ms[peer_id] = max(self._retry_at_ms.get(peer_id, 0.0), _now_ms() + max(backoff, at_least_ms))

    def _accept(self, _mask: int) -> None:
        for _ in range(ACCEPT_BATCH_MAX):
            if not self._accept_one():
                return

    def _accept_one(self) -> bool:
        """Accept one connection; False when there is none left to accept now."""
        try:
            sock, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno not in FD_EXHAUSTED:
                raise
            # the connection stays in the backlog and the listener readable: pause rather than spin
            self.badlog.error(
                "accept",
                "%s channel: cannot accept: %s; pausing accepts for %d ms",
                self.channel.name,
                exc.strerror or exc,
                ACCEPT_PAUSE_MS,
            )
            if not self._accept_paused_until_ms:
                self.sel.unregister(self.listener)
            self._accept_paused_until_ms = _now_ms() + ACCEPT_PAUSE_MS
            return False
        if len(self._inbound) >= self.inbound_max and not self._evict_stranger():
            sock.close()
            self._log_limit(addr)
            return True
        sock.setblocking(False)
        tune_peer_socket(sock)
        state = _State.AWAIT_HELLO
        if self.security.tls_server is not None:
            try:
                sock = tls.wrap(self.security.tls_server, sock, server_side=True)
            except (OSError, ValueError) as exc:
                log.warning("%s channel: TLS setup for %s:%d failed: %s", self.channel.name, addr[0], addr[1], exc)
                sock.close()
                return True
            state = _State.TLS
        conn = _Conn(sock, 0, False, PeerReader(HANDSHAKE_BODY_MAX_BYTES), state, opened_ms=_now_ms())
        self._inbound.add(conn)
        self._register(conn, selectors.EVENT_READ)
        return True

    def _evict_stranger(self) -> bool:
        """At the inbound limit, drop the oldest connection that has not authenticated, so that a flood of
        strangers cannot lock a member out (a member completes its handshake at once). False if all have."""
        strangers = [c for c in self._inbound if c.state is not _State.READY]
        if not strangers:
            return False
        oldest = min(strangers, key=lambda c: c.opened_ms)
        self.badlog.warning(
            "inbound limit",
            "%s channel: %d inbound connections held (peer_inbound_connections_max): "
            "dropped %s, not authenticated after %.0f ms",
            self.channel.name,
            self.inbound_max,
            self._who(oldest),
            _now_ms() - oldest.opened_ms,
        )
        self._close(oldest)
        return True

    def _log_limit(self, addr: tuple) -> None:
        now = time.monotonic()
        if now - self._limit_logged_at < LIMIT_LOG_INTERVAL_S:
            self._limit_suppressed += 1
            return
        more = f" ({self._limit_suppressed} more since the last line)" if self._limit_suppressed else ""
        log.warning(
            "%s channel: %d inbound connections held (peer_inbound_connections_max): refused %s:%d%s",
            self.channel.name,
            self.inbound_max,
            addr[0],
            addr[1],
            more,
        )
        self._limit_logged_at, self._limit_suppressed = now, 0

    def _on_event(self, conn: _Conn, mask: int) -> None:
        if conn.closed:
            return
        if conn.state is _State.CONNECTING:
            if not mask & selectors.EVENT_WRITE:
                return
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close(conn)
                return
            if self.security.tls_client is not None:
                self.sel.unregister(conn.sock)
                try:
                    conn.sock = tls.wrap(self.security.tls_client, conn.sock, server_side=False)
                except (OSError, ValueError) as exc:
                    log.warning("%s channel: TLS setup for %s failed: %s", self.channel.name, self._who(conn), exc)
                    self._close(conn, unregister=False)
                    return
                conn.state = _State.TLS
                self._register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
            else:
                self._transport_ready(conn)
                return
        if conn.state is _State.TLS:
            self._tls_step(conn)
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closed:
            self._read(conn)

    def _tls_step(self, conn: _Conn) -> None:
        step = tls.handshake_step(conn.sock)  # type: ignore[arg-type]
        if step.failure:
            log.error("%s channel: TLS handshake with %s failed: %s", self.channel.name, self._who(conn), step.failure)
            self.refusals += step.refused
            self._close(conn, retry_ms=REFUSED_RETRY_MS if step.refused else 0.0)
            return
        if step.want:
            conn.tls_want = step.want
            self._set_interest(conn)
            return
        self._transport_ready(conn)

    def _transport_ready(self, conn: _Conn) -> None:
        """TCP (and TLS) is up: the connector greets; the acceptor waits for the greeting."""
        if conn.outbound:
            conn.state = _State.HELLO_SENT
            conn.out += encode_hello(
                Hello(self.cluster_id, self.node_id, conn.peer_id, self.channel, conn.connector_nonce)
            )
            self._flush(conn)
        else:
            conn.state = _State.AWAIT_HELLO
            self._set_interest(conn)
        if not conn.closed and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            self._read(conn)  # bytes that arrived with the end of the TLS handshake

    def _set_interest(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if conn.state is _State.TLS:
            want = conn.tls_want
        elif conn.state is _State.CONNECTING:
            want = selectors.EVENT_READ | selectors.EVENT_WRITE
        else:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        try:
            self.sel.modify(conn.sock, want, self.sel.get_key(conn.sock).data)
        except (KeyError, ValueError):
            pass

    def _flush(self, conn: _Conn) -> None:
        if conn.state in (_State.CONNECTING, _State.TLS):
            return
        while conn.out:
            try:
                n = tls.send(conn.sock, conn.out)
            except OSError:
                self._close(conn)
                return
            if n == 0:
                break
            del conn.out[:n]
        self._set_interest(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = tls.recv(conn.sock, RECV_BYTES)
        except OSError:
            data = b""
        if data is None:
            return
        if not data:
            if conn.state is not _State.READY and conn.state is not _State.AWAIT_HELLO:
                self.badlog.warning(
                    "handshake closed",
                    "%s channel: %s closed the connection during the handshake (%s)",
                    self.channel.name,
                    self._who(conn),
                    conn.state.value,
                )
            self._close(conn)
            return
        conn.reader.feed(data)
        try:
            while not conn.closed and (item := conn.reader.next()) is not None:
                kind, body = item
                if not self._handle(conn, kind, body):
                    return
        except RemoteProtocolError as exc:
            if conn.state is _State.READY:
                self.badlog.warning(
                    "bad peer",
                    "%s channel: %s broke the peer protocol (%s); connection dropped",
                    self.channel.name,
                    self._who(conn),
                    exc,
                )
                self._close(conn)
            else:
                self._refuse(conn, f"peer protocol: {exc}")

    # --- the handshake -------------------------------------------------------------------------------------

    def _handle(self, conn: _Conn, kind: PeerKind, body: memoryview) -> bool:
        """One whole message; False when the connection was closed."""
        if kind is PeerKind.REFUSED:
            self.badlog.error(
                "refused by peer",
                "%s channel: %s refused us: %s",
                self.channel.name,
                self._who(conn),
                decode_refused(body),
            )
            self._close(conn, retry_ms=REFUSED_RETRY_MS)
            return False
        state = conn.state
        if state is _State.READY:
            if kind is not PeerKind.RAFT:
                raise RemoteProtocolError("peer kind", "RAFT after the handshake", kind.name)
            self.on_message(conn.peer_id, body)
            return True
        expected = {
            _State.AWAIT_HELLO: PeerKind.HELLO,
            _State.AWAIT_PROOF: PeerKind.PROOF,
            _State.HELLO_SENT: PeerKind.CHALLENGE,
            _State.PROOF_SENT: PeerKind.WELCOME,
        }[state]
        if kind is not expected:
            raise RemoteProtocolError("peer kind", f"{expected.name} ({state.value})", kind.name)
        if kind is PeerKind.HELLO:
            return self._on_hello(conn, decode_hello(body))
        if kind is PeerKind.PROOF:
            return self._on_proof(conn, decode_proof(body))
        if kind is PeerKind.CHALLENGE:
            return self._on_challenge(conn, decode_challenge(body))
        decode_welcome(body)
        self._authenticated(conn)
        conn.out += conn.held
        conn.held.clear()
        self._backoff_ms.pop(conn.peer_id, None)
        self._flush(conn)
        return not conn.closed

    def _on_hello(self, conn: _Conn, hello: Hello) -> bool:
        reason = self._refusal(hello)
        if reason:
            self._refuse(conn, reason)
            return False
        conn.peer_id = hello.node_id
        conn.connector_nonce = hello.nonce
        conn.acceptor_nonce = new_nonce()
        mac = handshake_mac(
            self.security.secret,
            ROLE_ACCEPTOR,
            self.cluster_id,
            hello.node_id,
            self.node_id,
            self.channel,
            conn.connector_nonce,
            conn.acceptor_nonce,
        )
        conn.state = _State.AWAIT_PROOF
        conn.out += encode_challenge(Challenge(self.node_id, conn.acceptor_nonce, mac))
        self._flush(conn)
        return not conn.closed

    def _on_proof(self, conn: _Conn, mac: bytes) -> bool:
        want = handshake_mac(
            self.security.secret,
            ROLE_CONNECTOR,
            self.cluster_id,
            conn.peer_id,
            self.node_id,
            self.channel,
            conn.connector_nonce,
            conn.acceptor_nonce,
        )
        if not mac_matches(want, mac):
            self._refuse(
                conn,
                f"authentication failed: node {conn.peer_id}'s proof does not match the cluster "
                f"secret of node {self.node_id} (different cluster_secret_file contents?)",
            )
            return False
        self._authenticated(conn)
        conn.out += encode_welcome()
        self._flush(conn)
        return not conn.closed

    def _on_challenge(self, conn: _Conn, challenge: Challenge) -> bool:
        if challenge.node_id != conn.peer_id:
            self._refuse(conn, f"node id: expected node {conn.peer_id} at this address, got {challenge.node_id}")
            return False
        want = handshake_mac(
            self.security.secret,
            ROLE_ACCEPTOR,
            self.cluster_id,
            self.node_id,
            conn.peer_id,
            self.channel,
            conn.connector_nonce,
            challenge.nonce,
        )
        if not mac_matches(want, challenge.mac):
            self._refuse(
                conn,
                f"authentication failed: node {conn.peer_id}'s challenge does not match the "
                f"cluster secret of node {self.node_id} (different cluster_secret_file contents?)",
            )
            return False
        conn.acceptor_nonce = challenge.nonce
        proof = handshake_mac(
            self.security.secret,
            ROLE_CONNECTOR,
            self.cluster_id,
            self.node_id,
            conn.peer_id,
            self.channel,
            conn.connector_nonce,
            conn.acceptor_nonce,
        )
        conn.state = _State.PROOF_SENT
        conn.out += encode_proof(proof)
        self._flush(conn)
        return not conn.closed

    def _authenticated(self, conn: _Conn) -> None:
        conn.state = _State.READY
        conn.reader.allow_body_bytes(self.body_max_bytes)
        log.info(
            "%s channel: %s authenticated%s",
            self.channel.name,
            self._who(conn),
            " (TLS)" if isinstance(conn.sock, ssl.SSLSocket) else "",
        )
        if not conn.outbound and conn.peer_id not in self._out:
            # the peer is back (it just proved itself): connect to it now rather than at the end of a back-off
            # grown while it was down (up to RECONNECT_BACKOFF_MAX_MS of a restarted follower's time)
            self._retry_at_ms.pop(conn.peer_id, None)
            self._backoff_ms.pop(conn.peer_id, None)

    def _refusal(self, hello: Hello) -> str:
        if hello.cluster_id != self.cluster_id:
            return f"cluster id: expected {self.cluster_id!r}, got {hello.cluster_id!r}"
        if hello.node_id not in self.peers and not (self.admit_non_members and hello.node_id != self.node_id):
            return f"node id: expected one of {sorted(self.peers)}, got {hello.node_id}"
        if hello.to_node_id != self.node_id:
            return f"node id: this is node {self.node_id}, the connection was meant for node {hello.to_node_id}"
        if hello.channel != self.channel:
            return f"channel: expected {self.channel.name}, got {hello.channel.name}"
        return ""

    def _refuse(self, conn: _Conn, reason: str) -> None:
        """Tell the other side why (best effort), log it here, count it, and close."""
        self.refusals += 1
        self.badlog.error("refused", "%s channel: refused %s: %s", self.channel.name, self._who(conn), reason)
        if conn.state not in (_State.CONNECTING, _State.TLS):
            conn.out += encode_refused(reason)
            try:
                while conn.out and (n := tls.send(conn.sock, conn.out)) > 0:
                    del conn.out[:n]
            except OSError:
                pass
        self._close(conn, notify=False, retry_ms=REFUSED_RETRY_MS)

    def _close(self, conn: _Conn, notify: bool = True, retry_ms: float = 0.0, unregister: bool = True) -> None:
        if unregister:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        was_ready = conn.state is _State.READY
        conn.closed = True
        try:
            conn.sock.close()
        except OSError:
            pass
        if conn.outbound:
            if self._out.get(conn.peer_id) is conn:
                del self._out[conn.peer_id]
                if conn.peer_id in self.peers:
                    self._schedule_retry(conn.peer_id, retry_ms)
        else:
            self._inbound.discard(conn)
        if notify and conn.peer_id and was_ready:
            self.on_disconnect(conn.peer_id)


def tune_peer_socket(sock: socket.socket) -> None:
    """No Nagle delay; and a dead path is noticed: data unacknowledged for TCP_USER_TIMEOUT_MS, or a silent
    peer not answering keepalive probes, aborts the connection, which is then re-made, rather than waiting
    out TCP's exponential retransmission back-off once the path is back. (Seen behind the chaos campaign's
    proxy, whose sockets lacked this: 7-15 s to rejoin after a 20-40 s partition; with it, 0.1 s.)"""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def _now_ms() -> float:
    return time.monotonic() * 1000.0
