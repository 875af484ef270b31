"""Directed scenarios from the Raft paper, replayed step by step on the in-memory harness.

Random faults rarely build some interleavings that the safety rules exist for. Figure 8 is the famous
one: an old-term entry that reaches a majority must not be committed by counting replicas, because a
later leader may still overwrite it. Each scenario is a short script (in the spirit of etcd's datadriven
interaction tests) whose docstring states the rule it pins; it checks that rule where it could break and
ends with the rule checked everywhere: an entry applied (committed) at an index on one node is the entry
applied at that index on every node. The simulator runs them all beside its random seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from shmraft.raft.config import RaftConfig
from shmraft.raft.errors import ProposalError
from shmraft.raft.membership import ChangeInProgressError, ConfChange, NotCaughtUpError, QuorumNotActiveError
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    InstallSnapshot,
    Message,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.types import Entry, HardState, Role, Snapshot
from shmraft.sim.harness import Cluster
from shmraft.sim.simulator import describe_exception


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


def _timeout(c: Cluster) -> int:
    return c.config.election_timeout_ms + c.config.election_timeout_spread_ms


def _check_applied(c: Cluster, result: ScenarioResult, before: dict[int, list] | None = None) -> None:
    """The rule every scenario ends with: what two nodes applied at an index is the same entry."""
    applied = {i: {e.index: e.term for e in c.applied[i]} for i in c.ids}
    for i, entries in (before or {}).items():
        applied[i].update(entries)  # what a node applied before it crashed counts: clients were told
    for a in c.ids:
        for b in c.ids:
            if a < b:
                for index in sorted(applied[a].keys() & applied[b].keys()):
                    if applied[a][index] != applied[b][index]:
                        result.violations.append(
                            f"{result.name}: committed entry {index} differs: S{a} applied term "
                            f"{applied[a][index]}, S{b} term {applied[b][index]}"
                        )
                        return


def stale_suffix_append(mutation: str = "") -> ScenarioResult:
    """Rule: a follower commits only up to the last entry the accepted append covered (min(leader commit,
    last new index)), never into a stale suffix beyond it.

    S3 holds entries 4-5 of term 1 that nobody else has (its leader S1 crashed) and knows commit 2. S2 leads
    term 2 and commits 4-6 of its own with S4, S5. S2's probe towards S3, reset below the divergence, is a
    small append: entry 3 only, which matches, with S2's commit 6. S3 accepts it and keeps its stale 4-5
    (they are not in the append to conflict with): it may commit 3, not 5."""
    result = ScenarioResult("stale_suffix_append")
    c = Cluster(5, config=RaftConfig(max_append_entries=1, test_only_mutation=mutation))
    c.elect(1)
    c.propose(1, b"x2")
    c.deliver_all()
    c.blocked |= {(1, 4), (1, 5)}
    for data in (b"x3", b"stale4", b"stale5"):
        c.propose(1, data)

    def first_leader(m: Message) -> bool:
        if m.dst == 2 and isinstance(m, AppendEntries) and any(e.index >= 4 for e in m.entries):
            return True  # S2 gets entry 3 only
        return m.dst == 3 and isinstance(m, AppendEntries | Heartbeat) and m.commit >= 3  # S3 learns commit 2

    c.deliver_all(drop=first_leader)
    c.heal()
    c.crash(1)
    for i in (2, 3, 4, 5):
        c.cores[i].peer_disconnected(1)
    c.blocked |= {(2, 3), (3, 2)}
    c.elect(2)
    for k in (5, 6):
        c.propose(2, b"y%d" % k)
        c.deliver_all()
    leader, s3 = c.cores[2], c.cores[3]
    if leader.commit_index < 6 or s3.term_at(5) != 1 or s3.commit_index != 2 or leader.term_at(3) != 1:
        raise AssertionError(f"setup: leader commit {leader.commit_index}, S3 log {c.log(3)} commit {s3.commit_index}")
    c.heal()
    probe = AppendEntries(2, 3, leader.term, 2, leader.term_at(2) or 0, tuple(leader.log_entries(3, 4, 1 << 20)),
                          leader.commit_index)  # fmt: skip
    c.queue.append(probe)
    c.deliver_all(drop=lambda m: m is not probe and m.dst == 3)
    if s3.commit_index > 3:
        result.violations.append(
            f"stale_suffix_append: S3 commits {s3.commit_index} after an append covering up to 3 "
            f"(its entries 4-5 are a stale term-1 suffix)"
        )
    c.run(500)
    _check_applied(c, result)
    return result


def late_vote_grants(mutation: str = "") -> ScenarioResult:
    """Rule: a vote counts only in the round it was given for: a pre-vote grant is not a vote, and a grant
    of an earlier term is not a grant in this one.

    S1 wins its pre-vote round with S2 and S5 (S3's and S4's pre-vote grants are held back), then in its
    term-1 election S2 and S5 grant but their answers are held back too. Delivering the late pre-vote
    grants must not elect S1; nor, once S1 campaigns again in term 2 and hears nobody, must the late
    term-1 grants."""
    result = ScenarioResult("late_vote_grants")
    c = Cluster(5, config=RaftConfig(test_only_mutation=mutation))
    held_pre: list[Message] = []
    held_votes: list[Message] = []

    def first_round(m: Message) -> bool:
        if isinstance(m, VoteResponse) and m.pre_vote and m.src in (3, 4):
            held_pre.append(m)
            return True
        if isinstance(m, RequestVote) and not m.pre_vote and m.dst in (3, 4):
            return True  # lost
        if isinstance(m, VoteResponse) and not m.pre_vote:
            held_votes.append(m)
            return True
        return False

    c.cores[1].tick(_timeout(c))
    c.process(1)
    c.deliver_all(drop=first_round)
    if c.cores[1].role != Role.CANDIDATE or len(held_votes) != 2:
        raise AssertionError(f"setup: S1 is {c.cores[1].role.name}, {len(held_votes)} votes held")
    c.queue.extend(held_pre)
    c.deliver_all()
    if c.cores[1].role == Role.LEADER:
        result.violations.append("late_vote_grants: S1 leads term 1 on pre-vote grants (real votes: S1, S2, S5 late)")
        return result
    c.cores[1].tick(_timeout(c))
    c.process(1)
    c.deliver_all(drop=lambda m: isinstance(m, RequestVote) and not m.pre_vote)
    if c.cores[1].term != 2 or c.cores[1].role != Role.CANDIDATE:
        raise AssertionError(f"setup: S1 is {c.cores[1].role.name} in term {c.cores[1].term}")
    c.queue.extend(held_votes)
    c.deliver_all()
    if c.cores[1].role == Role.LEADER:
        result.violations.append("late_vote_grants: S1 leads term 2 on the term-1 grants of S2 and S5")
    return result


def _s3_lost_its_log(mutation: str) -> tuple[Cluster, int]:
    """Three nodes; S3 lost its log in term 1 and restarted recovering in term 2; its answer made S1 step
    down and a leader of term 2 was elected without S3, which holds nothing yet. Returns (cluster, leader)."""
    c = Cluster(3, config=RaftConfig(max_append_entries=1, test_only_mutation=mutation))
    c.elect(1)
    for k in range(2, 5):
        c.propose(1, b"x%d" % k)
        c.deliver_all()
    c.crash(3)
    c.restart(3, lose_log=True)
    c.blocked |= {(1, 3), (2, 3)}  # S3 hears nothing until the new leader is elected
    c.cores[1].step(AppendResponse(3, 1, c.cores[3].term, 0, False))  # S3's answer: its term is 2
    c.process(1)
    lead = 0
    for _ in range(100):
        c.run(50)
        lead = c.leader()
        if lead and c.cores[lead].term >= c.cores[3].term:
            break
    c.heal()
    if not lead or c.cores[3].term_at(1) is not None or not c.cores[3].recovering:
        raise AssertionError(f"setup: leader {lead}, S3 log {c.log(3)}, recovering {c.cores[3].recovering}")
    return c, lead


def recovery_on_older_terms(mutation: str = "") -> ScenarioResult:
    """Rule: a node that lost its log leaves recovering mode only once it holds, durably and committed, an
    entry of a term >= its recovery term; until then it grants no vote.

    S3 loses its log in term 1 and restarts in term 2 (recovering). Its answer makes S1 step down; a new
    leader is elected in term 2 without S3 and replicates to S3, one entry at a time, the committed term-1
    entries and finally its own term-2 no-op, whose write S3 holds back. Until that write is durable S3
    must stay recovering and refuse a vote."""
    result = ScenarioResult("recovery_on_older_terms")
    c, lead = _s3_lost_its_log(mutation)
    noop = c.cores[lead].last_index
    c.cores[lead].tick(c.config.heartbeat_interval_ms)  # the heartbeat that starts S3's catch-up
    c.process(lead)
    while c.queue:  # one message at a time, checking S3 after each
        m = c.queue.popleft()
        if m.dst == 3 and c.cores[3].last_index >= noop - 1 and any(e.index >= noop for e in getattr(m, "entries", ())):
            c.hold_persist.add(3)  # the write of the first entry of a term >= the recovery term is slow
        c.cores[m.dst].step(m)
        c.process(m.dst)
        s3 = c.cores[3]
        if not s3.recovering and c.storages[3].last_index() < noop:
            result.violations.append(
                f"recovery_on_older_terms: S3 left recovering mode holding entries up to {s3.last_index} "
                f"(durable {c.storages[3].last_index()}), none durable of a term >= its recovery term"
            )
            return result
    if c.cores[3].last_index < noop - 1:
        raise AssertionError(f"setup: S3 did not catch up: {c.log(3)}")
    sent_before = len(c.sent)
    c.cores[3].step(RequestVote(2, 3, c.cores[3].term + 1, 1 << 30, 1 << 30, transfer=True))  # past any lease
    c.process(3)
    c.queue.clear()
    c.release(3)  # the grant or refusal was decided while recovering; it leaves once the write is durable
    if any(isinstance(m, VoteResponse) and m.granted and m.src == 3 for m in c.sent[sent_before:]):
        result.violations.append("recovery_on_older_terms: S3 grants a vote while recovering")
    c.run(500)
    _check_applied(c, result)
    return result


def transfer_to_recovering(mutation: str = "") -> ScenarioResult:
    """Rule: a recovering node never campaigns, not even when a leader hands it leadership (TimeoutNow).

    S3 lost its log (restarted recovering in term 2); S2 is elected in term 2 and S3 catches up with it,
    acknowledging S2's no-op before anyone else; the news that the no-op is committed never reaches S3, so
    S3 holds the whole log yet is still recovering. S2 then transfers leadership to the caught-up S3."""
    result = ScenarioResult("transfer_to_recovering")
    c = Cluster(3, config=RaftConfig(test_only_mutation=mutation))
    c.elect(1)
    c.propose(1, b"x2")
    c.deliver_all()
    c.crash(3)
    c.restart(3, lose_log=True)
    c.cores[1].step(AppendResponse(3, 1, c.cores[3].term, 0, False))  # S3's answer: its term is 2
    c.process(1)
    c.blocked |= {(2, 3), (3, 2)}
    c.elect(2, drop=lambda m: isinstance(m, AppendEntries) and m.dst == 1)
    noop = c.cores[2].last_index
    c.heal()

    def hide_commit(m: Message) -> bool:
        to_3 = m.dst == 3 and isinstance(m, AppendEntries | Heartbeat) and m.commit >= noop
        return to_3 or (isinstance(m, AppendEntries) and m.dst == 1)

    for _ in range(5):
        c.cores[2].tick(c.config.heartbeat_interval_ms)
        c.process(2)
        c.deliver_all(drop=hide_commit)
    if c.cores[3].last_index != noop or not c.cores[3].recovering or c.cores[2].role != Role.LEADER:
        raise AssertionError(f"setup: S3 log {c.log(3)}, recovering {c.cores[3].recovering}")
    c.cores[2].transfer_leadership(3)
    c.process(2)
    c.deliver_all(drop=hide_commit)
    if c.cores[3].role != Role.FOLLOWER:
        result.violations.append(
            f"transfer_to_recovering: S3 campaigns while recovering: {c.cores[3].role.name} in term {c.cores[3].term}"
        )
    c.run(500)
    _check_applied(c, result)
    return result


def transfer_to_lagging(mutation: str = "") -> ScenarioResult:
    """Rule: leadership transfer never elects a node whose log lacks committed entries: the leader sends
    TimeoutNow only to a caught-up target, and a TimeoutNow that arrives late, once the target lags, still
    needs votes from up-to-date voters.

    S1 leads; S3 is caught up and S1 transfers to it, but the TimeoutNow is held back; the transfer times
    out and S1 commits more entries with S2 while S3 hears nothing. Transferring to the lagging S3 again
    must not send TimeoutNow; the late one finally reaches S3, which campaigns and must lose."""
    result = ScenarioResult("transfer_to_lagging")
    c = Cluster(3, config=RaftConfig(test_only_mutation=mutation))
    c.elect(1)
    c.propose(1, b"a")
    c.deliver_all()
    c.cores[1].transfer_leadership(3)
    c.process(1)
    held = [m for m in c.queue if isinstance(m, TimeoutNow)]
    if not held:
        raise AssertionError("setup: no TimeoutNow for the caught-up S3")
    c.queue.clear()
    c.run(_timeout(c) + 20)
    c.blocked |= {(1, 3), (3, 1)}
    for k in range(3):
        c.propose(1, b"b%d" % k)
        c.deliver_all()
    c.cores[1].transfer_leadership(3)
    c.process(1)
    if any(isinstance(m, TimeoutNow) for m in c.queue):
        result.violations.append("transfer_to_lagging: S1 sends TimeoutNow to S3, which lags")
    c.queue.clear()
    committed = c.cores[1].commit_index
    c.heal()
    c.blocked |= {(1, 3), (3, 1)}  # S3 is still cut from S1, reaches S2 only
    c.queue.extend(held)
    c.blocked.discard((1, 3))
    c.deliver_all()
    if c.cores[3].role == Role.LEADER and c.cores[3].last_index < committed:
        result.violations.append(
            f"transfer_to_lagging: S3 leads term {c.cores[3].term} without committed entries "
            f"(its last {c.cores[3].last_index} < commit {committed})"
        )
    c.heal()
    c.run(500)
    _check_applied(c, result)
    return result


def rejection_hint_is_not_a_match(mutation: str = "") -> ScenarioResult:
    """Rule: a rejection's hint tells the leader where to probe next, never what the follower matches; a
    heartbeat then carries at most the commit of a real match.

    Figure 7 (f) style logs: S1, S2, S4 hold 1-3 of term 1 and 4 of term 3 (committed); S3 holds 1-2 of term 1
    and a deposed leader's 3 of term 2; S5 holds 1-2. S1 is elected in term 4, so its first probe to S3 is at
    prev (4, term 3); S3's hint is its entry 3 of term 2, where S1's entry 3 is of term 1. A heartbeat reaches
    S3 before S1's next probe does."""
    result = ScenarioResult("rejection_hint_is_not_a_match")
    c = Cluster(5, config=RaftConfig(test_only_mutation=mutation))
    logs = {1: [1, 1, 1, 3], 2: [1, 1, 1, 3], 4: [1, 1, 1, 3], 3: [1, 1, 2], 5: [1, 1]}
    commits = {1: 4, 2: 4, 4: 4, 3: 2, 5: 2}
    for i, terms in logs.items():
        c.crash(i)
        c.storages[i] = MemStorage()
        c.storages[i].append([Entry(k, t, b"%d-%d" % (k, t)) for k, t in enumerate(terms, 1)], HardState(3, 0, 0))
        c.storages[i].set_hard_state(HardState(3, 0, commits[i]))
        c.restart(i)

    def s3_hears_only_heartbeats(m: Message) -> bool:
        return m.dst == 3 and isinstance(m, AppendEntries) and m.prev_index <= 3

    c.elect(1, drop=lambda m: m.dst == 3)
    leader = c.cores[1]
    for _ in range(4):  # heartbeat, S3's answer, the probe at prev 4 and its rejection, then heartbeats
        leader.tick(c.config.heartbeat_interval_ms)
        c.process(1)
        c.deliver_all(drop=s3_hears_only_heartbeats)
    s3 = c.cores[3]
    if leader.term_at(3) != 1 or leader.commit_index < 5:
        raise AssertionError(f"setup: leader log {c.log(1)} commit {leader.commit_index}")
    if s3.commit_index >= 3 and s3.term_at(3) != leader.term_at(3):
        result.violations.append(
            f"rejection_hint_is_not_a_match: S3 commits {s3.commit_index} holding entry 3 of term {s3.term_at(3)}; "
            f"the leader's (committed) entry 3 is of term {leader.term_at(3)}"
        )
        return result
    c.run(500)
    _check_applied(c, result)
    return result


