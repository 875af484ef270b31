"""The Kafka codec checked against code no one here wrote (kafka-python's encoders and decoders), plus its
errors: bad frames, records and versions raise the typed errors of shmraft/kafka/errors.py and nothing else."""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.protocol import consumer as kc
from kafka.protocol import metadata as km
from kafka.protocol import producer as kp
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import decode_varint, encode_varint
from test_kafka_roundtrip import TEXT, api_versions, message_strategy, record_batches

from shmraft.kafka import checksum, codec, errors, records
from shmraft.kafka.codes import ApiKey, ErrorCode
from shmraft.kafka.framing import KAFKA_REQUEST_BYTES_MAX, FrameReader, RequestHeader
from shmraft.kafka.primitives import Reader, Writer
from shmraft.kafka.schema import Kind, specs
from shmraft.kafka.versions import APIS

KAFKA_PYTHON: dict[int, tuple[Any, Any]] = {
    ApiKey.PRODUCE: (kp.ProduceRequest, kp.ProduceResponse),
    ApiKey.FETCH: (kc.FetchRequest, kc.FetchResponse),
    ApiKey.LIST_OFFSETS: (kc.ListOffsetsRequest, kc.ListOffsetsResponse),
    ApiKey.METADATA: (km.MetadataRequest, km.MetadataResponse),
    ApiKey.OFFSET_COMMIT: (kc.OffsetCommitRequest, kc.OffsetCommitResponse),
    ApiKey.OFFSET_FETCH: (kc.OffsetFetchRequest, kc.OffsetFetchResponse),
    ApiKey.FIND_COORDINATOR: (km.FindCoordinatorRequest, km.FindCoordinatorResponse),
    ApiKey.API_VERSIONS: (km.ApiVersionsRequest, km.ApiVersionsResponse),
    ApiKey.INIT_PRODUCER_ID: (kp.InitProducerIdRequest, kp.InitProducerIdResponse),
}
# ApiVersions v3's tagged fields (optional by design; shmraft sends none of them)
TAGGED = {"supported_features", "finalized_features_epoch", "finalized_features", "zk_migration_ready"}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # kafka-python's importlib.resources use
# our field name -> Kafka's current one, where Kafka renamed a field after the versions served here
RENAMED = {
    "generation_id": "generation_id_or_member_epoch",
    "cluster_authorized_operations": "authorized_operations",
    "topic_authorized_operations": "authorized_operations",
}
BIT_FIELDS = {"cluster_authorized_operations", "topic_authorized_operations"}  # kafka-python: a set of bits


def _bits(value: int) -> set[int] | None:
    bits = {i for i in range(32) if value & (1 << i)}
    return None if bits == {31} else bits


def ours_as_dict(obj: Any, version: int) -> dict[str, Any]:
    """The fields of one of our messages present at `version`, by Kafka's names, nested as kafka-python's."""
    out: dict[str, Any] = {}
    for name, spec in specs(type(obj)):
        if not spec.present(version):
            continue
        value = getattr(obj, name)
        if not isinstance(spec.kind, Kind) and value is not None:
            value = [ours_as_dict(v, version) for v in value]
        if name in BIT_FIELDS:
            value = _bits(value)
        out[RENAMED.get(name, name)] = value
    return out


def to_kafka_python(kcls: Any, d: dict[str, Any], version: int | None) -> Any:
    """A kafka-python message (or nested structure) holding the values of `d`."""
    kwargs = {}
    for name, value in d.items():
        f = kcls._struct.fields[name]
        if (f.is_struct_array() or f.is_struct()) and value is not None:
            value = [to_kafka_python(f.data_class, v, None) for v in value]
        kwargs[name] = value
    return kcls[version](**kwargs) if version is not None else kcls(**kwargs)


def kafka_python_as_dict(msg: Any) -> dict[str, Any]:
    d = {k: v for k, v in msg.to_dict(json=False).items() if k not in TAGGED}
    return _bytes_everywhere(d)  # kafka-python may give records as a bytearray or memoryview


