"""What tests/test_frame.py does not fuzz yet: frames whose CRC is *correct* around hostile contents (a faulty
or malicious sender re-seals what it sends), so decoding gets past the CRC to the tables, the compression
and the lengths; and exact re-encoding of what decodes. Oracles in tools/fuzz/oracles.py (check_frame),
shared with tools/fuzz/fuzz_frame.py.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "fuzz"))

import oracles  # noqa: E402

from shmraft.constants import FRAME_END_MARKER, FRAME_MAGIC, FRAME_VERSION  # noqa: E402
from shmraft.wire.frame import encode_batch  # noqa: E402

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def sealed_frames(draw: st.DrawFn) -> bytes:
    """A header with plausible or random fields, any payload, the footer, and a correct CRC."""
    payload = draw(st.binary(max_size=400))
    flags = draw(st.integers(0, 3) | st.integers(0, 255))
    count = draw(st.integers(1, 8) | st.integers(0, 65535))
    plen = draw(st.just(len(payload)) | st.integers(0, 2**32 - 1))
    head = struct.pack("<IBBHI", FRAME_MAGIC, FRAME_VERSION, flags, count, plen) + bytes(4)
    head += struct.pack("<QQQII", *draw(st.tuples(*[st.integers(0, 2**64 - 1)] * 3, *[st.integers(0, 2**32 - 1)] * 2)))
    return oracles.seal_frame(head + payload + struct.pack("<Q", FRAME_END_MARKER))


@FAST
@given(frame=sealed_frames())
def test_a_sealed_frame_with_hostile_contents_decodes_faithfully_or_is_refused(frame: bytes) -> None:
    oracles.check_frame(frame)


@FAST
@given(frame=sealed_frames(), data=st.data())
def test_a_resealed_corruption_decodes_faithfully_or_is_refused(frame: bytes, data: st.DataObject) -> None:
    buf = bytearray(frame)
    for pos in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4)):
        buf[pos] = data.draw(st.integers(0, 255))
    oracles.check_frame(oracles.seal_frame(bytes(buf)))


@FAST
@given(events=st.lists(st.binary(max_size=100), min_size=1, max_size=16), ids=st.booleans(), compress=st.booleans())
def test_valid_frames_decode_to_what_re_encodes_them(events: list[bytes], ids: bool, compress: bool) -> None:
    n = len(events)
    frame = encode_batch(
        events,
        batch_id=3,
        term=2,
        prev_index=9,
        prev_term=1,
        timestamp_us=5,
        producer_ids=list(range(n)) if ids else None,
        sequences=list(range(n)) if ids else None,
        compress=compress,
    )
    oracles.check_frame(frame)


@FAST
@given(events=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=8), data=st.data())
def test_a_zstd_payload_resealed_after_corruption_is_refused_or_faithful(
    events: list[bytes], data: st.DataObject
) -> None:
    frame = bytearray(encode_batch([e * 20 for e in events], batch_id=1, compress=True))
    pos = data.draw(st.integers(48, len(frame) - 9))
    frame[pos] ^= data.draw(st.integers(1, 255))
    oracles.check_frame(oracles.seal_frame(bytes(frame)))
