"""The snapshot record: what a node needs to continue from log index C without the entries up to C.

A snapshot holds the last included index C (always <= the commit index: a committed prefix never changes),
its term, the dedup table exactly as it stands after applying entries 1..C (node/dedup.py `TableState`), the
dedup limits in force, and the cluster configuration at C (empty until membership changes land). It is
persisted in the log's RocksDB (storage/rocks.py `save_snapshot`), and InstallSnapshot will send the same
bytes to a follower that needs entries the leader has deleted, so the layout is fixed here, byte by byte
(docs/DESIGN.md "Snapshots"). Pure code: bytes in, bytes out; no pickle, no I/O.

Encoding is deterministic: producers sorted by id, spans oldest first, fixed little-endian widths, so two
nodes holding the same log encode the same bytes at the same index (a test builds tables by different
paths and compares the bytes).

Layout (little-endian; P producers, S spans, E events, K configuration bytes)::

    offset  size  field
         0     4  magic 0x50414E53 (b"SNAP")
         4     2  version (1)
         6     2  flags (0; nonzero is refused)
         8     8  index C (u64)
        16     8  term of entry C (u64)
        24     8  horizon_entries (u64)
        32     4  producers_max (u32)
        36     4  spans_max (u32)
        40     4  P (u32)
        44     4  S (u32)
        48     4  E (u32)
        52     4  K (u32)
        56   8*P  producer ids (u64, strictly increasing)
            8*P  high-water sequence (i64)
            8*P  log index of the producer's newest event (i64)
            8*S  first sequence of each span (i64)
            8*S  log index of each span (i64)
            2*P  spans per producer (u16, 1..spans_max)
              S  events per span (u8, 1..64)
              E  position of each event in its batch (u8, 0..63): offset = span index * 64 + position
              K  configuration (opaque; empty until membership changes land)
              4  G: the groups section's length (u32; version 2 only)
              G  consumer groups' committed positions (node/groups.py `GroupTable.encode`; version 2 only)
             4  CRC32 of every byte before it

Version 2 adds the groups section; version 1 records (written before consumer groups) are still read, as a
snapshot with no groups. Every other field is unchanged.

A record that is not exactly this raises `SnapshotFormatError` naming what is wrong; an unknown version is
refused by number before anything else is read.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.node.dedup import DedupTable, TableState
from shmraft.node.groups import GroupTable

SNAPSHOT_MAGIC: Final = 0x50414E53  # b"SNAP" read as a little-endian u32
SNAPSHOT_VERSION: Final = 2  # version 2 adds the groups section
SNAPSHOT_VERSIONS_READ: Final = (1, 2)  # version 1: no groups
SNAPSHOT_HEADER_BYTES: Final = 56

_HEAD: Final = struct.Struct("<IHHQQQIIIIII")
_CRC: Final = struct.Struct("<I")
_GROUPS_LEN: Final = struct.Struct("<I")
_I64: Final = np.dtype("<i8")
_U64: Final = np.dtype("<u8")
_U16: Final = np.dtype("<u2")
_U8: Final = np.dtype("u1")
assert _HEAD.size == SNAPSHOT_HEADER_BYTES


class SnapshotFormatError(ValueError):
    """Bytes that are not a snapshot record this version can read (damage, or a newer format)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot record (see the module docstring)."""

    index: int  # C: the last entry the state includes
    term: int  # the term of entry C
    table: TableState  # the dedup table after entry C; table.index == index
    producers_max: int
    horizon_entries: int
    spans_max: int
    configuration: bytes = b""  # the cluster configuration at C; empty until membership changes land
    groups: GroupTable | None = None  # consumer groups' positions at C (None: none; a version-1 record)


def snapshot_of(table: DedupTable, term: int, groups: GroupTable | None = None) -> Snapshot:
    """The snapshot of a table at its commit index (built in one go; the raft worker builds it in steps)."""
    state = table.committed_state()
    return Snapshot(state.index, term, state, table.producers_max, table.horizon_entries, table.spans_max, b"", groups)


def encode_snapshot(snap: Snapshot) -> bytes:
    """The record's bytes (deterministic: the same snapshot always gives the same bytes)."""
    t = snap.table
    if t.index != snap.index:
        raise ValueError(f"the table is at index {t.index}, the snapshot at {snap.index}")
    if snap.groups is not None and snap.groups.index != snap.index:
        raise ValueError(f"the groups are at index {snap.groups.index}, the snapshot at {snap.index}")
    if not 1 <= snap.spans_max <= np.iinfo(np.uint16).max:
        raise ValueError(f"spans_max {snap.spans_max} does not fit the format's u16 span counts")
    p, s, e = t.producer_ids.size, t.span_index.size, t.positions.size
    head = _HEAD.pack(
        SNAPSHOT_MAGIC,
        SNAPSHOT_VERSION,
        0,
        snap.index,
        snap.term,
        snap.horizon_entries,
        snap.producers_max,
        snap.spans_max,
        p,
        s,
        e,
        len(snap.configuration),
    )
    parts = [
        head,
        t.producer_ids.astype(_U64).tobytes(),
        t.high_water.astype(_I64).tobytes(),
        t.last_index.astype(_I64).tobytes(),
        t.span_first_seq.astype(_I64).tobytes(),
        t.span_index.astype(_I64).tobytes(),
        t.span_counts.astype(_U16).tobytes(),
        t.span_lengths.astype(_U8).tobytes(),
        t.positions.astype(_U8).tobytes(),
        bytes(snap.configuration),
    ]
    groups = snap.groups.encode() if snap.groups is not None else GroupTable().encode()
    parts += [_GROUPS_LEN.pack(len(groups)), groups]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts.append(_CRC.pack(crc))
    return b"".join(parts)


