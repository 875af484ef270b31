"""BATCH_MESSAGE: the batch frame, encoded and decoded whole (docs/PROTOCOL.md is the specification).

A frame is HEADER (48 bytes) + PAYLOAD (at most 32 KiB, optionally zstd-compressed) + FOOTER (8 bytes).
The uncompressed payload is a set of tables followed by the event bytes back to back, so that one
`numpy.frombuffer` + `cumsum` finds every event: no per-event Python loop is needed to validate a batch,
and the per-event objects are only made if the caller asks for `Batch.events`.

One frame is one Raft log entry. The batcher cuts frames with term/prev fields zero; the Raft worker
stamps them with `restamp` when it assigns the log position.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import zstandard

from shmraft.constants import (
    BATCH_EVENTS_MAX,
    BATCH_PAYLOAD_MAX_BYTES,
    FRAME_END_MARKER,
    FRAME_FOOTER_BYTES,
    FRAME_HEADER_BYTES,
    FRAME_MAGIC,
    FRAME_VERSION,
)
from shmraft.wire.errors import (
    BadFlags,
    BadMagic,
    CorruptCompression,
    CrcMismatch,
    EventCountOutOfRange,
    FrameOversized,
    FrameTruncated,
    LengthMismatch,
    LocalProtocolError,
    MissingFooter,
    UnsupportedVersion,
)

# Header layout, little-endian. Bytes 12..15 (the CRC) sit between the two parts so that the CRC can be
# computed over everything else without building a temporary copy of the header.
_HEAD_A: Final = struct.Struct("<IBBHI")  # magic, version, flags, event_count, payload_len   (0..11)
_CRC: Final = struct.Struct("<I")  # crc32                                                    (12..15)
_HEAD_B: Final = struct.Struct("<QQQII")  # batch_id, timestamp_us, prev_index, term, prev_term (16..47)
_FOOTER: Final = struct.Struct("<Q")
_FOOTER_BYTES: Final = _FOOTER.pack(FRAME_END_MARKER)
_RAFT_FIELDS: Final = struct.Struct("<QII")  # prev_index, term, prev_term at offset 32
_RAFT_FIELDS_OFFSET: Final = 32
_EVENT_COUNT: Final = struct.Struct("<H")  # event_count alone, at offset 6 (inside _HEAD_A)
_EVENT_COUNT_OFFSET: Final = struct.calcsize("<IBB")
assert _HEAD_A.size + _CRC.size + _HEAD_B.size == FRAME_HEADER_BYTES
assert _FOOTER.size == FRAME_FOOTER_BYTES

FLAG_ZSTD: Final = 0x01  # the payload on the wire is one zstd frame
FLAG_PRODUCER_IDS: Final = 0x02  # the payload starts with producer-id and sequence tables
FLAGS_KNOWN: Final = FLAG_ZSTD | FLAG_PRODUCER_IDS

FRAME_MIN_BYTES: Final = FRAME_HEADER_BYTES + FRAME_FOOTER_BYTES
FRAME_MAX_BYTES: Final = FRAME_HEADER_BYTES + BATCH_PAYLOAD_MAX_BYTES + FRAME_FOOTER_BYTES
TERM_MAX: Final = 2**32 - 1  # term and prev_term are u32 in the header
U64_MAX: Final = 2**64 - 1
ZSTD_LEVEL_DEFAULT: Final = 1  # measured: level 1 is several times faster than 3 at a similar ratio

_LEN_DTYPE: Final = np.dtype("<u4")
_U64_DTYPE: Final = np.dtype("<u8")

_compressors: dict[int, zstandard.ZstdCompressor] = {}
_decompressor: Final = zstandard.ZstdDecompressor()


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The decoded 48-byte header."""

    version: int
    flags: int
    event_count: int
    payload_len: int
    crc32: int
    batch_id: int
    timestamp_us: int
    prev_index: int
    term: int
    prev_term: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZSTD)


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated batch: the header, the uncompressed payload and the event tables as numpy arrays.

    `offsets[i]:offsets[i]+lengths[i]` is event i within `data`. Whole-batch consumers use the arrays;
    `events` makes one memoryview per event for callers that want a list.
    """

    header: FrameHeader
    data: memoryview  # the event bytes, back to back
    lengths: np.ndarray  # uint32, one per event
    offsets: np.ndarray  # int64, start of each event within `data`
    producer_ids: np.ndarray | None  # uint64 per event, when FLAG_PRODUCER_IDS
    sequences: np.ndarray | None  # uint64 per event, when FLAG_PRODUCER_IDS

    @property
    def events(self) -> list[memoryview]:
        data = self.data
        return [data[o : o + n] for o, n in zip(self.offsets.tolist(), self.lengths.tolist(), strict=True)]


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comp = _compressors.get(level)
    if comp is None:
        comp = _compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    return comp


def payload_size(lengths_total: int, event_count: int, with_producer_ids: bool) -> int:
    """Uncompressed payload size for `event_count` events of `lengths_total` bytes in all."""
    return lengths_total + event_count * (_LEN_DTYPE.itemsize + (16 if with_producer_ids else 0))


def _crc(head_a: bytes | memoryview, head_b: bytes | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(head_b, zlib.crc32(head_a)))


def encode_batch(
    events: Sequence[bytes | bytearray | memoryview],
    *,
    batch_id: int,
    term: int = 0,
    prev_index: int = 0,
    prev_term: int = 0,
    timestamp_us: int | None = None,
    producer_ids: Sequence[int] | np.ndarray | None = None,
    sequences: Sequence[int] | np.ndarray | None = None,
    compress: bool = False,
    zstd_level: int = ZSTD_LEVEL_DEFAULT,
) -> bytes:
    """Encode 1..64 events as one frame. Raises LocalProtocolError if they do not fit the format.

    With `compress`, the payload is zstd-compressed only if that makes it smaller (the flag says which).
    """
    count = len(events)
    if not 1 <= count <= BATCH_EVENTS_MAX:
        raise LocalProtocolError("event_count", f"1..{BATCH_EVENTS_MAX}", count)
    lengths = np.fromiter(map(len, events), dtype=_LEN_DTYPE, count=count)
    return encode_batch_arrays(
        lengths,
        [*events],
        batch_id=batch_id,
        term=term,
        prev_index=prev_index,
        prev_term=prev_term,
        timestamp_us=timestamp_us,
        producer_ids=producer_ids,
        sequences=sequences,
        compress=compress,
        zstd_level=zstd_level,
    )


def encode_batch_arrays(
    lengths: np.ndarray,
    data: Sequence[bytes | bytearray | memoryview],
    *,
    batch_id: int,
    term: int = 0,
    prev_index: int = 0,
    prev_term: int = 0,
    timestamp_us: int | None = None,
    producer_ids: Sequence[int] | np.ndarray | None = None,
    sequences: Sequence[int] | np.ndarray | None = None,
    compress: bool = False,
    zstd_level: int = ZSTD_LEVEL_DEFAULT,
) -> bytes:
    """Encode a batch given as an array of event lengths and the event bytes back to back.

    `data` is a list of buffers whose concatenation is the events' bytes (one per source block), so a
    batcher can cut frames across blocks without making one object per event.
    """
    count = int(lengths.size)
    if not 1 <= count <= BATCH_EVENTS_MAX:
        raise LocalProtocolError("event_count", f"1..{BATCH_EVENTS_MAX}", count)
    for name, value, limit in (
        ("batch_id", batch_id, U64_MAX),
        ("prev_index", prev_index, U64_MAX),
        ("term", term, TERM_MAX),
        ("prev_term", prev_term, TERM_MAX),
    ):
        if not 0 <= value <= limit:
            raise LocalProtocolError(name, f"0..{limit}", value)
    flags = 0
    parts: list[bytes | bytearray | memoryview] = []
    if producer_ids is not None or sequences is not None:
        if producer_ids is None or sequences is None:
            raise LocalProtocolError("producer_ids/sequences", "both or neither", "only one")
        pids = np.asarray(producer_ids, dtype=_U64_DTYPE)
        seqs = np.asarray(sequences, dtype=_U64_DTYPE)
        if pids.shape != (count,) or seqs.shape != (count,):
            raise LocalProtocolError("producer_ids/sequences", f"{count} values each", (pids.size, seqs.size))
        flags |= FLAG_PRODUCER_IDS
        parts += [pids.tobytes(), seqs.tobytes()]
    parts.append(np.asarray(lengths, dtype=_LEN_DTYPE).tobytes())
    parts.extend(data)
    payload = b"".join(parts)
    expected = payload_size(int(lengths.sum(dtype=np.int64)), count, bool(flags & FLAG_PRODUCER_IDS))
    if len(payload) != expected:
        raise LocalProtocolError("data", f"{expected} bytes of tables and events", len(payload))
    if len(payload) > BATCH_PAYLOAD_MAX_BYTES:
        raise LocalProtocolError("payload", f"at most {BATCH_PAYLOAD_MAX_BYTES} bytes", len(payload))
    if compress:
        packed = _compressor(zstd_level).compress(payload)
        if len(packed) < len(payload):
            payload = packed
            flags |= FLAG_ZSTD
    if timestamp_us is None:
        timestamp_us = time.time_ns() // 1000
    head_a = _HEAD_A.pack(FRAME_MAGIC, FRAME_VERSION, flags, count, len(payload))
    head_b = _HEAD_B.pack(batch_id, timestamp_us, prev_index, term, prev_term)
    crc = _crc(head_a, head_b, payload)
    return b"".join((head_a, _CRC.pack(crc), head_b, payload, _FOOTER_BYTES))


def frame_event_count(frame: bytes | bytearray | memoryview) -> int:
    """The header's event_count, read in place without checks: for frames checked when they entered the log."""
    return _EVENT_COUNT.unpack_from(frame, _EVENT_COUNT_OFFSET)[0]


