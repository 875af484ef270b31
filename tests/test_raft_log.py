"""RaftLog: the stable/unstable split, the back-off search, and persist reports."""

from __future__ import annotations

import random

from shmraft.raft.log import RaftLog
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.types import Entry, HardState


def make_log(stable_terms: list[int], unstable_terms: list[int] = ()) -> RaftLog:
    s = MemStorage()
    s.append(
        [Entry(i, t, b"") for i, t in enumerate(stable_terms, start=1)],
        HardState(term=max([*stable_terms, *unstable_terms, 0])),
    )
    log = RaftLog(s)
    first = len(stable_terms) + 1
    log.append([Entry(i, t, b"") for i, t in enumerate(unstable_terms, start=first)])
    return log


def linear_conflict_by_term(terms: list[int], index: int, term: int) -> int:
    index = min(index, len(terms))
    while index > 0 and terms[index - 1] > term:
        index -= 1
    return index


def test_find_conflict_by_term_matches_a_linear_scan():
    rng = random.Random(3)
    for _ in range(300):
        terms = sorted(rng.randint(1, 6) for _ in range(rng.randint(0, 40)))
        cut = rng.randint(0, len(terms))
        log = make_log(terms[:cut], terms[cut:])
        for _ in range(5):
            index, term = rng.randint(0, len(terms) + 3), rng.randint(0, 7)
            assert log.find_conflict_by_term(index, term) == linear_conflict_by_term(terms, index, term)


def test_terms_and_entries_span_storage_and_unstable_tail():
    log = make_log([1, 1, 2], [3, 3])
    assert [log.term(i) for i in range(0, 7)] == [0, 1, 1, 2, 3, 3, None]
    assert [e.index for e in log.entries(2, 6, 1 << 20)] == [2, 3, 4, 5]
    assert log.stable_last() == 3 and log.last_index() == 5


def test_truncation_into_stable_part_is_served_from_memory_until_persisted():
    log = make_log([1, 1, 1, 1])
    log.append([Entry(3, 2, b"new")])
    assert [log.term(i) for i in (1, 2, 3, 4)] == [1, 1, 2, None]
    assert log.stable_last() == 2
    assert [e.index for e in log.take_unpersisted()] == [3]
    assert log.storage.term_at(4) == 1  # the driver has not overwritten the stored suffix yet


def test_stale_persist_report_does_not_mark_replacement_durable():
    log = make_log([1])
    log.append([Entry(2, 1, b""), Entry(3, 1, b"")])
    log.take_unpersisted()
    log.append([Entry(2, 2, b"")])
    assert not log.stable_to(3, 1)
    log.take_unpersisted()
    assert log.stable_to(2, 2) and log.stable_last() == 2
