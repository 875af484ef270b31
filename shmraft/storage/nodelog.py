"""A node's log as the raft worker opens it: RocksDB plus the sidecar files, checked on open, with
quarantine of a corrupt database and the "recovering" mode (docs/DESIGN.md, "Storage faults").

`open_node_log` is the single entry point. It

1. refuses obviously broken directories (RocksDB files but no CURRENT: RocksDB would silently create a new,
   empty database over them);
2. opens RocksDB with paranoid checks (MANIFEST, CURRENT and WAL damage fail the open) and checks what
   was written since the last verified point (`VerifiedMarkFile`): the entries after the mark and every SST
   file the mark does not list, with `verify()` (every entry's CRC32 and RocksDB block checksum, index
   continuity, terms, byte totals), after checking that the mark's entry is still there, unchanged. No
   usable mark (none, damaged, beyond the log, pointing at a different entry) means a full scan, as does
   `full_scan=True` (corruption found while running). The rest relies on the checks on read. A new mark
   is written after the check and, by `NodeLog.persist_mark_if_due`, as the log grows;
3. compares the log's end with `LastIndexHint` (a truncated WAL loses synced entries without a RocksDB
   error) and reconciles RocksDB's term/vote with the `HardStateFile` copy (the file is written first,
   so it may be one write ahead; never behind);
4. reads the saved snapshot (docs/DESIGN.md "Snapshots"): its length and CRC32, then the caller's
   `decode_snapshot`; a damaged or undecodable snapshot is corruption like a damaged entry;
5. on corruption renames the log directory to ``log.corrupt-<time>`` (kept for the operator), creates an
   empty log and, from the preserved term, enters recovering mode at recovery term = saved term + 1.

Outcomes: a `NodeLog`; `StorageIOError` (disk full or another I/O error: retry later, nothing is
quarantined); `HardStateLostError` (the log is corrupt and the term/vote copy is missing or damaged too:
the node must not start on its own; the message says what the operator must do).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shmraft.raft.types import Entry, HardState, Snapshot
from shmraft.storage.rocks import (
    CorruptLogError,
    RocksLogStorage,
    SavedSnapshot,
    StorageError,
    StorageIOError,
    StorageLockedError,
)
from shmraft.storage.sidecar import (
    HardStateFile,
    LastIndexHint,
    SavedHardState,
    SidecarError,
    VerifiedMark,
    VerifiedMarkFile,
)

LOG_DIR_NAME: Final = "log"
QUARANTINE_INFIX: Final = ".corrupt-"
RECOVER_COMMAND: Final = "shmraft-supervisor recover-node"
# the verified mark is advanced at most this often while running: a crash leaves at most this much of full load
# (plus the SST files written since) for the next start to check; one mark costs the raft loop about 0.3 ms
# (median; benchmarks/restart_bench.py "persist_mark")
VERIFIED_MARK_INTERVAL_S: Final = 1.0
# a commit-only hard state is deferred (no RocksDB write of its own on the commit path) and written at least this
# often, when no other write carried it first
DEFERRED_COMMIT_WRITE_INTERVAL_S: Final = 0.1

log = logging.getLogger("shmraft.storage.nodelog")


class HardStateLostError(StorageError):
    """The log is corrupt and the saved term/vote is missing or damaged: starting could vote twice."""


def node_log_dir(node_dir: Path) -> Path:
    """Where a node's RocksDB log lives."""
    return Path(node_dir) / LOG_DIR_NAME


def is_disk_full(exc: BaseException) -> bool:
    """Whether a storage failure was ENOSPC (RocksDB's "No space left on device" or an OSError)."""
    if isinstance(exc, StorageIOError):
        return exc.disk_full
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = exc.__cause__
    return cause is not None and is_disk_full(cause)


@dataclass(slots=True)
class OpenCheck:
    """What the start-up check did: for the log line, the tests and benchmarks/restart_bench.py."""

    entries_verified: int = 0  # entries scanned (the check's cost; the whole log on a full scan)
    full_scan: bool = True
    reason: str = ""  # why the scan was full ("" when it resumed from the mark)
    files_checked: int = 0  # SST files written since the mark, scanned whole
    seconds: float = 0.0


