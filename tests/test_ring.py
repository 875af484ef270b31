"""Shared-memory rings in one process: layout, wrap-around, full/empty edges, release semantics, limits,
attach validation, segments; and a hypothesis model test against a deque. Cross-process behaviour is in
tests/test_ring_processes.py."""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from collections import deque

import numpy as np
import posix_ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmraft.ipc import ring, segments
from shmraft.ipc.owner import SegmentOwner

RUN_ID = f"tr{os.getpid()}"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fail a test that leaves anything with this file's run id in /dev/shm (and clean it up)."""
    yield
    left = [e for e in os.listdir("/dev/shm") if f"shmraft-{RUN_ID}" in e]
    for e in left:
        if e.startswith("sem."):
            segments.unlink_semaphore("/" + e[4:])
        else:
            segments.unlink_segment("/" + e)
    assert not left, f"left in /dev/shm: {left}"


@pytest.fixture
def make_ring():
    """make_ring(capacity) -> (name, writer, reader); everything closed and unlinked afterwards."""
    owner = SegmentOwner(segments.prefix_for(RUN_ID, 0))
    handles: list[ring._RingHandle] = []

    def make(capacity: int = 4096, record_max_bytes: int | None = None):
        name = owner.create_ring(f"r{next(_counter)}", capacity, record_max_bytes)
        w, r = ring.RingWriter(name), ring.RingReader(name)
        handles.extend((w, r))
        return name, w, r

    try:
        yield make
    finally:
        for h in handles:
            h.close()
        owner.close()


def test_push_pop_round_trip_and_single_calls(make_ring):
    name, w, r = make_ring()
    assert r.pop() is None and r.pop_many() == []
    assert w.push_many([b"abc", b"", bytearray(b"xyz"), memoryview(b"0123456789")[2:5]]) == 4
    w.push(b"single")
    assert r.pop_many() == [b"abc", b"", b"xyz", b"234", b"single"]
    assert r.pending_records == 5 and r.release() == 5 and r.pending_records == 0
    assert w.fill_bytes() == 0
    s = w.stats()
    assert (s.records_pushed, s.bytes_pushed, s.records_released, s.bytes_released) == (5, 15, 5, 15)
    assert s.writer_pid == s.reader_pid == s.creator_pid == os.getpid()


def test_segment_mode_is_0600_and_names_are_checked(make_ring):
    name, _, _ = make_ring()
    for entry in [name[1:], *("sem." + s[1:] for s in segments.sem_names(name))]:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode) == 0o600
    assert segments.name_for("run_1", 2, "r1") == "/shmraft-run_1-2-r1"
    with pytest.raises(segments.SegmentError, match="run_id"):
        segments.name_for("bad-id", 0, "r1")
    with pytest.raises(segments.SegmentExists):
        ring.create_ring(name, 4096)


def test_one_entry_per_push_many_and_block_views(make_ring):
    _, w, r = make_ring(1 << 16)
    events = [bytes([i]) * 100 for i in range(64)]
    w0 = w.stats().write_pos
    assert w.push_many(events) == 64
    assert w.stats().write_pos - w0 == 8 + 64 * 4 + 6400  # header + lengths table + bytes, one entry
    block = r.pop_block(copy=False)
    assert isinstance(block.buffer, memoryview) and len(block) == 64 and block.nbytes == 6400
    assert [bytes(m) for m in block.tolist()] == events and bytes(block[3]) == events[3]
    with pytest.raises(ring.RingConfigError, match="release"):
        r.pop_block(copy=False, release=True)
    del block
    r.release()
    for i in range(3):  # several entries, one of them partly: starts are absolute offsets in the ring
        w.push_many([bytes([i]) * (10 + i), bytes([i + 100]) * 5])
    block = r.pop_block(5, copy=False)
    assert [bytes(m) for m in block.tolist()] == [b"\0" * 10, b"\x64" * 5, b"\1" * 11, b"\x65" * 5, b"\2" * 12]
    del block
    assert r.pop_many(release=True) == [b"\x66" * 5]


@pytest.mark.parametrize("length", [4, 3, 5, 116, 117, 115, 1005])
def test_wrap_around_many_laps(make_ring, length):
    """Entries of 8 + align8(4 + length) bytes: 16 and 128 divide 4096 (they end exactly at the end
    of the data area), the others are one byte off and need wrap markers."""
    _, w, r = make_ring(4096)
    seq = 0
    expect = 0
    per_call = itertools.cycle([1, 2, 3, 1, 7])
    while w.stats().write_pos < 60 * 4096:
        recs = [(seq + i).to_bytes(4, "little")[: min(4, length)].ljust(length, b"\xab") for i in range(next(per_call))]
        k = w.push_many(recs)
        seq += k
        for m in r.pop_many(5, release=True):
            assert m[: min(4, length)] == expect.to_bytes(4, "little")[: min(4, length)] and len(m) == length
            expect += 1
    for m in r.pop_many(release=True):
        assert m[: min(4, length)] == expect.to_bytes(4, "little")[: min(4, length)]
        expect += 1
    assert expect == seq and r.pop() is None and w.fill_bytes() == 0


