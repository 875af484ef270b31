"""Log replication (Raft 5.3), the commit rule (5.4.2, figure 8), durability (thesis 10.2.1), flow control."""

from __future__ import annotations

import pytest

from shmraft.raft.config import RaftConfig
from shmraft.raft.errors import BackpressureError, EntryTooLargeError, InvariantError, NotLeaderError
from shmraft.raft.messages import (
    AppendEntries,
    AppendResponse,
    Channel,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.types import Entry, HardState, Role
from shmraft.sim.harness import Cluster, core_with_log, drain, make_leader, persist
from shmraft.sim.scenarios import figure_8


def entries(first: int, terms: list[int]) -> tuple[Entry, ...]:
    return tuple(Entry(i, t, f"e{i}t{t}".encode()) for i, t in enumerate(terms, start=first))


def log_terms(core) -> list[int]:
    return [core.term_at(i) for i in range(1, core.last_index + 1)]


def appends_to(msgs, dst):
    return [m for m in msgs if isinstance(m, AppendEntries) and m.dst == dst]


# --- follower side -------------------------------------------------------------------------------------------
def test_follower_rejects_append_when_prev_entry_does_not_match():
    core, storage = core_with_log(2, [1, 3], [1, 1, 2], HardState(term=3))
    core.step(AppendEntries(1, 2, 3, 3, 3, entries(4, [3]), 0))  # we hold (3, term 2), not term 3
    core.step(AppendEntries(1, 2, 3, 7, 3, entries(8, [3]), 0))  # we hold nothing at 7
    replies = drain(core, storage)
    assert [(m.success, m.index) for m in replies] == [(False, 3), (False, 7)]
    assert core.last_index == 3 and log_terms(core) == [1, 1, 2]


def test_follower_appends_and_acknowledges_only_after_persisting():
    core, storage = core_with_log(2, [1, 3], [1], HardState(term=1))
    core.step(AppendEntries(1, 2, 1, 1, 1, entries(2, [1, 1]), 1))
    rd = core.ready()
    assert [e.index for e in rd.entries] == [2, 3]
    assert rd.messages == []  # nothing may leave before the entries are durable
    (ack,) = rd.messages_after_persist
    assert isinstance(ack, AppendResponse) and ack.success and ack.index == 3
    assert rd.hard_state == HardState(1, 0, 1)


def test_follower_truncates_conflicting_suffix_and_appends_leaders_entries():
    core, storage = core_with_log(2, [1, 3], [1, 1, 2, 2], HardState(term=3))
    core.step(AppendEntries(1, 2, 3, 2, 1, entries(3, [3, 3]), 0))
    rd = core.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3), (4, 3)]  # the driver overwrites from 3
    persist(core, storage, rd)
    assert log_terms(core) == [1, 1, 3, 3]
    assert [storage.term_at(i) for i in range(1, 5)] == [1, 1, 3, 3]


def test_follower_keeps_its_entries_when_a_stale_append_arrives():
    core, storage = core_with_log(2, [1, 3], [1, 1, 1, 1], HardState(term=1))
    core.step(AppendEntries(1, 2, 1, 1, 1, entries(2, [1]), 0))  # an old, shorter append of the same leader
    rd = core.ready()
    assert rd.entries == []
    assert rd.messages_after_persist[0].index == 2 and core.last_index == 4


def test_follower_never_truncates_a_committed_entry():
    core, storage = core_with_log(2, [1, 3], [1, 1, 1], HardState(term=2, commit=3))
    # a corrupt/buggy leader claims entry 2 differs: the core refuses loudly rather than lose it
    core.step(AppendEntries(1, 2, 2, 1, 1, entries(2, [2]), 3))
    assert log_terms(core) == [1, 1, 1]  # skipped: prev < commit means that part is known to match
    with pytest.raises(InvariantError):
        core._log.maybe_append(1, 1, entries(2, [2]), 3)


def test_follower_takes_commit_from_append_but_not_beyond_what_it_holds():
    core, storage = core_with_log(2, [1, 3], [1], HardState(term=1))
    core.step(AppendEntries(1, 2, 1, 1, 1, entries(2, [1]), 10))
    assert core.commit_index == 2


