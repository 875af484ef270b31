"""A node's log as the raft worker opens it: RocksDB plus the sidecar files, checked on open, with
quarantine of a corrupt database and the "recovering" mode (docs/DESIGN.md, "Storage faults").

`open_node_log` is the single entry point. It

1. refuses obviously broken directories (RocksDB files but no CURRENT: RocksDB would silently create a new,
   empty database over them);
2. opens RocksDB with paranoid checks (MANIFEST, CURRENT and WAL damage fail the open) and runs a full
   `verify()`: every entry's CRC32 and RocksDB block checksum, index continuity, terms, byte totals;
3. compares the log's end with `LastIndexHint` (a truncated WAL loses synced entries without a RocksDB
   error) and reconciles RocksDB's term/vote with the `HardStateFile` copy (the file is written first,
   so it may be one write ahead; never behind);
4. on corruption renames the log directory to ``log.corrupt-<time>`` (kept for the operator), creates an
   empty log and, from the preserved term, enters recovering mode at recovery term = saved term + 1.

Outcomes: a `NodeLog`; `StorageIOError` (disk full or another I/O error: retry later, nothing is
quarantined); `HardStateLostError` (the log is corrupt and the term/vote copy is missing or damaged too:
the node must not start on its own; the message says what the operator must do).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shmraft.raft.types import Entry, HardState
from shmraft.storage.rocks import (
    CorruptLogError,
    RocksLogStorage,
    StorageError,
    StorageIOError,
    StorageLockedError,
)
from shmraft.storage.sidecar import HardStateFile, LastIndexHint, SavedHardState, SidecarError

LOG_DIR_NAME: Final = "log"
QUARANTINE_INFIX: Final = ".corrupt-"
RECOVER_COMMAND: Final = "shmraft-supervisor recover-node"

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
        self.quarantined: Path | None = None  # set by open_node_log when it quarantined a corrupt log
        self.corruption = ""  # what was found corrupt, for the status and the log

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
    def append(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        self._save_vote(hard_state)
        self.rocks.append(entries, hard_state)
        self._write_hint()

    def set_hard_state(self, hard_state: HardState) -> None:
        self._save_vote(hard_state)
        self.rocks.set_hard_state(hard_state)

    def compact(self, up_to_index: int) -> None:
        self.rocks.compact(up_to_index)

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
        try:
            self._hint.write(self.rocks.last_index())
        except OSError as exc:
            raise StorageIOError(f"cannot write {self._hint.path}: {exc}", disk_full=is_disk_full(exc)) from exc


def open_node_log(
    node_dir: Path,
    *,
    fsync: str = "always",
    retain_entries_max: int | None = None,
    retain_bytes_max: int | None = None,
    verify: bool = True,
    progress: Callable[[], None] | None = None,
) -> NodeLog:
    """Open, check and if need be quarantine a node's log (see the module docstring for the outcomes).
    `verify=False` skips the full scan (a reopen after ENOSPC of a log this process verified already);
    `progress` is called now and then during the scan (the worker's heartbeat)."""
    node_dir = Path(node_dir)
    log_dir = node_log_dir(node_dir)
    kwargs = {"fsync": fsync, "retain_entries_max": retain_entries_max, "retain_bytes_max": retain_bytes_max}
    hs_file = HardStateFile(node_dir)
    try:
        rocks = _open_checked(node_dir, log_dir, kwargs, verify, progress)
    except CorruptLogError as exc:
        return _quarantine_and_recover(node_dir, log_dir, hs_file, kwargs, str(exc))
    try:
        saved = _reconcile(hs_file, rocks)
    except BaseException:
        rocks.close()
        raise
    return NodeLog(node_dir, rocks, saved)


def _open_checked(
    node_dir: Path, log_dir: Path, kwargs: dict, verify: bool, progress: Callable[[], None] | None = None
) -> RocksLogStorage:
    """RocksDB opened and fully verified; CorruptLogError naming what failed; StorageIOError to retry."""
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
        checked = rocks.verify(progress) if verify else -1
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
        log.info(
            "log at %s verified: %d entries [%d..%d] in %.2f s",
            log_dir,
            checked,
            rocks.first_index(),
            rocks.last_index(),
            time.monotonic() - t0,
        )
    except StorageIOError as exc:
        rocks.close()
        if exc.disk_full:
            raise
        raise CorruptLogError(None, f"reading the log failed: {exc}") from exc
    except BaseException:
        rocks.close()
        raise
    return rocks


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