def _bytes_everywhere(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _bytes_everywhere(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_bytes_everywhere(x) for x in v]
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    return v


# --- messages, both ways, against kafka-python ---------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kafka_python_requests_decode_to_the_same_fields(data: st.DataObject) -> None:
    key, version = data.draw(st.sampled_from(api_versions()))
    api = APIS[key]
    ours = data.draw(message_strategy(api.request, version))
    fields = ours_as_dict(ours, version)
    theirs = to_kafka_python(KAFKA_PYTHON[key][0], fields, version)
    theirs.with_header(correlation_id=data.draw(st.integers(0, 2**31 - 1)), client_id=data.draw(TEXT))
    wire = bytes(theirs.encode(header=True, framed=True))
    assert struct.unpack(">i", wire[:4])[0] == len(wire) - 4
    req = codec.decode_request(wire[4:])
    assert (req.header.api_key, req.header.api_version) == (key, version)
    assert req.header.correlation_id == theirs.header.correlation_id
    assert req.header.client_id == theirs.header.client_id
    assert req.body == ours
    # and our encoder writes the very bytes kafka-python writes
    assert codec.encode_request(req.header, req.body) == wire


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_our_responses_decode_with_kafka_python(data: st.DataObject) -> None:
    key, version = data.draw(st.sampled_from(api_versions()))
    api = APIS[key]
    if key == ApiKey.API_VERSIONS:
        ours = data.draw(message_strategy(api.response, version).filter(lambda r: r.error_code == 0))
    else:
        ours = data.draw(message_strategy(api.response, version))
    cid = data.draw(st.integers(0, 2**31 - 1))
    wire = codec.encode_response(RequestHeader(key, version, cid), ours)
    theirs = KAFKA_PYTHON[key][1].decode(wire, version=version, header=True, framed=True)
    assert theirs.header.correlation_id == cid
    assert kafka_python_as_dict(theirs) == ours_as_dict(ours, version)


def test_api_versions_of_a_later_version_get_the_v0_error_answer_kafka_python_expects() -> None:
    req = km.ApiVersionsRequest[4](client_software_name="kafka-python", client_software_version="3")
    req.with_header(correlation_id=7, client_id="c")
    ours = codec.decode_request(bytes(req.encode(header=True, framed=True))[4:])
    assert not ours.supported
    wire = codec.encode_response(ours, codec.api_versions_response(ours))
    theirs = km.ApiVersionsResponse.decode(wire, version=4, header=True, framed=True)
    assert theirs.header.correlation_id == 7
    assert theirs.error_code == ErrorCode.UNSUPPORTED_VERSION
    ranges = {a.api_key: (a.min_version, a.max_version) for a in theirs.api_keys}
    assert ranges[ApiKey.API_VERSIONS] == (0, 3)
    assert ranges == {k: (a.min_version, a.max_version) for k, a in APIS.items()}


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_answer_lists_every_api_at_every_served_version(version: int) -> None:
    req = km.ApiVersionsRequest[version](client_software_name="x", client_software_version="1")
    req.with_header(correlation_id=1, client_id=None)
    ours = codec.decode_request(bytes(req.encode(header=True, framed=True))[4:])
    assert ours.supported
    wire = codec.encode_response(ours, codec.api_versions_response(ours))
    theirs = km.ApiVersionsResponse.decode(wire, version=version, header=True, framed=True)
    assert theirs.error_code == 0
    assert len(theirs.api_keys) == len(APIS)


@pytest.mark.parametrize(
    ("api_key", "version"),
    [(ApiKey.PRODUCE, 2), (ApiKey.PRODUCE, 9), (ApiKey.FETCH, 12), (ApiKey.JOIN_GROUP, 0), (999, 0), (-1, 0)],
)
def test_apis_and_versions_not_served_raise_unsupported_request(api_key: int, version: int) -> None:
    frame = struct.pack(">hhih", api_key, version, 42, -1) + b"\x00" * 8
    with pytest.raises(errors.UnsupportedRequest) as info:
        codec.decode_request(frame)
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == (api_key, version, 42)
    assert info.value.kafka_code == ErrorCode.UNSUPPORTED_VERSION


# --- record batches v2 against kafka-python's builder and reader ---------------------------------------------


def _build_with_kafka_python(batch: records.RecordBatch, compression: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=batch.is_transactional,
        producer_id=batch.producer_id,
        producer_epoch=batch.producer_epoch,
        base_sequence=batch.base_sequence,
        batch_size=2**30,
    )
    for r in batch.records:
        headers = [(h.key, h.value) for h in r.headers]
        builder.append(r.offset_delta, batch.base_timestamp + r.timestamp_delta, r.key, r.value, headers)
    return bytes(builder.build())


@st.composite
def client_batches(draw: st.DrawFn) -> records.RecordBatch:
    """Batches a producer builds: offset deltas 0..n-1, non-null header values, timestamps >= 0."""
    n = draw(st.integers(1, 10))
    base_ts = draw(st.integers(0, 2**41))
    recs = [
        records.Record(
            i,
            draw(st.none() | st.binary(max_size=100)),
            draw(st.none() | st.binary(max_size=10)),
            draw(st.lists(st.builds(records.RecordHeader, TEXT, st.binary(max_size=8)), max_size=2)),
            draw(st.integers(0, 10_000)),
        )
        for i in range(n)
    ]
    idempotent = draw(st.booleans())
    return records.RecordBatch(
        0,
        recs,
        base_ts,
        producer_id=draw(st.integers(0, 2**47)) if idempotent else -1,
        producer_epoch=draw(st.integers(0, 2**15 - 1)) if idempotent else -1,
        base_sequence=draw(st.integers(0, 2**31 - 1)) if idempotent else -1,
    )


@settings(max_examples=100, deadline=None)
@given(client_batches(), st.sampled_from([0, records.Compression.GZIP, records.Compression.ZSTD]))
def test_batches_built_by_kafka_python_decode_to_the_same_records(batch: records.RecordBatch, comp: int) -> None:
    wire = _build_with_kafka_python(batch, comp)
    (got,) = records.decode_batches(wire)
    stamps = [got.base_timestamp + r.timestamp_delta for r in got.records]
    assert stamps == [batch.base_timestamp + r.timestamp_delta for r in batch.records]
    for r in got.records + batch.records:
        r.timestamp_delta = 0  # kafka-python takes the first record's time as the base: compared above
    assert got.records == batch.records
    assert (got.producer_id, got.producer_epoch, got.base_sequence) == (
        batch.producer_id,
        batch.producer_epoch,
        batch.base_sequence,
    )
    assert got.compression in (0, comp)  # kafka-python keeps the compressed form only when it is smaller
    assert got.last_offset_delta == len(batch.records) - 1


@settings(max_examples=100, deadline=None)
@given(st.lists(record_batches().filter(lambda b: b.records), min_size=1, max_size=3))
def test_our_batches_read_with_kafka_python(batches: list[records.RecordBatch]) -> None:
    for b in batches:
        b.attributes &= ~records.CONTROL_BIT  # a Fetch answer carries data batches (control ones hold markers)
        for r in b.records:
            r.attributes = 0  # unused by Kafka, and some readers check it
    mr = MemoryRecords(b"".join(records.encode_batch(b) for b in batches))
    for ours in batches:
        theirs = mr.next_batch()
        assert theirs.validate_crc()
        assert (theirs.base_offset, theirs.producer_id, theirs.producer_epoch, theirs.base_sequence) == (
            ours.base_offset,
            ours.producer_id,
            ours.producer_epoch,
            ours.base_sequence,
        )
        got = list(theirs)
        assert [r.offset for r in got] == [ours.base_offset + r.offset_delta for r in ours.records]
        assert [(r.key, r.value) for r in got] == [(r.key, r.value) for r in ours.records]
        assert [r.headers for r in got] == [[(h.key, h.value) for h in r.headers] for r in ours.records]
    assert mr.next_batch() is None


@pytest.mark.parametrize("comp", [records.Compression.GZIP, records.Compression.ZSTD])
def test_compressed_batches_from_kafka_python_decode(comp: int) -> None:
    recs = [records.Record(i, b"sensor=a temp=21.5 unit=C " * 20, b"k%d" % i) for i in range(50)]
    wire = _build_with_kafka_python(records.RecordBatch(0, recs, 1_764_200_000_000), comp)
    (got,) = records.decode_batches(wire)
    assert got.compression == comp
    assert got.records == recs
    assert len(wire) < sum(len(r.value or b"") for r in recs) // 4


def _recrc(wire: bytearray) -> bytes:
    struct.pack_into(">I", wire, records.CRC_OFFSET, checksum.crc32c(bytes(wire[records.ATTRIBUTES_OFFSET :])))
    return bytes(wire)


def _one_batch() -> bytearray:
    return bytearray(records.encode_batch(records.RecordBatch(0, [records.Record(0, b"value", b"key")])))


def test_a_flipped_byte_fails_the_crc() -> None:
    wire = _one_batch()
    wire[-1] ^= 0x01
    with pytest.raises(errors.RecordBatchCrcMismatch):
        records.decode_batches(bytes(wire))


@pytest.mark.parametrize("codec_id", [records.Compression.SNAPPY, records.Compression.LZ4, 5, 7])
def test_snappy_lz4_and_unknown_compression_are_refused_by_name(codec_id: int) -> None:
    wire = _one_batch()
    struct.pack_into(">h", wire, records.ATTRIBUTES_OFFSET, codec_id)
    with pytest.raises(errors.UnsupportedCompression) as info:
        records.decode_batches(_recrc(wire))
    assert info.value.kafka_code == ErrorCode.UNSUPPORTED_COMPRESSION_TYPE


@pytest.mark.parametrize("magic", [0, 1, 3])
def test_legacy_message_sets_are_refused(magic: int) -> None:
    wire = _one_batch()
    wire[records.MAGIC_OFFSET] = magic
    with pytest.raises(errors.UnsupportedMagic):
        records.decode_batches(bytes(wire))


@pytest.mark.parametrize("comp", [records.Compression.GZIP, records.Compression.ZSTD])
def test_a_decompression_bomb_is_refused(comp: int) -> None:
    big = b"\x00" * 200_000
    payload = gzip.compress(big) if comp == records.Compression.GZIP else zstandard.ZstdCompressor().compress(big)
    head = bytearray(_one_batch()[: records.BATCH_HEADER_BYTES])
    struct.pack_into(">i", head, records.BATCH_LENGTH_OFFSET, records.BATCH_HEADER_BYTES - 12 + len(payload))
    struct.pack_into(">h", head, records.ATTRIBUTES_OFFSET, comp)
    with pytest.raises(errors.CorruptCompression):
        records.decode_batches(_recrc(head + payload), decompressed_bytes_max=100_000)


# --- primitives and the checksum ------------------------------------------------------------------------------


@given(st.integers(-(2**31), 2**31 - 1))
def test_varints_match_kafka_python(n: int) -> None:
    w = Writer()
    w.varint(n)
    ours = w.getvalue()
    theirs = bytearray()
    encode_varint(n, theirs.append)
    assert ours == bytes(theirs)
    assert Reader(ours).varint("n") == decode_varint(ours, 0)[0] == n


def test_varint_longer_than_five_bytes_is_malformed() -> None:
    with pytest.raises(errors.MalformedField):
        Reader(b"\xff" * 6).varint("n")


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32c_pure_and_accelerated_agree_and_continue(a: bytes, b: bytes) -> None:
    assert checksum.crc32c_pure(a + b) == checksum.crc32c(a + b)
    assert checksum.crc32c_pure(b, checksum.crc32c_pure(a)) == checksum.crc32c(a + b)


def test_crc32c_known_value() -> None:
    assert checksum.crc32c_pure(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_the_accelerated_crc32c_is_installed_for_tests() -> None:
    # the `test` extra installs `crc32c`: without it every record batch would cost milliseconds
    assert checksum.ACCELERATED


# --- framing and garbage ----------------------------------------------------------------------------------------


def _sample_request() -> bytes:
    req = kp.ProduceRequest[8](
        transactional_id=None,
        acks=-1,
        timeout_ms=5000,
        topic_data=[
            kp.ProduceRequest.TopicProduceData(
                name="events",
                partition_data=[kp.ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=b"x" * 20)],
            )
        ],
    )
    req.with_header(correlation_id=3, client_id="t")
    return bytes(req.encode(header=True, framed=True))


def test_frame_reader_returns_whole_frames_fed_a_byte_at_a_time() -> None:
    wire = _sample_request() * 2
    fr = FrameReader()
    frames = []
    for i in range(len(wire)):
        fr.feed(wire[i : i + 1])
        f = fr.next_frame()
        if f is not None:
            frames.append(f)
    assert frames == [wire[4 : len(wire) // 2]] * 2
    assert fr.buffered == 0


def test_an_oversized_frame_is_refused_on_its_size_prefix() -> None:
    fr = FrameReader()
    fr.feed(struct.pack(">i", KAFKA_REQUEST_BYTES_MAX + 1))
    with pytest.raises(errors.RequestOversized):
        fr.next_frame()


@pytest.mark.parametrize("size", [-1, 0, 7, -(2**31)])
def test_a_frame_too_small_for_a_header_is_malformed(size: int) -> None:
    fr = FrameReader()
    fr.feed(struct.pack(">i", size))
    with pytest.raises(errors.MalformedField):
        fr.next_frame()


def test_trailing_bytes_after_a_request_body_are_malformed() -> None:
    with pytest.raises(errors.MalformedField):
        codec.decode_request(_sample_request()[4:] + b"\x00")


def _decode_everything(data: bytes) -> None:
    """Feed bytes to the frame reader, the request decoder and the batch decoder, as the listener would."""
    fr = FrameReader()
    fr.feed(data)
    while (f := fr.next_frame()) is not None:
        req = codec.decode_request(f)
        if req.api_key == ApiKey.PRODUCE:
            for t in req.body.topic_data:
                for p in t.partition_data:
                    records.decode_batches(p.records or b"")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_truncated_and_mutated_requests_raise_only_typed_errors(data: st.DataObject) -> None:
    key, version = data.draw(st.sampled_from(api_versions()))
    body = data.draw(message_strategy(APIS[key].request, version))
    wire = bytearray(codec.encode_request(RequestHeader(key, version, 1, "fuzz"), body))
    cut = data.draw(st.integers(4, len(wire)))
    frame = wire[4:cut]
    for _ in range(data.draw(st.integers(0, 3))):
        if frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        codec.decode_request(bytes(frame))
    except errors.KafkaRemoteError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_typed_errors(garbage: bytes) -> None:
    try:
        _decode_everything(garbage)
    except errors.KafkaRemoteError:
        pass
    try:
        records.decode_batches(garbage)
    except errors.KafkaRemoteError:
        pass


@settings(max_examples=300, deadline=None)
@given(client_batches(), st.data())
def test_truncated_and_mutated_batches_raise_only_typed_errors(batch: records.RecordBatch, data: st.DataObject) -> None:
    wire = bytearray(records.encode_batch(batch))
    wire = wire[: data.draw(st.integers(0, len(wire)))]
    if wire and data.draw(st.booleans()):
        wire[data.draw(st.integers(0, len(wire) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        if data.draw(st.booleans()) and len(wire) > records.ATTRIBUTES_OFFSET:
            wire = bytearray(_recrc(wire))  # past the CRC: the record parser must hold on its own
    try:
        records.decode_batches(bytes(wire))
    except errors.KafkaRemoteError:
        pass


def test_random_large_garbage_frames_raise_only_typed_errors() -> None:
    rng = os.urandom
    for _ in range(200):
        blob = rng(64)
        frame = struct.pack(">i", len(blob)) + blob
        try:
            _decode_everything(frame)
        except errors.KafkaRemoteError:
            pass
