"""The Kafka door: Kafka requests in, the ingest worker's produce tracker and fetch server called, Kafka
responses out (docs/KAFKA.md: the mapping decisions).

There is no second commit path: a Produce is admitted exactly as a native PRODUCE is (`admit`, the worker's:
the produce tracker, then the batcher's ring) and answered from the tracker's `Answer`; a Fetch is served by
the same `FetchServer`, with an encoder that writes Kafka record batches. One topic (`KAFKA_TOPIC`), one
partition (0). Kafka offsets are shmraft offsets (`index * 64 + position`, gaps included); the record value
is the event; idempotent producers map onto shmraft's (producer id, sequence) dedup.

Answers on a connection go out in request order (Kafka's rule; kafka-python checks it), whatever order the
tracker and the long polls finish in. Group offsets: FindCoordinator names the leader; OffsetCommit and
OffsetFetch are the native consumer-group requests (GROUP_COMMIT, GROUP_FETCH: the raft worker's table of
positions kept in the log, through the ingest worker's `submit_group`), answered NOT_COORDINATOR off the
leader. Group membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and transactions are not served and
not advertised: a request for one of them closes the connection, as Kafka does for unknown APIs.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from shmraft.config import NodeConfig
from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.ingest.connections import Connection
from shmraft.ingest.fetch import FetchResult, FetchServer
from shmraft.ingest.tracker import Answer
from shmraft.ipc.state import NodeStatus, StateBlock
from shmraft.kafka import codec
from shmraft.kafka import messages as m
from shmraft.kafka.codes import ApiKey, ErrorCode
from shmraft.kafka.errors import KafkaRemoteError, UnsupportedRequest
from shmraft.kafka.records import TIMESTAMP_TYPE_BIT, Record, RecordBatch, decode_batches, encode_batch
from shmraft.kafka.versions import supported_ranges
from shmraft.node import groups as gr
from shmraft.node import members as mb
from shmraft.node.batching import BLOCK_HEAD
from shmraft.node.dedup import KAFKA_PRODUCER_BIT, KAFKA_SEQUENCE_BASE, KAFKA_SEQUENCE_MODULUS
from shmraft.node.records import GroupRequestKind, decode_result
from shmraft.raft.types import Role
from shmraft.wire import client as cp

KAFKA_TOPIC: Final = "events"  # the one topic: shmraft's log
KAFKA_PARTITION: Final = 0  # its one partition
ACKS_ALL: Final = -1
ACKS_LEADER: Final = 1  # answered as acks=all: never a weaker guarantee (docs/KAFKA.md section 5)
ACKS_NONE: Final = 0
KAFKA_PRODUCER_ID_BITS: Final = 47  # InitProducerId's random ids
PRODUCER_EPOCH_BITS: Final = 16
NATIVE_PRODUCER_ID_BITS: Final = 63  # non-idempotent Kafka connections: random ids with bit 63 clear
NOT_ADVERTISED: Final = frozenset[ApiKey]()  # every API the codec serves is advertised (docs/KAFKA.md section 7)
# Group requests' results (wire.client codes from the raft worker) as Kafka errors (docs/KAFKA.md section 7).
KAFKA_GROUP_ERROR_OF: Final = {
    cp.ErrorCode.NOT_LEADER: ErrorCode.NOT_COORDINATOR,
    cp.ErrorCode.TIMEOUT: ErrorCode.REQUEST_TIMED_OUT,
    cp.ErrorCode.UNAVAILABLE: ErrorCode.COORDINATOR_NOT_AVAILABLE,
    cp.ErrorCode.TOO_MANY_GROUPS: ErrorCode.INVALID_GROUP_ID,
}
RECORD_VALUES_ONLY: Final = "shmraft stores record values only: send key=None and no headers"

# The tracker's answers as Kafka errors (docs/KAFKA.md section 4).
KAFKA_ERROR_OF: Final = {
    cp.ErrorCode.NOT_LEADER: ErrorCode.NOT_LEADER_OR_FOLLOWER,
    cp.ErrorCode.TOO_LARGE: ErrorCode.MESSAGE_TOO_LARGE,
    cp.ErrorCode.MALFORMED: ErrorCode.INVALID_RECORD,
    cp.ErrorCode.TIMEOUT: ErrorCode.REQUEST_TIMED_OUT,
    cp.ErrorCode.UNAVAILABLE: ErrorCode.NOT_LEADER_OR_FOLLOWER,
    cp.ErrorCode.SHUTTING_DOWN: ErrorCode.NOT_LEADER_OR_FOLLOWER,
    cp.ErrorCode.OUT_OF_ORDER_SEQUENCE: ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    cp.ErrorCode.SEQUENCE_TOO_OLD: ErrorCode.DUPLICATE_SEQUENCE_NUMBER,  # committed once, offsets forgotten
    cp.ErrorCode.OFFSET_OUT_OF_RANGE: ErrorCode.OFFSET_OUT_OF_RANGE,
}

# admit(conn, tracker correlation id, producer id, first sequence, lengths, event block, event bytes, timeout_ms):
# the worker's one produce path; returns the tracker's immediate refusal, or None once admitted.
Admit = Callable[[Connection, int, int, int, np.ndarray, bytes, int, int], Answer | None]
# submit_group(kind, flags, body, reply(status, payload), timeout_ms): the worker's group path (ingest/groups.py);
# returns an error code when the request cannot be sent (then reply is never called).
SubmitGroup = Callable[[GroupRequestKind, int, bytes, Callable[[int, bytes], None], int], cp.ErrorCode | None]


@dataclass(eq=False, slots=True)
class _Produce:
    """A Kafka Produce waiting for the tracker's answers to its chunks."""

    conn: Connection
    request: codec.Request
    acks: int
    responses: list[m.ProduceTopicResponse]  # in request order; the partition served is filled in at the end
    served: m.ProducePartitionResponse | None = None
    chunks_left: int = 0
    first_offset: int = -1
    error: ErrorCode = ErrorCode.NONE
    message: str = ""


