"""A follower that holds part of a dead leader's snapshot must take the next leader's snapshot, whatever its
index (found by tests/test_snapshot_live.py's mid-transfer kill: about one run in three, the follower stayed
behind for good). Each node saves snapshots at its own points, so the next leader's snapshot may be older than
the dead leader's; the partial copy of the dead leader's is worth nothing once a leader of a higher term speaks.

The core (shmraft/raft/core.py `_handle_snapshot`) once ignored a chunk whose index was below the partial
copy's without looking at the term; the new leader resent from its acknowledged offset forever and the follower
never answered. Now a leader of a later term replaces the partial copy, whatever its index."""

from __future__ import annotations

import zlib

from shmraft.raft.messages import InstallSnapshot
from shmraft.sim.harness import core_with_log

DEAD_LEADER_SNAPSHOT = bytes(range(200))
NEXT_LEADER_SNAPSHOT = bytes(range(150))


def test_the_next_leaders_older_snapshot_replaces_a_dead_leaders_partial_one() -> None:
    follower, _ = core_with_log(3, [1, 2], [1, 1])
    a, b = DEAD_LEADER_SNAPSHOT, NEXT_LEADER_SNAPSHOT
    follower.step(InstallSnapshot(1, 3, 2, 100, 2, len(a), zlib.crc32(a), 0, a[:100]))  # leader 1, term 2
    assert follower.ready().snapshot is None  # half of it: nothing to install yet
    follower.step(InstallSnapshot(2, 3, 3, 90, 2, len(b), zlib.crc32(b), 0, b))  # leader 2, term 3: all of it
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.index == 90 and rd.snapshot.data == b
