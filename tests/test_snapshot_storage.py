"""Snapshots on real RocksDB (storage/rocks.py, storage/nodelog.py, workers/raft.py `rebuild_dedup`):
retention never deletes past the saved snapshot, a SIGKILL between snapshot and compaction leaves a
consistent pair, a damaged snapshot is quarantined, and the table rebuilt at start equals the table of a node
that never restarted, also once retention deleted entries inside the dedup horizon."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shmraft.node.dedup import DedupTable
from shmraft.node.snapshot import encode_snapshot, snapshot_of
from shmraft.raft.types import Entry, HardState
from shmraft.storage.nodelog import node_log_dir, open_node_log
from shmraft.storage.rocks import LogOrderError, RocksLogStorage, SavedSnapshot
from shmraft.wire.frame import decode_batch, encode_batch
from shmraft.workers.raft import _decode_saved_snapshot, rebuild_dedup

REPO_ROOT = Path(__file__).resolve().parent.parent
TERM = 1
RETAIN = 200  # far below the dedup horizon (100,000 entries): compaction deletes entries inside it
SNAPSHOT_EVERY = 64
PRODUCERS_MAX = 100_000


def workload(n: int) -> list[bytes]:
    """Frames of entries 1..n: a few busy producers, and producers that write once and never again (the
    ones a replay from the log start forgets once their entries are deleted)."""
    next_seq: dict[int, int] = {}
    frames = []
    for i in range(1, n + 1):
        pids = [1 + (i * 7 + k) % 5 for k in range(6)] + ([1000 + i] if i % 10 == 0 else [])
        pids.sort()
        seqs = []
        for p in pids:
            seqs.append(next_seq.get(p, 0))
            next_seq[p] = seqs[-1] + 1
        frames.append(
            encode_batch(
                [i.to_bytes(8, "big")] * len(pids),
                batch_id=i,
                term=TERM,
                producer_ids=np.array(pids, np.uint64),
                sequences=np.array(seqs, np.uint64),
            )
        )
    return frames


def reference(frames: list[bytes], upto: int) -> DedupTable:
    """The table of a node that never restarted."""
    t = DedupTable(producers_max=PRODUCERS_MAX)
    for i in range(1, upto + 1):
        b = decode_batch(frames[i - 1])
        t.record(i, b.producer_ids, b.sequences, commit_index=i)
    return t


def state(t: DedupTable) -> list:
    return [(pid, p.high_water, p.last_index, [(f, o.tolist()) for f, o in p.spans]) for pid, p in t._producers.items()]


def open_log(node_dir: Path):
    return open_node_log(
        node_dir, retain_entries_max=RETAIN, retain_bytes_max=None, decode_snapshot=_decode_saved_snapshot
    )


def write(nl, frames: list[bytes], lo: int, hi: int, table: DedupTable, chunk: int = 16) -> None:
    """Append entries lo..hi committed, recording them and saving a snapshot every SNAPSHOT_EVERY, as the
    raft worker does."""
    i = lo
    while i <= hi:
        j = min(hi, i + chunk - 1)
        nl.append([Entry(k, TERM, frames[k - 1]) for k in range(i, j + 1)], HardState(TERM, 1, j))
        for k in range(i, j + 1):
            b = decode_batch(frames[k - 1])
            table.record(k, b.producer_ids, b.sequences, commit_index=j)
        if j // SNAPSHOT_EVERY != (i - 1) // SNAPSHOT_EVERY:
            nl.save_snapshot(SavedSnapshot(j, TERM, encode_snapshot(snapshot_of(table, TERM))))
        i = j + 1


def test_retention_never_deletes_past_the_saved_snapshot(tmp_path: Path) -> None:
    frames = workload(600)
    with RocksLogStorage(
        tmp_path / "log", retain_entries_max=RETAIN, retain_bytes_max=None, retain_below_snapshot=True
    ) as s:
        s.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 501)], HardState(TERM, 1, 500))
        assert s.first_index() == 1 and s.compaction_wanted()  # no snapshot: nothing is deleted
        with pytest.raises(LogOrderError, match="beyond the saved snapshot"):
            s.compact(10)
        s.save_snapshot(SavedSnapshot(120, TERM, b"state at 120"))
        assert s.first_index() == 121 and s.compaction_wanted()  # compacted with it, up to it and no further
        s.append([Entry(i, TERM, frames[i - 1]) for i in range(501, 601)], HardState(TERM, 1, 600))
        assert s.first_index() == 121
        with pytest.raises(LogOrderError, match="older than the saved"):
            s.save_snapshot(SavedSnapshot(100, TERM, b"older"))
        with pytest.raises(LogOrderError, match="beyond the commit"):
            s.save_snapshot(SavedSnapshot(601, TERM, b"uncommitted"))
        s.save_snapshot(SavedSnapshot(590, TERM, b"state at 590"))
        keep = RETAIN - RETAIN // 16
        assert s.first_index() == 600 - keep + 1 and not s.compaction_wanted()  # the bounds ask less than C
    with RocksLogStorage(tmp_path / "log", retain_entries_max=RETAIN, retain_bytes_max=None) as s:
        assert s.saved_snapshot_index() == 590 and s.load_snapshot().data == b"state at 590"


def test_table_rebuilt_at_start_equals_the_never_restarted_one_past_retention(tmp_path: Path) -> None:
    frames = workload(900)
    live = DedupTable(producers_max=PRODUCERS_MAX)
    nl = open_log(tmp_path)
    try:
        write(nl, frames, 1, 900, live)
        assert nl.first_index() > 500  # retention deleted entries well inside the dedup horizon
    finally:
        nl.close()
    nl = open_log(tmp_path)
    try:
        assert nl.quarantined is None and nl.snapshot is not None and nl.snapshot.index >= 900 - SNAPSHOT_EVERY
        rebuilt = rebuild_dedup(nl, PRODUCERS_MAX)
    finally:
        nl.close()
    assert state(rebuilt) == state(live) == state(reference(frames, 900))
    assert len(rebuilt) == 5 + 90  # every producer that ever wrote, within the horizon


def test_without_snapshots_the_rebuilt_table_forgets_producers_of_deleted_entries(tmp_path: Path) -> None:
    """The bug snapshots fix: retention as it was (no snapshot gate) then the replay from the log start."""
    frames = workload(900)
    with RocksLogStorage(node_log_dir(tmp_path), retain_entries_max=RETAIN, retain_bytes_max=None) as s:
        for lo in range(1, 901, 100):
            s.append([Entry(i, TERM, frames[i - 1]) for i in range(lo, lo + 100)], HardState(TERM, 1, lo + 99))
        assert s.first_index() > 500 and s.saved_snapshot_index() is None
    nl = open_log(tmp_path)
    try:
        rebuilt = rebuild_dedup(nl, PRODUCERS_MAX)
    finally:
        nl.close()
    assert state(rebuilt) != state(reference(frames, 900))
    assert len(rebuilt) < len(reference(frames, 900))


def test_a_damaged_or_undecodable_snapshot_is_quarantined(tmp_path: Path) -> None:
    frames = workload(200)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 201)], HardState(TERM, 1, 200))
        nl.save_snapshot(SavedSnapshot(150, TERM, b"not a snapshot record"))
    finally:
        nl.close()
    nl = open_log(tmp_path)
    try:
        assert nl.quarantined is not None and "saved snapshot" in nl.corruption and "magic" in nl.corruption
        assert nl.last_index() == 0 and nl.recovery_term > 0
    finally:
        nl.close()


def test_a_snapshot_whose_bytes_were_damaged_on_disk_is_quarantined(tmp_path: Path) -> None:
    frames = workload(200)
    live = DedupTable(producers_max=PRODUCERS_MAX)
    nl = open_log(tmp_path)
    try:
        write(nl, frames, 1, 200, live)
        saved = nl.rocks.load_snapshot()
        damaged = bytearray(saved.data)
        damaged[len(damaged) // 2] ^= 0x10
        nl.rocks._meta.put(b"snapdata", bytes(damaged))  # what a bad sector would do
    finally:
        nl.close()
    nl = open_log(tmp_path)
    try:
        assert nl.quarantined is not None and "checksum" in nl.corruption
    finally:
        nl.close()


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_snapshot_storage import DedupTable, PRODUCERS_MAX, open_log, workload, write
from pathlib import Path
node_dir, n = Path(sys.argv[1]), int(sys.argv[3])
frames = workload(n)
nl = open_log(node_dir)
from shmraft.workers.raft import rebuild_dedup
table = rebuild_dedup(nl, PRODUCERS_MAX)
lo = nl.last_index() + 1
print("R", lo, flush=True)
write(nl, frames, lo, n, table, chunk=4)
print("D", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("round_kill_after_s", [[0.3, 0.6, 0.9, 1.2, 0.45]])
def test_a_kill_at_any_point_leaves_snapshot_and_log_consistent(tmp_path: Path, round_kill_after_s) -> None:
    """Children write entries, snapshots and the compactions they allow, and are SIGKILLed mid-flight;
    after every kill the log opens clean, holds every entry after its snapshot, and the table rebuilt from
    both equals the never-restarted one."""
    total = 3000
    frames = workload(total)
    for delay in round_kill_after_s:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(Path(__file__).parent), str(total)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        try:
            assert child.stdout.readline().startswith("R")
            try:
                child.wait(delay)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()
        nl = open_log(tmp_path)
        try:
            assert nl.quarantined is None, nl.corruption
            c = nl.saved_snapshot_index()
            assert c is None or nl.first_index() - 1 <= c <= nl.hard_state().commit
            last = nl.last_index()
            rebuilt = rebuild_dedup(nl, PRODUCERS_MAX)
        finally:
            nl.close()
        assert state(rebuilt) == state(reference(frames, last))
    assert c is not None and nl.first_index() > 1 and last > RETAIN
