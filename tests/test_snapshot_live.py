"""Snapshots in a real 3-node cluster with a tiny retention.

- A node restarted after retention deleted the entry of a producer's event still answers that producer's
  retry as the node that never restarted would, DUPLICATE with the same offset (before snapshots, its table
  was rebuilt from the entries left and the retry was appended a second time).
- A follower down while the others' logs turn over past it catches up through InstallSnapshot; its dedup
  table (the leader's, from the snapshot) answers a retry from before the snapshot as a duplicate once it leads.
- The leader is killed while a (throttled) snapshot transfer is half acknowledged: the follower ends up whole
  from the next leader's snapshot, nothing acknowledged is lost or doubled.

Every node's own log (read from that node only) is checked against what was acknowledged: with retention
each node holds a suffix of the log, so the check is on what each holds (`check_held_logs`)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import clusterkit
import pytest
from clusterkit import Harness, Load, wait_for

from shmraft.config import local_members
from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.faults.proxy import FaultProxy
from shmraft.ipc.state import StateBlockError
from shmraft.node.layout import NodeLayout
from shmraft.supervisor.metrics import follower_figures
from shmraft.supervisor.status import node_status

pytestmark = pytest.mark.slow

RETAIN_ENTRIES = 300
PRODUCER_ID = 0x5EED_0001
CATCH_UP_S = 60.0
TINY_RETAIN_ENTRIES = 1000  # a few thousand entries of log at most on every node
EVENTS_WHILE_DOWN = 200_000  # well under a minute on two loaded cores (the million takes ~5x longer)
EVENTS_PER_CALL = 500
PRODUCERS_IN_SNAPSHOT = 400  # one event each: a snapshot of about 18 KB (44 bytes per producer)
THROTTLED_BYTES_PER_S = 12_000  # the data link to the restarted follower: ~2 s for the snapshot, a chunk per 50 ms
TRANSFER_CHUNK_BYTES = 512


def node_field(h: Harness, node_id: int, field: str) -> int:
    """A field of the node's state block (0 while it has none)."""
    try:
        block = NodeLayout(h.config(node_id)).attach_state()
    except (StateBlockError, OSError, ValueError):
        return 0
    try:
        return int(block.node[field])
    finally:
        block.close()


def log_start(h: Harness, node_id: int) -> int:
    """The node's first held log index, from its state block (0 while it has none)."""
    return node_field(h, node_id, "first_index")


def followers_seen_by(h: Harness, leader: int) -> list[dict]:
    """The leader's published view of its followers (status / metrics)."""
    try:
        block = NodeLayout(h.config(leader)).attach_state()
    except (StateBlockError, OSError, ValueError):
        return []
    try:
        return follower_figures(block)
    finally:
        block.close()


def check_held_logs(h: Harness, acked: dict[bytes, int], nodes: list[int] | None = None) -> dict[int, list]:
    """Every node's own log (read from it alone) against the others and what was acknowledged. With retention a
    node holds a suffix: on what each holds, offsets increase, no event is there twice, every acknowledged event
    at or after the node's first held offset is there at its acknowledged offset, nodes agree where they
    overlap, and all end at the same offset. A node can hold no event at all (a follower that installed a
    snapshot after the load ended: the snapshot covers every event it committed; or one whose held entries are
    all group commits and no-ops): it is left out of the returned logs, once no event acknowledged or held by
    another node lies at or after its log start (read from its state block)."""
    nodes = nodes or h.node_ids
    h.wait_commit_equal(CATCH_UP_S)
    logs = {n: h.read_log(n) for n in nodes}
    by_offset: dict[int, bytes] = {}
    empty_starts: dict[int, int] = {}
    for n, log in list(logs.items()):
        if not log:
            state = h.state(n) or {}
            start, commit = state.get("first_index", 0), state.get("commit_index", 0)
            assert start > 0 and commit > 0, f"node {n} serves no events, with log start {start} and commit {commit}"
            empty_starts[n] = start
            del logs[n]
            continue
        offsets = [o for o, _ in log]
        assert offsets == sorted(set(offsets)), f"node {n}: offsets not strictly increasing"
        dups = [v for v, c in Counter(v for _, v in log).items() if c > 1]
        assert not dups, f"node {n}: duplicated events {dups[:5]}"
        held = dict((v, o) for o, v in log)
        first = offsets[0]
        lost = [v for v, o in acked.items() if o >= first and v not in held]
        assert not lost, f"node {n}: acknowledged events missing: {lost[:5]} ({len(lost)})"
        moved = [v for v, o in held.items() if v in acked and acked[v] != o]
        assert not moved, f"node {n}: events at another offset than acknowledged: {moved[:5]}"
        for o, v in log:
            assert by_offset.setdefault(o, v) == v, f"node {n} holds {v!r} at {o}, another node {by_offset[o]!r}"
    for n, start in empty_starts.items():  # an empty log is right only if no event lies in what the node holds
        first_offset = start * BATCH_EVENTS_MAX
        missing = sorted(o for o in [*acked.values(), *by_offset] if o >= first_offset)
        assert not missing, f"node {n} serves no events from log start {start}, but events are at {missing[:5]}"
    ends = {n: log[-1][0] for n, log in logs.items()}
    assert len(set(ends.values())) <= 1, f"the nodes' logs end at different offsets: {ends}"
    values = Counter(by_offset.values())
    assert not [v for v, c in values.items() if c > 1], "an event at two offsets across the nodes"
    return logs


