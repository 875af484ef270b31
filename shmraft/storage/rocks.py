"""The durable Raft log and hard state on RocksDB (through rocksdict).

Layout (one RocksDB database per node, in a directory created with mode 0700):

* column family ``default`` holds only log entries. Key: the index as 8-byte big-endian, so RocksDB's key
  order is log order and the last index is found with one seek-to-last. Value::

      term u64 | cum_bytes u64 | crc32 u32 | data

  ``cum_bytes`` is the total data bytes of all entries 1..index (it makes "bytes kept" and byte-based
  retention O(1)/O(log n) without a scan); ``crc32`` covers key + term + cum_bytes + data and is verified on
  every read, so a value that is damaged, or sitting under the wrong key, raises `CorruptLogError` naming the
  index instead of being served. RocksDB's own block checksums are verified too (`ReadOptions`
  verify_checksums, `Options` paranoid_checks); a RocksDB "Corruption" status is mapped to
  `CorruptLogError`.
* column family ``meta`` holds three small checksummed records: ``format`` (layout version), ``hard``
  (term, vote, commit) and ``snap`` (the compaction point: index, term and cum_bytes of the last deleted
  entry; `snapshot_index()`). ``first_index == snapshot_index + 1`` always. It may also hold the node's
  saved snapshot (`save_snapshot`): ``snaphead`` (its index C, term, byte length and CRC32 of its data,
  checksummed like the others) and ``snapdata`` (the opaque record, node/snapshot.py), written together.
  ``snapshot_index() <= C <= commit`` always: the log holds every entry after the saved snapshot.

Atomicity and crashes. Every mutation is one RocksDB WriteBatch: an append writes its entries, the range
delete of a conflicting suffix and the hard state together; a compaction writes the range delete of the
prefix and the new ``snap`` record together. RocksDB applies a batch entirely or not at all after a crash,
so a SIGKILL or power cut at any moment leaves either the state before or the state after each call.
WAL recovery mode is "tolerate corrupted tail records": a record cut short at the WAL's end (a write the
crash interrupted, never acknowledged) is dropped, but damage anywhere else fails the open with
`CorruptLogError` (the default point-in-time mode would silently drop every later record, including
synced, acknowledged ones). Reopening reads ``meta`` and seeks to the last key: no scan of the log.

Fsync policy (`FsyncPolicy`):

* ``ALWAYS`` (default): writes that add or remove entries, or change term/vote, use ``sync=True``: when
  `append` returns, the entries are on stable storage. A commit-index-only change is written without a
  sync (as etcd does): losing its last advance on a power cut is safe, the commit index is re-learned.
* ``NEVER``: nothing is synced by shmraft. UNSAFE: a machine crash (not a process crash: the OS still
  holds the data) may lose writes that were acknowledged. For benchmarks only. `sync()` is a barrier.

Group commit: `append` with many entries is one WriteBatch and one fsync; the raft worker calls it once
per loop iteration with everything pending (entries from several client batches and the hard state).

Reads of the tail. The writer keeps the entries it appended last in memory (`_TailCache`: at most
``TAIL_CACHE_BYTES_MAX`` bytes and ``TAIL_CACHE_ENTRIES_MAX`` entries, a contiguous run ending at the last
index) and serves `entries` from it when the whole range is there: the raft core reads entries back right
after writing them (a follower applies what it appended one message earlier; a leader sends what it just
wrote to a follower that fell a little behind). A suffix replaced by an append, a compaction and an installed
snapshot drop what they replace. A read below the cached run goes to RocksDB as before, with every checksum
verified; the cached run is exactly what was written, so skipping the CRC there checks nothing less.

Retention. The log keeps at most ``retain_entries_max`` entries and ``retain_bytes_max`` bytes of entry
data (``None`` = no bound), but only *committed* entries are ever deleted, so uncommitted entries may exceed
the bounds. When a bound is exceeded after an append/commit advance, the oldest committed entries are
deleted with one range delete down to 15/16 of the bound (hysteresis: not a range delete per append); this
write is not synced by itself (losing it only means the entries come back). `compact(up_to_index)` does the
same explicitly and requires ``up_to_index <= hard_state().commit``. With ``retain_below_snapshot=True`` (a
node's log: storage/nodelog.py) nothing past the saved snapshot's index is ever deleted, so the state below
the log start is never lost; the bounds then wait for the next snapshot (`compaction_wanted()` says so), and
`save_snapshot` performs the compaction they ask for in the same write batch as the snapshot. The term of
the last deleted entry is kept as ``snapshot_term()``, so log matching works at the boundary. Reading
below `first_index()` raises `LogCompactedError(requested, first_index)`: the caller fetches from a newer
offset, or a follower that needs the deleted entries must be re-seeded.

Installing a leader's snapshot (`install_snapshot`, a follower behind the leader's log start) is one synced
WriteBatch too: a range delete of every entry, the ``snap`` record at the snapshot's index and term, the
``snaphead``/``snapdata`` records and the hard state, so a crash leaves the old log or the new one. The new
``snap`` record's cum_bytes is the old log's last cum_bytes (cum_bytes is a node-local running total, used
for "bytes kept" and the verified mark's fingerprint, never compared across nodes): it keeps growing along
the node's history, so an entry written after the install never has the fingerprint of one before it.

Safety assertions (typed errors, never silent): appends must be contiguous (no hole), may not rewrite
compacted entries or replace a committed entry with a different term; entry terms never decrease along the
log and never exceed the hard-state term; the hard-state term never decreases, a vote cast in a term never
changes, commit never decreases nor passes the last index.

Not thread-safe: one owner (the raft worker) per instance; RocksDB's lock file forbids a second opener.
Other processes (the worker serving consumers' fetches) read through `RocksLogReader`, a RocksDB secondary
instance refreshed with `catch_up()`, with the same checksummed read path and errors.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, NoReturn, Self

import rocksdict

from shmraft.constants import APPEND_ENTRIES_MAX, BATCH_PAYLOAD_MAX_BYTES, FRAME_FOOTER_BYTES, FRAME_HEADER_BYTES
from shmraft.raft.types import Entry, HardState, Snapshot

# --- limits and defaults (units in the names) --------------------------------------------------------
FORMAT_VERSION: Final = 1
ENTRY_DATA_MAX_BYTES: Final = BATCH_PAYLOAD_MAX_BYTES + FRAME_HEADER_BYTES + FRAME_FOOTER_BYTES
APPEND_BYTES_MAX: Final = 64 * 1024 * 1024  # entry data in one append; bounds the batch's memory
RETAIN_ENTRIES_MAX_DEFAULT: Final = 1_000_000
RETAIN_BYTES_MAX_DEFAULT: Final = 4 * 1024 * 1024 * 1024
RETAIN_HYSTERESIS_DIVISOR: Final = 16  # compaction brings the log down to (1 - 1/16) of a bound
WRITE_BUFFER_BYTES: Final = 64 * 1024 * 1024  # RocksDB memtable size
WAL_TOTAL_MAX_BYTES: Final = 512 * 1024 * 1024  # RocksDB flushes memtables before the WAL exceeds this
OPEN_FILES_MAX: Final = 512
INFO_LOG_FILES_KEPT: Final = 4
INFO_LOG_FILE_MAX_BYTES: Final = 8 * 1024 * 1024
DATA_DIR_MODE: Final = 0o700
TAIL_CACHE_BYTES_MAX: Final = 8 * 1024 * 1024  # entry data the writer keeps in memory for reads of its tail
TAIL_CACHE_ENTRIES_MAX: Final = 4096  # and at most this many entries (about 1.3 s of full batches at 200 K/s)
VERIFY_PROGRESS_ENTRIES: Final = 4096  # verify() reports progress this often (about 25 MB of full frames)

INDEX_BYTES: Final = 8
_KEY_PAST_ALL: Final = b"\xff" * (INDEX_BYTES + 1)  # sorts after every 8-byte index key: "delete every entry"
_META_CF: Final = "meta"
_KEY_FORMAT: Final = b"format"
_KEY_HARD: Final = b"hard"
_KEY_SNAP: Final = b"snap"
_KEY_SNAPHEAD: Final = b"snaphead"
_KEY_SNAPDATA: Final = b"snapdata"

_ENTRY_HEAD = struct.Struct(">QQ")  # term, cum_bytes
_CRC = struct.Struct(">I")
_ENTRY_HEADER_BYTES: Final = _ENTRY_HEAD.size + _CRC.size  # 20
_U64x3 = struct.Struct(">QQQ")
_U32 = struct.Struct(">I")
_SNAPHEAD = struct.Struct(">QQQI")  # index, term, data length, data CRC32


# --- errors ------------------------------------------------------------------------------------------
class StorageError(Exception):
    """Base of every error raised by the log storage."""


class CorruptLogError(StorageError):
    """Stored data failed a checksum or a structural check: the node must not serve it."""

    def __init__(self, index: int | None, detail: str) -> None:
        where = f" at entry {index}" if index is not None else ""
        super().__init__(f"corrupt log{where}: {detail}")
        self.index = index
        self.detail = detail


class LogCompactedError(StorageError):
    """The requested entries were deleted by retention; read from `first_index` or re-seed the follower."""

    def __init__(self, requested: int, first_index: int) -> None:
        super().__init__(f"entry {requested} was compacted away; the log now starts at {first_index}")
        self.requested = requested
        self.first_index = first_index


class LogOrderError(StorageError):
    """An append or compaction that would break the log's invariants (hole, rewrite of committed data...)."""


