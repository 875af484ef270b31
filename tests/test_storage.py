"""RocksLogStorage against a real RocksDB in tmp_path: log shape, hard state, retention, corruption."""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rocksdict

from shmraft.constants import APPEND_ENTRIES_MAX
from shmraft.raft.types import Entry, HardState, LogStorage, Snapshot
from shmraft.storage.rocks import (
    ENTRY_DATA_MAX_BYTES,
    VERIFY_PROGRESS_ENTRIES,
    CorruptLogError,
    FsyncPolicy,
    HardStateError,
    LogCompactedError,
    LogOrderError,
    RocksLogReader,
    RocksLogStorage,
    StorageClosedError,
    StorageError,
    StorageIOError,
    StorageLimitError,
    StorageLockedError,
    _map_rocks_error,
    index_key,
)


def data_for(index: int, term: int, size: int = 64) -> bytes:
    """Deterministic payload, different for each (index, term)."""
    seed = f"{index}:{term}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def make(lo: int, hi: int, term: int, size: int = 64) -> list[Entry]:
    return [Entry(i, term, data_for(i, term, size)) for i in range(lo, hi + 1)]


@pytest.fixture
def store(tmp_path: Path):
    s = RocksLogStorage(tmp_path / "log", retain_entries_max=None, retain_bytes_max=None)
    yield s
    s.close()


def test_satisfies_protocol_and_starts_empty(store: RocksLogStorage) -> None:
    assert isinstance(store, RocksLogStorage)
    _: LogStorage = store  # static check of the protocol
    assert (store.first_index(), store.last_index()) == (1, 0)
    assert (store.snapshot_index(), store.snapshot_term()) == (0, 0)
    assert store.hard_state() == HardState()
    assert store.term_at(0) == 0
    assert store.term_at(1) is None
    assert store.entries(1, 10, 1000) == []


def test_data_dir_mode_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    with RocksLogStorage(path):
        pass
    assert os.stat(path).st_mode & 0o777 == 0o700
    os.chmod(path, 0o755)
    with RocksLogStorage(path):
        pass
    assert os.stat(path).st_mode & 0o777 == 0o700


def test_append_read_term_at(store: RocksLogStorage) -> None:
    store.append(make(1, 10, 1), HardState(term=1, vote=2, commit=0))
    store.append(make(11, 20, 2), HardState(term=2, vote=0, commit=5))
    assert store.last_index() == 20
    assert store.term_at(10) == 1 and store.term_at(11) == 2 and store.term_at(21) is None
    got = store.entries(1, 21, 1 << 20)
    assert got == make(1, 10, 1) + make(11, 20, 2)
    assert store.entries(5, 8, 1 << 20) == make(5, 7, 1)
    assert store.entries(18, 100, 1 << 20) == make(18, 20, 2)  # hi clamped
    assert store.entries(21, 30, 1 << 20) == []
    assert store.entries(7, 7, 1 << 20) == []
    assert store.bytes_kept() == 20 * 64


def test_entries_max_bytes_at_least_one(store: RocksLogStorage) -> None:
    store.append(make(1, 10, 1, size=1000), HardState(term=1))
    assert len(store.entries(1, 11, 0)) == 1  # one entry even if it alone exceeds max_bytes
    assert len(store.entries(1, 11, 999)) == 1
    assert len(store.entries(1, 11, 2000)) == 2
    assert len(store.entries(1, 11, 2999)) == 2
    assert len(store.entries(3, 11, 1 << 20)) == 8


def test_truncate_conflicting_suffix(store: RocksLogStorage) -> None:
    store.append(make(1, 10, 1), HardState(term=1, commit=3))
    store.append(make(6, 7, 2), HardState(term=2, commit=3))
    assert store.last_index() == 7
    assert store.entries(1, 100, 1 << 20) == make(1, 5, 1) + make(6, 7, 2)
    assert store.term_at(8) is None
    store.append(make(8, 12, 3), HardState(term=3, commit=3))
    assert store.entries(1, 100, 1 << 20) == make(1, 5, 1) + make(6, 7, 2) + make(8, 12, 3)
    assert store.stats().truncations == 1
    assert store.verify() == 12


