"""Leader election (Raft 5.2, 5.4.1), pre-vote (thesis 9.6), leases and the connection-loss hint."""

from __future__ import annotations

import random

import pytest

from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore
from shmraft.raft.messages import AppendEntries, Heartbeat, HeartbeatResponse, RequestVote, VoteResponse
from shmraft.raft.types import HardState, Role
from shmraft.sim.faults import FaultEvent
from shmraft.sim.harness import Cluster, core_with_log, drain, make_leader
from shmraft.sim.simulator import SimOptions, Simulation


def tick_until_messages(core, storage, limit_ms: int, step_ms: int = 10):
    elapsed = 0
    while elapsed < limit_ms:
        core.tick(step_ms)
        elapsed += step_ms
        msgs = drain(core, storage)
        if msgs:
            return elapsed, msgs
    return elapsed, []


def test_follower_stays_quiet_before_election_timeout_then_starts_pre_vote():
    core, storage = core_with_log(1, [2, 3], [])
    elapsed, msgs = tick_until_messages(core, storage, 1000)
    cfg = core.config
    assert cfg.election_timeout_ms <= elapsed < cfg.election_timeout_ms + cfg.election_timeout_spread_ms + 10
    assert {m.dst for m in msgs} == {2, 3}
    assert all(isinstance(m, RequestVote) and m.pre_vote and m.term == 1 for m in msgs)
    assert core.role == Role.PRE_CANDIDATE
    assert core.term == 0  # a pre-vote changes no term


def test_sole_voter_campaigns_at_its_first_tick_unless_recovering():
    """A one-node configuration needs no other vote and has no other possible leader: waiting an election
    timeout after a start would only delay serving. A recovering node still never campaigns."""
    core, storage = core_with_log(1, [], [1, 1], HardState(1, 1, 2))
    core.tick(1)
    drain(core, storage)
    assert core.role == Role.LEADER and core.term == 2
    _, lost = core_with_log(1, [], [1, 1], HardState(2, 0, 2))  # its log lost and refetched: recovering at 2
    recovering = RaftCore(1, [], lost, RaftConfig(), random.Random(1), recovery_term=2)
    recovering.tick(10_000)
    drain(recovering, lost)
    assert recovering.role == Role.FOLLOWER and recovering.term == 2
    with_peers, _ = core_with_log(1, [2], [1, 1], HardState(1, 1, 2))
    with_peers.tick(with_peers.config.election_timeout_ms - 1)
    assert with_peers.role == Role.FOLLOWER  # two voters: it waits for a leader as before


def test_election_timeout_is_randomised_per_node_within_the_spread():
    timeouts = set()
    for seed in range(20):
        core, storage = core_with_log(1, [2, 3], [], rng=random.Random(seed))
        elapsed, msgs = tick_until_messages(core, storage, 1000, step_ms=1)
        assert msgs
        timeouts.add(elapsed)
    assert min(timeouts) >= 450 and max(timeouts) < 600
    assert len(timeouts) > 5


def test_pre_candidate_with_majority_of_pre_votes_campaigns_in_next_term():
    core, storage = core_with_log(1, [2, 3], [1, 1], HardState(term=1))
    _, msgs = tick_until_messages(core, storage, 1000)
    core.step(VoteResponse(2, 1, 2, True, pre_vote=True))
    assert core.role == Role.CANDIDATE and core.term == 2 and core.vote == 1
    rd = core.ready()
    assert rd.hard_state == HardState(2, 1, 0)
    votes = rd.messages_after_persist  # the self-vote must be durable before asking others
    assert not rd.messages
    assert all(
        isinstance(m, RequestVote) and not m.pre_vote and m.term == 2 and m.last_index == 2 and m.last_term == 1
        for m in votes
    )


def test_candidate_with_majority_becomes_leader_and_appends_noop_of_its_term():
    core, storage = core_with_log(1, [2, 3], [1, 1], HardState(term=1))
    msgs = make_leader(core, storage)
    assert core.role == Role.LEADER and core.leader == 1
    assert core.last_index == 3 and core.term_at(3) == core.term
    appends = [m for m in msgs if isinstance(m, AppendEntries)]
    assert {m.dst for m in appends} == {2, 3}
    assert all(m.prev_index == 2 and m.entries[0].data == b"" for m in appends)


def test_candidate_steps_down_on_higher_term():
    core, storage = core_with_log(1, [2, 3], [])
    tick_until_messages(core, storage, 1000)
    core.step(VoteResponse(2, 1, 1, True, pre_vote=True))
    assert core.role == Role.CANDIDATE and core.term == 1
    core.step(VoteResponse(3, 1, 5, False))
    assert core.role == Role.FOLLOWER and core.term == 5 and core.vote == 0


