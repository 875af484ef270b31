"""Membership changes in the core, named after the sections of Ongaro's thesis, chapter 4 (single-server
changes): 4.1 the configuration entry (in effect once appended, one change at a time, a new leader first
commits an entry of its term), 4.2.1 catching up new servers (learners), 4.2.2 removing the current leader,
4.2.3 disruptive servers, 4.3 the configuration inside snapshots and at restart; plus the body encoding."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from shmraft.constants import CLUSTER_SIZE_MAX
from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore
from shmraft.raft.errors import NotLeaderError
from shmraft.raft.membership import (
    MEMBER_ADDRESS_BYTES_MAX,
    MEMBERS_MAX,
    AddressInUseError,
    AlreadyMemberError,
    ChangeInProgressError,
    ClusterConfig,
    ConfChange,
    Member,
    MemberRole,
    MembershipFormatError,
    NotCaughtUpError,
    QuorumNotActiveError,
    TooManyVotersError,
    UnknownMemberError,
    WouldLoseQuorumError,
    apply_change,
    check_active_quorum,
    decode_membership,
    encode_membership,
    membership_entry,
    membership_of_entry,
)
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.messages import AppendEntries, AppendResponse, RequestVote, TimeoutNow
from shmraft.raft.types import Entry, HardState, Role
from shmraft.sim.harness import Cluster, core_with_log, make_leader
from shmraft.wire.control import ControlKind, encode_control


def committed(c: Cluster, leader: int, index: int) -> bool:
    return c.cores[leader].commit_index >= index


def settle(c: Cluster, ms: int = 300) -> None:
    c.deliver_all()
    c.run(ms)


def cluster_with_learner(n: int = 3, new: int = 4, **cfg: int) -> Cluster:
    """n voters led by node 1, node `new` added as a learner and caught up."""
    c = Cluster(n, config=RaftConfig(**cfg))  # type: ignore[arg-type]
    c.elect(1)
    for k in range(5):
        c.propose(1, b"e%d" % k)
    c.deliver_all()
    c.add_node(new)
    index = c.change(1, ConfChange.add_learner(new, b"host-%d" % new))
    settle(c)
    assert committed(c, 1, index)
    return c


# --- 4.1: the configuration entry ---------------------------------------------------------------------------


def test_4_1_configuration_takes_effect_when_appended_not_when_committed():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.add_node(4)
    # node 2 gets the entry, nobody acknowledges it back: it stays uncommitted
    c.blocked |= {(2, 1), (3, 1)}
    index = c.change(1, ConfChange.add_learner(4, b"h4"))
    c.deliver_all()
    for i in (1, 2, 3):
        core = c.cores[i]
        assert core.commit_index < index
        assert core.membership.learners() == (4,) and core.membership_index == index
        assert core.conf_change_pending
        assert core.status()["members"][-1] == {"id": 4, "role": "learner", "address": b"h4".hex()}
    c.heal()
    settle(c)
    assert not c.cores[1].conf_change_pending and c.cores[1].commit_index >= index


def test_4_1_ready_reports_the_configuration_when_it_changes():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    core = c.cores[1]
    core.propose_conf_change(ConfChange.add_learner(4, b"h4"))
    rd = core.ready()
    assert rd.membership is not None and rd.membership.learners() == (4,)
    c._driver(1).handle(rd)
    assert core.ready().membership is None  # reported once


def test_4_1_truncation_restores_the_previous_configuration_on_a_follower():
    """Directly: a follower holding an uncommitted configuration entry at index 3 receives a leader's entry
    of a later term at 3: its configuration goes back to the bootstrap one and Ready reports it."""
    storage = MemStorage()
    conf = ClusterConfig.voters_of([1, 2, 3])
    added = apply_change(conf, ConfChange.add_learner(4, b"h4"))
    storage.append(
        [Entry(1, 1, b""), Entry(2, 1, b"a"), Entry(3, 1, membership_entry(added))], HardState(term=1, commit=2)
    )
    core = RaftCore(2, [1, 3], storage, RaftConfig(), random.Random(1))
    assert core.membership.learners() == (4,) and core.membership_index == 3
    core.step(AppendEntries(3, 2, 2, 2, 1, (Entry(3, 2, b"b"),), 2))
    assert core.membership == conf and core.membership_index == 0 and core.removed is False
    assert core.ready().membership == conf


def test_4_1_one_change_at_a_time():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.blocked |= {(2, 1), (3, 1)}
    c.change(1, ConfChange.add_learner(4, b"h4"))
    with pytest.raises(ChangeInProgressError):
        c.cores[1].propose_conf_change(ConfChange.add_learner(5, b"h5"))
    c.heal()
    settle(c)
    c.change(1, ConfChange.add_learner(5, b"h5"))  # accepted once the first one is committed


def test_4_1_a_new_leader_changes_nothing_before_committing_an_entry_of_its_term():
    """The fix of the thesis's single-server erratum (raft-dev, 2015): a leader may not append a configuration
    entry until an entry of its own term is committed."""
    core, storage = core_with_log(1, [2, 3], [1, 1])
    make_leader(core, storage)
    assert core.commit_index < core.last_index  # its no-op is not acknowledged yet
    with pytest.raises(ChangeInProgressError, match="has not committed an entry of its term"):
        core.propose_conf_change(ConfChange.add_learner(4, b"h4"))
    for peer in (2, 3):
        core.step(AppendResponse(peer, 1, core.term, core.last_index, True))
    assert core.commit_index == core.last_index
    assert core.propose_conf_change(ConfChange.add_learner(4, b"h4")) == core.last_index


def test_4_1_only_the_leader_changes_membership():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    with pytest.raises(NotLeaderError) as err:
        c.cores[2].propose_conf_change(ConfChange.add_learner(4, b"h4"))
    assert err.value.leader == 1


def test_4_1_propose_refuses_a_membership_entry():
    c = Cluster(3)
    c.elect(1)
    with pytest.raises(ValueError, match="propose_conf_change"):
        c.cores[1].propose(membership_entry(ClusterConfig.voters_of([1, 2])))


def test_4_1_changes_are_checked_against_the_configuration():
    conf = ClusterConfig.of([Member(1, MemberRole.VOTER, b"a"), Member(2, MemberRole.LEARNER, b"b")])
    with pytest.raises(AlreadyMemberError):
        apply_change(conf, ConfChange.add_learner(2, b"z"))
    with pytest.raises(AlreadyMemberError):
        apply_change(conf, ConfChange.promote(1))
    with pytest.raises(AddressInUseError):
        apply_change(conf, ConfChange.add_learner(3, b"a"))
    with pytest.raises(UnknownMemberError):
        apply_change(conf, ConfChange.remove(9))
    with pytest.raises(UnknownMemberError):
        apply_change(conf, ConfChange.promote(9))
    with pytest.raises(WouldLoseQuorumError):
        apply_change(conf, ConfChange.remove(1))
    full = ClusterConfig.voters_of(range(1, CLUSTER_SIZE_MAX + 1))
    full = apply_change(full, ConfChange.add_learner(100, b"x"))
    with pytest.raises(TooManyVotersError):
        apply_change(full, ConfChange.promote(100))
    assert apply_change(conf, ConfChange.remove(2)).ids() == (1,)
    assert apply_change(conf, ConfChange.promote(2)).voters() == (1, 2)


# --- the strict reconfiguration check (etcd's --strict-reconfig-check) -----------------------------------------


def silent_for_a_check_quorum_window(c: Cluster, node: int) -> None:
    """Cut `node` off (as a SIGSTOP does: nothing in, nothing out) and let the others run until the leader has
    not heard it for more than the check-quorum window (election_timeout_ms)."""
    c.isolate(node)
    c.run(c.config.election_timeout_ms + c.config.heartbeat_interval_ms)


def test_strict_check_refuses_removing_a_follower_while_the_other_is_silent_then_accepts_once_it_is_heard():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"e")
    settle(c)
    silent_for_a_check_quorum_window(c, 3)
    assert c.cores[1].role == Role.LEADER and c.cores[1].active_ids() == {1, 2}
    last = c.cores[1].last_index
    with pytest.raises(QuorumNotActiveError) as err:
        c.cores[1].propose_conf_change(ConfChange.remove(2))
    assert str(err.value).startswith("removing node 2 would leave voters {1,3}; active {1}; a majority needs 2")
    assert (err.value.voters, err.value.active, err.value.needed) == ((1, 3), (1,), 2)
    assert isinstance(err.value, WouldLoseQuorumError)  # a kind of it, as the driver maps it
    assert c.cores[1].last_index == last and not c.cores[1].conf_change_pending  # nothing appended
    index = c.propose(1, b"still commits")
    settle(c)
    assert committed(c, 1, index)  # the cluster keeps committing with 1 and 2
    c.heal()
    c.run(2 * c.config.heartbeat_interval_ms)
    assert c.cores[1].active_ids() == {1, 2, 3}
    index = c.change(1, ConfChange.remove(2))
    settle(c)
    assert committed(c, 1, index) and c.cores[1].membership.voters() == (1, 3)


def test_strict_check_counts_a_follower_heard_within_the_check_quorum_window():
    """The check knows only what the leader heard: a follower gone quiet less than election_timeout_ms ago
    still counts as active (etcd's check likewise trusts its last contact), so such a removal is accepted."""
    c = Cluster(3)
    c.elect(1)
    settle(c)
    c.isolate(3)
    c.run(c.config.election_timeout_ms - 2 * c.config.heartbeat_interval_ms)
    assert 3 in c.cores[1].active_ids()
    c.change(1, ConfChange.remove(2))
    assert c.cores[1].conf_change_pending


def test_strict_check_counts_a_disconnected_follower_as_silent_until_it_answers_again():
    c = Cluster(3)
    c.elect(1)
    settle(c)
    c.cores[1].peer_disconnected(3)  # its connection reset (a killed process): no need to wait for the window
    assert c.cores[1].active_ids() == {1, 2}
    with pytest.raises(QuorumNotActiveError, match=r"removing node 2 would leave voters \{1,3\}; active \{1\}"):
        c.cores[1].propose_conf_change(ConfChange.remove(2))
    c.run(2 * c.config.heartbeat_interval_ms)  # it answers the next heartbeat
    assert c.cores[1].active_ids() == {1, 2, 3}
    c.change(1, ConfChange.remove(2))
    assert c.cores[1].conf_change_pending


def test_strict_check_accepts_a_removal_when_every_voter_is_active():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"e")
    settle(c)
    assert c.cores[1].active_ids() == {1, 2, 3}
    index = c.change(1, ConfChange.remove(3))
    settle(c)
    assert committed(c, 1, index) and c.cores[1].membership.voters() == (1, 2)


