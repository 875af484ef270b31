"""The core's view of its log: the durable part in LogStorage plus an in-memory tail not yet reported
persisted ("unstable", as in etcd raft).

Entries with index < `offset` are read from storage (which the driver only changes by applying Readies in
order, so its content there equals this view); entries from `offset` on live in `self.unstable`, including
any that replace a stored suffix that the driver has not overwritten yet. `in_progress` is the last index
already handed to the driver for persisting. Per-entry costs are O(1); nothing scans the whole log.

An installed snapshot (InstallSnapshot) replaces the whole log at once: `restore` makes this view start after
the snapshot (`floor_index`, whose term is `floor_term`) before storage knows it; until the driver reports the
snapshot durable (`snapshot_stable`), nothing of this view counts as durable (`stable_last` is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shmraft.raft.errors import InvariantError
from shmraft.raft.types import Entry, LogStorage


class RaftLog:
    """Read access to stable entries through storage, write access only to the unstable tail."""

    __slots__ = (
        "storage",
        "unstable",
        "offset",
        "in_progress",
        "stable_last_term",
        "floor_index",
        "floor_term",
        "snapshot_pending",
        "on_append",
    )

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.offset = last + 1
        self.in_progress = last
        term = storage.term_at(last)
        if term is None:
            raise InvariantError(f"storage holds no term for its last index {last}")
        self.stable_last_term = term
        self.floor_index = 0  # an installed snapshot's index: nothing at or below it is read from storage
        self.floor_term = 0
        self.snapshot_pending: tuple[int, int] | None = None  # (index, term) of a snapshot not yet durable
        # called with the entries of every append, after it replaced any suffix from entries[0].index: the
        # core follows the configuration entries of its log this way (membership changes)
        self.on_append: Callable[[Sequence[Entry]], None] | None = None

    # --- reading ---------------------------------------------------------------------------------------
    def first_index(self) -> int:
        return max(self.storage.first_index(), self.floor_index + 1)

    def last_index(self) -> int:
        return self.offset + len(self.unstable) - 1

    def last_term(self) -> int:
        return self.unstable[-1].term if self.unstable else self.stable_last_term

    def stable_last(self) -> int:
        """Last index reported durable by the driver (and still part of this log); 0 while an installed
        snapshot is not yet durable (storage still holds the log it replaces)."""
        return 0 if self.snapshot_pending is not None else self.offset - 1

    def term(self, index: int) -> int | None:
        """Term at index; None if beyond the last entry or compacted away."""
        if index >= self.offset:
            pos = index - self.offset
            return self.unstable[pos].term if pos < len(self.unstable) else None
        if index == self.offset - 1:
            return self.stable_last_term
        if index <= self.floor_index:
            return self.floor_term if index == self.floor_index else None
        if index == 0:
            return 0
        return self.storage.term_at(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) clamped to the log, at least one if any, stopping before max_bytes is exceeded."""
        hi = min(hi, self.last_index() + 1)
        lo = max(lo, self.first_index())
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if not out or out[-1].index < min(hi, self.offset) - 1:
                return out
            lo = self.offset
        if lo < hi:
            total = sum(len(e.data) for e in out)
            for e in self.unstable[lo - self.offset : hi - self.offset]:
                total += len(e.data)
                if out and total > max_bytes:
                    break
                out.append(e)
        return out

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: is a log ending at (last_index, last_term) at least as up to date as this one?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= term (the fast back-off hint). Terms never decrease along the
        log, so this is a binary search: O(log n) term lookups even across a long conflicting term."""
        index = min(index, self.last_index())
        t = self.term(index)
        if t is None or t <= term:
            return index
        lo = self.first_index() - 1
        t_lo = self.term(lo)
        if lo >= index or t_lo is None or t_lo > term:
            return max(lo, 0)
        hi = index  # invariant: term(lo) <= term < term(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            t_mid = self.term(mid)
            if t_mid is not None and t_mid <= term:
                lo = mid
            else:
                hi = mid
        return lo

    # --- writing ---------------------------------------------------------------------------------------
    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append entries, replacing any suffix from entries[0].index (the caller checked it is allowed)."""
        if not entries:
            return
        first = entries[0].index
        end = self.offset + len(self.unstable)
        if first == end:
            self.unstable.extend(entries)
            if self.on_append is not None:
                self.on_append(entries)
            return
        if first > end:
            raise InvariantError(f"append would leave a hole: first index {first}, last index {end - 1}")
        if first <= self.offset:
            # replaces (part of) the stored log: the driver overwrites it from `first` with the next Ready
            term = self.term(first - 1) if first > 1 else 0
            self.unstable = list(entries)
            self.offset = first
            if term is None:
                raise InvariantError(f"truncation at {first} below the first stored index")
            self.stable_last_term = term
        else:
            del self.unstable[first - self.offset :]
            self.unstable.extend(entries)
        self.in_progress = min(self.in_progress, first - 1)
        if self.on_append is not None:
            self.on_append(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, entries: tuple[Entry, ...], commit: int, ignore_prev_term: bool = False
    ) -> int | None:
        """Follower side of AppendEntries (Raft 5.3): None if the log has no entry (prev_index, prev_term);
        otherwise append what is new, truncating a conflicting suffix (never at or below `commit`), and
        return the index of the last entry the message covers."""
        if ignore_prev_term:  # test-only mutation: only check that the prev entry exists
            if prev_index > self.last_index():
                return None
        elif self.term(prev_index) != prev_term:
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= commit:
                raise InvariantError(f"append would replace committed entry {conflict} (commit {commit})")
            self.append(entries[conflict - entries[0].index :])
        return last_new

    def _find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or differs in term from ours; 0 if all are already held."""
        last = self.last_index()
        for e in entries:
            if e.index > last or self.term(e.index) != e.term:
                return e.index
        return 0

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot at (index, term): the log is then empty, starting after it.
        Storage is replaced by the driver (Ready.snapshot); until `snapshot_stable`, nothing counts durable."""
        self.unstable = []
        self.offset = index + 1
        self.in_progress = index
        self.stable_last_term = term
        self.floor_index = index
        self.floor_term = term
        self.snapshot_pending = (index, term)

    def snapshot_stable(self, index: int, term: int) -> bool:
        """The driver made the snapshot (index, term) durable; False if it is not the one pending."""
        if self.snapshot_pending != (index, term):
            return False
        self.snapshot_pending = None
        return True

    def take_unpersisted(self) -> list[Entry]:
        """Entries not yet handed to the driver; marks them handed out."""
        start = self.in_progress + 1 - self.offset
        if start >= len(self.unstable):
            return []
        out = self.unstable[start:]
        self.in_progress = out[-1].index
        return out

    def stable_to(self, index: int, term: int) -> bool:
        """The driver made entries up to (index, term) durable. Ignored when that entry has since been
        replaced (a truncation after the Ready was taken): a later Ready will report the replacement."""
        if index < self.offset or index > self.in_progress:
            return False
        pos = index - self.offset
        if pos >= len(self.unstable) or self.unstable[pos].term != term:
            return False
        del self.unstable[: pos + 1]
        self.offset = index + 1
        self.stable_last_term = term
        return True