def test_candidate_becomes_follower_on_append_from_leader_of_same_term():
    core, storage = core_with_log(1, [2, 3], [])
    tick_until_messages(core, storage, 1000)
    core.step(VoteResponse(2, 1, 1, True, pre_vote=True))
    core.step(AppendEntries(3, 1, 1, 0, 0, (), 0))
    assert core.role == Role.FOLLOWER and core.leader == 3 and core.term == 1


def test_candidate_gives_up_when_a_majority_refuses():
    core, storage = core_with_log(1, [2, 3, 4, 5], [])
    tick_until_messages(core, storage, 1000)
    for voter in (2, 3):
        core.step(VoteResponse(voter, 1, 1, True, pre_vote=True))
    assert core.role == Role.CANDIDATE
    for voter in (2, 3, 4):
        core.step(VoteResponse(voter, 1, 1, False))
    assert core.role == Role.FOLLOWER and core.term == 1


def test_vote_is_granted_to_at_most_one_candidate_per_term():
    core, storage = core_with_log(1, [2, 3], [])
    core.step(RequestVote(2, 1, 1, 0, 0))
    core.step(RequestVote(3, 1, 1, 0, 0))
    core.step(RequestVote(2, 1, 1, 0, 0))  # a retransmission is answered the same way
    replies = [m for m in drain(core, storage) if isinstance(m, VoteResponse)]
    assert [(m.dst, m.granted) for m in replies] == [(2, True), (3, False), (2, True)]
    assert storage.hard_state().vote == 2


@pytest.mark.parametrize(("last_index", "last_term"), [(3, 1), (1, 2)])
def test_voter_rejects_candidate_whose_log_is_less_up_to_date(last_index, last_term):
    core, storage = core_with_log(1, [2, 3], [1, 2], HardState(term=2))
    core.step(RequestVote(2, 1, 3, last_index, last_term))
    (reply,) = drain(core, storage)
    assert isinstance(reply, VoteResponse) and not reply.granted
    assert core.vote == 0


def test_voter_grants_candidate_whose_log_is_at_least_as_up_to_date():
    core, storage = core_with_log(1, [2, 3], [1, 2], HardState(term=2))
    core.step(RequestVote(2, 1, 3, 2, 2))
    (reply,) = drain(core, storage)
    assert reply.granted and core.vote == 2 and core.term == 3


def test_pre_vote_changes_neither_term_nor_vote_of_the_voter():
    core, storage = core_with_log(1, [2, 3], [1], HardState(term=1))
    core.step(RequestVote(2, 1, 2, 1, 1, pre_vote=True))
    (reply,) = drain(core, storage)
    assert reply.granted and reply.pre_vote and reply.term == 2
    assert core.term == 1 and core.vote == 0 and storage.hard_state().term == 1


def test_follower_that_hears_its_leader_ignores_pre_votes_and_votes():
    core, storage = core_with_log(1, [2, 3], [1], HardState(term=1))
    core.step(Heartbeat(2, 1, 1, 0))
    drain(core, storage)
    core.step(RequestVote(3, 1, 2, 5, 1, pre_vote=True))
    core.step(RequestVote(3, 1, 2, 5, 1))
    assert drain(core, storage) == []
    assert core.term == 1 and core.leader == 2
    core.tick(core.config.election_timeout_ms)  # lease over: now it answers
    core.step(RequestVote(3, 1, 2, 5, 1, pre_vote=True))
    assert any(isinstance(m, VoteResponse) and m.granted for m in drain(core, storage))


def test_returning_partitioned_node_does_not_disturb_healthy_leader():
    c = Cluster(3)
    c.elect(1)
    term = c.cores[1].term
    c.isolate(3)
    c.run(3000)
    assert c.cores[3].term == term  # pre-votes failed: no term inflation while cut off
    assert c.cores[3].role == Role.PRE_CANDIDATE
    c.heal()
    c.run(1000)
    assert c.leader() == 1 and c.cores[1].term == term
    assert c.cores[3].role == Role.FOLLOWER and c.cores[3].leader == 1


def test_without_pre_vote_returning_node_does_disturb_the_leader():
    """The contrast that shows the previous test can fail: pre-vote is what protects the leader."""
    c = Cluster(3, config=RaftConfig(pre_vote=False))
    c.elect(1)
    term = c.cores[1].term
    c.isolate(3)
    c.run(3000)
    assert c.cores[3].term > term
    c.heal()
    c.run(1000)
    assert c.cores[1].term > term