def test_a_follower_restarted_after_compaction_answers_a_retry_as_the_leader_does(tmp_path: Path) -> None:
    h = Harness(tmp_path, retain_entries_max=RETAIN_ENTRIES).start()
    try:
        with h.client(producer_id=PRODUCER_ID) as c:
            first_offset = c.produce(b"first")
        first_index = first_offset // BATCH_EVENTS_MAX

        def compacted_everywhere() -> bool:
            return all(log_start(h, n) > first_index + RETAIN_ENTRIES for n in h.node_ids)

        with Load(h, tag="fill", events_per_call=4):  # one entry per call: the log turns over quickly
            wait_for(compacted_everywhere, CATCH_UP_S, "every node compacted past the producer's entry")
        leader = h.wait_leader()
        for follower in h.followers():  # each restarts from its snapshot; the load is over, so it catches up
            h.kill_node(follower)
            h.start_node(follower)
            h.wait_commit_equal(CATCH_UP_S)
        with h.client(producer_id=PRODUCER_ID) as c:
            assert c.produce(b"first") == first_offset  # the leader that never restarted: DUPLICATE
        h.kill_node(leader)
        new_leader = h.wait_leader(exclude=leader)
        assert new_leader != leader
        with h.client(producer_id=PRODUCER_ID) as c:  # a restarted node now leads: the same answer
            assert c.produce(b"first") == first_offset
        h.start_node(leader)
        h.wait_commit_equal(CATCH_UP_S)
    finally:
        h.stop()


def test_a_follower_down_past_retention_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    h = Harness(tmp_path, retain_entries_max=TINY_RETAIN_ENTRIES).start()
    try:
        with h.client(producer_id=PRODUCER_ID) as c:
            first_offset = c.produce(b"before the snapshot")
        leader = h.wait_leader()
        follower, other = [n for n in h.node_ids if n != leader]
        h.wait_commit_equal(CATCH_UP_S)
        h.kill_node(follower)
        held_by_follower = h.commit_indexes()[leader]  # at most what the follower holds now

        t0 = time.monotonic()
        with Load(h, tag="down", events_per_call=EVENTS_PER_CALL) as load:
            load.wait_acked(EVENTS_WHILE_DOWN, CATCH_UP_S * 3)
        produce_s = time.monotonic() - t0
        wait_for(
            lambda: all(log_start(h, n) > held_by_follower + 1 for n in (leader, other)),
            CATCH_UP_S,
            "both live nodes compacted past the follower's log end",
        )
        sent_before = node_field(h, leader, "snapshots_sent")
        t1 = time.monotonic()
        h.start_node(follower)
        wait_for(lambda: node_field(h, follower, "snapshots_installed") >= 1, CATCH_UP_S, "the follower installed")
        h.wait_commit_equal(CATCH_UP_S)
        print(
            f"{len(load.acked)} events in {produce_s:.1f} s; follower whole {time.monotonic() - t1:.1f} s after start"
        )
        assert h.wait_leader() == leader
        wait_for(lambda: node_field(h, leader, "snapshots_sent") > sent_before, CATCH_UP_S, "the send counted")
        assert log_start(h, follower) > held_by_follower + 1  # its log now starts where the snapshot ends
        assert node_status(h.config(follower))["snapshots_installed"] >= 1  # what `shmraft-supervisor status` shows
        wait_for(
            lambda: [f["state"] for f in followers_seen_by(h, leader)] == ["REPLICATE", "REPLICATE"],
            CATCH_UP_S,
            "the leader replicating to both followers again (no RESEED/SNAPSHOT left)",
        )
        # with the load over, the snapshot can cover all the follower's log: a tail gives it entries to check
        tail = [f"after-{i}".encode() for i in range(EVENTS_PER_CALL)]
        with h.client() as c:
            acked = {**load.acked, **dict(zip(tail, c.produce_many(tail), strict=True))}
        logs = check_held_logs(h, acked)
        assert follower in logs, f"the follower serves no events after the tail: {sorted(logs)}"

        # the follower's dedup table is the leader's: make it lead (the other node is behind it, the old
        # leader gone) and retry the producer's first event, whose entry no node holds any more
        h.kill_node(other)
        with h.client() as c:
            c.produce_many([b"committed by leader and follower only"])
        h.kill_node(leader)
        h.start_node(other)
        assert h.wait_leader() == follower
        with h.client(producer_id=PRODUCER_ID) as c:
            assert c.produce(b"before the snapshot") == first_offset  # DUPLICATE, not appended again
        h.start_node(leader)
        logs = check_held_logs(h, acked)
        assert all(b"before the snapshot" not in {v for _, v in log} for log in logs.values())  # not re-appended
    finally:
        h.stop()