def frame_size(header: bytes | bytearray | memoryview) -> int:
    """Total frame size announced by a header (for reading a frame off a stream).

    Checks only what is needed to trust the length: size, magic and the payload limit.
    """
    if len(header) < FRAME_HEADER_BYTES:
        raise FrameTruncated("header", f"{FRAME_HEADER_BYTES} bytes", len(header))
    magic, _version, _flags, _count, payload_len = _HEAD_A.unpack_from(header, 0)
    if magic != FRAME_MAGIC:
        raise BadMagic("magic", f"0x{FRAME_MAGIC:08X}", f"0x{magic:08X}")
    if payload_len > BATCH_PAYLOAD_MAX_BYTES:
        raise FrameOversized("payload_len", f"at most {BATCH_PAYLOAD_MAX_BYTES}", payload_len)
    return FRAME_HEADER_BYTES + payload_len + FRAME_FOOTER_BYTES


def decode_header(buf: bytes | bytearray | memoryview) -> FrameHeader:
    """Validate the fixed fields of a frame (steps 1-6 of docs/PROTOCOL.md) and return its header."""
    if len(buf) < FRAME_MIN_BYTES:
        raise FrameTruncated("frame", f"at least {FRAME_MIN_BYTES} bytes", len(buf))
    magic, version, flags, count, payload_len = _HEAD_A.unpack_from(buf, 0)
    if magic != FRAME_MAGIC:
        raise BadMagic("magic", f"0x{FRAME_MAGIC:08X}", f"0x{magic:08X}")
    if version != FRAME_VERSION:
        raise UnsupportedVersion("version", str(FRAME_VERSION), version)
    if flags & ~FLAGS_KNOWN:
        raise BadFlags("flags", f"only bits 0x{FLAGS_KNOWN:02X}", f"0x{flags:02X}")
    if not 1 <= count <= BATCH_EVENTS_MAX:
        raise EventCountOutOfRange("event_count", f"1..{BATCH_EVENTS_MAX}", count)
    if payload_len > BATCH_PAYLOAD_MAX_BYTES:
        raise FrameOversized("payload_len", f"at most {BATCH_PAYLOAD_MAX_BYTES}", payload_len)
    (crc,) = _CRC.unpack_from(buf, 12)
    batch_id, timestamp_us, prev_index, term, prev_term = _HEAD_B.unpack_from(buf, 16)
    return FrameHeader(version, flags, count, payload_len, crc, batch_id, timestamp_us, prev_index, term, prev_term)


