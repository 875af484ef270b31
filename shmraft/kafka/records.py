"""Kafka record batches v2 (magic 2): decoded from Produce requests, encoded for Fetch answers.

A batch is a 61-byte header and its records:

    base_offset i64 | batch_length i32 | partition_leader_epoch i32 | magic i8 (2) | crc u32 |
    attributes i16 | last_offset_delta i32 | base_timestamp i64 | max_timestamp i64 |
    producer_id i64 | producer_epoch i16 | base_sequence i32 | record_count i32 | records...

`crc` is the CRC-32C of everything from `attributes` to the batch's end, checked before anything else
is read. Attributes: bits 0-2 compression (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), bit 3 timestamp type
(1 = log append time), bit 4 transactional, bit 5 control. Each record is a varint length, then
attributes i8, timestamp_delta varlong, offset_delta varint, key (varint length, -1 null), value (the
same), and headers (varint count; each a varint-length UTF-8 key and a nullable varint-length value).

Compression: none, gzip (zlib) and zstd (`zstandard`, already a dependency) are decoded, within a size
limit; snappy and lz4 need libraries shmraft does not ship and are refused with UnsupportedCompression
(Kafka's UNSUPPORTED_COMPRESSION_TYPE), so a producer configured with them gets a clear error. Batches are
encoded uncompressed (shmraft compresses its own batches; a Fetch answer is local-network traffic).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

import zstandard

from shmraft.kafka.checksum import crc32c
from shmraft.kafka.errors import (
    CorruptCompression,
    KafkaEncodeError,
    MalformedField,
    RecordBatchCrcMismatch,
    Truncated,
    UnsupportedCompression,
    UnsupportedMagic,
)
from shmraft.kafka.framing import KAFKA_REQUEST_BYTES_MAX
from shmraft.kafka.primitives import Reader, encode_uvarint, zigzag

MAGIC_V2: Final = 2
BATCH_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_BYTES: Final = BATCH_HEADER.size  # 61
BATCH_LENGTH_OFFSET: Final = 8
LOG_OVERHEAD: Final = 12  # base_offset and batch_length: the bytes batch_length does not count
MAGIC_OFFSET: Final = 16
CRC_OFFSET: Final = 17
ATTRIBUTES_OFFSET: Final = 21  # the CRC covers the batch from here to its end
COMPRESSION_MASK: Final = 0x07
TIMESTAMP_TYPE_BIT: Final = 0x08
TRANSACTIONAL_BIT: Final = 0x10
CONTROL_BIT: Final = 0x20
NO_PRODUCER_ID: Final = -1
NO_PRODUCER_EPOCH: Final = -1
NO_SEQUENCE: Final = -1
NO_PARTITION_LEADER_EPOCH: Final = -1


class Compression:
    """Codes of attributes bits 0-2."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4
    NAMES: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@dataclass(frozen=True, slots=True)
class RecordHeader:
    key: str
    value: bytes | None


@dataclass(slots=True)
class Record:
    offset_delta: int
    value: bytes | None
    key: bytes | None = None
    headers: list[RecordHeader] = field(default_factory=list)
    timestamp_delta: int = 0
    attributes: int = 0  # unused by Kafka; carried as it came


@dataclass(slots=True)
class RecordBatch:
    base_offset: int
    records: list[Record]
    base_timestamp: int = 0
    max_timestamp: int = 0
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    base_sequence: int = NO_SEQUENCE
    attributes: int = 0
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH
    last_offset_delta: int | None = None  # None when encoding: the last record's offset delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & TIMESTAMP_TYPE_BIT)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)

    @property
    def idempotent(self) -> bool:
        return self.producer_id != NO_PRODUCER_ID


# --- decoding ---------------------------------------------------------------------------------------------------


def decode_batches(
    data: bytes | memoryview, decompressed_bytes_max: int = KAFKA_REQUEST_BYTES_MAX
) -> list[RecordBatch]:
    """Every batch in a Produce partition's `records` (one or more batches back to back, nothing else)."""
    view = memoryview(data)
    out: list[RecordBatch] = []
    pos = 0
    while pos < len(view):
        batch, pos = decode_batch(view, pos, decompressed_bytes_max)
        out.append(batch)
    return out


def decode_batch(
    view: memoryview, pos: int = 0, decompressed_bytes_max: int = KAFKA_REQUEST_BYTES_MAX
) -> tuple[RecordBatch, int]:
    """The batch at `pos`, and the position after it."""
    left = len(view) - pos
    if left < LOG_OVERHEAD:
        raise Truncated("record_batch", f"at least {LOG_OVERHEAD} bytes", left)
    (batch_length,) = struct.unpack_from(">i", view, pos + BATCH_LENGTH_OFFSET)
    if batch_length < BATCH_HEADER_BYTES - LOG_OVERHEAD:
        raise MalformedField("record_batch.batch_length", f">= {BATCH_HEADER_BYTES - LOG_OVERHEAD}", batch_length)
    end = pos + LOG_OVERHEAD + batch_length
    if end > len(view):
        raise Truncated("record_batch", f"{batch_length + LOG_OVERHEAD} bytes", left)
    magic = view[pos + MAGIC_OFFSET]
    if magic != MAGIC_V2:
        raise UnsupportedMagic("record_batch.magic", f"{MAGIC_V2} (record batch v2)", magic)
    (
        base_offset,
        _,
        leader_epoch,
        _,
        crc,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    ) = BATCH_HEADER.unpack_from(view, pos)
    actual = crc32c(view[pos + ATTRIBUTES_OFFSET : end])
    if actual != crc:
        raise RecordBatchCrcMismatch("record_batch.crc", f"0x{actual:08x} (CRC-32C of the batch)", f"0x{crc:08x}")
    if count < 0:
        raise MalformedField("record_batch.record_count", ">= 0", count)
    body = view[pos + BATCH_HEADER_BYTES : end]
    compression = attributes & COMPRESSION_MASK
    if compression != Compression.NONE:
        body = memoryview(_decompress(compression, body, decompressed_bytes_max))
    records = _decode_records(body, count)
    batch = RecordBatch(
        base_offset,
        records,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        attributes,
        leader_epoch,
        last_offset_delta,
    )
    return batch, end