def test_the_leader_killed_mid_transfer_leaves_the_follower_whole(tmp_path: Path, monkeypatch) -> None:
    """The data link to one follower goes through a proxy that throttles it while a snapshot is sent, so the
    transfer takes seconds; the leader is SIGKILLed once part of it is acknowledged and its connection's bytes
    in flight are dropped. The next leader completes a transfer of its own snapshot (from 0, or resumed where
    the follower's partial copy ends when it is the same snapshot) and the follower ends up whole."""
    base = clusterkit.free_port_base(3)
    follower = 3
    proxy = FaultProxy(seed=1).start()
    try:
        target = ("127.0.0.1", local_members(3, base)[follower - 1].data_port)
        port = proxy.add_link("to-follower-data", ("127.0.0.1", 0), target)
        monkeypatch.setattr(clusterkit, "free_port_base", lambda _n: base)
        h = Harness(
            tmp_path,
            retain_entries_max=TINY_RETAIN_ENTRIES,
            snapshot_chunk_bytes=TRANSFER_CHUNK_BYTES,
            peer_connect_overrides=f"{follower}:data=127.0.0.1:{port}",
        )
        h.start()
        try:
            _mid_transfer_scenario(h, proxy, follower)
        finally:
            h.stop()
    finally:
        proxy.close()


def _mid_transfer_scenario(h: Harness, proxy: FaultProxy, follower: int) -> None:
    if h.wait_leader() == follower:  # the follower to restart must not be the leader
        h.kill_node(follower)
        h.wait_leader(exclude=follower)
        h.start_node(follower)
    for i in range(PRODUCERS_IN_SNAPSHOT):  # many producers: a snapshot of many chunks
        with h.client(producer_id=PRODUCER_ID + 1 + i) as c:
            c.produce(b"producer %d" % i)
    leader = h.wait_leader()
    h.wait_commit_equal(CATCH_UP_S)
    h.kill_node(follower)
    held_by_follower = h.commit_indexes()[leader]
    with Load(h, tag="down", events_per_call=EVENTS_PER_CALL) as load:
        wait_for(
            lambda: all(log_start(h, n) > held_by_follower + 1 for n in h.node_ids if n != follower),
            CATCH_UP_S * 3,
            "the live nodes compacted past the follower's log end",
        )
    proxy.update_faults("to-follower-data", bandwidth_bytes_per_s=THROTTLED_BYTES_PER_S)
    h.start_node(follower)

    def half_acknowledged() -> dict | None:
        for f in followers_seen_by(h, leader):
            if f["node_id"] == follower and f["state"] == "SNAPSHOT" and f["snapshot_acked_bytes"] > 0:
                return f
        return None

    t0 = time.monotonic()
    seen = wait_for(half_acknowledged, CATCH_UP_S, "the snapshot transfer under way, partly acknowledged")
    assert seen["snapshot_acked_bytes"] < seen["snapshot_total_bytes"], seen  # really in the middle
    assert seen["snapshot_total_bytes"] > 10 * TRANSFER_CHUNK_BYTES, seen
    h.kill_node(leader)
    proxy.reset_link("to-follower-data")  # what the dead leader had in flight is gone with its connection
    new_leader = h.wait_leader(exclude=leader)
    assert new_leader != follower  # behind the log start, it cannot win an election
    wait_for(
        lambda: (
            node_field(h, follower, "snapshots_installed"),
            followers_seen_by(h, new_leader),
            {
                n: h.state(n) and {k: h.state(n)[k] for k in ("role", "term", "leader_id", "commit_index")}
                for n in h.node_ids
            },
        ),
        CATCH_UP_S,
        "the follower installed (last seen: its count, the new leader's view, the nodes' states)",
        accept=lambda seen: seen[0] >= 1,
    )
    wait_for(lambda: node_field(h, new_leader, "snapshots_sent") >= 1, CATCH_UP_S, "the new leader's transfer")
    print(f"leader killed with {seen}; the follower installed {time.monotonic() - t0:.1f} s after its start")
    proxy.update_faults("to-follower-data", bandwidth_bytes_per_s=0)
    with Load(h, tag="after", events_per_call=50) as after:  # the follower keeps up with appends again
        after.wait_acked(2000, CATCH_UP_S)
    h.start_node(leader)
    acked = {**load.acked, **after.acked}
    t1 = time.monotonic()
    check_held_logs(h, acked)
    print(f"logs checked in {time.monotonic() - t1:.1f} s")