def heartbeat_past_match(mutation: str = "") -> ScenarioResult:
    """Rule: a leader's heartbeat tells a follower to commit at most what the leader knows it matches; the
    follower never commits a stale entry on a heartbeat.

    S3 holds entries 4-5 of term 1 that nobody else has. S2 leads term 2 and commits its own 4-6 with S4
    and S5 while its appends to S3 are lost; S2's heartbeats still reach S3."""
    result = ScenarioResult("heartbeat_past_match")
    c = Cluster(5, config=RaftConfig(test_only_mutation=mutation))
    c.elect(1)
    c.propose(1, b"x2")
    c.propose(1, b"x3")
    c.deliver_all()
    c.blocked |= {(1, 2), (1, 4), (1, 5)}
    c.propose(1, b"stale4")
    c.propose(1, b"stale5")
    c.deliver_all()
    c.heal()
    c.crash(1)
    for i in (2, 3, 4, 5):
        c.cores[i].peer_disconnected(1)

    def lost(m: Message) -> bool:
        return isinstance(m, AppendEntries | RequestVote) and m.dst == 3

    c.elect(2, drop=lost)
    for k in (5, 6):
        c.propose(2, b"y%d" % k)
        c.deliver_all(drop=lost)
    for _ in range(5):
        for i in c.ids:
            if i not in c.down:
                c.cores[i].tick(c.config.heartbeat_interval_ms)
                c.process(i)
        c.deliver_all(drop=lost)
    leader = c.cores[2]
    for e in c.applied[3]:
        if leader.term_at(e.index) != e.term:
            result.violations.append(
                f"heartbeat_past_match: S3 committed entry {e.index} of term {e.term}; "
                f"the leader's entry {e.index} is of term {leader.term_at(e.index)}"
            )
            return result
    c.run(500)
    _check_applied(c, result)
    return result


