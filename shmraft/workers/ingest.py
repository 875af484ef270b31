"""The ingest worker: the client-facing TCP server (docs/PROTOCOL.md section 2), wired to the rings.

PRODUCE: on the leader, a valid request's body goes to the batcher unchanged (R1) and the request waits in
the produce tracker (shmraft/ingest/tracker.py); the raft worker's notes (R5) say at which log index each
event was appended (or that it is a duplicate, with its offset, or refused), and the request is answered
once the commit index covers all its events. Elsewhere the answer is NOT_LEADER with the leader's address.
FETCH: committed events from any node (shmraft/ingest/fetch.py). METADATA: from the shared state block.
Connections, TLS, the client token, limits and bad input: shmraft/ingest/connections.py.
The Kafka door (on where the member has a `kafka_port`): its connections (shmraft/ingest/kafka_listener.py)
in the same selector loop, its requests mapped onto the same tracker, R1 writes and fetch server
(shmraft/ingest/kafka_door.py): one commit path.

When the R1 ring is full, bodies wait here in order and no connection is read until the batcher catches up.
"""

from __future__ import annotations

import itertools
import selectors
import time
from collections import deque
from typing import Final

import numpy as np

from shmraft.ingest.connections import ClientConnections, Connection
from shmraft.ingest.fetch import FetchServer
from shmraft.ingest.kafka_door import KafkaDoor
from shmraft.ingest.kafka_listener import KafkaConnections
from shmraft.ingest.limits import node_limits
from shmraft.ingest.tracker import NS_PER_MS, Answer, ProduceTracker
from shmraft.ipc.state import NodeStatus, Worker, latency_bucket
from shmraft.ipc.trace import IngestTrace
from shmraft.kafka import checksum
from shmraft.node.layout import Ring
from shmraft.node.records import NoteKind, decode_note
from shmraft.raft.types import Role
from shmraft.wire import client as cp
from shmraft.workers.base import Inbox, WorkerBase, selector_loop_once

LOOP_WAIT_MS: Final = 50
R1_PUSH_TIMEOUT_MS: Final = 0
R1_PUSH_RECORDS_MAX: Final = 256  # bodies offered to R1 per push