def test_verify_reports_progress_during_a_long_scan(store: RocksLogStorage) -> None:
    # the raft worker beats from this callback, so a long start-up scan is not taken for a stall
    n = 3 * VERIFY_PROGRESS_ENTRIES + 5
    for lo in range(1, n + 1, 4096):
        store.append(make(lo, min(lo + 4095, n), 1, size=8), HardState(term=1, commit=0))
    calls: list[int] = []
    assert store.verify(lambda: calls.append(1)) == n
    assert len(calls) == n // VERIFY_PROGRESS_ENTRIES


def test_append_invariants(store: RocksLogStorage) -> None:
    store.append(make(1, 5, 2), HardState(term=2, commit=3))
    with pytest.raises(LogOrderError, match="hole"):
        store.append(make(7, 8, 2))
    with pytest.raises(LogOrderError, match="consecutive"):
        store.append([Entry(6, 2, b"x"), Entry(8, 2, b"y")])
    with pytest.raises(LogOrderError, match="backwards"):
        store.append(make(6, 6, 1))
    with pytest.raises(LogOrderError, match="committed"):
        store.append([Entry(3, 3, b"z")], HardState(term=3, commit=3))
    with pytest.raises(HardStateError, match="persist the term first"):
        store.append(make(6, 6, 3))
    with pytest.raises(StorageLimitError):
        store.append([Entry(6, 2, b"x" * (ENTRY_DATA_MAX_BYTES + 1))])
    with pytest.raises(StorageLimitError):
        store.append(make(6, 6 + APPEND_ENTRIES_MAX, 2, size=1))
    # re-sending committed entries unchanged is allowed (replaces them with the same data)
    store.append(make(3, 6, 2))
    assert store.entries(1, 10, 1 << 20) == make(1, 6, 2)
    # failed appends wrote nothing
    assert store.verify() == 6


def test_hard_state_rules(store: RocksLogStorage) -> None:
    store.append(make(1, 3, 1), HardState(term=1, vote=1, commit=1))
    with pytest.raises(HardStateError, match="term goes backwards"):
        store.set_hard_state(HardState(term=0, vote=0, commit=1))
    with pytest.raises(HardStateError, match="vote"):
        store.set_hard_state(HardState(term=1, vote=2, commit=1))
    with pytest.raises(HardStateError, match="commit goes backwards"):
        store.set_hard_state(HardState(term=1, vote=1, commit=0))
    with pytest.raises(HardStateError, match="beyond"):
        store.set_hard_state(HardState(term=1, vote=1, commit=4))
    store.set_hard_state(HardState(term=5, vote=3, commit=3))
    assert store.hard_state() == HardState(term=5, vote=3, commit=3)


def test_hard_state_and_log_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 50, 1), HardState(term=1, vote=1, commit=10))
        s.append(make(30, 40, 2), HardState(term=2, vote=3, commit=20))
        s.set_hard_state(HardState(term=2, vote=3, commit=25))  # commit-only: unsynced write
        stats = s.stats()
        assert stats.appends == 2 and stats.entries_written == 61 and stats.unsynced_writes >= 1
    with RocksLogStorage(path) as s:
        assert s.hard_state() == HardState(term=2, vote=3, commit=25)
        assert (s.first_index(), s.last_index()) == (1, 40)
        assert s.term_at(40) == 2 and s.term_at(29) == 1
        assert s.entries(1, 41, 1 << 30) == make(1, 29, 1) + make(30, 40, 2)
        assert s.bytes_kept() == 40 * 64
        s.append(make(41, 41, 2))
        assert s.verify() == 41


