"""Cutting event blocks into frames: limits hold, order and producer sequences are kept, nothing is lost."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.constants import BATCH_PAYLOAD_MAX_BYTES
from shmraft.node.batching import EVENT_BYTES_MAX, BatchCutter
from shmraft.wire.client import HEADER_BYTES, encode_produce
from shmraft.wire.frame import decode_batch


def body(pid: int, first_seq: int, events: list[bytes]) -> bytes:
    return encode_produce(0, pid, first_seq, 1000, events)[HEADER_BYTES:]


def test_full_frames_are_cut_at_64_events() -> None:
    cutter = BatchCutter()
    cutter.add(body(1, 0, [b"e%d" % i for i in range(150)]))
    frames = cutter.cut(flush=False)
    assert [decode_batch(f).header.event_count for f in frames] == [64, 64]
    assert cutter.pending_events == 22
    last = cutter.cut(flush=True)
    batch = decode_batch(last[0])
    assert batch.header.event_count == 22 and batch.sequences.tolist() == list(range(128, 150))
    assert cutter.pending_events == 0 and cutter.pending_bytes == 0


def test_payload_limit_cuts_before_64_events() -> None:
    cutter = BatchCutter()
    cutter.add(body(1, 0, [b"x" * 10_000] * 5))
    frames = cutter.cut(flush=True)
    assert [decode_batch(f).header.event_count for f in frames] == [3, 2]
    assert all(decode_batch(f).header.payload_len <= BATCH_PAYLOAD_MAX_BYTES for f in frames)


def test_largest_event_fits_alone() -> None:
    cutter = BatchCutter()
    cutter.add(body(1, 0, [b"a", b"b" * EVENT_BYTES_MAX, b"c"]))
    assert [decode_batch(f).header.event_count for f in cutter.cut(flush=True)] == [1, 1, 1]


@settings(max_examples=100, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(st.integers(1, 4), st.lists(st.binary(max_size=3000), min_size=1, max_size=90)),
        min_size=1,
        max_size=8,
    ),
    events_max=st.integers(1, 64),
    compress=st.booleans(),
)
def test_frames_hold_every_event_once_in_order(blocks, events_max, compress) -> None:
    cutter = BatchCutter(events_max=events_max, compress=compress)
    next_seq: dict[int, int] = {}
    want = []
    frames = []
    for pid, events in blocks:
        first = next_seq.get(pid, 0)
        next_seq[pid] = first + len(events)
        want += [(pid, first + i, e) for i, e in enumerate(events)]
        cutter.add(body(pid, first, events))
        frames += cutter.cut(flush=False)
    frames += cutter.cut(flush=True)
    got = []
    ids = []
    for f in frames:
        b = decode_batch(f)
        assert 1 <= b.header.event_count <= events_max
        assert b.header.payload_len <= BATCH_PAYLOAD_MAX_BYTES
        ids.append(b.header.batch_id)
        got += list(zip(b.producer_ids.tolist(), b.sequences.tolist(), [bytes(e) for e in b.events], strict=True))
    assert got == want
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