class HardStateError(StorageError):
    """A hard state that would go backwards (term, commit), change a vote, or disagree with the log."""


class StorageLimitError(StorageError):
    """A request over a named limit (entry or append size)."""


class StorageLockedError(StorageError):
    """Another process (or instance) holds the database's lock."""


class StorageClosedError(StorageError):
    """The storage was used after `close()`."""


class StorageIOError(StorageError):
    """RocksDB reported an I/O error (the device, not the data): `disk_full` when it was ENOSPC. The
    database may be unusable until reopened (RocksDB enters a read-only background-error state)."""

    def __init__(self, message: str, *, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class FsyncPolicy(enum.Enum):
    """When writes reach stable storage. NEVER is unsafe on machine crashes; for benchmarks only."""

    ALWAYS = "always"
    NEVER = "never"


@dataclass(slots=True)
class StorageStats:
    """Counters since open (this process only)."""

    appends: int = 0
    entries_written: int = 0
    bytes_written: int = 0  # entry data bytes
    synced_writes: int = 0  # writes issued with sync=True (each is one WAL fsync)
    unsynced_writes: int = 0
    truncations: int = 0  # appends that replaced a conflicting suffix
    compactions: int = 0
    entries_compacted: int = 0
    write_seconds: float = 0.0  # wall time spent in RocksDB writes (includes fsync)
    entries_verified: int = 0  # entries checked by verify() (at open: the start-up check's work)
    snapshots_installed: int = 0  # install_snapshot calls (the log replaced by a leader's snapshot)


@dataclass(frozen=True, slots=True)
class SavedSnapshot:
    """The node's saved snapshot: its index C, the term of entry C and the opaque record (node/snapshot.py)."""

    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TableFile:
    """One live SST file of the entries column family: RocksDB's file number and size, and the index range
    of the keys it holds (some may be range-deleted)."""

    number: int
    size_bytes: int
    first_index: int
    last_index: int


# --- encoding helpers ------------------------------------------------------------------------------
def index_key(index: int) -> bytes:
    """The RocksDB key of a log index: 8-byte big-endian, so key order is log order."""
    return index.to_bytes(INDEX_BYTES, "big")


def _encode_entry(key: bytes, term: int, cum_bytes: int, data: bytes) -> bytes:
    head = _ENTRY_HEAD.pack(term, cum_bytes)
    crc = zlib.crc32(data, zlib.crc32(head, zlib.crc32(key)))
    return head + _CRC.pack(crc) + data


def _decode_entry(index: int, key: bytes, value: bytes) -> tuple[int, int, bytes]:
    """(term, cum_bytes, data) of a stored value, after verifying its checksum."""
    if len(value) < _ENTRY_HEADER_BYTES:
        raise CorruptLogError(index, f"value of {len(value)} bytes is shorter than its header")
    term, cum = _ENTRY_HEAD.unpack_from(value)
    (crc,) = _CRC.unpack_from(value, _ENTRY_HEAD.size)
    mv = memoryview(value)
    actual = zlib.crc32(mv[_ENTRY_HEADER_BYTES:], zlib.crc32(mv[: _ENTRY_HEAD.size], zlib.crc32(key)))
    if actual != crc:
        raise CorruptLogError(index, f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})")
    return term, cum, value[_ENTRY_HEADER_BYTES:]


def _encode_meta(payload: bytes) -> bytes:
    return payload + _CRC.pack(zlib.crc32(payload))


