"""A leader whose batcher is stopped (SIGSTOP) steps aside, on a real cluster: its supervisor's stall clock
passes `leader_stall_transfer_ms`, the raft worker hands leadership to a follower, and the producer's
acknowledgements resume from the new leader while the old leader's batcher is still stopped. After SIGCONT
every acknowledged event is on every node exactly once (the frames the resumed batcher cut are refused by the
old leader, now a follower, and their events were resent by the client to the new leader under the same
producer sequences)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from clusterkit import Harness, Load, verify, wait_for

from shmraft.ipc.state import Worker
from shmraft.node.layout import NodeLayout

pytestmark = pytest.mark.slow

TRANSFER_MS = 1000  # the default leader_stall_transfer_ms, named here so that the test says what it relies on
STALL_TIMEOUT_MS = 60_000  # the stopped batcher must not be restarted: only the transfer may end the stall
STEP_ASIDE_WAIT_S = 20.0  # a loaded machine: the stall clock does not count time a worker waits for a CPU
ACKED_BEFORE = 200
ACKED_AFTER = 200  # acknowledged by the new leader while the old leader's batcher is stopped


def _node_field(harness: Harness, node_id: int, field: str) -> int:
    block = NodeLayout(harness.config(node_id)).attach_state()
    try:
        return block.get(field)
    finally:
        block.close()


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path, leader_stall_transfer_ms=TRANSFER_MS, worker_stall_timeout_ms=STALL_TIMEOUT_MS)
    try:
        h.start()
        yield h
    finally:
        h.resume_all()
        h.stop()


def test_a_leader_whose_batcher_is_stopped_hands_leadership_over(harness: Harness) -> None:
    with Load(harness) as load:
        load.wait_acked(ACKED_BEFORE, 60)
        leader = harness.wait_leader()
        pid = harness.pause_worker(leader, Worker.BATCHER)
        try:
            acked_at_stop = len(load.acked)
            new_leader = wait_for(
                lambda: harness.leader(exclude=leader) or None, STEP_ASIDE_WAIT_S, "a new leader while stopped"
            )
            load.wait_acked(acked_at_stop + ACKED_AFTER, STEP_ASIDE_WAIT_S)
            # all this while the batcher stayed stopped, in the same process (not restarted)
            assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
            assert harness.worker_pids(leader)[Worker.BATCHER] == pid
            assert _node_field(harness, leader, "leader_stall_transfers") == 1
            assert _node_field(harness, leader, "stall_transfer_target") == new_leader
            assert "batcher worker stalled" in harness.node_log(leader)
        finally:
            harness.resume_worker(pid)
        load.wait_acked(len(load.acked) + ACKED_BEFORE, 60)  # and on, with the old leader's batcher back
    assert harness.restarts(leader, Worker.BATCHER) == 0
    verify(harness, load.acked)