def _snapshot_cluster(mutation: str, entries: int = 8) -> tuple[Cluster, int]:
    """Node 1 leads 3 nodes; node 3 misses `entries` committed entries; nodes 1 and 2 save a snapshot at the
    commit index (its state: b"state@<index>") and compact there. Small chunks: a transfer takes several."""
    c = Cluster(3, config=RaftConfig(snapshot_chunk_bytes=4, test_only_mutation=mutation))
    c.elect(1)
    c.isolate(3)
    for k in range(entries):
        c.propose(1, b"e%d" % k)
        c.deliver_all()
    c.run(100)
    index = c.cores[1].commit_index
    for i in (1, 2):
        c.compact(i, index, b"state@%d" % index)
    c.heal()
    return c, index


def _check_snapshot_state(c: Cluster, result: ScenarioResult, index: int) -> None:
    """Every snapshot a node installed is the leader's (index, term and state), and node 3 caught up."""
    want = c.storages[1].snapshot()
    for i in c.ids:
        for snap in c.installed[i]:
            if want is not None and snap.index == want.index and snap != want:
                result.violations.append(f"{result.name}: S{i} installed {snap!r}, the leader saved {want!r}")
    if c.cores[3].commit_index < index:
        result.violations.append(f"{result.name}: S3 never caught up (commit {c.cores[3].commit_index} < {index})")