def test_strict_check_accepts_removing_the_silent_follower_itself():
    c = Cluster(3)
    c.elect(1)
    settle(c)
    silent_for_a_check_quorum_window(c, 3)
    index = c.change(1, ConfChange.remove(3))
    settle(c)
    assert committed(c, 1, index) and c.cores[1].membership.voters() == (1, 2)


def test_strict_check_refuses_a_new_leader_removal_until_it_hears_the_old_leader():
    """A leader that took over from a crashed one has never heard it: not known active, even within the
    window check-quorum gives every follower to show up."""
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"e")
    settle(c)
    c.crash(1)
    waited_ms = 0
    while c.leader() in (0, 1) and waited_ms < 3 * (c.config.election_timeout_ms + c.config.election_timeout_spread_ms):
        c.tick(10)
        waited_ms += 10
    leader = c.leader()
    other = 5 - leader
    assert leader in (2, 3) and c.cores[leader].active_ids() == {2, 3}
    assert c.cores[leader].status()["progress"][1]["silent_ms"] < c.config.election_timeout_ms  # in its window
    with pytest.raises(QuorumNotActiveError) as err:
        c.cores[leader].propose_conf_change(ConfChange.remove(other))
    assert str(err.value).startswith(
        f"removing node {other} would leave voters {{1,{leader}}}; active {{{leader}}}; a majority needs 2"
    )
    with pytest.raises(QuorumNotActiveError) as err:
        c.cores[leader].propose_conf_change(ConfChange.remove(leader))  # itself: not in the new configuration
    assert str(err.value).startswith(f"removing node {leader} would leave voters {{1,{other}}}; active {{{other}}}")
    c.restart(1)
    c.run(2 * c.config.heartbeat_interval_ms)
    assert c.leader() == leader
    index = c.change(leader, ConfChange.remove(other))
    settle(c)
    assert committed(c, leader, index) and c.cores[leader].membership.voters() == (1, leader)


