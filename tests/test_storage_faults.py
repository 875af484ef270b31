"""Storage faults below the cluster: damaged RocksDB files are detected on open and quarantined, the term/vote
copy survives them, a full disk is a retryable error that leaves a consistent log (shmraft/storage/nodelog.py,
sidecar.py, shmraft/faults/disk.py). Real RocksDB, real files, a real tmpfs for ENOSPC (root only)."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from shmraft.faults.disk import (
    can_mount,
    corrupt_rocksdb,
    corrupt_rocksdb_as,
    corruption_kinds,
    fill_disk,
    free_disk,
    mount_small_disk,
    node_log_dir,
    unmount_small_disk,
)
from shmraft.raft.types import Entry, HardState
from shmraft.storage.nodelog import HardStateLostError, open_node_log, reset_for_recovery
from shmraft.storage.rocks import RocksLogStorage, StorageIOError
from shmraft.storage.sidecar import HardStateFile, SavedHardState

TERM = 4
VOTE = 2
ENTRIES = 600
ENTRY_BYTES = 1500


def _data(i: int) -> bytes:
    return i.to_bytes(8, "big") * (ENTRY_BYTES // 8)


_BUILDER = """
import os, sys
from pathlib import Path
from shmraft.storage.nodelog import open_node_log
from shmraft.raft.types import Entry, HardState
node_dir, flush_at, term, vote, n, size = Path(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:])
nl = open_node_log(node_dir)
nl.set_hard_state(HardState(term, vote, 0))
for i in range(1, n + 1):
    nl.append([Entry(i, term, i.to_bytes(8, "big") * (size // 8))], HardState(term, vote, max(0, i - 3)))
    if i == flush_at:
        nl.rocks.flush()
os._exit(0)  # no close: as after SIGKILL, the newest entries are only in the WAL
"""


def _build(node_dir: Path, flush_at: int | None) -> None:
    """In a child process that dies without closing: ENTRIES entries, the first ones flushed to an SST.
    (A subprocess, not fork: RocksDB's thread pool does not survive a fork.)"""
    subprocess.run(
        [
            sys.executable,
            "-c",
            _BUILDER,
            str(node_dir),
            str(flush_at or 0),
            str(TERM),
            str(VOTE),
            str(ENTRIES),
            str(ENTRY_BYTES),
        ],
        check=True,
        timeout=120,
    )


def _check_consistent(nl) -> None:
    """Every entry's checksum (verify) and the data we wrote, index by index."""
    assert nl.rocks.verify() == nl.last_index()
    for e in nl.entries(1, nl.last_index() + 1, 1 << 40):
        assert e.data == _data(e.index) and e.term == TERM


def test_clean_log_opens_verified_with_its_vote(tmp_path: Path) -> None:
    _build(tmp_path, flush_at=300)
    nl = open_node_log(tmp_path)
    try:
        assert nl.quarantined is None and nl.recovery_term == 0
        assert nl.last_index() == ENTRIES and nl.hard_state().vote == VOTE
        assert HardStateFile(tmp_path).read() == SavedHardState(TERM, VOTE)
        _check_consistent(nl)
    finally:
        nl.close()


@pytest.mark.parametrize(
    "kind", ["sst_flip", "sst_truncate", "wal_flip", "wal_truncate", "manifest_garble", "current_garble"]
)
def test_each_corruption_is_detected_quarantined_and_the_vote_kept(tmp_path: Path, kind: str) -> None:
    _build(tmp_path, flush_at=300)
    log_dir = node_log_dir(tmp_path)
    assert kind in corruption_kinds(log_dir)
    what = corrupt_rocksdb_as(log_dir, kind, random.Random(7))
    nl = open_node_log(tmp_path)
    try:
        assert nl.quarantined is not None, f"{kind} ({what}) was not detected"
        assert nl.quarantined.exists() and nl.quarantined.name.startswith("log.corrupt-")
        assert nl.corruption  # names what failed
        # empty log, preserved term raised by one, no vote in it, recovering until caught up
        assert nl.last_index() == 0 and nl.hard_state() == HardState(TERM + 1, 0, 0)
        assert nl.recovery_term == TERM + 1
        assert HardStateFile(tmp_path).read() == SavedHardState(TERM + 1, 0, True, TERM + 1)
    finally:
        nl.close()
    # a crash during recovery keeps the mode: the reopened (healthy, empty) log is still recovering
    nl = open_node_log(tmp_path)
    try:
        assert nl.quarantined is None and nl.recovery_term == TERM + 1
        nl.end_recovery()
    finally:
        nl.close()
    assert HardStateFile(tmp_path).read() == SavedHardState(TERM + 1, 0, False, 0)


def test_random_corruption_describes_itself(tmp_path: Path) -> None:
    _build(tmp_path, flush_at=300)
    what = corrupt_rocksdb(node_log_dir(tmp_path), random.Random(3))
    assert what and any(word in what for word in ("SST", "WAL", "MANIFEST", "CURRENT"))


def test_corrupt_log_without_hard_state_copy_refuses_to_start(tmp_path: Path) -> None:
    _build(tmp_path, flush_at=300)
    (tmp_path / "hardstate").unlink()
    corrupt_rocksdb_as(node_log_dir(tmp_path), "manifest_garble", random.Random(1))
    with pytest.raises(HardStateLostError, match="recover-node") as info:
        open_node_log(tmp_path)
    assert "--min-term" in str(info.value)
    assert node_log_dir(tmp_path).exists()  # nothing moved without the operator
    moved = reset_for_recovery(tmp_path, min_term=9)
    assert moved is not None and moved.exists()
    nl = open_node_log(tmp_path)
    try:
        assert nl.recovery_term == 9 and nl.hard_state().term == 9 and nl.last_index() == 0
    finally:
        nl.close()


def test_damaged_hard_state_copy_refuses_to_start(tmp_path: Path) -> None:
    _build(tmp_path, flush_at=None)
    path = tmp_path / "hardstate"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(HardStateLostError, match="checksum"):
        open_node_log(tmp_path)


def test_hard_state_copy_ahead_of_the_log_wins(tmp_path: Path) -> None:
    """The copy is written first: a crash between the two writes leaves it one vote ahead."""
    _build(tmp_path, flush_at=None)
    HardStateFile(tmp_path).write(SavedHardState(TERM + 3, 1))
    nl = open_node_log(tmp_path)
    try:
        assert (nl.hard_state().term, nl.hard_state().vote) == (TERM + 3, 1)
    finally:
        nl.close()


def test_sidecar_file_format_is_checksummed(tmp_path: Path) -> None:
    f = HardStateFile(tmp_path)
    f.write(SavedHardState(5, 3, True, 5))
    raw = f.path.read_bytes()
    assert zlib.crc32(raw[:-4]) == int.from_bytes(raw[-4:], "little")
    assert HardStateFile(tmp_path).read() == SavedHardState(5, 3, True, 5)


@pytest.fixture
def small_disk(tmp_path: Path):
    reason = can_mount()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "disk"
    mount_small_disk(mnt, 8 * 1024 * 1024)
    try:
        yield mnt
    finally:
        unmount_small_disk(mnt)


def test_full_disk_is_a_retryable_error_and_the_log_stays_consistent(small_disk: Path) -> None:
    nl = open_node_log(small_disk)
    nl.set_hard_state(HardState(TERM, VOTE, 0))
    written = 0
    for i in range(1, 51):
        nl.append([Entry(i, TERM, _data(i))], HardState(TERM, VOTE, i - 1))
        written = i
    filler = fill_disk(small_disk)
    with pytest.raises(StorageIOError) as info:
        for i in range(written + 1, written + 5000):
            nl.append([Entry(i, TERM, _data(i))])
            written = i
    assert info.value.disk_full, info.value
    nl.close()
    with pytest.raises(StorageIOError) as info:  # still full: the reopen fails the same way, nothing moved
        open_node_log(small_disk).close()
    assert info.value.disk_full
    free_disk(filler)
    nl = open_node_log(small_disk)
    try:
        assert nl.quarantined is None
        assert nl.last_index() >= written  # every append that returned is there
        _check_consistent(nl)
        nl.append([Entry(nl.last_index() + 1, TERM, _data(nl.last_index() + 1))])  # writable again
    finally:
        nl.close()
    with RocksLogStorage(node_log_dir(small_disk)) as s:
        assert s.verify() == s.last_index()
