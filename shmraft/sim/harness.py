"""A small synchronous cluster of cores for unit tests and the core benchmark.

Messages travel through one FIFO queue and arrive instantly unless a link is cut or a node is down. Each node
runs the shared Ready driver (shmraft.raft.driver); its writes go to MemStorage at once (unless `hold_persist`
is set for a node, to test what happens before the driver reports durability: the writes wait for
`release`). No virtual clock: time moves only when a test calls `tick`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore
from shmraft.raft.driver import ReadyDriver
from shmraft.raft.errors import InvariantError
from shmraft.raft.membership import ClusterConfig, ConfChange, Member, MemberRole, encode_membership
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import Message
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, RandomSource, Role, Snapshot

DELIVERY_STEPS_MAX = 200_000  # a runaway message storm is a bug: stop instead of spinning


class Cluster:
    """Nodes 1..n wired through an instant network. `sent` records every message for inspection."""

    def __init__(
        self, n: int = 3, config: RaftConfig | None = None, seed: int = 0, fsync: str = "always", record: bool = True
    ) -> None:
        self.ids = list(range(1, n + 1))
        self.config = config or RaftConfig()
        self.seed = seed
        self.storages = {i: MemStorage(fsync) for i in self.ids}
        self.cores: dict[int, RaftCore] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.queue: deque[Message] = deque()
        self.blocked: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.hold_persist: set[int] = set()
        self.held: dict[int, list[tuple[list[Entry], HardState | None, Snapshot | None]]] = {i: [] for i in self.ids}
        self.installed: dict[int, list[Snapshot]] = {i: [] for i in self.ids}  # snapshots each node installed
        self.drivers: dict[int, ReadyDriver] = {}
        self.record = record
        self.sent: list[Message] = []
        self._incarnation = dict.fromkeys(self.ids, 0)
        # each node's bootstrap configuration (membership changes): all first nodes as voters; a node added
        # later gets the configuration it joins with (itself a learner)
        self.bootstraps: dict[int, ClusterConfig] = dict.fromkeys(self.ids, ClusterConfig.voters_of(self.ids))
        for i in self.ids:
            self._start(i)

    def _start(self, i: int, recovery_term: int = 0) -> None:
        rng = random.Random(f"{self.seed}-{i}-{self._incarnation[i]}")
        self.cores[i] = RaftCore(i, self.bootstraps[i], self.storages[i], self.config, rng, recovery_term=recovery_term)

    def add_node(self, i: int, joins: ClusterConfig | None = None) -> None:
        """Start a new, empty node `i` (not yet a member: add it with `change`). It boots with `joins` (default:
        the configuration the current leader, else node 1, has in effect) plus itself as a learner."""
        if i in self.storages:
            raise ValueError(f"node {i} exists")
        base = joins or self.cores[self.leader() or self.ids[0]].membership
        members = [m for m in base.members if m.id != i] + [Member(i, MemberRole.LEARNER)]
        self.ids.append(i)
        self.storages[i] = MemStorage(self.storages[self.ids[0]].fsync)
        self.applied[i] = []
        self.held[i] = []
        self.installed[i] = []
        self._incarnation[i] = 0
        self.bootstraps[i] = ClusterConfig.of(members)
        self._start(i)

    def change(self, leader: int, change: ConfChange) -> int:
        """Propose a membership change on `leader`; returns the entry's index (delivered by the next delivery)."""
        index = self.cores[leader].propose_conf_change(change)
        self.process(leader)
        return index

    def _driver(self, i: int) -> ReadyDriver:
        """Node i's driver, renewed whenever its core was replaced (a restart, or a test's own core)."""
        driver = self.drivers.get(i)
        if driver is None or driver.core is not self.cores[i]:

            def persist(entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
                if i in self.hold_persist:
                    self.held[i].append((entries, hard_state, snapshot))
                    return False
                self._write(i, entries, hard_state, snapshot)
                return True

            self.held[i] = []
            driver = self.drivers[i] = ReadyDriver(self.cores[i], self._send, persist, lambda: 0.0)
        return driver

    # --- driving -------------------------------------------------------------------------------------------
    def process(self, i: int) -> None:
        """Act on every Ready node i has (send, persist, apply)."""
        core, driver = self.cores[i], self._driver(i)
        while core.has_ready():
            rd = core.ready()
            if not rd:
                raise InvariantError(f"node {i}: has_ready() was true but ready() is empty")
            if rd.snapshot is not None:
                self.installed[i].append(rd.snapshot)
            driver.handle(rd)
            self.applied[i].extend(rd.committed_entries)

    def _write(self, i: int, entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None) -> None:
        storage = self.storages[i]
        if snapshot is not None:
            assert hard_state is not None
            storage.install_snapshot(snapshot, hard_state)
        elif entries:
            storage.append(entries, hard_state)
        elif hard_state is not None:
            storage.set_hard_state(hard_state)

    def release(self, i: int) -> None:
        """Persist what node i held back, in order."""
        self.hold_persist.discard(i)
        held, self.held[i] = self.held[i], []
        for entries, hard_state, snapshot in held:
            self._write(i, entries, hard_state, snapshot)
            self._driver(i).durable()
        self.process(i)

    def _send(self, msgs: list[Message]) -> None:
        for m in msgs:
            if self.record:
                self.sent.append(m)
            self.queue.append(m)

    def deliver_all(self, drop: Callable[[Message], bool] | None = None) -> int:
        """Deliver queued messages (and whatever they cause) until the network is quiet; `drop` picks
        messages to lose on top of cut links and dead nodes."""
        steps = 0
        while self.queue:
            steps += 1
            if steps > DELIVERY_STEPS_MAX:
                raise RuntimeError("message storm: the network never went quiet")
            m = self.queue.popleft()
            if m.dst in self.down or m.src in self.down or (m.src, m.dst) in self.blocked or m.dst not in self.cores:
                continue  # a dead node, a cut link, or a member that was never started
            if drop is not None and drop(m):
                continue
            self.cores[m.dst].step(m)
            self.process(m.dst)
        return steps

    def tick(self, ms: int, nodes: list[int] | None = None) -> None:
        for i in nodes or self.ids:
            if i not in self.down:
                self.cores[i].tick(ms)
                self.process(i)
        self.deliver_all()

    def run(self, ms: int, step_ms: int = 10) -> None:
        """Tick all live nodes for ms milliseconds, delivering after every tick."""
        for _ in range(ms // step_ms):
            self.tick(step_ms)

    def elect(self, i: int, drop: Callable[[Message], bool] | None = None) -> None:
        """Make node i time out and win an election (its log must be up to date)."""
        self.cores[i].tick(self.config.election_timeout_ms + self.config.election_timeout_spread_ms)
        self.process(i)
        self.deliver_all(drop)
        if self.cores[i].role != Role.LEADER:
            raise AssertionError(f"node {i} did not win: {self.cores[i].status()}")

    def propose(self, i: int, data: bytes) -> int:
        index = self.cores[i].propose(data)
        self.process(i)
        return index

    # --- faults ----------------------------------------------------------------------------------------------
    def isolate(self, i: int) -> None:
        for p in self.ids:
            if p != i:
                self.blocked |= {(i, p), (p, i)}

    def heal(self) -> None:
        self.blocked.clear()

    def crash(self, i: int) -> None:
        self.down.add(i)
        self.held[i] = []
        self.storages[i].crash(power_loss=False)

    def restart(self, i: int, lose_log: bool = False) -> None:
        """Restart a crashed node; `lose_log` first replaces its log as a quarantine does (empty, term + 1,
        recovering mode)."""
        self.down.discard(i)
        self._incarnation[i] += 1
        self.applied[i] = []
        recovery_term = 0
        if lose_log:
            recovery_term = self.storages[i].hard_state().term + 1
            self.storages[i] = MemStorage(self.storages[i].fsync)
            self.storages[i].set_hard_state(HardState(term=recovery_term))
        self._start(i, recovery_term)

    # --- queries ------------------------------------------------------------------------------------------------
    def leader(self) -> int:
        leaders = [i for i in self.ids if i not in self.down and self.cores[i].role == Role.LEADER]
        return max(leaders, key=lambda i: self.cores[i].term) if leaders else 0

    def log(self, i: int) -> list[tuple[int, int, bytes]]:
        """Node i's log from its first held entry (entries below it are compacted or in a snapshot)."""
        core = self.cores[i]
        return [(e.index, e.term, e.data) for e in core.log_entries(1, core.last_index + 1, 1 << 62)]

    def compact(self, i: int, up_to: int, data: bytes = b"", with_config: bool = False) -> None:
        """Node i saves a snapshot at its committed index `up_to` (state `data`, and with `with_config` the
        configuration in effect there) and compacts its log there."""
        storage = self.storages[i]
        term = storage.term_at(up_to)
        assert term is not None
        config = encode_membership(self.cores[i].membership_at(up_to)) if with_config else b""
        storage.save_snapshot(Snapshot(up_to, term, data, config), compact_to=up_to)


def core_with_log(
    node_id: int,
    peers: list[int],
    terms: list[int],
    hard_state: HardState | None = None,
    config: RaftConfig | None = None,
    rng: RandomSource | None = None,
    fsync: str = "always",
) -> tuple[RaftCore, MemStorage]:
    """A core restarted from a storage holding entries 1..len(terms) with those terms (data b"<index>")."""
    storage = MemStorage(fsync)
    entries = [Entry(i, t, str(i).encode()) for i, t in enumerate(terms, start=1)]
    hs = hard_state or HardState(term=max(terms, default=0))
    storage.append(entries, hs)
    core = RaftCore(node_id, peers, storage, config or RaftConfig(), rng or random.Random(node_id))
    return core, storage


def persist(core: RaftCore, storage: MemStorage, rd: Ready) -> None:
    """Do what a driver does with a Ready's durable part, at once."""
    if rd.snapshot is not None:
        assert rd.hard_state is not None
        storage.install_snapshot(rd.snapshot, rd.hard_state)
        core.snapshot_persisted(rd.snapshot.index, rd.snapshot.term)
    elif rd.entries:
        storage.append(rd.entries, rd.hard_state)
        core.persisted(rd.entries[-1].index, rd.entries[-1].term)
    elif rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)


def drain(core: RaftCore, storage: MemStorage) -> list[Message]:
    """Take every Ready, persist it at once, and return all messages it asked to send, in order."""
    out: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.messages)
        persist(core, storage, rd)
        out.extend(rd.messages_after_persist)
    return out


def make_leader(core: RaftCore, storage: MemStorage) -> list[Message]:
    """Drive a lone core through pre-vote and vote to leadership by answering its requests with grants;
    returns the messages it sent as the new leader."""
    from shmraft.raft.messages import RequestVote, VoteResponse

    core.tick(core.config.election_timeout_ms + core.config.election_timeout_spread_ms)
    for _ in range(2):  # pre-vote round, then the real vote
        requests = [m for m in drain(core, storage) if isinstance(m, RequestVote)]
        if not requests:
            break
        for m in requests:
            core.step(VoteResponse(m.dst, core.id, m.term, True, m.pre_vote))
            if core.role == Role.LEADER:
                break
    if core.role != Role.LEADER:
        raise AssertionError(f"node {core.id} did not become leader: {core.status()}")
    return drain(core, storage)
