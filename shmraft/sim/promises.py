"""Direct checks of durable state: every promise a node makes is backed by what its disk holds.

The safety checks of shmraft.sim.checker see a broken vote or an early acknowledgement only through a later
consequence (two leaders, a lost entry), which a schedule may never build. These checks look at the promise
itself, at the moment it leaves the node, against the node's storage (MemStorage under fsync `always`: what
is written is durable), and keep their records outside the nodes so that they survive crashes:

* one vote per voter per term, across incarnations (a candidate's vote for itself included);
* a vote grant, a vote request and an append acknowledgement cover only durable state;
* a leader commits an index only once a majority of the voters of its configuration in effect (followed by
  the Checker from the log, not taken from the core) durably holds its entry (own self-count included);
* a leader won its term with the votes of a majority of the voters of its configuration in effect;
* a node never replaces an entry it acknowledged in its current term;
* a follower's commit index never covers an entry that differs from its leader's;
* a node whose log was lost never votes, pre-votes or campaigns until it durably holds a committed entry
  of a term >= its recovery term (the rule is judged here from the cluster's commits, not the core's view).

Each check is O(1) per message, or O(entries) per written entry, so it runs on every step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shmraft.raft.messages import AppendResponse, Message, RequestVote, VoteResponse
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, Role
from shmraft.sim.checker import Checker
from shmraft.sim.node import SimNode


@dataclass(slots=True)
class AckRecord:
    """What one node acknowledged in one term: index -> term of each entry its acks covered."""

    term: int = 0
    max_index: int = 0
    terms: dict[int, int] = field(default_factory=dict)


class PromiseChecker:
    """Checks promises of the nodes of one simulation; reports into the shared Checker."""

    def __init__(self, checker: Checker, nodes: dict[int, SimNode], coverage: Counter[str]) -> None:
        self.checker = checker
        self.nodes = nodes
        self.coverage = coverage
        self.votes: dict[tuple[int, int], int] = {}  # (voter, term) -> candidate, kept across crashes
        self.acks: dict[int, AckRecord] = {i: AckRecord() for i in nodes}
        self.enabled = all(n.storage.fsync == "always" for n in nodes.values())

    # --- records ---------------------------------------------------------------------------------------------
    def _record_vote(self, voter: int, term: int, candidate: int, now_us: int) -> None:
        other = self.votes.setdefault((voter, term), candidate)
        if other != candidate:
            self.checker.violation(now_us, f"node {voter} voted for {other} and for {candidate} in term {term}")

    def log_lost(self, node_id: int) -> None:
        """A node's log was quarantined: what it acknowledged is legitimately gone from it."""
        self.acks[node_id] = AckRecord()

    def recovering(self, node: SimNode) -> bool:
        """Whether `node` lost its log and does not yet durably hold a committed entry of a term >= the
        recovery term. Clears the node's flag once it does."""
        rterm = node.lost_log_term
        if not rterm:
            return False
        c = min(node.storage.last_index(), self.checker.max_committed)
        want = self.checker.committed.get(c)
        if c and want is not None and want[0] >= rterm and node.storage.term_at(c) == want[0]:
            node.lost_log_term = 0
            self.coverage["recovery_completed"] += 1
            return False
        return True

    # --- hooks -----------------------------------------------------------------------------------------------
    def on_vote_request(self, node: SimNode, m: RequestVote, now_us: int) -> None:
        """Step a vote request into `node` and check the decision it takes against the election restriction
        (5.4.1): a vote goes only to a candidate whose log is at least as up to date as the voter's."""
        core = node.core
        assert core is not None
        before = (core.term, core.vote, core.last_term, core.last_index)
        core.step(m)
        if m.pre_vote or core.vote != m.src or core.term != m.term or before[:2] == (m.term, m.src):
            return
        _, _, last_term, last_index = before
        if (m.last_term, m.last_index) < (last_term, last_index):
            self.checker.violation(
                now_us,
                f"node {node.id} votes for {m.src} in term {m.term} whose log ends at ({m.last_index}, term "
                f"{m.last_term}), behind its own ({last_index}, term {last_term})",
            )

    def on_send(self, node: SimNode, m: Message, now_us: int) -> None:
        """`node` sends `m` now: a vote, vote request or acknowledgement must be durable already."""
        if isinstance(m, VoteResponse):
            if not m.granted:
                return
            if self.recovering(node):
                self.checker.violation(
                    now_us, f"node {node.id} grants a {'pre-' if m.pre_vote else ''}vote while recovering"
                )
            if m.pre_vote:
                return
            self.coverage["votes_granted"] += 1
            if now_us - node.started_at_us < 1_000_000 and node.incarnation:
                self.coverage["votes_after_restart"] += 1
            self._record_vote(node.id, m.term, m.dst, now_us)
            if self.enabled:
                hs = node.storage.hard_state()
                if hs.term != m.term or hs.vote != m.dst:
                    self.checker.violation(
                        now_us,
                        f"node {node.id} grants its vote to {m.dst} in term {m.term} before it is durable "
                        f"(durable term {hs.term} vote {hs.vote})",
                    )
        elif isinstance(m, RequestVote):
            if self.recovering(node):
                self.checker.violation(now_us, f"node {node.id} campaigns while recovering")
            if m.pre_vote:
                return
            self._record_vote(node.id, m.term, node.id, now_us)
            if self.enabled:
                hs = node.storage.hard_state()
                if hs.term != m.term or hs.vote != node.id:
                    self.checker.violation(
                        now_us,
                        f"node {node.id} asks for votes in term {m.term} before its own vote is durable "
                        f"(durable term {hs.term} vote {hs.vote})",
                    )
        elif isinstance(m, AppendResponse) and m.success:
            self._on_ack(node, m, now_us)

    def _on_ack(self, node: SimNode, m: AppendResponse, now_us: int) -> None:
        storage = node.storage
        held = storage.term_at(m.index) if m.index else 0
        if self.enabled and (held is None or m.index > storage.last_index()):
            self.checker.violation(
                now_us, f"node {node.id} acknowledges index {m.index} but durably holds up to {storage.last_index()}"
            )
            return
        rec = self.acks[node.id]
        if m.term != rec.term:
            if m.term < rec.term:
                return  # a late acknowledgement of an older term promises nothing about the current one
            self.acks[node.id] = rec = AckRecord(m.term)
        if m.index > rec.max_index:
            for i in range(max(rec.max_index + 1, storage.first_index()), m.index + 1):
                t = storage.term_at(i)
                if t is not None:
                    rec.terms[i] = t
            rec.max_index = m.index

    def on_ready(self, node: SimNode, rd: Ready, prev_commit: int, now_us: int) -> None:
        """`node` produced `rd` (before acting on it): check its writes and its commit advance."""
        core = node.core
        assert core is not None
        if rd.entries:
            self._check_rewrite(node, rd.entries, core.term, now_us)
        if rd.snapshot is not None:
            rec = self.acks[node.id]
            if rec.term == core.term and rec.max_index > rd.snapshot.index:
                self.checker.violation(
                    now_us,
                    f"node {node.id} installs a snapshot at {rd.snapshot.index}, discarding entries up to "
                    f"{rec.max_index} it acknowledged in term {core.term}",
                )
        hs = rd.hard_state
        if hs is None or hs.commit <= prev_commit:
            return
        c = hs.commit
        if core.role == Role.LEADER or self.checker.leaders.get(core.term) == node.id:
            # (the leader of this term, also when it stepped down in the step that committed: its own removal)
            t = core.term_at(c)
            voters = self.checker.config_of(node.id).voters()
            quorum = len(voters) // 2 + 1  # computed here, not with the code under test
            holders = sum(
                1
                for v in voters
                if (n := self.nodes[v]).storage.term_at(c) == t or n.storage.snapshot_index() > c or n.log_lost_ever
            )
            if self.enabled and holders < quorum:
                self.checker.violation(
                    now_us,
                    f"leader {node.id} commits {c} (term {t}) durably held by {holders} of its voters {voters}, "
                    f"fewer than a majority ({quorum})",
                )
            return
        leader = self.nodes.get(core.leader)
        if leader is None or not leader.up or leader.core is None:
            return
        lc = leader.core
        if lc.role != Role.LEADER or lc.term != core.term:
            return
        lt, ft = lc.term_at(c), core.term_at(c)
        if lt is not None and lt != ft:
            self.checker.violation(
                now_us, f"follower {node.id} commits {c} holding term {ft} where its leader {leader.id} has term {lt}"
            )

    def _check_rewrite(self, node: SimNode, entries: list[Entry], term: int, now_us: int) -> None:
        rec = self.acks[node.id]
        first, last = entries[0].index, entries[-1].index
        if rec.term != term or first > rec.max_index:
            return
        for e in entries:
            if e.index > rec.max_index:
                break
            t = rec.terms.get(e.index)
            if t is not None and t != e.term:
                self.checker.violation(
                    now_us,
                    f"node {node.id} replaces entry {e.index} (term {t}) it acknowledged in term {term} "
                    f"with term {e.term}",
                )
                return
        if last < rec.max_index:
            self.checker.violation(
                now_us,
                f"node {node.id} cuts its log to {last} below index {rec.max_index} it acknowledged in term {term}",
            )

    def on_leader(self, node: SimNode, term: int, now_us: int) -> None:
        """`node` won `term`: a majority (itself included) must have voted for it in that term."""
        voters = self.checker.config_of(node.id).voters()
        quorum = len(voters) // 2 + 1
        votes = sum(1 for v in voters if self.votes.get((v, term)) == node.id)
        if votes < quorum:
            self.checker.violation(
                now_us,
                f"node {node.id} leads term {term} with {votes} recorded votes of its voters {voters}, "
                f"fewer than {quorum}",
            )