def test_full_ring_back_pressure(make_ring):
    _, w, r = make_ring(4096)  # record_max_bytes 1005
    rec = b"x" * 500
    pushed = 0
    while w.push_many([rec, rec]) == 2:
        pushed += 2
    assert pushed >= 4
    with pytest.raises(ring.RingFull) as err:
        w.push(rec)
    assert err.value.free < 520 and "full" in str(err.value)
    t0 = time.monotonic()
    with pytest.raises(ring.RingFull):
        w.push(rec, timeout_ms=50)
    assert time.monotonic() - t0 >= 0.045
    # a reader thread releasing space unblocks a push with a timeout
    t = threading.Timer(0.05, lambda: r.pop_many(2, release=True))
    t.start()
    try:
        w.push(rec, timeout_ms=5000)
    finally:
        t.join()
    drained = r.pop_many(release=True)
    assert len(drained) >= 1 and all(m == rec for m in drained)


def test_pop_from_empty_respects_timeout(make_ring):
    _, w, r = make_ring()
    t0 = time.monotonic()
    assert r.pop_many(timeout_ms=0) == []
    assert r.pop_many(timeout_ms=60) == [] and time.monotonic() - t0 >= 0.055
    threading.Timer(0.05, lambda: w.push(b"late")).start()
    assert r.pop(timeout_ms=5000) == b"late"


def test_limits_and_typed_errors(make_ring):
    name, w, r = make_ring(4096, record_max_bytes=200)
    with pytest.raises(ring.RecordTooLarge) as err:
        w.push_many([b"ok", b"y" * 201])
    assert (err.value.size, err.value.limit, err.value.index) == (201, 200, 1)
    assert "201" in str(err.value) and "200" in str(err.value)
    assert w.fill_bytes() == 0  # nothing of that call was pushed
    for cap in (2048, 4097, 3 * 4096, 1 << 31):
        with pytest.raises(ring.RingConfigError, match="capacity_bytes"):
            ring.create_ring(segments.name_for(RUN_ID, 0, "bad"), cap)
    with pytest.raises(ring.RingConfigError, match="record_max_bytes"):
        ring.create_ring(segments.name_for(RUN_ID, 0, "bad"), 4096, 4096)
    with pytest.raises(ring.RingConfigError, match="max_records"):
        r.pop_many(0)
    assert issubclass(ring.RingFull, ring.RingError) and issubclass(ring.RecordTooLarge, ring.RingError)


def test_attach_validation(make_ring):
    name, _, _ = make_ring(4096)
    with pytest.raises(ring.RingAttachError, match="capacity_bytes: expected 8192, got 4096"):
        ring.RingReader(name, 8192)
    with pytest.raises(ring.RingAttachError, match="segment"):
        ring.RingReader(segments.name_for(RUN_ID, 0, "missing"))
    garbage = segments.name_for(RUN_ID, 0, "garbage")
    shm = posix_ipc.SharedMemory(garbage, posix_ipc.O_CREX, mode=0o600, size=4096 + 256)
    try:
        os.write(shm.fd, np.random.default_rng(1).bytes(4096 + 256))
        os.close(shm.fd)
        with pytest.raises(ring.RingAttachError, match="magic"):
            ring.RingWriter(garbage)
    finally:
        segments.unlink_segment(garbage)


def test_closed_flag(make_ring):
    _, w, r = make_ring()
    w.push_many([b"a", b"b"])
    w.mark_closed()
    assert r.closed
    with pytest.raises(ring.RingClosed):
        w.push(b"c")
    assert r.pop_many(release=True) == [b"a", b"b"]
    with pytest.raises(ring.RingClosed):
        r.pop_many(timeout_ms=1000)


def test_unreleased_records_are_redelivered_to_a_new_reader(make_ring):
    name, w, r = make_ring(1 << 16)
    w.push_many([bytes([i]) for i in range(10)])
    assert r.pop_many(3) == [b"\0", b"\1", b"\2"]  # partway into one entry
    r.release()
    assert r.pop_many(4) == [b"\3", b"\4", b"\5", b"\6"]
    r.close()  # "dies" without releasing
    r2 = ring.RingReader(name)
    try:
        assert r2.pop_many(2, release=True) == [b"\3", b"\4"]  # released cursor inside the entry survives
        assert r2.pop_many() == [b"\5", b"\6", b"\7", b"\x08", b"\x09"]
        assert r2.rewind() == 5 and r2.pop_many(1) == [b"\5"]
    finally:
        r2.close()