def _run_then_die(path: Path, steps: str) -> None:
    """Open the log in a child process, run `steps` (Python, with `s` the storage), and exit without closing
    it: what a killed process leaves (written batches are in the OS, deferred state is not)."""
    code = (
        "import os, sys\n"
        "from shmraft.raft.types import Entry, HardState\n"
        "from shmraft.storage.rocks import RocksLogStorage\n"
        f"s = RocksLogStorage({str(path)!r})\n" + steps + "\nos._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_deferred_commit_is_carried_by_the_next_write_or_lost_with_the_process(tmp_path: Path) -> None:
    """The raft worker defers commit-only advances (no write of their own on the commit path): readers of the
    object see them at once; the next write of any kind, `write_deferred` or `close` puts them on disk; a
    process that dies first loses them (as it may an unsynced write), never anything else."""
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 10, 1), HardState(term=1, vote=1, commit=2))
        writes = s.stats().unsynced_writes + s.stats().synced_writes
        s.set_hard_state(HardState(term=1, vote=1, commit=5), defer=True)
        assert s.hard_state().commit == 5
        assert s.stats().unsynced_writes + s.stats().synced_writes == writes  # no write of its own
        s.compact(4)  # checked against the deferred commit, and carries it
        assert not s.write_deferred()  # nothing left to write
    _run_then_die(path, "s.set_hard_state(HardState(term=1, vote=1, commit=7), defer=True)")
    with RocksLogStorage(path) as s:
        assert s.hard_state() == HardState(term=1, vote=1, commit=5)  # lost with the process: re-learned
        assert (s.first_index(), s.last_index()) == (5, 10)
    _run_then_die(
        path,
        "s.set_hard_state(HardState(term=1, vote=1, commit=8), defer=True)\n"
        "s.append([Entry(11, 1, b'x' * 64)])",  # an append without a hard state carries it
    )
    with RocksLogStorage(path) as s:
        assert s.hard_state().commit == 8 and s.last_index() == 11
    _run_then_die(path, "s.set_hard_state(HardState(term=1, vote=1, commit=9), defer=True)\nassert s.write_deferred()")
    with RocksLogStorage(path) as s:
        assert s.hard_state().commit == 9
        s.set_hard_state(HardState(term=1, vote=1, commit=10), defer=True)
    with RocksLogStorage(path) as s:
        assert s.hard_state().commit == 10  # written by close
        s.set_hard_state(HardState(term=2, vote=0, commit=10), defer=True)  # a term change is never deferred
        assert not s.write_deferred()


def test_close_idempotent_and_use_after_close(tmp_path: Path) -> None:
    s = RocksLogStorage(tmp_path / "log")
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(StorageClosedError):
        s.entries(1, 2, 10)
    with pytest.raises(StorageClosedError):
        s.append(make(1, 1, 0))


def test_second_opener_is_refused(tmp_path: Path) -> None:
    with RocksLogStorage(tmp_path / "log"), pytest.raises(StorageLockedError):
        RocksLogStorage(tmp_path / "log")
    with RocksLogStorage(tmp_path / "log"):  # the lock was released
        pass


def test_fsync_policy_never(tmp_path: Path) -> None:
    with RocksLogStorage(tmp_path / "log", fsync="never") as s:
        assert s.fsync is FsyncPolicy.NEVER
        s.append(make(1, 5, 1), HardState(term=1))
        s.sync()
        st = s.stats()
        assert st.unsynced_writes >= 1 and st.synced_writes == 1  # only the explicit sync()
    with RocksLogStorage(tmp_path / "log") as s:
        assert s.last_index() == 5


# --- retention ------------------------------------------------------------------------------------


def test_compact_and_log_compacted_error(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 10, 1) + make(11, 20, 2), HardState(term=2, commit=15))
        with pytest.raises(LogOrderError, match="commit"):
            s.compact(16)
        s.compact(12)
        assert (s.first_index(), s.snapshot_index(), s.snapshot_term()) == (13, 12, 2)
        assert s.term_at(12) == 2 and s.term_at(11) is None
        with pytest.raises(LogCompactedError) as info:
            s.entries(5, 20, 1 << 20)
        assert (info.value.requested, info.value.first_index) == (5, 13)
        assert s.entries(13, 21, 1 << 20) == make(13, 20, 2)
        s.compact(3)  # already compacted: no-op
        with pytest.raises(LogOrderError, match="compacted"):
            s.append(make(12, 12, 2))
        s.append(make(21, 21, 2))  # appends after the boundary still work
    with RocksLogStorage(path) as s:  # metadata survives reopen
        assert (s.first_index(), s.last_index(), s.snapshot_term()) == (13, 21, 2)
        assert s.bytes_kept() == 9 * 64
        assert s.verify() == 9


