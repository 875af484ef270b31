"""Property-based fuzzing of the Kafka port past the decoder: the listener's reader (`KafkaRequestReader`) and the
door's request handling (`KafkaDoor`), with the tracker, the fetch server and the node state faked. The
properties are in tools/fuzz/kafka_oracle.py, shared with the atheris harness tools/fuzz/fuzz_kafka.py:

- the reader raises nothing but a `KafkaRemoteError` (the listener then closes the connection), and the door
  nothing but `UnsupportedRequest` (the same);
- every byte the door writes is a sequence of well-formed Kafka responses: each decodes at its request's
  version and carries its correlation id, in request order, one per request owed an answer (an acks=0 Produce
  is owed none), whatever order the tracker and the long polls finish in;
- a Produce answered without an error reports the first admitted event's offset.

The decoder alone is fuzzed in tests/test_kafka_codec.py. Here the requests of every API and version served are
steered towards the door's paths (the one topic and partition, valid record batches with null keys, idempotent
producers near the int32 sequence wrap, every acks value) and then possibly cut or mutated.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kafka_roundtrip import message_strategy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "fuzz"))

import kafka_oracle  # noqa: E402

from shmraft.ingest.kafka_door import KAFKA_TOPIC  # noqa: E402
from shmraft.kafka import codec  # noqa: E402
from shmraft.kafka import messages as m  # noqa: E402
from shmraft.kafka.codes import ApiKey, ErrorCode  # noqa: E402
from shmraft.kafka.framing import RequestHeader  # noqa: E402
from shmraft.kafka.records import Record, RecordBatch, encode_batch  # noqa: E402
from shmraft.kafka.versions import APIS  # noqa: E402
from shmraft.wire import client as cp  # noqa: E402

FAST = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
# APIs uniformly, Produce and Fetch (the door's long paths) three times as often; then any version served
KEYS = [*APIS, *[ApiKey.PRODUCE, ApiKey.FETCH] * 2]
TOPIC_FIELDS = {"name", "topic"}
PARTITION_FIELDS = {"index", "partition", "partition_index"}
SEQUENCE_MAX = 2**31 - 1


@st.composite
def door_batches(draw: st.DrawFn) -> bytes:
    """Record batches as a client sends them: one producer (idempotent or not) whose batches follow on from a
    base sequence often right before the int32 wrap, null keys and no headers (but now and then a key)."""
    idempotent = draw(st.booleans())
    pid, epoch = draw(st.integers(0, 2**47 - 1)), draw(st.integers(0, 5))
    seq = draw(st.one_of(st.integers(SEQUENCE_MAX - 10, SEQUENCE_MAX), st.integers(0, SEQUENCE_MAX)))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        values = draw(st.lists(st.none() | st.binary(max_size=40), min_size=1, max_size=12))
        records = [Record(i, v) for i, v in enumerate(values)]
        if draw(st.integers(0, 19)) == 0:
            records[0] = Record(0, b"v", b"a key")
        batches.append(RecordBatch(0, records, 0, 0, *((pid, epoch, seq) if idempotent else (-1, -1, -1))))
        seq = (seq + len(records)) % (SEQUENCE_MAX + 1)
    return b"".join(encode_batch(b) for b in batches)


def _steer(draw: st.DrawFn, obj: Any) -> Any:
    """The door's topic and partition in most places, valid batches in most Produce records, sane acks."""
    if not dataclasses.is_dataclass(obj):
        return obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list):
            setattr(obj, f.name, [_steer(draw, v) for v in value])
        elif f.name in TOPIC_FIELDS and isinstance(value, str) and draw(st.integers(0, 4)):
            setattr(obj, f.name, KAFKA_TOPIC)
        elif f.name in PARTITION_FIELDS and isinstance(value, int) and draw(st.integers(0, 4)):
            setattr(obj, f.name, 0)
        elif isinstance(obj, m.ProducePartitionData) and f.name == "records" and draw(st.integers(0, 4)):
            obj.records = draw(door_batches())
        elif f.name == "acks" and draw(st.integers(0, 4)):
            obj.acks = draw(st.sampled_from([-1, 0, 1]))
        elif f.name == "transactional_id" and draw(st.integers(0, 4)):
            obj.transactional_id = None
        elif f.name == "timestamp" and draw(st.booleans()):
            obj.timestamp = draw(st.sampled_from([m.EARLIEST_TIMESTAMP, m.LATEST_TIMESTAMP]))
    if isinstance(obj, m.ProduceRequest) and draw(st.booleans()):  # what a client sends: one topic, partition 0
        obj.topic_data = [m.ProduceTopicData(KAFKA_TOPIC, [m.ProducePartitionData(0, draw(door_batches()))])]
        obj.acks, obj.transactional_id = draw(st.sampled_from([-1, -1, 1, 0])), None
    return obj


