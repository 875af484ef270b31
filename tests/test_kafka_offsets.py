"""The offsets a Kafka producer computes (`base_offset + i`) are exact: the batcher keeps a Kafka door block at
consecutive offsets when the payload limit would cut it mid-frame (shmraft/node/batching.py, docs/KAFKA.md
section 2). Frames are given consecutive log indexes here, as the raft worker does."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.constants import BATCH_EVENTS_MAX, BATCH_PAYLOAD_MAX_BYTES
from shmraft.node.batching import BLOCK_HEAD, PER_EVENT_TABLE_BYTES, BatchCutter
from shmraft.node.dedup import KAFKA_SEQUENCE_BASE, event_offset
from shmraft.wire.frame import decode_batch

NATIVE_FIRST_SEQUENCE = 0


def block(pid: int, first_sequence: int, events: list[bytes]) -> bytes:
    lengths = np.array([len(e) for e in events], dtype="<u4")
    return BLOCK_HEAD.pack(pid, first_sequence, 1000, len(events)) + lengths.tobytes() + b"".join(events)


def offsets_of(frames: list[bytes]) -> dict[tuple[int, int], int]:
    """(producer id, sequence) -> offset, with frame k at log index k + 1."""
    out = {}
    for index, f in enumerate(frames, start=1):
        b = decode_batch(f)
        for pos, (pid, seq) in enumerate(zip(b.producer_ids.tolist(), b.sequences.tolist(), strict=True)):
            out[(pid, seq)] = event_offset(index, pos)
    return out


def fits_aligned(sizes: list[int]) -> bool:
    """Every run of 64 events of the block (from its first) fits one frame's payload."""
    return all(
        sum(s + PER_EVENT_TABLE_BYTES for s in sizes[k : k + BATCH_EVENTS_MAX]) <= BATCH_PAYLOAD_MAX_BYTES
        for k in range(0, len(sizes), BATCH_EVENTS_MAX)
    )


def test_a_kafka_block_the_payload_limit_would_cut_starts_a_frame_of_its_own() -> None:
    events = [b"k" * 1000] * 20  # 20 KB: fits an empty frame, not the 13 KB left after the first block
    for first, expect_split in ((KAFKA_SEQUENCE_BASE, False), (NATIVE_FIRST_SEQUENCE, True)):
        cutter = BatchCutter()
        cutter.add(block(1, 0, [b"n" * 19_000]))
        cutter.add(block(2, first, events))
        frames = cutter.cut(flush=True)
        counts = [decode_batch(f).header.event_count for f in frames]
        offsets = offsets_of(frames)
        consecutive = [offsets[(2, first + k)] - offsets[(2, first)] for k in range(20)] == list(range(20))
        assert consecutive != expect_split, (first, counts)  # native blocks are packed as before
        assert counts == ([1 + 13, 7] if expect_split else [1, 20])


def test_a_long_kafka_block_of_small_records_stays_consecutive_across_frames() -> None:
    """A block of 200 records of 400 B after a big event: cut only by the 64-event limit once it starts a frame."""
    cutter = BatchCutter()
    cutter.add(block(1, 0, [b"n" * 20_000]))
    cutter.add(block(2, KAFKA_SEQUENCE_BASE, [b"r" * 400] * 200))
    offsets = offsets_of(cutter.cut(flush=True))
    first = offsets[(2, KAFKA_SEQUENCE_BASE)]
    assert [offsets[(2, KAFKA_SEQUENCE_BASE + k)] - first for k in range(200)] == list(range(200))


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(
            st.booleans(),  # a Kafka door block
            st.lists(st.integers(0, 6000), min_size=1, max_size=150),  # event sizes
        ),
        min_size=1,
        max_size=10,
    ),
    cut_every=st.integers(1, 4),
)
def test_kafka_blocks_that_can_be_exact_are_exact(blocks: list[tuple[bool, list[int]]], cut_every: int) -> None:
    """Whatever the mix of blocks and when frames are cut, a Kafka block whose 64-event runs each fit a frame
    is at consecutive offsets; every event is in exactly one frame, in order, within the limits."""
    cutter = BatchCutter()
    frames: list[bytes] = []
    expected: list[tuple[int, int]] = []
    for pid, (kafka, sizes) in enumerate(blocks, start=1):
        first = KAFKA_SEQUENCE_BASE if kafka else NATIVE_FIRST_SEQUENCE
        cutter.add(block(pid, first, [bytes([pid]) * s for s in sizes]))
        expected += [(pid, first + k) for k in range(len(sizes))]
        if pid % cut_every == 0:
            frames += cutter.cut(flush=False)
    frames += cutter.cut(flush=True)
    for f in frames:
        b = decode_batch(f)
        assert 1 <= b.header.event_count <= BATCH_EVENTS_MAX and b.header.payload_len <= BATCH_PAYLOAD_MAX_BYTES
    offsets = offsets_of(frames)
    assert list(offsets) == expected
    for pid, (kafka, sizes) in enumerate(blocks, start=1):
        if kafka and fits_aligned(sizes):
            base = offsets[(pid, KAFKA_SEQUENCE_BASE)]
            got = [offsets[(pid, KAFKA_SEQUENCE_BASE + k)] - base for k in range(len(sizes))]
            assert got == list(range(len(sizes))), f"block {pid} of {len(sizes)} events is not consecutive"