def test_compact_everything_then_append(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 5, 3), HardState(term=3, commit=5))
        s.compact(5)
        assert (s.first_index(), s.last_index(), s.term_at(5)) == (6, 5, 3)
        assert s.entries(6, 10, 100) == []
    with RocksLogStorage(path) as s:
        assert (s.first_index(), s.last_index(), s.term_at(5)) == (6, 5, 3)
        s.append(make(6, 7, 3))
        assert s.entries(6, 10, 1 << 20) == make(6, 7, 3)


def test_retention_by_entries(tmp_path: Path) -> None:
    with RocksLogStorage(tmp_path / "log", retain_entries_max=100, retain_bytes_max=None) as s:
        for lo in range(1, 1001, 50):
            s.append(make(lo, lo + 49, 1), HardState(term=1, commit=max(0, lo - 1)))
            # committed entries are deleted down to the bound; uncommitted are always kept
            assert s.last_index() - s.snapshot_index() <= max(100, s.last_index() - s.hard_state().commit)
        assert s.snapshot_index() > 800
        s.set_hard_state(HardState(term=1, commit=1000))
        assert s.last_index() - s.snapshot_index() <= 100
        with pytest.raises(LogCompactedError):
            s.entries(1, 2, 10)
        assert s.verify() == s.last_index() - s.snapshot_index()


def test_retention_by_bytes(tmp_path: Path) -> None:
    with RocksLogStorage(tmp_path / "log", retain_entries_max=None, retain_bytes_max=10_000) as s:
        for lo in range(1, 501, 20):
            s.append(make(lo, lo + 19, 1, size=100), HardState(term=1, commit=lo + 19))
            assert s.bytes_kept() <= 10_000
        assert s.bytes_kept() >= 10_000 - 10_000 // 16 - 100
        assert s.snapshot_index() > 350
        assert s.entries(s.first_index(), 1000, 1 << 20)[-1].index == 500


# --- corruption ----------------------------------------------------------------------------------


def _raw_open(path: Path) -> rocksdict.Rdict:
    opts = rocksdict.Options(raw_mode=True)
    return rocksdict.Rdict(str(path), opts, column_families={"meta": opts})


def test_flipped_value_bytes_raise_corrupt_log_error(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 10, 1, size=500), HardState(term=1, commit=2))
    db = _raw_open(path)
    value = bytearray(db[index_key(7)])
    value[100] ^= 0x01
    db[index_key(7)] = bytes(value)
    db[index_key(9)] = db[index_key(8)]  # a valid value under the wrong key
    db.close()
    with RocksLogStorage(path) as s:
        assert s.entries(1, 7, 1 << 20) == make(1, 6, 1, size=500)
        with pytest.raises(CorruptLogError) as info:
            s.entries(5, 11, 1 << 20)
        assert info.value.index == 7
        with pytest.raises(CorruptLogError) as info:
            s.entries(7, 8, 1 << 20)  # point-read path
        assert info.value.index == 7
        with pytest.raises(CorruptLogError) as info:
            s.term_at(9)
        assert info.value.index == 9
        with pytest.raises(CorruptLogError):
            s.verify()


def test_corrupt_last_entry_or_meta_refuses_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 3, 1), HardState(term=1))
    db = _raw_open(path)
    good = db[index_key(3)]
    db[index_key(3)] = good[:-1] + bytes([good[-1] ^ 0x80])
    db.close()
    with pytest.raises(CorruptLogError, match="entry 3"):
        RocksLogStorage(path)
    db = _raw_open(path)
    db[index_key(3)] = good
    meta = db.get_column_family("meta")
    hard = meta[b"hard"]
    meta[b"hard"] = bytes([hard[0] ^ 1]) + hard[1:]
    del meta
    db.close()
    with pytest.raises(CorruptLogError, match="hard"):
        RocksLogStorage(path)


