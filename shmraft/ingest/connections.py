"""The client connection layer of the ingest worker: sockets in, whole requests out (docs/PROTOCOL.md section 2).

It accepts client connections on the node's client port, runs the TLS handshake where TLS is on (the step
shared with the peer links, shmraft/net/tls.py), frames bytes into messages (`cp.MessageReader`), checks the
client token where the node asks for one (the first request must be AUTH with it), and hands every other
request to `on_request(conn, message)`. Answers are queued with `write(conn, bytes)` and sent as the socket
takes them.

Limits: connections (`client_connections_max`; one more is answered UNAVAILABLE and closed), request size
(`client_request_bytes_max`; AUTH_TOKEN_MAX_BYTES until AUTH where a token is asked), bytes produced and not
yet answered per connection (`client_inflight_bytes_max`; past it the connection is not read until answers
go out), answers queued for a client that does not read (OUTBUF_MAX_BYTES), part of a request held past
`client_request_timeout_ms` (slow loris) and nothing received, pending or owed past `client_idle_timeout_ms`.
While `hold_reads()` is true (the R1 ring is full) no connection is read. Out of file descriptors, accepts
pause for ACCEPT_PAUSE_MS instead of spinning.

Bad input: a client that breaks the protocol gets ERROR MALFORMED naming the field, with the request's
correlation id whenever its header's magic was right (UNAUTHORIZED before a required AUTH; another protocol
version gets MALFORMED naming both versions, in that version's layout) and is disconnected; it is logged
(rate-limited) and counted, and the process keeps running.
"""

from __future__ import annotations

import itertools
import logging
import resource
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from shmraft.config import NodeConfig
from shmraft.ipc.state import StateBlock
from shmraft.net import auth, tls
from shmraft.net.ratelog import RateLimitedLog
from shmraft.net.serving import ACCEPT_BATCH_MAX, ACCEPT_PAUSE_MS, FD_EXHAUSTED, RECV_BYTES
from shmraft.wire import client as cp
from shmraft.wire.errors import RemoteProtocolError

LISTEN_BACKLOG: Final = 512
OUTBUF_MAX_BYTES: Final = 64 * 1024 * 1024  # answers queued for one slow reader before it is dropped
FDS_RESERVED: Final = 128  # descriptors beyond client_connections_max (rings, RocksDB, listener, ...)
TIMEOUT_SWEEP_INTERVAL_MS: Final = 250  # how often idle and slow-loris connections are looked for
_CONN_IDS: Final = itertools.count(1)  # connection ids, unique in the process across listeners (native, Kafka)


@dataclass(eq=False)
class Connection:
    """One client connection."""

    id: int  # unique in this process; what the produce tracker knows a connection by
    sock: socket.socket
    addr: str
    reader: cp.MessageReader  # or, on the Kafka port, a reader with the same face (shmraft/ingest/kafka_door.py)
    out: bytearray = field(default_factory=bytearray)
    inflight_bytes: int = 0  # bytes of PRODUCE requests not yet answered
    paused: bool = False
    closed: bool = False
    mask: int = 0  # selector events registered (0 = not registered)
    callback: object = None
    last_recv_s: float = 0.0  # monotonic time of the last bytes received (or of the accept)
    partial_since_s: float = 0.0  # monotonic time a partial request started arriving; 0 = none buffered
    tls_want: int = 0  # during a TLS handshake: the selector event it waits for (0 = done, or no TLS)
    authed: bool = True  # False until AUTH with the right token, where the node asks for one
    session: object = None  # what another protocol's door keeps per connection (the Kafka door's KafkaSession)


_NATIVE_MAGIC: Final = cp.CLIENT_MAGIC.to_bytes(2, "little")


def in_request_version(conn: Connection, data: bytes) -> bytes:
    """A native answer framed in the version of the connection's requests (every version served shares the
    header; the answers a node sends differ only where the encoder was told the version, e.g. METADATA)."""
    version = getattr(conn.reader, "version", cp.CLIENT_VERSION)
    if version == cp.CLIENT_VERSION or data[:2] != _NATIVE_MAGIC or len(data) < cp.HEADER_BYTES:
        return data
    return data[:2] + bytes([version]) + data[3:]


