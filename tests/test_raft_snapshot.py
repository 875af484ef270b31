"""InstallSnapshot in the core (Raft paper section 7 / Ongaro's thesis 5.1): the leader sends its snapshot to a
follower that needs entries below the leader's log start, in chunks under a byte window, resuming after loss;
the follower never moves its commit backwards, keeps a log that already holds the snapshot's entry, answers a
stale term as Raft says, and installs (durably, before acknowledging) only a complete, checksummed snapshot."""

from __future__ import annotations

import zlib

import pytest

from shmraft.raft.config import RaftConfig, RaftConfigError
from shmraft.raft.messages import AppendEntries, AppendResponse, Channel, InstallSnapshot, Message, SnapshotResponse
from shmraft.raft.progress import ProgressState
from shmraft.raft.types import HardState, Role, Snapshot
from shmraft.sim.harness import Cluster, core_with_log, drain

CHUNK_BYTES = 100
INFLIGHT_BYTES = 1000
SNAP_DATA = bytes(range(256)) * 10  # 2560 bytes: 26 chunks, at most 10 in flight


def config(**overrides: int) -> RaftConfig:
    base = {"snapshot_chunk_bytes": CHUNK_BYTES, "max_inflight_bytes": INFLIGHT_BYTES, "max_entry_bytes": 500}
    base.update(overrides)
    return RaftConfig(**base)  # type: ignore[arg-type]


def lagging_cluster(entries: int = 10, data: bytes = SNAP_DATA, n: int = 3, **cfg: int) -> tuple[Cluster, int]:
    """Node 1 leads; node 3 was cut off while `entries` entries were committed; node 1 (and 2) then saved a
    snapshot at the commit index with `data` and compacted their logs there. Returns (cluster, snapshot index)."""
    c = Cluster(n, config=config(**cfg))
    c.elect(1)
    c.isolate(3)
    for k in range(entries):
        c.propose(1, b"e%d" % k)
        c.deliver_all()
    c.run(100)  # followers learn the commit index
    index = c.cores[1].commit_index
    for i in c.ids:
        if i != 3:
            c.compact(i, index, data)
    c.heal()
    return c, index


def begin_transfer(c: Cluster, leader: int = 1, peer: int = 3) -> None:
    """Heartbeats and one-by-one delivery until the leader's progress for `peer` is SNAPSHOT; the chunks it
    sent then are still queued."""
    for _ in range(20):
        c.cores[leader].tick(c.config.heartbeat_interval_ms)
        c.process(leader)
        while c.queue:
            m = c.queue.popleft()
            if m.dst in c.down or (m.src, m.dst) in c.blocked:
                continue
            c.cores[m.dst].step(m)
            c.process(m.dst)
            if c.cores[leader].status()["progress"][peer]["state"] == "snapshot":
                return
    raise AssertionError(f"no transfer started: {c.cores[leader].status()}")


def chunks(msgs: list[Message], dst: int = 3) -> list[InstallSnapshot]:
    return [m for m in msgs if isinstance(m, InstallSnapshot) and m.dst == dst]


def test_5_1_leader_sends_snapshot_when_follower_needs_compacted_entries():
    c, index = lagging_cluster()
    c.run(500)
    sent = chunks(c.sent)
    assert sent, "no InstallSnapshot sent"
    assert all(m.channel == Channel.DATA and len(m.data) <= CHUNK_BYTES for m in sent)
    assert {(m.index, m.total, m.crc) for m in sent} == {(index, len(SNAP_DATA), zlib.crc32(SNAP_DATA))}
    assert c.storages[3].snapshot() == Snapshot(index, c.cores[1].term_at(index), SNAP_DATA)
    assert c.installed[3] == [c.storages[3].snapshot()]
    # then normal appends continue from the snapshot: node 3 holds the leader's log after it
    c.propose(1, b"after")
    c.run(200)
    assert c.log(3) == c.log(1) and c.cores[3].commit_index == c.cores[1].commit_index
    assert c.cores[1].status()["snapshots_sent"] == 1 and c.cores[3].status()["snapshots_installed"] == 1
    assert c.cores[1].status()["progress"][3]["state"] == "replicate"


def test_5_1_leader_keeps_at_most_max_inflight_bytes_of_chunks_unacknowledged():
    c, _ = lagging_cluster()
    begin_transfer(c)
    c.deliver_all(drop=lambda m: isinstance(m, SnapshotResponse))  # no chunk is ever acknowledged
    first = chunks(c.sent)
    assert sum(len(m.data) for m in first) == INFLIGHT_BYTES
    assert [m.offset for m in first] == list(range(0, INFLIGHT_BYTES, CHUNK_BYTES))
    progress = c.cores[1].status()["progress"][3]
    assert progress["state"] == "snapshot" and progress["snapshot_sent_bytes"] == INFLIGHT_BYTES
    assert progress["snapshot_acked_bytes"] == 0 and progress["snapshot_total_bytes"] == len(SNAP_DATA)
    assert progress["entries_behind"] == c.cores[1].last_index - 1  # node 3 holds the first leader's no-op


