"""Membership changes on real local clusters (processes, shared memory, RocksDB, TCP), under producer load:
grow 3 -> 4 (the learner catches up, is promoted), remove a follower, remove the leader, replace a node; and
the refusals (no secret, a change in progress, an unknown node, an address in use). Every test checks what
was acknowledged against every member's own log."""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from clusterkit import Harness, Load, verify, wait_for
from test_snapshot_live import check_held_logs

from shmraft.cli import supervisor as supervisor_cli
from shmraft.client import Client, ShmraftError, admin
from shmraft.client.connection import Connection
from shmraft.client.errors import (
    AddressInUse,
    MemberUnknown,
    NoQuorum,
    NotCaughtUp,
    QuorumNotActive,
    Unauthorized,
)
from shmraft.config import Member
from shmraft.constants import ELECTION_TIMEOUT_MS
from shmraft.net.auth import Secret, cluster_secret
from shmraft.node.layout import NodeLayout
from shmraft.node.members import encode_address
from shmraft.raft.types import Role
from shmraft.wire import client as cp

CHANGE_TIMEOUT_S = 30.0


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path, nodes=3, snapshot_chunk_bytes=4096)
    try:
        yield h.start()
    finally:
        h.stop()


def _secret(h: Harness) -> Secret:
    return cluster_secret(h.configs[0])


def _change(h: Harness, op: cp.ChangeOp, node_id: int, member: Member | None = None, **kw) -> int:
    addresses = kw.pop("addresses", h.addresses)
    kw.setdefault("timeout_s", CHANGE_TIMEOUT_S)
    return admin.change_member(addresses, op, node_id, secret=_secret(h), cluster_id=h.cluster_id, member=member, **kw)


def _members(h: Harness) -> admin.Membership:
    return admin.list_members(h.addresses)


def _grow(h: Harness, node_id: int) -> None:
    """Add `node_id` as a learner on fresh ports, start it (empty log), promote it once caught up."""
    config = h.new_node_config(node_id)
    _change(h, cp.ChangeOp.ADD_LEARNER, node_id, config.me)
    h.start_node(node_id)
    deadline = time.monotonic() + 120
    while True:
        try:
            _change(h, cp.ChangeOp.PROMOTE, node_id)
            return
        except NotCaughtUp:
            assert time.monotonic() < deadline, "the learner never caught up"
            time.sleep(0.2)


