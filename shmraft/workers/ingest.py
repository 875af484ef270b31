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
import time
from collections import deque
from typing import Final

import numpy as np

from shmraft.ingest.connections import ClientConnections, Connection
from shmraft.ingest.fetch import FetchServer
from shmraft.ingest.groups import GroupRequests
from shmraft.ingest.kafka_door import KafkaDoor
from shmraft.ingest.kafka_listener import KafkaConnections
from shmraft.ingest.limits import node_limits
from shmraft.ingest.tracker import NS_PER_MS, Answer, ProduceTracker
from shmraft.ipc.state import NodeStatus, Worker, latency_bucket
from shmraft.ipc.trace import IngestTrace
from shmraft.kafka import checksum
from shmraft.net import auth
from shmraft.node import groups as gr
from shmraft.node import members as mb
from shmraft.node.layout import Ring
from shmraft.node.records import (
    ChangeRequest,
    GroupRequestKind,
    NoteKind,
    decode_note,
    decode_result,
    encode_change_request,
)
from shmraft.raft.types import Role
from shmraft.wire import client as cp
from shmraft.workers.base import Inbox, LoopSelector, WorkerBase, selector_loop_once

LOOP_WAIT_MS: Final = 50
R1_PUSH_TIMEOUT_MS: Final = 0
R1_PUSH_RECORDS_MAX: Final = 256  # bodies offered to R1 per push
MEMBER_CHANGE_TIMEOUT_MS_DEFAULT: Final = 10_000  # a MEMBER_CHANGE with timeout_ms 0 waits this long
MEMBER_CHANGE_TIMEOUT_MS_MAX: Final = 120_000
R6_PUSH_TIMEOUT_MS: Final = 50