def test_5_1_follower_ignores_snapshot_older_than_commit():
    core, storage = core_with_log(3, [1, 2], [1, 1, 1, 1], HardState(term=1, commit=4))
    core.step(InstallSnapshot(1, 3, 1, 3, 1, len(SNAP_DATA), zlib.crc32(SNAP_DATA), 0, SNAP_DATA))
    rd = core.ready()
    assert rd.snapshot is None and rd.entries == []
    (answer,) = rd.messages_after_persist
    assert isinstance(answer, AppendResponse) and answer.success and answer.index == 4  # its commit
    assert core.commit_index == 4 and core.last_index == 4 and storage.snapshot() is None


def test_5_1_stale_term_snapshot_answered_with_current_term():
    core, storage = core_with_log(3, [1, 2], [1, 2], HardState(term=5))
    core.step(InstallSnapshot(1, 3, 3, 9, 3, 4, zlib.crc32(b"data"), 0, b"data"))
    (answer,) = drain(core, storage)
    assert isinstance(answer, AppendResponse) and (answer.term, answer.success) == (5, False)
    assert core.term == 5 and core.last_index == 2 and not core.snapshot_receiving


def test_5_1_snapshot_from_current_leader_resets_the_election_timer():
    core, storage = core_with_log(3, [1, 2], [1], HardState(term=2))
    timeout = core.config.election_timeout_ms
    for _ in range(5):
        core.tick(timeout // 2)
        core.step(InstallSnapshot(1, 3, 2, 9, 2, 1000, 0, 0, b"x" * 10))
        drain(core, storage)
    assert core.role == Role.FOLLOWER and core.leader == 1


def test_5_1_chunk_out_of_order_answered_with_received():
    core, storage = core_with_log(3, [1, 2], [1], HardState(term=2))
    crc = zlib.crc32(SNAP_DATA)

    def chunk(offset: int) -> InstallSnapshot:
        return InstallSnapshot(1, 3, 2, 20, 2, len(SNAP_DATA), crc, offset, SNAP_DATA[offset : offset + 100])

    core.step(chunk(0))
    core.step(chunk(200))  # 100..199 was lost
    core.step(chunk(100))
    answers = drain(core, storage)
    assert [(type(m).__name__, getattr(m, "received", None)) for m in answers] == [
        ("SnapshotResponse", 100),
        ("SnapshotResponse", 100),
        ("SnapshotResponse", 200),
    ]
    assert core.status()["snapshot_receiving"] == {"index": 20, "received_bytes": 200, "total_bytes": 2560}


def test_5_1_matching_snapshot_keeps_the_log_suffix():
    core, storage = core_with_log(3, [1, 2], [1, 1, 1, 2, 2, 2], HardState(term=2, commit=2))
    core.step(InstallSnapshot(1, 3, 2, 4, 2, 4, zlib.crc32(b"data"), 0, b"data"))
    rd = core.ready()
    assert rd.snapshot is None
    (answer,) = rd.messages_after_persist
    assert isinstance(answer, AppendResponse) and answer.success and answer.index == 4
    assert core.last_index == 6 and [core.term_at(i) for i in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    assert core.commit_index == 4  # the snapshot's index is committed on the leader


def test_5_1_complete_snapshot_is_installed_and_acknowledged_only_once_durable():
    c, index = lagging_cluster()
    c.hold_persist.add(3)
    c.run(200)
    s3 = c.cores[3]
    assert s3.last_index == index and s3.first_index == index + 1 and s3.commit_index == index
    assert s3.status()["stable_index"] == 0  # the install is not durable yet
    assert c.storages[3].snapshot() is None
    assert not [m for m in c.sent if isinstance(m, AppendResponse) and m.src == 3 and m.index >= index]
    c.release(3)
    c.run(200)
    assert c.storages[3].snapshot_index() == index and c.storages[3].hard_state().commit >= index
    assert s3.status()["stable_index"] >= index
    assert c.cores[1].status()["progress"][3]["state"] == "replicate"


def test_5_1_damaged_snapshot_is_dropped_and_restarted_from_zero():
    core, storage = core_with_log(3, [1, 2], [1], HardState(term=2))
    core.step(InstallSnapshot(1, 3, 2, 20, 2, 4, zlib.crc32(b"data") ^ 1, 0, b"data"))
    (answer,) = drain(core, storage)
    assert isinstance(answer, SnapshotResponse) and answer.received == 0
    assert core.last_index == 1 and not core.snapshot_receiving and storage.snapshot() is None


def test_5_1_snapshot_larger_than_max_snapshot_bytes_is_refused():
    core, storage = core_with_log(3, [1, 2], [1], HardState(term=2), config=config(max_snapshot_bytes=1000))
    core.step(InstallSnapshot(1, 3, 2, 20, 2, 5000, 0, 0, b"x" * 100))
    assert drain(core, storage) == []
    assert core.snapshots_refused == 1 and not core.snapshot_receiving


def test_5_1_transfer_resumes_after_loss_from_the_acknowledged_offset():
    c, index = lagging_cluster()
    lost: list[InstallSnapshot] = []

    def lose_one(m: Message) -> bool:
        if isinstance(m, InstallSnapshot) and m.offset == 500 and not lost:
            lost.append(m)
            return True
        return False

    for _ in range(60):
        c.cores[1].tick(c.config.heartbeat_interval_ms)
        c.process(1)
        c.deliver_all(drop=lose_one)
    assert lost and c.storages[3].snapshot_index() == index
    offsets = [m.offset for m in chunks(c.sent)]
    assert offsets.count(0) == 1  # never restarted from the beginning
    assert offsets.count(500) == 2  # the lost chunk was resent
    assert c.cores[1].snapshots_sent == 1


def test_5_1_a_stalled_transfer_resends_one_chunk_at_a_time_until_acknowledgements_move():
    c, index = lagging_cluster()
    begin_transfer(c)
    c.sent.clear()

    def lose_chunks(m: Message) -> bool:
        return isinstance(m, InstallSnapshot)  # a link that carries nothing of the snapshot for a while

    intervals = 4
    for _ in range(intervals):
        c.cores[1].tick(c.config.heartbeat_interval_ms)
        c.process(1)
        c.deliver_all(drop=lose_chunks)
    resent = chunks(c.sent)
    # after the first whole window, each interval without progress sends one empty chunk at what was sent
    # ("how much do you hold?", always answered), not the whole window again
    first_window = INFLIGHT_BYTES // CHUNK_BYTES
    pings = [m for m in resent if not m.data]
    assert 1 <= len(pings) <= intervals, [m.offset for m in resent]
    assert all(m.offset == INFLIGHT_BYTES for m in pings), [m.offset for m in pings]
    assert len(resent) <= first_window + intervals, [m.offset for m in resent]
    assert c.cores[1].role == Role.LEADER
    c.run(500)  # acknowledgements move again: the window opens and the transfer completes
    assert c.storages[3].snapshot_index() == index
    assert c.cores[1].status()["progress"][3]["state"] == "replicate"


def test_5_1_a_transfer_whose_answers_were_lost_does_not_stall():
    """The follower holds chunks whose answers were all lost: the leader's acknowledged offset is behind what
    the follower holds, so resending from it would send only duplicates, which the follower does not answer.
    The stalled leader asks with an empty chunk instead, which is always answered, and the transfer completes."""
    c, index = lagging_cluster()
    begin_transfer(c)
    # the chunks arrive; every answer after the first chunk's is lost (offset 0 is always answered, so the
    # acknowledged offset must be past it for the leader's resends to be duplicates only)
    c.deliver_all(drop=lambda m: isinstance(m, SnapshotResponse) and m.received > CHUNK_BYTES)
    assert c.cores[3].snapshot_receiving
    c.run(1000)
    assert c.storages[3].snapshot_index() == index


def test_5_1_transfer_resumes_after_peer_disconnected():
    c, index = lagging_cluster()
    begin_transfer(c)
    c.queue.clear()  # every chunk in flight is lost with the connection
    c.cores[1].peer_disconnected(3)
    c.process(1)
    c.deliver_all()
    assert c.storages[3].snapshot_index() == index
    assert [m.offset for m in chunks(c.sent)].count(0) == 2


def test_5_1_new_leader_abandons_transfer_and_follower_resumes_the_same_snapshot():
    c, index = lagging_cluster()
    got: list[InstallSnapshot] = []

    def half(m: Message) -> bool:
        if isinstance(m, InstallSnapshot):
            got.append(m)
            return len(got) > 20
        return False

    begin_transfer(c)
    c.deliver_all(drop=half)
    assert c.cores[3].status()["snapshot_receiving"]["received_bytes"] == 2000
    c.crash(1)
    for i in (2, 3):
        c.cores[i].peer_disconnected(1)
    sent_before = len(c.sent)
    c.elect(2)
    c.run(300)
    assert c.cores[2].status()["progress"][3]["state"] == "replicate"
    from_2 = chunks(c.sent[sent_before:])
    assert from_2 and from_2[0].offset == 0  # the new leader's progress starts fresh...
    # ...and the follower's buffer is resumed: one window from 0, then from the 2000 bytes it held
    assert sum(len(m.data) for m in from_2) == INFLIGHT_BYTES + len(SNAP_DATA) - 2000
    assert c.storages[3].snapshot() == c.storages[2].snapshot()


def test_5_1_follower_drops_a_partial_snapshot_for_a_newer_one():
    core, storage = core_with_log(3, [1, 2], [1], HardState(term=2))
    core.step(InstallSnapshot(1, 3, 2, 20, 2, 8, zlib.crc32(b"old-data"), 0, b"old-"))
    core.step(InstallSnapshot(2, 3, 3, 30, 3, 8, zlib.crc32(b"new-data"), 4, b"data"))  # new leader, new snapshot
    answers = drain(core, storage)
    assert isinstance(answers[-1], SnapshotResponse) and (answers[-1].index, answers[-1].received) == (30, 0)
    core.step(InstallSnapshot(1, 3, 3, 20, 2, 8, zlib.crc32(b"old-data"), 4, b"data"))  # a late, older chunk
    core.step(InstallSnapshot(2, 3, 3, 30, 3, 8, zlib.crc32(b"new-data"), 0, b"new-data"))
    drain(core, storage)
    assert storage.snapshot() == Snapshot(30, 3, b"new-data") and core.last_index == 30


def test_5_1_crash_mid_install_leaves_the_old_log_and_the_transfer_starts_again():
    c, index = lagging_cluster()
    c.hold_persist.add(3)
    c.run(200)
    assert c.cores[3].last_index == index and c.held[3]
    c.crash(3)  # the install write never happened
    c.hold_persist.discard(3)
    c.restart(3)
    assert c.storages[3].snapshot() is None and c.cores[3].last_index < index
    c.run(500)
    assert c.storages[3].snapshot_index() == index and c.log(3) == c.log(1)


def test_5_1_leader_without_a_saved_snapshot_waits_and_says_so():
    c = Cluster(3, config=config())
    c.elect(1)
    c.isolate(3)
    for k in range(5):
        c.propose(1, b"e%d" % k)
        c.deliver_all()
    index = c.cores[1].commit_index
    c.storages[1].compact(index)  # a log of an older release: compacted, no snapshot saved
    c.heal()
    c.run(300)
    progress = c.cores[1].status()["progress"][3]
    assert progress["state"] == "snapshot" and progress["snapshot_missing"]
    assert not chunks(c.sent)
    c.compact(1, index, b"state")  # a snapshot is saved: the next heartbeat sends it
    c.run(300)
    assert c.storages[3].snapshot() == Snapshot(index, c.cores[1].term_at(index), b"state")
    assert c.cores[1].status()["progress"][3]["state"] == "replicate"


def test_5_1_rejections_while_sending_a_snapshot_are_ignored():
    c, index = lagging_cluster()
    begin_transfer(c)
    c.queue.clear()
    leader = c.cores[1]
    assert leader.status()["progress"][3]["state"] == "snapshot"
    leader.step(AppendResponse(3, 1, leader.term, 2, False, 0, 0))
    c.process(1)
    assert leader.status()["progress"][3]["state"] == "snapshot"
    assert not [m for m in c.queue if isinstance(m, AppendEntries) and m.dst == 3]


def test_5_1_empty_snapshot_is_sent_as_one_empty_chunk():
    c, index = lagging_cluster(data=b"")
    c.run(300)
    sent = chunks(c.sent)
    assert sent[0].offset == 0 and sent[0].data == b"" and sent[0].total == 0
    assert c.storages[3].snapshot() == Snapshot(index, c.cores[1].term_at(index), b"")


@pytest.mark.parametrize("field", ["snapshot_chunk_bytes", "max_snapshot_bytes"])
def test_snapshot_limits_are_validated(field):
    with pytest.raises(RaftConfigError, match=field):
        RaftConfig(**{field: 0})


def test_snapshot_is_cached_while_sent_and_dropped_after():
    c, index = lagging_cluster(n=5)
    begin_transfer(c)
    assert c.cores[1]._snap_cache is not None
    c.run(300)
    assert c.cores[1]._snap_cache is None
    assert c.cores[1].status()["progress"][3]["state"] == "replicate"
    assert c.cores[1].status()["leader"] == 1 and c.cores[1].role == Role.LEADER
    assert ProgressState.SNAPSHOT.name == "SNAPSHOT"
