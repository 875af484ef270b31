"""The fault plan of one seed: network rates, clock drift, disk latency and scheduled fault events.

Everything here is drawn from the seed's own random stream, before the run starts, so a plan is a pure
function of (seed, options) and a failing seed replays exactly.

Swarm testing (as in FoundationDB's and TigerBeetle's simulators): each seed enables its own random subset
of the fault kinds, with its own weights, and its own network rates. A seed that crashes nodes a lot and
never partitions meets interactions that an even mix of everything dilutes away.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from shmraft.sim.network import NetworkParams

# leader_churn: for its duration every new leader crashes a few ms after winning, with its log only partly
# replicated: the recipe of Raft's figure 8 (an old-term entry on a majority, then a rival with a newer term).
# hold: links keep what is sent on them for seconds, then deliver it all at once (shuffled, duplicated).
# replay: old messages from the recent history are delivered again, typically after terms changed.
# quick_restart: a crash with a downtime of a few ms: the node returns inside the term it crashed in.
# crash_in_persist: a node crashes (power loss) between a Ready's persist request and its completion.
# membership: the leader changes the configuration (add a learner, promote, remove a follower or itself).
FAULT_KINDS = (
    "partition",
    "asymmetric_partition",
    "isolate_leader",
    "crash",
    "crash_leader",
    "connection_reset",
    "transfer_leadership",
    "leader_churn",
    "hold",
    "replay",
    "quick_restart",
    "crash_in_persist",
    "membership",
)
FAULT_WEIGHTS = (2, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 3, 3)
SWARM_KIND_PROBABILITY = 0.6  # each kind is enabled in a seed with this probability (at least one is)
SIM_TICK_MS = 10  # each node calls tick(SIM_TICK_MS) once per (drifted) tick period


@dataclass(slots=True)
class FaultEvent:
    at_us: int
    kind: str
    duration_us: int  # partitions and holds: how long until released; crashes: downtime
    power_loss: bool = False  # crashes: machine crash (unsynced writes lost) rather than process kill


@dataclass(slots=True)
class FaultPlan:
    network: NetworkParams
    tick_period_us: dict[int, int]
    disk_delay_min_us: int
    disk_delay_max_us: int
    slow_disk_probability: float
    propose_interval_us: int
    raft_limits: dict[str, int] = field(default_factory=dict)  # RaftConfig overrides: small windows
    events: list[FaultEvent] = field(default_factory=list)
    kinds: tuple[str, ...] = ()  # the fault kinds this seed's swarm enabled


def make_plan(rng: random.Random, node_ids: list[int], fault_ms: int, faults: bool) -> FaultPlan:
    """Draw one seed's faults. With faults=False: a healthy network, no drift, no events."""
    if not faults:
        return FaultPlan(
            NetworkParams(), {i: SIM_TICK_MS * 1000 for i in node_ids}, 200, 1000, 0.0, rng.choice((5, 10)) * 1000
        )
    net = NetworkParams(
        drop_probability=rng.choice((0.0, 0.01, 0.05, 0.15)),
        duplicate_probability=rng.choice((0.0, 0.01, 0.05)),
        delay_min_us=rng.choice((50, 200)),
        delay_max_us=rng.choice((1000, 3000, 10_000)),
        long_delay_probability=rng.choice((0.0, 0.02, 0.1)),
        long_delay_max_us=rng.choice((20_000, 100_000)),
    )
    drift = rng.random() < 0.5
    ticks = {i: int(SIM_TICK_MS * 1000 * (rng.uniform(0.8, 1.25) if drift else 1.0)) for i in node_ids}
    plan = FaultPlan(
        net,
        ticks,
        rng.choice((100, 500)),
        rng.choice((2000, 5000)),
        rng.choice((0.0, 0.02)),
        rng.choice((2, 5, 10, 25)) * 1000,
    )
    # small flow-control windows make followers lag behind in steps, which is where the commit rule matters
    plan.raft_limits = {
        "max_append_entries": rng.choice((1, 3, 16, 256)),
        "max_inflight_entries": rng.choice((4, 64, 1024)),
    }
    kinds = [k for k in FAULT_KINDS if rng.random() < SWARM_KIND_PROBABILITY] or [rng.choice(FAULT_KINDS)]
    weights = [FAULT_WEIGHTS[FAULT_KINDS.index(k)] * rng.choice((1, 2, 4)) for k in kinds]
    plan.kinds = tuple(kinds)
    for _ in range(rng.randint(2, 16)):
        kind = rng.choices(kinds, weights)[0]
        at = rng.randint(100, max(101, fault_ms - 100)) * 1000
        if kind == "hold":
            duration = rng.randint(500, 4000) * 1000
        elif kind == "quick_restart":
            duration = rng.randint(1, 15) * 1000
        else:
            duration = rng.choice((rng.randint(20, 300), rng.randint(300, 1500))) * 1000
        power_loss = rng.random() < (0.8 if kind in ("quick_restart", "crash_in_persist") else 0.3)
        plan.events.append(FaultEvent(at, kind, duration, power_loss=power_loss))
    plan.events.sort(key=lambda e: e.at_us)
    return plan