def test_follower_learns_commit_from_heartbeat_and_answers_it():
    core, storage = core_with_log(2, [1, 3], [1, 1, 1], HardState(term=1))
    core.step(Heartbeat(1, 2, 1, 2))
    assert core.commit_index == 2
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert isinstance(rd.messages_after_persist[0], HeartbeatResponse)


def test_rejection_hint_points_before_the_conflicting_term():
    follower, fs = core_with_log(2, [1, 3], [1, 1, 2, 2, 2, 2, 2], HardState(term=3))
    follower.step(AppendEntries(1, 2, 3, 8, 3, entries(9, [3]), 0))
    (reply,) = drain(follower, fs)
    assert (reply.success, reply.index, reply.hint_index, reply.hint_term) == (False, 8, 7, 2)

    leader, ls = core_with_log(1, [2, 3], [1, 1, 3, 3, 3, 3, 3, 3], HardState(term=3))
    make_leader(leader, ls)
    leader.step(AppendResponse(2, 1, leader.term, 8, False, 7, 2))  # answer to its first probe (prev 8)
    (probe,) = appends_to(drain(leader, ls), 2)
    assert probe.prev_index == 2  # one round trip skips the whole conflicting term 2 (index 3..7)


def test_leader_repairs_a_long_divergent_follower_in_few_round_trips():
    c = Cluster(3)
    for i, terms in ((1, [1] + [3] * 300), (2, [1] + [3] * 300), (3, [1] + [2] * 200)):
        c.storages[i].append(list(entries(1, terms)), HardState(term=terms[-1]))
        c.restart(i)
    c.elect(1)
    c.run(300)
    rejections = [m for m in c.sent if isinstance(m, AppendResponse) and m.src == 3 and not m.success]
    assert c.log(3) == c.log(1) and c.cores[3].commit_index == c.cores[1].commit_index == 302
    assert len(rejections) <= 2, rejections  # one hint skips all 200 entries of term 2


# --- leader side ---------------------------------------------------------------------------------------------
def test_match_index_is_what_a_follower_acknowledged_and_zero_off_the_leader():
    """The driver sends an append on the consensus link only when the follower acknowledged everything before
    it (workers/raft.py `_direct`): match_index is that acknowledgement."""
    core, storage = core_with_log(1, [2, 3], [1], HardState(term=1))
    assert core.match_index(2) == 0  # a follower has no progress to tell
    make_leader(core, storage)
    last = core.last_index
    assert core.match_index(2) == 0 and core.match_index(9) == 0
    core.step(AppendResponse(2, 1, core.term, last, True))
    drain(core, storage)
    assert core.match_index(2) == last and core.match_index(3) == 0
    core.propose(b"x")
    (app,) = appends_to(drain(core, storage), 2)
    assert app.prev_index == core.match_index(2)  # nothing in flight before it: may go direct
    core.propose(b"y")
    (app2,) = appends_to(drain(core, storage), 2)
    assert app2.prev_index > core.match_index(2)  # behind an unacknowledged append: the data channel


def test_leader_commits_only_entries_of_its_own_term():
    """Figure 8: an entry of an earlier term is not committed by counting replicas, only by a later entry of
    the leader's own term reaching a majority."""
    core, storage = core_with_log(1, [2, 3, 4, 5], [1, 2], HardState(term=3, commit=1))
    make_leader(core, storage)  # term 4, no-op at index 3
    assert core.term == 4 and core.commit_index == 1
    for follower in (2, 3):
        core.step(AppendResponse(follower, 1, 4, 2, True))  # entry 2 (term 2) now on 3 of 5 nodes
    assert core.commit_index == 1
    for follower in (2, 3):
        core.step(AppendResponse(follower, 1, 4, 3, True))  # the term-4 no-op on a majority
    assert core.commit_index == 3


def test_commit_rule_mutation_would_commit_an_earlier_terms_entry():
    """The previous test's sensitivity: the test-only mutation breaks exactly that rule."""
    core, storage = core_with_log(
        1, [2, 3, 4, 5], [1, 2], HardState(term=3, commit=1), config=RaftConfig(test_only_mutation="commit_any_term")
    )
    make_leader(core, storage)
    for follower in (2, 3):
        core.step(AppendResponse(follower, 1, 4, 2, True))
    assert core.commit_index == 2


