"""The raft worker's start reads the entries after the snapshot once (workers/replay.py `replay_log`) for the
core's configurations (raft/core.py `StartConfigs`), the dedup table (workers/raft.py `DedupRebuild`) and the
consumer groups (workers/raft_groups.py `GroupRebuild`); the results are those of each reading the log on its
own (`RaftCore`'s own scan, `rebuild_dedup`, `rebuild_groups`), on a real log."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from shmraft.node import groups as gr
from shmraft.node.dedup import DedupTable
from shmraft.node.snapshot import encode_snapshot, snapshot_of
from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore, StartConfigs
from shmraft.raft.membership import ClusterConfig, encode_membership, membership_entry
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.types import Entry, HardState
from shmraft.storage.nodelog import open_node_log
from shmraft.storage.rocks import SavedSnapshot
from shmraft.wire.control import ControlKind, decode_control, encode_control
from shmraft.wire.frame import decode_batch, encode_batch
from shmraft.workers.raft import DedupRebuild, _decode_saved_snapshot, rebuild_dedup
from shmraft.workers.raft_groups import GroupRebuild, rebuild_groups
from shmraft.workers.replay import replay_log

TERM = 1
SNAP_AT = 15
LAST = 40
COMMIT = 36  # groups apply committed entries only; dedup and configurations take the whole log
BOOTSTRAP = ClusterConfig.voters_of((1, 2, 3))
FOUR = ClusterConfig.voters_of((1, 2, 3, 4))
EMPTY = np.zeros(0, np.uint64)


def _entry(i: int) -> Entry:
    """Frames of producers 1..3, group commits every 5th entry, configurations at 22 (four voters) and 31 (three)."""
    if i == 22:
        return Entry(i, TERM, membership_entry(FOUR))
    if i == 31:
        return Entry(i, TERM, membership_entry(BOOTSTRAP))
    if i % 5 == 0:
        body = gr.encode_commit(gr.GroupCommit(f"g{i % 3}", i * 64, 1000 + i))
        return Entry(i, TERM, encode_control(ControlKind.GROUP_OFFSETS, body))
    return Entry(
        i, TERM, encode_batch([b"e", b"f"], batch_id=i, producer_ids=[1 + i % 3] * 2, sequences=[2 * i, 2 * i + 1])
    )


def _snapshot_data(entries: list[Entry]) -> bytes:
    """The snapshot the worker would save at SNAP_AT: dedup table, groups and the configuration there."""
    table, groups = DedupTable(), gr.GroupTable()
    for e in entries[:SNAP_AT]:
        b = decode_batch(e.data) if e.index % 5 else None
        table.record(e.index, b.producer_ids if b else EMPTY, b.sequences if b else EMPTY, SNAP_AT)
        if b is None:
            groups.apply(e.index, gr.decode_commit(decode_control(e.data).body))
    table.committed(SNAP_AT)
    groups.advance(SNAP_AT)
    snap = snapshot_of(table, TERM, groups)
    return encode_snapshot(dataclasses.replace(snap, configuration=encode_membership(BOOTSTRAP)))


class CountingLog:
    """The node's log, counting the entries each read returns (per index)."""

    def __init__(self, nl) -> None:
        self.nl = nl
        self.reads: dict[int, int] = {}

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        out = self.nl.entries(lo, hi, max_bytes)
        for e in out:
            self.reads[e.index] = self.reads.get(e.index, 0) + 1
        return out


@pytest.fixture
def node_log(tmp_path: Path):
    entries = [_entry(i) for i in range(1, LAST + 1)]
    nl = open_node_log(tmp_path, fsync="never")
    try:
        nl.append(entries, HardState(TERM, 1, COMMIT))
        nl.save_snapshot(SavedSnapshot(SNAP_AT, TERM, _snapshot_data(entries)))
    finally:
        nl.close()
    nl = open_node_log(tmp_path, fsync="never", decode_snapshot=_decode_saved_snapshot)
    assert nl.snapshot_record is not None and nl.snapshot_record.index == SNAP_AT
    yield nl
    nl.close()


