"""Stall detection on a busy machine: a starved worker is not a stalled one; a stopped one is.

Unit tests drive `StallClock` with readings; the real-process test starves a follower's batcher (pinned to one
core beside a SCHED_FIFO busy loop, so it runs only in the kernel's real-time throttling window, 50 ms a second)
past the stall timeout and checks that it is left alone, then stops it with SIGSTOP and checks that it is
restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from clusterkit import Harness, Load, verify, wait_for

from shmraft.ipc.state import Worker
from shmraft.node.layout import NodeLayout
from shmraft.supervisor.node import STARTUP_GRACE_S
from shmraft.supervisor.stall import (
    OBSERVATION_CREDIT_MAX_S,
    ProcessSample,
    StallClock,
    ThreadSample,
    sample_process,
)

STALL_TIMEOUT_MS = 400  # below the ~950 ms a FIFO hog keeps the worker off its core
STARVE_S = 4.0


def _sample(*threads: tuple[bool, float, float]) -> ProcessSample:
    """Threads as (runnable, seconds on a CPU, seconds waited for one)."""
    return {tid: ThreadSample(r, int(cpu * 1e9), int(w * 1e9)) for tid, (r, cpu, w) in enumerate(threads, 1)}


def test_a_beat_resets_the_clock() -> None:
    clock = StallClock()
    idle = _sample((False, 1.0, 0.0))
    assert clock.observe(0.0, 1, idle) == 0.0
    assert clock.observe(0.1, 1, idle) == pytest.approx(0.1)
    assert clock.observe(0.2, 1, idle) == pytest.approx(0.2)
    assert clock.observe(0.3, 2, idle) == 0.0


def test_a_thread_waiting_for_a_cpu_does_not_count_while_it_waits() -> None:
    clock = StallClock()
    clock.observe(0.0, 7, _sample((False, 1.0, 0.0), (True, 2.0, 0.5)))
    for step in range(1, 21):  # 2 s: the second thread runnable, its CPU time frozen, its wait not yet reported
        could_run = clock.observe(step * 0.1, 7, _sample((False, 1.0, 0.0), (True, 2.0, 0.5)))
    assert could_run == 0.0


def test_a_wait_reported_when_it_ends_does_not_count() -> None:
    clock = StallClock()
    clock.observe(0.0, 7, _sample((False, 1.0, 0.0)))
    could_run = clock.observe(0.2, 7, _sample((False, 1.0, 0.15)))  # 150 ms of the 200 were a run-queue wait
    assert could_run == pytest.approx(0.05)


def test_a_stopped_worker_accumulates_wall_time() -> None:
    clock = StallClock()
    stopped = _sample((False, 3.0, 2.0), (False, 1.0, 0.0))  # SIGSTOP: not runnable, no wait
    clock.observe(0.0, 3, stopped)
    for step in range(1, 61):
        could_run = clock.observe(step * 0.05, 3, stopped)
    assert could_run == pytest.approx(3.0)


def test_a_spinning_worker_that_does_not_beat_accumulates_wall_time() -> None:
    clock = StallClock()
    for step in range(0, 41):  # runnable, and its CPU time moves: it runs, it just does not beat
        could_run = clock.observe(step * 0.05, 3, _sample((True, 1.0 + step * 0.05, 0.0)))
    assert could_run == pytest.approx(2.0)


def test_a_gap_the_supervisor_did_not_see_credits_at_most_one_observation() -> None:
    clock = StallClock()
    clock.observe(0.0, 3, None)
    assert clock.observe(30.0, 3, None) == pytest.approx(OBSERVATION_CREDIT_MAX_S)


def test_reset_forgets_the_old_process() -> None:
    clock = StallClock()
    clock.observe(0.0, 3, None)
    clock.observe(0.2, 3, None)
    clock.reset()
    assert clock.observe(0.3, 3, None) == 0.0


def test_a_live_process_is_sampled_and_a_gone_one_is_not() -> None:
    sample = sample_process(os.getpid())
    assert sample and os.getpid() in sample and sample[os.getpid()].runnable
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert sample_process(proc.pid) is None


# --- real processes -------------------------------------------------------------------------------------------

HOG = """
import os
os.sched_setaffinity(0, {0})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
while True:
    pass