def test_strict_check_never_refuses_adding_or_removing_a_learner():
    c = Cluster(3, config=RaftConfig(check_quorum=False))  # a leader that keeps leading with no follower heard
    c.elect(1)
    settle(c)
    c.isolate(2)
    c.isolate(3)
    c.run(c.config.election_timeout_ms + c.config.heartbeat_interval_ms)
    assert c.cores[1].role == Role.LEADER and c.cores[1].active_ids() == {1}
    c.add_node(4)
    c.blocked.discard((1, 4))
    c.blocked.discard((4, 1))
    c.change(1, ConfChange.add_learner(4, b"h4"))  # appended (it cannot commit: no voter but 1 is heard)
    assert 4 in c.cores[1].membership.learners()
    c.heal()
    settle(c)
    assert not c.cores[1].conf_change_pending
    c.isolate(2)
    c.isolate(3)
    c.run(c.config.election_timeout_ms + c.config.heartbeat_interval_ms)
    c.change(1, ConfChange.remove(4))
    assert 4 not in c.cores[1].membership


def test_strict_check_refuses_a_promotion_whose_new_majority_is_not_active():
    c = cluster_with_learner(check_quorum=False)
    silent_for_a_check_quorum_window(c, 2)
    c.isolate(3)
    c.blocked -= {(1, 4), (4, 1), (2, 4), (4, 2)}
    c.run(c.config.election_timeout_ms + c.config.heartbeat_interval_ms)
    assert c.cores[1].active_ids() == {1, 4}
    with pytest.raises(QuorumNotActiveError) as err:
        c.cores[1].propose_conf_change(ConfChange.promote(4))
    assert str(err.value).startswith("promoting node 4 would leave voters {1,2,3,4}; active {1,4}; a majority needs 3")
    c.heal()
    c.run(2 * c.config.heartbeat_interval_ms)
    index = c.change(1, ConfChange.promote(4))
    settle(c)
    assert committed(c, 1, index) and c.cores[1].membership.voters() == (1, 2, 3, 4)