class ClientConnections:
    """Client connections on one selector: accept, TLS, framing, token check, limits, answers out.

    The native protocol's listener. Another protocol on its own port (the Kafka door) subclasses it and
    overrides the protocol hooks at the end (port, reader, the answers to bad input, overload and shutdown);
    the limits, timeouts and back-pressure stay these."""

    def __init__(
        self,
        sel: selectors.BaseSelector,
        config: NodeConfig,
        state: StateBlock,
        record: np.void,
        log: logging.Logger,
        on_request: Callable[[Connection, cp.Message], None],
        hold_reads: Callable[[], bool],
    ) -> None:
        c = config
        self.sel = sel
        self.config = config
        self.state = state
        self.record = record  # the worker's record in the state block (its `errors` counter)
        self.log = log
        self.on_request = on_request  # an authenticated request other than AUTH; may raise RemoteProtocolError
        self.hold_reads = hold_reads  # true while no connection may be read (the R1 ring is full)
        self.by_id: dict[int, Connection] = {}
        self.badlog = RateLimitedLog(log)  # bad clients: a clear line each, but never a flood
        self.tls = tls.server_context(c.tls_cert_file, c.tls_key_file) if c.tls_enabled and self.speaks_tls else None
        self.token = auth.client_token(c) if self.asks_token else None  # None: clients need not AUTH
        self.accept_paused_until_s = 0.0  # out of descriptors: the listener is unregistered until then
        self.last_timeout_sweep_s = 0.0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((c.bind_host, self.listen_port()))
        self.listener.listen(LISTEN_BACKLOG)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        _raise_fd_limit(c.client_connections_max + FDS_RESERVED, log)

    # --- answers out -------------------------------------------------------------------------------------------

    def write(self, conn: Connection, data: bytes) -> None:
        """Queue `data` on the connection and send what the socket takes now (nothing once it is closed)."""
        if conn.closed:
            return
        data = in_request_version(conn, data)
        if len(conn.out) + len(data) > OUTBUF_MAX_BYTES:
            self.log.warning("client %s does not read its answers; disconnected", conn.addr)
            self.close(conn)
            return
        conn.out += data
        self._flush(conn)

    def send_error_and_close(self, conn: Connection, cid: int, code: cp.ErrorCode, message: str) -> None:
        answer = self.error_answer(cid, code, message)
        if answer is None:
            self.close(conn)
        else:
            self.send_and_close(conn, answer)

    def send_and_close(self, conn: Connection, answer: bytes) -> None:
        """Send what is queued and `answer`, then close (MALFORMED, UNAUTHORIZED, SHUTTING_DOWN)."""
        # One non-blocking send: the socket buffer almost always has room for the answer, and a client that
        # does not read (or thousands being dropped at once) must never stall the loop.
        try:
            conn.sock.send(bytes(conn.out) + in_request_version(conn, answer))
        except OSError:
            pass
        self.close(conn)

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.mask:
            self.sel.unregister(conn.sock)
            conn.mask = 0
        conn.sock.close()
        del self.by_id[conn.id]

    def unpark(self) -> None:
        """Read again from connections paused for back-pressure, unless reads are still held."""
        if self.hold_reads():
            return
        for conn in list(self.by_id.values()):
            if conn.paused:
                self.update_interest(conn)

    def update_interest(self, conn: Connection) -> None:
        """Read unless paused (reads held, or too much produced and unanswered); write while output waits."""
        if conn.closed:
            return
        conn.paused = self.hold_reads() or conn.inflight_bytes > self.config.client_inflight_bytes_max
        want = (0 if conn.paused else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.out else 0)
        want = conn.tls_want or want
        if want == conn.mask:
            return
        if conn.mask == 0:
            self.sel.register(conn.sock, want, conn.callback)
        elif want == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, want, conn.callback)
        conn.mask = want

    # --- housekeeping ------------------------------------------------------------------------------------------

    def maintain(self, now_s: float, busy: Callable[[], set[int]]) -> None:
        """Resume accepting after a pause; now and then drop stalled and idle connections (`busy()`: ids of
        connections owed an answer that is not theirs to hurry, such as a parked long poll)."""
        self._resume_accept(now_s)
        if now_s - self.last_timeout_sweep_s >= TIMEOUT_SWEEP_INTERVAL_MS / 1000:
            self.last_timeout_sweep_s = now_s
            self._drop_stalled(now_s, busy())
            self.badlog.flush()

    def shutdown(self, code: cp.ErrorCode, message: str) -> None:
        """Tell every client why and close it, then the listener."""
        for conn in list(self.by_id.values()):
            self.send_error_and_close(conn, 0, code, message)
        self.listener.close()
        self.badlog.flush(force=True)  # what was suppressed is still counted in the log

    # --- accepting ---------------------------------------------------------------------------------------------

    def _accept(self, _mask: int) -> None:
        for _ in range(ACCEPT_BATCH_MAX):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in FD_EXHAUSTED:
                    raise
                # The pending connection stays in the backlog, so the listener stays readable: without a
                # pause the loop would spin. Stop accepting for a moment; closing connections frees fds.
                self._pause_accept(exc)
                return
            if len(self.by_id) >= self.config.client_connections_max:
                self._refuse_over_limit(sock, addr)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = tls.wrap(self.tls, sock, server_side=True)  # handshake driven by _on_event
            conn = Connection(
                next(_CONN_IDS),
                sock,
                f"{addr[0]}:{addr[1]}",
                self.new_reader(),
                last_recv_s=time.monotonic(),
                tls_want=selectors.EVENT_READ if self.tls else 0,
                authed=self.token is None,
            )
            conn.callback = lambda mask, conn=conn: self._on_event(conn, mask)
            self.by_id[conn.id] = conn
            self.update_interest(conn)

    def _refuse_over_limit(self, sock: socket.socket, addr: tuple) -> None:
        limit = self.config.client_connections_max
        self.badlog.warning(
            "connection limit",
            "client %s:%d refused: %d connections open (limit client_connections_max %d)",
            addr[0],
            addr[1],
            len(self.by_id),
            limit,
        )
        try:
            sock.setblocking(False)
            answer = self.error_answer(0, cp.ErrorCode.UNAVAILABLE, f"too many connections (limit {limit})")
            if self.tls is None and answer is not None:  # a TLS client could not read a plain answer: just close
                sock.send(answer)
        except OSError:
            pass
        sock.close()

    def _pause_accept(self, exc: OSError) -> None:
        self.badlog.error(
            "accept",
            "cannot accept client connections: %s (%d open); pausing accepts for %d ms",
            exc.strerror or exc,
            len(self.by_id),
            ACCEPT_PAUSE_MS,
        )
        self.state.add("errors")
        if not self.accept_paused_until_s:
            self.sel.unregister(self.listener)
        self.accept_paused_until_s = time.monotonic() + ACCEPT_PAUSE_MS / 1000

    def _resume_accept(self, now_s: float) -> None:
        if self.accept_paused_until_s and now_s >= self.accept_paused_until_s:
            self.accept_paused_until_s = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)

    def _drop_stalled(self, now_s: float, busy: set[int]) -> None:
        """Close slow-loris connections (part of a request held past client_request_timeout_ms) and idle ones
        (nothing received, pending or owed past client_idle_timeout_ms)."""
        request_s = self.config.client_request_timeout_ms / 1000
        idle_s = self.config.client_idle_timeout_ms / 1000
        for conn in list(self.by_id.values()):
            if request_s and conn.partial_since_s and now_s - conn.partial_since_s > request_s:
                self.record["errors"] += 1
                self.badlog.warning(
                    "slow request",
                    "client %s sent %d bytes of a request in %.1f s (client_request_timeout_ms %d); disconnected",
                    conn.addr,
                    conn.reader.buffered_bytes,
                    now_s - conn.partial_since_s,
                    self.config.client_request_timeout_ms,
                )
                self.send_error_and_close(
                    conn,
                    conn.reader.pending_correlation_id,
                    cp.ErrorCode.MALFORMED,
                    f"request not completed within {self.config.client_request_timeout_ms} ms",
                )
            elif (
                idle_s
                and now_s - conn.last_recv_s > idle_s
                and not conn.inflight_bytes
                and not conn.out
                and conn.id not in busy
            ):
                self.badlog.log(
                    logging.INFO,
                    "idle",
                    "client %s idle for %.1f s (client_idle_timeout_ms %d); disconnected",
                    conn.addr,
                    now_s - conn.last_recv_s,
                    self.config.client_idle_timeout_ms,
                )
                self.close(conn)

    # --- bytes in and out --------------------------------------------------------------------------------------

    def _on_event(self, conn: Connection, mask: int) -> None:
        if conn.tls_want and not self._tls_step(conn):
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closed:
            self._read(conn)

    def _tls_step(self, conn: Connection) -> bool:
        """Advance the TLS handshake; True once it is done (then the client is served as any other)."""
        step = tls.handshake_step(conn.sock)  # type: ignore[arg-type]
        if step.failure:
            self.record["errors"] += 1
            self.badlog.warning("tls", "client %s: TLS handshake failed (%s); disconnected", conn.addr, step.failure)
            self.close(conn)
            return False
        conn.tls_want = step.want
        self.update_interest(conn)
        return step.done

    def _read(self, conn: Connection) -> None:
        try:
            data = tls.recv(conn.sock, RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data is None:  # TLS: a record not yet whole
            return
        if not data:
            self.close(conn)
            return
        conn.last_recv_s = time.monotonic()
        conn.reader.feed(data)
        try:
            while not conn.closed and (msg := conn.reader.next_message()) is not None:
                self._handle(conn, msg)
        except RemoteProtocolError as exc:
            self.state.add("errors")
            self.record["errors"] += 1
            self.badlog.warning(
                "bad client", "%s client %s broke the protocol (%s); disconnected", self.protocol, conn.addr, exc
            )
            self.refuse_bad_input(conn, exc)
            return
        if not conn.reader.buffered_bytes:
            conn.partial_since_s = 0.0
        elif not conn.partial_since_s:
            conn.partial_since_s = conn.last_recv_s
        self.update_interest(conn)

    def _flush(self, conn: Connection) -> None:
        while conn.out:
            try:
                n = tls.send(conn.sock, conn.out)
                if not n:  # the socket (or TLS) cannot take more now
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            del conn.out[:n]
        self.update_interest(conn)

    # --- the token check ---------------------------------------------------------------------------------------

    # --- the protocol hooks (overridden by another protocol's listener) ----------------------------------------

    protocol: str = "native"  # named in log lines
    speaks_tls: bool = True  # TLS on this port where the node has it configured
    asks_token: bool = True  # the client token (AUTH first) where the node has one

    def listen_port(self) -> int:
        return self.config.me.client_port

    def new_reader(self) -> cp.MessageReader:
        """A new connection's framer: `feed(bytes)`, `next_message()` (None until whole; raises
        RemoteProtocolError), `buffered_bytes`, `pending_correlation_id`."""
        limit = self.config.client_request_bytes_max if self.token is None else cp.AUTH_TOKEN_MAX_BYTES
        return cp.MessageReader(limit)

    def error_answer(self, cid: int, code: cp.ErrorCode, message: str) -> bytes | None:
        """The answer sent before closing a connection for `code` (None: close without one)."""
        return cp.encode_error(cid, code, message)

    def refuse_bad_input(self, conn: Connection, exc: RemoteProtocolError) -> None:
        """Answer a client that broke the protocol (already logged and counted), and close its connection."""
        cid = exc.correlation_id if isinstance(exc, cp.MessageError) else 0
        if isinstance(exc, cp.MessageError) and exc.version:
            self.send_and_close(conn, cp.encode_version_refused(cid, exc.version))
        elif conn.authed:
            self.send_error_and_close(conn, cid, cp.ErrorCode.MALFORMED, str(exc))
        else:
            self.send_error_and_close(conn, cid, cp.ErrorCode.UNAUTHORIZED, f"expected AUTH first ({exc})")

    def _handle(self, conn: Connection, msg: cp.Message) -> None:
        if not conn.authed:
            self._authenticate(conn, msg)
            return
        if isinstance(msg, cp.Auth):  # a node that asks for no token lets any AUTH through
            self.write(conn, cp.encode_authed(msg.correlation_id))
            return
        self.on_request(conn, msg)

    def _authenticate(self, conn: Connection, msg: cp.Message) -> None:
        """Where the node asks for a token, the first request must be AUTH with it; else the connection ends."""
        if isinstance(msg, cp.Auth) and self.token is not None and self.token.equals(msg.token):
            conn.authed = True
            conn.reader.allow_body_bytes(self.config.client_request_bytes_max)
            self.write(conn, cp.encode_authed(msg.correlation_id))
            return
        why = "wrong token" if isinstance(msg, cp.Auth) else f"{type(msg).__name__.upper()} before AUTH"
        self.record["errors"] += 1
        self.badlog.warning(
            "unauthorized", "client %s: %s (the node has a client_token_file); disconnected", conn.addr, why
        )
        self.send_error_and_close(conn, msg.correlation_id, cp.ErrorCode.UNAUTHORIZED, f"unauthorized: {why}")


def _raise_fd_limit(wanted: int, log: logging.Logger) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (at most the hard limit), so that the
    connection limit, not the 1024 soft default of many systems, is what refuses clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning(
                "open files limited to %d (hard RLIMIT_NOFILE): fewer than client_connections_max + %d",
                new,
                FDS_RESERVED,
            )
