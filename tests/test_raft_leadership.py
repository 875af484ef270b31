"""Check-quorum (thesis 6.2) and leadership transfer (thesis 3.10)."""

from __future__ import annotations

import pytest

from shmraft.raft.errors import NotLeaderError, TransferInProgressError
from shmraft.raft.messages import AppendEntries, RequestVote, TimeoutNow
from shmraft.raft.types import Role
from shmraft.sim.harness import Cluster


def test_leader_cut_off_from_majority_steps_down_within_an_election_timeout():
    c = Cluster(3)
    c.elect(1)
    c.isolate(1)
    elapsed = 0
    while c.cores[1].role == Role.LEADER:
        c.tick(10, nodes=[1])
        elapsed += 10
        assert elapsed <= 2 * c.config.election_timeout_ms
    assert elapsed <= c.config.election_timeout_ms + 10
    with pytest.raises(NotLeaderError):
        c.cores[1].propose(b"refused")


def test_leader_stepped_down_by_check_quorum_pre_votes_at_once_and_its_late_follower_re_elects_it():
    """On a busy machine the silent majority is mostly a stalled process: node 3 is down and node 2 runs no code
    for a while (what node 1 sends waits in its socket). Node 1 steps down by check-quorum and pre-votes within
    disconnect_election_delay_max_ms; when node 2 runs again it answers that pre-vote (its lease names node 1,
    which has stepped down) and the vote, and node 1 leads again at once, not an election timeout later."""
    c = Cluster(3)
    c.elect(1)
    term = c.cores[1].term
    c.crash(3)
    elapsed_ms = 0
    while c.cores[1].role == Role.LEADER:
        c.cores[1].tick(5)
        c.process(1)  # queued for node 2, not delivered: node 2 is stalled
        elapsed_ms += 5
        assert elapsed_ms <= 2 * c.config.election_timeout_ms
    stepped_down_ms = elapsed_ms
    while c.cores[1].role != Role.PRE_CANDIDATE:
        c.cores[1].tick(1)
        c.process(1)
        elapsed_ms += 1
        assert elapsed_ms - stepped_down_ms <= c.config.disconnect_election_delay_max_ms + 1
    c.deliver_all()  # node 2 runs again: the heartbeats and the pre-vote that waited, then every answer
    assert c.leader() == 1 and c.cores[1].term == term + 1
    assert c.cores[2].leader == 1


def test_leader_with_a_majority_keeps_leading_with_one_follower_gone():
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)
    c.run(3000)
    assert c.cores[1].role == Role.LEADER
    index = c.propose(1, b"still committing")
    c.deliver_all()
    assert c.cores[1].commit_index == index == c.cores[2].commit_index


def test_without_check_quorum_an_isolated_leader_keeps_believing():
    """Contrast for the step-down test: the behaviour comes from check-quorum."""
    from shmraft.raft.config import RaftConfig

    c = Cluster(3, config=RaftConfig(check_quorum=False))
    c.elect(1)
    c.isolate(1)
    c.run(2000)
    assert c.cores[1].role == Role.LEADER


def test_transfer_to_caught_up_follower_sends_timeout_now_and_target_wins():
    c = Cluster(3)
    c.elect(1)
    term = c.cores[1].term
    c.sent.clear()
    assert c.cores[1].transfer_leadership(3) == 3
    c.process(1)
    c.deliver_all()
    assert any(isinstance(m, TimeoutNow) and m.dst == 3 for m in c.sent)
    assert any(isinstance(m, RequestVote) and m.transfer and not m.pre_vote for m in c.sent)
    assert c.leader() == 3 and c.cores[3].term == term + 1
    assert c.cores[1].role == Role.FOLLOWER


def test_transfer_to_lagging_follower_first_brings_it_up_to_date():
    c = Cluster(3)
    c.elect(1)
    c.blocked |= {(1, 3)}
    for k in range(20):
        c.propose(1, b"m%d" % k)
    c.deliver_all()
    c.sent.clear()
    c.cores[1].transfer_leadership(3)
    c.process(1)
    c.deliver_all()
    assert not any(isinstance(m, TimeoutNow) for m in c.sent)
    assert c.leader() == 1
    c.heal()
    c.run(300)
    assert c.leader() == 3
    assert [d for _, _, d in c.log(3)][-21:] == [b"m%d" % k for k in range(20)] + [b""]  # + its no-op


def test_proposals_are_refused_while_transferring():
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)  # the target cannot take over, so the transfer stays pending
    c.cores[1].transfer_leadership(3)
    with pytest.raises(TransferInProgressError):
        c.cores[1].propose(b"x")


def test_transfer_is_abandoned_after_an_election_timeout():
    c = Cluster(3)
    c.elect(1)
    c.blocked |= {(1, 3), (3, 1)}
    c.cores[1].transfer_leadership(3)
    c.run(c.config.election_timeout_ms + 10)
    assert c.cores[1].role == Role.LEADER and c.cores[1].transfer_target == 0
    index = c.propose(1, b"accepted again")
    c.deliver_all()
    assert c.cores[1].commit_index == index


def test_transfer_without_target_picks_the_most_caught_up_follower():
    c = Cluster(3)
    c.elect(1)
    c.blocked |= {(1, 2)}
    c.propose(1, b"only 3 has it")
    c.deliver_all()
    assert c.cores[1].transfer_leadership() == 3


def test_transfer_on_a_follower_raises_not_leader():
    c = Cluster(3)
    c.elect(1)
    with pytest.raises(NotLeaderError):
        c.cores[2].transfer_leadership(3)


def test_deposed_leaders_messages_are_answered_not_obeyed():
    c = Cluster(3)
    c.elect(1)
    c.isolate(1)
    c.run(1500, step_ms=10)
    new = c.leader()
    assert new in (2, 3) and c.cores[new].term > 1
    c.cores[new].step(AppendEntries(1, new, 1, 0, 0, (), 0))
    (reply,) = c.cores[new].ready().messages
    assert reply.dst == 1 and reply.term == c.cores[new].term and not reply.success
    assert c.cores[new].role == Role.LEADER