def _status_nodes(h: Harness) -> dict[int, dict]:
    """`shmraft-supervisor status --json` of the local cluster of the first three nodes' layout: node id ->
    its status entry."""
    c = next(c for c in h.configs if c.node_id == 1)
    port_base = c.me.client_port - 101  # the local layout: node N on port_base + 100 N + 1..5
    argv = ["status", "--json", "--data-dir", str(c.data_dir), "--port-base", str(port_base)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        supervisor_cli.main([*argv, "--cluster-id", h.cluster_id])
    return {n["node_id"]: n for n in json.loads(out.getvalue())["nodes"]}


def _wait_voters(h: Harness, voters: list[int], learners: list[int] | None = None) -> admin.Membership:
    """Until the leader's configuration in effect is committed with exactly these voters (and learners)."""

    def settled(view: admin.Membership) -> bool:
        got_v = sorted(m.node_id for m in view.members if m.role == "voter")
        got_l = sorted(m.node_id for m in view.members if m.role == "learner")
        return got_v == sorted(voters) and (learners is None or got_l == sorted(learners)) and not view.change_pending

    return wait_for(lambda: _members(h), 60, f"voters {voters}", accept=settled, retry_on=(ShmraftError,))


def test_grow_to_four_under_load_then_remove_a_follower(harness: Harness) -> None:
    h = harness
    with Load(h, tag="grow") as load:
        load.wait_acked(500, 60)
        _grow(h, 4)
        view = _wait_voters(h, [1, 2, 3, 4])
        assert view.get(4).member.client_port == h.config(4).me.client_port
        wait_for(  # status lists the node added since the config file, with its own state block
            lambda: _status_nodes(h).get(4, {}),
            30,
            "status to list node 4 serving",
            accept=lambda n: n.get("status") == "SERVING" and 4 in n["membership"]["voters"],
        )
        load.wait_acked(len(load.acked) + 300, 60)
        victim = next(n for n in h.followers() if n != 4)
        _change(h, cp.ChangeOp.REMOVE, victim)
        _wait_voters(h, [n for n in (1, 2, 3, 4) if n != victim])
        wait_for(lambda: h.state(victim)["removed"] == 1, 30, f"node {victim} to know it was removed")
        h.local.stop_node(victim)
        h.forget_node(victim)
        load.wait_acked(len(load.acked) + 300, 60)
    assert not load.errors.get("MembershipError")
    verify(h, load.acked)
    with Client([h.config(4).me.client_address], only_node=True) as c:  # the new member serves its own log
        assert c.metadata().members  # it knows the members


def test_remove_the_leader_a_new_one_is_elected_and_the_removed_node_stays_quiet(harness: Harness) -> None:
    h = harness
    with Load(h, tag="rmleader") as load:
        load.wait_acked(300, 60)
        old = h.wait_leader()
        old_config = h.config(old)
        term_before = h.state(old)["term"]
        one = Client([old_config.me.client_address], timeout_s=20.0)  # configured with the removed node only
        assert len(one.metadata().members) == 3
        _change(h, cp.ChangeOp.REMOVE, old)
        rest = [n for n in (1, 2, 3) if n != old]
        h.forget_node(old)  # still running: it must not disrupt the others
        new = h.wait_leader()
        assert new in rest
        _wait_voters(h, rest)
        load.wait_acked(len(load.acked) + 500, 60)
        terms = {n: h.state(n)["term"] for n in rest}
        quiet_s = 3 * old_config.election_timeout_ms / 1000
        assert not wait_for_change(lambda: {n: h.state(n)["term"] for n in rest}, terms, quiet_s), (
            "the removed node disturbed the terms"
        )
        assert min(terms.values()) > term_before or h.leader() != old
    block = NodeLayout(old_config).attach_state()
    try:
        assert block.get("removed") == 1, "the removed node says it was removed"
        assert block.get("role") != Role.LEADER
    finally:
        block.close()
    h.local.stop_node(old)
    with one:  # it learnt the members from METADATA: it keeps working without the node it was given
        load.acked[b"after-removal"] = one.produce(b"after-removal")
    verify(h, load.acked)


def wait_for_change(read, before, within_s: float) -> bool:
    """Whether `read()` differs from `before` at some point within `within_s` (polling)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if read() != before:
            return True
        time.sleep(0.05)
    return False


def test_refusals(harness: Harness) -> None:
    h = harness
    wrong = Secret(b"w" * 32, "test")
    with pytest.raises(Unauthorized):  # a stranger without the cluster secret
        admin.change_member(h.addresses, cp.ChangeOp.REMOVE, 2, secret=wrong, cluster_id=h.cluster_id, timeout_s=10)
    with pytest.raises(MemberUnknown):
        _change(h, cp.ChangeOp.REMOVE, 9)
    with pytest.raises(MemberUnknown):
        _change(h, cp.ChangeOp.PROMOTE, 2)  # a voter already
    clash = Member(5, "127.0.0.1", h.config(2).me.client_port, 1, 2, 3)
    with pytest.raises(AddressInUse):
        _change(h, cp.ChangeOp.ADD_LEARNER, 5, clash)
    with pytest.raises(AddressInUse):
        _change(h, cp.ChangeOp.ADD_LEARNER, 2, h.config(2).me)  # a member already
    # one change at a time: two changes sent together while the followers are paused (shorter than an
    # election timeout): the first waits for its commit, the second is refused at once
    leader = h.wait_leader()
    followers = [n for n in (1, 2, 3) if n != leader]
    learner = Member(6, "127.0.0.1", 1001, 1002, 1003, 1004)
    first = admin.signed_change(_secret(h), h.cluster_id, cp.ChangeOp.ADD_LEARNER, 6, encode_address(learner), 10_000)
    second = admin.signed_change(_secret(h), h.cluster_id, cp.ChangeOp.REMOVE, followers[0], b"", 10_000)
    with Connection(h.config(leader).me.client_address) as conn:
        for n in followers:
            h.pause_node(n)
        try:
            conn.send(
                b"".join(
                    cp.encode_member_change(replace(m, correlation_id=i + 1)) for i, m in enumerate((first, second))
                ),
                1.0,
            )
            refused = conn.wait_answer(2, 1.0)
        finally:
            for n in followers:
                h.resume_node(n)
        assert isinstance(refused, cp.Error) and refused.code is cp.ErrorCode.CHANGE_IN_PROGRESS, refused
        assert isinstance(conn.wait_answer(1, CHANGE_TIMEOUT_S), cp.MemberChanged)
    _wait_voters(h, [1, 2, 3], learners=[6])
    _change(h, cp.ChangeOp.REMOVE, 6)
    _change(h, cp.ChangeOp.REMOVE, followers[0])
    _change(h, cp.ChangeOp.REMOVE, followers[1])
    with pytest.raises(NoQuorum):  # the last voter cannot go
        _change(h, cp.ChangeOp.REMOVE, leader)


@pytest.mark.slow
def test_removing_a_follower_while_the_other_is_paused_is_refused_until_it_is_back(harness: Harness, capsys) -> None:
    """The strict reconfiguration check on a real cluster under load: one follower SIGSTOPped for longer than
    the leader's check-quorum window, removing the other follower (which would leave the leader and the paused
    node, no live majority) is refused with QuorumNotActive naming the voters, the active ones and the majority,
    by the admin client and by `members remove`; the cluster keeps committing meanwhile; after SIGCONT the
    removal is accepted and committed. Every member's own log holds what was acknowledged."""
    h = harness
    c = h.configs[0]
    port_base = c.me.client_port - 101
    common = ["--data-dir", str(c.data_dir), "--port-base", str(port_base), "--cluster-id", h.cluster_id]
    silent_s = 2 * ELECTION_TIMEOUT_MS / 1000  # past the check-quorum window (election_timeout_ms)
    with Load(h, tag="strict", pause_s=0.02) as load:
        load.wait_acked(200, 60)
        leader = h.wait_leader()
        paused, victim = h.followers()
        h.pause_node(paused)
        try:
            paused_at = time.monotonic()
            wait_for(lambda: time.monotonic() - paused_at, 10, "the check-quorum window", accept=lambda t: t > silent_s)
            before = len(load.acked)
            at_leader = [h.config(leader).me.client_address]
            # the paused node first: it accepts the connection but never answers; the client's MEMBERS probe
            # gives up on it after admin.ANSWER_TIMEOUT_S and asks the next (it would otherwise hold the change)
            paused_first = [h.config(paused).me.client_address, *at_leader]
            asked_at = time.monotonic()
            with pytest.raises(QuorumNotActive) as err:
                _change(h, cp.ChangeOp.REMOVE, victim, wait_quorum=False, addresses=paused_first, timeout_s=60)
            # not held by the paused node until the change's deadline (60 s and more): refused by the leader
            assert time.monotonic() - asked_at < 30, "the paused node held the change"
            voters = ",".join(str(n) for n in sorted((leader, paused)))
            assert (
                f"removing node {victim} would leave voters {{{voters}}}; active {{{leader}}}; a majority needs 2"
                in (str(err.value))
            )
            assert err.value.retriable and err.value.code is cp.ErrorCode.UNAVAILABLE
            argv = ["members", "remove", "--node", str(victim), "--timeout", "2", "--seed", at_leader[0], *common]
            assert supervisor_cli.main(argv) == 1
            said = capsys.readouterr().err
            assert "QuorumNotActive" in said and "strict reconfiguration check" in said, said
            load.wait_acked(before + 300, 60)  # the leader and the victim keep committing
            view = _members(h)
            assert sorted(m.node_id for m in view.members) == [1, 2, 3] and not view.change_pending
        finally:
            h.resume_node(paused)
        _change(h, cp.ChangeOp.REMOVE, victim)  # asked again (with a backoff) until the leader hears `paused`
        _wait_voters(h, [leader, paused])
        wait_for(lambda: h.state(victim)["removed"] == 1, 30, f"node {victim} to know it was removed")
        h.local.stop_node(victim)
        h.forget_node(victim)
        load.wait_acked(len(load.acked) + 200, 60)
    assert not load.errors.get("MembershipError")
    verify(h, load.acked)