def test_leader_counts_its_own_log_only_after_persisted():
    core, storage = core_with_log(1, [2, 3], [])
    make_leader(core, storage)
    index = core.propose(b"x")
    rd = core.ready()
    assert rd.entries[-1].index == index
    core.step(AppendResponse(2, 1, core.term, index, True))
    assert core.commit_index < index  # 1 of 3 durable copies, our own not yet reported
    persist(core, storage, rd)
    assert core.commit_index == index


def test_leader_commits_with_two_followers_before_its_own_persist():
    core, storage = core_with_log(1, [2, 3], [])
    make_leader(core, storage)
    index = core.propose(b"x")
    core.ready()  # being persisted, slowly
    for f in (2, 3):
        core.step(AppendResponse(f, 1, core.term, index, True))
    assert core.commit_index == index


def test_leader_sends_appends_before_its_own_persist():
    core, storage = _replicating_leader(RaftConfig())
    index = core.propose(b"x")
    rd = core.ready()
    assert [e.index for e in rd.entries] == [index]
    assert {m.dst for m in rd.messages if isinstance(m, AppendEntries) and m.entries} == {2, 3}


def test_proposals_between_readies_share_one_append_per_follower():
    core, storage = _replicating_leader(RaftConfig())
    for k in range(5):
        core.propose(b"p%d" % k)
    msgs = drain(core, storage)
    for f in (2, 3):
        (m,) = appends_to(msgs, f)
        assert len(m.entries) == 5


def test_messages_are_labelled_bulk_data_or_control():
    e = entries(1, [1])
    assert AppendEntries(1, 2, 1, 0, 0, e, 0).channel == Channel.DATA
    assert AppendEntries(1, 2, 1, 0, 0, (), 0).channel == Channel.CONSENSUS
    for m in (
        AppendResponse(2, 1, 1, 1, True),
        Heartbeat(1, 2, 1, 0),
        HeartbeatResponse(2, 1, 1),
        RequestVote(1, 2, 1, 0, 0),
        VoteResponse(2, 1, 1, True),
        TimeoutNow(1, 2, 1),
    ):
        assert m.channel == Channel.CONSENSUS


def _replicating_leader(config: RaftConfig):
    core, storage = core_with_log(1, [2, 3], [], config=config)
    make_leader(core, storage)
    for f in (2, 3):
        core.step(AppendResponse(f, 1, core.term, core.last_index, True))  # both followers now REPLICATE
    drain(core, storage)
    return core, storage


def test_pipelining_is_bounded_by_max_inflight_entries():
    core, storage = _replicating_leader(RaftConfig(max_inflight_entries=4, max_append_entries=1))
    base = core.last_index
    for k in range(10):
        core.propose(b"%d" % k)
    msgs = appends_to(drain(core, storage), 2)
    assert [m.entries[0].index for m in msgs] == [base + 1, base + 2, base + 3, base + 4]
    core.step(AppendResponse(2, 1, core.term, base + 2, True))
    msgs = appends_to(drain(core, storage), 2)
    assert [m.entries[0].index for m in msgs] == [base + 5, base + 6]


def test_pipelining_is_bounded_by_max_inflight_bytes():
    core, storage = _replicating_leader(
        RaftConfig(max_inflight_bytes=3000, max_append_bytes=1000, max_entry_bytes=1000)
    )
    for _ in range(10):
        core.propose(b"x" * 1000)
    msgs = appends_to(drain(core, storage), 2)
    assert sum(len(e.data) for m in msgs for e in m.entries) == 3000
    assert all(sum(len(e.data) for e in m.entries) <= 1000 for m in msgs)


def test_append_respects_max_append_bytes_and_max_append_entries():
    core, storage = _replicating_leader(RaftConfig(max_append_bytes=250, max_append_entries=3, max_entry_bytes=250))
    for size in (100, 100, 100, 10, 10, 10, 10, 240):
        core.propose(b"y" * size)
    msgs = appends_to(drain(core, storage), 2)
    assert [len(m.entries) for m in msgs] == [2, 3, 2, 1]
    assert all(sum(len(e.data) for e in m.entries) <= 250 for m in msgs)


