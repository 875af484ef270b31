"""MemStorage: the LogStorage protocol in memory, with the crash semantics of each fsync policy."""

from __future__ import annotations

import pytest

from shmraft.raft.errors import InvariantError
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.types import Entry, HardState


def ents(first: int, terms: list[int], size: int = 4) -> list[Entry]:
    return [Entry(i, t, bytes([i % 256]) * size) for i, t in enumerate(terms, start=first)]


def test_empty_storage_describes_an_empty_log():
    s = MemStorage()
    assert (s.first_index(), s.last_index(), s.snapshot_index(), s.term_at(0)) == (1, 0, 0, 0)
    assert s.hard_state() == HardState() and s.entries(1, 5, 100) == []


def test_append_replaces_the_suffix_from_its_first_index():
    s = MemStorage()
    s.append(ents(1, [1, 1, 1, 1]), HardState(term=2))
    s.append(ents(3, [2]))
    assert s.last_index() == 3 and [s.term_at(i) for i in (1, 2, 3, 4)] == [1, 1, 2, None]


def test_entries_stop_before_max_bytes_but_return_at_least_one():
    s = MemStorage()
    s.append(ents(1, [1, 1, 1], size=10))
    assert len(s.entries(1, 4, 25)) == 2
    assert len(s.entries(1, 4, 1)) == 1
    assert len(s.entries(2, 99, 1000)) == 2


def test_append_refuses_holes_decreasing_terms_and_rewriting_committed_entries():
    s = MemStorage()
    s.append(ents(1, [1, 1]), HardState(term=1, commit=2))
    with pytest.raises(InvariantError):
        s.append(ents(4, [1]))
    with pytest.raises(InvariantError):
        s.append([Entry(3, 2, b""), Entry(4, 1, b"")])
    with pytest.raises(InvariantError):
        s.append(ents(2, [2]))


def test_hard_state_term_never_decreases_and_vote_never_changes_within_a_term():
    s = MemStorage()
    s.set_hard_state(HardState(term=3, vote=1))
    with pytest.raises(InvariantError):
        s.set_hard_state(HardState(term=2))
    with pytest.raises(InvariantError):
        s.set_hard_state(HardState(term=3, vote=2))
    with pytest.raises(InvariantError):
        s.set_hard_state(HardState(term=3, vote=1, commit=5))  # beyond the last index


def test_compact_keeps_the_boundary_term_for_log_matching():
    s = MemStorage()
    s.append(ents(1, [1, 1, 2, 2]), HardState(term=2, commit=3))
    s.compact(3)
    assert (s.first_index(), s.snapshot_index(), s.term_at(3), s.term_at(2)) == (4, 3, 2, None)
    with pytest.raises(InvariantError):
        s.compact(4)  # beyond commit


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_process_crash_loses_nothing(fsync):
    s = MemStorage(fsync)
    s.append(ents(1, [1, 1]), HardState(term=1, vote=1, commit=1))
    s.crash(power_loss=False)
    assert s.last_index() == 2 and s.hard_state() == HardState(1, 1, 1)


def test_power_loss_with_fsync_always_keeps_entries_and_votes_but_may_revert_commit():
    s = MemStorage("always")
    s.append(ents(1, [1, 1, 1]), HardState(term=1, vote=2, commit=1))
    s.set_hard_state(HardState(term=1, vote=2, commit=3))  # commit-only change: not synced
    s.crash(power_loss=True)
    assert s.last_index() == 3
    assert s.hard_state() == HardState(term=1, vote=2, commit=1)


def test_power_loss_with_fsync_never_returns_to_the_last_sync():
    s = MemStorage("never")
    s.append(ents(1, [1]), HardState(term=1, vote=1))
    s.sync()
    s.append(ents(2, [1, 1]), HardState(term=2, vote=3, commit=2))
    s.crash(power_loss=True)
    assert s.last_index() == 1 and s.hard_state() == HardState(term=1, vote=1)