def _flip_byte(path: str, pos: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_flipped_sst_bytes_never_return_wrong_data(tmp_path: Path) -> None:
    base = tmp_path / "base"
    with RocksLogStorage(base) as s:
        s.append(make(1, 40, 1, size=6000), HardState(term=1, commit=10))
        s.flush()
        want = s.entries(1, 41, 1 << 30)
    ssts = sorted(glob.glob(str(base / "*.sst")), key=os.path.getsize)
    assert ssts, "flush produced no SST file"
    big = os.path.basename(ssts[-1])
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    for trial in range(16):
        work = tmp_path / f"t{trial}"
        shutil.copytree(base, work)
        size = os.path.getsize(work / big)
        # mostly data blocks; a few in the index/footer region at the end of the file
        pos = size // 2 if trial == 0 else rng.randrange(size) if trial < 12 else size - 1 - rng.randrange(1500)
        _flip_byte(str(work / big), pos)
        try:
            with RocksLogStorage(work) as s:
                got = s.entries(1, 41, 1 << 30)
                s.verify()
            assert got == want, f"flipped byte {pos} returned wrong data"
            outcomes["undetected-but-correct"] = outcomes.get("undetected-but-correct", 0) + 1
        except CorruptLogError as exc:
            assert "Corruption" in str(exc) or "checksum" in str(exc)
            outcomes["corrupt"] = outcomes.get("corrupt", 0) + 1
        shutil.rmtree(work)
    assert outcomes.get("corrupt", 0) >= 12, outcomes


def test_flipped_data_block_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path) as s:
        s.append(make(1, 40, 1, size=6000), HardState(term=1))
        s.flush()
    big = max(glob.glob(str(path / "*.sst")), key=os.path.getsize)
    _flip_byte(big, 20 * 6000)  # well inside the data blocks: around entry 20
    with RocksLogStorage(path) as s:
        assert s.entries(1, 5, 1 << 30) == make(1, 4, 1, size=6000)
        with pytest.raises(CorruptLogError) as info:
            s.entries(1, 41, 1 << 30)
        assert info.value.index is not None and 15 <= info.value.index <= 25
        assert "checksum" in str(info.value)


def test_errors_are_storage_errors() -> None:
    for cls in (CorruptLogError, LogCompactedError, LogOrderError, HardStateError, StorageLimitError):
        assert issubclass(cls, StorageError)
    with pytest.raises(ValueError):
        RocksLogStorage("/nonexistent-never", retain_entries_max=0)


# --- secondary reader -------------------------------------------------------------------------------


def test_reader_follows_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None) as w:
        w.append(make(1, 10, 1), HardState(term=1, commit=4))
        with RocksLogReader(path, tmp_path / "reader") as r:
            assert os.stat(tmp_path / "reader").st_mode & 0o777 == 0o700
            assert (r.first_index(), r.last_index(), r.hard_state().commit) == (1, 10, 4)
            w.append(make(11, 20, 1), HardState(term=1, commit=15))
            w.append(make(18, 19, 2), HardState(term=2, commit=15))  # truncates 20
            w.compact(12)
            assert r.last_index() == 10  # a consistent view until catch_up()
            r.catch_up()
            assert (r.first_index(), r.last_index(), r.hard_state()) == (13, 19, HardState(term=2, commit=15))
            assert r.entries(13, 100, 1 << 20) == make(13, 17, 1) + make(18, 19, 2)
            assert r.term_at(12) == 1 and r.snapshot_term() == 1
            with pytest.raises(LogCompactedError):
                r.entries(5, 10, 1 << 20)
            assert r.verify() == 7
            w.flush()  # entries moving from the WAL to SST files stay visible
            w.append(make(20, 21, 2), HardState(term=2, commit=21))
            r.catch_up()
            assert r.entries(18, 100, 1 << 20) == make(18, 21, 2)
            assert repr(r).startswith("RocksLogReader(")


def test_reader_without_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no log"):
        RocksLogReader(tmp_path / "missing", tmp_path / "reader")


@pytest.mark.parametrize(
    "message",
    [
        "IO error: No space left on device: While appending to file: /x/000004.log",
        "No space left on device (os error 28)",  # rocksdict's own file I/O (Rust std::io)
        "Disk quota exceeded (os error 122)",
    ],
)
def test_a_full_disk_is_an_io_error_to_retry_never_corruption(message: str) -> None:
    err = _map_rocks_error(Exception(message))
    assert isinstance(err, StorageIOError) and err.disk_full, (type(err), message)


