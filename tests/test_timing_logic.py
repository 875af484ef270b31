"""The pure timing pieces of issue 17: the client's adaptive probe timeout, the raft worker's slow-loop
summary and the campaign's gap analysis. Times are given, never measured: no timed assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from shmraft.client.leader import (
    PROBE_METADATA_TIMEOUT_MAX_S,
    PROBE_METADATA_TIMEOUT_S,
    PROBE_TIMEOUT_ANSWER_FACTOR,
    ProbeTimeouts,
)
from shmraft.workers.looptime import LoopTimer, StallDiscountingClock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import chaos  # noqa: E402

A, B = "10.0.0.1:7001", "10.0.0.2:7001"


# --- ProbeTimeouts ---------------------------------------------------------------------------------------------


def test_a_node_never_heard_gets_the_floor() -> None:
    assert ProbeTimeouts().timeout_s(A) == PROBE_METADATA_TIMEOUT_S


def test_quick_answers_keep_the_floor_slow_ones_raise_it_up_to_the_ceiling() -> None:
    t = ProbeTimeouts()
    t.answered(A, 0.003)
    assert t.timeout_s(A) == PROBE_METADATA_TIMEOUT_S
    t.answered(B, 0.09)  # a busy machine: 90 ms answers
    assert t.timeout_s(B) == pytest.approx(PROBE_TIMEOUT_ANSWER_FACTOR * 0.09)
    assert PROBE_METADATA_TIMEOUT_S < t.timeout_s(B) <= PROBE_METADATA_TIMEOUT_MAX_S
    t.answered(B, 2.0)  # however slow, never past the ceiling
    assert t.timeout_s(B) == PROBE_METADATA_TIMEOUT_MAX_S
    assert t.timeout_s(A) == PROBE_METADATA_TIMEOUT_S  # per node


def test_answer_times_are_smoothed_not_replaced() -> None:
    t = ProbeTimeouts(floor_s=0.001, ceiling_s=10.0)
    t.answered(A, 0.1)
    t.answered(A, 0.5)
    smoothed = 0.1 + 0.25 * (0.5 - 0.1)
    assert t.timeout_s(A) == pytest.approx(PROBE_TIMEOUT_ANSWER_FACTOR * smoothed)


def test_a_timeout_doubles_the_next_wait_up_to_the_ceiling_and_an_answer_resets_it() -> None:
    t = ProbeTimeouts()
    t.timed_out(A)
    assert t.timeout_s(A) == pytest.approx(2 * PROBE_METADATA_TIMEOUT_S)
    for _ in range(5):
        t.timed_out(A)
    assert t.timeout_s(A) == PROBE_METADATA_TIMEOUT_MAX_S
    t.answered(A, 0.002)
    assert t.timeout_s(A) == PROBE_METADATA_TIMEOUT_S
    assert t.timeout_s(B) == PROBE_METADATA_TIMEOUT_S  # other nodes untouched


def test_bad_bounds_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="floor_s, ceiling_s"):
        ProbeTimeouts(floor_s=0.5, ceiling_s=0.2)


# --- LoopTimer -------------------------------------------------------------------------------------------------


def _iteration(timer: LoopTimer, start: float, wait_ms: float, phases: list[tuple[str, float]]) -> str | None:
    """One loop iteration at `start` (s): a wait of `wait_ms` then the phases (name, ms); what end() says."""
    timer.begin(start, 0.005)
    now = start + wait_ms / 1000
    timer.mark("wait", now)
    for name, ms in phases:
        now += ms / 1000
        timer.mark(name, now)
    return timer.end(now)


def test_a_quick_iteration_says_nothing() -> None:
    timer = LoopTimer(slow_ms=100, log_interval_s=1.0)
    assert _iteration(timer, 10.0, 5, [("persist", 20)]) is None
    assert timer.max_late_ms == pytest.approx(0.0, abs=1e-6)


def test_a_slow_phase_is_named_with_its_time() -> None:
    timer = LoopTimer(slow_ms=100, log_interval_s=1.0)
    line = _iteration(timer, 10.0, 5, [("peers", 2), ("persist", 180)])
    assert line is not None and "persist 180" in line and "1 iteration(s)" in line


def test_a_late_wake_counts_as_slow_and_is_measured() -> None:
    timer = LoopTimer(slow_ms=100, log_interval_s=1.0)
    line = _iteration(timer, 10.0, 305, [])
    assert line is not None and "wait 305" in line
    assert timer.max_late_ms == pytest.approx(300.0)


def test_slow_lines_are_rate_limited_and_report_the_worst_meanwhile() -> None:
    timer = LoopTimer(slow_ms=100, log_interval_s=1.0)
    assert _iteration(timer, 10.0, 5, [("persist", 150)]) is not None
    assert _iteration(timer, 10.3, 5, [("persist", 400)]) is None  # within the interval: held
    assert _iteration(timer, 10.6, 5, [("persist", 120)]) is None
    line = _iteration(timer, 11.2, 5, [("persist", 10)])  # not slow itself, but the interval has passed
    assert line is not None and "2 iteration(s)" in line and "persist 400" in line
    assert _iteration(timer, 12.5, 5, [("persist", 10)]) is None  # nothing slow since


# --- StallDiscountingClock --------------------------------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1000.0

    def __call__(self) -> float:
        return self.now_ms


def test_short_steps_follow_monotonic_time() -> None:
    raw = _FakeClock()
    clock = StallDiscountingClock(raw, step_max_ms=150)
    start = clock()
    for _ in range(10):
        raw.now_ms += 5
        clock()
    assert clock() - start == pytest.approx(50.0)
    assert clock.discounted_ms == 0.0


def test_a_stall_counts_for_one_step_at_most() -> None:
    raw = _FakeClock()
    clock = StallDiscountingClock(raw, step_max_ms=150)
    start = clock()
    raw.now_ms += 600  # the process did not run for 600 ms
    assert clock() - start == pytest.approx(150.0)
    assert clock.discounted_ms == pytest.approx(450.0)
    raw.now_ms += 10
    assert clock() - start == pytest.approx(160.0)  # then on as before


def test_the_timers_still_expire_while_the_process_runs() -> None:
    """A silent leader is still detected: a loop running every 5 ms credits every millisecond."""
    from shmraft.constants import ELECTION_TIMEOUT_MS

    raw = _FakeClock()
    clock = StallDiscountingClock(raw, step_max_ms=150)
    start = clock()
    while clock() - start < ELECTION_TIMEOUT_MS:
        raw.now_ms += 5
    assert raw.now_ms - 1000.0 == pytest.approx(ELECTION_TIMEOUT_MS)


def test_the_clock_never_goes_back_and_refuses_a_bad_cap() -> None:
    raw = _FakeClock()
    clock = StallDiscountingClock(raw, step_max_ms=150)
    t = clock()
    raw.now_ms -= 50
    assert clock() == t
    with pytest.raises(ValueError, match="step_max_ms"):
        StallDiscountingClock(raw, step_max_ms=0)


# --- the campaign's gap analysis -------------------------------------------------------------------------------


def test_longest_gaps_name_the_fault_and_the_leaders_of_each() -> None:
    acks = np.array([0.0, 0.1, 0.2, 3.2, 3.3, 10.0, 10.1])
    faults = [
        {"kind": "kill-leader", "node": 1, "start_s": 0.15, "end_s": 2.0},
        {"kind": "pause-node", "node": 2, "start_s": 9.0, "end_s": 9.5},
    ]
    leaders = [(0.0, 1, 1), (1.0, 2, 2), (5.0, 3, 3)]
    gaps = chaos.longest_gaps(acks, faults, leaders, 2)
    assert [g["gap_ms"] for g in gaps] == [6700.0, 3000.0]
    second, first = gaps[1], gaps[0]
    assert second["fault"] == "kill-leader node 1" and second["after_heal_ms"] is None  # in force at its start
    assert second["leaders"] == [[1.0, 2, 2]]
    assert first["fault"] == "pause-node node 2" and first["fault_start_s"] == 9.0
    assert first["after_heal_ms"] is None
    assert first["leaders"] == [[5.0, 3, 3]]


def test_a_gap_after_every_heal_says_how_long_after() -> None:
    acks = np.array([0.0, 4.0, 6.0])
    faults = [{"kind": "proxy-delay", "node": 3, "start_s": 0.5, "end_s": 3.0}]
    gaps = chaos.longest_gaps(acks, faults, [], 1)
    assert gaps[0]["gap_ms"] == 4000.0 and gaps[0]["after_heal_ms"] is None  # the fault began inside it
    gaps = chaos.longest_gaps(acks, faults, [], 2)
    assert gaps[1]["start_s"] == 4.0 and gaps[1]["after_heal_ms"] == 1000.0
    assert chaos.longest_gaps(np.array([1.0]), faults, [], 3) == []
    assert "fault" not in chaos.longest_gaps(acks, [], [], 1)[0]
