"""Recovering mode of the core: a node that lost its log (quarantined as corrupt) and restarted empty with its
preserved term raised grants no votes or pre-votes and never campaigns until it holds a committed entry of a
term >= its recovery term (shmraft/raft/core.py docstring; docs/DESIGN.md "Storage faults")."""

from __future__ import annotations

import random

import pytest

from shmraft.raft.core import RaftCore
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import RequestVote, TimeoutNow, VoteResponse
from shmraft.raft.types import HardState, Role
from shmraft.sim.harness import Cluster, drain


def lose_log(c: Cluster, i: int, recovering: bool = True) -> None:
    """Node i restarts with an empty log and its preserved term + 1 (recovering), or, to show why the mode
    exists, with its preserved term and vote but no log (the unsafe restart)."""
    term, vote = c.storages[i].hard_state().term, c.storages[i].hard_state().vote
    c.down.discard(i)
    storage = MemStorage()
    if recovering:
        storage.set_hard_state(HardState(term + 1, 0, 0))
    else:
        storage.set_hard_state(HardState(term, vote, 0))
    c.storages[i] = storage
    c.applied[i] = []
    c.cores[i] = RaftCore(
        i,
        [p for p in c.ids if p != i],
        storage,
        c.config,
        random.Random(i),
        recovery_term=term + 1 if recovering else 0,
    )


def recovering_core() -> tuple[RaftCore, MemStorage]:
    storage = MemStorage()
    storage.set_hard_state(HardState(5, 0, 0))
    return RaftCore(3, [1, 2], storage, Cluster(1).config, random.Random(1), recovery_term=5), storage


def test_recovering_node_never_campaigns_and_refuses_votes_and_pre_votes():
    core, storage = recovering_core()
    assert core.recovering and core.status()["recovering"]
    for _ in range(50):
        core.tick(100)
        assert not [m for m in drain(core, storage) if isinstance(m, RequestVote)]
    assert core.role == Role.FOLLOWER and core.term == 5
    for pre in (True, False):
        core.step(RequestVote(1, 3, 6, 100, 5, pre_vote=pre))
        answers = [m for m in drain(core, storage) if isinstance(m, VoteResponse)]
        assert answers and not any(m.granted for m in answers)
    assert core.vote == 0
    core.step(TimeoutNow(1, 3, core.term))
    assert core.role == Role.FOLLOWER and not drain(core, storage)


def test_recovery_term_is_checked():
    storage = MemStorage()
    storage.set_hard_state(HardState(2, 0, 0))
    with pytest.raises(ValueError, match="recovery_term"):
        RaftCore(1, [2, 3], storage, Cluster(1).config, random.Random(1), recovery_term=3)


def _leader_1_with_node_3_log_lost() -> tuple[Cluster, int]:
    """Node 1 leads and has replicated 20 entries; node 3 then crashes and loses its log (recovering mode).
    Returns the cluster and node 1's term before."""
    c = Cluster(3, seed=1)
    c.elect(1)
    for k in range(20):
        c.propose(1, f"e{k}".encode())
    c.deliver_all()
    old_term = c.cores[1].term
    c.crash(3)
    lose_log(c, 3)
    return c, old_term


def test_recovering_follower_forces_one_election_then_catches_up_and_votes_again():
    c, old_term = _leader_1_with_node_3_log_lost()
    assert c.cores[3].recovering
    c.run(3000)
    leader = c.leader()
    assert leader in (1, 2) and c.cores[leader].term > old_term  # a leader elected without node 3
    assert not c.cores[3].recovering  # caught up: it holds a committed entry of that leader's term
    assert c.log(3) == c.log(leader)
    # and it takes part in elections again
    c.crash(leader)
    c.run(3000)
    assert c.leader() not in (0, leader)


def test_leader_told_a_higher_term_by_a_recovering_follower_is_re_elected_within_the_disconnect_delay():
    """The recovering node's raised term makes the leader step down; nobody leads that term and the node itself
    never campaigns, so the old leader (whose log is the most complete) pre-votes within
    disconnect_election_delay_max_ms instead of an election timeout, and its other follower, still in the old
    leader's lease, answers it. The election is then over in a few ticks, with the same safety (pre-vote, votes)."""
    c, old_term = _leader_1_with_node_3_log_lost()
    step_ms = 5
    stepped_down_at = elected_at = None
    for t in range(0, 3000, step_ms):
        c.tick(step_ms)
        if stepped_down_at is None and c.cores[1].role != Role.LEADER:
            stepped_down_at = t
        if stepped_down_at is not None and c.leader() and c.cores[c.leader()].term > old_term:
            elected_at = t
            break
    assert stepped_down_at is not None and elected_at is not None
    took_ms = elected_at - stepped_down_at
    # at most the delay and a tick or two of message rounds; an election timeout would be >= 450 ms
    assert took_ms <= c.config.disconnect_election_delay_max_ms + 2 * step_ms, took_ms
    assert c.leader() == 1
    c.run(500)
    assert not c.cores[3].recovering and c.log(3) == c.log(1)


def test_entry_committed_with_the_lost_copy_survives_when_the_leader_dies():
    """Leader 1 commits x with node 3's acknowledgement only; node 3 then loses its log; leader 1 dies. Node 2
    lacks x: a recovering node 3 must not elect it. (The unsafe restart, without the mode, does: x is lost.)"""
    for recovering in (True, False):
        c = Cluster(3, seed=2)
        c.elect(1)
        c.blocked |= {(1, 2), (2, 1)}
        x = c.propose(1, b"x")
        c.deliver_all()
        assert c.cores[1].commit_index >= x  # committed by {1, 3}
        c.crash(3)
        lose_log(c, 3, recovering=recovering)
        c.crash(1)
        c.heal()
        c.run(5000)
        if recovering:
            assert c.leader() == 0, "node 3 helped elect a leader without the committed entry"
            assert c.cores[3].recovering
            c.restart(1)  # the holder of x comes back: everything resumes, x included
            c.run(5000)
            leader = c.leader()
            assert leader in (1, 2)
            assert any(data == b"x" for _, _, data in c.log(3))
            assert not c.cores[3].recovering
        else:
            assert c.leader() == 2
            assert not any(data == b"x" for _, _, data in c.log(2))  # the violation the mode prevents
