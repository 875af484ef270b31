"""MemStorage: the LogStorage protocol in memory, with the crash semantics of each fsync policy."""

from __future__ import annotations

import pytest

from shmraft.raft.errors import InvariantError
from shmraft.raft.memstorage import MemStorage
from shmraft.raft.types import Entry, HardState, Snapshot


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


def test_save_snapshot_compacts_atomically_and_stays_at_or_above_the_log_start():
    s = MemStorage()
    s.append(ents(1, [1, 1, 2, 2, 2]), HardState(term=2, commit=4))
    s.save_snapshot(Snapshot(4, 2, b"state@4"), compact_to=2)
    assert s.snapshot() == Snapshot(4, 2, b"state@4") and (s.snapshot_index(), s.first_index()) == (2, 3)
    with pytest.raises(InvariantError):
        s.save_snapshot(Snapshot(5, 2, b"x"))  # beyond commit
    with pytest.raises(InvariantError):
        s.save_snapshot(Snapshot(3, 1, b"x"))  # wrong term
    s.compact(3)  # below the snapshot: it stays
    assert s.snapshot() is not None
    s.compact(4)
    assert s.snapshot() is not None and s.snapshot().index >= s.snapshot_index()


def test_compaction_past_the_saved_snapshot_without_one_drops_it():
    s = MemStorage()
    s.append(ents(1, [1, 1, 1]), HardState(term=1, commit=3))
    s.save_snapshot(Snapshot(1, 1, b"s"))
    s.compact(2)
    assert s.snapshot() is None


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_install_snapshot_replaces_the_log_atomically_under_power_loss(fsync):
    s = MemStorage(fsync)
    s.append(ents(1, [1, 1, 1]), HardState(term=1, commit=1))
    s.sync()
    s.install_snapshot(Snapshot(10, 3, b"leader-state"), HardState(term=3, vote=0, commit=10))
    assert (s.first_index(), s.last_index(), s.snapshot_index(), s.snapshot_term()) == (11, 10, 10, 3)
    assert s.term_at(10) == 3 and s.term_at(3) is None and s.hard_state().commit == 10
    s.crash(power_loss=True)
    if fsync == "always":  # durable on return
        assert s.snapshot() == Snapshot(10, 3, b"leader-state") and s.last_index() == 10
        assert s.hard_state() == HardState(3, 0, 10)
    else:  # not synced: the old state, whole
        assert s.snapshot() is None and s.last_index() == 3 and s.hard_state() == HardState(1, 0, 1)
        assert [s.term_at(i) for i in (1, 2, 3)] == [1, 1, 1]


def test_install_snapshot_refuses_a_commit_below_its_index_or_an_index_below_the_commit():
    s = MemStorage()
    s.append(ents(1, [1, 1, 1]), HardState(term=1, commit=3))
    with pytest.raises(InvariantError):
        s.install_snapshot(Snapshot(10, 1, b""), HardState(term=1, commit=5))
    with pytest.raises(InvariantError):
        s.install_snapshot(Snapshot(2, 1, b""), HardState(term=1, commit=3))
