"""The dedup table: verdicts, bounds, and determinism as a function of the log (including truncation)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.node.dedup import DedupTable, Verdict, event_offset


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.uint64)


def test_new_producer_is_accepted_from_any_first_sequence() -> None:
    verdict, _ = DedupTable().classify(arr(5, 5, 5), arr(10, 11, 12))
    assert verdict.tolist() == [Verdict.ACCEPT] * 3


def test_retry_of_appended_events_is_a_duplicate_with_its_offset() -> None:
    t = DedupTable()
    t.record(7, arr(1, 2, 1), arr(0, 100, 1), commit_index=0)
    verdict, offsets = t.classify(arr(1, 1, 1), arr(0, 1, 2))
    assert verdict.tolist() == [Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.ACCEPT]
    assert offsets[:2].tolist() == [event_offset(7, 0), event_offset(7, 2)]


def test_gap_in_sequences_is_out_of_order_from_the_gap_on() -> None:
    t = DedupTable()
    t.record(1, arr(1), arr(0), commit_index=0)
    verdict, _ = t.classify(arr(1, 1, 1), arr(1, 3, 4))
    assert verdict.tolist() == [Verdict.ACCEPT, Verdict.OUT_OF_ORDER, Verdict.OUT_OF_ORDER]


def test_duplicate_older_than_the_kept_spans_is_reported_too_old() -> None:
    t = DedupTable(spans_max=2)
    for i in range(1, 5):
        t.record(i, arr(9), arr(i - 1), commit_index=i)
    verdict, _ = t.classify(arr(9, 9), arr(0, 3))
    assert verdict.tolist() == [Verdict.DUPLICATE_TOO_OLD, Verdict.DUPLICATE]


def test_producers_are_forgotten_past_the_horizon_and_the_count_limit() -> None:
    t = DedupTable(producers_max=2, horizon_entries=10)
    t.record(1, arr(1), arr(0), commit_index=1)
    t.record(2, arr(2), arr(0), commit_index=2)
    t.record(3, arr(3), arr(0), commit_index=3)  # three producers > max 2: producer 1 (oldest) goes
    assert len(t) == 2 and t.classify(arr(1), arr(0))[0].tolist() == [Verdict.ACCEPT]
    t.record(20, arr(3), arr(1), commit_index=20)  # producer 2's last event is now beyond the horizon
    assert len(t) == 1


def _build(log: list[tuple[np.ndarray, np.ndarray]], **kw) -> DedupTable:
    t = DedupTable(**kw)
    for i, (p, s) in enumerate(log, start=1):
        t.record(i, p, s, commit_index=0)
    return t


def _state(t: DedupTable) -> list:
    return [
        (pid, st.high_water, st.last_index, [(f, o.tolist()) for f, o in st.spans]) for pid, st in t._producers.items()
    ]


@st.composite
def logs(draw):
    """A valid log: each entry holds accepted events of a few producers with in-order sequences."""
    next_seq: dict[int, int] = {}
    log = []
    for _ in range(draw(st.integers(1, 25))):
        pids, seqs = [], []
        for _ in range(draw(st.integers(0, 6))):
            pid = draw(st.integers(1, 6))
            pids.append(pid)
            seqs.append(next_seq.get(pid, 0))
            next_seq[pid] = seqs[-1] + 1
        log.append((np.array(pids, dtype=np.uint64), np.array(seqs, dtype=np.uint64)))
    return log


@settings(max_examples=200, deadline=None)
@given(
    log=logs(),
    cut=st.integers(1, 25),
    limits=st.sampled_from([{}, {"producers_max": 2, "horizon_entries": 4}, {"spans_max": 1}]),
)
def test_truncation_leaves_exactly_the_table_of_the_shorter_log(log, cut, limits) -> None:
    cut = min(cut, len(log))
    full = _build(log, **limits)
    full.truncate(cut)
    assert _state(full) == _state(_build(log[: cut - 1], **limits))
    assert full.last_index == cut - 1