@st.composite
def request_frames(draw: st.DrawFn, cid: int) -> bytes:
    key = draw(st.sampled_from(KEYS))
    version = draw(st.integers(APIS[key].min_version, APIS[key].max_version))
    body = _steer(draw, draw(message_strategy(APIS[key].request, version)))
    wire = bytearray(codec.encode_request(RequestHeader(key, version, cid, "fuzz"), body))
    if draw(st.integers(0, 9)) == 0:  # a version or API not served, or a cut or mutated frame
        how = draw(st.integers(0, 2))
        if how == 0:
            wire[4:8] = draw(st.binary(min_size=4, max_size=4))  # any api key and version
        elif how == 1:
            wire = wire[: draw(st.integers(0, len(wire)))]
        else:
            wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


completions = st.lists(
    st.tuples(st.integers(0, 2**40), st.none() | st.sampled_from(kafka_oracle.TRACKER_CODES)), min_size=1, max_size=6
)


@st.composite
def worlds(draw: st.DrawFn) -> kafka_oracle.World:
    state = kafka_oracle.node_state(
        leader=draw(st.integers(0, 3)) > 0,
        serving=draw(st.integers(0, 5)) > 0,
        leader_id=draw(st.integers(0, 3)),
        term=draw(st.integers(0, 2**31 - 1)),
    )
    events = draw(st.lists(st.binary(max_size=30), max_size=64))
    fetched = kafka_oracle.fetch_result(
        draw(st.integers(0, 2)), draw(st.integers(1, 2**40)), draw(st.integers(0, 63)), events, draw(st.integers(0, 63))
    )
    offsets = draw(st.none() | st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)))
    refuse = draw(st.lists(st.sampled_from([cp.ErrorCode.TOO_LARGE, cp.ErrorCode.MALFORMED]), max_size=2))
    return kafka_oracle.World(state, fetched, offsets, refuse_at_once=refuse)


@FAST
@given(data=st.data())
def test_the_door_answers_every_request_well_formed_or_refuses_it_typed(data: st.DataObject) -> None:
    frames = [data.draw(request_frames(cid)) for cid in range(1, data.draw(st.integers(1, 4)) + 1)]
    world = data.draw(worlds())
    order = data.draw(st.lists(st.integers(0, 20), max_size=10))
    sizes = data.draw(st.none() | st.lists(st.integers(1, 64), max_size=6))
    kafka_oracle.check_door(frames, world, data.draw(completions), order, sizes)


@FAST
@given(blob=st.binary(max_size=300), sizes=st.lists(st.integers(1, 64), max_size=6), leader=st.booleans())
def test_garbage_on_the_kafka_port_is_refused_typed_or_answered(blob: bytes, sizes: list[int], leader: bool) -> None:
    kafka_oracle.check_stream(blob, sizes, leader)


@FAST
@given(
    size=st.one_of(st.integers(-(2**31), 7), st.integers(kafka_oracle.SMALL_FRAME_MAX + 1, 2**31 - 1)),
    rest=st.binary(max_size=16),
)
def test_a_bad_size_prefix_is_refused_before_the_body(size: int, rest: bytes) -> None:
    """Oversized (over the reader's limit) or too small for a request header: refused from the 4 bytes alone."""
    assert kafka_oracle.refused_from_prefix(size, rest)


def test_the_oracle_catches_an_answer_out_of_order() -> None:
    """The order property can fail: two answers swapped are reported."""
    reqs = [
        codec.decode_request(
            codec.encode_request(RequestHeader(ApiKey.API_VERSIONS, 0, cid, "x"), m.ApiVersionsRequest())[4:]
        )
        for cid in (1, 2)
    ]
    answers = [codec.encode_response(r, m.ApiVersionsResponse(ErrorCode.NONE, [])) for r in reversed(reqs)]
    world = kafka_oracle.World(kafka_oracle.node_state(True, True, 1, 1), None, None)
    try:
        kafka_oracle._check_answers(b"".join(answers), reqs, world, complete=True)
    except kafka_oracle.OracleFailure as exc:
        assert "correlation id" in str(exc)
    else:
        raise AssertionError("answers out of order were not reported")