class NodeLog:
    """`LogStorage` over RocksDB that also keeps the sidecar files: the term/vote copy is written (fsync,
    atomic) before RocksDB whenever term or vote change, the last-index hint after every write.

    OSError from the sidecar files is raised as `StorageIOError` (with `disk_full` set for ENOSPC)."""

    def __init__(self, node_dir: Path, rocks: RocksLogStorage, saved: SavedHardState) -> None:
        self.node_dir = Path(node_dir)
        self.rocks = rocks
        self.saved = saved
        self._hs_file = HardStateFile(self.node_dir)
        self._hint = LastIndexHint(self.node_dir)
        self._mark_file = VerifiedMarkFile(self.node_dir)
        self._mark: VerifiedMark | None = None  # the last mark written or found valid
        self._mark_due = time.monotonic() + VERIFIED_MARK_INTERVAL_S
        self._deferred_due = 0.0
        self.open_check = OpenCheck()  # set by open_node_log
        self.quarantined: Path | None = None  # set by open_node_log when it quarantined a corrupt log
        self.corruption = ""  # what was found corrupt, for the status and the log
        self.snapshot_record: Any = None  # the saved snapshot as `decode_snapshot` returned it (None: none saved)
        # a last index the log reaches in every state a crash may leave (what the hint holds): unsynced
        # writes (`append(sync=False)`) raise it only through `synced`
        self._durable_last = rocks.last_index()

    # --- recovering mode ---------------------------------------------------------------------------------
    @property
    def recovery_term(self) -> int:
        """The core's recovery term (0 when the node is not recovering)."""
        return self.saved.recovery_term if self.saved.recovering else 0

    def end_recovery(self) -> None:
        """The core caught up: persist that votes may be granted again."""
        self._save(SavedHardState(self.saved.term, self.saved.vote, False, 0))

    # --- LogStorage: reads delegate ----------------------------------------------------------------------
    def hard_state(self) -> HardState:
        return self.rocks.hard_state()

    def first_index(self) -> int:
        return self.rocks.first_index()

    def last_index(self) -> int:
        return self.rocks.last_index()

    def snapshot_index(self) -> int:
        return self.rocks.snapshot_index()

    def snapshot_term(self) -> int:
        return self.rocks.snapshot_term()

    def term_at(self, index: int) -> int | None:
        return self.rocks.term_at(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        return self.rocks.entries(lo, hi, max_bytes)

    # --- LogStorage: writes ------------------------------------------------------------------------------
    def append(self, entries: list[Entry], hard_state: HardState | None = None, *, sync: bool = True) -> None:
        """rocks.append with the sidecars. `sync=False` (the raft worker's persist thread syncs later): the
        hint is lowered first if the write shortens the log, and raised only by `synced` once a `sync_wal`
        covered the write, so it is never ahead of a log a crash may leave."""
        self._save_vote(hard_state)
        if sync:
            self.rocks.append(entries, hard_state)
            self._write_hint()
            return
        if entries and entries[-1].index < self._durable_last:
            self._set_hint(entries[-1].index)
        self.rocks.append(entries, hard_state, sync=False)

    def set_hard_state(self, hard_state: HardState, *, sync: bool = True, defer: bool = False) -> None:
        """rocks.set_hard_state with the vote sidecar; `defer`: a commit-only advance waits for the next write
        (or `write_deferred_if_due`)."""
        self._save_vote(hard_state)
        self.rocks.set_hard_state(hard_state, sync=sync, defer=defer)

    def write_deferred_if_due(self) -> None:
        """Write a deferred commit-only hard state if DEFERRED_COMMIT_WRITE_INTERVAL_S has passed since the last
        check (one clock read otherwise): the on-disk commit index lags the node's by about that at most."""
        now = time.monotonic()
        if now >= self._deferred_due:
            self._deferred_due = now + DEFERRED_COMMIT_WRITE_INTERVAL_S
            self.rocks.write_deferred()

    def sync_wal(self) -> None:
        """Make every write issued so far durable (rocks.sync_wal; callable from the persist thread)."""
        self.rocks.sync_wal()

    def synced(self, durable_last: int) -> None:
        """A `sync_wal` made the unsynced writes up to some point durable: `durable_last` is a last index the
        log reaches in every state a crash may leave now (the caller takes the smallest last index of that
        write and of every later write still unsynced, since a later one may shorten the log)."""
        self._set_hint(durable_last)

    def compact(self, up_to_index: int) -> None:
        self.rocks.compact(up_to_index)

    # --- the saved snapshot ------------------------------------------------------------------------------
    def save_snapshot(self, snapshot: SavedSnapshot) -> None:
        """Persist the snapshot (and the compaction it allows) in one write batch: rocks.save_snapshot."""
        self.rocks.save_snapshot(snapshot)

    def saved_snapshot_index(self) -> int | None:
        return self.rocks.saved_snapshot_index()

    def snapshot(self) -> Snapshot | None:
        """LogStorage.snapshot: the saved snapshot's bytes, for a follower behind the log start, with the cluster
        configuration at its index (`Snapshot.config`) taken from the decoded record (`snapshot_record`, whose
        `configuration` field holds it; empty when the record is not of that snapshot)."""
        snap = self.rocks.snapshot()
        rec = self.snapshot_record
        if snap is None or rec is None or getattr(rec, "index", None) != snap.index:
            return snap
        config = bytes(getattr(rec, "configuration", b""))
        return dataclasses.replace(snap, config=config) if config else snap

    def install_snapshot(self, snapshot: Snapshot, hard_state: HardState) -> None:
        """Replace the log by a leader's snapshot (rocks.install_snapshot, one synced write), keeping the
        sidecars true at every point of a crash: the term/vote copy is written first (as for any change of
        term or vote); the last-index hint is lowered to the smaller of the old and new last index before
        the write and set to the new one after it (never ahead of the log, whichever state a crash leaves);
        the verified mark, which names an entry of the old log, is removed first (the next start scans the
        new log whole: it holds only what was appended since the install). The caller sets `snapshot_record`
        (the decoded record) once this returns."""
        self.rocks.check_install(snapshot, hard_state)  # refused before any sidecar changes
        self._save_vote(hard_state)
        try:
            self._hint.write(min(self.rocks.last_index(), snapshot.index, self._durable_last))
            self._mark_file.remove()
        except OSError as exc:
            raise StorageIOError(f"cannot update the sidecar files: {exc}", disk_full=is_disk_full(exc)) from exc
        self._durable_last = min(self.rocks.last_index(), snapshot.index, self._durable_last)
        self._mark = None
        self.rocks.install_snapshot(snapshot, hard_state)
        self._write_hint()

    def compaction_wanted(self) -> bool:
        """The retention bounds wait for a newer snapshot."""
        return self.rocks.compaction_wanted()

    # --- the verified mark -----------------------------------------------------------------------------------
    def persist_mark_if_due(self) -> None:
        """Advance the verified mark if VERIFIED_MARK_INTERVAL_S has passed (one clock read otherwise): the
        raft worker calls this once per loop, so the next start checks only what was written since."""
        now = time.monotonic()
        if now >= self._mark_due:
            self._mark_due = now + VERIFIED_MARK_INTERVAL_S
            self.persist_mark()

    def persist_mark(self, files: frozenset[tuple[int, int]] | None = None) -> VerifiedMark | None:
        """Record that entries up to min(commit, last) and the SST files live now (or `files`) are known
        good: the entries were checked at open or written, synced and committed by this node since (so never
        rewritten), the files are immutable. A failure to write is logged, not raised (the mark only saves
        time; an older one stays true). Returns the mark written, None if there was nothing to mark."""
        rocks = self.rocks
        index = min(rocks.hard_state().commit, rocks.last_index(), self._durable_last)  # synced entries only
        if index <= rocks.snapshot_index():
            return None
        if files is None:
            files = frozenset((f.number, f.size_bytes) for f in rocks.table_files())
        mark = VerifiedMark(index, *rocks.entry_fingerprint(index), files)
        if mark == self._mark:
            return mark
        try:
            self._mark_file.write(mark)
        except OSError as exc:
            log.warning("cannot write %s (the next start checks more of the log): %s", self._mark_file.path, exc)
            return None
        self._mark = mark
        return mark

    def close(self) -> None:
        """Close RocksDB and the hint file; errors of a failed device are swallowed (nothing to save)."""
        self._hint.close()
        try:
            self.rocks.close()
        except StorageError as exc:
            log.debug("closing the log: %s", exc)

    # --- internals ---------------------------------------------------------------------------------------
    def _save_vote(self, hs: HardState | None) -> None:
        if hs is not None and (hs.term, hs.vote) != (self.saved.term, self.saved.vote):
            self._save(SavedHardState(hs.term, hs.vote, self.saved.recovering, self.saved.recovery_term))

    def _save(self, state: SavedHardState) -> None:
        try:
            self._hs_file.write(state)
        except OSError as exc:
            raise StorageIOError(
                f"cannot save the hard state to {self._hs_file.path}: {exc}", disk_full=is_disk_full(exc)
            ) from exc
        self.saved = state

    def _write_hint(self) -> None:
        self._set_hint(self.rocks.last_index())

    def _set_hint(self, last_index: int) -> None:
        try:
            self._hint.write(last_index)
        except OSError as exc:
            raise StorageIOError(f"cannot write {self._hint.path}: {exc}", disk_full=is_disk_full(exc)) from exc
        self._durable_last = last_index


def open_node_log(
    node_dir: Path,
    *,
    fsync: str = "always",
    retain_entries_max: int | None = None,
    retain_bytes_max: int | None = None,
    verify: bool = True,
    full_scan: bool = False,
    progress: Callable[[], None] | None = None,
    decode_snapshot: Callable[[SavedSnapshot], Any] | None = None,
) -> NodeLog:
    """Open, check and if need be quarantine a node's log (see the module docstring for the outcomes).
    `verify=False` skips the scan (a reopen after ENOSPC of a log this process verified already);
    `full_scan=True` ignores the verified mark (corruption was found while running: check everything);
    `progress` is called now and then during the scan (the worker's heartbeat); `decode_snapshot` turns the
    saved snapshot into `NodeLog.snapshot_record` (a ValueError from it is corruption). Retention never deletes
    past the saved snapshot (RocksLogStorage's ``retain_below_snapshot``)."""
    node_dir = Path(node_dir)
    log_dir = node_log_dir(node_dir)
    kwargs = {
        "fsync": fsync,
        "retain_entries_max": retain_entries_max,
        "retain_bytes_max": retain_bytes_max,
        "retain_below_snapshot": True,
    }
    hs_file = HardStateFile(node_dir)
    try:
        rocks, check, files = _open_checked(node_dir, log_dir, kwargs, verify, full_scan, progress)
        try:
            snapshot = _read_snapshot(rocks, decode_snapshot)
        except BaseException:
            rocks.close()
            raise
    except CorruptLogError as exc:
        return _quarantine_and_recover(node_dir, log_dir, hs_file, kwargs, str(exc))
    try:
        saved = _reconcile(hs_file, rocks)
    except BaseException:
        rocks.close()
        raise
    nl = NodeLog(node_dir, rocks, saved)
    nl.open_check = check
    nl.snapshot_record = snapshot
    if files is not None:
        try:
            nl.persist_mark(files)
        except StorageError as exc:  # the log was just checked; a read failing now is for the worker to meet
            log.warning("no verified mark written: %s", exc)
    return nl


def _open_checked(
    node_dir: Path,
    log_dir: Path,
    kwargs: dict,
    verify: bool,
    full_scan: bool,
    progress: Callable[[], None] | None = None,
) -> tuple[RocksLogStorage, OpenCheck, frozenset[tuple[int, int]] | None]:
    """RocksDB opened and checked (see `_check_since_mark`): the storage, what the check did and the SST
    files known good now (None when not verified); CorruptLogError naming what failed; StorageIOError to
    retry."""
    if log_dir.is_dir() and not (log_dir / "CURRENT").exists():
        names = os.listdir(log_dir)
        if any(n.startswith("MANIFEST-") or n.endswith((".sst", ".log")) and n != "LOG" for n in names):
            raise CorruptLogError(None, f"{log_dir}/CURRENT is missing but the database files are there")
    try:
        rocks = RocksLogStorage(log_dir, **kwargs)
    except (CorruptLogError, StorageIOError, StorageLockedError):
        raise
    except StorageError as exc:  # e.g. an unsupported format record: damage, not a device failure
        raise CorruptLogError(None, str(exc)) from exc
    try:
        t0 = time.monotonic()
        check, files = OpenCheck(0, False, "not verified"), None
        if verify:
            check, files = _check_since_mark(VerifiedMarkFile(node_dir), rocks, full_scan, progress)
        hint = LastIndexHint(node_dir)
        try:
            recorded = hint.read()
        except SidecarError as exc:
            log.warning("ignoring %s", exc)  # only a hint: its own damage proves nothing about the log
            recorded = None
        if recorded is not None and recorded > rocks.last_index():
            raise CorruptLogError(
                rocks.last_index() + 1,
                f"the log ends at {rocks.last_index()} but index "
                f"{recorded} had been durably written (truncated WAL or lost files)",
            )
        check.seconds = time.monotonic() - t0
        log.info(
            "log at %s checked: %d entries of [%d..%d] (%s; %d SST files written since the mark) in %.2f s",
            log_dir,
            check.entries_verified,
            rocks.first_index(),
            rocks.last_index(),
            f"full scan: {check.reason}" if check.full_scan else "since the verified mark",
            check.files_checked,
            check.seconds,
        )
    except StorageIOError as exc:
        rocks.close()
        if exc.disk_full:
            raise
        raise CorruptLogError(None, f"reading the log failed: {exc}") from exc
    except BaseException:
        rocks.close()
        raise
    return rocks, check, files


def _read_snapshot(rocks: RocksLogStorage, decode: Callable[[SavedSnapshot], Any] | None) -> Any:
    """The saved snapshot, decoded; CorruptLogError if it is damaged or does not decode; None if none."""
    try:
        saved = rocks.load_snapshot()
        return None if saved is None or decode is None else decode(saved)
    except ValueError as exc:
        raise CorruptLogError(None, f"the saved snapshot: {exc}") from exc
    except StorageIOError as exc:
        if exc.disk_full:
            raise
        raise CorruptLogError(None, f"reading the saved snapshot failed: {exc}") from exc


def _check_since_mark(
    mark_file: VerifiedMarkFile, rocks: RocksLogStorage, full_scan: bool, progress: Callable[[], None] | None
) -> tuple[OpenCheck, frozenset[tuple[int, int]]]:
    """Scan the entries after the verified mark and every SST file it does not list (the whole log without
    a usable mark); returns what was done and the SST files known good afterwards (those live both before
    and after the scan: every one of them was listed by the mark or scanned). CorruptLogError on damage."""
    before = rocks.table_files()
    mark, reason = (None, "requested") if full_scan else _usable_mark(mark_file, rocks)
    if mark is None:
        check = OpenCheck(rocks.verify(progress), True, reason)
    else:
        first, last = rocks.first_index(), rocks.last_index()
        new = [f for f in before if (f.number, f.size_bytes) not in mark.files]
        ranges = [(mark.index + 1, last)]
        ranges += [(max(f.first_index, first), min(f.last_index, mark.index)) for f in new]
        check = OpenCheck(0, False, "", len(new))
        for lo, hi in _merged(ranges):
            check.entries_verified += rocks.verify(progress, lo, hi)
    after = {(f.number, f.size_bytes) for f in rocks.table_files()}
    return check, frozenset((f.number, f.size_bytes) for f in before) & after


def _usable_mark(mark_file: VerifiedMarkFile, rocks: RocksLogStorage) -> tuple[VerifiedMark | None, str]:
    """The verified mark if it still describes this log, else None and why the whole log must be scanned.
    A damaged entry at the mark is corruption (CorruptLogError), not a reason to scan."""
    try:
        mark = mark_file.read()
    except SidecarError as exc:
        log.warning("ignoring the verified mark: %s", exc)
        return None, f"unreadable mark ({exc})"
    if mark is None:
        return None, "no verified mark"
    if mark.index > rocks.last_index():
        return None, f"the mark ({mark.index}) is beyond the log's end ({rocks.last_index()})"
    if mark.index <= rocks.snapshot_index():
        return None, f"the mark ({mark.index}) is below the log's start ({rocks.first_index()})"
    held = rocks.entry_fingerprint(mark.index)
    if held != (mark.term, mark.cum_bytes, mark.entry_crc):
        return None, (
            f"entry {mark.index} is not the marked one (term/cum_bytes/crc {held[0]}/{held[1]}/{held[2]:#010x}, "
            f"marked {mark.term}/{mark.cum_bytes}/{mark.entry_crc:#010x})"
        )
    return mark, ""


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive index ranges sorted and merged (empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _reconcile(hs_file: HardStateFile, rocks: RocksLogStorage) -> SavedHardState:
    """Bring RocksDB's term/vote and the sidecar copy into agreement; the saved state."""
    hs = rocks.hard_state()
    try:
        saved = hs_file.read()
    except SidecarError as exc:
        raise HardStateLostError(
            f"{exc}; the log itself is intact but the term/vote copy cannot be trusted: stop the node and "
            f"run `{RECOVER_COMMAND} --node N --min-term T` with T above every term the other nodes report "
            "(shmraft-supervisor status)"
        ) from exc
    if saved is None:
        saved = SavedHardState(hs.term, hs.vote)  # a new node, or a log written before the copy existed
        _write_saved(hs_file, saved)
        return saved
    file_ahead = saved.term > hs.term or (saved.term == hs.term and hs.vote == 0 and saved.vote != 0)
    rocks_ahead = hs.term > saved.term or (saved.term == hs.term and saved.vote == 0 and hs.vote != 0)
    if saved.term == hs.term and 0 not in (saved.vote, hs.vote) and saved.vote != hs.vote:
        raise HardStateLostError(
            f"the log says vote {hs.vote} and {hs_file.path} says vote {saved.vote} in "
            f"term {hs.term}: run `{RECOVER_COMMAND}` (see docs/DESIGN.md)"
        )
    if file_ahead:  # a crash between the two writes: the file is the newer one
        log.info("term/vote %d/%d from %s (the log had %d/%d)", saved.term, saved.vote, hs_file.path, hs.term, hs.vote)
        rocks.set_hard_state(HardState(saved.term, saved.vote, hs.commit))
    elif rocks_ahead:  # cannot happen with the write order; repair the copy from the verified log
        log.warning(
            "%s was behind the log (%d/%d < %d/%d): rewritten", hs_file.path, saved.term, saved.vote, hs.term, hs.vote
        )
        saved = SavedHardState(hs.term, hs.vote, saved.recovering, saved.recovery_term)
        _write_saved(hs_file, saved)
    return saved


def _quarantine_and_recover(node_dir: Path, log_dir: Path, hs_file: HardStateFile, kwargs: dict, what: str) -> NodeLog:
    try:
        saved = hs_file.read()
    except SidecarError as exc:
        raise HardStateLostError(_lost_message(log_dir, what, str(exc))) from exc
    if saved is None:
        raise HardStateLostError(_lost_message(log_dir, what, f"{hs_file.path} does not exist"))
    quarantined = quarantine(log_dir)
    log.error(
        "CORRUPT LOG: %s; moved to %s (kept for the operator); starting empty in recovering mode", what, quarantined
    )
    LastIndexHint(node_dir).remove()
    VerifiedMarkFile(node_dir).remove()
    term = saved.term + 1
    recovering = SavedHardState(term, 0, True, term)
    _write_saved(hs_file, recovering)
    rocks = RocksLogStorage(log_dir, **kwargs)
    try:
        rocks.set_hard_state(HardState(term, 0, 0))
    except BaseException:
        rocks.close()
        raise
    nl = NodeLog(node_dir, rocks, recovering)
    nl.quarantined = quarantined
    nl.corruption = what
    return nl


def quarantine(log_dir: Path) -> Path:
    """Rename a log directory to ``<dir>.corrupt-<UTC time>`` (a unique name); returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = log_dir.with_name(f"{log_dir.name}{QUARANTINE_INFIX}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = log_dir.with_name(f"{log_dir.name}{QUARANTINE_INFIX}{stamp}-{n}")
    if log_dir.exists():
        os.rename(log_dir, target)
    return target


def reset_for_recovery(node_dir: Path, min_term: int) -> Path | None:
    """The operator step when the term/vote copy is lost (`shmraft-supervisor recover-node`): quarantine
    the log (if any) and write a recovering hard state at `min_term`, which must exceed every term any
    node of the cluster reports. The node must be stopped. Returns the quarantine path (None if no log)."""
    if min_term < 1:
        raise ValueError(f"min_term: expected >= 1, got {min_term}")
    log_dir = node_log_dir(node_dir)
    moved = quarantine(log_dir) if log_dir.exists() else None
    LastIndexHint(node_dir).remove()
    VerifiedMarkFile(node_dir).remove()
    _write_saved(HardStateFile(node_dir), SavedHardState(min_term, 0, True, min_term))
    return moved


def _write_saved(hs_file: HardStateFile, saved: SavedHardState) -> None:
    try:
        hs_file.write(saved)
    except OSError as exc:
        raise StorageIOError(
            f"cannot save the hard state to {hs_file.path}: {exc}", disk_full=is_disk_full(exc)
        ) from exc


def _lost_message(log_dir: Path, what: str, why: str) -> str:
    return (
        f"CORRUPT LOG and no usable copy of the term/vote ({why}): {what}. The node refuses to start: "
        f"it could vote twice in a term. Stop the node, read every other node's term "
        f"(shmraft-supervisor status), then run `{RECOVER_COMMAND} --node N --min-term T` with T greater "
        f"than all of them; the corrupt log at {log_dir} is moved aside, not deleted, and the node "
        "re-fetches the log from the others"
    )