def snapshot_in_partition(mutation: str = "") -> ScenarioResult:
    """Rule: a transfer cut by a partition resumes (from what the follower holds) once the link heals; the
    follower installs exactly the leader's snapshot, state included."""
    result = ScenarioResult("snapshot_in_partition")
    c, index = _snapshot_cluster(mutation)
    sent: list[Message] = []

    def cut_after_three(m: Message) -> bool:
        if isinstance(m, InstallSnapshot):
            sent.append(m)
            return len(sent) > 3
        return False

    for _ in range(3):
        c.cores[1].tick(c.config.heartbeat_interval_ms)
        c.process(1)
        c.deliver_all(drop=cut_after_three)
    c.blocked |= {(1, 3), (3, 1)}
    c.run(200)
    c.heal()
    c.run(500)
    _check_snapshot_state(c, result, index)
    _check_applied(c, result)
    return result


def snapshot_crash_mid_install(mutation: str = "") -> ScenarioResult:
    """Rule: a crash while the install is being written leaves the old log (nothing acknowledged); the leader
    sends the snapshot again and the follower installs it."""
    result = ScenarioResult("snapshot_crash_mid_install")
    c, index = _snapshot_cluster(mutation)
    c.hold_persist.add(3)
    c.run(300)
    if not c.held[3]:
        raise AssertionError(f"setup: S3 wrote nothing: {c.cores[3].status()}")
    acked = [m for m in c.sent if isinstance(m, AppendResponse) and m.src == 3 and m.success and m.index >= index]
    if acked:
        result.violations.append(f"{result.name}: S3 acknowledged {acked[0].index} before the install was durable")
    c.crash(3)
    c.hold_persist.discard(3)
    c.restart(3)
    if c.storages[3].snapshot() is not None:
        result.violations.append(f"{result.name}: a write that never completed left a snapshot on S3")
    c.run(500)
    _check_snapshot_state(c, result, index)
    _check_applied(c, result)
    return result


