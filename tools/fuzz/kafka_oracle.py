"""Properties of the Kafka port past the decoder, shared by tests/test_fuzz_kafka.py (hypothesis) and the atheris
harness fuzz_kafka.py: the listener's reader and the Kafka door, with the tracker, the fetch server and the node
state faked (no sockets, no processes).

- `check_door`: request frames (possibly mutated) go through `KafkaRequestReader` and `KafkaDoor.on_request` on
  one connection; the admitted blocks and parked fetches are then completed in any order. The reader may raise
  only a KafkaRemoteError and the door only UnsupportedRequest (the listener then closes the connection); what
  the door wrote must be well-formed responses, in request order, one per request owed an answer.
- `check_stream`: any bytes in any chunking through the same reader and door.
- `refused_from_prefix`: a size prefix over the limit or below a header is refused from its 4 bytes.

A broken property raises `OracleFailure` (as oracles.py does for the native protocol).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Final

import numpy as np

from shmraft.ingest.fetch import FetchedSpan, FetchResult
from shmraft.ingest.kafka_door import ACKS_NONE, KafkaDoor
from shmraft.ingest.kafka_listener import KafkaRequestReader
from shmraft.ingest.tracker import Answer
from shmraft.ipc.state import NodeStatus
from shmraft.kafka import codec
from shmraft.kafka.codes import ApiKey, ErrorCode
from shmraft.kafka.errors import KafkaRemoteError, UnsupportedRequest
from shmraft.raft.types import Role
from shmraft.wire import client as cp
from shmraft.wire.frame import decode_batch, encode_batch

SMALL_FRAME_MAX: Final = 4096  # the reader's frame limit here, so that "oversized" is reached often
FRAME_SIZE: Final = struct.Struct(">i")
NODE_ID: Final = 1
CLUSTER_ID: Final = "fuzz"
KAFKA_PORT_BASE: Final = 9092
TRACKER_CODES: Final = list(cp.ErrorCode)
_LOG = logging.getLogger("fuzz.kafka")
_LOG.addHandler(logging.NullHandler())
_LOG.propagate = False


class OracleFailure(AssertionError):
    """A property of the Kafka port does not hold."""


@dataclass(slots=True)
class FakeConn:
    """What the door uses of a connection."""

    id: int = 1
    addr: str = "fuzz:1"
    session: object = None
    closed: bool = False


@dataclass(slots=True)
class World:
    """The door's surroundings, and what the door did to them."""

    state: dict[str, int]
    fetched: FetchResult | None  # None: the log is not readable (ListOffsets), fetches get an empty result
    offsets: tuple[int, int] | None
    out: bytearray = field(default_factory=bytearray)
    admitted: list[tuple[int, int, int]] = field(default_factory=list)  # (request cid, tracker cid, events)
    parked: list[tuple[int, Any]] = field(default_factory=list)  # (fetch cid, encoder)
    current_cid: int = 0
    refuse_at_once: list[cp.ErrorCode] = field(default_factory=list)  # the tracker's immediate refusals, popped
    admitted_offsets: dict[int, list[int]] = field(default_factory=dict)  # request cid -> first offset per block

    # the door's callbacks ----------------------------------------------------------------------------------
    def get(self, name: str) -> int:
        return self.state[name]

    def fetch(self, conn: FakeConn, req: cp.Fetch, now_s: float, encode: Any) -> None:
        self.parked.append((req.correlation_id, encode))

    def offsets_(self) -> tuple[int, int] | None:
        return self.offsets

    def admit(self, conn: FakeConn, tid: int, pid: int, seq: int, lengths: np.ndarray, *_rest: object) -> Answer | None:
        if lengths.size < 1 or lengths.size > cp.PRODUCE_EVENTS_MAX:
            raise OracleFailure(f"an event block of {lengths.size} events")
        if self.refuse_at_once:
            return Answer(conn.id, tid, 0, code=self.refuse_at_once.pop(), message="refused at once")
        self.admitted.append((self.current_cid, tid, int(lengths.size)))
        return None

    def write(self, conn: FakeConn, data: bytes) -> None:
        if conn.closed:
            raise OracleFailure("the door wrote on a closed connection")
        self.out += data

    def close(self, conn: FakeConn) -> None:
        conn.closed = True


