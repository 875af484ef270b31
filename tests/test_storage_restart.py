"""Restarts that do not grow with the log: the start-up check resumes from the verified mark
(shmraft/storage/nodelog.py, sidecar.py `VerifiedMarkFile`). What was written since the mark is still checked
in full at open; an unusable mark means a full scan; damage below the mark is found on read. The work done is
observed through `OpenCheck.entries_verified` and the storage's `entries_verified` counter, not timing.
Real RocksDB, real files, a real child process that dies without closing."""

from __future__ import annotations

import dataclasses
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from shmraft.faults.disk import corrupt_rocksdb_as, node_log_dir
from shmraft.storage.nodelog import open_node_log
from shmraft.storage.rocks import CorruptLogError, RocksLogStorage
from shmraft.storage.sidecar import HardStateFile, SavedHardState, VerifiedMarkFile

TERM = 3
VOTE = 1
MARK_AT = 500  # the verified mark is persisted here (after a flush: the entries so far are in one SST)
ENTRIES = 540  # so the tail after the mark is 40 entries
TAIL = ENTRIES - MARK_AT
ENTRY_BYTES = 1500
CHUNK = 20  # entries per append

_BUILDER = """
import os, sys
from pathlib import Path
from shmraft.storage.nodelog import open_node_log
from shmraft.raft.types import Entry, HardState
node_dir, mark_at, n, size, chunk, close, flush, term, vote = Path(sys.argv[1]), *map(int, sys.argv[2:])
nl = open_node_log(node_dir)
nl.set_hard_state(HardState(term, vote, 0))
for lo in range(1, n + 1, chunk):
    hi = min(n, lo + chunk - 1)
    entries = [Entry(i, term, i.to_bytes(8, "big") * (size // 8)) for i in range(lo, hi + 1)]
    nl.append(entries, HardState(term, vote, hi))  # committed as written, as on a lone leader
    if hi == mark_at:
        if flush:
            nl.rocks.flush()
        assert nl.persist_mark() is not None
if close:
    nl.close()
os._exit(0)  # without close: as after SIGKILL, the entries after the flush are only in the WAL
"""


def _build(node_dir: Path, *, close: bool, flush: bool = True) -> None:
    """In a child process: ENTRIES committed entries, the verified mark at MARK_AT (with `flush`, entries
    1..MARK_AT are in one SST by then; without, they are still in the memtable and reach an SST only after the
    mark), then TAIL more; closed cleanly or not. (A subprocess, not fork: RocksDB's threads do not fork.)"""
    args = [node_dir, MARK_AT, ENTRIES, ENTRY_BYTES, CHUNK, int(close), int(flush), TERM, VOTE]
    subprocess.run([sys.executable, "-c", _BUILDER, *map(str, args)], check=True, timeout=120)


