"""The leader stall transfer (supervisor/stepaside.py): the pure decision, its config knob, and the hand-off
through the state block from the supervisor to the raft worker (real shared memory, a real Raft core)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmraft.config import LEADER_STALL_TRANSFER_MS_DEFAULT, ConfigError, NodeConfig, local_members
from shmraft.ipc.state import StateBlock, Worker
from shmraft.raft.types import Role
from shmraft.supervisor.node import NodeSupervisor
from shmraft.supervisor.stepaside import LEADER_STALL_TRANSFER_GAP_S, WATCHED_WORKERS, StepAside, step_aside
from shmraft.workers.raft import RaftWorker

THRESHOLD_MS = 1000


def test_a_leader_whose_batcher_or_ingest_is_stalled_steps_aside() -> None:
    for worker in (Worker.BATCHER, Worker.INGEST):
        stalled = {Worker.RAFT: 0.0, Worker.SENDER: 0.0, Worker.BATCHER: 0.05, Worker.INGEST: 0.05, worker: 1.2}
        assert step_aside(100.0, True, stalled, THRESHOLD_MS, None) == StepAside(worker, 1200)


def test_below_the_threshold_nothing() -> None:
    assert step_aside(100.0, True, {Worker.BATCHER: 0.999, Worker.INGEST: 0.5}, THRESHOLD_MS, None) is None
    assert step_aside(100.0, True, {}, THRESHOLD_MS, None) is None  # no worker judged (none beat since start)


def test_not_leader_nothing() -> None:
    assert step_aside(100.0, False, {Worker.BATCHER: 4.0}, THRESHOLD_MS, None) is None


def test_off_nothing() -> None:
    assert step_aside(100.0, True, {Worker.BATCHER: 4.0}, 0, None) is None


def test_the_sender_and_the_raft_worker_are_not_watched() -> None:
    """A stopped raft worker ends in an election; a leader whose sender is stopped cannot hand over (its
    followers get no entries, so none is caught up for TimeoutNow)."""
    assert WATCHED_WORKERS == (Worker.INGEST, Worker.BATCHER)
    assert step_aside(100.0, True, {Worker.SENDER: 4.0, Worker.RAFT: 4.0}, THRESHOLD_MS, None) is None


def test_the_most_stalled_worker_is_named() -> None:
    ask = step_aside(100.0, True, {Worker.BATCHER: 1.5, Worker.INGEST: 2.5}, THRESHOLD_MS, None)
    assert ask == StepAside(Worker.INGEST, 2500)


def test_at_most_one_ask_per_gap() -> None:
    stalled = {Worker.BATCHER: 3.0}
    last = 100.0
    assert step_aside(last + LEADER_STALL_TRANSFER_GAP_S - 0.01, True, stalled, THRESHOLD_MS, last) is None
    assert step_aside(last + LEADER_STALL_TRANSFER_GAP_S, True, stalled, THRESHOLD_MS, last) == StepAside(
        Worker.BATCHER, 3000
    )


def _config(tmp_path: Path, **kw: int) -> NodeConfig:
    return NodeConfig(node_id=1, members=local_members(3), data_dir=tmp_path, **kw)


def test_the_knob_defaults_below_the_restart_and_is_checked(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.leader_stall_transfer_ms == LEADER_STALL_TRANSFER_MS_DEFAULT < config.worker_stall_timeout_ms
    assert _config(tmp_path, leader_stall_transfer_ms=0).leader_stall_transfer_ms == 0  # off
    for bad in (100, 5000, 6000, -1):
        with pytest.raises(ConfigError, match=r"leader_stall_transfer_ms: expected 0 \(off\) or 250\.\.4999.*got"):
            _config(tmp_path, leader_stall_transfer_ms=bad)
    with pytest.raises(ConfigError, match=r"leader_stall_transfer_ms: .*250\.\.399"):
        _config(tmp_path, worker_stall_timeout_ms=400)  # the default does not fit below a short restart timeout


class _Core:
    """The part of RaftCore the raft worker's ask handler uses."""

    def __init__(self, role: Role, term: int) -> None:
        self.role = role
        self.term = term
        self.transfers = 0

    def transfer_leadership(self) -> int:
        self.transfers += 1
        return 2


@pytest.fixture
def block() -> Iterator[StateBlock]:
    b = StateBlock.create(f"/shmraft-test-stepaside-{os.getpid()}-{random.randrange(10**6)}", node_id=1)
    try:
        yield b
    finally:
        b.close()
        b.unlink()


def _raft_worker(block: StateBlock, core: _Core) -> RaftWorker:
    w = RaftWorker.__new__(RaftWorker)
    w.state = block
    w.core = core  # type: ignore[assignment]
    w.log = logging.getLogger("test.stepaside")
    w._stall_asks_seen = block.get("stall_transfer_asks")
    return w


def test_the_supervisor_asks_through_the_state_block_and_the_raft_worker_hands_over_once(
    tmp_path: Path, block: StateBlock, caplog: pytest.LogCaptureFixture
) -> None:
    sup = NodeSupervisor(_config(tmp_path))
    sup.state = block
    block.set("role", int(Role.LEADER))
    block.set("term", 7)
    core = _Core(Role.LEADER, 7)
    raft = _raft_worker(block, core)
    raft._stall_transfer_asked()
    assert core.transfers == 0  # nothing asked yet
    sup._step_aside_if_stalled(50.0, {Worker.BATCHER: 1.3, Worker.INGEST: 0.0})
    assert block.get("stall_transfer_asks") == 1 and block.get("stall_transfer_term") == 7
    with caplog.at_level(logging.WARNING, logger="test.stepaside"):
        raft._stall_transfer_asked()
        raft._stall_transfer_asked()  # the same ask is acted on once
    assert core.transfers == 1
    assert block.get("leader_stall_transfers") == 1 and block.get("stall_transfer_target") == 2
    assert [r.getMessage() for r in caplog.records] == [
        "batcher worker stalled 1300 ms while leader of term 7: handing leadership to node 2"
    ]
    sup._step_aside_if_stalled(50.0 + LEADER_STALL_TRANSFER_GAP_S / 2, {Worker.BATCHER: 3.0})
    assert block.get("stall_transfer_asks") == 1  # rate-limited
    block.set("role", int(Role.FOLLOWER))
    sup._step_aside_if_stalled(50.0 + LEADER_STALL_TRANSFER_GAP_S, {Worker.BATCHER: 3.0})
    assert block.get("stall_transfer_asks") == 1  # not the leader


def test_an_ask_for_an_earlier_term_or_made_before_the_raft_worker_started_is_not_acted_on(
    tmp_path: Path, block: StateBlock
) -> None:
    sup = NodeSupervisor(_config(tmp_path))
    sup.state = block
    block.set("role", int(Role.LEADER))
    block.set("term", 7)
    sup._step_aside_if_stalled(50.0, {Worker.INGEST: 1.3})
    late = _Core(Role.LEADER, 7)
    _raft_worker(block, late)._stall_transfer_asked()  # a raft worker started after the ask
    assert late.transfers == 0
    core = _Core(Role.LEADER, 8)  # leader again, of a later term: the ask was about term 7
    raft = _raft_worker(block, core)
    block.set("term", 7)
    sup._stall_ask_s = None
    sup._step_aside_if_stalled(60.0, {Worker.INGEST: 1.3})
    raft._stall_transfer_asked()
    assert core.transfers == 0 and block.get("leader_stall_transfers") == 0