def make_door(world: World) -> KafkaDoor:
    members = [SimpleNamespace(node_id=i, host="127.0.0.1", kafka_port=KAFKA_PORT_BASE + i) for i in (1, 2, 3)]
    config = SimpleNamespace(node_id=NODE_ID, cluster_id=CLUSTER_ID, members=members)
    fetches = SimpleNamespace(fetch=world.fetch, offsets=world.offsets_)
    return KafkaDoor(config, world, _LOG, fetches, world.admit, world.write, world.close)  # type: ignore[arg-type]


def node_state(leader: bool, serving: bool, leader_id: int, term: int) -> dict[str, int]:
    return {
        "status": NodeStatus.SERVING if serving else NodeStatus.STARTING,
        "role": Role.LEADER if leader else Role.FOLLOWER,
        "leader_id": leader_id,
        "term": term,
    }


def fetch_result(kind: int, index: int, skip: int, events: list[bytes], next_gap: int) -> FetchResult:
    """A fetch server's answer: out of range (kind 0), nothing yet (1), or one committed entry of `events`."""
    if kind == 0:
        return FetchResult(0, 64, 0, out_of_range="below the log start")
    if kind == 1 or not events:
        return FetchResult(index * 64, (index + 1) * 64, 64)
    frame = encode_batch(events, batch_id=1, producer_ids=[7] * len(events), sequences=list(range(len(events))))
    batch = decode_batch(frame)
    skip = skip % len(events)
    span = FetchedSpan(index, skip, batch)
    end = index * 64 + len(events)
    return FetchResult(end + next_gap, end + next_gap, 64, (span,))


def check_door(
    frames: list[bytes],
    world: World,
    completions: list[tuple[int, ErrorCode | None]],
    order: list[int],
    sizes: list[int] | None = None,
) -> None:
    """Feed the request frames (size prefix included, possibly mutated) to the reader and the door, then complete
    the admitted blocks (`completions[i]`: (first offset, None) or (_, tracker error)) and the parked fetches in
    the order `order` picks, and check what the door wrote."""
    conn = FakeConn()
    door = make_door(world)
    reader = KafkaRequestReader(SMALL_FRAME_MAX)
    owed: list[codec.Request] = []  # requests owed an answer, in order
    data = b"".join(frames)
    chunks = _chunked(data, sizes or [])
    refused = False
    for chunk in chunks:
        reader.feed(chunk)
        try:
            while (req := reader.next_message()) is not None:
                world.current_cid = req.header.correlation_id
                if not (req.api_key == ApiKey.PRODUCE and req.body.acks == ACKS_NONE):
                    owed.append(req)
                try:
                    door.on_request(conn, req)  # type: ignore[arg-type]
                except UnsupportedRequest:
                    owed.pop()  # never answered: the listener closes the connection
                    refused = True
                    break
        except KafkaRemoteError:
            refused = True
        if refused or conn.closed:
            break
    _complete(door, world, conn, completions, order)
    if refused:
        conn.closed = True  # what the listener does; answers still owed are never written
    if len({r.header.correlation_id for r in owed}) < len(owed):
        return  # a client that reuses correlation ids cannot tell its answers apart; not a property of the door
    _check_answers(bytes(world.out), owed, world, complete=not conn.closed)