def test_strict_check_compares_the_active_voters_with_the_new_majority():
    three = ClusterConfig.voters_of([1, 2, 3])
    two = apply_change(three, ConfChange.remove(3))
    check_active_quorum(three, two, ConfChange.remove(3), {1, 2})
    with pytest.raises(QuorumNotActiveError):
        check_active_quorum(three, two, ConfChange.remove(3), {1, 3})  # 3 is not in the new configuration
    five = ClusterConfig.voters_of([1, 2, 3, 4, 5])
    four = apply_change(five, ConfChange.remove(5))
    check_active_quorum(five, four, ConfChange.remove(5), {1, 2, 3})  # 3 of 4
    with pytest.raises(QuorumNotActiveError, match="a majority needs 3"):
        check_active_quorum(five, four, ConfChange.remove(5), {1, 2, 5})
    learner = apply_change(three, ConfChange.add_learner(4, b"x"))
    check_active_quorum(three, learner, ConfChange.add_learner(4, b"x"), set())  # voters unchanged
    check_active_quorum(learner, three, ConfChange.remove(4), set())


# --- 4.2.1: catching up new servers (learners) --------------------------------------------------------------


def test_4_2_1_a_learner_receives_the_log_and_never_counts_for_commit():
    c = cluster_with_learner()
    assert [e.data for e in c.applied[4]] == [e.data for e in c.applied[1]]
    assert c.cores[1].status()["learners_behind"] == {4: 0}
    c.crash(2)
    c.crash(3)
    index = c.propose(1, b"needs a voter")
    settle(c, 100)
    assert c.cores[4].last_index >= index  # the learner holds it ...
    assert c.cores[1].commit_index < index  # ... and it does not count


def test_4_2_1_a_learner_never_campaigns_and_its_vote_does_not_count():
    c = cluster_with_learner()
    c.crash(1)
    before = len(c.sent)
    c.run(3000)
    assert not any(isinstance(m, RequestVote) and m.src == 4 for m in c.sent[before:])
    assert not any(isinstance(m, RequestVote) and m.dst == 4 for m in c.sent[before:])
    assert c.leader() in (2, 3) and c.cores[4].leader == c.leader()