def _flip_middle(path: Path) -> None:
    """Invert 16 bytes in the middle of a file (an SST's data blocks)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        data = f.read(16)
        f.seek(path.stat().st_size // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def _sst_holding(node_dir: Path, below_mark: bool | None) -> Path:
    """The SST file of the entries column family that holds only entries <= MARK_AT (or only later ones, or
    with None the one file holding both)."""
    with RocksLogStorage(node_log_dir(node_dir)) as s:
        files = s.table_files()
    if below_mark is None:
        chosen = [f for f in files if f.first_index <= MARK_AT < f.last_index]
    else:
        chosen = [f for f in files if (f.last_index <= MARK_AT if below_mark else f.first_index > MARK_AT)]
    assert len(chosen) == 1, files
    return node_log_dir(node_dir) / f"{chosen[0].number:06d}.sst"


@pytest.mark.parametrize("close", [True, False], ids=["clean-stop", "killed"])
def test_restart_checks_only_what_was_written_since_the_mark(tmp_path: Path, close: bool) -> None:
    _build(tmp_path, close=close)
    nl = open_node_log(tmp_path)
    try:
        assert nl.quarantined is None and nl.last_index() == ENTRIES
        assert not nl.open_check.full_scan, nl.open_check
        assert nl.open_check.entries_verified == TAIL
        assert nl.rocks.stats().entries_verified == TAIL
        assert VerifiedMarkFile(tmp_path).read().index == ENTRIES  # the open advanced the mark
    finally:
        nl.close()
    nl = open_node_log(tmp_path)  # nothing written since: nothing to scan
    try:
        assert not nl.open_check.full_scan and nl.open_check.entries_verified == 0
        assert nl.rocks.verify() == ENTRIES  # the log is whole all the same
    finally:
        nl.close()


def _mark_body(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[:-4]


def _rewrite_with_crc(path: Path, body: bytes) -> None:
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _spoil_mark(node_dir: Path, how: str) -> None:
    mark_file = VerifiedMarkFile(node_dir)
    mark = mark_file.read()
    assert mark is not None and mark.index == MARK_AT
    if how == "flipped-byte":
        raw = bytearray(mark_file.path.read_bytes())
        raw[12] ^= 0x01
        mark_file.path.write_bytes(bytes(raw))
    elif how == "cut-short":
        mark_file.path.write_bytes(mark_file.path.read_bytes()[:10])
    elif how == "other-version":  # a well-formed mark of a version this code does not know
        body = bytearray(_mark_body(mark_file.path))
        body[4:8] = struct.pack("<I", 99)
        _rewrite_with_crc(mark_file.path, bytes(body))
    elif how == "beyond-the-log":
        mark_file.write(dataclasses.replace(mark, index=ENTRIES + 1000))
    elif how == "different-entry":
        mark_file.write(dataclasses.replace(mark, entry_crc=mark.entry_crc ^ 1))
    elif how == "different-term":
        mark_file.write(dataclasses.replace(mark, term=mark.term + 1))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["flipped-byte", "cut-short", "other-version", "beyond-the-log", "different-entry", "different-term"]
)
def test_an_unusable_mark_means_a_full_scan_never_a_refusal(tmp_path: Path, how: str) -> None:
    _build(tmp_path, close=True)
    _spoil_mark(tmp_path, how)
    nl = open_node_log(tmp_path)
    try:
        assert nl.quarantined is None and nl.last_index() == ENTRIES
        assert nl.open_check.full_scan and nl.open_check.reason, nl.open_check
        assert nl.open_check.entries_verified == ENTRIES == nl.rocks.stats().entries_verified
    finally:
        nl.close()
    nl = open_node_log(tmp_path)  # the full scan wrote a good mark again
    try:
        assert not nl.open_check.full_scan and nl.open_check.entries_verified == 0
    finally:
        nl.close()


def test_full_scan_on_request_ignores_a_good_mark(tmp_path: Path) -> None:
    _build(tmp_path, close=True)
    nl = open_node_log(tmp_path, full_scan=True)
    try:
        assert nl.open_check.full_scan and nl.open_check.entries_verified == ENTRIES
    finally:
        nl.close()


def _expect_quarantined(node_dir: Path) -> None:
    nl = open_node_log(node_dir)
    try:
        assert nl.quarantined is not None, nl.open_check
        assert nl.last_index() == 0 and nl.recovery_term == TERM + 1
        assert HardStateFile(node_dir).read() == SavedHardState(TERM + 1, 0, True, TERM + 1)
        assert VerifiedMarkFile(node_dir).read() is None  # the old log's mark went with it
    finally:
        nl.close()


def test_damage_in_an_sst_written_since_the_mark_is_found_at_open(tmp_path: Path) -> None:
    _build(tmp_path, close=True)
    _flip_middle(_sst_holding(tmp_path, below_mark=False))
    _expect_quarantined(tmp_path)


def test_an_sst_written_after_the_mark_is_checked_whole_at_open(tmp_path: Path) -> None:
    """Entries 1..MARK_AT reach an SST only at the clean stop, after the mark: that file is new to the mark, so
    it is scanned whole although most of it is below the mark; damage in it is found at open."""
    _build(tmp_path, close=True, flush=False)
    nl = open_node_log(tmp_path)
    try:
        assert not nl.open_check.full_scan and nl.open_check.files_checked == 1
        assert nl.open_check.entries_verified == ENTRIES
    finally:
        nl.close()
    nl = open_node_log(tmp_path)  # the open listed that file in its new mark
    try:
        assert nl.open_check.files_checked == 0 and nl.open_check.entries_verified == 0
    finally:
        nl.close()


def test_damage_in_an_sst_written_after_the_mark_below_it_is_found_at_open(tmp_path: Path) -> None:
    _build(tmp_path, close=True, flush=False)
    _flip_middle(_sst_holding(tmp_path, below_mark=None))
    _expect_quarantined(tmp_path)


@pytest.mark.parametrize("kind", ["wal_truncate", "wal_flip"])
def test_damage_in_the_wal_after_the_mark_is_found_at_open(tmp_path: Path, kind: str) -> None:
    _build(tmp_path, close=False)  # entries MARK_AT+1.. are only in the WAL
    corrupt_rocksdb_as(node_log_dir(tmp_path), kind, random.Random(5))
    _expect_quarantined(tmp_path)


def test_a_log_shorter_than_its_hint_is_corrupt_even_with_a_good_mark(tmp_path: Path) -> None:
    _build(tmp_path, close=True)
    with RocksLogStorage(node_log_dir(tmp_path), retain_entries_max=None, retain_bytes_max=None) as s:
        # cut the tail the way a lost WAL would: behind the storage's back (delete_range of the last 10 keys)
        s._db.delete_range((ENTRIES - 9).to_bytes(8, "big"), (ENTRIES + 1).to_bytes(8, "big"))
    _expect_quarantined(tmp_path)


def test_damage_below_the_mark_is_found_on_read_then_by_the_full_check(tmp_path: Path) -> None:
    _build(tmp_path, close=True)
    _flip_middle(_sst_holding(tmp_path, below_mark=True))
    nl = open_node_log(tmp_path)
    try:  # not scanned at open (that is the point of the mark) ...
        assert nl.quarantined is None and not nl.open_check.full_scan
        assert nl.open_check.entries_verified == TAIL
        with pytest.raises(CorruptLogError):  # ... but never served: the read checks block checksums and CRCs
            nl.entries(1, MARK_AT + 1, 1 << 40)
    finally:
        nl.close()
    # what the raft worker does when a read fails: reopen with the full check, which quarantines
    nl = open_node_log(tmp_path, full_scan=True)
    try:
        assert nl.quarantined is not None and "corrupt" in nl.corruption
    finally:
        nl.close()