def test_follower_pre_votes_early_when_connection_to_leader_is_lost():
    core, storage = core_with_log(1, [2, 3], [1], HardState(term=1))
    core.step(Heartbeat(2, 1, 1, 0))
    drain(core, storage)
    core.peer_disconnected(2)
    assert core.leader == 0
    elapsed, msgs = tick_until_messages(core, storage, 1000, step_ms=1)
    assert elapsed <= core.config.disconnect_election_delay_max_ms + 1
    assert all(isinstance(m, RequestVote) and m.pre_vote for m in msgs)


def test_losing_connection_to_a_non_leader_changes_nothing():
    core, storage = core_with_log(1, [2, 3], [1], HardState(term=1))
    core.step(Heartbeat(2, 1, 1, 0))
    drain(core, storage)
    core.peer_disconnected(3)
    assert core.leader == 2
    elapsed, msgs = tick_until_messages(core, storage, 1000, step_ms=10)
    assert elapsed >= core.config.election_timeout_ms


def test_spurious_disconnect_hint_does_not_depose_a_healthy_leader():
    c = Cluster(3)
    c.elect(1)
    term = c.cores[1].term
    c.cores[2].peer_disconnected(1)  # node 2's connection dropped, yet the leader and node 3 are fine
    c.process(2)
    c.run(200)  # node 2 pre-votes in vain, then hears the next heartbeat
    assert c.leader() == 1 and c.cores[1].term == term
    assert c.cores[2].leader == 1


def test_leader_answers_heartbeat_response_by_staying_leader():
    core, storage = core_with_log(1, [2, 3], [])
    make_leader(core, storage)
    core.step(HeartbeatResponse(2, 1, core.term))
    assert core.role == Role.LEADER


def _first(changes, role, after_us=0):
    return next((t, n, term) for t, n, r, term in changes if r == role and t >= after_us)


def test_election_completes_well_within_150ms_on_a_healthy_network():
    for seed in range(5):
        sim = Simulation(seed, SimOptions(nodes=3, faults=False, fault_ms=1000, heal_deadline_ms=2000))
        result = sim.run()
        assert not result.violations
        t_pre, _, _ = _first(sim.role_changes, Role.PRE_CANDIDATE)
        t_lead, _, _ = _first(sim.role_changes, Role.LEADER)
        assert t_lead - t_pre < 150_000 / 3, (seed, t_lead - t_pre)


@pytest.mark.parametrize("nodes", [3, 5])
def test_failover_after_leader_crash_is_well_below_election_timeout(nodes):
    """A killed leader's peers see their connections reset (peer_disconnected) and elect at once."""
    worst = 0
    for seed in range(5):
        sim = Simulation(seed, SimOptions(nodes=nodes, faults=False, fault_ms=2000, heal_deadline_ms=3000))
        sim.plan.events.append(FaultEvent(1_000_000, "crash_leader", 5_000_000))
        result = sim.run()
        assert not result.violations
        crashed_term = max(term for t, _, r, term in sim.role_changes if r == Role.LEADER and t < 1_000_000)
        new_term = min(term for term in sim.first_commit_us if term > crashed_term)
        failover_us = sim.first_commit_us[new_term] - 1_000_000
        worst = max(worst, failover_us)
    assert worst < 450_000 / 2, worst  # the brief's target is ~600 ms; the hint makes it far less


@pytest.mark.parametrize("seed", range(10))
def test_silent_leader_is_replaced_in_one_election_round(seed):
    """A leader that goes silent without closing connections (a pause, a partition): the first follower
    to time out wins. Granting its pre-vote must not leave the other follower in a phantom lease of the old
    leader, or the real vote that follows would be ignored and elections would repeat (a bug seen live)."""
    c = Cluster(3, seed=seed)
    c.elect(1)
    c.run(300)
    term = c.cores[1].term
    c.isolate(1)
    elapsed = 0
    while c.leader() in (0, 1) or c.cores[c.leader()].term == term:
        c.tick(5, nodes=[2, 3])
        elapsed += 5
        assert elapsed <= 2000, f"no new leader after {elapsed} ms: {c.cores[2].status()} {c.cores[3].status()}"
    cfg = c.config
    assert elapsed <= cfg.election_timeout_ms + cfg.election_timeout_spread_ms + 50, elapsed
    assert c.cores[c.leader()].term == term + 1  # one round: no term inflation
