"""Snapshots on real RocksDB (storage/rocks.py, storage/nodelog.py, workers/raft.py `rebuild_dedup`):
retention never deletes past the saved snapshot, a SIGKILL between snapshot and compaction leaves a
consistent pair, a damaged snapshot is quarantined, and the table rebuilt at start equals the table of a node
that never restarted, also once retention deleted entries inside the dedup horizon."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from shmraft.config import local_cluster, with_overrides
from shmraft.constants import SNAPSHOT_CHUNK_BYTES_MAX
from shmraft.ipc.ring import record_max_for
from shmraft.node.dedup import DedupTable
from shmraft.node.records import PEER_RECORD_HEADER_BYTES
from shmraft.node.snapshot import encode_snapshot, snapshot_of
from shmraft.raft.config import RaftConfig
from shmraft.raft.messages import InstallSnapshot
from shmraft.raft.types import Entry, HardState, Role, Snapshot
from shmraft.storage.nodelog import node_log_dir, open_node_log
from shmraft.storage.rocks import (
    HardStateError,
    LogCompactedError,
    LogOrderError,
    RocksLogReader,
    RocksLogStorage,
    SavedSnapshot,
)
from shmraft.wire.frame import decode_batch, encode_batch
from shmraft.wire.raft_codec import SNAPSHOT_CONFIG_BYTES_MAX, encode_raft
from shmraft.workers.looptime import LoopTimer
from shmraft.workers.raft import (
    RaftWorker,
    SnapshotRefused,
    _decode_saved_snapshot,
    rebuild_dedup,
    snapshot_chunk_bytes_for,
)
from shmraft.workers.raft_groups import GroupService

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
        assert (
            nl.quarantined is None
            and nl.snapshot_record is not None
            and nl.snapshot_record.index >= 900 - SNAPSHOT_EVERY
        )
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


# --- installing a leader's snapshot (a follower behind the leader's log start) -------------------------------


def leader_snapshot(frames: list[bytes], index: int) -> Snapshot:
    """The snapshot a leader that holds `frames` would send at `index` (its table's record)."""
    return Snapshot(index, TERM, encode_snapshot(snapshot_of(reference(frames, index), TERM)))


@pytest.mark.parametrize("at", ["inside the follower's uncommitted suffix", "past the follower's log end"])
def test_install_replaces_the_log_and_the_node_restarts_from_it(tmp_path: Path, at: str) -> None:
    frames = workload(400)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 101)], HardState(TERM, 1, 90))
        c = 95 if at.startswith("inside") else 300
        snap = leader_snapshot(frames, c)
        nl.install_snapshot(snap, HardState(TERM + 1, 2, c))
        assert (nl.first_index(), nl.last_index(), nl.snapshot_index(), nl.snapshot_term()) == (c + 1, c, c, TERM)
        assert nl.hard_state() == HardState(TERM + 1, 2, c) and nl.snapshot() == snap
        assert nl.saved_snapshot_index() == c and nl.term_at(c) == TERM and nl.term_at(c - 1) is None
        with pytest.raises(LogCompactedError):
            nl.entries(c - 5, c + 1, 1 << 20)
        assert nl.rocks.stats().snapshots_installed == 1
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(c + 1, c + 51)], HardState(TERM + 1, 2, c + 50))
    finally:
        nl.close()
    nl = open_log(tmp_path)  # the last-index hint was lowered with the log: no false "lost entries"
    try:
        assert nl.quarantined is None, nl.corruption
        assert nl.open_check.full_scan and nl.open_check.entries_verified == 50  # the new log, whole
        assert (nl.first_index(), nl.last_index(), nl.snapshot_record.index) == (c + 1, c + 50, c)
        assert nl.saved.term == TERM + 1 and nl.saved.vote == 2  # the term/vote copy moved with it
        rebuilt = rebuild_dedup(nl, PRODUCERS_MAX)
    finally:
        nl.close()
    assert state(rebuilt) == state(reference(frames, c + 50))


