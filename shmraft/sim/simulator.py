"""The deterministic simulator: several cores on virtual time, a faulty network, crashing disks and clients.

A run has two phases. During the fault phase (`fault_ms`) the seed's fault plan plays out while a client
proposes entries to whoever leads. Then faults stop: links heal, crashed nodes restart, the network
becomes reliable. Liveness requires that within `heal_deadline_ms` a leader commits a fresh probe entry
and every node commits it too; then every committed and acknowledged entry must be in every log. Safety
is checked after every event (shmraft.sim.checker). A seed decides everything, so a failure replays
exactly; the trace (options.trace) is the same text on every replay.

Membership changes are a fault kind (`membership`): the leader adds a spare node as a learner (started then,
with an empty disk, as an operator's join does), promotes a learner (refused while it lags), removes a follower
or itself, each change refused while another is uncommitted; a removed node keeps running. Liveness and
convergence are judged on the members of the final configuration; the checker follows each node's
configuration from its log and judges every commit and election by the configuration in effect.

A crash may also lose the node's log (`log_loss`: a corrupt disk whose log is quarantined; one node at a
time), after which the node restarts empty in recovering mode, as the real node does (shmraft/storage/nodelog.py).

Each node runs the raft worker's own Ready driver (shmraft.raft.driver) over simulated I/O. Besides the
consequences checked by shmraft.sim.checker, every promise a node makes (vote, acknowledgement, leader
commit) is checked against its durable state when it is made (shmraft.sim.promises). Each run counts how
often the interesting situations occurred (`coverage`): a situation that never occurs is a gap in the
fault mix. An exception anywhere in a run is reported as a violation of that seed, never raised.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shmraft.raft.config import RaftConfig
from shmraft.raft.errors import InvariantError, ProposalError
from shmraft.raft.membership import (
    MEMBERS_MAX,
    ChangeInProgressError,
    ClusterConfig,
    ConfChange,
    Member,
    MemberRole,
    NotCaughtUpError,
    QuorumNotActiveError,
)
from shmraft.raft.messages import AppendEntries, InstallSnapshot, Message, RequestVote, TimeoutNow
from shmraft.raft.types import Role
from shmraft.sim.checker import Checker
from shmraft.sim.faults import SIM_TICK_MS, FaultEvent, make_plan
from shmraft.sim.network import HELD_EPOCH, REPLAY_EPOCH, SimNetwork
from shmraft.sim.node import SimNode
from shmraft.sim.promises import PromiseChecker
from shmraft.wire.control import is_control

(EV_TICK, EV_DELIVER, EV_PERSIST, EV_PROPOSE, EV_FAULT, EV_UNBLOCK, EV_RESTART, EV_HINT, EV_HEAL, EV_SYNC, EV_CRASH) = (
    range(11)
)
STEPS_MAX = 3_000_000  # events per seed; more means a message storm (a bug)
PENDING_EVENTS_MAX = 200_000  # events scheduled at once; more means a storm that grows (duplicates of duplicates)
PROBE_INTERVAL_US = 50_000
FAULT_MS_DEFAULT = 5000  # virtual length of the fault phase
SYNC_INTERVAL_US = 200_000  # fsync "never": the OS writes back this often
LOG_LOSS_PROBABILITY = 0.25  # a crashed node's log is lost (corrupt, quarantined) this often, one node at a time
CLUSTER_SIZES = (3, 4, 5)  # drawn per seed; 4 is where quorum arithmetic differs from "half, rounded up"
REPLAY_MESSAGES_MAX = 50  # a replay fault re-delivers up to this many messages of the recent history
# the situations each run counts (SeedResult.coverage); all of them should occur in a CI run
COVERAGE_KEYS = (
    "truncations",
    "stale_delivered",
    "held_delivered",
    "replayed_delivered",
    "votes_granted",
    "votes_after_restart",
    "restart_same_term",
    "crashes_inside_persist",
    "leader_lost_unsynced_entries",
    "log_loss",
    "recovery_completed",
    "timeout_now_sent",
    "transfer_elections",
    "snapshots_saved",
    "snapshot_chunks_sent",
    "snapshot_sent_in_partition",
    "snapshots_installed",
    "stale_snapshot_delivered",
    "crash_mid_transfer",
    "crash_inside_install",
    "snapshot_transfer_abandoned",
    "learners_added",
    "learners_promoted",
    "members_removed",
    "leaders_removed",
    "removed_leader_stepped_down",
    "conf_changes_committed",
    "conf_change_refused_in_progress",
    "promote_refused_lagging",
    "conf_change_refused_quorum_not_active",
    "conf_entry_truncated",
    "config_from_snapshot",
    "removed_node_running",
    "removed_node_campaigned",
    "change_interrupted_by_crash",
)
SPARE_NODES = 3  # ids above the initial cluster that membership changes may add (fresh ids, empty disks)
VOTERS_MIN = 3  # membership faults never remove a voter below this many (a lost log needs two others)
MEMBERSHIP_RETRY_US = (100_000, 500_000)  # a refused or follow-up change is tried again after this long
# compaction: each node, at each tick, saves its state machine's snapshot at its applied index with this
# probability (drawn per seed) and compacts its log up to a retention (drawn per seed) before it; small, so that
# followers that lag or restart need InstallSnapshot in most seeds
SNAPSHOT_PROBABILITIES = (0.01, 0.05, 0.2)
RETENTION_ENTRIES = (0, 4, 16, 64)
SNAPSHOT_CHUNK_BYTES = (8, 32, 4096)  # the toy state is tens of bytes: small chunks make transfers multi-chunk


@dataclass(slots=True)
class SimOptions:
    nodes: int | None = None  # None: one of CLUSTER_SIZES, drawn from the seed
    fsync: str = "always"
    fault_ms: int = FAULT_MS_DEFAULT
    heal_deadline_ms: int = 10_000
    faults: bool = True
    mutation: str = ""  # test-only core mutation (RaftConfig.test_only_mutation)
    log_loss_probability: float = LOG_LOSS_PROBABILITY  # of a crash also losing the node's log (a corrupt disk)
    snapshots: bool = True  # compaction with snapshots (so InstallSnapshot) at random committed points
    trace: bool = False


@dataclass
class SeedResult:
    seed: int
    nodes: int
    violations: list[str]
    steps: int
    elections: int
    faults: Counter[str]
    committed_entries: int
    acked_entries: int
    virtual_ms: int
    recovery_ms: int  # heal -> probe committed on every node
    truncations: int
    coverage: Counter[str] = field(default_factory=Counter)
    trace: list[str] | None = field(default=None, repr=False)


def describe(m: Message) -> str:
    """One short line per message for traces."""
    name = type(m).__name__
    if isinstance(m, AppendEntries):
        span = f"{m.entries[0].index}..{m.entries[-1].index}" if m.entries else "-"
        return f"{name}(t{m.term} prev={m.prev_index}/{m.prev_term} entries={span} commit={m.commit})"
    fields = {k: getattr(m, k) for k in m.__slots__ if k not in ("src", "dst")}  # type: ignore[union-attr]
    return f"{name}({' '.join(f'{k}={v}' for k, v in fields.items())})"


class Simulation:
    """One seed's run. Create, then call run() once."""

    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.options = opts = options or SimOptions()
        plan_rng = random.Random(f"plan-{seed}")
        n = opts.nodes or plan_rng.choice(CLUSTER_SIZES)
        self.ids = list(range(1, n + 1))  # the nodes started so far (spares join with membership changes)
        self.plan = make_plan(plan_rng, self.ids, opts.fault_ms, opts.faults)
        self.spare_ids = list(range(n + 1, n + 1 + SPARE_NODES))
        self.faults: Counter[str] = Counter()
        self.net = SimNetwork(self.plan.network, random.Random(f"net-{seed}"), self.faults)
        self.disk_rng = random.Random(f"disk-{seed}")
        self.fault_rng = random.Random(f"fault-{seed}")
        self.loss_rng = random.Random(f"log-loss-{seed}")  # its own stream: the other draws stay as they were
        # its own stream, so that the plan and the other draws stay what they were without snapshots
        self.snap_rng = random.Random(f"snapshots-{seed}")
        self.snapshot_probability = self.snap_rng.choice(SNAPSHOT_PROBABILITIES) if opts.snapshots else 0.0
        self.retention_entries = self.snap_rng.choice(RETENTION_ENTRIES)
        chunk = self.snap_rng.choice(SNAPSHOT_CHUNK_BYTES)
        self.config = RaftConfig(
            test_only_mutation=opts.mutation,
            snapshot_chunk_bytes=chunk,
            **self.plan.raft_limits,
        )
        initial = ClusterConfig.of(Member(i, MemberRole.VOTER, b"sim-%d" % i) for i in self.ids)
        tick_us = SIM_TICK_MS * 1000
        self.nodes = {
            i: SimNode(i, initial, self.config, opts.fsync, seed, self.plan.tick_period_us.get(i, tick_us))
            for i in self.ids + self.spare_ids
        }
        self.removed_ids: set[int] = set()
        self.faults["clock_drift"] = sum(1 for p in self.plan.tick_period_us.values() if p != SIM_TICK_MS * 1000)
        self.checker = Checker()
        self.coverage: Counter[str] = Counter()
        self.promises = PromiseChecker(self.checker, self.nodes, self.coverage)
        self.crash_armed: dict[int, tuple[bool, int]] = {}  # node -> (power loss, downtime): crash in next persist
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0
        self.steps = 0
        self.blocks: Counter[tuple[int, int]] = Counter()
        self.churn_until_us = -1
        self.pending: dict[tuple[int, int], tuple[int, bytes]] = {}  # (node, index) -> (term, data)
        self.acked: list[tuple[int, int, bytes]] = []
        self.proposed = 0
        self.healed_at = -1
        self.probe: tuple[int, int, bytes] | None = None  # (index, term, data) once proposed after the heal
        self.probe_node = 0
        self.done_at = -1
        self.trace: list[str] | None = [] if opts.trace else None
        self.role_changes: list[tuple[int, int, Role, int]] = []  # (time us, node, role, term)
        self.first_commit_us: dict[int, int] = {}  # term -> when a node first applied an entry of that term

    # --- plumbing ------------------------------------------------------------------------------------------
    def _at(self, t: int, kind: int, a: object = None, b: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now / 1000:10.3f} {text}")

    def _send(self, m: Message) -> None:
        times = self.net.held_times(m.src, m.dst, self.now)
        epoch = HELD_EPOCH
        if times is None:
            times = self.net.delivery_times(m.src, m.dst, m.channel, self.now)
            epoch = self.net.epoch(m.src, m.dst)
        if self.trace is not None:
            self._log(f"n{m.src}->n{m.dst} {describe(m)}" + ("" if times else " LOST"))
        self.net.recent.append(m)
        for t in times:
            self._at(t, EV_DELIVER, m, epoch)

    def _send_from(self, node: SimNode, msgs: list[Message]) -> None:
        """The driver of `node` sends `msgs` now: check each promise, then hand it to the network."""
        promises = self.promises
        for m in msgs:
            promises.on_send(node, m, self.now)
            if isinstance(m, RequestVote) and m.src in self.removed_ids:
                self.coverage["removed_node_campaigned"] += 1
            if isinstance(m, TimeoutNow):
                self.coverage["timeout_now_sent"] += 1
            elif isinstance(m, InstallSnapshot):
                self.coverage["snapshot_chunks_sent"] += 1
                if (m.src, m.dst) in self.net.blocked or self.net.held_times(m.src, m.dst, self.now) is not None:
                    self.coverage["snapshot_sent_in_partition"] += 1
            self._send(m)

    def _schedule_write(self, node: SimNode) -> None:
        """The disk of `node` took a write: it completes, in order, after a simulated fsync."""
        delay = self.disk_rng.randint(self.plan.disk_delay_min_us, self.plan.disk_delay_max_us)
        if self.plan.slow_disk_probability and self.disk_rng.random() < self.plan.slow_disk_probability:
            self.faults["slow_fsync"] += 1
            delay += 50_000
        start = max(self.now, node.persist_free_at_us)
        node.persist_free_at_us = start + delay
        self._at(node.persist_free_at_us, EV_PERSIST, node.id, node.incarnation)
        armed = self.crash_armed.pop(node.id, None)
        if armed is not None:  # crash_in_persist: power fails between the request and the write's completion
            at = self.fault_rng.randint(self.now, node.persist_free_at_us - 1)
            self._at(at, EV_CRASH, node.id, (node.incarnation, armed[1], armed[0]))

    def _drain(self, node: SimNode) -> None:
        core = node.core
        driver = node.driver
        assert core is not None and driver is not None
        checker = self.checker
        while core.has_ready():
            rd = core.ready()
            if not rd:
                raise InvariantError(f"node {node.id}: has_ready() was true but ready() is empty")
            prev_commit = checker.nodes[node.id].commit
            checker.on_ready(node.id, core, rd, self.now)
            checker.check_membership(node.id, core, self.now)
            if core.removed_steps_down > node.steps_down_seen:
                self.coverage["removed_leader_stepped_down"] += core.removed_steps_down - node.steps_down_seen
                node.steps_down_seen = core.removed_steps_down
            self.promises.on_ready(node, rd, prev_commit, self.now)
            if rd.soft_state is not None:
                s = rd.soft_state
                self.role_changes.append((self.now, node.id, s.role, s.term))
                if s.role == Role.LEADER:
                    self.promises.on_leader(node, s.term, self.now)
                    if self.now < self.churn_until_us:
                        at = self.now + self.fault_rng.randint(1_000, 30_000)
                        downtime = self.fault_rng.randint(20_000, 300_000)
                        self._at(at, EV_CRASH, node.id, (node.incarnation, downtime, False))
                if self.trace is not None:
                    self._log(f"n{node.id} {s.role.name} term={s.term} leader={s.leader}")
            if rd.committed_entries:
                last = rd.committed_entries[-1]
                self.first_commit_us.setdefault(last.term, self.now)
            if rd.snapshot is not None:
                self.coverage["snapshots_installed"] += 1
                node.sm.restore(rd.snapshot)
            for e in rd.committed_entries:
                node.sm.apply(e)
            if rd.snapshot is not None or rd.committed_entries:
                checker.on_state(node.id, node.sm.applied, node.sm.encode(), self.now)
            if core.snapshots_abandoned > node.abandoned_seen:
                self.coverage["snapshot_transfer_abandoned"] += core.snapshots_abandoned - node.abandoned_seen
                node.abandoned_seen = core.snapshots_abandoned
            driver.handle(rd)
            for e in rd.committed_entries:
                p = self.pending.pop((node.id, e.index), None)
                if p is not None and p == (e.term, e.data):
                    self.acked.append((e.index, e.term, e.data))

    def _leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            core = node.core
            if (
                node.up
                and core is not None
                and core.role == Role.LEADER
                and (best is None or core.term > best.core.term)
            ):  # type: ignore[union-attr]
                best = node
        return best

    def _start(self, node: SimNode) -> None:
        self.checker.scan_configs(node.id, node.storage, node.bootstrap)
        core = node.start(self.now, self._send_from, self._schedule_write)
        node.steps_down_seen = 0
        if node.incarnation and core.term == node.term_at_crash:
            self.coverage["restart_same_term"] += 1
        self.checker.started(node.id, core, self.now, node.commit_before_crash)
        self._log(f"n{node.id} START term={core.term} last={core.last_index} commit={core.commit_index}")
        self._at(self.now + node.tick_period_us, EV_TICK, node.id, node.incarnation)
        self._drain(node)

    def _set_blocked(self, links: list[tuple[int, int]], delta: int) -> None:
        for link in links:
            self.blocks[link] += delta
        self.net.blocked = {link for link, c in self.blocks.items() if c > 0}

    # --- faults ----------------------------------------------------------------------------------------------
    def _fault(self, ev: FaultEvent) -> None:
        rng = self.fault_rng
        kind = ev.kind
        leader = self._leader()
        if kind == "partition":
            side = set(rng.sample(self.ids, rng.randint(1, len(self.ids) - 1)))
            links = [(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)]
        elif kind == "asymmetric_partition":
            a = rng.choice(self.ids)
            links = (
                [(a, b) for b in self.ids if b != a]
                if rng.random() < 0.5
                else [(a, rng.choice([b for b in self.ids if b != a]))]
            )
        elif kind == "isolate_leader":
            a = leader.id if leader else rng.choice(self.ids)
            links = [(x, y) for x in self.ids for y in self.ids if x != y and a in (x, y)]
        elif kind in ("crash", "crash_leader"):
            victim = leader if kind == "crash_leader" and leader else self.nodes[rng.choice(self.ids)]
            if victim.up:
                self.faults[kind] += 1
            self._crash(victim, ev.power_loss, ev.duration_us)
            return
        elif kind == "leader_churn":
            self.faults[kind] += 1
            self._log(f"LEADER CHURN for {ev.duration_us / 1000:.0f}ms")
            self.churn_until_us = max(self.churn_until_us, self.now + ev.duration_us)
            if leader is not None:
                self._crash(leader, False, rng.randint(20_000, 300_000))
            return
        elif kind in ("quick_restart", "crash_in_persist"):
            self._crash_soon(kind, ev, leader)
            return
        elif kind == "hold":
            a = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(self.ids)
            others = [b for b in self.ids if b != a]
            shape = rng.randrange(3)
            if shape == 0:  # everything a sends
                links = [(a, b) for b in others]
            elif shape == 1:  # everything a receives
                links = [(b, a) for b in others]
            else:
                links = [(a, rng.choice(others))]
            self.faults[kind] += 1
            self._log(f"HOLD {sorted(links)} for {ev.duration_us / 1000:.0f}ms")
            self.net.hold(links, self.now + ev.duration_us)
            return
        elif kind == "replay":
            recent = list(self.net.recent)
            if not recent:
                return
            self.faults[kind] += 1
            picked = rng.sample(recent, min(len(recent), rng.randint(5, REPLAY_MESSAGES_MAX)))
            self._log(f"REPLAY {len(picked)} old messages")
            for m in picked:
                self._at(self.now + rng.randint(0, 5000), EV_DELIVER, m, REPLAY_EPOCH)
            return
        elif kind == "connection_reset":
            a, b = rng.sample(self.ids, 2)
            self.faults[kind] += 1
            self._log(f"RESET n{a}-n{b}")
            self.net.reset_connection(a, b)
            self._hint(a, b)
            self._hint(b, a)
            return
        elif kind == "membership":
            self._membership(leader)
            return
        elif kind == "transfer_leadership":
            if leader is None:
                return
            assert leader.core is not None
            target = rng.choice([None, *(p for p in leader.core.peers if leader.core.membership.is_voter(p))])
            self.faults[kind] += 1
            self._log(f"n{leader.id} TRANSFER to {target}")
            leader.core.transfer_leadership(target)
            self._drain(leader)
            return
        else:
            raise ValueError(kind)
        self.faults[kind] += 1
        self._log(f"BLOCK {sorted(links)} for {ev.duration_us / 1000:.0f}ms")
        self._set_blocked(links, +1)
        self._at(self.now + ev.duration_us, EV_UNBLOCK, links)

    def _membership(self, leader: SimNode | None) -> None:
        """One membership change on the leader, drawn among those its configuration allows; a refused change
        (another one in progress, a lagging learner) is tried again a little later."""
        if leader is None or leader.core is None:
            return
        rng = self.fault_rng
        core = leader.core
        conf = core.membership
        voters, learners = conf.voters(), conf.learners()
        spares = [i for i in self.spare_ids if not self.nodes[i].joined]
        choices: list[tuple[str, int]] = []
        if spares and len(conf.members) < MEMBERS_MAX:
            choices.append(("add_learner", 3))
        if learners:
            choices += [("promote", 4), ("remove_learner", 1)]
        if len(voters) > VOTERS_MIN:
            choices += [("remove_follower", 2), ("remove_leader", 2)]
        if not choices:
            return
        action = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        if action == "add_learner":
            target = spares[0]
            change = ConfChange.add_learner(target, b"sim-%d" % target)
        elif action == "promote":
            target = rng.choice(learners)
            change = ConfChange.promote(target)
        elif action == "remove_learner":
            target = rng.choice(learners)
            change = ConfChange.remove(target)
        elif action == "remove_follower":
            target = rng.choice([v for v in voters if v != leader.id])
            change = ConfChange.remove(target)
        else:
            target = leader.id
            change = ConfChange.remove(target)
        self.faults["membership"] += 1
        if action == "remove_follower" and rng.random() < 0.5:
            # the usual reason to remove a node: it is unreachable. Cut off, it misses its removal and
            # campaigns on its own; once the links return its requests must not disturb the members
            links = [(a, b) for a in self.ids for b in self.ids if a != b and target in (a, b)]
            self._set_blocked(links, +1)
            self._at(self.now + rng.randint(200_000, 1_500_000), EV_UNBLOCK, links)
        try:
            index = core.propose_conf_change(change)
        except (ChangeInProgressError, NotCaughtUpError, QuorumNotActiveError) as exc:
            if isinstance(exc, ChangeInProgressError):
                key = "conf_change_refused_in_progress"
            elif isinstance(exc, NotCaughtUpError):
                key = "promote_refused_lagging"
            else:
                key = "conf_change_refused_quorum_not_active"  # the strict reconfiguration check
            self.coverage[key] += 1
            self._log(f"n{leader.id} MEMBERSHIP {action} {target} refused: {exc}")
            self._membership_later()
            return
        except ProposalError as exc:
            self._log(f"n{leader.id} MEMBERSHIP {action} {target} refused: {exc}")
            return
        self._log(f"n{leader.id} MEMBERSHIP {action} {target} at {index}")
        if action == "add_learner":
            self.coverage["learners_added"] += 1
            node = self.nodes[target]
            node.bootstrap = ClusterConfig.of([*conf.members, Member(target, MemberRole.LEARNER, b"sim-%d" % target)])
            self.ids.append(target)
            self._start(node)
            self._membership_later()  # typically a promotion once it caught up: a replacement in steps
        elif action == "promote":
            self.coverage["learners_promoted"] += 1
        else:
            self.coverage["members_removed"] += 1
            self.removed_ids.add(target)
            if action == "remove_leader":
                self.coverage["leaders_removed"] += 1
        self._drain(leader)
        interrupt = rng.random()
        if interrupt < 0.15:  # the change interrupted by a crash of its leader, before it commits
            at = self.now + rng.randint(0, 3_000)
            self._at(at, EV_CRASH, leader.id, (leader.incarnation, rng.randint(20_000, 500_000), rng.random() < 0.5))
        elif interrupt < 0.3:  # ... or by a partition that cuts its leader off
            links = [(a, b) for a in self.ids for b in self.ids if a != b and leader.id in (a, b)]
            self._set_blocked(links, +1)
            self._at(self.now + rng.randint(20_000, 1_500_000), EV_UNBLOCK, links)

    def _membership_later(self) -> None:
        at = self.now + self.fault_rng.randint(*MEMBERSHIP_RETRY_US)
        self._at(at, EV_FAULT, FaultEvent(at, "membership", 0))

    def _crash_soon(self, kind: str, ev: FaultEvent, leader: SimNode | None) -> None:
        """quick_restart: a crash with a downtime of a few ms (the node returns inside its term).
        crash_in_persist: a power loss inside a persist window, now if a node is writing, otherwise inside
        the next write the victim starts."""
        rng = self.fault_rng
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            return
        self.faults[kind] += 1
        if kind == "quick_restart":
            victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
            self._crash(victim, ev.power_loss, ev.duration_us)
            return
        writing = [n for n in up if n.writes]
        downtime = rng.randint(1_000, 300_000)
        if writing:
            self._crash(rng.choice(writing), True, downtime)
        else:
            victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
            self.crash_armed[victim.id] = (True, downtime)

    def _crash(self, victim: SimNode, power_loss: bool, downtime_us: int) -> None:
        if not victim.up:
            return
        if any(snap is not None for _, _, snap in victim.writes):
            self.coverage["crash_inside_install"] += 1
        core = victim.core
        if core is not None and (
            core.snapshot_receiving
            or (core.role == Role.LEADER and any(p["snapshot_index"] for p in core.status()["progress"].values()))  # type: ignore[union-attr]
        ):
            self.coverage["crash_mid_transfer"] += 1
        if core is not None and core.role == Role.LEADER and core.conf_change_pending:
            self.coverage["change_interrupted_by_crash"] += 1
        if victim.writes:
            self.coverage["crashes_inside_persist"] += 1
            if victim.core is not None and victim.core.role == Role.LEADER and any(e for e, _, _ in victim.writes):
                self.coverage["leader_lost_unsynced_entries"] += 1
        self.faults["power_loss" if power_loss else "process_kill"] += 1
        self._log(f"n{victim.id} CRASH power_loss={power_loss}")
        victim.crash(power_loss)
        # a lost log is survivable only while the others hold a majority that can elect without it (a
        # recovering node does not vote): one node at a time, and never one still recovering
        others_recovering = any(
            (n.core.recovering if n.up and n.core is not None else bool(n.recovery_term))
            for n in self.nodes.values()
            if n is not victim
        )
        if (
            not others_recovering
            and not victim.recovery_term
            and self.loss_rng.random() < self.options.log_loss_probability
        ):
            self.faults["log_loss"] += 1
            self.coverage["log_loss"] += 1
            self._log(f"n{victim.id} LOG LOST (corrupt, quarantined): restarts recovering")
            victim.lose_log()
            self.promises.log_lost(victim.id)
        for p in self.ids:  # the peers' connections reset: a driver hint, if the link works
            if p != victim.id and (victim.id, p) not in self.net.blocked:
                self._at(self.now + 1000, EV_HINT, p, victim.id)
        self._at(self.now + downtime_us, EV_RESTART, victim.id, victim.incarnation)

    def _hint(self, node_id: int, peer: int) -> None:
        node = self.nodes[node_id]
        if node.up and node.core is not None:
            node.core.peer_disconnected(peer)
            self._drain(node)

    def _heal(self) -> None:
        self.healed_at = self.now
        self._log("HEAL")
        self.blocks.clear()
        self.net.heal()
        for node in self.nodes.values():
            if not node.up and node.joined:
                self.faults["restart"] += 1
                self._start(node)
        self._at(self.now, EV_PROPOSE, True)

    # --- clients ---------------------------------------------------------------------------------------------
    def _propose(self, probe: bool) -> None:
        leader = self._leader()
        if probe:
            if self._probe_done():
                self._finish()
                return
            self._at(self.now + PROBE_INTERVAL_US, EV_PROPOSE, True)
            if self.probe is not None:
                index, term, data = self.probe
                proposer = self.nodes[self.probe_node]
                still_leading = proposer.up and proposer.core is not None and proposer.core.term == term
                if self.checker.committed.get(index) == (term, data) or still_leading:
                    return  # committed, or may still be: wait for every node to commit it
        elif self.now < self.options.fault_ms * 1000:
            self._at(self.now + self.plan.propose_interval_us, EV_PROPOSE, False)
        if leader is None:
            return
        assert leader.core is not None
        self.proposed += 1
        data = f"{'probe' if probe else 'c'}-{self.seed}-{self.proposed}".encode()
        try:
            index = leader.core.propose(data)
        except ProposalError:
            return
        self.pending[(leader.id, index)] = (leader.core.term, data)
        if probe:
            self.probe = (index, leader.core.term, data)
            self.probe_node = leader.id
        self._drain(leader)

    def _probe_done(self) -> bool:
        if self.probe is None:
            return False
        index, term, data = self.probe
        if self.checker.committed.get(index) != (term, data):
            return False
        # every member has applied the probe and knows of every commit (an election just before, e.g. one a
        # recovering node's raised term forced, can commit its no-op on a majority a moment after the probe)
        committed = self.checker.max_committed
        return all(
            (n := self.nodes[i]).up
            and n.core is not None
            and n.core.applied_index >= index
            and n.core.commit_index >= committed
            for i in self._members()
        )

    def _members(self) -> tuple[int, ...]:
        """The members of the final configuration: the one in the probe's proposer's log (no change is proposed
        after the fault phase, so once the probe is committed this is the committed configuration)."""
        return self.checker.config_of(self.probe_node).ids()

    def _finish(self) -> None:
        self.done_at = self.now
        members = self._members()
        for i in self.ids:
            if i not in members and self.nodes[i].up:
                self.coverage["removed_node_running"] += 1
        cores = {i: n.core for i, n in self.nodes.items() if n.core is not None and i in members}
        self.checker.check_converged(cores, self.acked, self.now)  # type: ignore[arg-type]

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> SeedResult:
        opts = self.options
        for i in self.ids:  # the spares start when a membership change adds them
            self._start(self.nodes[i])
        for ev in self.plan.events:
            self._at(ev.at_us, EV_FAULT, ev)
        self._at(0, EV_PROPOSE, False)
        fault_end = opts.fault_ms * 1000
        self._at(fault_end, EV_HEAL)
        if opts.fsync == "never":
            self._at(SYNC_INTERVAL_US, EV_SYNC)
        deadline = fault_end + opts.heal_deadline_ms * 1000
        heap = self.heap
        checker = self.checker
        nodes = self.nodes
        try:
            while heap and self.done_at < 0 and not checker.violations:
                t, _, kind, a, b = heapq.heappop(heap)
                if t > deadline:
                    self.now = deadline
                    checker.violation(
                        self.now,
                        f"liveness: no probe committed on every node within {opts.heal_deadline_ms}ms after the heal",
                    )
                    break
                self.now = t
                self.steps += 1
                if self.steps > STEPS_MAX or len(heap) > PENDING_EVENTS_MAX:
                    checker.violation(t, f"message storm: {self.steps} events, {len(heap)} pending")
                    break
                if kind == EV_DELIVER:
                    m = a
                    node = nodes[m.dst]
                    if not node.up or (m.src, m.dst) in self.net.blocked:
                        continue
                    if b == HELD_EPOCH:
                        self.coverage["held_delivered"] += 1
                    elif b == REPLAY_EPOCH:
                        self.coverage["replayed_delivered"] += 1
                    elif b != self.net.epoch(m.src, m.dst):
                        continue
                    if self.trace is not None:
                        self._log(f"n{m.dst}<-n{m.src} {describe(m)}")
                    core = node.core
                    if m.term < core.term:  # type: ignore[union-attr]
                        self.coverage["stale_delivered"] += 1
                    if isinstance(m, InstallSnapshot) and (m.term < core.term or m.index <= core.commit_index):  # type: ignore[union-attr]
                        self.coverage["stale_snapshot_delivered"] += 1
                    if isinstance(m, RequestVote):
                        self.promises.on_vote_request(node, m, self.now)
                    else:
                        core.step(m)  # type: ignore[union-attr]
                    if isinstance(m, TimeoutNow) and core.role == Role.CANDIDATE:  # type: ignore[union-attr]
                        self.coverage["transfer_elections"] += 1
                    self._drain(node)
                elif kind == EV_TICK:
                    node = nodes[a]
                    if not node.up or node.incarnation != b:
                        continue
                    node.local_ms += SIM_TICK_MS
                    node.driver.tick()  # type: ignore[union-attr]
                    self._drain(node)
                    take = self.snapshot_probability and self.snap_rng.random() < self.snapshot_probability
                    if take and node.take_snapshot(self.retention_entries):
                        self.coverage["snapshots_saved"] += 1
                    self._at(t + node.tick_period_us, EV_TICK, a, b)
                elif kind == EV_PERSIST:
                    node = nodes[a]
                    if not node.up or node.incarnation != b:
                        continue
                    node.complete()
                    self._drain(node)
                elif kind == EV_PROPOSE:
                    self._propose(bool(a))
                elif kind == EV_FAULT:
                    if t < fault_end:
                        self._fault(a)
                elif kind == EV_UNBLOCK:
                    if self.healed_at < 0:
                        self._log(f"UNBLOCK {sorted(a)}")
                        self._set_blocked(a, -1)
                elif kind == EV_RESTART:
                    node = nodes[a]
                    if not node.up and node.incarnation == b and self.healed_at < 0:
                        self.faults["restart"] += 1
                        self._start(node)
                elif kind == EV_CRASH:
                    node = nodes[a]
                    incarnation, downtime, power_loss = b
                    if node.up and node.incarnation == incarnation and t < fault_end:
                        self._crash(node, power_loss, downtime)
                elif kind == EV_HINT:
                    self._hint(a, b)
                elif kind == EV_HEAL:
                    self._heal()
                elif kind == EV_SYNC:
                    for node in nodes.values():
                        node.storage.sync()
                    self._at(t + SYNC_INTERVAL_US, EV_SYNC)
        except InvariantError as exc:
            checker.violation(self.now, f"core invariant: {exc}")
        except Exception as exc:  # a crash of the code under test is a finding of this seed, not of the run
            checker.violation(self.now, f"exception: {describe_exception(exc)}")
        self.coverage["truncations"] += checker.truncations
        self.coverage["conf_entry_truncated"] += checker.conf_entries_truncated
        self.coverage["config_from_snapshot"] += checker.configs_from_snapshots
        self.coverage["conf_changes_committed"] += sum(
            1 for term_data in checker.committed.values() if is_control(term_data[1])
        )
        return SeedResult(
            seed=self.seed,
            nodes=len(self.ids),
            violations=list(checker.violations),
            steps=self.steps,
            elections=checker.elections,
            faults=self.faults,
            committed_entries=len(checker.committed),
            acked_entries=len(self.acked),
            virtual_ms=self.now // 1000,
            recovery_ms=(self.done_at - self.healed_at) // 1000 if self.done_at >= 0 else -1,
            truncations=checker.truncations,
            coverage=self.coverage,
            trace=self.trace,
        )


