"""One simulated node: a RaftCore, its MemStorage, and the shared Ready driver (shmraft.raft.driver) over an
asynchronous, FIFO disk.

The driver is the one the raft worker runs; only its I/O is simulated here: `send` hands messages to the
simulator's network, `persist` queues the write on the disk (the simulator completes it after an fsync delay
by calling `complete`, which writes storage and tells the driver), and the clock is the node's own drifting
tick count. A crash drops the queue (those writes never happened) together with core and driver.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore
from shmraft.raft.driver import ReadyDriver
from shmraft.raft.membership import ClusterConfig, encode_membership
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import Message
from shmraft.raft.types import Entry, HardState, Snapshot
from shmraft.sim.statemachine import ToyStateMachine

SendFn = Callable[["SimNode", list[Message]], None]
ScheduleFn = Callable[["SimNode"], None]  # the disk took a write: schedule its completion


class SimNode:
    """Node state that survives (storage) and that does not (core, driver, disk queue) a crash."""

    def __init__(
        self, node_id: int, bootstrap: ClusterConfig, config: RaftConfig, fsync: str, seed: int, tick_period_us: int
    ) -> None:
        self.id = node_id
        self.bootstrap = bootstrap  # the configuration the node starts with when its log and snapshot hold none
        self.joined = False  # started once (a spare node joins when a membership change adds it)
        self.config = config
        self.seed = seed
        self.storage = MemStorage(fsync)
        self.tick_period_us = tick_period_us  # virtual time between tick(SIM_TICK_MS) calls: clock drift
        self.incarnation = 0
        self.up = False
        self.core: RaftCore | None = None
        self.driver: ReadyDriver | None = None
        self.local_ms = 0  # this incarnation's clock, advanced by the simulator's tick events
        self.persist_free_at_us = 0  # the disk is busy until then (writes complete in order)
        # started, not yet durable: (entries, hard state, snapshot to install)
        self.writes: deque[tuple[list[Entry], HardState | None, Snapshot | None]] = deque()
        self.commit_before_crash = 0
        self.term_at_crash = 0
        self.started_at_us = 0
        self.recovery_term = 0  # > 0: the log was lost; the node restarts recovering (the persisted flag)
        self.lost_log_term = 0  # the simulator's own view of recovering mode (shmraft.sim.promises)
        self.log_lost_ever = False
        self.sm = ToyStateMachine()  # the applied state; rebuilt at each start from the saved snapshot
        self.abandoned_seen = 0  # the core's snapshots_abandoned counter already counted in coverage
        self.steps_down_seen = 0  # the core's removed_steps_down counter already counted in coverage

    def start(self, now_us: int, send: SendFn, schedule: ScheduleFn) -> RaftCore:
        rng = random.Random(f"core-{self.seed}-{self.id}-{self.incarnation}")
        self.sm = ToyStateMachine()
        snap = self.storage.snapshot()
        applied = None
        if snap is not None:
            self.sm.restore(snap)
            applied = snap.index
        else:
            self.sm.applied = self.storage.snapshot_index()  # compacted without a snapshot: never in the sim
        self.core = RaftCore(
            self.id, self.bootstrap, self.storage, self.config, rng, applied=applied, recovery_term=self.recovery_term
        )
        self.joined = True
        self.abandoned_seen = 0
        self.up = True
        self.local_ms = 0
        self.persist_free_at_us = 0
        self.writes.clear()
        self.started_at_us = now_us

        def persist(entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
            self.writes.append((entries, hard_state, snapshot))
            schedule(self)
            return False  # durable later, when the simulator calls complete()

        self.driver = ReadyDriver(self.core, lambda msgs: send(self, msgs), persist, lambda: self.local_ms)
        return self.core

    @property
    def pending_writes(self) -> int:
        return self.driver.pending_writes if self.driver is not None else 0

    def crash(self, power_loss: bool) -> None:
        assert self.core is not None
        self.commit_before_crash = self.storage.hard_state().commit  # durable log up to here was committed
        self.term_at_crash = self.core.term
        self.recovery_term = self.core.recovery_term  # 0 once a recovery has completed
        self.up = False
        self.core = None
        self.driver = None
        self.writes.clear()
        self.incarnation += 1  # disk completions of the old incarnation are ignored when they "complete"
        self.storage.crash(power_loss=power_loss)

    def lose_log(self) -> None:
        """While down, the log is found corrupt and quarantined, as shmraft/storage/nodelog.py does: the node
        keeps only its term (from the separate hard-state copy), raised by one with no vote, and restarts
        empty in recovering mode. What it had committed is legitimately gone from it."""
        assert not self.up
        term = self.storage.hard_state().term + 1
        self.storage = MemStorage(self.storage.fsync)
        self.storage.set_hard_state(HardState(term=term, vote=0, commit=0))
        self.recovery_term = term
        self.lost_log_term = term
        self.log_lost_ever = True
        self.commit_before_crash = 0

    def take_snapshot(self, retention_entries: int) -> bool:
        """Save the state machine's snapshot at its applied index and compact the log up to `retention_entries`
        before it, if that index is committed and durable here. Returns whether a snapshot was saved."""
        storage, sm = self.storage, self.sm
        index = sm.applied
        saved = storage.snapshot()
        if index < 1 or (saved is not None and index <= saved.index) or index <= storage.snapshot_index():
            return False
        if index > storage.hard_state().commit or index > storage.last_index():
            return False
        term = storage.term_at(index)
        assert term is not None
        assert self.core is not None
        config = encode_membership(self.core.membership_at(index))  # the configuration is part of the snapshot
        storage.save_snapshot(Snapshot(index, term, sm.encode(), config), compact_to=index - retention_entries)
        return True

    def complete(self) -> None:
        """The fsync of the oldest write finished: write it to storage, then let the driver release what
        waited for it (acknowledgements, votes, the core's `persisted`)."""
        assert self.driver is not None
        entries, hard_state, snapshot = self.writes.popleft()
        if snapshot is not None:
            assert hard_state is not None
            self.storage.install_snapshot(snapshot, hard_state)
        elif entries:
            self.storage.append(entries, hard_state)
        elif hard_state is not None:
            self.storage.set_hard_state(hard_state)
        self.driver.durable()