def test_another_os_error_of_rocksdict_is_an_io_error_not_corruption() -> None:
    err = _map_rocks_error(Exception("Permission denied (os error 13)"))
    assert isinstance(err, StorageIOError) and not err.disk_full


@pytest.mark.parametrize("entries_max", [4096, 7])
def test_reads_of_the_cached_tail_match_the_disk_after_truncations_and_compactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries_max: int
) -> None:
    """The writer serves its recent tail from memory (`_TailCache`): random appends that replace suffixes,
    commits and compactions, and after each every read agrees with a model and, after a reopen, with disk."""
    monkeypatch.setattr("shmraft.storage.rocks.TAIL_CACHE_ENTRIES_MAX", entries_max)
    rng = random.Random(11)
    path = tmp_path / "log"
    model: dict[int, Entry] = {}
    first, commit, term = 1, 0, 1
    with RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None) as s:
        for _ in range(300):
            last = s.last_index()
            op = rng.random()
            if op < 0.7 or last < first:
                start = rng.randint(max(commit + 1, first), last + 1)
                term += rng.random() < 0.3
                new = make(start, start + rng.randint(0, 6), term, size=rng.randint(1, 300))
                for i in range(start, last + 1):
                    model.pop(i)
                model.update((e.index, e) for e in new)
                s.append(new, HardState(term=term, commit=commit))
            elif op < 0.85:
                commit = rng.randint(commit, last)
                s.set_hard_state(HardState(term=term, commit=commit))
            elif commit >= first:
                upto = rng.randint(first - 1, commit)
                s.compact(upto)
                for i in range(first, upto + 1):
                    model.pop(i)
                first = max(first, upto + 1)
            last = s.last_index()
            assert sorted(model) == list(range(first, last + 1))
            lo = rng.randint(first, last + 1)
            hi = rng.randint(lo, last + 2)
            want = [model[i] for i in range(lo, min(hi, last + 1))]
            assert s.entries(lo, hi, 1 << 20) == want
            budget = rng.randint(0, 600)
            got = s.entries(lo, hi, budget)
            assert got == want[: len(got)]
            assert len(got) == len(want) or sum(len(e.data) for e in want[: len(got) + 1]) > budget
            if first > 1:
                with pytest.raises(LogCompactedError):
                    s.entries(first - 1, last + 1, 1 << 20)
    with RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None) as s:  # nothing cached: disk
        assert s.entries(first, last + 1, 1 << 30) == [model[i] for i in range(first, last + 1)]


def test_the_cached_tail_is_dropped_by_an_installed_snapshot(store: RocksLogStorage) -> None:
    store.append(make(1, 10, 1), HardState(term=1, commit=3))
    store.install_snapshot(Snapshot(index=20, term=2, data=b"snap"), HardState(term=2, commit=20))
    assert store.entries(21, 30, 1 << 20) == []
    store.append(make(21, 22, 2), HardState(term=2, commit=20))
    assert store.entries(21, 30, 1 << 20) == make(21, 22, 2)
    with pytest.raises(LogCompactedError):
        store.entries(5, 30, 1 << 20)


def test_the_recent_tail_is_read_without_rocksdb_also_after_a_truncation(
    store: RocksLogStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is what serves the tail (not only agrees with the disk): with RocksDB reads made to fail, the
    entries appended, the prefix kept by a truncating append and the new suffix still come back."""
    store.append(make(1, 10, 1), HardState(term=1, commit=3))
    store.append(make(6, 8, 2), HardState(term=2, commit=3))

    def no_disk(*_args: object) -> list[Entry]:
        raise AssertionError("read went to RocksDB")

    monkeypatch.setattr("shmraft.storage.rocks._LogView.entries", no_disk)
    assert store.entries(1, 20, 1 << 20) == make(1, 5, 1) + make(6, 8, 2)
    store.compact(3)
    assert store.entries(4, 20, 1 << 20) == make(4, 5, 1) + make(6, 8, 2)
