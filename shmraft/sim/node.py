"""One simulated node: a RaftCore, its MemStorage, and a driver with an asynchronous, FIFO disk.

The driver follows the Ready contract: `messages` leave at once; entries and hard state go to a persist
queue whose jobs complete in order after a simulated fsync delay; a job's completion writes storage, sends
its `messages_after_persist` and calls `persisted`. A crash drops the queue (those writes never happened).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import Message
from shmraft.raft.types import Entry, HardState


@dataclass(slots=True)
class PersistJob:
    entries: list[Entry]
    hard_state: HardState | None
    after: list[Message]


class SimNode:
    """Node state that survives (storage) and that does not (core, persist queue) a crash."""

    def __init__(
        self, node_id: int, peers: list[int], config: RaftConfig, fsync: str, seed: int, tick_period_us: int
    ) -> None:
        self.id = node_id
        self.peers = peers
        self.config = config
        self.seed = seed
        self.storage = MemStorage(fsync)
        self.tick_period_us = tick_period_us  # virtual time between tick(TICK_MS) calls: clock drift
        self.incarnation = 0
        self.up = False
        self.core: RaftCore | None = None
        self.persist_free_at_us = 0  # the disk is busy until then (jobs complete in order)
        self.pending_jobs = 0
        self.commit_before_crash = 0
        self.recovery_term = 0  # > 0: the log was lost; the node restarts recovering (the persisted flag)

    def start(self) -> RaftCore:
        rng = random.Random(f"core-{self.seed}-{self.id}-{self.incarnation}")
        self.core = RaftCore(self.id, self.peers, self.storage, self.config, rng, recovery_term=self.recovery_term)
        self.up = True
        self.persist_free_at_us = 0
        self.pending_jobs = 0
        return self.core

    def crash(self, power_loss: bool) -> None:
        assert self.core is not None
        self.commit_before_crash = self.storage.hard_state().commit  # durable log up to here was committed
        self.recovery_term = self.core.recovery_term  # 0 once a recovery has completed
        self.up = False
        self.core = None
        self.incarnation += 1  # persist jobs of the old incarnation are ignored when they "complete"
        self.storage.crash(power_loss=power_loss)

    def lose_log(self) -> None:
        """While down, the log is found corrupt and quarantined, as shmraft/raft/nodelog.py does: the node
        keeps only its term (from the separate hard-state copy), raised by one with no vote, and restarts
        empty in recovering mode. What it had committed is legitimately gone from it."""
        assert not self.up
        term = self.storage.hard_state().term + 1
        self.storage = MemStorage(self.storage.fsync)
        self.storage.set_hard_state(HardState(term=term, vote=0, commit=0))
        self.recovery_term = term
        self.commit_before_crash = 0

    def complete(self, job: PersistJob) -> list[Message]:
        """The fsync of `job` finished: write it, report it, return the messages it released."""
        assert self.core is not None
        if job.entries:
            self.storage.append(job.entries, job.hard_state)
        elif job.hard_state is not None:
            self.storage.set_hard_state(job.hard_state)
        self.pending_jobs -= 1
        if job.entries:
            last = job.entries[-1]
            self.core.persisted(last.index, last.term)
        return job.after