def test_install_at_or_below_the_commit_index_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    frames = workload(200)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 101)], HardState(TERM, 1, 90))
        before = (nl.first_index(), nl.last_index(), nl.hard_state(), nl.saved.term, nl.saved.vote)
        for c in (90, 40):
            with pytest.raises(LogOrderError, match="not above the commit index 90"):
                nl.install_snapshot(leader_snapshot(frames, c), HardState(TERM + 1, 2, c))
        with pytest.raises(HardStateError, match="commit 120 is not the snapshot's index 150"):
            nl.install_snapshot(leader_snapshot(frames, 150), HardState(TERM + 1, 2, 120))
        with pytest.raises(HardStateError, match="term goes backwards"):
            nl.install_snapshot(leader_snapshot(frames, 150), HardState(TERM - 1, 2, 150))
        with pytest.raises(LogOrderError, match="snapshot term 5 outside"):
            nl.install_snapshot(Snapshot(150, 5, b"x"), HardState(TERM, 1, 150))
        assert (nl.first_index(), nl.last_index(), nl.hard_state(), nl.saved.term, nl.saved.vote) == before
        assert nl.snapshot() is None
    finally:
        nl.close()


def test_a_reader_process_sees_the_installed_log(tmp_path: Path) -> None:
    frames = workload(300)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 51)], HardState(TERM, 1, 50))
        with RocksLogReader(node_log_dir(tmp_path), tmp_path / "reader") as reader:
            assert reader.last_index() == 50
            nl.install_snapshot(leader_snapshot(frames, 200), HardState(TERM, 1, 200))
            nl.append([Entry(i, TERM, frames[i - 1]) for i in range(201, 211)], HardState(TERM, 1, 210))
            reader.catch_up()
            assert (reader.first_index(), reader.last_index(), reader.hard_state().commit) == (201, 210, 210)
            assert [e.index for e in reader.entries(201, 211, 1 << 20)] == list(range(201, 211))
            with pytest.raises(LogCompactedError) as info:
                reader.entries(10, 20, 1 << 20)
            assert info.value.first_index == 201
    finally:
        nl.close()


INSTALL_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_snapshot_storage import Entry, HardState, TERM, leader_snapshot, open_log, workload
from pathlib import Path
node_dir, n = Path(sys.argv[1]), int(sys.argv[3])
frames = workload(n)
nl = open_log(node_dir)
print("R", nl.last_index(), flush=True)
round_ = 0
while nl.last_index() + 60 < n:
    lo = nl.last_index() + 1
    for i in range(lo, lo + 40, 4):  # commit lags 6 behind: an uncommitted suffix to replace
        commit = max(i + 3 - 6, nl.hard_state().commit)
        nl.append([Entry(k, TERM, frames[k - 1]) for k in range(i, i + 4)], HardState(TERM, 1, commit))
    c = nl.hard_state().commit + 2 if round_ % 2 else nl.last_index() + 15
    snap = leader_snapshot(frames, c)
    print("B", c, flush=True)
    nl.install_snapshot(snap, HardState(TERM, 1, c))
    print("D", c, flush=True)
    round_ += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [[0.2, 0.35, 0.5, 0.8, 0.27, 0.61]])