def test_max_bytes_and_progress(make_ring):
    _, w, r = make_ring(1 << 16)
    w.push_many([b"a" * 100] * 5)
    w.push_many([b"b" * 300])
    assert len(r.pop_many(max_bytes=250)) == 2
    assert len(r.pop_many(max_bytes=50)) == 1  # at least one record, even over the limit
    assert r.pop_many(max_bytes=400) == [b"a" * 100] * 2  # stops before the 300-byte record
    assert r.pop_many(max_bytes=10) == [b"b" * 300]


def test_owner_cleans_up_and_inspector(make_ring):
    prefix = segments.prefix_for(RUN_ID, "own")
    with SegmentOwner(prefix) as owner:
        name = owner.create_ring("x", 8192)
        with ring.RingInspector(name) as insp:
            assert insp.capacity_bytes == 8192 and insp.fill_bytes() == 0 and not insp.closed
        assert segments.list_names(prefix)[0] == [name]
    assert segments.list_names(prefix) == ([], [])


# -- model test ------------------------------------------------------------------------------------
_record = st.binary(max_size=40) | st.builds(lambda n: b"\x5a" * n, st.integers(0, 1005))
_op = st.one_of(
    st.tuples(st.just("push"), st.lists(_record, min_size=1, max_size=12)),
    st.tuples(st.just("pop"), st.integers(1, 20), st.integers(1, 3000), st.booleans()),
    st.tuples(st.just("release")),
    st.tuples(st.just("rewind")),
    st.tuples(st.just("reattach_reader")),
    st.tuples(st.just("reattach_writer")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=60))
def test_model_against_deque(make_ring, ops):
    """Random push/pop/release/rewind/re-attach sequences on a 4 KiB ring behave like a deque:
    `released` (gone for good), `pending` (popped, not released), `queued` (not yet popped)."""
    name, w, r = make_ring(4096)
    pending: deque[bytes] = deque()
    queued: deque[bytes] = deque()
    for op in ops:
        kind = op[0]
        if kind == "push":
            recs = op[1]
            k = w.push_many(recs)
            assert 0 <= k <= len(recs)
            queued.extend(recs[:k])
            if k < len(recs):  # the next record did not fit here nor after a wrap
                size = 8 + ((4 + len(recs[k]) + 7) & ~7)
                free = 4096 - w.fill_bytes()
                to_end = 4096 - (w.stats().write_pos & 4095)
                assert size > min(free, to_end) and size > free - to_end
        elif kind == "pop":
            _, max_records, max_bytes, release = op
            got = r.pop_many(max_records, max_bytes, release=release)
            assert len(got) <= max_records
            assert len(got) <= 1 or sum(map(len, got)) <= max_bytes
            assert (len(got) == 0) == (len(queued) == 0)
            for m in got:
                assert m == queued.popleft()
                pending.append(m)
            if release:
                pending.clear()
        elif kind == "release":
            assert r.release() == len(pending)
            pending.clear()
        elif kind == "rewind":
            assert r.rewind() == len(pending)
            queued.extendleft(reversed(pending))
            pending.clear()
        elif kind == "reattach_reader":
            r.close()
            r = ring.RingReader(name)
            queued.extendleft(reversed(pending))
            pending.clear()
        elif kind == "reattach_writer":
            w.close()
            w = ring.RingWriter(name)
    assert r.pop_many(100_000) == list(queued)
    r.close()
    w.close()


def test_selectable_reader_is_woken_by_the_writer_through_its_wake_socket(make_ring) -> None:
    """arm() + select: a push while armed makes wake_fileno() readable; records already there make arm()
    say so (no lost wake-up); a push while disarmed sends nothing."""
    import select

    _name, w, r = make_ring(1 << 16)
    fd = r.wake_fileno()
    assert not r.arm()
    assert select.select([fd], [], [], 0)[0] == []
    w.push(b"one")
    assert select.select([fd], [], [], 1.0)[0] == [fd]
    r.disarm()
    assert r.drain_wake() == 1
    w.push(b"two")  # disarmed: no datagram, but the next arm() sees the records
    assert r.drain_wake() == 0
    assert r.arm()
    r.disarm()
    assert r.pop_many(release=True) == [b"one", b"two"]
