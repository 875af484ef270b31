"""The produce tracker without I/O: requests in, R5 notes in (appended, dedup verdicts, commit, leader), one
answer out per request (PRODUCED with offsets, or the error the client protocol names)."""

from __future__ import annotations

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.ingest.tracker import PRODUCE_TIMEOUT_MAX_MS, TIMEOUT_MESSAGE, Answer, ProduceTracker
from shmraft.node.batching import EVENT_BYTES_MAX
from shmraft.node.dedup import Verdict, event_offset
from shmraft.wire.client import ErrorCode

NODE_ID = 1
TERM = 3
TIMEOUT_MS_DEFAULT = 5_000
MS = 1_000_000  # ns


def u64(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.uint64)


def i64(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def tracker() -> ProduceTracker:
    return ProduceTracker(NODE_ID, TERM, TIMEOUT_MS_DEFAULT)


def submit(
    t: ProduceTracker,
    conn: int = 10,
    cid: int = 100,
    pid: int = 7,
    first: int = 0,
    count: int = 3,
    timeout_ms: int = 0,
    now_ns: int = 0,
    event_bytes: int = 10,
) -> Answer | None:
    lengths = np.full(count, event_bytes, dtype=np.uint32)
    return t.submit(conn, cid, pid, first, lengths, count * event_bytes, timeout_ms, now_ns)


def appended(t: ProduceTracker, pid: int, seqs: list[int], index: int, first_position: int = 0) -> None:
    """An APPENDED note: `seqs` of producer `pid` at consecutive positions of log entry `index`."""
    n = len(seqs)
    offsets = i64(*(event_offset(index, first_position + k) for k in range(n)))
    t.on_appended(u64(*[pid] * n), u64(*seqs), offsets)


def test_request_is_answered_produced_once_the_commit_covers_all_its_events() -> None:
    t = tracker()
    assert submit(t, now_ns=1_000) is None
    appended(t, 7, [0, 1, 2], index=5)
    assert t.committed(4, now_ns=2_000) == []
    [a] = t.committed(5, now_ns=9_000)
    assert (a.conn_id, a.correlation_id, a.size_bytes, a.code) == (10, 100, 30, None)
    assert a.offsets.tolist() == [event_offset(5, 0), event_offset(5, 1), event_offset(5, 2)]
    assert a.latency_ns == 8_000
    assert t.committed(6, now_ns=10_000) == []  # answered once
    assert t.waiting == 0


def test_request_spread_over_entries_waits_for_the_highest_index() -> None:
    t = tracker()
    submit(t, count=4)
    appended(t, 7, [0, 1], index=5, first_position=62)
    assert t.committed(100, now_ns=0) == []  # two events still without an offset
    appended(t, 7, [2, 3], index=6)
    assert t.committed(5, now_ns=0) == []
    [a] = t.committed(6, now_ns=0)
    assert a.offsets.tolist() == [
        5 * BATCH_EVENTS_MAX + 62,
        5 * BATCH_EVENTS_MAX + 63,
        6 * BATCH_EVENTS_MAX,
        6 * BATCH_EVENTS_MAX + 1,
    ]


def test_answers_come_in_commit_order_of_their_highest_index() -> None:
    t = tracker()
    submit(t, cid=1, pid=7, first=0, count=1)
    submit(t, cid=2, pid=8, first=0, count=1)
    appended(t, 8, [0], index=3)
    appended(t, 7, [0], index=4)
    answers = t.committed(4, now_ns=0)
    assert [a.correlation_id for a in answers] == [2, 1]


def test_one_note_for_several_producers_resolves_each() -> None:
    t = tracker()
    submit(t, cid=1, pid=7, first=10, count=2)
    submit(t, cid=2, pid=8, first=20, count=1)
    t.on_appended(u64(7, 8, 7), u64(10, 20, 11), i64(event_offset(2, 0), event_offset(2, 1), event_offset(2, 2)))
    answers = {a.correlation_id: a.offsets.tolist() for a in t.committed(2, now_ns=0)}
    assert answers == {1: [event_offset(2, 0), event_offset(2, 2)], 2: [event_offset(2, 1)]}


def test_duplicate_verdict_answers_with_the_offset_the_event_already_has() -> None:
    t = tracker()
    submit(t, first=0, count=2)
    assert t.on_verdicts(u64(7, 7), u64(0, 1), np.array([Verdict.DUPLICATE] * 2, np.uint8), i64(64, 65)) == []
    [a] = t.committed(1, now_ns=0)
    assert a.offsets.tolist() == [64, 65]


def test_retry_overlapping_an_append_mixes_duplicate_offsets_and_new_ones() -> None:
    t = tracker()
    submit(t, first=0, count=3)
    t.on_verdicts(u64(7), u64(0), np.array([Verdict.DUPLICATE], np.uint8), i64(event_offset(2, 5)))
    appended(t, 7, [1, 2], index=4)
    [a] = t.committed(4, now_ns=0)
    assert a.offsets.tolist() == [event_offset(2, 5), event_offset(4, 0), event_offset(4, 1)]


def test_out_of_order_verdict_fails_the_request_naming_the_sequence() -> None:
    t = tracker()
    submit(t, first=5, count=2)
    [a] = t.on_verdicts(u64(7, 7), u64(5, 6), np.array([Verdict.OUT_OF_ORDER] * 2, np.uint8), i64(-1, -1))
    assert (a.code, a.size_bytes) == (ErrorCode.OUT_OF_ORDER_SEQUENCE, 20)
    assert a.message == "producer 7: sequence 5 does not follow the last one in the log"
    assert t.waiting == 0


def test_duplicate_too_old_fails_the_request_sequence_too_old() -> None:
    t = tracker()
    submit(t, first=5, count=1)
    [a] = t.on_verdicts(u64(7), u64(5), np.array([Verdict.DUPLICATE_TOO_OLD], np.uint8), i64(-1))
    assert a.code is ErrorCode.SEQUENCE_TOO_OLD
    assert a.message.startswith("producer 7: sequence 5 is in the log already") and "forgotten" in a.message


def test_refused_frame_fails_the_request_not_leader() -> None:
    t = tracker()
    submit(t, first=0, count=2)
    [a] = t.on_verdicts(u64(7, 7), u64(0, 1), np.array([Verdict.NOT_PROPOSED] * 2, np.uint8), i64(-1, -1))
    assert a.code is ErrorCode.NOT_LEADER
    assert a.message == "leadership changed before the events were appended"


def test_verdicts_touch_only_the_requests_that_hold_the_sequences() -> None:
    t = tracker()
    submit(t, cid=1, first=0, count=2)
    submit(t, cid=2, first=2, count=2)
    [a] = t.on_verdicts(u64(7), u64(3), np.array([Verdict.OUT_OF_ORDER], np.uint8), i64(-1))
    assert a.correlation_id == 2
    appended(t, 7, [0, 1], index=1)
    assert [a.correlation_id for a in t.committed(1, now_ns=0)] == [1]


def test_leader_note_naming_this_node_in_the_known_term_changes_nothing() -> None:
    t = tracker()
    submit(t)
    assert t.on_leader(TERM, NODE_ID) == []
    assert t.waiting == 1


def test_new_term_or_other_leader_fails_every_waiting_request_once() -> None:
    t = tracker()
    submit(t, cid=1, pid=7)
    submit(t, cid=2, pid=8)
    appended(t, 7, [0, 1, 2], index=2)  # resolved, awaiting commit: fails too
    answers = t.on_leader(TERM + 1, 2)
    assert sorted(a.correlation_id for a in answers) == [1, 2]
    assert {(a.code, a.message) for a in answers} == {
        (ErrorCode.NOT_LEADER, f"leadership changed (term {TERM + 1}, leader 2)")
    }
    assert t.committed(10, now_ns=0) == []
    assert t.on_leader(TERM + 1, NODE_ID) == []  # the new term is now known: nothing left to fail anyway
    submit(t, cid=3)
    [a] = t.on_leader(TERM + 2, 0)
    assert a.message == f"leadership changed (term {TERM + 2}, leader ?)"


def test_request_past_its_timeout_fails_timeout_on_the_leader_unavailable_elsewhere() -> None:
    t = tracker()
    submit(t, cid=1, pid=7, timeout_ms=100, now_ns=0)
    submit(t, cid=2, pid=8, timeout_ms=200, now_ns=0)
    assert t.expire(100 * MS - 1, is_leader=True) == []
    [a] = t.expire(100 * MS, is_leader=True)
    assert (a.correlation_id, a.code, a.message) == (1, ErrorCode.TIMEOUT, TIMEOUT_MESSAGE)
    [b] = t.expire(200 * MS, is_leader=False)
    assert (b.correlation_id, b.code) == (2, ErrorCode.UNAVAILABLE)


def test_timeout_zero_takes_the_default_and_any_timeout_is_capped() -> None:
    t = tracker()
    submit(t, cid=1, pid=7, timeout_ms=0, now_ns=0)
    submit(t, cid=2, pid=8, timeout_ms=PRODUCE_TIMEOUT_MAX_MS * 10, now_ns=0)
    assert t.expire(TIMEOUT_MS_DEFAULT * MS - 1, is_leader=True) == []
    assert [a.correlation_id for a in t.expire(TIMEOUT_MS_DEFAULT * MS, is_leader=True)] == [1]
    assert [a.correlation_id for a in t.expire(PRODUCE_TIMEOUT_MAX_MS * MS, is_leader=True)] == [2]


def test_a_request_answered_produced_cannot_fail_afterwards() -> None:
    t = tracker()
    submit(t, timeout_ms=100)
    appended(t, 7, [0, 1, 2], index=1)
    assert len(t.committed(1, now_ns=0)) == 1
    assert t.expire(10_000 * MS, is_leader=True) == []
    assert t.fail_all(ErrorCode.NOT_LEADER, "gone") == []


def test_event_larger_than_a_frame_is_refused_at_once_and_not_tracked() -> None:
    t = tracker()
    a = submit(t, count=2, event_bytes=EVENT_BYTES_MAX + 1)
    assert a is not None
    assert (a.code, a.size_bytes) == (ErrorCode.TOO_LARGE, 0)
    assert a.message == f"event of {EVENT_BYTES_MAX + 1} bytes: expected at most {EVENT_BYTES_MAX}"
    assert t.waiting == 0


def test_sequences_past_2_to_the_63_are_refused_malformed() -> None:
    t = tracker()
    assert submit(t, first=2**63 - 4, count=3) is None
    a = submit(t, first=2**63 - 3, count=3)
    assert a is not None
    assert (a.code, a.message) == (ErrorCode.MALFORMED, "first_sequence: expected < 2^63 - count")


def test_notes_for_unknown_producers_or_sequences_are_ignored() -> None:
    t = tracker()
    submit(t, first=10, count=2)
    appended(t, 99, [10, 11], index=1)  # another producer
    appended(t, 7, [0, 1], index=1)  # sequences outside the request
    assert t.on_verdicts(u64(7), u64(50), np.array([Verdict.OUT_OF_ORDER], np.uint8), i64(-1)) == []
    assert t.committed(10, now_ns=0) == []
    assert t.waiting == 1