class IngestWorker(WorkerBase):
    kind = Worker.INGEST

    def __init__(self, config) -> None:
        super().__init__(config)
        self.sel = LoopSelector()
        self.backlog: deque[bytes] = deque()  # PRODUCE bodies waiting for room in R1
        self.conns = ClientConnections(
            self.sel, config, self.state, self.record, self.log, self._on_request, lambda: bool(self.backlog)
        )
        self.to_batcher = self.layout.writer(Ring.R1)
        self.to_raft = self.layout.writer(Ring.R6)  # control requests: membership changes, consumer groups
        self.groups = GroupRequests()
        self.notes = Inbox(self.layout.reader(Ring.R5), Ring.R5, self.sel)
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
            self.door.submit_group = self.submit_group  # OffsetCommit / OffsetFetch: the native group path
            self.door.members_view = self.view  # Metadata and FindCoordinator: the configuration in effect
            if not checksum.ACCELERATED:
                self.log.warning("the crc32c package is missing: Kafka record batches use pure-Python CRC-32C (slow)")
        self.secret = auth.cluster_secret(config)  # MEMBER_CHANGE must be signed with it
        # MEMBER_CHANGE requests handed to the raft worker: request id -> (connection id, correlation id, deadline)
        self.changes: dict[int, tuple[int, int, int]] = {}
        self._change_ids = itertools.count(time.time_ns())  # unique across restarts of this worker
        self._view_epoch = -1
        self._view = mb.static_view(config)
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
        self.groups.expire(now_ns, is_leader)
        if not is_leader and self.tracker.waiting:
            self._deliver(self.tracker.fail_all(cp.ErrorCode.NOT_LEADER, "this node is no longer the leader"))
        self.fetches.retry(now)
        for rid, (conn_id, cid, deadline) in list(self.changes.items()):
            if now_ns >= deadline:
                del self.changes[rid]
                conn = self.conns.by_id.get(conn_id)
                if conn is not None:
                    self._error(
                        conn,
                        cid,
                        cp.ErrorCode.TIMEOUT,
                        "the change is not known to be committed; it may still be: list the members",
                    )
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
        elif isinstance(msg, cp.Members):
            self._members(conn, msg)
        elif isinstance(msg, cp.MemberChange):
            self._member_change(conn, msg)
        elif isinstance(msg, (cp.GroupCommit, cp.GroupFetch, cp.Groups)):
            self._group_request(conn, msg)
        else:
            raise cp.MessageError(
                "kind",
                "a request (PRODUCE, FETCH, METADATA, AUTH, MEMBERS, MEMBER_CHANGE, GROUP_COMMIT, GROUP_FETCH, GROUPS)",
                type(msg).__name__,
                msg.correlation_id,
            )

    def _on_kafka_request(self, conn: Connection, req: object) -> None:
        assert self.door is not None
        self.door.on_request(conn, req)  # type: ignore[arg-type]

    def _refused_unless_serving_leader(self, conn: Connection, correlation_id: int, stopping: cp.ErrorCode) -> bool:
        """Answer a request only a serving leader takes with the error it gets here (`stopping`: the code while
        this node stops); True when it was refused."""
        status = self.state.get("status")
        if status != NodeStatus.SERVING:
            code = stopping if status == NodeStatus.STOPPING else cp.ErrorCode.UNAVAILABLE
            self._error(conn, correlation_id, code, f"node {self.config.node_id} is {NodeStatus(status).name}")
            return True
        if self.state.get("role") != Role.LEADER:
            leader = self.state.get("leader_id")
            self._error(
                conn,
                correlation_id,
                cp.ErrorCode.NOT_LEADER,
                f"node {self.config.node_id} is not the leader (leader: {leader or 'unknown'})",
            )
            return True
        return False

    def _produce(self, conn: Connection, msg: cp.Produce) -> None:
        if self._refused_unless_serving_leader(conn, msg.correlation_id, cp.ErrorCode.SHUTTING_DOWN):
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

    def view(self) -> mb.MembersView:
        """The configuration in effect (the raft worker's members file), re-read when its epoch moves."""
        epoch = self.state.get("members_epoch")
        if epoch != self._view_epoch:
            try:
                self._view = mb.current_view(self.config)
                self._view_epoch = epoch
            except (OSError, mb.AddressError) as exc:
                self.log.error("members file unreadable (%s); keeping the previous configuration", exc)
        return self._view

    def _metadata(self, conn: Connection, msg: cp.Metadata) -> None:
        members = [cp.Member(v.member.node_id, v.member.host, v.member.client_port) for v in self.view().members]
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
                conn.reader.version,
            ),
        )

    def _members(self, conn: Connection, msg: cp.Members) -> None:
        """MEMBERS: the configuration in effect; how far behind each member is when this node leads."""
        view = self.view()
        leading = self.state.get("role") == Role.LEADER
        last = self.state.get("last_index")
        progress = {int(p["node_id"]): p for p in self.state.peers if p["node_id"]}
        infos = []
        for v in view.members:
            node_id = v.member.node_id
            role = cp.MemberRole.VOTER if v.role == mb.ROLE_VOTER else cp.MemberRole.LEARNER
            if node_id == self.config.node_id:
                match, behind = last, 0 if leading else cp.BEHIND_UNKNOWN
            elif leading and node_id in progress:
                match, behind = int(progress[node_id]["match"]), int(progress[node_id]["entries_behind"])
            else:
                match, behind = 0, cp.BEHIND_UNKNOWN
            infos.append(cp.MemberInfo(node_id, role, match, behind, mb.encode_address(v.member)))
        flags = cp.MembersFlag(0)
        if self.state.get("config_index") > self.state.get("commit_index"):
            flags |= cp.MembersFlag.CHANGE_PENDING
        if self.state.get("removed"):
            flags |= cp.MembersFlag.REMOVED
        answer = cp.encode_members_answer(
            msg.correlation_id, self.state.get("config_index"), self.state.get("leader_id"), last, flags, infos
        )
        self.conns.write(conn, answer)

    def _member_change(self, conn: Connection, msg: cp.MemberChange) -> None:
        """MEMBER_CHANGE: signed with the cluster secret, else refused and the connection closed; then to the
        raft worker (R6), answered when its outcome note comes back (or TIMEOUT)."""
        why = auth.member_change_refusal(
            self.secret, self.config.cluster_id, msg.signed_bytes, msg.mac, msg.unix_ms, int(time.time() * 1000)
        )
        if why:
            self.log.warning("client %s: MEMBER_CHANGE refused: %s; disconnected", conn.addr, why)
            self.conns.send_error_and_close(conn, msg.correlation_id, cp.ErrorCode.UNAUTHORIZED, f"unauthorized: {why}")
            return
        if self._refused_unless_serving_leader(conn, msg.correlation_id, cp.ErrorCode.UNAVAILABLE):
            return
        rid = next(self._change_ids)
        rec = encode_change_request(ChangeRequest(rid, int(msg.op), msg.node_id, msg.address))
        if not self.to_raft.push_many([rec], R6_PUSH_TIMEOUT_MS):
            self._error(conn, msg.correlation_id, cp.ErrorCode.UNAVAILABLE, "the raft worker is not taking requests")
            return
        timeout_ms = min(msg.timeout_ms or MEMBER_CHANGE_TIMEOUT_MS_DEFAULT, MEMBER_CHANGE_TIMEOUT_MS_MAX)
        self.changes[rid] = (conn.id, msg.correlation_id, time.monotonic_ns() + timeout_ms * NS_PER_MS)
        self.log.info("client %s: %s of node %d handed to the raft worker", conn.addr, msg.op.name, msg.node_id)

    def _on_change_result(self, request_id: int, index: int, code: int, text: str) -> None:
        pending = self.changes.pop(request_id, None)
        if pending is None:
            return  # timed out already, or asked of an earlier incarnation of this worker
        conn = self.conns.by_id.get(pending[0])
        if conn is None:
            return
        if code == 0:
            self.conns.write(conn, cp.encode_member_changed(pending[1], index))
        else:
            self._error(conn, pending[1], cp.ErrorCode(code), text)

    # --- consumer groups (ingest/groups.py; the raft worker's side: workers/raft_groups.py) -------------------

    def submit_group(
        self, kind: GroupRequestKind, flags: int, body: bytes, reply, timeout_ms: int = 0
    ) -> cp.ErrorCode | None:
        """Send a group request to the raft worker (R6); `reply(status, payload)` is called once. Returns an
        error code instead when it cannot be sent (the caller answers it; `reply` is never called)."""
        record = self.groups.submit(kind, flags, body, reply, timeout_ms, time.monotonic_ns())
        if record is None:
            return cp.ErrorCode.UNAVAILABLE
        if self.to_raft.push_many([record], 0) != 1:
            self.groups.withdraw(record)
            return cp.ErrorCode.UNAVAILABLE
        return None

    def _group_request(self, conn: Connection, msg: cp.GroupCommit | cp.GroupFetch | cp.Groups) -> None:
        """Native GROUP_COMMIT, GROUP_FETCH, GROUPS: checked here, answered from the raft worker's result."""
        cid = msg.correlation_id
        group = getattr(msg, "group", None)
        if group is not None and len(group.encode()) > gr.GROUP_NAME_BYTES_MAX:
            self._error(
                conn,
                cid,
                cp.ErrorCode.GROUP_NAME_TOO_LONG,
                f"group name: expected at most {gr.GROUP_NAME_BYTES_MAX} bytes, got {len(group.encode())}",
            )
            return
        if isinstance(msg, cp.GroupCommit):
            if self.state.get("role") != Role.LEADER:
                self._error(conn, cid, cp.ErrorCode.NOT_LEADER, f"node {self.config.node_id} is not the leader")
                return
            if len(msg.metadata) > gr.GROUP_METADATA_BYTES_MAX:
                self._error(
                    conn, cid, cp.ErrorCode.TOO_LARGE, f"metadata: expected at most {gr.GROUP_METADATA_BYTES_MAX} bytes"
                )
                return
            body = gr.encode_commit(gr.GroupCommit(msg.group, msg.offset, int(time.time() * 1000), msg.metadata))
            kind, flags, timeout_ms = GroupRequestKind.COMMIT, 0, msg.timeout_ms
        elif isinstance(msg, cp.GroupFetch):
            kind, flags, timeout_ms, body = GroupRequestKind.FETCH, msg.flags, 0, msg.group.encode()
        else:
            kind, flags, timeout_ms, body = GroupRequestKind.LIST, msg.flags, 0, b""
        conn_id = conn.id

        def reply(status: int, payload: bytes) -> None:
            c = self.conns.by_id.get(conn_id)
            if c is None:
                return
            if status:
                code = cp.ErrorCode(status)
                text = {
                    cp.ErrorCode.UNKNOWN_GROUP: f"group {group!r} has no committed position",
                    cp.ErrorCode.TOO_MANY_GROUPS: f"{gr.GROUPS_MAX} groups exist already: no new group is accepted",
                    cp.ErrorCode.NOT_LEADER: "not the leader (or not yet committed in its term)",
                }.get(code, code.name.lower())
                self._error(c, cid, code, text)
                return
            r = decode_result(payload)
            table = r.table
            if kind is GroupRequestKind.COMMIT:
                self.conns.write(c, cp.encode_group_committed(cid, r.entry_index))
            elif kind is GroupRequestKind.FETCH:
                row = table.get(group) if table is not None else None
                assert row is not None
                self.conns.write(
                    c,
                    cp.encode_group_position(
                        cid, row.offset, row.commit_unix_ms, row.index, r.applied_index, r.end_offset, row.metadata
                    ),
                )
            else:
                rows = [] if table is None else table.rows()
                groups = [cp.GroupRow(n, r.offset, r.commit_unix_ms, r.index) for n, r in sorted(rows.items())]
                self.conns.write(c, cp.encode_groups_answer(cid, r.applied_index, r.end_offset, groups))

        refused = self.submit_group(kind, flags, body, reply, timeout_ms)
        if refused is not None:
            self._error(conn, cid, refused, "too many group requests waiting; retry")

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
            if not (note.a == self.tracker.known_term and note.b == self.config.node_id):
                self.groups.on_leadership_lost()
        elif note.kind is NoteKind.CHANGE_RESULT:
            self._on_change_result(note.a, note.b, note.code, note.text)
        elif note.kind is NoteKind.GROUP_RESULT:
            self.groups.on_result(note.a, note.b, note.payload)

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
            known = self.view().get(leader_id) if leader_id and leader_id != self.config.node_id else None
            if known is not None:
                leader = known.member.client_address
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