def _decode_meta(name: bytes, value: bytes, size: int) -> bytes:
    if len(value) != size + _CRC.size:
        raise CorruptLogError(None, f"meta record {name!r} has {len(value)} bytes, expected {size + 4}")
    payload = value[:size]
    if zlib.crc32(payload) != _CRC.unpack_from(value, size)[0]:
        raise CorruptLogError(None, f"checksum mismatch in meta record {name!r}")
    return payload


DISK_FULL_SIGNS: Final = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
OS_ERROR_SIGN: Final = "(os error "


def _map_rocks_error(exc: Exception, index: int | None = None) -> StorageError:
    """Map rocksdict's bare exceptions (RocksDB status strings) to typed errors."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, rocksdict.DbClosedError):
        return StorageClosedError("the log storage is closed")
    msg = str(exc)
    if msg.startswith("Corruption"):
        return CorruptLogError(index, f"RocksDB: {msg}")
    if "lock" in msg.lower() and msg.startswith("IO error"):
        return StorageLockedError(f"the log database is in use by another process or instance: {msg}")
    disk_full = any(sign in msg for sign in DISK_FULL_SIGNS)
    if msg.startswith("IO error") or disk_full or OS_ERROR_SIGN in msg:
        # "(os error N)" is rocksdict's own file I/O (Rust std::io): a device failure too, never corruption
        return StorageIOError(f"RocksDB: {msg}", disk_full=disk_full)
    return StorageError(f"RocksDB: {msg}")


@contextmanager
def _rocks(index: int | None = None) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # rocksdict raises bare Exception carrying the RocksDB status
        raise _map_rocks_error(exc, index) from exc


def _rocks_options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_paranoid_checks(True)
    # An incomplete record at the WAL's tail (a write cut by the crash, never acknowledged) is dropped; any
    # other damage fails the open. Point-in-time mode would instead silently drop every later, synced and
    # acknowledged, record after a damaged one: a Raft safety violation (lost votes and entries).
    opts.set_wal_recovery_mode(rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records())
    opts.set_atomic_flush(True)  # both column families flush together: one consistent cut
    opts.set_compression_type(rocksdict.DBCompressionType.none())  # frames are opaque, often zstd already
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_total_wal_size(WAL_TOTAL_MAX_BYTES)
    opts.set_max_open_files(OPEN_FILES_MAX)
    opts.set_keep_log_file_num(INFO_LOG_FILES_KEPT)
    opts.set_max_log_file_size(INFO_LOG_FILE_MAX_BYTES)
    return opts


def _check_bound(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 or None, got {value}")


# --- the storage ---------------------------------------------------------------------------------
class _LogView:
    """The read side shared by the writer and the secondary reader: cached metadata and checksummed reads."""

    path: str
    _closed: bool = True
    _saved: tuple[int, int, int, int] | None = None  # the saved snapshot's head: index, term, length, CRC32

    def _open_db(self, access_type: rocksdict.AccessType | None = None) -> None:
        """Open the database and the meta column family; set `_closed` False once the handle exists."""
        opts = _rocks_options()
        with _rocks():
            if access_type is None:
                self._db = rocksdict.Rdict(self.path, opts, column_families={_META_CF: opts})
            else:
                self._db = rocksdict.Rdict(self.path, opts, column_families={_META_CF: opts}, access_type=access_type)
        self._closed = False
        self._meta_cf = self._db.get_column_family_handle(_META_CF)
        self._meta = self._db.get_column_family(_META_CF)
        self._ro = rocksdict.ReadOptions()
        self._ro.set_verify_checksums(True)

    # --- open / recovery ----------------------------------------------------------------------------

    def _load_state(self) -> bool:
        """Rebuild the cached state from meta + one seek-to-last (no scan). False if the log is new."""
        with _rocks():
            fmt = self._meta.get(_KEY_FORMAT, read_opt=self._ro)
            hard = self._meta.get(_KEY_HARD, read_opt=self._ro)
            snap = self._meta.get(_KEY_SNAP, read_opt=self._ro)
        if fmt is None:
            if hard is not None or snap is not None or self._seek_last() is not None:
                raise CorruptLogError(None, "log data present but the format record is missing")
            self._hs = HardState()
            self._saved = None
            self._snap_index = self._snap_term = self._snap_cum = 0
            self._last_index = self._last_term = self._last_cum = 0
            return False
        (version,) = _U32.unpack(_decode_meta(_KEY_FORMAT, fmt, _U32.size))
        if version != FORMAT_VERSION:
            raise StorageError(f"log format version {version} is not supported (expected {FORMAT_VERSION})")
        if hard is None or snap is None:
            raise CorruptLogError(None, "hard-state or snapshot record is missing")
        term, vote, commit = _U64x3.unpack(_decode_meta(_KEY_HARD, hard, _U64x3.size))
        self._hs = HardState(term=term, vote=vote, commit=commit)
        self._snap_index, self._snap_term, self._snap_cum = _U64x3.unpack(_decode_meta(_KEY_SNAP, snap, _U64x3.size))
        self._load_snapshot_head()
        last = self._seek_last()
        if last is None:
            self._last_index, self._last_term, self._last_cum = self._snap_index, self._snap_term, self._snap_cum
        else:
            index, key, value = last
            if index <= self._snap_index:
                raise CorruptLogError(index, f"entry at or below the snapshot index {self._snap_index}")
            term_last, cum_last, _ = _decode_entry(index, key, value)
            self._last_index, self._last_term, self._last_cum = index, term_last, cum_last
            first = self._snap_index + 1
            if first < index:
                t, _ = self._term_cum(first)  # the first entry must be there: no hole at the start
                if t < self._snap_term:
                    raise CorruptLogError(first, "term below the snapshot term")
        if self._last_term > self._hs.term:
            raise CorruptLogError(self._last_index, f"last term {self._last_term} > hard-state term {term}")
        if self._hs.commit > self._last_index:
            raise CorruptLogError(None, f"commit {self._hs.commit} beyond last index {self._last_index}")
        if self._saved is not None:
            c, c_term = self._saved[0], self._saved[1]
            if not self._snap_index <= c <= self._hs.commit:
                where = f"[log start - 1, commit] = [{self._snap_index}, {self._hs.commit}]"
                raise CorruptLogError(None, f"saved snapshot at {c} outside {where}")
            if self.term_at(c) != c_term:
                raise CorruptLogError(c, f"saved snapshot term {c_term} differs from the log's {self.term_at(c)}")
        return True

    def _load_snapshot_head(self) -> None:
        with _rocks():
            head = self._meta.get(_KEY_SNAPHEAD, read_opt=self._ro)
        self._saved = None if head is None else _SNAPHEAD.unpack(_decode_meta(_KEY_SNAPHEAD, head, _SNAPHEAD.size))

    def saved_snapshot_index(self) -> int | None:
        """The index C of the saved snapshot (None if none was ever saved: a log of an older release)."""
        return None if self._saved is None else self._saved[0]

    def load_snapshot(self) -> SavedSnapshot | None:
        """The saved snapshot, its length and CRC32 checked against its head (CorruptLogError if not)."""
        self._check_open()
        if self._saved is None:
            return None
        index, term, size, crc = self._saved
        with _rocks():
            data = self._meta.get(_KEY_SNAPDATA, read_opt=self._ro)
        if data is None:
            raise CorruptLogError(None, f"the saved snapshot at {index} has a head but no data")
        if len(data) != size or zlib.crc32(data) != crc:
            raise CorruptLogError(None, f"the saved snapshot at {index} fails its length/checksum check")
        return SavedSnapshot(index, term, data)

    def snapshot(self) -> Snapshot | None:
        """The saved snapshot as the Raft core sees it (LogStorage.snapshot): what a leader sends a follower
        that needs an entry below first_index(); None if none was saved. Checked like `load_snapshot`."""
        saved = self.load_snapshot()
        return None if saved is None else Snapshot(saved.index, saved.term, saved.data)

    def _seek_last(self) -> tuple[int, bytes, bytes] | None:
        with _rocks():
            it = self._db.iter(self._ro)
            it.seek_to_last()
            if not it.valid():
                it.status()
                return None
            key, value = it.key(), it.value()
        if len(key) != INDEX_BYTES:
            raise CorruptLogError(None, f"foreign key {key!r} in the entries column family")
        return int.from_bytes(key, "big"), key, value

    def hard_state(self) -> HardState:
        return self._hs

    def first_index(self) -> int:
        return self._snap_index + 1

    def last_index(self) -> int:
        return self._last_index

    def snapshot_index(self) -> int:
        return self._snap_index

    def snapshot_term(self) -> int:
        return self._snap_term

    def bytes_kept(self) -> int:
        """Entry data bytes currently held (first_index..last_index)."""
        return self._last_cum - self._snap_cum

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, the snapshot term at snapshot_index(), None if not held."""
        self._check_open()
        if index == self._last_index:
            return self._last_term
        if index == self._snap_index:
            return self._snap_term
        if index < self._snap_index or index > self._last_index:
            return None
        return self._term_cum(index)[0]

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) (hi clamped to last+1), at least one if any, stopping before the data total
        would exceed max_bytes. Raises LogCompactedError if lo < first_index()."""
        self._check_open()
        first = self._snap_index + 1
        if lo < first:
            raise LogCompactedError(lo, first)
        hi = min(hi, self._last_index + 1)
        if lo >= hi:
            return []
        if hi - lo == 1:
            key = index_key(lo)
            with _rocks(lo):
                value = self._db.get(key, read_opt=self._ro)
            if value is None:
                raise CorruptLogError(lo, "entry missing inside [first_index, last_index]")
            term, _, data = _decode_entry(lo, key, value)
            return [Entry(lo, term, data)]
        ro = rocksdict.ReadOptions()
        ro.set_verify_checksums(True)
        ro.set_iterate_upper_bound(index_key(hi))
        out: list[Entry] = []
        total = 0
        expect = lo
        try:
            for key, value in self._db.items(from_key=index_key(lo), read_opt=ro):
                index = int.from_bytes(key, "big")
                if index != expect:
                    self._diagnose_missing(expect, f"hole in the log (next key is {index})")
                term, _, data = _decode_entry(index, key, value)
                total += len(data)
                if out and total > max_bytes:
                    return out
                out.append(Entry(index, term, data))
                expect += 1
        except Exception as exc:
            raise _map_rocks_error(exc, expect) from exc
        if expect != hi:
            self._diagnose_missing(expect, "iteration stopped before the last index")
        return out

    def verify(self, progress: Callable[[], None] | None = None, lo: int | None = None, hi: int | None = None) -> int:
        """Scan entries [lo, hi] (default: the whole log): checksums (RocksDB's block checksums and each
        entry's CRC32), contiguity, non-decreasing terms, cum_bytes continuing from entry lo - 1. Returns
        the entries checked. O(range): at start-up and for fsck-style tools, not for the hot path.
        `progress` is called every VERIFY_PROGRESS_ENTRIES entries (a worker's heartbeat, so a long scan is
        not taken for a stall)."""
        self._check_open()
        first = self._snap_index + 1
        lo = first if lo is None else lo
        hi = self._last_index if hi is None else hi
        if lo < first or hi > self._last_index:
            raise ValueError(f"verify [{lo}, {hi}] outside the log [{first}, {self._last_index}]")
        if lo > hi:
            return 0
        prev_term, cum = (self._snap_term, self._snap_cum) if lo == first else self._term_cum(lo - 1)
        index = lo
        ro = rocksdict.ReadOptions()
        ro.set_verify_checksums(True)
        ro.set_iterate_upper_bound(index_key(hi + 1))
        try:
            for key, value in self._db.items(from_key=index_key(lo), read_opt=ro):
                got = int.from_bytes(key, "big")
                if len(key) != INDEX_BYTES or got != index:
                    self._diagnose_missing(index, f"unexpected key {key!r}")
                term, c, data = _decode_entry(index, key, value)
                if term < prev_term:
                    raise CorruptLogError(index, f"term goes backwards ({term} < {prev_term})")
                cum += len(data)
                if c != cum:
                    raise CorruptLogError(index, f"cum_bytes {c} != {cum}")
                prev_term = term
                index += 1
                if progress is not None and index % VERIFY_PROGRESS_ENTRIES == 0:
                    progress()
        except Exception as exc:
            raise _map_rocks_error(exc, index) from exc
        if index - 1 != hi:
            self._diagnose_missing(index, f"the scan ends at {index - 1}, expected {hi}")
        if hi == self._last_index and (prev_term, cum) != (self._last_term, self._last_cum):
            raise CorruptLogError(hi, f"last entry's term/cum_bytes {prev_term}/{cum} disagree with the index")
        checked = hi - lo + 1
        self._stats.entries_verified += checked
        return checked

    def entry_fingerprint(self, index: int) -> tuple[int, int, int]:
        """(term, cum_bytes, stored CRC32) of a held entry, checksum verified: what identifies it across
        restarts (the CRC covers index, term, cum_bytes and data)."""
        self._check_open()
        if index <= self._snap_index or index > self._last_index:
            raise LogOrderError(f"entry {index} is not held ([{self._snap_index + 1}, {self._last_index}])")
        key = index_key(index)
        with _rocks(index):
            value = self._db.get(key, read_opt=self._ro)
        if value is None:
            raise CorruptLogError(index, "entry missing inside [first_index, last_index]")
        term, cum, _ = _decode_entry(index, key, value)
        return term, cum, _CRC.unpack_from(value, _ENTRY_HEAD.size)[0]

    def table_files(self) -> list[TableFile]:
        """The live SST files that hold log entries (RocksDB metadata only, no I/O on the files). SST files
        are immutable, so a file checked once stays checked unless the disk damages it."""
        self._check_open()
        with _rocks():
            files = self._db.live_files()
        out = []
        for f in files:
            start, end = f["start_key"], f["end_key"]
            if len(start) != INDEX_BYTES or len(end) != INDEX_BYTES:
                continue  # the meta column family's file (read and checksummed whole at every open)
            number = int(os.path.basename(f["name"]).split(".")[0])
            out.append(TableFile(number, f["size"], int.from_bytes(start, "big"), int.from_bytes(end, "big")))
        return out

    def close(self) -> None:
        """Close the database (idempotent). Buffered writes are flushed to the OS by RocksDB."""
        if self._closed:
            return
        self._closed = True
        db = self.__dict__.pop("_db", None)
        self.__dict__.pop("_meta", None)
        self.__dict__.pop("_meta_cf", None)
        if db is not None:
            with _rocks():
                db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError(f"log storage at {self.path} is closed")

    def _term_cum(self, index: int) -> tuple[int, int]:
        """(term, cum_bytes) of a held entry, from RocksDB, checksum verified."""
        key = index_key(index)
        with _rocks(index):
            value = self._db.get(key, read_opt=self._ro)
        if value is None:
            raise CorruptLogError(index, "entry missing inside [first_index, last_index]")
        term, cum, _ = _decode_entry(index, key, value)
        return term, cum

    def _diagnose_missing(self, index: int, what: str) -> NoReturn:
        """An iterator skipped `index`: rocksdict's items() ends silently on a RocksDB error, so a point
        read tells a damaged block (RocksDB "Corruption", mapped) from a genuinely missing key."""
        key = index_key(index)
        with _rocks(index):
            value = self._db.get(key, read_opt=self._ro)
        if value is None:
            raise CorruptLogError(index, f"entry missing inside [first_index, last_index] ({what})")
        _decode_entry(index, key, value)
        raise CorruptLogError(index, f"the iterator could not read this entry ({what})")


class RocksLogStorage(_LogView):
    """`LogStorage` on RocksDB: durable entries, hard state and retention metadata in one database.

    Args:
        path: data directory (created with mode 0700; an existing one is tightened to 0700).
        fsync: `FsyncPolicy.ALWAYS` (default, safe) or `FsyncPolicy.NEVER` (unsafe, benchmarks).
        retain_entries_max: bound on entries kept (committed ones are deleted beyond it); None = unbounded.
        retain_bytes_max: bound on entry data bytes kept; None = unbounded.
        retain_below_snapshot: never delete entries past the saved snapshot (none saved: delete nothing).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy | str = FsyncPolicy.ALWAYS,
        retain_entries_max: int | None = RETAIN_ENTRIES_MAX_DEFAULT,
        retain_bytes_max: int | None = RETAIN_BYTES_MAX_DEFAULT,
        retain_below_snapshot: bool = False,
    ) -> None:
        _check_bound("retain_entries_max", retain_entries_max)
        _check_bound("retain_bytes_max", retain_bytes_max)
        self.path = os.fspath(path)
        self.fsync = FsyncPolicy(fsync)
        self.retain_entries_max = retain_entries_max
        self.retain_bytes_max = retain_bytes_max
        self.retain_below_snapshot = retain_below_snapshot
        self._stats = StorageStats()
        self._closed = True
        self._hs_dirty = False  # a deferred commit-only advance: in `_hs`, not yet in a write (set_hard_state)
        self._tail = _TailCache()

        self._wo_sync = rocksdict.WriteOptions()
        self._wo_sync.sync = self.fsync is FsyncPolicy.ALWAYS
        self._wo_nosync = rocksdict.WriteOptions()
        self._wo_nosync.sync = False
        _make_private_dir(self.path)
        try:
            self._open_db()
            if not self._load_state():
                wb = rocksdict.WriteBatch(raw_mode=True)
                wb.put(_KEY_FORMAT, _encode_meta(_U32.pack(FORMAT_VERSION)), self._meta_cf)
                wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(0, 0, 0)), self._meta_cf)
                wb.put(_KEY_SNAP, _encode_meta(_U64x3.pack(0, 0, 0)), self._meta_cf)
                self._write(wb, sync=True)
                self._stats = StorageStats()
        except BaseException:
            self.close()
            raise

    # --- LogStorage: writes ------------------------------------------------------------------------

    def append(self, entries: list[Entry], hard_state: HardState | None = None, *, sync: bool = True) -> None:
        """Write entries (replacing any existing suffix from entries[0].index) and the hard state in one
        atomic WriteBatch with one fsync (policy ALWAYS): group commit for everything pending.

        `sync=False` leaves the fsync to a later `sync_wal` (the raft worker's persist thread): the write is
        visible to reads at once and survives a process crash (it is in the OS), but is durable only once a
        `sync_wal` that started after it returned; nothing that promises it may leave before that."""
        self._check_open()
        if not entries:
            if hard_state is not None:
                self.set_hard_state(hard_state, sync=sync)
            return
        n = len(entries)
        if n > APPEND_ENTRIES_MAX:
            raise StorageLimitError(f"{n} entries in one append; the limit is {APPEND_ENTRIES_MAX}")
        start = entries[0].index
        if start <= self._snap_index:
            raise LogOrderError(f"append at {start} would rewrite compacted entries (first is {self.first_index()})")
        if start > self._last_index + 1:
            raise LogOrderError(f"append at {start} leaves a hole after last index {self._last_index}")
        old_last = self._last_index
        hs = self._hs if hard_state is None else hard_state
        if start <= self._hs.commit:
            self._check_committed_overlap(entries)
        if start - 1 == self._last_index:
            prev_term, cum = self._last_term, self._last_cum
        elif start - 1 == self._snap_index:
            prev_term, cum = self._snap_term, self._snap_cum
        else:
            prev_term, cum = self._term_cum(start - 1)
        new_last = start + n - 1
        if entries[-1].index != new_last:
            raise LogOrderError(f"entries are not consecutive: {start}..{entries[-1].index} for {n} entries")
        wb = self._new_batch()
        put = wb.put
        nbytes = 0
        index = start
        for e in entries:
            if e.index != index:
                raise LogOrderError(f"entries are not consecutive: expected index {index}, got {e.index}")
            if e.term < prev_term:
                raise LogOrderError(f"term goes backwards at index {index}: {e.term} < {prev_term}")
            size = len(e.data)
            if size > ENTRY_DATA_MAX_BYTES:
                raise StorageLimitError(f"entry {index} has {size} bytes; the limit is {ENTRY_DATA_MAX_BYTES}")
            nbytes += size
            cum += size
            key = index_key(index)
            put(key, _encode_entry(key, e.term, cum, e.data))
            prev_term = e.term
            index += 1
        if nbytes > APPEND_BYTES_MAX:
            raise StorageLimitError(f"{nbytes} bytes in one append; the limit is {APPEND_BYTES_MAX}")
        if new_last < old_last:
            wb.delete_range(index_key(new_last + 1), index_key(old_last + 1))
        if prev_term > hs.term:
            raise HardStateError(
                f"entry term {prev_term} is above the hard-state term {hs.term}: persist the term first"
            )
        if hard_state is not None:
            self._check_hard_state(hard_state, new_last)
            if hard_state != self._hs:
                wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(hs.term, hs.vote, hs.commit)), self._meta_cf)
        elif hs.commit > new_last:
            raise LogOrderError(f"truncation to {new_last} would remove committed entries (commit {hs.commit})")
        self._write(wb, sync=sync)
        st = self._stats
        st.appends += 1
        st.entries_written += n
        st.bytes_written += nbytes
        if start <= old_last:
            st.truncations += 1
        self._last_index, self._last_term, self._last_cum = new_last, prev_term, cum
        self._tail.appended(entries, nbytes)
        self._hs = hs
        self._retain()

    def set_hard_state(self, hard_state: HardState, *, sync: bool = True, defer: bool = False) -> None:
        """Persist term/vote/commit. Synced (policy ALWAYS) if term or vote changed; a commit-only
        advance is written without fsync (safe: commit is re-learned from the leader). `sync=False`: as for
        `append`, durable only after a later `sync_wal`. `defer=True`: a commit-only advance is not written
        now but kept (every read of this object sees it) and carried by the next write of any kind, or by
        `write_deferred` / `close`: a crash may lose it, as it may an unsynced write."""
        self._check_open()
        if hard_state == self._hs:
            return
        self._check_hard_state(hard_state, self._last_index)
        if defer and (hard_state.term, hard_state.vote) == (self._hs.term, self._hs.vote):
            self._hs = hard_state
            self._hs_dirty = True
            return
        wb = self._new_batch()
        hs = hard_state
        wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(hs.term, hs.vote, hs.commit)), self._meta_cf)
        needs_sync = sync and (hs.term, hs.vote) != (self._hs.term, self._hs.vote)
        self._write(wb, sync=needs_sync)
        self._hs = hs
        self._retain()

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """As `_LogView.entries`; the tail this writer appended recently is served from memory."""
        first_cached = self._tail.first_index()
        if first_cached is not None and lo >= first_cached:
            self._check_open()
            hi = min(hi, self._last_index + 1)
            return self._tail.read(lo, hi, max_bytes) if lo < hi else []
        return super().entries(lo, hi, max_bytes)

    def compact(self, up_to_index: int) -> None:
        """Delete committed entries <= up_to_index with one range delete, recording the snapshot
        index/term atomically with it. No-op if already compacted that far."""
        self._check_open()
        if up_to_index > self._hs.commit:
            raise LogOrderError(f"compact({up_to_index}) beyond the commit index {self._hs.commit}")
        if up_to_index <= self._snap_index:
            return
        limit = self._compaction_limit()
        if up_to_index > limit:
            raise LogOrderError(f"compact({up_to_index}) beyond the saved snapshot (compaction stops at {limit})")
        self._compact(up_to_index, sync=True)

    def save_snapshot(self, snapshot: SavedSnapshot) -> None:
        """Persist the node's snapshot at index C (C <= commit; C never goes backwards) with the hard state,
        and, in the same write batch, the compaction the retention bounds ask for up to C: after a crash at
        any point the log and the snapshot agree (first_index - 1 <= C). Synced as appends are."""
        self._check_open()
        c = snapshot.index
        if c > self._hs.commit:
            raise LogOrderError(f"snapshot at {c} beyond the commit index {self._hs.commit}")
        if self._saved is not None and c < self._saved[0]:
            raise LogOrderError(f"snapshot at {c} is older than the saved one at {self._saved[0]}")
        if c < self._snap_index:
            raise LogOrderError(f"snapshot at {c} is below the log start {self.first_index()}")
        if self.term_at(c) != snapshot.term:
            raise LogOrderError(f"snapshot term {snapshot.term} differs from the log's term {self.term_at(c)} at {c}")
        head = (c, snapshot.term, len(snapshot.data), zlib.crc32(snapshot.data))
        wb = self._new_batch()
        wb.put(_KEY_SNAPDATA, snapshot.data, self._meta_cf)
        wb.put(_KEY_SNAPHEAD, _encode_meta(_SNAPHEAD.pack(*head)), self._meta_cf)
        hs = self._hs  # the commit index covering C goes to disk with it (a commit-only advance is unsynced)
        wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(hs.term, hs.vote, hs.commit)), self._meta_cf)
        target = min(self._bounds_target(), c)
        compaction = self._add_compaction(wb, target) if target > self._snap_index else None
        self._write(wb, sync=True)
        self._saved = head
        if compaction is not None:
            self._compacted(*compaction)

    def install_snapshot(self, snapshot: Snapshot, hard_state: HardState) -> None:
        """Replace the whole log by a leader's snapshot in one synced WriteBatch (LogStorage.install_snapshot):
        every entry deleted, the compaction point, the saved snapshot and the hard state set. Afterwards
        first_index() is snapshot.index + 1, last_index() and the commit index are snapshot.index. Refuses
        (LogOrderError, nothing written) a snapshot at or below the commit index: the committed prefix is
        never replaced, and the commit index never moves backwards. HardStateError for a hard state that
        breaks the usual rules (term backwards, a changed vote) or whose commit is not snapshot.index."""
        self.check_install(snapshot, hard_state)
        c, c_term = snapshot.index, snapshot.term
        hs = hard_state
        head = (c, c_term, len(snapshot.data), zlib.crc32(snapshot.data))
        cum = self._last_cum  # node-local and growing: see the module docstring
        wb = self._new_batch()
        wb.delete_range(index_key(0), _KEY_PAST_ALL)
        wb.put(_KEY_SNAP, _encode_meta(_U64x3.pack(c, c_term, cum)), self._meta_cf)
        wb.put(_KEY_SNAPDATA, bytes(snapshot.data), self._meta_cf)
        wb.put(_KEY_SNAPHEAD, _encode_meta(_SNAPHEAD.pack(*head)), self._meta_cf)
        wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(hs.term, hs.vote, hs.commit)), self._meta_cf)
        self._write(wb, sync=True)
        if self._last_index > self._snap_index:
            self._stats.entries_compacted += self._last_index - self._snap_index
        self._stats.snapshots_installed += 1
        self._snap_index, self._snap_term, self._snap_cum = c, c_term, cum
        self._last_index, self._last_term, self._last_cum = c, c_term, cum
        self._tail.clear()
        self._hs = hs
        self._saved = head

    def check_install(self, snapshot: Snapshot, hard_state: HardState) -> None:
        """Raise what `install_snapshot` would refuse (LogOrderError, HardStateError); nothing is written."""
        self._check_open()
        c, c_term = snapshot.index, snapshot.term
        if c <= self._hs.commit:
            raise LogOrderError(f"snapshot at {c} is not above the commit index {self._hs.commit}")
        if hard_state.commit != c:
            raise HardStateError(f"the hard state's commit {hard_state.commit} is not the snapshot's index {c}")
        self._check_hard_state(hard_state, c)
        if c_term > hard_state.term or c_term < self._snap_term:
            raise LogOrderError(
                f"snapshot term {c_term} outside [{self._snap_term}, hard-state term {hard_state.term}]"
            )

    def compaction_wanted(self) -> bool:
        """Whether the retention bounds ask to delete entries past the saved snapshot (a snapshot is due)."""
        return self.retain_below_snapshot and self._bounds_target() > self._compaction_limit()

    def sync(self) -> None:
        """Force everything written so far to stable storage (a barrier, useful with FsyncPolicy.NEVER)."""
        self._check_open()
        t0 = time.perf_counter()
        with _rocks():
            self._db.flush_wal(True)
        self._stats.write_seconds += time.perf_counter() - t0
        self._stats.synced_writes += 1

    def sync_wal(self) -> None:
        """Make every write issued before this call durable (one WAL fsync). Safe to call from another thread
        than the writer's (RocksDB's FlushWAL is thread-safe, and rocksdict releases the GIL in it, unlike in
        a synced `write`); it reads and changes no Python state of this object besides the handle, so the
        caller must not `close` while it runs."""
        db = self.__dict__.get("_db")
        if db is None or self._closed:
            raise StorageClosedError(f"log storage at {self.path} is closed")
        with _rocks():
            db.flush_wal(True)

    def flush(self) -> None:
        """Flush memtables to SST files (tests and tools; not needed for durability)."""
        self._check_open()
        with _rocks():
            self._db.flush(True)

    def stats(self) -> StorageStats:
        """A copy of the counters."""
        return dataclasses.replace(self._stats)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"[{self.first_index()}..{self._last_index}] {self._hs}"
        return f"RocksLogStorage({self.path!r}, fsync={self.fsync.value}, {state})"

    def close(self) -> None:
        """Write a deferred hard state (best effort: a failing device has nothing more to save), then close."""
        if not self._closed and self._hs_dirty and "_db" in self.__dict__:
            with contextlib.suppress(StorageError):
                self.write_deferred()
        self._tail.clear()
        super().close()

    def write_deferred(self) -> bool:
        """Write a deferred commit-only hard state now (unsynced); False when there was none."""
        self._check_open()
        if not self._hs_dirty:
            return False
        self._write(self._new_batch(), sync=False)
        return True

    def _new_batch(self) -> rocksdict.WriteBatch:
        """A WriteBatch that starts with the deferred hard state, if any (a later put of the key in the same
        batch replaces it), so every write carries it to disk (`_write` then clears the flag)."""
        wb = rocksdict.WriteBatch(raw_mode=True)
        if self._hs_dirty:
            hs = self._hs
            wb.put(_KEY_HARD, _encode_meta(_U64x3.pack(hs.term, hs.vote, hs.commit)), self._meta_cf)
        return wb

    def _write(self, wb: rocksdict.WriteBatch, *, sync: bool) -> None:
        """Every batch but the first one of a new log comes from `_new_batch`: after it, disk and `_hs` agree."""
        opts = self._wo_sync if sync else self._wo_nosync
        t0 = time.perf_counter()
        with _rocks():
            self._db.write(wb, opts)
        self._hs_dirty = False
        self._stats.write_seconds += time.perf_counter() - t0
        if opts.sync:
            self._stats.synced_writes += 1
        else:
            self._stats.unsynced_writes += 1

    def _check_committed_overlap(self, entries: list[Entry]) -> None:
        """Entries at or below commit may be re-sent but never replaced by a different term."""
        start = entries[0].index
        end = min(self._hs.commit, self._last_index, entries[-1].index)
        for index in range(start, end + 1):
            held = self.term_at(index)
            if held != entries[index - start].term:
                raise LogOrderError(
                    f"append would replace committed entry {index} (term {held}) with term "
                    f"{entries[index - start].term}"
                )

    def _check_hard_state(self, new: HardState, last_index: int) -> None:
        old = self._hs
        if new.term < old.term:
            raise HardStateError(f"term goes backwards: {new.term} < {old.term}")
        if new.term == old.term and old.vote != 0 and new.vote != old.vote:
            raise HardStateError(f"vote in term {new.term} changes from {old.vote} to {new.vote}")
        if new.commit < old.commit:
            raise HardStateError(f"commit goes backwards: {new.commit} < {old.commit}")
        if new.commit > last_index:
            raise HardStateError(f"commit {new.commit} beyond the last index {last_index}")
        if min(new.term, new.vote, new.commit) < 0:
            raise HardStateError(f"negative field in {new}")

    def _retain(self) -> None:
        """Enforce the retention bounds on committed entries (unsynced write, see module docstring)."""
        target = min(self._bounds_target(), self._compaction_limit())
        if target > self._snap_index:
            self._compact(target, sync=False)

    def _compaction_limit(self) -> int:
        """The highest index compaction may reach: the commit index, and the saved snapshot's if required."""
        if not self.retain_below_snapshot:
            return self._hs.commit
        return self._snap_index if self._saved is None else min(self._saved[0], self._hs.commit)

    def _bounds_target(self) -> int:
        """The index up to which the retention bounds ask to delete (<= commit; the compaction point if none)."""
        commit = self._hs.commit
        if commit <= self._snap_index:
            return self._snap_index
        target = self._snap_index
        emax = self.retain_entries_max
        if emax is not None and self._last_index - self._snap_index > emax:
            keep = emax - emax // RETAIN_HYSTERESIS_DIVISOR
            target = max(target, self._last_index - keep)
        bmax = self.retain_bytes_max
        if bmax is not None and self._last_cum - self._snap_cum > bmax:
            keep_bytes = bmax - bmax // RETAIN_HYSTERESIS_DIVISOR
            target = max(target, self._index_keeping_bytes(keep_bytes, commit))
        return min(target, commit)

    def _index_keeping_bytes(self, keep_bytes: int, commit: int) -> int:
        """Smallest k in [snap, commit] with cum(last) - cum(k) <= keep_bytes (binary search on gets)."""
        need = self._last_cum - keep_bytes  # want cum(k) >= need
        lo, hi = self._snap_index, min(commit, self._last_index)
        if hi <= lo or self._cum_at(hi) < need:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._cum_at(mid) >= need:
                hi = mid
            else:
                lo = mid
        return hi

    def _cum_at(self, index: int) -> int:
        if index == self._snap_index:
            return self._snap_cum
        if index == self._last_index:
            return self._last_cum
        return self._term_cum(index)[1]

    def _compact(self, up_to_index: int, *, sync: bool) -> None:
        wb = self._new_batch()
        compaction = self._add_compaction(wb, up_to_index)
        self._write(wb, sync=sync)
        self._compacted(*compaction)

    def _add_compaction(self, wb: rocksdict.WriteBatch, up_to_index: int) -> tuple[int, int, int]:
        """Put the range delete of entries <= up_to_index and the new compaction point into `wb`."""
        term, cum = (
            (self._last_term, self._last_cum) if up_to_index == self._last_index else self._term_cum(up_to_index)
        )
        wb.delete_range(index_key(self._snap_index + 1), index_key(up_to_index + 1))
        wb.put(_KEY_SNAP, _encode_meta(_U64x3.pack(up_to_index, term, cum)), self._meta_cf)
        return up_to_index, term, cum

    def _compacted(self, up_to_index: int, term: int, cum: int) -> None:
        self._stats.compactions += 1
        self._stats.entries_compacted += up_to_index - self._snap_index
        self._snap_index, self._snap_term, self._snap_cum = up_to_index, term, cum
        self._tail.compacted(up_to_index)


