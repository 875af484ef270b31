"""Directed scenarios from the Raft paper, replayed step by step on the in-memory harness.

Random faults rarely build some interleavings that the safety rules exist for. Figure 8 is the famous
one: an old-term entry that reaches a majority must not be committed by counting replicas, because a
later leader may still overwrite it. The simulator runs these scenarios beside its random seeds and checks
them with the same rule as everywhere else: an entry applied (committed) at an index on one node is the
entry applied at that index on every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shmraft.raft.config import RaftConfig
from shmraft.raft.messages import AppendEntries, Message
from shmraft.sim.harness import Cluster


@dataclass
class ScenarioResult:
    name: str
    violations: list[str] = field(default_factory=list)
    detail: dict[str, object] = field(default_factory=dict)


def figure_8(mutation: str = "") -> ScenarioResult:
    """Raft figure 8 on 5 nodes (S1..S5)."""
    c = Cluster(5, config=RaftConfig(max_append_entries=1, test_only_mutation=mutation))
    # (a) S1 leads; its entry 2 reaches only S2
    c.elect(1)
    c.blocked |= {(1, 3), (1, 4), (1, 5)}
    c.propose(1, b"X")
    c.deliver_all()
    c.heal()
    c.crash(1)
    for i in (2, 3, 4, 5):
        c.cores[i].peer_disconnected(1)
    # (b) S5 wins with S3 and S4 and appends its no-op at index 2, which reaches nobody; S5 crashes
    c.elect(5, drop=lambda m: isinstance(m, AppendEntries) and m.src == 5)
    c.crash(5)
    # (c) S1 returns, wins with S2..S4, replicates its old entry 2 to S3 but its own no-op (3) only to S2
    c.restart(1)
    c.tick(c.config.election_timeout_ms + c.config.election_timeout_spread_ms, nodes=[1])  # learns term 2
    probes_to_3: list[AppendEntries] = []

    def drop(m: Message) -> bool:
        if not isinstance(m, AppendEntries) or m.dst not in (3, 4, 5):
            return False
        if m.dst == 3 and any(e.index >= 3 for e in m.entries):
            probes_to_3.append(m)
            return len(probes_to_3) > 1  # the first probe is let through (and rejected: S3 lacks entry 2)
        return m.dst != 3

    c.elect(1, drop=drop)
    s1_commit = c.cores[1].commit_index
    s1_applied = [(e.index, e.term) for e in c.applied[1]]
    c.crash(1)
    # (d) S5 returns and wins with S3 and S4 (its last term 2 beats their entry 2 of term 1)
    c.restart(5)
    for i in (2, 3, 4):
        c.cores[i].peer_disconnected(1)
    c.tick(c.config.election_timeout_ms + c.config.election_timeout_spread_ms, nodes=[5])  # learns term 3
    c.elect(5)
    c.run(300)
    s5_applied = [(e.index, e.term) for e in c.applied[5]]
    result = ScenarioResult(
        "figure_8", detail={"s1_commit": s1_commit, "s1_applied": s1_applied, "s5_applied": s5_applied}
    )
    applied = {i: dict((e.index, e.term) for e in c.applied[i]) for i in c.ids}
    applied[1] = dict(s1_applied)  # what S1 applied before it crashed counts: clients were told
    for a in c.ids:
        for b in c.ids:
            for index in applied[a].keys() & applied[b].keys():
                if a < b and applied[a][index] != applied[b][index]:
                    result.violations.append(
                        f"figure_8: committed entry {index} differs: S{a} applied term "
                        f"{applied[a][index]}, S{b} term {applied[b][index]}"
                    )
    return result


SCENARIOS: dict[str, Callable[[str], ScenarioResult]] = {"figure_8": figure_8}


def run_scenarios(mutation: str = "") -> list[ScenarioResult]:
    return [scenario(mutation) for scenario in SCENARIOS.values()]
