"""Majority arithmetic for clusters of 1..7 voters."""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    """Smallest number of voters that forms a quorum: 2 of 3, 3 of 5."""
    if voters < 1:
        raise ValueError(f"voters: expected >= 1, got {voters}")
    return voters // 2 + 1


def quorum_index(match_indexes: Iterable[int], quorum: int) -> int:
    """Highest index stored on at least `quorum` voters. Sorting <= 7 values per ack is cheaper than
    keeping a structure up to date."""
    ordered = sorted(match_indexes, reverse=True)
    if len(ordered) < quorum:
        raise ValueError(f"expected at least {quorum} match indexes, got {len(ordered)}")
    return ordered[quorum - 1]


def vote_result(votes: dict[int, bool], voters: int) -> bool | None:
    """True once a quorum granted, False once a quorum can no longer be reached, None while undecided."""
    need = majority(voters)
    granted = sum(1 for v in votes.values() if v)
    if granted >= need:
        return True
    if len(votes) - granted > voters - need:
        return False
    return None
