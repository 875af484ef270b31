"""A toy, deterministic state machine per simulated node, so that a snapshot really carries state.

It folds every applied entry into a running CRC32 (the whole history: two nodes at the same applied index hold
equal states only if they applied the same entries) and keeps a tiny dedup-like table (client slot -> highest
sequence seen), as shmraft's dedup table is kept beside the log. `encode()` is its snapshot (deterministic
bytes); `restore()` replaces the state by a snapshot's, as Ready.snapshot asks the applier to.
"""

from __future__ import annotations

import zlib

from shmraft.raft.types import Entry, Snapshot

TABLE_SLOTS = 4  # client slots of the dedup-like table


class ToyStateMachine:
    """State after applying entries 1..applied (or a snapshot at `applied` and the entries after it)."""

    __slots__ = ("applied", "digest", "table")

    def __init__(self) -> None:
        self.applied = 0
        self.digest = 0
        self.table: dict[int, int] = {}

    def apply(self, e: Entry) -> None:
        if e.index != self.applied + 1:
            raise ValueError(f"apply {e.index} after {self.applied}")
        self.digest = zlib.crc32(e.data, zlib.crc32(b"%d:%d;" % (e.index, e.term), self.digest))
        seq = _sequence(e.data)
        if seq is not None:
            slot = seq % TABLE_SLOTS
            self.table[slot] = max(self.table.get(slot, 0), seq)
        self.applied = e.index

    def encode(self) -> bytes:
        """The snapshot of this state: applied index, digest and the table, as text (deterministic)."""
        table = ",".join(f"{k}={v}" for k, v in sorted(self.table.items()))
        return f"{self.applied}|{self.digest}|{table}".encode()

    def restore(self, snap: Snapshot) -> None:
        """Replace the state by the snapshot's (data from `encode`; empty data: the empty state at its index)."""
        self.applied = snap.index
        self.digest = 0
        self.table = {}
        if not snap.data:
            return
        _, digest, table = snap.data.decode().split("|")
        self.digest = int(digest)
        for item in filter(None, table.split(",")):
            k, v = item.split("=")
            self.table[int(k)] = int(v)


def _sequence(data: bytes) -> int | None:
    """The client's sequence number in a simulator entry (b"c-<seed>-<n>"), None for others (no-ops, probes)."""
    if not data.startswith(b"c-"):
        return None
    return int(data.rsplit(b"-", 1)[1])