def _chunks_after(kept: int) -> Callable[[Message], bool]:
    """A drop rule for deliver_all: the first `kept` InstallSnapshot chunks arrive, every later one is lost."""
    seen = 0

    def drop(m: Message) -> bool:
        nonlocal seen
        if isinstance(m, InstallSnapshot):
            seen += 1
            return seen > kept
        return False

    return drop


def snapshot_crash_mid_transfer(mutation: str = "") -> ScenarioResult:
    """Rule: a follower that crashes with half a snapshot restarts without it (answers received=0) and the
    leader starts the transfer again from the beginning."""
    result = ScenarioResult("snapshot_crash_mid_transfer")
    c, index = _snapshot_cluster(mutation)
    half = _chunks_after(2)
    c.cores[1].tick(c.config.heartbeat_interval_ms)
    c.process(1)
    c.deliver_all(drop=half)
    c.crash(3)
    c.cores[1].peer_disconnected(3)
    c.run(100)
    c.restart(3)
    c.run(500)
    _check_snapshot_state(c, result, index)
    _check_applied(c, result)
    return result


def snapshot_leader_change_mid_transfer(mutation: str = "") -> ScenarioResult:
    """Rule: a leader that loses leadership mid-transfer abandons it; the new leader starts its own (the
    follower resumes the same snapshot, or drops its partial copy for another), never installing a mix."""
    result = ScenarioResult("snapshot_leader_change_mid_transfer")
    c, index = _snapshot_cluster(mutation)
    # node 2 saved its own snapshot at the same index (different bytes): node 3 must not mix the two
    c.storages[2].save_snapshot(Snapshot(index, c.cores[2].term_at(index) or 0, b"state@%d-2" % index))
    half = _chunks_after(2)
    c.cores[1].tick(c.config.heartbeat_interval_ms)
    c.process(1)
    c.deliver_all(drop=half)
    c.crash(1)
    for i in (2, 3):
        c.cores[i].peer_disconnected(1)
    c.elect(2)
    c.run(500)
    mixed = [s for s in c.installed[3] if s.data not in (b"state@%d" % index, b"state@%d-2" % index)]
    if mixed:
        result.violations.append(f"{result.name}: S3 installed a mix of two snapshots: {mixed[0]!r}")
    if c.storages[3].snapshot() != c.storages[2].snapshot():
        result.violations.append(f"{result.name}: S3 holds {c.storages[3].snapshot()!r}, not the new leader's")
    c.restart(1)
    c.run(300)
    _check_applied(c, result)
    return result


def snapshot_stale_chunk_late(mutation: str = "") -> ScenarioResult:
    """Rule: a follower never installs a snapshot at or below its commit index: a copy of an old snapshot
    chunk delivered late (after the follower installed it, moved on and compacted) is answered, not installed;
    commit and applied state never move backwards."""
    result = ScenarioResult("snapshot_stale_chunk_late")
    c, index = _snapshot_cluster(mutation)
    c.run(500)
    whole = [m for m in c.sent if isinstance(m, InstallSnapshot) and m.dst == 3]
    for k in range(4):
        c.propose(1, b"after%d" % k)
        c.deliver_all()
    c.run(200)
    commit = c.cores[3].commit_index
    c.compact(3, commit, b"state@%d" % commit)
    c.crash(3)  # restarted from its compacted log: the old snapshot's index is below its log start
    c.restart(3)
    c.run(100)
    commit = c.cores[3].commit_index
    before = len(c.installed[3])
    c.queue.extend(whole)  # the old transfer again, late (duplicated by the network)
    c.deliver_all()
    if c.cores[3].commit_index < commit or len(c.installed[3]) != before:
        result.violations.append(
            f"{result.name}: S3 installed an old snapshot at {index} with commit {commit} "
            f"(commit now {c.cores[3].commit_index})"
        )
    c.run(300)
    _check_applied(c, result)
    return result