def test_replace_a_dead_node_the_new_one_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    """Kill a follower for good, remove it, add a new node with an empty disk on other ports: the leader has
    compacted its log, so the new node catches up through InstallSnapshot (with the configuration in it), is
    promoted, and the cluster goes on; every member's log holds what was acknowledged."""
    h = Harness(tmp_path, nodes=3, retain_entries_max=100, snapshot_chunk_bytes=4096).start()
    try:
        with Load(h, tag="replace") as load:
            load.wait_acked(2000, 90)
            dead = h.followers()[0]
            h.kill_node(dead)
            _change(h, cp.ChangeOp.REMOVE, dead)
            h.forget_node(dead)
            wait_for(lambda: min(h.state(n)["first_index"] for n in h.node_ids) > 1, 60, "the log compacted")
            _grow(h, 5)
            _wait_voters(h, [n for n in (1, 2, 3) if n != dead] + [5])
            assert h.state(5)["last_index"] > 0
            load.wait_acked(len(load.acked) + 500, 60)
        block = NodeLayout(h.config(5)).attach_state()
        try:
            assert block.get("snapshots_installed") >= 1, "the new node caught up through a snapshot"
            assert block.get("removed") == 0 and block.get("config_index") > 0
        finally:
            block.close()
        check_held_logs(h, load.acked)  # with retention each member holds a suffix of the log
    finally:
        h.stop()