def _complete(
    door: KafkaDoor, world: World, conn: FakeConn, completions: list[tuple[int, ErrorCode | None]], order: list[int]
) -> None:
    """Answer admitted blocks and parked fetches in a permuted order (the tracker and long polls finish in any)."""
    jobs: list[Any] = [("admit", a) for a in world.admitted] + [("fetch", f) for f in world.parked]
    permuted = []
    for k in order:
        if jobs:
            permuted.append(jobs.pop(k % len(jobs)))
    permuted += jobs
    for n, (kind, job) in enumerate(permuted):
        if kind == "fetch":
            cid, encode = job
            encode(cid, world.fetched if world.fetched is not None else FetchResult(0, 64, 0))
            continue
        req_cid, tid, count = job
        first, code = completions[n % len(completions)] if completions else (0, None)
        if code is None:
            offsets = np.arange(first, first + count, dtype=np.int64)
            world.admitted_offsets.setdefault(req_cid, []).append(first)
            door.on_answer(Answer(conn.id, tid, 0, offsets=offsets))
        else:
            door.on_answer(Answer(conn.id, tid, 0, code=code, message="fuzzed"))


def _check_answers(out: bytes, owed: list[codec.Request], world: World, complete: bool) -> None:
    pos = 0
    got = 0
    while pos < len(out):
        if len(out) - pos < 4:
            raise OracleFailure(f"{len(out) - pos} stray bytes after {got} answers")
        (size,) = FRAME_SIZE.unpack_from(out, pos)
        body = out[pos + 4 : pos + 4 + size]
        if size < 4 or len(body) != size:
            raise OracleFailure(f"answer {got}: size prefix {size}, {len(body)} bytes follow")
        if got >= len(owed):
            raise OracleFailure(f"answer {got}: more answers than requests owed one ({len(owed)})")
        req = owed[got]
        try:
            cid, answer = codec.decode_response(req.api_key, req.version, body)
        except KafkaRemoteError as exc:
            raise OracleFailure(
                f"answer {got} to {ApiKey(req.api_key).name} v{req.version} is malformed: {exc}"
            ) from exc
        if cid != req.header.correlation_id:
            raise OracleFailure(f"answer {got}: correlation id {cid}, expected {req.header.correlation_id} (order)")
        if req.api_key == ApiKey.PRODUCE:
            _check_produce(req, answer, world)
        pos += 4 + size
        got += 1
    if complete and got != len(owed):
        raise OracleFailure(f"{got} answers for {len(owed)} requests owed one")


def _check_produce(req: codec.Request, answer: Any, world: World) -> None:
    """A partition answered NONE reports the first admitted event's offset; every partition asked is answered."""
    asked = [(t.name, len(t.partition_data)) for t in req.body.topic_data]
    answered = [(t.name, len(t.partition_responses)) for t in answer.responses]
    if asked != answered:
        raise OracleFailure(f"Produce asked {asked}, answered {answered}")
    firsts = world.admitted_offsets.get(req.header.correlation_id, [])
    for t in answer.responses:
        for p in t.partition_responses:
            if p.error_code == ErrorCode.NONE and (not firsts or p.base_offset != min(firsts)):
                raise OracleFailure(f"Produce answered NONE with base_offset {p.base_offset}, admitted at {firsts}")


def _chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for s in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + s])
        pos += s
    if pos < len(data):
        out.append(data[pos:])
    return out


def check_stream(blob: bytes, sizes: list[int], leader: bool = True) -> None:
    """Any bytes, in any chunking, through the reader and the door."""
    world = World(node_state(leader, True, NODE_ID, 3), None, (0, 64))
    check_door([blob], world, [(0, None)], [], sizes)


def refused_from_prefix(size: int, rest: bytes) -> bool:
    """True when the reader refuses a frame from its size prefix alone (oversized or below a request header)."""
    reader = KafkaRequestReader(SMALL_FRAME_MAX)
    reader.feed(FRAME_SIZE.pack(size) + rest)
    try:
        reader.next_message()
    except KafkaRemoteError:
        return True
    return False


def sizes_from(data: bytes, n: int) -> tuple[list[int], bytes]:
    """Chunk sizes (1..64) from the first n bytes, and the rest."""
    return [1 + (b % 64) for b in data[:n]], data[n:]
