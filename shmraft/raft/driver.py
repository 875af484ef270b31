"""The driver of a RaftCore: acts on each Ready in the order its contract prescribes (shmraft.raft.ready), with
the I/O injected, so that the raft worker (RocksDB, sockets, fsync on a persist thread) and the simulator (MemStorage,
a simulated network, an asynchronous disk) run the same ordering code.

The order is where an early acknowledgement would live: a Ready's `messages` leave at once; its entries and
hard state (or its snapshot) are handed to `persist`; its `messages_after_persist` leave, and the core hears
`persisted` (a snapshot's write: `snapshot_persisted`), only once that write, and every write started before
it, is durable. Two kinds of after-persist message promise nothing a pending write holds and leave at once
(`_promises_nothing_pending`): a HeartbeatResponse whose term is durable (it says only "my term is T"), and a
pre-vote answer (granting or refusing a pre-vote changes no state). So a follower whose fsync is slow still
answers its leader's heartbeats and the pre-votes of others: the leader's check-quorum and the elections see
a live node, not a silent one. `persist` returns True when the write is durable on return or False when the
I/O will call `durable()` later, once per write, in the order the writes were started (the simulator's disk,
the worker's persist thread). Pure: no clock, socket or thread of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from shmraft.raft.errors import InvariantError
from shmraft.raft.messages import HeartbeatResponse, Message, VoteResponse
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, Snapshot

if TYPE_CHECKING:
    from shmraft.raft.core import RaftCore

SendFn = Callable[[list[Message]], None]
PersistFn = Callable[[list[Entry], HardState | None, Snapshot | None], bool]  # entries, hard state, snapshot
ClockFn = Callable[[], float]  # milliseconds, any origin, never going back


class _Write:
    """A Ready waiting for its write (or an earlier Ready's) to become durable."""

    __slots__ = ("entries", "snapshot", "after", "durable", "term")

    def __init__(
        self, entries: list[Entry], snapshot: Snapshot | None, after: list[Message], durable: bool, term: int
    ) -> None:
        self.entries = entries
        self.snapshot = snapshot
        self.after = after
        self.durable = durable
        self.term = term  # the hard state's term this write persists (0: no hard state in it)


class ReadyDriver:
    """Owns the ordering between a core's Readies and their I/O. One per core incarnation."""

    __slots__ = ("core", "_send", "_persist", "_clock", "_last_tick_ms", "_pending", "_durable_term", "sent_early")

    def __init__(self, core: RaftCore, send: SendFn, persist: PersistFn, clock_ms: ClockFn) -> None:
        self.core = core
        self._send = send
        self._persist = persist
        self._clock = clock_ms
        self._last_tick_ms = clock_ms()
        self._pending: deque[_Write] = deque()
        self._durable_term = core.term  # a new core's term is its storage's (persisted) term
        self.sent_early = 0  # after-persist messages sent while writes were pending (counter, for tests)

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
        # entries handed out earlier; what promises none of it leaves now
        if after:
            now = [m for m in after if self._promises_nothing_pending(m)]
            if now:
                after = [m for m in after if not self._promises_nothing_pending(m)]
                self.sent_early += len(now)
                self._send(now)
        term = rd.hard_state.term if rd.hard_state is not None else 0
        write = _Write(rd.entries, rd.snapshot, after, not rd.must_persist, term)
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

    def _promises_nothing_pending(self, m: Message) -> bool:
        """An after-persist message that may leave before the pending writes are durable: a pre-vote answer
        (no state of ours changed), or a HeartbeatResponse (it carries only the term) whose term is durable."""
        if isinstance(m, VoteResponse):
            return m.pre_vote
        return isinstance(m, HeartbeatResponse) and m.term <= self._durable_term

    def _release(self) -> None:
        pending = self._pending
        while pending and pending[0].durable:
            write = pending.popleft()
            self._durable_term = max(self._durable_term, write.term)
            if write.snapshot is not None:  # the installed snapshot is durable: the log view may count it
                self.core.snapshot_persisted(write.snapshot.index, write.snapshot.term)
            if write.after:
                self._send(write.after)
            if write.entries:
                last = write.entries[-1]
                self.core.persisted(last.index, last.term)