"""


def _threads(pid: int) -> list[int]:
    return [t.id for t in psutil.Process(pid).threads()]


def _heartbeat(harness: Harness, node_id: int, worker: Worker) -> int:
    block = NodeLayout(harness.config(node_id)).attach_state()
    try:
        return int(block.workers[worker]["heartbeat"])
    finally:
        block.close()


@pytest.fixture
def harness(tmp_path: Path):
    # a stall timeout this short leaves no room for the leader stall transfer below it (a follower is stopped here)
    h = Harness(tmp_path, worker_stall_timeout_ms=STALL_TIMEOUT_MS, leader_stall_transfer_ms=0).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.mark.skipif(os.geteuid() != 0 or (os.cpu_count() or 1) < 2, reason="needs root (SCHED_FIFO) and 2 cores")
def test_a_starved_worker_is_not_killed_and_a_stopped_one_is(harness: Harness) -> None:
    with Load(harness) as load:
        load.wait_acked(200, 60)
        follower = harness.followers()[0]
        pid = harness.worker_pids(follower)[Worker.BATCHER]
        started = psutil.Process(pid).create_time()
        wait_for(lambda: time.time() - started > STARTUP_GRACE_S + 0.5, 30, "the batcher past its start-up grace")
        for tid in _threads(pid):  # every thread of the worker on core 0, where the hog will run
            os.sched_setaffinity(tid, {0})
        hog = subprocess.Popen([sys.executable, "-c", HOG])
        longest_silence_s = 0.0
        try:
            beat, since = _heartbeat(harness, follower, Worker.BATCHER), time.monotonic()
            end = time.monotonic() + STARVE_S
            while time.monotonic() < end:
                now_beat = _heartbeat(harness, follower, Worker.BATCHER)
                if now_beat != beat:
                    beat, since = now_beat, time.monotonic()
                longest_silence_s = max(longest_silence_s, time.monotonic() - since)
                time.sleep(0.05)
        finally:
            hog.kill()
            hog.wait()
        # The starvation was real (the worker did not beat for longer than the stall timeout) ...
        assert longest_silence_s * 1000 > STALL_TIMEOUT_MS * 1.5, f"not starved: silent {longest_silence_s:.2f} s"
        # ... and the supervisor did not take it for a stall.
        assert harness.worker_pids(follower)[Worker.BATCHER] == pid
        assert harness.restarts(follower, Worker.BATCHER) == 0

        os.kill(pid, signal.SIGSTOP)  # could run, does not: a stall
        try:
            wait_for(
                lambda: harness.worker_pids(follower).get(Worker.BATCHER) not in (pid, 0, None),
                30,
                f"node {follower}'s stopped batcher restarted",
            )
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert harness.restarts(follower, Worker.BATCHER) >= 1
        load.wait_acked(len(load.acked) + 300, 60)
    verify(harness, load.acked)


class _Beats:
    """A state block's worker records whose heartbeats move by `step[kind]` at each read."""

    def __init__(self, step: dict[Worker, int]) -> None:
        self.step = step
        self.reads: dict[Worker, int] = dict.fromkeys(Worker, 0)
        self.workers = self

    def __getitem__(self, kind: Worker) -> dict[str, int]:
        self.reads[kind] += 1
        return {"heartbeat": self.reads[kind] * self.step.get(kind, 0)}


class _Proc:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def _supervisor(step: dict[Worker, int], exited: set[Worker]):
    from shmraft.supervisor.node import NodeSupervisor, _Child

    sup = NodeSupervisor.__new__(NodeSupervisor)
    sup.state = _Beats(step)
    sup.children = {k: _Child(k, proc=_Proc(1 if k in exited else None)) for k in Worker}
    sup._stopping = False
    return sup


def test_first_workers_are_waited_for_until_they_beat_or_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raft worker and the sender start first; the others wait for their first beats (or their exit), at most
    FIRST_WAIT_S: a worker that never beats delays the others by that bound, no more."""
    import shmraft.supervisor.node as node

    assert node.FIRST_WORKERS == (Worker.RAFT, Worker.SENDER)
    sup = _supervisor({Worker.RAFT: 1, Worker.SENDER: 1}, set())
    sup._wait_first_beats()
    assert sup.state.reads[Worker.RAFT] == sup.state.reads[Worker.SENDER] == 2  # the first look: both beat
    sup = _supervisor({Worker.RAFT: 1}, {Worker.SENDER})  # the sender died at once: not waited for
    sup._wait_first_beats()
    assert sup.state.reads[Worker.RAFT] == 2
    monkeypatch.setattr(node, "FIRST_WAIT_S", 0.2)
    sup = _supervisor({Worker.RAFT: 1}, set())  # the sender never beats
    t = time.monotonic()
    sup._wait_first_beats()
    assert time.monotonic() - t >= 0.2 and sup.state.reads[Worker.SENDER] > 2