def test_one_read_gives_what_three_reads_gave(node_log) -> None:
    nl = node_log
    alone_dedup = rebuild_dedup(nl, DedupTable().producers_max)
    alone_groups = rebuild_groups(nl)
    alone_core = RaftCore(1, BOOTSTRAP, nl, RaftConfig(), random.Random(1))

    log = CountingLog(nl)
    configs = StartConfigs(nl, BOOTSTRAP)
    dedup = DedupRebuild(nl, DedupTable().producers_max)
    groups = GroupRebuild(nl)
    assert (configs.lo, dedup.lo, groups.lo) == (SNAP_AT + 1,) * 3 and (configs.hi, dedup.hi, groups.hi) == (
        LAST,
        LAST,
        COMMIT,
    )
    assert replay_log(log, (configs, dedup, groups)) == LAST - SNAP_AT
    assert log.reads == {i: 1 for i in range(SNAP_AT + 1, LAST + 1)}  # every entry after the snapshot, once
    shared_core = RaftCore(1, BOOTSTRAP, nl, RaftConfig(), random.Random(1), start_configs=configs)
    table, end = groups.result()

    assert shared_core.membership == alone_core.membership == BOOTSTRAP
    for i in range(SNAP_AT, LAST + 1):
        assert shared_core.membership_at_or_below(i) == alone_core.membership_at_or_below(i)
    assert shared_core.membership_at_or_below(30) == FOUR  # the entries after the snapshot were seen
    assert (
        (table, end) == alone_groups and table.index == COMMIT and end == 36 * 64 + 2
    )  # entry 36, a frame of two events
    shared = encode_snapshot(snapshot_of(dedup.table(), TERM))
    assert shared == encode_snapshot(snapshot_of(alone_dedup, TERM)) == encode_snapshot(snapshot_of(_reference(), TERM))
    expect = gr.GroupTable()
    for e in map(_entry, range(1, COMMIT + 1)):
        if e.index % 5 == 0 and e.index not in (22, 31):
            expect.apply(e.index, gr.decode_commit(decode_control(e.data).body))
    expect.advance(COMMIT)
    assert table == expect


def _reference() -> DedupTable:
    """The table of the whole log recorded entry by entry, no snapshot, no replay."""
    t = DedupTable()
    for e in map(_entry, range(1, LAST + 1)):
        b = decode_batch(e.data) if e.index % 5 and e.index not in (22, 31) else None
        t.record(e.index, b.producer_ids if b else EMPTY, b.sequences if b else EMPTY, COMMIT)
    t.committed(COMMIT)
    return t


def test_replay_feeds_every_user_exactly_its_range_once() -> None:
    class FakeLog:
        def __init__(self) -> None:
            self.reads: list[tuple[int, int]] = []

        def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
            hi = min(hi, lo + 4)  # chunks of four, so the ranges straddle chunk edges
            self.reads.append((lo, hi))
            return [Entry(i, TERM, b"") for i in range(lo, hi)]

    class User:
        def __init__(self, lo: int, hi: int) -> None:
            self.lo, self.hi, self.got = lo, hi, []

        def feed(self, entries: list[Entry]) -> None:
            assert entries, "fed an empty slice"
            self.got += [e.index for e in entries]

    users = [User(3, 10), User(5, 20), User(7, 6), User(18, 18)]
    log = FakeLog()
    assert replay_log(log, users) == 18
    assert [u.got for u in users] == [list(range(3, 11)), list(range(5, 21)), [], [18]]
    assert log.reads[0][0] == 3 and all(a[1] == b[0] for a, b in zip(log.reads, log.reads[1:], strict=False))
    assert log.reads[-1][1] == 21
    assert replay_log(log, [User(5, 4)]) == 0


def test_start_configs_are_refused_unless_scanned_whole_for_this_log() -> None:
    storage = MemStorage()
    storage.append([Entry(i, TERM, b"") for i in range(1, 6)], HardState(TERM, 0, 5))
    scan = StartConfigs(storage, BOOTSTRAP)
    assert (scan.lo, scan.hi) == (1, 5)
    with pytest.raises(ValueError, match="expected entry 1"):
        scan.feed([Entry(2, TERM, b"")])
    scan.feed([Entry(i, TERM, b"") for i in range(1, 4)])
    with pytest.raises(ValueError, match="entries 4..5 were not fed"):
        RaftCore(1, BOOTSTRAP, storage, RaftConfig(), random.Random(1), start_configs=scan)
    scan.feed([Entry(i, TERM, b"") for i in range(4, 6)])
    with pytest.raises(ValueError, match="bootstrap"):
        RaftCore(1, FOUR, storage, RaftConfig(), random.Random(1), start_configs=scan)
    storage.append([Entry(6, TERM, membership_entry(FOUR))])  # the log moved on after the scan
    with pytest.raises(ValueError, match="scanned for log"):
        RaftCore(1, BOOTSTRAP, storage, RaftConfig(), random.Random(1), start_configs=scan)
