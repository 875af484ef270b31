"""An in-memory LogStorage with the crash semantics of the RocksDB storage, for the simulator and tests.

Fsync policies, as in shmraft.storage.rocks:

* ``always``: every append, and every hard-state change of term or vote, is durable when the call returns.
  A commit-only hard-state change is not synced (as etcd and the RocksDB storage do): a power loss may
  take the commit index back to its last synced value, which Raft re-learns.
* ``never``: nothing is durable until `sync()` (think of the OS writing back every few seconds). A power
  loss returns to the state of the last sync: acknowledged entries may be lost. Unsafe, modelled so that
  the simulator can show it.

`crash(power_loss=False)` models a process kill (the OS keeps what was written: nothing is lost);
`crash(power_loss=True)` a machine crash (unsynced writes are lost).

Snapshots: `save_snapshot(snapshot, compact_to)` saves the state machine's snapshot at a committed index and
compacts up to `compact_to` (at most the snapshot's index) in one atomic write, as the RocksDB storage's
`save_snapshot` does, so `snapshot().index >= snapshot_index()` holds whenever a snapshot is saved; plain
`compact` (no snapshot) drops a saved snapshot it would pass. `install_snapshot` replaces the whole log by a
leader's snapshot in one atomic write. Both are durable at once under `always` and at the next `sync()`
under `never`; a power loss returns to the old state or the new one, never a mix.
"""

from __future__ import annotations

from shmraft.constants import FSYNC_POLICIES
from shmraft.raft.errors import InvariantError
from shmraft.raft.types import Entry, HardState, Snapshot