def snapshot_matching_log(mutation: str = "") -> ScenarioResult:
    """Rule: a follower whose log already holds the snapshot's last entry (same index and term) keeps its log,
    and the suffix it acknowledged after it, instead of installing the snapshot.

    S3 receives and acknowledges entries up to 9, but its acknowledgements are lost and it learns commit 2
    only; S1 commits with S2, compacts at 8 and, its appends to S3 unanswered for a while, goes back to S3's
    known match (the no-op), which is below its log start: it sends its snapshot at 8."""
    result = ScenarioResult("snapshot_matching_log")
    c = Cluster(3, config=RaftConfig(test_only_mutation=mutation))
    c.elect(1)
    c.deliver_all()

    def lose_acks_of_3(m: Message) -> bool:
        if m.dst == 3 and isinstance(m, AppendEntries | Heartbeat) and m.commit > 2:
            c.cores[3].step(replace(m, commit=2))  # S3 hears the entries, not the commit
            c.process(3)
            return True
        return isinstance(m, AppendResponse) and m.src == 3

    for k in range(8):
        c.propose(1, b"e%d" % k)
        c.deliver_all(drop=lose_acks_of_3)
    s3_last = c.cores[3].last_index
    index = c.cores[1].commit_index - 1
    c.compact(1, index, b"state@%d" % index)
    if c.cores[3].term_at(index) != c.cores[1].term_at(index) or c.cores[3].commit_index >= index:
        raise AssertionError(f"setup: S3 log {c.log(3)} commit {c.cores[3].commit_index}")
    c.run(300, step_ms=10)
    if c.cores[3].last_index < s3_last or c.installed[3]:
        result.violations.append(
            f"{result.name}: S3 installed the snapshot at {index} over its matching log (last was {s3_last}, "
            f"now {c.cores[3].last_index})"
        )
    _check_applied(c, result)
    return result


# --- membership changes (thesis chapter 4, single-server changes) ----------------------------------------------


def _members_cluster(mutation: str, n: int = 3) -> Cluster:
    c = Cluster(n, config=RaftConfig(test_only_mutation=mutation, promote_max_lag_entries=4))
    c.elect(1)
    c.propose(1, b"first")
    c.deliver_all()
    return c


def _add_learner(c: Cluster, node: int, leader: int = 1) -> int:
    c.add_node(node)
    index = c.change(leader, ConfChange.add_learner(node, b"n%d" % node))
    c.deliver_all()
    c.run(200)
    return index


def membership_removed_leader_steps_down(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.2.2): a leader that removes itself keeps leading, without counting itself, until the
    removal is committed, then steps down (handing over with TimeoutNow when a voter holds its whole log); with
    the handover lost, the new configuration elects a leader within about an election timeout, and the removed
    node never campaigns again."""
    result = ScenarioResult("membership_removed_leader_steps_down")
    c = _members_cluster(mutation, 4)
    index = c.change(1, ConfChange.remove(1))
    c.deliver_all(drop=lambda m: isinstance(m, TimeoutNow))  # no handover: the others must elect by timeout
    if c.cores[1].commit_index < index:
        result.violations.append(f"{result.name}: the removal at {index} was not committed")
    if c.cores[1].role == Role.LEADER:
        result.violations.append(f"{result.name}: S1 still leads after its removal committed")
    waited_ms = 0
    limit_ms = 2 * _timeout(c)
    while not c.leader() and waited_ms <= limit_ms:
        c.tick(10)
        waited_ms += 10
    leader = c.leader()
    if leader in (0, 1):
        result.violations.append(f"{result.name}: no new leader among S2..S4 within {limit_ms} ms (got {leader})")
    c.run(3000)
    if c.leader() in (0, 1) or c.cores[1].role != Role.FOLLOWER or not c.cores[1].removed:
        result.violations.append(f"{result.name}: S1 came back ({c.cores[1].status()['role']}) or no leader")
    result.detail["election_ms_after_removal"] = waited_ms
    _check_applied(c, result)
    return result


def membership_removed_node_does_not_disrupt(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.2.3): a node removed while cut off never learns it; it keeps timing out and pre-voting,
    and once the links return the members, hearing their leader, ignore it: the term and the leader stay."""
    result = ScenarioResult("membership_removed_node_does_not_disrupt")
    c = _members_cluster(mutation)
    c.isolate(3)
    index = c.change(1, ConfChange.remove(3))
    c.deliver_all()
    c.run(2000)  # S3 times out alone, again and again
    if c.cores[1].commit_index < index:
        result.violations.append(f"{result.name}: the removal of S3 was not committed by S1 and S2")
    c.heal()
    term = c.cores[1].term
    before = len(c.sent)
    c.run(5000)
    asked = sum(1 for m in c.sent[before:] if isinstance(m, RequestVote) and m.src == 3)
    if c.leader() != 1 or c.cores[1].term != term or c.cores[2].term != term:
        result.violations.append(
            f"{result.name}: S3 disrupted the cluster: leader {c.leader()}, terms {c.cores[1].term}/{c.cores[2].term}"
            f" (was S1 in term {term})"
        )
    result.detail["requests_from_removed"] = asked
    _check_applied(c, result)
    return result