def test_4_2_1_a_lagging_learner_is_not_promoted():
    c = Cluster(3, config=RaftConfig(promote_max_lag_entries=3))
    c.elect(1)
    c.deliver_all()
    c.add_node(4)
    c.crash(4)  # the new node is not running yet
    c.change(1, ConfChange.add_learner(4, b"h4"))
    settle(c)
    for k in range(10):
        c.propose(1, b"e%d" % k)
    settle(c)
    with pytest.raises(NotCaughtUpError) as err:
        c.cores[1].propose_conf_change(ConfChange.promote(4))
    assert err.value.behind_entries > 3
    assert c.cores[1].status()["learners_behind"][4] == err.value.behind_entries
    c.restart(4)
    settle(c)
    index = c.change(1, ConfChange.promote(4))
    settle(c)
    assert committed(c, 1, index) and c.cores[4].is_voter and c.cores[1].membership.voters() == (1, 2, 3, 4)


def test_4_2_1_a_learner_catches_up_through_a_snapshot_that_carries_the_configuration():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.add_node(4)
    c.crash(4)
    c.change(1, ConfChange.add_learner(4, b"h4"))
    for k in range(10):
        c.propose(1, b"e%d" % k)
    settle(c)
    index = c.cores[1].commit_index
    for i in (1, 2, 3):
        c.compact(i, index, b"state", with_config=True)
    c.restart(4)
    settle(c, 600)
    snap = c.installed[4][-1]
    assert snap.index == index and decode_membership(snap.config).learners() == (4,)
    assert c.cores[4].membership == c.cores[1].membership and c.cores[4].membership_index == index
    index = c.change(1, ConfChange.promote(4))
    settle(c)
    assert c.cores[4].is_voter and committed(c, 1, index)


def test_4_2_1_replacing_a_node_of_three():
    """Add 4 as a learner, promote it once caught up, remove 3: every step commits, and the cluster then
    commits without node 3."""
    c = cluster_with_learner()
    settle(c)
    c.change(1, ConfChange.promote(4))
    settle(c)
    index = c.change(1, ConfChange.remove(3))
    settle(c)
    assert committed(c, 1, index)
    assert c.cores[1].membership.voters() == (1, 2, 4) and c.cores[3].removed
    c.crash(3)
    c.crash(2)
    index = c.propose(1, b"with 4")
    settle(c)
    assert committed(c, 1, index)  # 1 and 4 are a majority of {1, 2, 4}


# --- 4.2.2: removing the current leader ---------------------------------------------------------------------


def test_4_2_2_a_removed_server_stops_counting_at_once():
    """The removal of node 3 is in effect on the leader as soon as appended: with node 2 silent, node 3's
    acknowledgement does not commit the removal (it would have under the old configuration)."""
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.blocked |= {(1, 2), (2, 1)}
    index = c.change(1, ConfChange.remove(3))
    settle(c, 100)
    assert c.cores[3].last_index >= index and c.cores[1].commit_index < index
    c.heal()
    settle(c)
    assert committed(c, 1, index)


def test_4_2_2_the_removed_leader_commits_its_removal_then_hands_over_and_steps_down():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    before = len(c.sent)
    index = c.change(1, ConfChange.remove(1))
    assert c.cores[1].role == Role.LEADER and not c.cores[1].is_voter  # leads without counting itself
    c.deliver_all()
    assert c.cores[1].removed and c.cores[1].role == Role.FOLLOWER and c.cores[1].removed_steps_down == 1
    timeout_now = [m for m in c.sent[before:] if isinstance(m, TimeoutNow)]
    assert len(timeout_now) == 1 and timeout_now[0].dst in (2, 3)
    leader = c.leader()
    assert leader == timeout_now[0].dst  # elected within the same delivery: no election timeout
    settle(c)
    assert c.cores[leader].commit_index >= index and c.cores[leader].membership.voters() == (2, 3)
    c.run(3000)
    assert c.leader() == leader and c.cores[1].role == Role.FOLLOWER  # the old leader never campaigns
    assert c.cores[1].status()["removed"] is True


