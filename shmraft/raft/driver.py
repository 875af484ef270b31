"""The driver of a RaftCore: acts on each Ready in the order its contract prescribes (shmraft.raft.ready), with
the I/O injected, so that the raft worker (RocksDB, sockets, synchronous fsync) and the simulator (MemStorage,
a simulated network, an asynchronous disk) run the same ordering code.

The order is where an early acknowledgement would live: a Ready's `messages` leave at once; its entries and
hard state (or its snapshot) are handed to `persist`; its `messages_after_persist` leave, and the core hears
`persisted` (a snapshot's write: `snapshot_persisted`), only once that write, and every write started before
it, is durable. `persist` returns True when the write is durable on return (the worker's fsync) or False when
the I/O will call `durable()` later, once per write, in the order the writes were started (the simulator's
disk). Pure: no clock, socket or thread of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from shmraft.raft.errors import InvariantError
from shmraft.raft.messages import Message
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, Snapshot

if TYPE_CHECKING:
    from shmraft.raft.core import RaftCore

SendFn = Callable[[list[Message]], None]
PersistFn = Callable[[list[Entry], HardState | None, Snapshot | None], bool]  # entries, hard state, snapshot
ClockFn = Callable[[], float]  # milliseconds, any origin, never going back


class _Write:
    """A Ready waiting for its write (or an earlier Ready's) to become durable."""

    __slots__ = ("entries", "snapshot", "after", "durable")

    def __init__(self, entries: list[Entry], snapshot: Snapshot | None, after: list[Message], durable: bool) -> None:
        self.entries = entries
        self.snapshot = snapshot
        self.after = after
        self.durable = durable


class ReadyDriver:
    """Owns the ordering between a core's Readies and their I/O. One per core incarnation."""

    __slots__ = ("core", "_send", "_persist", "_clock", "_last_tick_ms", "_pending")

    def __init__(self, core: RaftCore, send: SendFn, persist: PersistFn, clock_ms: ClockFn) -> None:
        self.core = core
        self._send = send
        self._persist = persist
        self._clock = clock_ms
        self._last_tick_ms = clock_ms()
        self._pending: deque[_Write] = deque()

    @property
    def pending_writes(self) -> int:
        """Readies whose after-persist part still waits for a write."""
        return len(self._pending)

    def tick(self) -> None:
        """Advance the core's clock by the whole milliseconds elapsed on the injected clock."""
        elapsed_ms = int(self._clock() - self._last_tick_ms)
        if elapsed_ms >= 1:
            self.core.tick(elapsed_ms)
            self._last_tick_ms += elapsed_ms

    def handle(self, rd: Ready) -> None:
        """Steps 1-3 of the Ready contract; the caller applies `rd.committed_entries` (step 4), which needs no
        local durability (a majority holds them)."""
        self._send(rd.messages)
        after = rd.messages_after_persist
        if not rd.must_persist and not self._pending:
            if after:
                self._send(after)
            return
        # even with nothing to write, acknowledgements wait for the earlier Readies' writes: they may cover
        # entries handed out earlier
        write = _Write(rd.entries, rd.snapshot, after, not rd.must_persist)
        self._pending.append(write)
        if rd.must_persist and self._persist(rd.entries, rd.hard_state, rd.snapshot):
            write.durable = True
        self._release()

    def durable(self) -> None:
        """The oldest write not yet durable now is (asynchronous I/O only)."""
        for write in self._pending:
            if not write.durable:
                write.durable = True
                break
        else:
            raise InvariantError("durable() called with no write pending")
        self._release()

    def _release(self) -> None:
        pending = self._pending
        while pending and pending[0].durable:
            write = pending.popleft()
            if write.snapshot is not None:  # the installed snapshot is durable: the log view may count it
                self.core.snapshot_persisted(write.snapshot.index, write.snapshot.term)
            if write.after:
                self._send(write.after)
            if write.entries:
                last = write.entries[-1]
                self.core.persisted(last.index, last.term)