def describe_exception(exc: BaseException) -> str:
    """The exception and where it was raised, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_seed(seed: int, options: SimOptions | None = None) -> SeedResult:
    """One seed. Never raises for a fault of the code under test: an exception becomes a violation."""
    try:
        return Simulation(seed, options).run()
    except Exception as exc:  # e.g. while building the plan or starting the nodes
        return SeedResult(seed, 0, [f"exception: {describe_exception(exc)}"], 0, 0, Counter(), 0, 0, 0, -1, 0)


def run_seeds(
    seeds: range | list[int],
    options: SimOptions | None = None,
    stop_on_failure: bool = False,
    on_result: Callable[[SeedResult], None] | None = None,
) -> dict[str, object]:
    """Run many seeds; returns the summary the CLI prints as JSON (failing seeds listed)."""
    faults: Counter[str] = Counter()
    coverage: Counter[str] = Counter()
    summary: dict[str, object] = {}
    count = steps = elections = committed = acked = violations = truncations = 0
    recovery_max = 0
    failed: list[int] = []
    for seed in seeds:
        r = run_seed(seed, options)
        count += 1
        steps += r.steps
        elections += r.elections
        committed += r.committed_entries
        acked += r.acked_entries
        truncations += r.truncations
        faults.update(r.faults)
        coverage.update(r.coverage)
        recovery_max = max(recovery_max, r.recovery_ms)
        if r.violations:
            violations += len(r.violations)
            failed.append(seed)
        if on_result is not None:
            on_result(r)
        if r.violations and stop_on_failure:
            break
    summary.update(
        seeds=count,
        violations=violations,
        failed_seeds=failed,
        steps=steps,
        elections=elections,
        faults=dict(sorted(faults.items())),
        committed_entries=committed,
        acked_entries=acked,
        truncations=truncations,
        recovery_ms_max=recovery_max,
        coverage={key: coverage.get(key, 0) for key in COVERAGE_KEYS},
        coverage_gaps=[key for key in COVERAGE_KEYS if not coverage.get(key)],
    )
    return summary