def test_4_2_2_the_removed_leader_does_not_count_its_own_log():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.blocked |= {(2, 1), (3, 1)}
    index = c.change(1, ConfChange.remove(1))
    c.deliver_all()
    c.cores[1].tick(1)
    c.process(1)
    assert c.cores[1].commit_index < index  # only node 1 durably holds it: no majority of {2, 3}


def test_4_2_2_a_server_whose_removal_is_uncommitted_still_campaigns():
    """Thesis 4.2.2: a server outside its latest configuration still starts elections while that entry is not
    committed (without counting its own vote): here node 1 alone holds its removal, node 3 is down, and nodes 2
    and 4 cannot elect one of theirs without node 1 (3 of voters 1..4), whose log is ahead of theirs."""
    c = Cluster(4)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    c.isolate(1)
    index = c.change(1, ConfChange.remove(1))
    c.crash(1)
    c.restart(1)
    assert c.cores[1].removed and c.cores[1].last_index == index and c.cores[1].commit_index < index
    c.heal()
    c.run(5000)
    leader = c.leader()
    assert leader in (2, 4), leader
    assert c.cores[leader].commit_index >= index and c.cores[leader].membership.voters() == (2, 3, 4)
    assert c.cores[1].role == Role.FOLLOWER and c.cores[1].commit_index >= index
    before = len(c.sent)
    c.run(3000)
    assert not any(m.src == 1 and isinstance(m, RequestVote) for m in c.sent[before:])  # committed: it stops


# --- 4.2.3: disruptive servers ------------------------------------------------------------------------------


def test_4_2_3_a_removed_server_that_holds_its_removal_never_campaigns():
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.change(1, ConfChange.remove(3))
    settle(c)
    term = c.cores[1].term
    before = len(c.sent)
    c.run(5000)
    assert not any(m.src == 3 and isinstance(m, RequestVote) for m in c.sent[before:])
    assert c.cores[1].term == term and c.leader() == 1 and c.cores[3].removed


def test_4_2_3_a_removed_server_cut_off_before_its_removal_does_not_disrupt():
    """Node 3 misses its removal and pre-votes: the members hear their leader (lease) and ignore it, neither the
    term nor the leader changes, and the leader answers with the entries it missed, so that it learns it was
    removed and stops."""
    c = Cluster(3)
    c.elect(1)
    c.deliver_all()
    c.isolate(3)
    index = c.change(1, ConfChange.remove(3))
    settle(c)
    assert committed(c, 1, index)
    c.run(2000)  # node 3 times out alone
    c.heal()
    term = c.cores[1].term
    before = len(c.sent)
    c.run(5000)
    assert any(m.src == 3 and isinstance(m, RequestVote) for m in c.sent[before:])  # it does try
    assert c.leader() == 1 and c.cores[1].term == term and c.cores[2].term == term
    # the leader answered its pre-vote with the entries it missed: it learned its removal, and stopped
    assert c.cores[3].removed and c.cores[1].removed_told >= 1
    before = len(c.sent)
    c.run(3000)
    assert not any(m.src == 3 and isinstance(m, RequestVote) for m in c.sent[before:])


# --- 4.3: the configuration in snapshots and at restart -----------------------------------------------------


def test_4_3_a_restarted_node_uses_the_latest_configuration_of_its_log():
    c = cluster_with_learner()
    c.change(1, ConfChange.promote(4))
    settle(c)
    for i in (2, 4):
        c.crash(i)
        c.restart(i)
    assert c.cores[2].membership.voters() == (1, 2, 3, 4)
    assert c.cores[4].is_voter and c.cores[4].membership == c.cores[1].membership


def test_4_3_a_restarted_node_reads_the_snapshot_configuration_then_the_log_after_it():
    c = cluster_with_learner()
    index = c.cores[1].commit_index
    c.compact(2, index, b"s", with_config=True)
    promoted = c.change(1, ConfChange.promote(4))
    settle(c)
    c.crash(2)
    c.restart(2)  # the snapshot says 4 is a learner; the log after it holds the promotion
    assert c.cores[2].membership_index == promoted and c.cores[2].membership.voters() == (1, 2, 3, 4)
    assert c.cores[2].membership_at(index).learners() == (4,)
    with pytest.raises(ValueError):
        c.cores[2].membership_at(index - 1)