def _decompress(compression: int, body: memoryview, limit: int) -> bytes:
    if compression == Compression.GZIP:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            raise CorruptCompression("record_batch.records", "a gzip stream", str(exc)) from None
        if not d.eof and len(out) <= limit:
            raise CorruptCompression("record_batch.records", "a whole gzip stream", "a truncated one")
    elif compression == Compression.ZSTD:
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise CorruptCompression("record_batch.records", "a zstd frame", str(exc)) from None
    else:
        name = Compression.NAMES.get(compression, f"code {compression}")
        raise UnsupportedCompression("record_batch.attributes", "compression none, gzip or zstd", name)
    if len(out) > limit:
        raise CorruptCompression("record_batch.records", f"at most {limit} bytes decompressed", "more")
    return out


def _decode_records(body: memoryview, count: int) -> list[Record]:
    if count > len(body):  # every record takes at least one byte
        raise Truncated("record_batch.records", f"{count} records", f"{len(body)} bytes")
    r = Reader(body)
    out: list[Record] = []
    for _ in range(count):
        length = r.varint("record.length")
        if length < 0:
            raise MalformedField("record.length", ">= 0", length)
        end = r.pos + length
        if end > r.end:
            raise Truncated("record", f"{length} bytes", r.end - r.pos)
        rr = Reader(body, r.pos, end)
        attributes = rr.int8("record.attributes")
        timestamp_delta = rr.varlong("record.timestamp_delta")
        offset_delta = rr.varint("record.offset_delta")
        key = _nullable_varbytes(rr, "record.key")
        value = _nullable_varbytes(rr, "record.value")
        n_headers = rr.varint("record.headers")
        if n_headers < 0 or n_headers > rr.remaining:
            raise MalformedField("record.headers", f"a count within the record (0..{rr.remaining})", n_headers)
        headers = []
        for _ in range(n_headers):
            raw_key = _nullable_varbytes(rr, "record.header.key")
            if raw_key is None:
                raise MalformedField("record.header.key", "a string", "null")
            try:
                hkey = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedField("record.header.key", "UTF-8", "invalid bytes") from None
            headers.append(RecordHeader(hkey, _nullable_varbytes(rr, "record.header.value")))
        rr.expect_end("record")
        r.pos = end
        out.append(Record(offset_delta, value, key, headers, timestamp_delta, attributes))
    r.expect_end("record_batch.records")
    return out


def _nullable_varbytes(r: Reader, name: str) -> bytes | None:
    n = r.varint(name)
    if n == -1:
        return None
    if n < 0:
        raise MalformedField(name, "a length >= 0 or -1 (null)", n)
    return bytes(r.take(n, name))


# --- encoding ---------------------------------------------------------------------------------------------------


def _varbytes(out: bytearray, value: bytes | None) -> None:
    if value is None:
        out += b"\x01"  # zigzag(-1)
    else:
        out += encode_uvarint(zigzag(len(value)))
        out += value


def encode_batch(batch: RecordBatch) -> bytes:
    """A batch, uncompressed, with its CRC-32C (the `attributes` compression bits must be 0)."""
    if batch.attributes & COMPRESSION_MASK:
        raise KafkaEncodeError("record_batch.attributes", "compression none (batches are encoded uncompressed)", 1)
    body = bytearray()
    for rec in batch.records:
        one = bytearray()
        one += struct.pack(">b", rec.attributes)
        one += encode_uvarint(zigzag(rec.timestamp_delta))
        one += encode_uvarint(zigzag(rec.offset_delta))
        _varbytes(one, rec.key)
        _varbytes(one, rec.value)
        one += encode_uvarint(zigzag(len(rec.headers)))
        for h in rec.headers:
            _varbytes(one, h.key.encode("utf-8"))
            _varbytes(one, h.value)
        body += encode_uvarint(zigzag(len(one)))
        body += one
    last = batch.last_offset_delta
    if last is None:
        last = batch.records[-1].offset_delta if batch.records else 0
    batch_length = BATCH_HEADER_BYTES - LOG_OVERHEAD + len(body)
    head = bytearray(
        BATCH_HEADER.pack(
            batch.base_offset,
            batch_length,
            batch.partition_leader_epoch,
            MAGIC_V2,
            0,
            batch.attributes,
            last,
            batch.base_timestamp,
            batch.max_timestamp,
            batch.producer_id,
            batch.producer_epoch,
            batch.base_sequence,
            len(batch.records),
        )
    )
    crc = crc32c(body, crc32c(memoryview(head)[ATTRIBUTES_OFFSET:]))
    struct.pack_into(">I", head, CRC_OFFSET, crc)
    return bytes(head) + bytes(body)