def test_a_kill_at_any_point_of_installs_leaves_the_old_or_the_new_state(tmp_path: Path, kill_after_s) -> None:
    """Children append (with an uncommitted suffix) and install snapshots, some inside the suffix (the log
    gets shorter), some past the end, and are SIGKILLed mid-flight; after every kill the log opens clean
    (no false "lost entries" from the last-index hint, no quarantine), holds at least every install
    reported done, agrees with its snapshot, and the table rebuilt from it is the leader's."""
    total = 4000
    frames = workload(total)
    done_max = 0
    for delay in kill_after_s:
        child = subprocess.Popen(
            [sys.executable, "-c", INSTALL_CHILD, str(tmp_path), str(Path(__file__).parent), str(total)],
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
            lines = child.stdout.read().splitlines()
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()
        done = [int(line.split()[1]) for line in lines if line.startswith("D ")]
        done_max = max([done_max, *done])
        nl = open_log(tmp_path)
        try:
            assert nl.quarantined is None, nl.corruption
            c = nl.saved_snapshot_index()
            assert c is not None and c >= done_max  # an install reported done is never undone
            assert nl.first_index() - 1 <= c <= nl.hard_state().commit <= nl.last_index()
            assert nl.snapshot_record.index == c
            last = nl.last_index()
            rebuilt = rebuild_dedup(nl, PRODUCERS_MAX)
        finally:
            nl.close()
        assert state(rebuilt) == state(reference(frames, last))
    assert done_max > 0


def test_a_crash_between_the_install_and_the_hint_update_is_not_taken_for_lost_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log gets shorter (a snapshot inside the follower's uncommitted suffix); a kill right after the
    RocksDB write, before the hint is rewritten, must not read as "synced entries lost" at the next start."""
    frames = workload(200)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 101)], HardState(TERM, 1, 60))
        monkeypatch.setattr(nl, "_write_hint", lambda: None)  # the process dies here
        nl.install_snapshot(leader_snapshot(frames, 70), HardState(TERM, 1, 70))
    finally:
        nl.close()
    nl = open_log(tmp_path)
    try:
        assert nl.quarantined is None, nl.corruption
        assert (nl.first_index(), nl.last_index(), nl.snapshot_record.index) == (71, 70, 70)
    finally:
        nl.close()


def test_the_snapshot_chunk_fits_a_ring_record_and_a_peer_message(tmp_path: Path) -> None:
    base = local_cluster(tmp_path, count=3)[0]
    assert snapshot_chunk_bytes_for(base) == RaftConfig().snapshot_chunk_bytes  # 1 MiB fits the defaults
    assert snapshot_chunk_bytes_for(with_overrides(base, snapshot_chunk_bytes=64)) == 64
    small_ring = with_overrides(base, ring_capacity_bytes=1 << 20, snapshot_chunk_bytes=SNAPSHOT_CHUNK_BYTES_MAX)
    size = snapshot_chunk_bytes_for(small_ring)
    config = bytes(SNAPSHOT_CONFIG_BYTES_MAX)  # the largest configuration a chunk may carry
    body = len(encode_raft(InstallSnapshot(1, 2, 3, 4, 5, size, 0, 0, bytes(size), config)))
    assert body + PEER_RECORD_HEADER_BYTES == record_max_for(1 << 20)  # exactly one ring record at most
    small_peer = with_overrides(base, peer_message_bytes_max=256 * 1024)
    chunk = bytes(snapshot_chunk_bytes_for(small_peer))
    assert len(encode_raft(InstallSnapshot(1, 2, 3, 4, 5, 1, 0, 0, chunk, config))) == 256 * 1024


class _State:
    """The state block's counters, as the worker writes them (a dict instead of shared memory)."""

    def __init__(self) -> None:
        self.fields: dict[str, int] = {}

    def add(self, name: str, delta: int = 1) -> None:
        self.fields[name] = self.fields.get(name, 0) + delta

    def set(self, name: str, value: int) -> None:
        self.fields[name] = value


def _worker_on(nl) -> RaftWorker:
    """A raft worker's install path over a real log, without processes, sockets or shared memory."""
    w = RaftWorker.__new__(RaftWorker)
    w.config = SimpleNamespace(dedup_producers_max=PRODUCERS_MAX)
    w.storage, w.state, w.log = nl, _State(), logging.getLogger("test")
    w.dedup, w._decoded, w._export, w._notes = DedupTable(producers_max=PRODUCERS_MAX), {}, None, []
    w.groups = GroupService(w.log)
    w._timer = LoopTimer()
    w._syncer = None  # no persist thread: each write is synced on return, as with fsync "never" in the worker
    w.trace = SimpleNamespace(persisting=lambda entries: None, persisted=lambda entries: None)  # no state block
    return w


def test_the_worker_installs_a_leaders_snapshot_and_refuses_one_it_cannot_read(tmp_path: Path) -> None:
    frames = workload(300)
    nl = open_log(tmp_path)
    try:
        nl.append([Entry(i, TERM, frames[i - 1]) for i in range(1, 21)], HardState(TERM, 1, 20))
        w = _worker_on(nl)
        newer = bytearray(leader_snapshot(frames, 200).data)
        newer[4] = 7  # a format version this node does not read (the CRC is the record's own: still refused)
        with pytest.raises(SnapshotRefused, match="version 7 is not supported"):
            w._persist([], HardState(TERM, 1, 200), Snapshot(200, TERM, bytes(newer)))
        assert (nl.first_index(), nl.last_index(), nl.hard_state().commit) == (1, 20, 20)  # nothing written
        assert "snapshots_installed" not in w.state.fields

        assert w._persist([], HardState(TERM, 1, 200), leader_snapshot(frames, 200)) is True
        assert (nl.first_index(), nl.last_index(), nl.snapshot_record.index) == (201, 200, 200)
        assert state(w.dedup) == state(reference(frames, 200)) and w.dedup.last_index == 200
        assert w.state.fields["snapshots_installed"] == 1 and w.state.fields["commit_index"] == 200
        assert w.groups.table.index == 200 and len(w.groups.table) == 0  # the snapshot's (empty) groups
        for i in range(201, 211):  # appends continue from it, the table in step
            w.core = SimpleNamespace(role=Role.FOLLOWER, commit_index=i)
            w._persist([Entry(i, TERM, frames[i - 1])], HardState(TERM, 1, i))
        assert state(w.dedup) == state(reference(frames, 210))
    finally:
        nl.close()
