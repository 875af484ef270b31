"""Snapshots in a real 3-node cluster with a tiny retention: a node restarted after retention deleted the
entry of a producer's event still answers that producer's retry as the node that never restarted would,
DUPLICATE with the same offset (before snapshots, its table was rebuilt from the entries left and the retry
was appended a second time)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clusterkit import Harness, Load, wait_for

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.ipc.state import StateBlockError
from shmraft.node.layout import NodeLayout

pytestmark = pytest.mark.slow

RETAIN_ENTRIES = 300
PRODUCER_ID = 0x5EED_0001
CATCH_UP_S = 60.0


def log_start(h: Harness, node_id: int) -> int:
    """The node's first held log index, from its state block (0 while it has none)."""
    try:
        block = NodeLayout(h.config(node_id)).attach_state()
    except (StateBlockError, OSError, ValueError):
        return 0
    try:
        return int(block.node["first_index"])
    finally:
        block.close()


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