def test_4_3_membership_at_answers_for_each_index_of_the_log():
    c = cluster_with_learner()
    added = c.cores[1].membership_index
    promoted = c.change(1, ConfChange.promote(4))
    settle(c)
    core = c.cores[1]
    assert core.membership_at(added - 1).ids() == (1, 2, 3)
    assert core.membership_at(added).learners() == (4,)
    assert core.membership_at(promoted - 1).learners() == (4,)
    assert core.membership_at(promoted).voters() == (1, 2, 3, 4)


# --- the body encoding ----------------------------------------------------------------------------------------


def test_membership_body_round_trips_and_is_canonical():
    conf = ClusterConfig.of(
        [Member(3, MemberRole.LEARNER, b"c:1"), Member(1, MemberRole.VOTER, b"a:1"), Member(2, MemberRole.VOTER)]
    )
    body = encode_membership(conf)
    assert decode_membership(body) == conf and conf.ids() == (1, 2, 3)
    assert body[:4] == bytes.fromhex("0100 0300".replace(" ", ""))
    assert membership_of_entry(membership_entry(conf)) == conf
    assert membership_of_entry(b"") is None
    assert membership_of_entry(encode_control(ControlKind.GROUP_OFFSETS, b"x")) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\x01", "membership body"),
        (b"\x02\x00\x01\x00", "membership version"),
        (b"\x01\x00\x00\x00", "member count"),
        (b"\x01\x00\x01\x00\x01\x00", "member 0"),
        (b"\x01\x00\x01\x00\x01\x00\x00\x00\x03\x00\x00", "member 1 role"),
        (b"\x01\x00\x01\x00\x01\x00\x00\x00\x01\x05\x00ab", "member 1 address"),
        (b"\x01\x00\x01\x00\x01\x00\x00\x00\x01\x00\x00zz", "membership body size"),
        (b"\x01\x00\x01\x00\x01\x00\x00\x00\x02\x00\x00", "voter count"),
        (b"\x01\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00", "member id"),
    ],
)
def test_membership_body_errors_name_the_field(body, field):
    with pytest.raises(MembershipFormatError) as err:
        decode_membership(body)
    assert err.value.field == field


def test_membership_limits():
    with pytest.raises(MembershipFormatError, match="voter count"):
        ClusterConfig.voters_of(range(1, CLUSTER_SIZE_MAX + 2))
    with pytest.raises(MembershipFormatError, match="member count"):
        ClusterConfig.of(
            [Member(1, MemberRole.VOTER)] + [Member(i, MemberRole.LEARNER) for i in range(2, MEMBERS_MAX + 2)]
        )
    with pytest.raises(MembershipFormatError, match="address length"):
        ClusterConfig.of([Member(1, MemberRole.VOTER, b"x" * (MEMBER_ADDRESS_BYTES_MAX + 1))])
    with pytest.raises(MembershipFormatError, match="unique"):
        ClusterConfig.of([Member(1, MemberRole.VOTER, b"x"), Member(2, MemberRole.VOTER, b"x")])
    with pytest.raises(MembershipFormatError, match="increasing"):
        decode_membership(b"\x01\x00\x02\x00" + b"\x02\x00\x00\x00\x01\x00\x00" + b"\x01\x00\x00\x00\x01\x00\x00")


def test_bootstrap_from_peer_ids_is_all_voters():
    core = RaftCore(2, [1, 3], MemStorage(), RaftConfig(), random.Random(1))
    assert core.membership == ClusterConfig.voters_of([1, 2, 3]) and core.peers == (1, 3) and not core.removed


def test_the_documented_example_is_the_codes():
    doc = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
    (block,) = re.findall(r"```membership-hex\n(.*?)```", doc.read_text(), re.S)
    data = bytes.fromhex(block.replace("\n", " "))
    conf = ClusterConfig.of(
        [Member(i, MemberRole.VOTER, b"n%d" % i) for i in (1, 2, 3)] + [Member(4, MemberRole.LEARNER, b"n4")]
    )
    assert membership_of_entry(data) == conf
    assert membership_entry(conf) == data
