"""Kafka's int32 producer sequence wraps from 2^31-1 to 0: the dedup table accepts the wrap for the Kafka door's
producers (bit 63 of the producer id, sequences in the Kafka band) and nowhere else (shmraft/node/dedup.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.ingest.kafka_door import _chunks
from shmraft.node.dedup import (
    KAFKA_PRODUCER_BIT,
    KAFKA_SEQUENCE_BASE,
    KAFKA_SEQUENCE_MODULUS,
    DedupTable,
    Verdict,
    event_offset,
)
from shmraft.wire import client as cp

KAFKA_PID = KAFKA_PRODUCER_BIT | 12345 << 16  # epoch 0
NATIVE_PID = 12345
LAST = KAFKA_SEQUENCE_MODULUS - 1  # Kafka's largest sequence


def band(*kafka_seqs: int) -> np.ndarray:
    """Kafka sequences as the door sends them."""
    return np.array([KAFKA_SEQUENCE_BASE + s for s in kafka_seqs], dtype=np.uint64)


def pids(pid: int, n: int) -> np.ndarray:
    return np.full(n, pid, dtype=np.uint64)


def verdicts(t: DedupTable, pid: int, seqs: np.ndarray) -> list[int]:
    return t.classify(pids(pid, seqs.size), seqs)[0].tolist()


def test_zero_follows_the_largest_sequence_for_a_kafka_producer() -> None:
    t = DedupTable()
    t.record(1, pids(KAFKA_PID, 2), band(LAST - 1, LAST), commit_index=0)
    assert verdicts(t, KAFKA_PID, band(0, 1)) == [Verdict.ACCEPT] * 2
    assert verdicts(t, KAFKA_PID, band(1)) == [Verdict.OUT_OF_ORDER]  # a gap after the wrap is still a gap
    t.record(2, pids(KAFKA_PID, 2), band(0, 1), commit_index=0)
    assert verdicts(t, KAFKA_PID, band(2)) == [Verdict.ACCEPT]


def test_a_retry_from_before_the_wrap_is_a_duplicate_with_its_offsets() -> None:
    t = DedupTable()
    t.record(1, pids(KAFKA_PID, 2), band(LAST - 1, LAST), commit_index=0)
    t.record(2, pids(KAFKA_PID, 3), band(0, 1, 2), commit_index=0)
    verdict, offsets = t.classify(pids(KAFKA_PID, 4), band(LAST, 0, 1, 4))
    assert verdict.tolist() == [Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.OUT_OF_ORDER]
    assert offsets[:3].tolist() == [event_offset(1, 1), event_offset(2, 0), event_offset(2, 1)]


def test_one_batch_across_the_wrap_of_an_unknown_producer_is_accepted_and_recorded() -> None:
    t = DedupTable()
    seqs = band(LAST - 1, LAST, 0, 1)
    assert verdicts(t, KAFKA_PID, seqs) == [Verdict.ACCEPT] * 4
    t.record(1, pids(KAFKA_PID, 4), seqs, commit_index=0)
    assert verdicts(t, KAFKA_PID, band(2)) == [Verdict.ACCEPT]
    assert verdicts(t, KAFKA_PID, band(LAST)) == [Verdict.DUPLICATE]


def test_native_rules_are_unchanged_for_the_same_numbers() -> None:
    """A native producer (bit 63 clear), or bit 63 with sequences outside the band, gets no wrap."""
    for pid, seqs in ((NATIVE_PID, band), (KAFKA_PID, lambda *s: np.array(s, dtype=np.uint64))):
        t = DedupTable()
        t.record(1, pids(pid, 1), seqs(LAST), commit_index=0)
        assert verdicts(t, pid, seqs(0)) == [Verdict.DUPLICATE_TOO_OLD]  # 0 < 2^31-1: not after it
        assert verdicts(t, pid, seqs(LAST + 1)) == [Verdict.ACCEPT]  # exact numbers: 2^31 follows 2^31-1
        assert verdicts(t, pid, seqs(LAST + 2)) == [Verdict.OUT_OF_ORDER]


def test_the_wrap_survives_a_snapshot_and_a_truncation() -> None:
    t = DedupTable()
    t.record(1, pids(KAFKA_PID, 1), band(LAST), commit_index=1)
    t.record(2, pids(KAFKA_PID, 2), band(0, 1), commit_index=2)
    restored = DedupTable.from_state(t.committed_state())
    assert verdicts(restored, KAFKA_PID, band(2)) == [Verdict.ACCEPT]
    assert verdicts(restored, KAFKA_PID, band(LAST, 0)) == [Verdict.DUPLICATE] * 2
    t.record(3, pids(KAFKA_PID, 1), band(2), commit_index=2)
    t.truncate(3)  # entry 3 was never committed: the producer is back at sequence 1
    assert verdicts(t, KAFKA_PID, band(2)) == [Verdict.ACCEPT]
    assert t.committed_state().same_as(restored.committed_state())


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, LAST),
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=30),
    retry_back=st.integers(1, 3),
)
def test_a_kafka_producer_across_any_number_of_wraps(start: int, sizes: list[int], retry_back: int) -> None:
    """Batches that follow on are accepted wherever the wrap falls (the starts are drawn near it too, since
    sizes sum up to 6000 and a start is any int32); a retry of a recent batch gets its original offsets."""
    t = DedupTable()
    start = start if start % 2 else LAST - start % 5000  # half the examples start right before the wrap
    seq = start
    written: list[tuple[np.ndarray, np.ndarray]] = []  # (band sequences, offsets) per batch
    for index, n in enumerate(sizes, start=1):
        seqs = band(*[(seq + i) % KAFKA_SEQUENCE_MODULUS for i in range(n)])
        assert verdicts(t, KAFKA_PID, seqs) == [Verdict.ACCEPT] * n
        t.record(index, pids(KAFKA_PID, n), seqs, commit_index=index)
        written.append((seqs, event_offset(index, 0) + np.arange(n)))
        seq = (seq + n) % KAFKA_SEQUENCE_MODULUS
    seqs, offsets = written[max(0, len(written) - retry_back)]
    verdict, known = t.classify(pids(KAFKA_PID, seqs.size), seqs)
    assert verdict.tolist() == [Verdict.DUPLICATE] * seqs.size
    assert known.tolist() == offsets.tolist()


@given(
    seq=st.one_of(st.integers(0, LAST), st.integers(LAST - 20_000, LAST)),
    n=st.integers(1, 3 * cp.PRODUCE_EVENTS_MAX),
)
def test_the_door_cuts_a_kafka_request_at_the_wrap_and_keeps_sequences_in_the_band(seq: int, n: int) -> None:
    values = [b"x"] * n
    chunks = _chunks(values, seq, idempotent=True)
    assert sum(len(c) for _, _, c in chunks) == n and [s for s, _, _ in chunks][0] == 0
    for start, first, chunk in chunks:
        assert 1 <= len(chunk) <= cp.PRODUCE_EVENTS_MAX
        assert first == KAFKA_SEQUENCE_BASE + (seq + start) % KAFKA_SEQUENCE_MODULUS
        assert first + len(chunk) <= KAFKA_SEQUENCE_BASE + KAFKA_SEQUENCE_MODULUS  # never past the band
    native = _chunks(values, seq, idempotent=False)
    assert [(s, f) for s, f, _ in native] == [(s, seq + s) for s in range(0, n, cp.PRODUCE_EVENTS_MAX)]