def test_commit_reaches_followers_without_waiting_for_a_heartbeat():
    c = Cluster(3)
    c.elect(1)
    index = c.propose(1, b"z")
    c.deliver_all()
    assert all(c.cores[i].commit_index == index for i in c.ids)


def test_lost_append_is_resent_after_a_heartbeat_interval():
    c = Cluster(3)
    c.elect(1)
    c.blocked.add((1, 3))
    index = c.propose(1, b"lost on the way to 3")
    c.deliver_all()
    c.blocked.clear()
    assert c.cores[3].last_index < index
    c.run(2 * c.config.heartbeat_interval_ms)
    assert c.cores[3].commit_index == index


def test_leader_resends_at_once_after_connection_to_follower_is_lost():
    core, storage = _replicating_leader(RaftConfig())
    index = core.propose(b"q")
    drain(core, storage)
    core.peer_disconnected(2)
    (m,) = appends_to(drain(core, storage), 2)
    assert m.entries[-1].index == index and m.prev_index < index


def test_propose_on_follower_raises_not_leader_with_hint():
    c = Cluster(3)
    c.elect(2)
    with pytest.raises(NotLeaderError) as info:
        c.cores[1].propose(b"x")
    assert info.value.leader == 2


def test_proposals_are_refused_beyond_the_uncommitted_limit():
    core, storage = core_with_log(1, [2, 3], [], config=RaftConfig(max_uncommitted_entries=5))
    make_leader(core, storage)  # the no-op is uncommitted too
    for k in range(4):
        core.propose(b"%d" % k)
    with pytest.raises(BackpressureError):
        core.propose(b"one too many")
    with pytest.raises(EntryTooLargeError):
        core.propose(b"x" * (core.config.max_entry_bytes + 1))


def test_restart_restores_term_vote_log_and_hands_out_committed_entries_again():
    c = Cluster(3)
    c.elect(1)
    for k in range(5):
        c.propose(1, b"r%d" % k)
    c.deliver_all()
    before = (c.cores[2].term, c.cores[2].vote, c.log(2))
    c.crash(2)
    c.restart(2)
    core = c.cores[2]
    assert (core.term, core.vote, c.log(2)) == before
    assert core.role == Role.FOLLOWER
    rd = core.ready()
    assert [e.data for e in rd.committed_entries[1:]] == [b"r%d" % k for k in range(5)]


def test_persisted_report_for_entries_replaced_meanwhile_is_ignored():
    core, storage = core_with_log(2, [1, 3], [1], HardState(term=1))
    core.step(AppendEntries(1, 2, 1, 1, 1, entries(2, [1, 1]), 0))
    rd1 = core.ready()  # entries 2..3 of term 1 go to the disk...
    core.step(AppendEntries(3, 2, 2, 1, 1, entries(2, [2]), 0))  # ...while a new leader replaces them
    rd2 = core.ready()
    core.persisted(rd1.entries[-1].index, rd1.entries[-1].term)
    assert core.status()["stable_index"] == 1
    storage.append(rd1.entries)
    persist(core, storage, rd2)
    assert core.status()["stable_index"] == 2 and log_terms(core) == [1, 2]


def _figure_8(mutation: str) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """Raft figure 8 on 5 nodes (shmraft.sim.scenarios.figure_8): (S1's commit in step c, what S1 applied,
    what S5 applied at the end) as (index, term) pairs."""
    r = figure_8(mutation)
    return r.detail["s1_commit"], r.detail["s1_applied"], r.detail["s5_applied"]


def test_figure_8_scenario_keeps_committed_entries_with_the_commit_rule():
    s1_commit, s1_applied, s5_applied = _figure_8("")
    assert s1_commit == 1  # entry 2 is on a majority but of an old term: not committed
    assert dict(s1_applied).items() <= dict(s5_applied).items()


def test_figure_8_scenario_loses_a_committed_entry_without_the_commit_rule():
    s1_commit, s1_applied, s5_applied = _figure_8("commit_any_term")
    assert s1_commit == 2
    assert dict(s1_applied)[2] != dict(s5_applied)[2]  # "committed" entry 2 replaced: the rule matters


def test_scenario_checker_reports_figure_8_only_without_the_commit_rule():
    assert figure_8("").violations == []
    assert figure_8("commit_any_term").violations