def snapshot_version(data: bytes | memoryview) -> int:
    """The version field of a record (after checking the magic), without decoding the rest."""
    if len(data) < 8:
        raise SnapshotFormatError(f"snapshot record of {len(data)} bytes is shorter than its magic and version")
    magic, version = struct.unpack_from("<IH", data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotFormatError(f"bad snapshot magic {magic:#010x} (expected {SNAPSHOT_MAGIC:#010x})")
    return version


def decode_snapshot(data: bytes | memoryview) -> Snapshot:
    """Check and decode a record: magic, version, size, CRC32, then the columns' structure."""
    version = snapshot_version(data)
    if version not in SNAPSHOT_VERSIONS_READ:
        raise SnapshotFormatError(
            f"snapshot format version {version} is not supported (this node reads versions {SNAPSHOT_VERSIONS_READ})"
        )
    if len(data) < SNAPSHOT_HEADER_BYTES + _CRC.size:
        raise SnapshotFormatError(f"snapshot record of {len(data)} bytes is shorter than its header")
    _, _, flags, index, term, horizon, producers_max, spans_max, p, s, e, k = _HEAD.unpack_from(data)
    expected = SNAPSHOT_HEADER_BYTES + 26 * p + 16 * s + s + e + k + _CRC.size
    mv = memoryview(data)
    g = 0
    if version >= 2:  # the groups section's length follows the configuration
        if len(data) < expected + _GROUPS_LEN.size:
            raise SnapshotFormatError(f"snapshot record has {len(data)} bytes; its header says at least {expected + 4}")
        (g,) = _GROUPS_LEN.unpack_from(mv, expected - _CRC.size)
        expected += _GROUPS_LEN.size + g
    if len(data) != expected:
        raise SnapshotFormatError(f"snapshot record has {len(data)} bytes; its header says {expected}")
    (stored,) = _CRC.unpack_from(mv, len(mv) - _CRC.size)
    actual = zlib.crc32(mv[: len(mv) - _CRC.size])
    if stored != actual:
        raise SnapshotFormatError(f"snapshot checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")
    if flags:
        raise SnapshotFormatError(f"unknown snapshot flags {flags:#06x}")
    pos = SNAPSHOT_HEADER_BYTES

    def take(dtype: np.dtype, count: int) -> np.ndarray:
        nonlocal pos
        arr = np.frombuffer(mv, dtype=dtype, count=count, offset=pos)
        pos += arr.nbytes
        return arr.astype(dtype.newbyteorder("="), copy=True)  # native, writable, independent of `data`

    pids, high_water, last_index = take(_U64, p), take(_I64, p), take(_I64, p)
    first_seq, span_index = take(_I64, s), take(_I64, s)
    span_counts, span_lengths, positions = take(_U16, p), take(_U8, s), take(_U8, e)
    configuration = bytes(mv[pos : pos + k])
    groups = None
    if version >= 2:
        start = pos + k + _GROUPS_LEN.size
        try:
            groups = GroupTable.decode(mv[start : start + g], index)
        except ValueError as exc:
            raise SnapshotFormatError(f"snapshot groups section: {exc}") from None
    table = TableState(
        index=index,
        producer_ids=pids,
        high_water=high_water,
        last_index=last_index,
        span_counts=span_counts,
        span_first_seq=first_seq,
        span_index=span_index,
        span_lengths=span_lengths,
        positions=positions,
    )
    _check_table(table, spans_max)
    return Snapshot(index, term, table, producers_max, horizon, spans_max, configuration, groups)


def _check_table(t: TableState, spans_max: int) -> None:
    """Structural checks a CRC cannot make (a record encoded from a broken table, or by a buggy peer)."""

    def fail(what: str) -> None:
        raise SnapshotFormatError(f"snapshot table at index {t.index}: {what}")

    if not (t.producer_ids[1:] > t.producer_ids[:-1]).all():  # not np.diff: uint64 wraps
        fail("producer ids are not strictly increasing")
    if ((t.span_counts < 1) | (t.span_counts > spans_max)).any():
        fail(f"a producer has no spans or more than spans_max={spans_max}")
    if int(t.span_counts.sum(dtype=np.int64)) != t.span_index.size:
        fail("span counts do not add up to the spans")
    if ((t.span_lengths < 1) | (t.span_lengths > BATCH_EVENTS_MAX)).any():
        fail(f"a span is empty or longer than {BATCH_EVENTS_MAX} events")
    if int(t.span_lengths.sum(dtype=np.int64)) != t.positions.size:
        fail("span lengths do not add up to the events")
    if (t.positions >= BATCH_EVENTS_MAX).any():
        fail(f"an event position is >= {BATCH_EVENTS_MAX}")
    if t.span_index.size and ((t.span_index < 1) | (t.span_index > t.index)).any():
        fail("a span's log index is outside [1, index]")
    if t.producer_ids.size:
        newest = np.cumsum(t.span_counts, dtype=np.int64) - 1  # each producer's newest span
        if not np.array_equal(t.span_index[newest], t.last_index):
            fail("a producer's last index is not its newest span's")
