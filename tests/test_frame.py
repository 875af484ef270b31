"""The batch frame codec: round trips, every validation rule, and corruption of every byte."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmraft.constants import BATCH_EVENTS_MAX, BATCH_PAYLOAD_MAX_BYTES, FRAME_HEADER_BYTES
from shmraft.wire import errors
from shmraft.wire.frame import (
    FLAG_PRODUCER_IDS,
    FLAG_ZSTD,
    FRAME_MAX_BYTES,
    decode_batch,
    decode_header,
    encode_batch,
    frame_event_count,
    frame_size,
    restamp,
)


def _frame(**kw) -> bytearray:
    kw.setdefault("batch_id", 9)
    kw.setdefault("timestamp_us", 123)
    events = kw.pop("events", [b"abc", b"", b"defgh"])
    return bytearray(encode_batch(events, **kw))


# --- round trips ----------------------------------------------------------------------------------------

events_st = st.lists(st.binary(max_size=600), min_size=1, max_size=BATCH_EVENTS_MAX)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=events_st,
    compress=st.booleans(),
    with_ids=st.booleans(),
    batch_id=st.integers(0, 2**64 - 1),
    term=st.integers(0, 2**32 - 1),
    prev_index=st.integers(0, 2**64 - 1),
)
def test_round_trip(events, compress, with_ids, batch_id, term, prev_index) -> None:
    ids = list(range(len(events))) if with_ids else None
    seqs = [s * 3 for s in range(len(events))] if with_ids else None
    frame = encode_batch(
        events,
        batch_id=batch_id,
        term=term,
        prev_index=prev_index,
        prev_term=term,
        producer_ids=ids,
        sequences=seqs,
        compress=compress,
    )
    batch = decode_batch(frame)
    assert [bytes(e) for e in batch.events] == events
    assert batch.header.batch_id == batch_id
    assert (batch.header.term, batch.header.prev_index, batch.header.prev_term) == (term, prev_index, term)
    assert batch.header.event_count == len(events) == frame_event_count(frame)
    assert frame_size(frame[:FRAME_HEADER_BYTES]) == len(frame)
    if with_ids:
        assert batch.producer_ids.tolist() == ids and batch.sequences.tolist() == seqs
    else:
        assert batch.producer_ids is None


def test_arrays_locate_every_event_without_a_loop() -> None:
    events = [bytes([i]) * i for i in range(1, 65)]
    batch = decode_batch(encode_batch(events, batch_id=1))
    assert batch.lengths.tolist() == list(range(1, 65))
    np.testing.assert_array_equal(batch.offsets, np.cumsum(range(1, 65)) - np.arange(1, 65))
    assert bytes(batch.data) == b"".join(events)


def test_compression_flag_set_only_when_smaller() -> None:
    assert decode_header(_frame(events=[b"x" * 1000], compress=True)).flags & FLAG_ZSTD
    assert not decode_header(_frame(events=[bytes(range(16))], compress=True)).flags & FLAG_ZSTD


def test_restamp_sets_raft_fields_and_keeps_frame_valid() -> None:
    frame = _frame(compress=True, events=[b"y" * 300] * 3)
    restamp(frame, term=7, prev_index=99, prev_term=6)
    h = decode_batch(frame).header
    assert (h.term, h.prev_index, h.prev_term) == (7, 99, 6)


# --- local errors: what cannot be encoded ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"events": []}, "event_count"),
        ({"events": [b"a"] * 65}, "event_count"),
        ({"events": [b"a" * BATCH_PAYLOAD_MAX_BYTES]}, "payload"),
        ({"term": 2**32}, "term"),
        ({"batch_id": -1}, "batch_id"),
        ({"producer_ids": [1, 2, 3]}, "producer_ids/sequences"),
        ({"producer_ids": [1], "sequences": [1]}, "producer_ids/sequences"),
    ],
)
def test_encoder_refuses_what_the_format_cannot_hold(kwargs, field) -> None:
    with pytest.raises(errors.LocalProtocolError) as info:
        _frame(**kwargs)
    assert info.value.field == field


def test_largest_single_event_fits() -> None:
    event = b"z" * (BATCH_PAYLOAD_MAX_BYTES - 4)
    frame = encode_batch([event], batch_id=1)
    assert len(frame) == FRAME_MAX_BYTES
    assert bytes(decode_batch(frame).events[0]) == event


# --- remote errors: each validation rule, named ---------------------------------------------------------------


def _set(frame: bytearray, fmt: str, offset: int, value: int) -> bytearray:
    struct.pack_into(fmt, frame, offset, value)
    return frame


def _recrc(frame: bytearray) -> bytearray:
    """Re-seal a frame after editing it, so that a rule after the CRC check is the one that fires."""
    import zlib

    (plen,) = struct.unpack_from("<I", frame, 8)
    crc = zlib.crc32(frame[48 : 48 + plen], zlib.crc32(frame[16:48], zlib.crc32(frame[0:12])))
    struct.pack_into("<I", frame, 12, crc)
    return frame


def _retable(frame: bytearray, lengths: list[int]) -> bytearray:
    struct.pack_into(f"<{len(lengths)}I", frame, 48, *lengths)
    return _recrc(frame)


CASES = [
    (lambda: _frame()[:55], errors.FrameTruncated, "frame"),
    (lambda: _set(_frame(), "<I", 0, 0xCAFEBABE), errors.BadMagic, "magic"),
    (lambda: _set(_frame(), "<B", 4, 2), errors.UnsupportedVersion, "version"),
    (lambda: _set(_frame(), "<B", 5, 0x80), errors.BadFlags, "flags"),
    (lambda: _set(_frame(), "<H", 6, 0), errors.EventCountOutOfRange, "event_count"),
    (lambda: _set(_frame(), "<H", 6, 65), errors.EventCountOutOfRange, "event_count"),
    (lambda: _set(_frame(), "<I", 8, BATCH_PAYLOAD_MAX_BYTES + 1), errors.FrameOversized, "payload_len"),
    (lambda: _frame()[:-1], errors.FrameTruncated, "frame"),
    (lambda: _frame() + b"\x00", errors.LengthMismatch, "frame"),
    (lambda: _set(_frame(), "<B", -8 + len(_frame()), 0xEE), errors.MissingFooter, "footer"),
    (lambda: _set(_frame(), "<B", 50, 0x55), errors.CrcMismatch, "crc32"),
    (lambda: _retable(_frame(), [3, 0, 6]), errors.LengthMismatch, "event lengths"),
    (
        lambda: _recrc(_set(_frame(events=[b"q" * 500], compress=True), "<B", 60, 0xFF)),
        errors.CorruptCompression,
        "payload",
    ),
]


@pytest.mark.parametrize("make, error, field", CASES)
def test_decoder_rejects_with_named_error(make, error, field) -> None:
    with pytest.raises(error) as info:
        decode_batch(make())
    assert info.value.field == field
    assert isinstance(info.value, errors.RemoteProtocolError)
    assert field in str(info.value) and "expected" in str(info.value)


def test_zstd_bomb_is_rejected_before_decompression() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (BATCH_PAYLOAD_MAX_BYTES * 4))
    frame = _frame()
    frame = frame[:48] + bomb + frame[-8:]
    frame = _recrc(_set(_set(bytearray(frame), "<I", 8, len(bomb)), "<B", 5, FLAG_ZSTD))
    with pytest.raises(errors.FrameOversized):
        decode_batch(frame)


def test_producer_table_longer_than_payload_is_rejected() -> None:
    frame = _recrc(_set(_frame(events=[b"a"]), "<B", 5, FLAG_PRODUCER_IDS))
    with pytest.raises(errors.LengthMismatch) as info:
        decode_batch(frame)
    assert info.value.field == "producer tables"


# --- corruption of every byte position: rejected, or (never) silently different ----------------------------------

FRAMES = {
    "plain": bytes(_frame(term=5, prev_index=17, prev_term=4)),
    "ids": bytes(_frame(producer_ids=[1, 2, 3], sequences=[4, 5, 6])),
    "zstd": bytes(_frame(events=[b"abcdefgh" * 40] * 4, compress=True)),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_every_single_byte_corruption_is_rejected(name: str) -> None:
    original = FRAMES[name]
    want = decode_batch(original)
    for pos in range(len(original)):
        for xor in (0x01, 0x80, 0xFF):
            bad = bytearray(original)
            bad[pos] ^= xor
            try:
                got = decode_batch(bad)
            except errors.RemoteProtocolError:
                continue
            # A corruption may only be accepted if it decodes to exactly the original batch.
            assert got.header == want.header and [bytes(e) for e in got.events] == [bytes(e) for e in want.events], (
                f"byte {pos} ^ {xor:#x} decoded to a different batch"
            )


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_random_corruption_never_decodes_to_something_else(data) -> None:
    name = data.draw(st.sampled_from(sorted(FRAMES)))
    original = bytearray(FRAMES[name])
    positions = data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=6))
    for pos in positions:
        original[pos] = data.draw(st.integers(0, 255))
    try:
        got = decode_batch(original)
    except errors.RemoteProtocolError:
        return
    want = decode_batch(FRAMES[name])
    assert got.header == want.header
    assert [bytes(e) for e in got.events] == [bytes(e) for e in want.events]


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200))
def test_garbage_is_rejected_with_a_protocol_error(blob: bytes) -> None:
    with pytest.raises(errors.RemoteProtocolError):
        decode_batch(blob)


def test_every_truncation_is_rejected() -> None:
    frame = FRAMES["ids"]
    for n in range(len(frame)):
        with pytest.raises(errors.RemoteProtocolError):
            decode_batch(frame[:n])