def decode_batch(buf: bytes | bytearray | memoryview) -> Batch:
    """Validate a whole frame and return its batch. Raises a RemoteProtocolError subclass naming the field.

    `buf` must hold exactly one frame. The returned arrays and views reference `buf` (no copy) unless the
    payload was compressed.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
    header = decode_header(view)
    end = FRAME_HEADER_BYTES + header.payload_len
    total = end + FRAME_FOOTER_BYTES
    if len(view) < total:
        raise FrameTruncated("frame", f"{total} bytes (payload_len {header.payload_len})", len(view))
    if len(view) > total:
        raise LengthMismatch("frame", f"{total} bytes (payload_len {header.payload_len})", len(view))
    (marker,) = _FOOTER.unpack_from(view, end)
    if marker != FRAME_END_MARKER:
        raise MissingFooter("footer", f"0x{FRAME_END_MARKER:010X}", f"0x{marker:010X}")
    payload = view[FRAME_HEADER_BYTES:end]
    crc = _crc(view[0:12], view[16:FRAME_HEADER_BYTES], payload)
    if crc != header.crc32:
        raise CrcMismatch("crc32", f"0x{crc:08X} (computed)", f"0x{header.crc32:08X}")
    if header.flags & FLAG_ZSTD:
        payload = memoryview(_decompress(payload))
    return _split_payload(header, payload)


def _decompress(payload: memoryview) -> bytes:
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise CorruptCompression("payload", "a zstd frame", f"undecodable ({exc})") from None
    if params.content_size > BATCH_PAYLOAD_MAX_BYTES:  # also catches "unknown size" (a huge sentinel)
        raise FrameOversized("payload (decompressed)", f"at most {BATCH_PAYLOAD_MAX_BYTES}", params.content_size)
    try:
        out = _decompressor.decompress(payload, max_output_size=BATCH_PAYLOAD_MAX_BYTES)
    except zstandard.ZstdError as exc:
        raise CorruptCompression("payload", "a valid zstd frame", f"error ({exc})") from None
    if len(out) != params.content_size:
        raise CorruptCompression("payload", f"{params.content_size} bytes decompressed", len(out))
    return out


def _split_payload(header: FrameHeader, payload: memoryview) -> Batch:
    count = header.event_count
    pos = 0
    pids = seqs = None
    if header.flags & FLAG_PRODUCER_IDS:
        need = 16 * count
        if len(payload) < need:
            raise LengthMismatch("producer tables", f"{need} bytes", len(payload))
        pids = np.frombuffer(payload, dtype=_U64_DTYPE, count=count, offset=0)
        seqs = np.frombuffer(payload, dtype=_U64_DTYPE, count=count, offset=8 * count)
        pos = need
    table_end = pos + 4 * count
    if len(payload) < table_end:
        raise LengthMismatch("event lengths table", f"{4 * count} bytes", len(payload) - pos)
    lengths = np.frombuffer(payload, dtype=_LEN_DTYPE, count=count, offset=pos)
    ends = np.cumsum(lengths, dtype=np.int64)
    data_len = len(payload) - table_end
    if int(ends[-1]) != data_len:
        raise LengthMismatch("event lengths", f"sum {data_len} (bytes after the table)", int(ends[-1]))
    offsets = ends - lengths
    return Batch(header, payload[table_end:], lengths, offsets, pids, seqs)


def restamp(frame: bytearray | memoryview, *, term: int, prev_index: int, prev_term: int) -> None:
    """Set the Raft fields of an encoded frame in place and recompute its CRC (the Raft worker's step).

    The payload is not re-parsed; its integrity is carried over because the CRC is recomputed from the
    same bytes. Call only on a frame that decoded cleanly (or that this process encoded).
    """
    if not (0 <= term <= TERM_MAX and 0 <= prev_term <= TERM_MAX and 0 <= prev_index <= U64_MAX):
        raise LocalProtocolError("term/prev_index/prev_term", "in range", (term, prev_index, prev_term))
    view = memoryview(frame)
    _RAFT_FIELDS.pack_into(view, _RAFT_FIELDS_OFFSET, prev_index, term, prev_term)
    (payload_len,) = struct.unpack_from("<I", view, 8)
    payload = view[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + payload_len]
    _CRC.pack_into(view, 12, _crc(view[0:12], view[16:FRAME_HEADER_BYTES], payload))