class _TailCache:
    """The last entries the writer appended, as it appended them (bounded by TAIL_CACHE_BYTES_MAX and
    TAIL_CACHE_ENTRIES_MAX): the raft core reads entries right after writing them (committed entries to
    apply, appends to a follower), and serving those from memory saves a RocksDB iteration, a CRC and a copy
    per entry. Only `append` adds to it; a truncation, compaction or installed snapshot drops what they
    replace, so it always holds a contiguous run ending at the last index (or nothing)."""

    __slots__ = ("_entries", "_bytes")

    def __init__(self) -> None:
        self._entries: collections.deque[Entry] = collections.deque()
        self._bytes = 0

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def appended(self, entries: list[Entry], nbytes: int) -> None:
        """Entries just written at entries[0].index (which replaced any suffix from there)."""
        cached = self._entries
        start = entries[0].index
        while cached and cached[-1].index >= start:
            self._bytes -= len(cached.pop().data)
        if cached and cached[-1].index != start - 1:
            self.clear()
        cached.extend(entries)
        self._bytes += nbytes
        while cached and (self._bytes > TAIL_CACHE_BYTES_MAX or len(cached) > TAIL_CACHE_ENTRIES_MAX):
            self._bytes -= len(cached.popleft().data)

    def compacted(self, up_to_index: int) -> None:
        cached = self._entries
        while cached and cached[0].index <= up_to_index:
            self._bytes -= len(cached.popleft().data)

    def first_index(self) -> int | None:
        return self._entries[0].index if self._entries else None

    def read(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), lo at or above `first_index()` and hi at most one past the last: at least one,
        stopping before the data total would exceed max_bytes (as `entries`)."""
        cached = self._entries
        base = cached[0].index
        out: list[Entry] = []
        total = 0
        for i in range(lo - base, hi - base):
            e = cached[i]
            total += len(e.data)
            if out and total > max_bytes:
                break
            out.append(e)
        return out


class RocksLogReader(_LogView):
    """A read-only view of a log written by another process (a RocksDB secondary instance): for the
    worker that serves consumers' fetches without going through the raft worker.

    The view is a consistent snapshot of the writer's state as of the last `catch_up()` (each writer
    call is one WriteBatch, applied whole). Only entries <= `hard_state().commit` are committed; serve
    only those. Reads raise the same errors as the writer's (`LogCompactedError`, `CorruptLogError`).

    Args:
        path: the writer's data directory.
        secondary_dir: a private directory for this reader's RocksDB info log (created with mode 0700).
    """

    def __init__(self, path: str | os.PathLike[str], secondary_dir: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.secondary_dir = os.fspath(secondary_dir)
        self._stats = StorageStats()  # only entries_verified moves here
        if not os.path.isdir(self.path):
            raise StorageError(f"no log at {self.path}")
        _make_private_dir(self.secondary_dir)
        try:
            self._open_db(rocksdict.AccessType.secondary(self.secondary_dir))
            self._load_state()
        except BaseException:
            self.close()
            raise

    def catch_up(self) -> None:
        """Replay what the writer has written since the last call and refresh first/last/commit."""
        self._check_open()
        with _rocks():
            self._db.try_catch_up_with_primary()
        self._load_state()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"[{self.first_index()}..{self._last_index}] {self._hs}"
        return f"RocksLogReader({self.path!r}, {state})"


def _make_private_dir(path: str) -> None:
    """Create the data directory with mode 0700 (and tighten an existing one): the log is private."""
    try:
        os.makedirs(path, mode=DATA_DIR_MODE, exist_ok=True)
        if os.stat(path).st_mode & 0o777 != DATA_DIR_MODE:
            os.chmod(path, DATA_DIR_MODE)
    except OSError as exc:
        raise StorageError(f"cannot create the data directory {path}: {exc}") from exc
