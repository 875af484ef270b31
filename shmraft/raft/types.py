"""Plain data shared by the Raft core, its log storage and the simulator.

Nothing here does I/O. The core (shmraft.raft.core) consumes and produces these values; the storage
(shmraft.storage.rocks) persists them; the worker processes move them over sockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry. In shmraft one entry carries one batch frame, opaque to the core."""

    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state a node needs to continue from log index `index` without entries 1..index: `term` is the term of
    entry `index`, `data` the state machine's record there (opaque to the core; in shmraft node/snapshot.py),
    `config` the cluster configuration in effect at `index` as `shmraft.raft.membership.encode_membership`
    bytes (RaftCore.membership_at(index) gives it when saving). b"" = none recorded (a snapshot of an older
    release, or a cluster that never changed members): the node then keeps the newest configuration it knows
    at or below `index` (its bootstrap configuration if none), which is only right for a fixed cluster."""

    index: int
    term: int
    data: bytes
    config: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must persist before answering a message: current term, vote in that term, commit index."""

    term: int = 0
    vote: int = 0  # node id voted for in `term`; 0 = none (node ids start at 1)
    commit: int = 0


class LogStorage(Protocol):
    """The durable log as the core's driver sees it. Implemented in memory (simulator) and on RocksDB.

    Indexes start at 1. `first_index()` is the oldest entry still kept (retention may delete older,
    committed entries); `snapshot_index()`/`snapshot_term()` describe the entry just before it (0/0 when
    nothing was ever deleted), so log matching still works at the boundary.
    """

    def hard_state(self) -> HardState: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot_index(self) -> int: ...

    def snapshot_term(self) -> int: ...

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, the snapshot term at snapshot_index(), None if not held."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), at least one if any, stopping before max_bytes of data is exceeded."""
        ...

    def append(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        """Write entries (replacing any existing suffix from entries[0].index) and the hard state
        atomically, durably under the fsync policy `always`."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None: ...

    def compact(self, up_to_index: int) -> None:
        """Delete committed entries <= up_to_index (retention)."""
        ...

    def snapshot(self) -> Snapshot | None:
        """The newest saved snapshot (None if none): what a leader sends a follower that needs an entry below
        first_index(). Its index is at least snapshot_index(), so the log holds every entry after it."""
        ...

    def install_snapshot(self, snapshot: Snapshot, hard_state: HardState) -> None:
        """Replace the whole log by `snapshot` in one atomic, durable write: afterwards snapshot_index() and
        last_index() are snapshot.index, snapshot_term() is snapshot.term, snapshot() returns it and
        hard_state() is `hard_state` (whose commit is at least snapshot.index). A crash leaves the old state
        or the new one, never a mix."""
        ...

    def close(self) -> None: ...


class Role(enum.IntEnum):
    """A node's role in its current term. PRE_CANDIDATE asks for pre-votes without raising its term."""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state a driver shows or reacts to (role, known leader, term); reported when it changes."""

    role: Role
    leader: int  # 0 = unknown
    term: int


class RandomSource(Protocol):
    """The only randomness the core uses (election timeout spread); `random.Random` satisfies it."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1, /) -> int: ...