@dataclass(eq=False, slots=True)
class KafkaSession:
    """What the door keeps per Kafka connection: answers held for request order, and the shmraft producer of a
    non-idempotent Kafka producer (a random id per connection, renewed after any failure)."""

    order: deque[int] = field(default_factory=deque)  # correlation ids owed an answer, in request order
    ready: dict[int, bytes] = field(default_factory=dict)  # answers waiting for the ones before them
    producer_id: int = -1
    next_sequence: int = 0


class KafkaDoor:
    """Kafka requests to tracker and fetch calls, and their answers back as Kafka responses."""

    def __init__(
        self,
        config: NodeConfig,
        state: StateBlock,
        log: logging.Logger,
        fetches: FetchServer,
        admit: Admit,
        write: Callable[[Connection, bytes], None],
        close: Callable[[Connection], None],
    ) -> None:
        self.config = config
        self.state = state
        self.log = log
        self.fetches = fetches
        self.admit = admit
        self.write = write  # queue bytes on a connection
        self.close = close
        # (connection id, tracker correlation id) -> the Kafka Produce the chunk belongs to
        self.waiting: dict[tuple[int, int], _Produce] = {}
        self._tracker_ids = itertools.count(1)
        self.api_versions = [r for r in supported_ranges() if r.api_key not in NOT_ADVERTISED]
        self.submit_group: SubmitGroup | None = None  # set by the ingest worker; None: groups unavailable
        # The configuration in effect (Metadata's brokers, FindCoordinator): the ingest worker sets its `view`,
        # the members file the raft worker keeps, so Kafka clients follow membership changes as native ones do.
        self.members_view: Callable[[], mb.MembersView] = lambda: mb.static_view(config)

    # --- requests in -------------------------------------------------------------------------------------------

    def on_request(self, conn: Connection, req: codec.Request) -> None:
        """One decoded request; an API not served raises UnsupportedRequest (the listener closes the connection)."""
        if conn.session is None:
            conn.session = KafkaSession()
        key = req.api_key
        if key == ApiKey.API_VERSIONS:
            error = ErrorCode.NONE if req.supported else ErrorCode.UNSUPPORTED_VERSION
            self._answer(conn, req, m.ApiVersionsResponse(error_code=error, api_keys=self.api_versions))
        elif key == ApiKey.METADATA:
            self._answer(conn, req, self._metadata(req.body, req.version))
        elif key == ApiKey.PRODUCE:
            self._produce(conn, req)
        elif key == ApiKey.FETCH:
            self._fetch(conn, req)
        elif key == ApiKey.LIST_OFFSETS:
            self._answer(conn, req, self._list_offsets(req.body))
        elif key == ApiKey.INIT_PRODUCER_ID:
            self._answer(conn, req, self._init_producer_id(req.body))
        elif key == ApiKey.FIND_COORDINATOR:
            self._answer(conn, req, self._find_coordinator(req.body))
        elif key == ApiKey.OFFSET_COMMIT:
            self._offset_commit(conn, req)
        elif key == ApiKey.OFFSET_FETCH:
            self._offset_fetch(conn, req)
        else:  # decoded by the codec but not served (cannot happen: the codec refuses unknown keys first)
            raise UnsupportedRequest(key, req.version, req.header.correlation_id)

    # --- group offsets (docs/KAFKA.md section 7) ---------------------------------------------------------------

    def _find_coordinator(self, body: m.FindCoordinatorRequest) -> m.FindCoordinatorResponse:
        """The coordinator of every group is the current leader (its Kafka port); none during an election."""
        leader = self.state.get("leader_id")
        found = self.members_view().get(leader) if leader else None
        member = found.member if found is not None and found.member.kafka_port else None
        if body.key_type != m.COORDINATOR_KEY_GROUP:
            return m.FindCoordinatorResponse(
                0, ErrorCode.COORDINATOR_NOT_AVAILABLE, "transactions are not served", -1, "", -1
            )
        if member is None or self.submit_group is None:
            return m.FindCoordinatorResponse(0, ErrorCode.COORDINATOR_NOT_AVAILABLE, "no leader", -1, "", -1)
        return m.FindCoordinatorResponse(0, ErrorCode.NONE, None, member.node_id, member.host, member.kafka_port)

    def _group_refusal(self, group: str) -> ErrorCode | None:
        """Why this node cannot serve `group`'s offsets now (None: it can)."""
        if self.submit_group is None or self.state.get("status") != NodeStatus.SERVING:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if self.state.get("role") != Role.LEADER:
            return ErrorCode.NOT_COORDINATOR
        try:
            gr.check_group_name(group)
        except gr.GroupNameError:
            return ErrorCode.INVALID_GROUP_ID
        return None

    def _offset_commit(self, conn: Connection, req: codec.Request) -> None:
        """The one partition's offset as a GROUP_COMMIT; the others UNKNOWN_TOPIC_OR_PARTITION."""
        body: m.OffsetCommitRequest = req.body
        conn.session.order.append(req.header.correlation_id)  # type: ignore[union-attr]
        refusal = self._group_refusal(body.group_id)
        topics: list[m.OffsetCommitResponseTopic] = []
        served: m.OffsetCommitResponsePartition | None = None
        ask: m.OffsetCommitRequestPartition | None = None
        for t in body.topics:
            parts = []
            for p in t.partitions:
                r = m.OffsetCommitResponsePartition(p.partition_index, ErrorCode.NONE)
                if t.name != KAFKA_TOPIC or p.partition_index != KAFKA_PARTITION or served is not None:
                    r.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif refusal is not None:
                    r.error_code = refusal
                elif p.committed_offset < 0:
                    r.error_code = ErrorCode.INVALID_REQUEST
                elif len((p.committed_metadata or "").encode()) > gr.GROUP_METADATA_BYTES_MAX:
                    r.error_code = ErrorCode.OFFSET_METADATA_TOO_LARGE
                else:
                    served, ask = r, p
                parts.append(r)
            topics.append(m.OffsetCommitResponseTopic(t.name, parts))
        answer = m.OffsetCommitResponse(0, topics)
        if served is None or ask is None or self.submit_group is None:
            self._deliver_ordered(conn, req, answer)
            return
        part = served

        def reply(status: int, _payload: bytes) -> None:
            if status:
                part.error_code = KAFKA_GROUP_ERROR_OF.get(cp.ErrorCode(status), ErrorCode.COORDINATOR_NOT_AVAILABLE)
            self._deliver_ordered(conn, req, answer)

        commit = gr.GroupCommit(
            body.group_id, ask.committed_offset, int(time.time() * 1000), (ask.committed_metadata or "").encode()
        )
        refused = self.submit_group(GroupRequestKind.COMMIT, 0, gr.encode_commit(commit), reply, 0)
        if refused is not None:
            reply(int(refused), b"")

    def _offset_fetch(self, conn: Connection, req: codec.Request) -> None:
        """The one partition's committed offset from the leader's table (-1: none); others unknown."""
        body: m.OffsetFetchRequest = req.body
        conn.session.order.append(req.header.correlation_id)  # type: ignore[union-attr]
        refusal = self._group_refusal(body.group_id)
        wanted = body.topics if body.topics is not None else [m.OffsetFetchRequestTopic(KAFKA_TOPIC, [KAFKA_PARTITION])]
        topics: list[m.OffsetFetchResponseTopic] = []
        served: list[m.OffsetFetchResponsePartition] = []
        for t in wanted:
            parts = []
            for index in t.partition_indexes:
                r = m.OffsetFetchResponsePartition(index, -1, m.NO_LEADER_EPOCH, "", ErrorCode.NONE)
                if t.name != KAFKA_TOPIC or index != KAFKA_PARTITION:
                    r.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif refusal is not None:
                    r.error_code = refusal
                else:
                    served.append(r)
                parts.append(r)
            topics.append(m.OffsetFetchResponseTopic(t.name, parts))
        answer = m.OffsetFetchResponse(0, topics, refusal or ErrorCode.NONE)
        if refusal is not None or self.submit_group is None:
            self._deliver_ordered(conn, req, answer)
            return
        group = body.group_id

        def reply(status: int, payload: bytes) -> None:
            code = cp.ErrorCode(status) if status else None
            row = None
            if code is None:
                table = decode_result(payload).table
                row = table.get(group) if table is not None else None
            for r in served:
                if row is not None:
                    r.committed_offset, r.metadata = row.offset, row.metadata.decode("utf-8", "replace")
                elif code is not None and code is not cp.ErrorCode.UNKNOWN_GROUP:  # unknown: -1, no error
                    r.error_code = KAFKA_GROUP_ERROR_OF.get(code, ErrorCode.COORDINATOR_NOT_AVAILABLE)
                    answer.error_code = r.error_code
            self._deliver_ordered(conn, req, answer)

        refused = self.submit_group(GroupRequestKind.FETCH, cp.GROUP_FETCH_LEADER_ONLY, group.encode(), reply, 0)
        if refused is not None:
            reply(int(refused), b"")

    # --- Metadata, InitProducerId, ListOffsets -----------------------------------------------------------------

    def _metadata(self, body: m.MetadataRequest, version: int) -> m.MetadataResponse:
        leader = self.state.get("leader_id")
        view = self.members_view()  # the configuration in effect, not the config file's (membership changes)
        members = view.ids()  # replicas: voters and learners (a learner holds the log too)
        voters = view.voters()  # in sync: the members whose acknowledgements count for a commit
        brokers = [
            m.MetadataBroker(v.member.node_id, v.member.host, v.member.kafka_port, None)
            for v in view.members
            if v.member.kafka_port
        ]
        names = [t.name for t in body.topics] if body.topics else [KAFKA_TOPIC]  # None (or v0's []): every topic
        topics = []
        for name in names:
            if name != KAFKA_TOPIC:
                topics.append(m.MetadataTopic(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, name, False, []))
                continue
            part = m.MetadataPartition(
                error_code=ErrorCode.NONE if leader else ErrorCode.LEADER_NOT_AVAILABLE,
                partition_index=KAFKA_PARTITION,
                leader_id=leader or -1,
                leader_epoch=self.state.get("term"),
                replica_nodes=members,
                isr_nodes=voters,
                offline_replicas=[],
            )
            topics.append(m.MetadataTopic(ErrorCode.NONE, name, False, [part]))
        return m.MetadataResponse(
            throttle_time_ms=0,
            brokers=brokers,
            cluster_id=self.config.cluster_id,
            controller_id=leader or -1,
            topics=topics,
        )

    def _init_producer_id(self, body: m.InitProducerIdRequest) -> m.InitProducerIdResponse:
        if body.transactional_id is not None:
            return m.InitProducerIdResponse(0, ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        pid = int.from_bytes(os.urandom(8), "big") >> (64 - KAFKA_PRODUCER_ID_BITS)
        return m.InitProducerIdResponse(0, ErrorCode.NONE, pid, 0)

    def _list_offsets(self, body: m.ListOffsetsRequest) -> m.ListOffsetsResponse:
        found = self.fetches.offsets()
        term = self.state.get("term")
        topics = []
        for t in body.topics:
            parts = []
            for p in t.partitions:
                r = m.ListOffsetsPartitionResponse(p.partition_index, ErrorCode.NONE, -1, -1, term)
                if t.name != KAFKA_TOPIC or p.partition_index != KAFKA_PARTITION:
                    r.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif found is None:
                    r.error_code = ErrorCode.LEADER_NOT_AVAILABLE  # the log is not readable yet: clients retry
                elif p.timestamp == m.EARLIEST_TIMESTAMP:
                    r.offset = found[0]
                elif p.timestamp == m.LATEST_TIMESTAMP:
                    r.offset = found[1]
                else:  # offsetsForTimes: not served (docs/KAFKA.md section 2)
                    r.error_code = ErrorCode.INVALID_REQUEST
                parts.append(r)
            topics.append(m.ListOffsetsTopicResponse(t.name, parts))
        return m.ListOffsetsResponse(0, topics)

    # --- Fetch -------------------------------------------------------------------------------------------------

    def _fetch(self, conn: Connection, req: codec.Request) -> None:
        body: m.FetchRequest = req.body
        session: KafkaSession = conn.session  # type: ignore[assignment]
        session.order.append(req.header.correlation_id)
        others: list[m.FetchTopicResponse] = []
        ask: m.FetchPartition | None = None
        for t in body.topics:
            bad = []
            for p in t.partitions:
                if t.topic == KAFKA_TOPIC and p.partition == KAFKA_PARTITION and ask is None:
                    ask = p
                else:
                    bad.append(m.FetchPartitionData(p.partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1, records=b""))
            if bad:
                others.append(m.FetchTopicResponse(t.topic, bad))

        def encode(_cid: int, result: FetchResult | None) -> None:
            responses = list(others)
            if result is not None:
                part = _fetched_partition(result, ask.fetch_offset)  # type: ignore[union-attr]
                responses.insert(0, m.FetchTopicResponse(KAFKA_TOPIC, [part]))
            self._deliver_ordered(conn, req, m.FetchResponse(0, ErrorCode.NONE, 0, responses))

        if ask is None:
            encode(0, None)
            return
        max_bytes = max(0, min(ask.partition_max_bytes, body.max_bytes))
        self.fetches.fetch(
            conn, cp.Fetch(req.header.correlation_id, ask.fetch_offset, max_bytes, body.max_wait_ms), now(), encode
        )

    # --- Produce -----------------------------------------------------------------------------------------------

    def _produce(self, conn: Connection, req: codec.Request) -> None:
        body: m.ProduceRequest = req.body
        pending = _Produce(conn, req, body.acks, [])
        if body.acks not in (ACKS_ALL, ACKS_LEADER, ACKS_NONE):
            error: ErrorCode | None = ErrorCode.INVALID_REQUIRED_ACKS
            message = f"acks={body.acks}: expected -1 (all), 1 (answered as all) or 0"
        elif body.transactional_id is not None:
            error, message = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "transactions are not supported"
        else:
            error, message = self._refusal(), ""
            message = message or (f"node {self.config.node_id} is not the leader" if error is not None else "")
        responses: list[m.ProduceTopicResponse] = []
        for t in body.topic_data:
            parts = []
            for p in t.partition_data:
                r = m.ProducePartitionResponse(p.index, ErrorCode.NONE, -1)
                parts.append(r)
                if t.name != KAFKA_TOPIC or p.index != KAFKA_PARTITION or pending.served is not None:
                    r.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif error is not None:
                    r.error_code, r.error_message = error, message
                else:
                    pending.served = r
            responses.append(m.ProduceTopicResponse(t.name, parts))
        pending.responses = responses
        if body.acks != ACKS_NONE:
            conn.session.order.append(req.header.correlation_id)  # type: ignore[union-attr]
        records = None
        if pending.served is not None:
            data = next(
                p.records for t in body.topic_data for p in t.partition_data if t.name == KAFKA_TOPIC and p.index == 0
            )
            records = self._records(conn, pending, data or b"")
        if records is not None:
            pending.chunks_left += 1  # held while submitting, so that a chunk refused at once cannot finish it
            self._submit(conn, pending, body.timeout_ms, *records)
            pending.chunks_left -= 1
        if pending.chunks_left == 0:
            self._finish(pending)

    def _refusal(self) -> ErrorCode | None:
        """Why this node cannot take a Produce now (None: it can)."""
        if self.state.get("status") != NodeStatus.SERVING or self.state.get("role") != Role.LEADER:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        return None

    def _records(self, conn: Connection, pending: _Produce, data: bytes) -> tuple[int, int, list[bytes], bool] | None:
        """(shmraft producer id, first sequence, values, idempotent) of the partition's batches, or None with the
        partition's error set."""
        served = pending.served
        assert served is not None
        try:
            batches = decode_batches(data)
        except KafkaRemoteError as exc:
            self.log.warning("kafka client %s: bad record batch (%s)", conn.addr, exc)
            served.error_code, served.error_message = exc.kafka_code, str(exc)
            return None
        values: list[bytes] = []
        for b in batches:
            if any(r.key is not None or r.headers for r in b.records):
                served.error_code, served.error_message = ErrorCode.INVALID_RECORD, RECORD_VALUES_ONLY
                served.record_errors = [m.BatchIndexAndErrorMessage(0, RECORD_VALUES_ONLY)]
                return None
            values.extend(r.value or b"" for r in b.records)
        if not values:
            served.error_code, served.error_message = ErrorCode.INVALID_RECORD, "no records"
            return None
        first = batches[0]
        if first.idempotent:
            sequence = first.base_sequence
            for b in batches:
                if (
                    b.producer_id != first.producer_id
                    or b.producer_epoch != first.producer_epoch
                    or (b.base_sequence != sequence)
                ):
                    served.error_code = ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
                    served.error_message = "record batches of one request must follow on (one producer, sequences)"
                    return None
                sequence = (sequence + len(b.records)) % KAFKA_SEQUENCE_MODULUS  # int32 wraps to 0
            pid = KAFKA_PRODUCER_BIT | first.producer_id << PRODUCER_EPOCH_BITS | (first.producer_epoch & 0xFFFF)
            return pid, first.base_sequence, values, True
        session: KafkaSession = conn.session  # type: ignore[assignment]
        if session.producer_id < 0:
            session.producer_id = int.from_bytes(os.urandom(8), "big") >> (64 - NATIVE_PRODUCER_ID_BITS)
            session.next_sequence = KAFKA_SEQUENCE_BASE  # the door's band: the batcher keeps its blocks aligned
        first_sequence = session.next_sequence
        session.next_sequence += len(values)
        return session.producer_id, first_sequence, values, False

    def _submit(
        self,
        conn: Connection,
        pending: _Produce,
        timeout_ms: int,
        pid: int,
        seq: int,
        values: list[bytes],
        idempotent: bool,
    ) -> None:
        """The events as native event blocks of at most PRODUCE_EVENTS_MAX, each admitted like a native PRODUCE.

        An idempotent producer's Kafka sequence s goes out as KAFKA_SEQUENCE_BASE + s, and a block never crosses
        the int32 wrap (2^31-1 to 0), so every sequence stays in the band the dedup table compares modulo 2^31
        (shmraft/node/dedup.py)."""
        for _start, chunk_seq, chunk in _chunks(values, seq, idempotent):
            lengths = np.fromiter(map(len, chunk), dtype="<u4", count=len(chunk))
            size = int(lengths.sum())
            block = b"".join([BLOCK_HEAD.pack(pid, chunk_seq, max(timeout_ms, 0), len(chunk)), lengths.tobytes()])
            block += b"".join(chunk)
            tid = next(self._tracker_ids)
            pending.chunks_left += 1
            self.waiting[(conn.id, tid)] = pending
            refused = self.admit(conn, tid, pid, chunk_seq, lengths, block, size, max(timeout_ms, 0))
            if refused is not None:
                self.on_answer(refused)

    # --- answers out -------------------------------------------------------------------------------------------

    def on_answer(self, a: Answer) -> None:
        """The tracker's answer to one chunk (ignored unless it is one of the door's)."""
        pending = self.waiting.pop((a.conn_id, a.correlation_id), None)
        if pending is None:
            return
        pending.chunks_left -= 1
        if a.offsets is not None:
            first = int(a.offsets[0])
            if pending.first_offset < 0 or first < pending.first_offset:
                pending.first_offset = first
        elif pending.error == ErrorCode.NONE:
            pending.error = KAFKA_ERROR_OF.get(a.code, ErrorCode.NOT_LEADER_OR_FOLLOWER)  # type: ignore[arg-type]
            pending.message = a.message
        if pending.chunks_left == 0:
            self._finish(pending)

    def _finish(self, pending: _Produce) -> None:
        served = pending.served
        if served is not None and served.error_code == ErrorCode.NONE:
            if pending.error != ErrorCode.NONE:
                served.error_code, served.error_message = pending.error, pending.message
            else:
                served.base_offset = pending.first_offset
        failed = any(p.error_code != ErrorCode.NONE for t in pending.responses for p in t.partition_responses)
        session: KafkaSession | None = pending.conn.session  # type: ignore[assignment]
        if failed and session is not None:
            session.producer_id = -1  # a retry of a failed batch is a new producer (at least once, as Kafka)
        if pending.conn.closed:
            return
        if pending.acks == ACKS_NONE:
            if failed:  # acks=0 has no answer to carry an error: Kafka closes the connection
                self.log.info("kafka client %s: acks=0 produce failed; connection closed", pending.conn.addr)
                self.close(pending.conn)
            return
        self._deliver_ordered(pending.conn, pending.request, m.ProduceResponse(pending.responses, 0))

    def _answer(self, conn: Connection, req: codec.Request, body: Any) -> None:
        conn.session.order.append(req.header.correlation_id)  # type: ignore[union-attr]
        self._deliver_ordered(conn, req, body)

    def _deliver_ordered(self, conn: Connection, req: codec.Request, body: Any) -> None:
        """Send the answer once every answer owed before it on the connection has gone out."""
        if conn.closed:
            return
        session: KafkaSession = conn.session  # type: ignore[assignment]
        session.ready[req.header.correlation_id] = codec.encode_response(req, body)
        while session.order and session.order[0] in session.ready:
            self.write(conn, session.ready.pop(session.order.popleft()))


def now() -> float:
    return time.monotonic()


def _chunks(values: list[bytes], seq: int, idempotent: bool) -> list[tuple[int, int, list[bytes]]]:
    """(index of the first value, its shmraft sequence, values) per event block: at most PRODUCE_EVENTS_MAX
    values each; for an idempotent Kafka producer (`seq` is its int32 base sequence) the sequences are in the
    Kafka band and a block ends at the wrap."""
    out = []
    start = 0
    while start < len(values):
        n = min(cp.PRODUCE_EVENTS_MAX, len(values) - start)
        if idempotent:
            kafka_seq = (seq + start) % KAFKA_SEQUENCE_MODULUS
            n = min(n, KAFKA_SEQUENCE_MODULUS - kafka_seq)
            out.append((start, KAFKA_SEQUENCE_BASE + kafka_seq, values[start : start + n]))
        else:
            out.append((start, seq + start, values[start : start + n]))
        start += n
    return out


def _fetched_partition(result: FetchResult, fetch_offset: int) -> m.FetchPartitionData:
    """The one partition's Fetch answer: one record batch per shmraft batch frame (docs/KAFKA.md section 2).

    The high watermark is the offset after the last committed event where the answer reaches it (the answer's
    last event + 1, or `fetch_offset` when nothing is committed at or after it), else the commit offset: a
    consumer that has read everything sits at the high watermark, which is how clients see the partition's end
    (kcat -e, librdkafka's partition EOF), although offsets have gaps."""
    if result.out_of_range:
        return m.FetchPartitionData(
            KAFKA_PARTITION,
            ErrorCode.OFFSET_OUT_OF_RANGE,
            result.commit_offset,
            result.commit_offset,
            result.earliest_offset,
            records=b"",
        )
    batches = []
    high_watermark = fetch_offset if not result.spans else result.commit_offset
    for s in result.spans:
        b = s.batch
        starts = b.offsets[s.skip :].tolist()
        ends = (b.offsets[s.skip :] + b.lengths[s.skip :]).tolist()
        ts_ms = b.header.timestamp_us // 1000
        records = [Record(i, bytes(b.data[x:y])) for i, (x, y) in enumerate(zip(starts, ends, strict=True))]
        batches.append(encode_batch(RecordBatch(s.first_offset, records, ts_ms, ts_ms, attributes=TIMESTAMP_TYPE_BIT)))
    if result.spans and result.next_offset >= result.commit_offset:  # the answer reaches the last committed event
        last = result.spans[-1]
        high_watermark = last.index * BATCH_EVENTS_MAX + last.batch.header.event_count
    return m.FetchPartitionData(
        KAFKA_PARTITION,
        ErrorCode.NONE,
        high_watermark,
        high_watermark,
        result.earliest_offset,
        records=b"".join(batches),
    )