class IngestWorker(WorkerBase):
    kind = Worker.INGEST

    def __init__(self, config) -> None:
        super().__init__(config)
        self.sel = selectors.DefaultSelector()
        self.backlog: deque[bytes] = deque()  # PRODUCE bodies waiting for room in R1
        self.conns = ClientConnections(
            self.sel, config, self.state, self.record, self.log, self._on_request, lambda: bool(self.backlog)
        )
        self.to_batcher = self.layout.writer(Ring.R1)
        self.notes = Inbox(self.layout.reader(Ring.R5), Ring.R5)
        self.sel.register(self.notes, selectors.EVENT_READ, lambda _m: None)
        self.tracker = ProduceTracker(config.node_id, self.state.get("term"), config.produce_timeout_ms_default)
        self.fetches = FetchServer(config, self.state, self.log, self._write)
        self.kafka: KafkaConnections | None = None
        self.door: KafkaDoor | None = None
        if config.me.kafka_port:
            self.kafka = KafkaConnections(
                self.sel, config, self.state, self.record, self.log, self._on_kafka_request, self.conns.hold_reads
            )
            self.door = KafkaDoor(
                config, self.state, self.log, self.fetches, self._admit, self.kafka.write, self.kafka.close
            )
            if not checksum.ACCELERATED:
                self.log.warning("the crc32c package is missing: Kafka record batches use pure-Python CRC-32C (slow)")
        self.latency_buckets = self.state.node["commit_latency_buckets"]  # a view into the state block
        self.trace = IngestTrace(self.state.trace, config.trace_sample_every)
        self.limits = node_limits(config)

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        last_sweep_ns = time.monotonic_ns()
        try:
            while not self.stopping:
                self.beat()
                selector_loop_once(self.sel, LOOP_WAIT_MS / 1000)
                for rec in self.notes.take():
                    self._on_note(rec)
                self._drain_backlog()
                self._answer_committed()
                now_ns = time.monotonic_ns()
                if now_ns - last_sweep_ns >= LOOP_WAIT_MS * NS_PER_MS:
                    last_sweep_ns = now_ns
                    self._sweep(now_ns)
        finally:
            self.conns.shutdown(cp.ErrorCode.SHUTTING_DOWN, "node is stopping")
            if self.kafka is not None:
                self.kafka.shutdown(cp.ErrorCode.SHUTTING_DOWN, "node is stopping")
            self.notes.close()
            self.fetches.close()

    def _sweep(self, now_ns: int) -> None:
        """Every LOOP_WAIT_MS: expired requests, leadership lost, long polls due, paused and stalled clients."""
        now = now_ns / 1e9  # the same monotonic clock, in seconds
        is_leader = self.state.get("role") == Role.LEADER
        self._deliver(self.tracker.expire(now_ns, is_leader))
        if not is_leader and self.tracker.waiting:
            self._deliver(self.tracker.fail_all(cp.ErrorCode.NOT_LEADER, "this node is no longer the leader"))
        self.fetches.retry(now)
        for conns in self._listeners():
            conns.unpark()
            conns.maintain(now, self.fetches.waiting_connections)

    # --- requests ------------------------------------------------------------------------------------------

    def _on_request(self, conn: Connection, msg: cp.Message) -> None:
        if isinstance(msg, cp.Produce):
            self._produce(conn, msg)
        elif isinstance(msg, cp.Fetch):
            self.fetches.fetch(conn, msg, time.monotonic())
        elif isinstance(msg, cp.Metadata):
            self._metadata(conn, msg)
        else:
            raise cp.MessageError(
                "kind", "a request (PRODUCE, FETCH, METADATA, AUTH)", type(msg).__name__, msg.correlation_id
            )

    def _on_kafka_request(self, conn: Connection, req: object) -> None:
        assert self.door is not None
        self.door.on_request(conn, req)  # type: ignore[arg-type]

    def _produce(self, conn: Connection, msg: cp.Produce) -> None:
        status = self.state.get("status")
        if status != NodeStatus.SERVING:
            code = cp.ErrorCode.SHUTTING_DOWN if status == NodeStatus.STOPPING else cp.ErrorCode.UNAVAILABLE
            self._error(conn, msg.correlation_id, code, f"node {self.config.node_id} is {NodeStatus(status).name}")
            return
        if self.state.get("role") != Role.LEADER:
            leader = self.state.get("leader_id")
            self._error(
                conn,
                msg.correlation_id,
                cp.ErrorCode.NOT_LEADER,
                f"node {self.config.node_id} is not the leader (leader: {leader or 'unknown'})",
            )
            return
        # The PRODUCE body is the batcher's event block as it stands (node/batching.py): no copy, no re-encode.
        refused = self._admit(
            conn,
            msg.correlation_id,
            msg.producer_id,
            msg.first_sequence,
            msg.lengths,
            msg.body,
            len(msg.data),
            msg.timeout_ms,
        )
        if refused is not None:
            self._deliver([refused])

    def _admit(
        self,
        conn: Connection,
        cid: int,
        producer_id: int,
        first_sequence: int,
        lengths: np.ndarray,
        block: bytes | memoryview,
        size: int,
        timeout_ms: int,
    ) -> Answer | None:
        """The one produce path (native PRODUCE and Kafka Produce): the tracker, then the event block to the
        batcher. Returns the tracker's refusal (not yet delivered), or None once admitted."""
        sampled = self.trace.sample()
        refused = self.tracker.submit(
            conn.id, cid, producer_id, first_sequence, lengths, size, timeout_ms, time.monotonic_ns()
        )
        if refused is not None:
            return refused
        conn.inflight_bytes += size
        if sampled:
            self.trace.admitted(producer_id, first_sequence, conn.id, cid, queued=bool(self.backlog))
        self.backlog.append(block)
        self._drain_backlog()
        return None

    def _metadata(self, conn: Connection, msg: cp.Metadata) -> None:
        members = [cp.Member(m.node_id, m.host, m.client_port) for m in self.config.members]
        self.conns.write(
            conn,
            cp.encode_metadata_answer(
                msg.correlation_id,
                self.state.get("term"),
                self.state.get("leader_id"),
                self.state.get("commit_index"),
                self.config.node_id,
                members,
                self.limits,
            ),
        )

    # --- R1 and R5 -----------------------------------------------------------------------------------------

    def _drain_backlog(self) -> None:
        while self.backlog:
            batch = list(itertools.islice(self.backlog, R1_PUSH_RECORDS_MAX))
            pushed = self.to_batcher.push_many(batch, R1_PUSH_TIMEOUT_MS)
            for _ in range(pushed):
                self.backlog.popleft()
            self.record["records_out"] += pushed
            if pushed < len(batch):
                return
        for conns in self._listeners():
            conns.unpark()

    def _on_note(self, rec: bytes) -> None:
        note = decode_note(rec)
        if note.kind is NoteKind.APPENDED:
            self.tracker.on_appended(note.producer_ids, note.sequences, note.offsets)
        elif note.kind is NoteKind.VERDICTS:
            self._deliver(self.tracker.on_verdicts(note.producer_ids, note.sequences, note.verdicts, note.offsets))
        elif note.kind is NoteKind.COMMIT:
            self.trace.commit_seen(note.a)
            self._answer_committed()
            self.fetches.retry(time.monotonic())
        elif note.kind is NoteKind.LEADER:
            self._deliver(self.tracker.on_leader(note.a, note.b))

    # --- answers out ---------------------------------------------------------------------------------------

    def _answer_committed(self) -> None:
        self._deliver(self.tracker.committed(self.state.get("commit_index"), time.monotonic_ns()))
        for conns in self._listeners():
            conns.unpark()

    def _deliver(self, answers: list[Answer]) -> None:
        """Write the tracker's answers to their connections (those still open), in order."""
        for a in answers:
            conn = self.conns.by_id.get(a.conn_id)
            kafka_conn = self.kafka.by_id.get(a.conn_id) if self.kafka is not None else None
            for c in (conn, kafka_conn):
                if c is not None:
                    c.inflight_bytes -= a.size_bytes
            if a.offsets is not None:
                self._record_latency(a.latency_ns)  # counted before the producer can see it
            if self.door is not None and conn is None:
                self.door.on_answer(a)  # a Kafka Produce's chunk (ignored unless it is one)
            elif conn is None:
                pass  # the connection has closed
            elif a.offsets is not None:
                self.conns.write(conn, cp.encode_produced(a.correlation_id, a.offsets))
            else:
                self._error(conn, a.correlation_id, a.code, a.message)
            self.trace.answered(a.conn_id, a.correlation_id, a.offsets is not None)

    def _write(self, conn: Connection, data: bytes) -> None:
        """Queue an answer on a connection of either listener."""
        if self.kafka is not None and conn.id in self.kafka.by_id:
            self.kafka.write(conn, data)
        else:
            self.conns.write(conn, data)

    def _listeners(self) -> list[ClientConnections]:
        return [self.conns] if self.kafka is None else [self.conns, self.kafka]

    def _error(self, conn: Connection, cid: int, code: cp.ErrorCode, message: str) -> None:
        leader = ""
        if code is cp.ErrorCode.NOT_LEADER:
            leader_id = self.state.get("leader_id")
            if leader_id and leader_id != self.config.node_id:
                leader = self.config.member(leader_id).client_address
        answer = cp.encode_error(cid, code, message, leader)
        if code.closes_connection:
            self.conns.send_and_close(conn, answer)
        else:
            self.conns.write(conn, answer)

    def _record_latency(self, ns: int) -> None:
        """Commit latency of one PRODUCE (receipt to PRODUCED) into the state block's histogram (we are its
        single writer); the supervisor's metrics collector reads it on each scrape."""
        self.latency_buckets[latency_bucket(ns)] += 1
        node = self.state.node
        node["commit_latency_us_sum"] += ns // 1000
        node["commit_latency_count"] += 1