class MemStorage:
    """LogStorage in Python lists. entries[k] has index snapshot_index + 1 + k."""

    def __init__(self, fsync: str = "always") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync: expected one of {FSYNC_POLICIES}, got {fsync!r}")
        self.fsync = fsync
        self._entries: list[Entry] = []
        self._hard = HardState()
        self._snap_index = 0
        self._snap_term = 0
        # the state a power loss returns to
        # under "always" this aliases self._entries (every write is durable); under "never" a copy at sync()
        self._durable_entries: list[Entry] = self._entries
        self._durable_hard = HardState()
        self._durable_snap = (0, 0)
        self._snapshot: Snapshot | None = None
        self._durable_snapshot: Snapshot | None = None
        self.closed = False

    # --- LogStorage: reading -----------------------------------------------------------------------------
    def hard_state(self) -> HardState:
        return self._hard

    def first_index(self) -> int:
        return self._snap_index + 1

    def last_index(self) -> int:
        return self._snap_index + len(self._entries)

    def snapshot_index(self) -> int:
        return self._snap_index

    def snapshot_term(self) -> int:
        return self._snap_term

    def term_at(self, index: int) -> int | None:
        if index == self._snap_index:
            return self._snap_term
        pos = index - self._snap_index - 1
        if pos < 0 or pos >= len(self._entries):
            return None
        return self._entries[pos].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo <= self._snap_index:
            raise IndexError(f"entries from {lo}: compacted up to {self._snap_index}")
        hi = min(hi, self.last_index() + 1)
        out: list[Entry] = []
        total = 0
        for e in self._entries[lo - self._snap_index - 1 : hi - self._snap_index - 1]:
            total += len(e.data)
            if out and total > max_bytes:
                break
            out.append(e)
        return out

    # --- LogStorage: writing -----------------------------------------------------------------------------
    def append(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        if entries:
            first = entries[0].index
            if first <= self._snap_index or first > self.last_index() + 1:
                raise InvariantError(f"append at {first}: log holds {self.first_index()}..{self.last_index()}")
            if first <= self._hard.commit and self.term_at(first) != entries[0].term:
                raise InvariantError(f"append at {first} replaces a committed entry (commit {self._hard.commit})")
            for a, b in zip(entries, entries[1:], strict=False):
                if b.index != a.index + 1 or b.term < a.term:
                    raise InvariantError(f"entries not contiguous or terms decreasing at {b.index}")
            del self._entries[first - self._snap_index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._set_hard(hard_state)
        if self.fsync == "always" and (entries or (hard_state is not None and not self._commit_only(hard_state))):
            self._durable_hard = self._hard  # entries are durable as written (see _durable_entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self._set_hard(hard_state)
        if self.fsync == "always" and not self._commit_only(hard_state):
            self._durable_hard = self._hard

    def compact(self, up_to_index: int) -> None:
        if up_to_index > self._hard.commit:
            raise InvariantError(f"compact to {up_to_index} beyond commit {self._hard.commit}")
        if up_to_index <= self._snap_index:
            return
        term = self.term_at(up_to_index)
        assert term is not None
        del self._entries[: up_to_index - self._snap_index]
        self._snap_index, self._snap_term = up_to_index, term
        if self._snapshot is not None and self._snapshot.index < up_to_index:
            self._snapshot = None  # it no longer covers the log start: nothing to send a lagging follower
        if self.fsync == "always":
            self._durable_snap = (self._snap_index, self._snap_term)
            self._durable_snapshot = self._snapshot

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def save_snapshot(self, snapshot: Snapshot, compact_to: int = 0) -> None:
        """Save `snapshot` (of a committed index this log holds) and compact up to min(compact_to, its index),
        atomically; the hard state written so far becomes durable with it (one write batch)."""
        if snapshot.index > self._hard.commit:
            raise InvariantError(f"snapshot at {snapshot.index} beyond commit {self._hard.commit}")
        if snapshot.index < self._snap_index:
            raise InvariantError(f"snapshot at {snapshot.index} below the log start {self._snap_index + 1}")
        if self.term_at(snapshot.index) != snapshot.term:
            raise InvariantError(
                f"snapshot at {snapshot.index} of term {snapshot.term}: log has {self.term_at(snapshot.index)}"
            )
        up_to = min(compact_to, snapshot.index)
        if up_to > self._snap_index:
            term = self.term_at(up_to)
            assert term is not None
            del self._entries[: up_to - self._snap_index]
            self._snap_index, self._snap_term = up_to, term
        self._snapshot = snapshot
        if self.fsync == "always":
            self._durable_snap = (self._snap_index, self._snap_term)
            self._durable_snapshot = snapshot
            self._durable_hard = self._hard

    def install_snapshot(self, snapshot: Snapshot, hard_state: HardState) -> None:
        if hard_state.commit < snapshot.index:
            raise InvariantError(f"install at {snapshot.index} with commit {hard_state.commit} below it")
        if snapshot.index < self._hard.commit:
            raise InvariantError(f"install at {snapshot.index} below commit {self._hard.commit}")
        self._entries.clear()  # in place: under "always" the durable list is this one
        self._snap_index, self._snap_term = snapshot.index, snapshot.term
        self._snapshot = snapshot
        self._set_hard(hard_state)
        if self.fsync == "always":
            self._durable_snap = (self._snap_index, self._snap_term)
            self._durable_snapshot = snapshot
            self._durable_hard = self._hard

    def close(self) -> None:
        self.closed = True

    # --- crash model ---------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Make everything written so far durable (the only durability point under ``never``)."""
        self._durable_entries = self._entries if self.fsync == "always" else list(self._entries)
        self._durable_hard = self._hard
        self._durable_snap = (self._snap_index, self._snap_term)
        self._durable_snapshot = self._snapshot

    def crash(self, power_loss: bool = False) -> None:
        """The process died (power_loss=False: nothing is lost) or the machine did (unsynced writes lost)."""
        self.closed = False
        if not power_loss:
            return
        if self.fsync == "never":
            self._entries = list(self._durable_entries)
        self._hard = self._durable_hard
        self._snap_index, self._snap_term = self._durable_snap
        self._snapshot = self._durable_snapshot
        if self._hard.commit > self.last_index():
            self._hard = HardState(self._hard.term, self._hard.vote, self.last_index())

    # --- helpers -------------------------------------------------------------------------------------------
    def _commit_only(self, hard_state: HardState) -> bool:
        d = self._durable_hard
        return hard_state.term == d.term and hard_state.vote == d.vote

    def _set_hard(self, hard_state: HardState) -> None:
        h = self._hard
        if hard_state.term < h.term:
            raise InvariantError(f"term would go back from {h.term} to {hard_state.term}")
        if hard_state.term == h.term and h.vote != 0 and hard_state.vote != h.vote:
            raise InvariantError(f"vote in term {h.term} would change from {h.vote} to {hard_state.vote}")
        if hard_state.commit > self.last_index():
            raise InvariantError(f"commit {hard_state.commit} beyond last index {self.last_index()}")
        self._hard = hard_state