def membership_learner_promoted_when_caught_up(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.2.1): a learner receives the log but is never counted for a commit; it is promoted only
    once within promote_max_lag_entries of the leader's log."""
    result = ScenarioResult("membership_learner_promoted_when_caught_up")
    c = _members_cluster(mutation)
    _add_learner(c, 4)
    c.crash(4)
    for k in range(8):
        c.propose(1, b"e%d" % k)
    c.deliver_all()
    try:
        c.cores[1].propose_conf_change(ConfChange.promote(4))
        result.violations.append(f"{result.name}: S4 promoted while 8 entries behind (bound 4)")
    except NotCaughtUpError:
        pass
    c.restart(4)
    c.run(300)
    c.crash(2)
    c.crash(3)
    index = c.propose(1, b"needs a voter")
    c.run(300)
    if c.cores[1].commit_index >= index:
        result.violations.append(f"{result.name}: S1 committed {index} with only itself and learner S4")
    c.restart(2)
    c.restart(3)
    c.run(500)
    leader = c.leader()  # S1 stepped down while it heard no voter (check-quorum): maybe another leads now
    try:
        promoted = c.change(leader, ConfChange.promote(4))
        c.run(300)
        if c.cores[leader].commit_index < promoted or not c.cores[4].is_voter:
            result.violations.append(f"{result.name}: the promotion of the caught-up S4 did not complete")
    except ProposalError as exc:
        result.violations.append(f"{result.name}: promoting the caught-up S4 refused: {exc}")
    _check_applied(c, result)
    return result


def membership_learner_vote_does_not_count(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.1, learners): a candidate counts only the votes of its configuration's voters: with the
    leader dead and one voter cut off, the last voter cannot win with a learner's vote."""
    result = ScenarioResult("membership_learner_vote_does_not_count")
    c = _members_cluster(mutation)
    _add_learner(c, 4)
    c.crash(1)
    c.isolate(3)
    before = len(c.sent)
    c.run(3000)
    led = [m.term for m in c.sent[before:] if isinstance(m, AppendEntries | Heartbeat) and m.src == 2]
    if led:  # (check-quorum would soon depose it: look at what it sent, not at who leads at the end)
        result.violations.append(f"{result.name}: S2 led term {led[0]} with the vote of learner S4")
    c.heal()
    c.restart(1)
    c.run(3000)
    _check_applied(c, result)
    return result


def membership_one_change_at_a_time(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.1): a change is refused while the latest configuration entry is uncommitted."""
    result = ScenarioResult("membership_one_change_at_a_time")
    c = _members_cluster(mutation)
    c.add_node(4)
    c.add_node(5)
    c.blocked |= {(2, 1), (3, 1)}
    c.change(1, ConfChange.add_learner(4, b"n4"))
    try:
        c.change(1, ConfChange.add_learner(5, b"n5"))
        result.violations.append(f"{result.name}: a second change was accepted while the first is uncommitted")
    except ChangeInProgressError:
        pass
    c.heal()
    c.run(500)
    _check_applied(c, result)
    return result


def membership_new_config_on_append(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.1): a configuration is in effect once appended: the promotion of S4 (voters 1..4, three
    needed) is not committed by S1 and S2 alone, as it would be under the configuration it replaces."""
    result = ScenarioResult("membership_new_config_on_append")
    c = _members_cluster(mutation)
    _add_learner(c, 4)
    c.blocked |= {(3, 1), (4, 1)}
    index = c.change(1, ConfChange.promote(4))
    c.propose(1, b"after")
    c.deliver_all()
    c.run(100)
    if c.cores[1].commit_index >= index:
        result.violations.append(f"{result.name}: S1 committed {index} with S2 only, out of voters 1..4")
    c.heal()
    c.run(500)
    _check_applied(c, result)
    return result


def membership_truncated_config(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.1): a configuration entry replaced by a new leader's entry no longer applies: the
    follower goes back to the configuration before it."""
    result = ScenarioResult("membership_truncated_config")
    c = _members_cluster(mutation, 5)
    c.blocked |= {(1, 3), (1, 4), (1, 5)}
    c.add_node(6)
    c.change(1, ConfChange.add_learner(6, b"n6"))
    c.deliver_all()
    if 6 not in c.cores[2].membership:
        result.violations.append(f"{result.name}: setup: S2 did not take the appended configuration")
    c.crash(1)
    c.heal()
    for i in (3, 4, 5):
        c.cores[i].peer_disconnected(1)
    c.elect(3, drop=lambda m: m.src == 2 or m.dst == 2)  # S3 wins with S4 and S5
    c.propose(3, b"replaces")
    c.run(500)
    if 6 in c.cores[2].membership:
        result.violations.append(f"{result.name}: S2 keeps learner S6 from a replaced entry")
    _check_applied(c, result)
    return result


def membership_replace_node_of_three(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.2): replacing a node of three is add learner, promote, remove, each committed before the
    next; afterwards the new configuration commits without the replaced node (and with one more node down)."""
    result = ScenarioResult("membership_replace_node_of_three")
    c = _members_cluster(mutation)
    c.crash(3)  # the node to replace is dead
    _add_learner(c, 4)
    promoted = c.change(1, ConfChange.promote(4))
    c.run(300)
    removed = c.change(1, ConfChange.remove(3))
    c.run(300)
    for what, index in (("promotion of S4", promoted), ("removal of S3", removed)):
        if c.cores[1].commit_index < index:
            result.violations.append(f"{result.name}: the {what} at {index} was not committed")
    if c.cores[1].membership.voters() != (1, 2, 4):
        result.violations.append(f"{result.name}: voters {c.cores[1].membership.voters()}, expected (1, 2, 4)")
    c.crash(2)
    index = c.propose(1, b"with S1 and S4")
    c.run(300)
    if c.cores[1].commit_index < index:
        result.violations.append(f"{result.name}: S1 and S4, a majority of (1, 2, 4), did not commit {index}")
    c.restart(2)
    c.run(500)
    _check_applied(c, result)
    return result


