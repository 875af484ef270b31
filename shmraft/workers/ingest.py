"""The ingest worker: the client-facing TCP server (docs/PROTOCOL.md section 2).

PRODUCE: on the leader, a valid request's body goes to the batcher unchanged (R1) and the request waits;
the raft worker's notes (R5) say at which log index each event was appended (or that it is a duplicate,
with its offset, or refused), and the request is answered once the commit index covers all its events.
Elsewhere the answer is NOT_LEADER with the leader's address. FETCH: committed events from any node, read
from the RocksDB log through a secondary instance. METADATA: from the shared state block.

Limits: connections (`client_connections_max`), request size (`client_request_bytes_max`), bytes produced
and not yet answered per connection (`client_inflight_bytes_max`; past it the connection is not read until
answers go out), the R1 ring (when it is full, reading stops everywhere until the batcher catches up).
A client that breaks the protocol gets ERROR MALFORMED naming the field, and is disconnected.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import resource
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.ipc.state import NodeStatus, Worker, latency_bucket
from shmraft.net import auth, tls
from shmraft.net.ratelog import RateLimitedLog
from shmraft.node import dedup as dd
from shmraft.node.batching import EVENT_BYTES_MAX
from shmraft.node.records import NoteKind, decode_note
from shmraft.raft.storage import LogCompactedError, RocksLogReader, StorageError
from shmraft.raft.types import Role
from shmraft.wire import client as cp
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.frame import decode_batch
from shmraft.workers.base import Inbox, WorkerBase, selector_loop_once

RECV_BYTES: Final = 256 * 1024
LOOP_WAIT_MS: Final = 50
R1_PUSH_TIMEOUT_MS: Final = 0
FETCH_WAIT_MAX_MS: Final = 30_000
PRODUCE_TIMEOUT_MAX_MS: Final = 120_000
OUTBUF_MAX_BYTES: Final = 64 * 1024 * 1024  # answers queued for one slow reader before it is dropped
CATCH_UP_INTERVAL_S: Final = 0.002
ACCEPT_BATCH_MAX: Final = 64  # connections accepted per wake-up (a flood cannot starve the loop)
ACCEPT_PAUSE_MS: Final = 100  # out of file descriptors: stop accepting this long instead of spinning
FDS_RESERVED: Final = 128  # descriptors beyond client_connections_max (rings, RocksDB, listener, ...)
TIMEOUT_SWEEP_INTERVAL_MS: Final = 250  # how often idle and slow-loris connections are looked for
_FD_EXHAUSTED: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    addr: str
    reader: cp.MessageReader
    out: bytearray = field(default_factory=bytearray)
    inflight_bytes: int = 0
    paused: bool = False
    closed: bool = False
    mask: int = 0  # selector events registered (0 = not registered)
    callback: object = None
    last_recv_s: float = 0.0  # monotonic time of the last bytes received (or of the accept)
    partial_since_s: float = 0.0  # monotonic time a partial request started arriving; 0 = none buffered
    tls_want: int = 0  # during a TLS handshake: the selector event it waits for (0 = done, or no TLS)
    authed: bool = True  # False until AUTH with the right token, where the node asks for one


@dataclass(eq=False)
class _Pending:
    client: _Client
    correlation_id: int
    producer_id: int
    first_sequence: int
    count: int
    size_bytes: int
    deadline: float
    offsets: np.ndarray
    unresolved: int
    max_index: int = 0
    done: bool = False
    received_ns: int = 0  # monotonic; for the commit latency histogram


@dataclass(eq=False)
class _Fetch:
    client: _Client
    request: cp.Fetch
    deadline: float


class IngestWorker(WorkerBase):
    kind = Worker.INGEST

    def __init__(self, config) -> None:
        super().__init__(config)
        c = config
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((c.bind_host, c.me.client_port))
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.to_batcher = self.layout.writer("r1")
        self.notes = Inbox(self.layout.reader("r5"), "r5")
        self.sel.register(self.notes, selectors.EVENT_READ, lambda _m: None)
        self.clients: set[_Client] = set()
        self.by_producer: dict[int, list[_Pending]] = {}
        self.awaiting_commit: list[tuple[int, int, _Pending]] = []
        self.backlog: deque[tuple[bytes, _Pending]] = deque()  # bodies waiting for room in R1
        self.fetches: list[_Fetch] = []
        self.seq = itertools.count()
        self.log_reader: RocksLogReader | None = None
        self.reader_quarantines = self.state.get("quarantines")  # the raft worker's count when the view opened
        self.last_catch_up = 0.0
        self.known_term = self.state.get("term")
        self.latency_buckets = self.state.node["commit_latency_buckets"]  # a view into the state block
        self.badlog = RateLimitedLog(self.log)  # bad clients: a clear line each, but never a flood
        self.tls = tls.server_context(c.tls_cert_file, c.tls_key_file) if c.tls_enabled else None
        self.token = auth.client_token(c)  # None: clients need not AUTH
        self.accept_paused_until_s = 0.0  # out of descriptors: the listener is unregistered until then
        self.last_timeout_sweep_s = 0.0
        _raise_fd_limit(c.client_connections_max + FDS_RESERVED, self.log)

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        last_sweep = time.monotonic()
        try:
            while not self.stopping:
                self.beat()
                selector_loop_once(self.sel, LOOP_WAIT_MS / 1000)
                for rec in self.notes.take():
                    self._on_note(rec)
                self._drain_backlog()
                self._answer_committed()
                now = time.monotonic()
                if now - last_sweep >= LOOP_WAIT_MS / 1000:
                    last_sweep = now
                    self._sweep(now)
        finally:
            for client in list(self.clients):
                self._send_error_and_close(client, 0, cp.ErrorCode.SHUTTING_DOWN, "node is stopping")
            self.notes.close()
            self.listener.close()
            self.badlog.flush(force=True)  # what was suppressed is still counted in the log
            if self.log_reader is not None:
                self.log_reader.close()

    # --- connections ---------------------------------------------------------------------------------------

    def _accept(self, _mask: int) -> None:
        for _ in range(ACCEPT_BATCH_MAX):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _FD_EXHAUSTED:
                    raise
                # The pending connection stays in the backlog, so the listener stays readable: without a
                # pause the loop would spin. Stop accepting for a moment; closing connections frees fds.
                self._pause_accept(exc)
                return
            if len(self.clients) >= self.config.client_connections_max:
                self.badlog.warning(
                    "connection limit",
                    "client %s:%d refused: %d connections open (limit client_connections_max %d)",
                    addr[0],
                    addr[1],
                    len(self.clients),
                    self.config.client_connections_max,
                )
                try:
                    sock.setblocking(False)
                    if self.tls is None:  # a TLS client could not read a plain answer: just close
                        sock.send(
                            cp.encode_error(
                                0,
                                cp.ErrorCode.UNAVAILABLE,
                                f"too many connections (limit {self.config.client_connections_max})",
                            )
                        )
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = tls.wrap(self.tls, sock, server_side=True)  # handshake driven by _on_client
            limit = self.config.client_request_bytes_max if self.token is None else cp.AUTH_TOKEN_MAX_BYTES
            client = _Client(
                sock,
                f"{addr[0]}:{addr[1]}",
                cp.MessageReader(limit),
                last_recv_s=time.monotonic(),
                tls_want=selectors.EVENT_READ if self.tls else 0,
                authed=self.token is None,
            )
            client.callback = lambda mask, client=client: self._on_client(client, mask)
            self.clients.add(client)
            self._update_interest(client)

    def _pause_accept(self, exc: OSError) -> None:
        self.badlog.error(
            "accept",
            "cannot accept client connections: %s (%d open); pausing accepts for %d ms",
            exc.strerror or exc,
            len(self.clients),
            ACCEPT_PAUSE_MS,
        )
        self.state.add("errors")
        if not self.accept_paused_until_s:
            self.sel.unregister(self.listener)
        self.accept_paused_until_s = time.monotonic() + ACCEPT_PAUSE_MS / 1000

    def _resume_accept(self, now: float) -> None:
        if self.accept_paused_until_s and now >= self.accept_paused_until_s:
            self.accept_paused_until_s = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)

    def _drop_stalled(self, now: float) -> None:
        """Close slow-loris connections (part of a request held past client_request_timeout_ms) and idle ones
        (nothing received, pending or owed past client_idle_timeout_ms)."""
        request_s = self.config.client_request_timeout_ms / 1000
        idle_s = self.config.client_idle_timeout_ms / 1000
        waiting = {id(f.client) for f in self.fetches}
        for client in list(self.clients):
            if request_s and client.partial_since_s and now - client.partial_since_s > request_s:
                self.record["errors"] += 1
                self.badlog.warning(
                    "slow request",
                    "client %s sent %d bytes of a request in %.1f s (client_request_timeout_ms %d); disconnected",
                    client.addr,
                    client.reader.buffered_bytes,
                    now - client.partial_since_s,
                    self.config.client_request_timeout_ms,
                )
                self._send_error_and_close(
                    client,
                    0,
                    cp.ErrorCode.MALFORMED,
                    f"request not completed within {self.config.client_request_timeout_ms} ms",
                )
            elif (
                idle_s
                and now - client.last_recv_s > idle_s
                and not client.inflight_bytes
                and not client.out
                and id(client) not in waiting
            ):
                self.badlog.log(
                    logging.INFO,
                    "idle",
                    "client %s idle for %.1f s (client_idle_timeout_ms %d); disconnected",
                    client.addr,
                    now - client.last_recv_s,
                    self.config.client_idle_timeout_ms,
                )
                self._close(client)

    def _on_client(self, client: _Client, mask: int) -> None:
        if client.tls_want and not self._tls_step(client):
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self._read(client)

    def _tls_step(self, client: _Client) -> bool:
        """Advance the TLS handshake; True once it is done (then the client is served as any other)."""
        try:
            client.tls_want = tls.handshake(client.sock)
        except OSError as exc:
            self.record["errors"] += 1
            self.badlog.warning(
                "tls", "client %s: TLS handshake failed (%s); disconnected", client.addr, tls.describe(exc)
            )
            self._close(client)
            return False
        self._update_interest(client)
        return not client.tls_want

    def _read(self, client: _Client) -> None:
        try:
            data = tls.recv(client.sock, RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data is None:  # TLS: a record not yet whole
            return
        if not data:
            self._close(client)
            return
        client.last_recv_s = time.monotonic()
        client.reader.feed(data)
        try:
            while not client.closed and (msg := client.reader.next_message()) is not None:
                self._handle(client, msg)
        except RemoteProtocolError as exc:
            self.state.add("errors")
            self.record["errors"] += 1
            self.badlog.warning("bad client", "client %s broke the protocol (%s); disconnected", client.addr, exc)
            if client.authed:
                self._send_error_and_close(client, 0, cp.ErrorCode.MALFORMED, str(exc))
            else:
                self._send_error_and_close(client, 0, cp.ErrorCode.UNAUTHORIZED, f"expected AUTH first ({exc})")
            return
        if not client.reader.buffered_bytes:
            client.partial_since_s = 0.0
        elif not client.partial_since_s:
            client.partial_since_s = client.last_recv_s
        self._update_interest(client)

    def _update_interest(self, client: _Client) -> None:
        """Read unless paused (R1 backlog, or too much produced and unanswered); write while output waits."""
        if client.closed:
            return
        client.paused = bool(self.backlog) or client.inflight_bytes > self.config.client_inflight_bytes_max
        want = (0 if client.paused else selectors.EVENT_READ) | (selectors.EVENT_WRITE if client.out else 0)
        want = client.tls_want or want
        if want == client.mask:
            return
        if client.mask == 0:
            self.sel.register(client.sock, want, client.callback)
        elif want == 0:
            self.sel.unregister(client.sock)
        else:
            self.sel.modify(client.sock, want, client.callback)
        client.mask = want

    def _unpark(self) -> None:
        if self.backlog:
            return
        for client in list(self.clients):
            if client.paused:
                self._update_interest(client)

    def _write(self, client: _Client, data: bytes) -> None:
        if client.closed:
            return
        if len(client.out) + len(data) > OUTBUF_MAX_BYTES:
            self.log.warning("client %s does not read its answers; disconnected", client.addr)
            self._close(client)
            return
        client.out += data
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            try:
                n = tls.send(client.sock, client.out)
                if not n:  # the socket (or TLS) cannot take more now
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(client)
                return
            del client.out[:n]
        self._update_interest(client)

    def _send_error_and_close(self, client: _Client, cid: int, code: cp.ErrorCode, message: str) -> None:
        # One non-blocking send: the socket buffer almost always has room for the answer, and a client that
        # does not read (or thousands being dropped at once) must never stall the loop.
        try:
            client.sock.send(bytes(client.out) + cp.encode_error(cid, code, message))
        except OSError:
            pass
        self._close(client)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.mask:
            self.sel.unregister(client.sock)
            client.mask = 0
        client.sock.close()
        self.clients.discard(client)

    # --- requests ------------------------------------------------------------------------------------------

    def _handle(self, client: _Client, msg: cp.Message) -> None:
        if not client.authed:
            self._authenticate(client, msg)
            return
        if isinstance(msg, cp.Auth):  # a node that asks for no token lets any AUTH through
            self._write(client, cp.encode_authed(msg.correlation_id))
            return
        if isinstance(msg, cp.Produce):
            self._produce(client, msg)
        elif isinstance(msg, cp.Fetch):
            self._fetch(client, msg, first_try=True)
        elif isinstance(msg, cp.Metadata):
            self._metadata(client, msg)
        else:
            raise RemoteProtocolError("kind", "a request (PRODUCE, FETCH, METADATA)", type(msg).__name__)

    def _authenticate(self, client: _Client, msg: cp.Message) -> None:
        """Where the node asks for a token, the first request must be AUTH with it; else the connection ends."""
        if isinstance(msg, cp.Auth) and self.token is not None and self.token.equals(msg.token):
            client.authed = True
            client.reader.allow_body_bytes(self.config.client_request_bytes_max)
            self._write(client, cp.encode_authed(msg.correlation_id))
            return
        why = "wrong token" if isinstance(msg, cp.Auth) else f"{type(msg).__name__.upper()} before AUTH"
        self.record["errors"] += 1
        self.badlog.warning(
            "unauthorized", "client %s: %s (the node has a client_token_file); disconnected", client.addr, why
        )
        self._send_error_and_close(client, msg.correlation_id, cp.ErrorCode.UNAUTHORIZED, f"unauthorized: {why}")

    def _error(self, client: _Client, cid: int, code: cp.ErrorCode, message: str) -> None:
        leader = ""
        if code is cp.ErrorCode.NOT_LEADER:
            leader_id = self.state.get("leader_id")
            if leader_id and leader_id != self.config.node_id:
                leader = self.config.member(leader_id).client_address
        self._write(client, cp.encode_error(cid, code, message, leader))

    def _produce(self, client: _Client, msg: cp.Produce) -> None:
        status = self.state.get("status")
        if status != NodeStatus.SERVING:
            code = cp.ErrorCode.SHUTTING_DOWN if status == NodeStatus.STOPPING else cp.ErrorCode.UNAVAILABLE
            self._error(client, msg.correlation_id, code, f"node {self.config.node_id} is {NodeStatus(status).name}")
            return
        if self.state.get("role") != Role.LEADER:
            leader = self.state.get("leader_id")
            self._error(
                client,
                msg.correlation_id,
                cp.ErrorCode.NOT_LEADER,
                f"node {self.config.node_id} is not the leader (leader: {leader or 'unknown'})",
            )
            return
        largest = int(msg.lengths.max())
        if largest > EVENT_BYTES_MAX:
            self._error(
                client,
                msg.correlation_id,
                cp.ErrorCode.TOO_LARGE,
                f"event of {largest} bytes: expected at most {EVENT_BYTES_MAX}",
            )
            return
        count = int(msg.lengths.size)
        if msg.first_sequence + count >= 2**63:
            self._error(client, msg.correlation_id, cp.ErrorCode.MALFORMED, "first_sequence: expected < 2^63 - count")
            return
        timeout_ms = min(msg.timeout_ms or self.config.produce_timeout_ms_default, PRODUCE_TIMEOUT_MAX_MS)
        size = len(msg.data)
        pending = _Pending(
            client,
            msg.correlation_id,
            msg.producer_id,
            msg.first_sequence,
            count,
            size,
            time.monotonic() + timeout_ms / 1000,
            np.full(count, -1, dtype=np.int64),
            count,
            received_ns=time.monotonic_ns(),
        )
        self.by_producer.setdefault(msg.producer_id, []).append(pending)
        client.inflight_bytes += size
        # The PRODUCE body is the batcher's event block as it stands (node/batching.py): no copy, no re-encode.
        self.backlog.append((msg.body, pending))
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        while self.backlog:
            batch = [body for body, _ in itertools.islice(self.backlog, 256)]
            pushed = self.to_batcher.push_many(batch, R1_PUSH_TIMEOUT_MS)
            for _ in range(pushed):
                self.backlog.popleft()
            self.record["records_out"] += pushed
            if pushed < len(batch):
                return
        self._unpark()

    def _resolve(self, pid: int, seqs: np.ndarray, offsets: np.ndarray) -> None:
        """Record known offsets for a producer's sequences in every pending request that holds them."""
        pendings = self.by_producer.get(pid)
        if not pendings:
            return
        lo, hi = int(seqs.min()), int(seqs.max())
        for p in pendings:
            if p.done or hi < p.first_sequence or lo >= p.first_sequence + p.count:
                continue
            rel = seqs.astype(np.int64) - p.first_sequence
            hit = (rel >= 0) & (rel < p.count)
            if not hit.any():
                continue
            idx = rel[hit]
            fresh = p.offsets[idx] < 0
            p.offsets[idx] = offsets[hit]
            p.unresolved -= int(np.count_nonzero(fresh))
            p.max_index = max(p.max_index, int(offsets[hit].max()) // BATCH_EVENTS_MAX)
            if p.unresolved == 0:
                heapq.heappush(self.awaiting_commit, (p.max_index, next(self.seq), p))

    def _fail(self, p: _Pending, code: cp.ErrorCode, message: str) -> None:
        if p.done:
            return
        p.done = True
        p.client.inflight_bytes -= p.size_bytes
        self._forget(p)
        self._error(p.client, p.correlation_id, code, message)

    def _forget(self, p: _Pending) -> None:
        lst = self.by_producer.get(p.producer_id)
        if lst is not None:
            try:
                lst.remove(p)
            except ValueError:
                pass
            if not lst:
                del self.by_producer[p.producer_id]

    def _on_note(self, rec: bytes) -> None:
        note = decode_note(rec)
        if note.kind is NoteKind.APPENDED:
            pids = note.producer_ids
            if pids.size and bool((pids == pids[0]).all()):  # the common case: one producer per note
                self._resolve(int(pids[0]), note.sequences, note.offsets)
                return
            for pid in np.unique(pids).tolist():
                mask = pids == pid
                self._resolve(pid, note.sequences[mask], note.offsets[mask])
        elif note.kind is NoteKind.VERDICTS:
            for pid in np.unique(note.producer_ids).tolist():
                mask = note.producer_ids == pid
                verdicts, seqs, offs = note.verdicts[mask], note.sequences[mask], note.offsets[mask]
                dup = verdicts == dd.DUPLICATE
                if dup.any():
                    self._resolve(pid, seqs[dup], offs[dup])
                bad = ~dup
                if bad.any():
                    self._fail_sequences(pid, seqs[bad], verdicts[bad])
        elif note.kind is NoteKind.COMMIT:
            self._answer_committed()
            self._retry_fetches()
        elif note.kind is NoteKind.LEADER and (note.a != self.known_term or note.b != self.config.node_id):
            self.known_term = note.a
            self._fail_all(cp.ErrorCode.NOT_LEADER, f"leadership changed (term {note.a}, leader {note.b or '?'})")

    def _fail_sequences(self, pid: int, seqs: np.ndarray, verdicts: np.ndarray) -> None:
        for p in list(self.by_producer.get(pid, ())):
            rel = seqs.astype(np.int64) - p.first_sequence
            hit = (rel >= 0) & (rel < p.count)
            if not hit.any():
                continue
            v = int(verdicts[hit][0])
            if v == dd.OUT_OF_ORDER:
                self._fail(
                    p,
                    cp.ErrorCode.OUT_OF_ORDER_SEQUENCE,
                    f"producer {pid}: sequence {int(seqs[hit][0])} does not follow the last one in the log",
                )
            elif v == dd.DUPLICATE_TOO_OLD:
                self._fail(
                    p,
                    cp.ErrorCode.MALFORMED,
                    f"producer {pid}: sequence {int(seqs[hit][0])} was committed long ago (offset forgotten)",
                )
            else:
                self._fail(p, cp.ErrorCode.NOT_LEADER, "leadership changed before the events were appended")

    def _fail_all(self, code: cp.ErrorCode, message: str) -> None:
        for lst in list(self.by_producer.values()):
            for p in list(lst):
                self._fail(p, code, message)
        self.awaiting_commit.clear()

    def _answer_committed(self) -> None:
        commit = self.state.get("commit_index")
        while self.awaiting_commit and self.awaiting_commit[0][0] <= commit:
            _, _, p = heapq.heappop(self.awaiting_commit)
            if p.done:
                continue
            p.done = True
            p.client.inflight_bytes -= p.size_bytes
            self._forget(p)
            self._record_latency(time.monotonic_ns() - p.received_ns)  # counted before the producer can see it
            self._write(p.client, cp.encode_produced(p.correlation_id, p.offsets))
        self._unpark()

    def _record_latency(self, ns: int) -> None:
        """Commit latency of one PRODUCE (receipt to PRODUCED) into the state block's histogram (we are its
        single writer); the supervisor's metrics collector reads it on each scrape."""
        self.latency_buckets[latency_bucket(ns)] += 1
        node = self.state.node
        node["commit_latency_us_sum"] += ns // 1000
        node["commit_latency_count"] += 1

    def _sweep(self, now: float) -> None:
        for lst in list(self.by_producer.values()):
            for p in list(lst):
                if now >= p.deadline:
                    has_quorum = self.state.get("role") == Role.LEADER
                    code = cp.ErrorCode.TIMEOUT if has_quorum else cp.ErrorCode.UNAVAILABLE
                    self._fail(
                        p,
                        code,
                        "not committed within the request's timeout; retry with the same producer id and sequences",
                    )
        if self.state.get("role") != Role.LEADER and self.by_producer:
            self._fail_all(cp.ErrorCode.NOT_LEADER, "this node is no longer the leader")
        self._retry_fetches(now)
        self._unpark()
        self._resume_accept(now)
        if now - self.last_timeout_sweep_s >= TIMEOUT_SWEEP_INTERVAL_MS / 1000:
            self.last_timeout_sweep_s = now
            self._drop_stalled(now)
            self.badlog.flush()

    # --- fetch and metadata --------------------------------------------------------------------------------

    def _reader(self) -> RocksLogReader | None:
        quarantines = self.state.get("quarantines")
        if quarantines != self.reader_quarantines and self.log_reader is not None:
            # the raft worker moved a corrupt log aside and started a new one: this view shows the old files
            self.log.warning("the log was quarantined and re-created; reopening the fetch view")
            self.log_reader.close()
            self.log_reader = None
        self.reader_quarantines = quarantines
        if self.log_reader is None:
            try:
                self.log_reader = RocksLogReader(
                    str(self.config.node_dir / "log"), str(self.config.node_dir / "ingest-secondary")
                )
            except StorageError as exc:
                self.log.debug("log not readable yet: %s", exc)
                return None
        return self.log_reader

    def _fetch(self, client: _Client, req: cp.Fetch, first_try: bool) -> bool:
        """Answer a fetch if committed events exist at or after its offset; park it (long poll) if not."""
        commit = self.state.get("commit_index")
        index, position = divmod(req.from_offset, BATCH_EVENTS_MAX)
        index = max(index, 1)
        commit_offset = (commit + 1) * BATCH_EVENTS_MAX
        reader = self._reader()
        if index > commit or reader is None:
            if first_try and req.max_wait_ms > 0:
                wait_s = min(req.max_wait_ms, FETCH_WAIT_MAX_MS) / 1000
                self.fetches.append(_Fetch(client, req, time.monotonic() + wait_s))
                return False
            self._write(client, cp.encode_fetched(req.correlation_id, req.from_offset, commit_offset, [], []))
            return True
        if reader.last_index() < commit:
            reader.catch_up()
        max_bytes = max(1, min(req.max_bytes, self.config.fetch_bytes_max))
        try:
            entries = reader.entries(index, min(commit, reader.last_index()) + 1, max_bytes)
        except LogCompactedError as exc:
            self._error(
                client,
                req.correlation_id,
                cp.ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {req.from_offset}: the oldest retained is {exc.first_index * BATCH_EVENTS_MAX}",
            )
            return True
        offsets, lengths, datas = [], [], []
        total = 0
        next_offset = req.from_offset
        for e in entries:
            next_offset = (e.index + 1) * BATCH_EVENTS_MAX
            if not e.data:
                continue
            b = decode_batch(e.data)
            skip = position if e.index == index else 0
            if skip >= b.header.event_count:
                continue
            n = b.header.event_count - skip
            offs = e.index * BATCH_EVENTS_MAX + np.arange(skip, skip + n, dtype=np.uint64)
            start = int(b.offsets[skip])
            offsets.append(offs)
            lengths.append(b.lengths[skip:])
            datas.append(b.data[start:])
            total += len(b.data) - start
            if total >= max_bytes:
                break
        if offsets:
            body = _fetched(
                req.correlation_id, next_offset, commit_offset, np.concatenate(offsets), np.concatenate(lengths), datas
            )
            self._write(client, body)
        else:
            self._write(client, cp.encode_fetched(req.correlation_id, next_offset, commit_offset, [], []))
        return True

    def _retry_fetches(self, now: float | None = None) -> None:
        if not self.fetches:
            return
        now = time.monotonic() if now is None else now
        waiting = self.fetches
        self.fetches = []
        for f in waiting:
            if f.client.closed:
                continue
            commit = self.state.get("commit_index")
            ready = f.request.from_offset // BATCH_EVENTS_MAX <= commit
            if ready or now >= f.deadline:
                self._fetch(f.client, f.request, first_try=False)
            else:
                self.fetches.append(f)

    def _metadata(self, client: _Client, msg: cp.Metadata) -> None:
        members = [cp.Member(m.node_id, m.host, m.client_port) for m in self.config.members]
        self._write(
            client,
            cp.encode_metadata_answer(
                msg.correlation_id,
                self.state.get("term"),
                self.state.get("leader_id"),
                self.state.get("commit_index"),
                self.config.node_id,
                members,
            ),
        )


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


def _fetched(
    cid: int, next_offset: int, commit_offset: int, offsets: np.ndarray, lengths: np.ndarray, datas: list[memoryview]
) -> bytes:
    """A FETCHED answer built from whole batches (no per-event objects)."""
    head = cp.struct.pack("<QQI", next_offset, commit_offset, offsets.size)
    body = b"".join([head, offsets.astype("<u8").tobytes(), lengths.astype("<u4").tobytes(), *datas])
    return cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.FETCHED, len(body), cid) + body