def test_operator_commands(harness: Harness, capsys) -> None:
    """`shmraft-supervisor members` (table and JSON), `members add --no-promote`, `promote`, `remove`, each
    returning once committed, and a clear error for an unknown node."""
    h = harness
    c = h.configs[0]
    port_base = c.me.client_port - 101  # the local layout: node N on port_base + 100 N + 1..5
    common = ["--data-dir", str(c.data_dir), "--port-base", str(port_base), "--cluster-id", h.cluster_id]
    assert supervisor_cli.main(["members", "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in doc["members"]] == [1, 2, 3] and doc["leader_id"] == h.wait_leader()
    assert supervisor_cli.main(["members", "add", "--node", "4", "--no-promote", *common]) == 0
    assert "node 4 added as a learner" in capsys.readouterr().out
    assert supervisor_cli.main(["members", *common]) == 0
    table = capsys.readouterr().out
    assert "learner" in table and f"127.0.0.1:{port_base + 401}" in table
    assert supervisor_cli.main(["members", "remove", "--node", "4", *common]) == 0
    assert supervisor_cli.main(["members", "remove", "--node", "9", *common]) == 1
    assert "MemberUnknown" in capsys.readouterr().err
    assert supervisor_cli.main(["status", "--json", *common]) in (0, 1)
    status = json.loads(capsys.readouterr().out)
    assert status["nodes"][0]["membership"]["voters"] == [1, 2, 3]


@pytest.mark.slow
def test_kafka_clients_follow_membership_changes(tmp_path: Path) -> None:
    """The Kafka door's Metadata lists the configuration in effect: after node 4 joins, kafka-python asked at
    node 1 sees broker 4 and produces through the cluster; after a follower is removed, it is gone from the
    brokers. What kafka-python had acknowledged is on every member's log at its offset."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from shmraft.ingest.kafka_door import KAFKA_TOPIC

    def brokers(node_id: int) -> list[int]:
        admin_client = KafkaAdminClient(bootstrap_servers=[f"127.0.0.1:{h.config(node_id).me.kafka_port}"])
        try:
            return sorted(b["broker_id"] for b in admin_client.describe_cluster()["brokers"])
        finally:
            admin_client.close()

    h = Harness(tmp_path, nodes=3, kafka=True).start()
    try:
        assert brokers(1) == [1, 2, 3]
        _grow(h, 4)
        _wait_voters(h, [1, 2, 3, 4])
        wait_for(lambda: brokers(1), 30, "node 1's Kafka Metadata to list node 4", accept=lambda b: b == [1, 2, 3, 4])
        p = KafkaProducer(
            bootstrap_servers=[f"127.0.0.1:{h.config(4).me.kafka_port}"], acks="all", enable_idempotence=True
        )
        try:
            futures = [(v, p.send(KAFKA_TOPIC, v)) for v in (f"kafka-{i}".encode() for i in range(200))]
            p.flush(60)
            acked = {v: f.get(60).offset for v, f in futures}
        finally:
            p.close()
        victim = next(n for n in h.followers() if n != 4)
        _change(h, cp.ChangeOp.REMOVE, victim)
        _wait_voters(h, [n for n in (1, 2, 3, 4) if n != victim])
        h.local.stop_node(victim)
        h.forget_node(victim)
        keep = [n for n in (1, 2, 3, 4) if n != victim]
        wait_for(lambda: brokers(4), 30, f"node 4's Metadata to drop node {victim}", accept=lambda b: b == keep)
        verify(h, acked)
    finally:
        h.stop()


@pytest.mark.slow
def test_grow_three_to_five_under_load_and_shrink_back_to_three(harness: Harness) -> None:
    """3 -> 5 one node at a time (each a learner that catches up, then promoted) with a producer running, then
    back to 3 by removing the leader and an original follower: the three left (two of them new) keep
    committing, and every one of them holds exactly what was acknowledged, read from its own log."""
    h = harness
    with Load(h, tag="grow5") as load:
        load.wait_acked(300, 60)
        _grow(h, 4)
        _grow(h, 5)
        _wait_voters(h, [1, 2, 3, 4, 5])
        load.wait_acked(len(load.acked) + 300, 60)
        leader = h.wait_leader()
        follower = next(n for n in h.followers() if n not in (4, 5))
        for gone in (follower, leader):  # a follower first, then the leader, which steps down once committed
            _change(h, cp.ChangeOp.REMOVE, gone)
            h.local.stop_node(gone)
            h.forget_node(gone)
        left = [n for n in (1, 2, 3, 4, 5) if n not in (follower, leader)]
        _wait_voters(h, left)
        assert h.wait_leader() in left
        load.wait_acked(len(load.acked) + 300, 60)
    assert not load.errors.get("MembershipError")
    assert sorted(h.node_ids) == sorted(left)
    verify(h, load.acked)  # each of the three left, read from its own log


@pytest.mark.slow
def test_five_nodes_losing_two_keep_committing(tmp_path: Path) -> None:
    """A five-node cluster with a producer running loses its leader and a follower (SIGKILL): the other three
    elect a leader and keep acknowledging; the two come back and catch up; every node's own log holds exactly
    what was acknowledged."""
    h = Harness(tmp_path, nodes=5).start()
    try:
        with Load(h, tag="five") as load:
            load.wait_acked(300, 60)
            leader = h.wait_leader()
            dead = [leader, h.followers()[0]]
            for n in dead:
                h.kill_node(n)
            alive = [n for n in h.node_ids if n not in dead]
            assert h.wait_leader() in alive
            load.wait_acked(len(load.acked) + 500, 60)
        verify(h, load.acked, node_ids=alive)  # the three left, each from its own log
        for n in dead:
            h.start_node(n)
        with Load(h, tag="five-back") as again:
            again.wait_acked(200, 60)
        verify(h, {**load.acked, **again.acked})  # the two came back and caught up
    finally:
        h.stop()


@pytest.mark.slow
def test_a_node_removed_while_down_learns_it_when_it_comes_back(tmp_path: Path) -> None:
    """A follower is killed, then removed; the others forget it (its links linger only 1 s here). When it comes
    back it still thinks it is a member and pre-votes: the leader admits it (it proves the cluster secret),
    answers with what it missed (the entry removing it), and the node says REMOVED in its status, without
    moving the others' terms. Every member's own log holds what was acknowledged."""
    from shmraft.supervisor.status import node_status

    h = Harness(tmp_path, nodes=3, former_member_linger_ms=1000).start()
    try:
        with Load(h, tag="down-removed", pause_s=0.02) as load:
            load.wait_acked(200, 60)
            gone = h.followers()[0]
            h.kill_node(gone)
            _change(h, cp.ChangeOp.REMOVE, gone)
            rest = [n for n in h.node_ids if n != gone]
            _wait_voters(h, rest)
            leader = h.wait_leader()
            wait_for(  # the leader stopped replicating to it: only the lingering link could have told it
                lambda: [f["node_id"] for f in node_status(h.config(leader)).get("followers", [])],
                30,
                f"the leader to forget node {gone}",
                accept=lambda ids: gone not in ids,
            )
            load.wait_acked(len(load.acked) + 100, 60)
            terms = {n: h.state(n)["term"] for n in rest}
            h.start_node(gone)
            wait_for(lambda: (h.state(gone) or {}).get("removed"), 60, f"node {gone} to learn it was removed")
            load.wait_acked(len(load.acked) + 100, 60)
        status = node_status(h.config(gone))
        assert status["membership"]["removed"] and gone not in status["membership"]["voters"]
        assert status["role"] != "LEADER"
        assert {n: h.state(n)["term"] for n in rest} == terms, "the removed node disturbed the others' terms"
        h.local.stop_node(gone)
        h.forget_node(gone)
        verify(h, load.acked)
    finally:
        h.stop()