def membership_config_in_snapshot(mutation: str = "") -> ScenarioResult:
    """Rule (thesis 4.3 / 5.1): a snapshot carries the configuration at its index, and installing it sets the
    follower's: S4, promoted while down, learns it is a voter from the leader's snapshot."""
    result = ScenarioResult("membership_config_in_snapshot")
    c = _members_cluster(mutation)
    _add_learner(c, 4)
    c.change(1, ConfChange.promote(4))
    c.deliver_all()
    c.crash(4)
    for k in range(6):
        c.propose(1, b"e%d" % k)
    c.deliver_all()
    c.run(200)
    index = c.cores[1].commit_index
    for i in (1, 2, 3):
        c.compact(i, index, b"state", with_config=True)
    c.storages[4].crash(power_loss=False)
    c.storages[4] = MemStorage()  # S4's disk is replaced: it catches up through the snapshot alone
    c.restart(4)
    c.run(500)
    if not c.cores[4].is_voter or c.cores[4].membership != c.cores[1].membership:
        result.violations.append(
            f"{result.name}: S4 installed the snapshot at {index} but holds configuration "
            f"{c.cores[4].membership.to_dict()}, the leader {c.cores[1].membership.to_dict()}"
        )
    _check_applied(c, result)
    return result


def membership_strict_reconfig_check(mutation: str = "") -> ScenarioResult:
    """Rule (etcd's strict reconfiguration check): a leader refuses a change of the voters after which the voters
    it knows active are not a majority. S3 silent for a check-quorum window: removing S2 (leaving S1 and the
    silent S3) is refused and the cluster goes on committing with S1 and S2; once S3 is heard again the
    removal is accepted and committed. Without the check the removal would be appended and no commit would
    follow until S3 answers."""
    result = ScenarioResult("membership_strict_reconfig_check")
    c = _members_cluster(mutation)
    c.isolate(3)
    c.run(_timeout(c) + c.config.heartbeat_interval_ms)
    try:
        index = c.change(1, ConfChange.remove(2))
        result.violations.append(f"{result.name}: removing S2 with S3 silent was accepted at {index}")
    except QuorumNotActiveError as exc:
        result.detail["refusal"] = str(exc)
    committed = c.propose(1, b"while S3 is silent")
    c.run(200)
    if c.cores[1].commit_index < committed:
        result.violations.append(f"{result.name}: {committed} not committed by S1 and S2 while S3 was silent")
    c.heal()
    c.run(2 * c.config.heartbeat_interval_ms)
    try:
        index = c.change(1, ConfChange.remove(2))
        c.run(200)
        if c.cores[1].commit_index < index or c.cores[1].membership.voters() != (1, 3):
            result.violations.append(f"{result.name}: the removal of S2 at {index} did not complete once S3 was back")
    except ProposalError as exc:
        result.violations.append(f"{result.name}: removing S2 refused with every voter heard: {exc}")
    _check_applied(c, result)
    return result


SCENARIOS: dict[str, Callable[[str], ScenarioResult]] = {
    "figure_8": figure_8,
    "stale_suffix_append": stale_suffix_append,
    "late_vote_grants": late_vote_grants,
    "recovery_on_older_terms": recovery_on_older_terms,
    "transfer_to_lagging": transfer_to_lagging,
    "transfer_to_recovering": transfer_to_recovering,
    "heartbeat_past_match": heartbeat_past_match,
    "rejection_hint_is_not_a_match": rejection_hint_is_not_a_match,
    "snapshot_in_partition": snapshot_in_partition,
    "snapshot_crash_mid_install": snapshot_crash_mid_install,
    "snapshot_crash_mid_transfer": snapshot_crash_mid_transfer,
    "snapshot_leader_change_mid_transfer": snapshot_leader_change_mid_transfer,
    "snapshot_stale_chunk_late": snapshot_stale_chunk_late,
    "snapshot_matching_log": snapshot_matching_log,
    "membership_removed_leader_steps_down": membership_removed_leader_steps_down,
    "membership_removed_node_does_not_disrupt": membership_removed_node_does_not_disrupt,
    "membership_learner_promoted_when_caught_up": membership_learner_promoted_when_caught_up,
    "membership_learner_vote_does_not_count": membership_learner_vote_does_not_count,
    "membership_one_change_at_a_time": membership_one_change_at_a_time,
    "membership_new_config_on_append": membership_new_config_on_append,
    "membership_truncated_config": membership_truncated_config,
    "membership_config_in_snapshot": membership_config_in_snapshot,
    "membership_replace_node_of_three": membership_replace_node_of_three,
    "membership_strict_reconfig_check": membership_strict_reconfig_check,
}


def run_scenario(name: str, mutation: str = "") -> ScenarioResult:
    """One scenario; an exception (a broken core raising mid-script) is reported as its violation."""
    try:
        return SCENARIOS[name](mutation)
    except Exception as exc:
        return ScenarioResult(name, violations=[f"{name}: exception: {describe_exception(exc)}"])


def run_scenarios(mutation: str = "") -> list[ScenarioResult]:
    return [run_scenario(name, mutation) for name in SCENARIOS]
