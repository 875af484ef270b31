"""Raft's safety properties, checked incrementally as the simulated nodes produce Readies.

* Election safety: at most one leader per term.
* Log matching: an (index, term) pair names one entry, with one predecessor term, on every node (checked
  per appended entry, which by induction makes equal (index, term) imply equal prefixes).
* Leader completeness: a new leader holds the highest entry known committed, with its term.
* State machine safety: committed entries never change; each node applies them in order, without gaps.
* Commit monotonicity: a node's commit index never goes back while it runs, and what a node had committed
  is still in its log (or in its snapshot) after a restart.
* Snapshots: an installed snapshot is of a committed entry (index, term) at or above what the node applied;
  the state machine's state is the same on every node at the same applied index (`on_state`), so a snapshot
  that loses state, or an install that loses entries, shows.
* After the network heals: every committed (and client-acknowledged) entry is in every member's log.
* Membership (thesis 4.1): each node's configuration is followed here from its own log (`configs`, rebuilt from
  the entries and snapshots each Ready writes, not taken from the core): a leader holds at most one
  configuration entry above its commit index, and leads only while a voter of its committed configuration (a
  removed leader steps down once its removal commits). The commit and vote majorities are checked against the
  configuration in effect (shmraft.sim.promises).

Each check costs O(1) per entry or per event, so it can run after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shmraft.raft.core import RaftCore
from shmraft.raft.membership import ClusterConfig, decode_membership, membership_of_entry
from shmraft.raft.ready import Ready
from shmraft.raft.types import LogStorage, Role


@dataclass(slots=True)
class NodeView:
    """What the checker remembers about one node incarnation."""

    commit: int = 0
    applied: int = 0
    last: int = 0  # last index handed out for persisting


@dataclass
class Checker:
    violations: list[str] = field(default_factory=list)
    leaders: dict[int, int] = field(default_factory=dict)  # term -> leader id
    registry: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)  # (i, t) -> (data, prev t)
    committed: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (term, data)
    max_committed: int = 0
    elections: int = 0
    truncations: int = 0  # appends that replaced a suffix of a node's log (conflict resolution at work)
    nodes: dict[int, NodeView] = field(default_factory=dict)
    states: dict[int, bytes] = field(default_factory=dict)  # applied index -> state machine state there
    # per node: (index, configuration) of the configurations in its log, oldest first (the first one the base)
    configs: dict[int, list[tuple[int, ClusterConfig]]] = field(default_factory=dict)
    conf_entries_truncated: int = 0  # configuration entries replaced by a leader's entries
    configs_from_snapshots: int = 0  # installed snapshots that carried a configuration

    def config_of(self, node: int) -> ClusterConfig:
        """The configuration in effect on `node`: the latest in its log."""
        return self.configs[node][-1][1]

    def committed_config_of(self, node: int, commit: int) -> tuple[int, ClusterConfig]:
        """The latest configuration at or below `commit` in `node`'s log, with its index."""
        found = self.configs[node][0]
        for item in self.configs[node]:
            if item[0] > commit:
                break
            found = item
        return found

    def violation(self, now_us: int, text: str) -> None:
        self.violations.append(f"t={now_us / 1000:.3f}ms {text}")

    def started(self, node: int, core: RaftCore, now_us: int, commit_before_crash: int) -> None:
        """A node (re)started from its storage: what it had committed must still be there."""
        if commit_before_crash:
            c = min(commit_before_crash, self.max_committed)
            want = self.committed.get(c)
            if want is not None and c >= core.first_index - 1 and core.term_at(c) != want[0]:
                self.violation(
                    now_us,
                    f"node {node} lost committed entry {c} across a restart "
                    f"(term {core.term_at(c)} instead of {want[0]})",
                )
        self.nodes[node] = NodeView(commit=core.commit_index, applied=core.applied_index, last=core.last_index)

    def scan_configs(self, node: int, storage: LogStorage, bootstrap: ClusterConfig) -> None:
        """Rebuild `node`'s configurations from its storage at a start (its snapshot's, else the bootstrap one,
        then every configuration entry of its log)."""
        snap = storage.snapshot()
        if snap is not None and snap.config:
            configs = [(snap.index, decode_membership(snap.config))]
        else:
            configs = [(storage.first_index() - 1, bootstrap)]
        lo = max(configs[0][0] + 1, storage.first_index())
        if lo <= storage.last_index():
            for e in storage.entries(lo, storage.last_index() + 1, 1 << 62):
                conf = membership_of_entry(e.data)
                if conf is not None:
                    configs.append((e.index, conf))
        self.configs[node] = configs

    def on_ready(self, node: int, core: RaftCore, rd: Ready, now_us: int) -> None:
        view = self.nodes[node]
        soft = rd.soft_state
        if soft is not None and soft.role == Role.LEADER:
            self.elections += 1
            other = self.leaders.setdefault(soft.term, node)
            if other != node:
                self.violation(now_us, f"two leaders in term {soft.term}: {other} and {node}")
            c = self.max_committed
            if c and core.term_at(c) != self.committed[c][0]:
                self.violation(
                    now_us,
                    f"leader {node} of term {soft.term} lacks committed entry {c} "
                    f"(has term {core.term_at(c)}, committed term {self.committed[c][0]})",
                )
        snap = rd.snapshot
        if snap is not None:
            known = self.committed.get(snap.index)
            if snap.index < view.applied or snap.index < view.commit:
                self.violation(
                    now_us,
                    f"node {node} installs a snapshot at {snap.index} below its applied {view.applied} / commit "
                    f"{view.commit}",
                )
            if known is not None and known[0] != snap.term:
                self.violation(
                    now_us, f"node {node} installs a snapshot at {snap.index} of term {snap.term}, committed {known[0]}"
                )
            view.applied = snap.index
            view.last = snap.index
            configs = self.configs[node]
            if snap.config:
                self.configs_from_snapshots += 1
                base = decode_membership(snap.config)
            else:
                base = self.committed_config_of(node, snap.index)[1]
            self.configs[node] = [(snap.index, base)]
        if rd.entries:
            registry = self.registry
            prev_term = core.term_at(rd.entries[0].index - 1)
            if rd.entries[0].index <= view.last:
                self.truncations += 1
            view.last = rd.entries[-1].index
            if rd.entries[0].index <= view.commit:
                self.violation(
                    now_us, f"node {node} rewrites entry {rd.entries[0].index} at or below its commit {view.commit}"
                )
            for e in rd.entries:
                key = (e.index, e.term)
                seen = registry.get(key)
                if seen is None:
                    registry[key] = (e.data, prev_term if prev_term is not None else -1)
                elif seen[0] != e.data or (prev_term is not None and seen[1] not in (prev_term, -1)):
                    self.violation(
                        now_us, f"log matching: node {node} holds a different entry (index {e.index}, term {e.term})"
                    )
                prev_term = e.term
            configs = self.configs[node]
            first = rd.entries[0].index
            while len(configs) > 1 and configs[-1][0] >= first:
                configs.pop()
                self.conf_entries_truncated += 1
            for e in rd.entries:
                conf = membership_of_entry(e.data)
                if conf is not None:
                    configs.append((e.index, conf))
        hs = rd.hard_state
        if hs is not None:
            if hs.commit < view.commit:
                self.violation(now_us, f"node {node} commit went back from {view.commit} to {hs.commit}")
            view.commit = hs.commit
        for e in rd.committed_entries:
            if e.index != view.applied + 1:
                self.violation(now_us, f"node {node} applied {e.index} after {view.applied}")
            view.applied = e.index
            known = self.committed.get(e.index)
            if known is None:
                self.committed[e.index] = (e.term, e.data)
                if e.index > self.max_committed:
                    self.max_committed = e.index
            elif known != (e.term, e.data):
                self.violation(
                    now_us, f"node {node} committed a different entry at {e.index}: term {e.term} vs term {known[0]}"
                )

    def check_membership(self, node: int, core: RaftCore, now_us: int) -> None:
        """After each Ready of `node`: one change at a time on a leader; no leader outside its committed
        configuration."""
        if core.role != Role.LEADER:
            return
        configs = self.configs[node]
        commit = core.commit_index
        above = sum(1 for index, _ in configs if index > commit)
        if above > 1:
            self.violation(now_us, f"leader {node} holds {above} uncommitted configuration entries (one at a time)")
        index, latest = configs[-1]
        if not latest.is_voter(node) and index <= commit:
            self.violation(
                now_us, f"leader {node} keeps leading after its removal (configuration entry {index}) committed"
            )

    def on_state(self, node: int, applied: int, state: bytes, now_us: int) -> None:
        """Node `node`'s state machine stands at `applied` with `state`: every node's state there is the same."""
        known = self.states.setdefault(applied, state)
        if known != state:
            self.violation(
                now_us, f"node {node} state machine at {applied} differs: {state[:60]!r} vs {known[:60]!r} elsewhere"
            )

    def check_converged(self, cores: dict[int, RaftCore], acked: list[tuple[int, int, bytes]], now_us: int) -> None:
        """After the heal: every committed and every acknowledged entry is in every node's log."""
        for node, core in cores.items():
            if core.commit_index < self.max_committed:
                self.violation(now_us, f"node {node} commit {core.commit_index} < committed {self.max_committed}")
                continue
            lo = core.first_index
            held = {e.index: e for e in core.log_entries(lo, self.max_committed + 1, 1 << 62)}
            for index, (term, data) in self.committed.items():
                if index < lo:
                    continue
                e = held.get(index)
                if e is None or e.term != term or e.data != data:
                    self.violation(now_us, f"node {node} is missing committed entry {index}")
                    break
            for index, term, data in acked:
                e = held.get(index)
                if index >= lo and (e is None or e.term != term or e.data != data):
                    self.violation(now_us, f"node {node} is missing acknowledged entry {index}")
                    break
