"""The snapshot record (node/snapshot.py) and the dedup table's committed view (node/dedup.py): round trip,
determinism across construction paths, refusal of unknown versions and damaged bytes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dedup import _state, logs

from shmraft.node.dedup import DedupTable, Verdict
from shmraft.node.groups import GroupCommit, GroupTable
from shmraft.node.snapshot import (
    SNAPSHOT_HEADER_BYTES,
    SnapshotFormatError,
    decode_snapshot,
    encode_snapshot,
    snapshot_of,
)

LIMITS = [{}, {"producers_max": 2, "horizon_entries": 4}, {"spans_max": 1}]


def _record_all(t: DedupTable, log, start: int, commit_of) -> None:
    for i, (p, s) in enumerate(log, start=start):
        t.record(i, p, s, commit_index=commit_of(i))


@settings(max_examples=200, deadline=None)
@given(log=logs(), cut=st.integers(0, 25), limits=st.sampled_from(LIMITS))
def test_committed_view_is_the_table_of_the_committed_prefix(log, cut, limits) -> None:
    """A table with an uncommitted suffix (undo records) encodes, at its commit index, exactly the bytes of
    a table built from the committed prefix alone; and the table rebuilt from them continues identically."""
    cut = min(cut, len(log))
    live = DedupTable(**limits)
    _record_all(live, log, 1, lambda i: min(i, cut))  # entries above `cut` stay uncommitted
    prefix = DedupTable(**limits)
    _record_all(prefix, log[:cut], 1, lambda i: i)
    data = encode_snapshot(snapshot_of(live, term=3))
    assert data == encode_snapshot(snapshot_of(prefix, term=3))
    restored = DedupTable.from_state(decode_snapshot(data).table, **limits)
    assert _state(restored) == _state(prefix) and restored.last_index == cut
    _record_all(restored, log[cut:], cut + 1, lambda i: i)
    _record_all(prefix, log[cut:], cut + 1, lambda i: i)
    assert _state(restored) == _state(prefix)


@settings(max_examples=100, deadline=None)
@given(log=logs(), limits=st.sampled_from(LIMITS))
def test_round_trip_and_determinism_across_paths(log, limits) -> None:
    """Built straight, or with a truncated and re-appended suffix, or restored from a snapshot midway: the
    same log gives the same bytes."""
    n = len(log)
    straight = DedupTable(**limits)
    _record_all(straight, log, 1, lambda i: i)
    detour = DedupTable(**limits)
    _record_all(detour, log, 1, lambda i: n // 2)
    detour.truncate(n // 2 + 1)  # an old leader's suffix replaced by the same entries
    _record_all(detour, log[n // 2 :], n // 2 + 1, lambda i: i)
    half = DedupTable(**limits)
    _record_all(half, log[: n // 2], 1, lambda i: i)
    via = DedupTable.from_state(decode_snapshot(encode_snapshot(snapshot_of(half, 1))).table, **limits)
    _record_all(via, log[n // 2 :], n // 2 + 1, lambda i: i)
    blobs = {encode_snapshot(snapshot_of(t, 1)) for t in (straight, detour, via)}
    assert len(blobs) == 1
    snap = decode_snapshot(blobs.pop())
    assert snap.index == n and snap.term == 1 and snap.configuration == b""
    assert snap.table.same_as(straight.committed_state())


def test_frozen_view_stays_exact_while_the_table_moves() -> None:
    t = DedupTable()
    t.record(1, np.array([7, 7], np.uint64), np.array([0, 1], np.uint64), commit_index=1)
    view = t.committed_view()
    t.record(2, np.array([7], np.uint64), np.array([2], np.uint64), commit_index=2)
    while not view.step(1):
        pass
    restored = DedupTable.from_state(view.result())
    verdict, offsets = restored.classify(np.array([7, 7], np.uint64), np.array([1, 2], np.uint64))
    assert verdict.tolist() == [Verdict.DUPLICATE, Verdict.ACCEPT] and offsets[0] == 64 + 1


def _sample() -> bytes:
    t = DedupTable()
    t.record(1, np.array([5, 9, 5], np.uint64), np.array([0, 4, 1], np.uint64), commit_index=1)
    return encode_snapshot(snapshot_of(t, 2))


def test_header_layout() -> None:
    data = _sample()
    assert data[:4] == b"SNAP"
    magic, version, flags, index, term = struct.unpack_from("<IHHQQ", data)
    assert (version, flags, index, term) == (2, 0, 1, 2)
    p, s, e, k = struct.unpack_from("<IIII", data, 40)
    assert (p, s, e, k) == (2, 2, 3, 0)
    end = SNAPSHOT_HEADER_BYTES + 26 * p + 17 * s + e + k
    (g,) = struct.unpack_from("<I", data, end)
    assert g == 4 and data[end + 4 : end + 8] == b"\0\0\0\0"  # an empty groups section: count 0
    assert len(data) == end + 4 + g + 4


def _as_version_1(data: bytes) -> bytes:
    """A version-2 record rewritten as version 1 wrote it: no groups section, version 1."""
    p, s, e, k = struct.unpack_from("<IIII", data, 40)
    end = SNAPSHOT_HEADER_BYTES + 26 * p + 17 * s + e + k
    b = bytearray(data[:end] + b"\0\0\0\0")
    b[4:6] = struct.pack("<H", 1)
    return _recrc(b)


def _with_groups() -> tuple[DedupTable, GroupTable]:
    t = DedupTable()
    t.record(1, np.array([5], np.uint64), np.array([0], np.uint64), commit_index=1)
    t.record(2, np.zeros(0, np.uint64), np.zeros(0, np.uint64), commit_index=2)
    g = GroupTable()
    g.apply(1, GroupCommit("orders", 640, 1_700_000_000_000, b"meta"))
    g.apply(2, GroupCommit("billing-é", 64, 1_700_000_000_001))
    t.committed(2)
    return t, g


def test_groups_round_trip_and_version_1_reads_as_no_groups() -> None:
    t, g = _with_groups()
    data = encode_snapshot(snapshot_of(t, 3, g))
    snap = decode_snapshot(data)
    assert snap.groups == g and snap.groups.get("orders").metadata == b"meta"
    assert encode_snapshot(snapshot_of(t, 3, snap.groups)) == data  # deterministic
    old = decode_snapshot(_as_version_1(encode_snapshot(snapshot_of(t, 3))))
    assert old.groups is None and old.table.same_as(snap.table)


def test_groups_at_another_index_are_refused_and_a_bad_section_is_named() -> None:
    t, g = _with_groups()
    g.advance(3)
    with pytest.raises(ValueError, match="groups are at index 3"):
        encode_snapshot(snapshot_of(t, 3, g))
    t, g = _with_groups()
    b = bytearray(encode_snapshot(snapshot_of(t, 3, g)))
    at = b.index(b"billing")
    b[at - 1] = 0  # the first name's length byte: 0 is outside 1..GROUP_NAME_BYTES_MAX
    with pytest.raises(SnapshotFormatError, match="groups section: .*group name length"):
        decode_snapshot(_recrc(b))


def _recrc(b: bytearray) -> bytes:
    b[-4:] = struct.pack("<I", zlib.crc32(b[:-4]))
    return bytes(b)


def test_unknown_version_is_refused_by_number() -> None:
    b = bytearray(_sample())
    b[4:6] = struct.pack("<H", 7)
    with pytest.raises(SnapshotFormatError, match="version 7 is not supported"):
        decode_snapshot(_recrc(b))


@pytest.mark.parametrize("at", [8, SNAPSHOT_HEADER_BYTES, SNAPSHOT_HEADER_BYTES + 20, -5])
def test_damage_fails_the_checksum(at: int) -> None:
    b = bytearray(_sample())
    b[at] ^= 0x01
    with pytest.raises(SnapshotFormatError, match="checksum mismatch"):
        decode_snapshot(bytes(b))


def test_truncated_bad_magic_and_structure_are_refused() -> None:
    data = _sample()
    with pytest.raises(SnapshotFormatError, match="header says"):
        decode_snapshot(data[:-1])
    with pytest.raises(SnapshotFormatError, match="magic"):
        decode_snapshot(b"XXXX" + data[4:])
    b = bytearray(data)
    b[SNAPSHOT_HEADER_BYTES : SNAPSHOT_HEADER_BYTES + 16] = struct.pack("<QQ", 9, 5)  # ids out of order
    with pytest.raises(SnapshotFormatError, match="strictly increasing"):
        decode_snapshot(_recrc(b))
