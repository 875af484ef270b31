"""The shared Ready driver (shmraft/raft/driver.py): the order of sends, writes, acknowledgements and the
report back to the core, with synchronous I/O (the worker) and asynchronous I/O (the simulator)."""

from __future__ import annotations

import pytest

from shmraft.raft.driver import ReadyDriver
from shmraft.raft.errors import InvariantError
from shmraft.raft.messages import AppendEntries, AppendResponse, Heartbeat, HeartbeatResponse, Message, VoteResponse
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, Snapshot
from shmraft.sim.harness import core_with_log


class Recorder:
    """Records the driver's I/O calls in order; `sync` decides whether writes are durable on return."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.events: list[tuple] = []
        self.now_ms = 0.0

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            self.events.append(("send", type(m).__name__, m.dst))

    def persist(self, entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
        self.events.append(("persist", [e.index for e in entries], hard_state, *([snapshot] if snapshot else [])))
        return self.sync


class FakeCore:
    def __init__(self, term: int = 0) -> None:
        self.term = term  # the persisted term at start (the driver's first durable term)
        self.persisted_calls: list[tuple[int, int]] = []
        self.snapshot_calls: list[tuple[int, int]] = []
        self.ticks: list[int] = []

    def persisted(self, index: int, term: int) -> None:
        self.persisted_calls.append((index, term))

    def snapshot_persisted(self, index: int, term: int) -> None:
        self.snapshot_calls.append((index, term))

    def tick(self, elapsed_ms: int) -> None:
        self.ticks.append(elapsed_ms)


def make(sync: bool) -> tuple[ReadyDriver, Recorder, FakeCore]:
    io, core = Recorder(sync), FakeCore()
    return ReadyDriver(core, io.send, io.persist, lambda: io.now_ms), io, core  # type: ignore[arg-type]


def ready(entries: list[Entry] = (), hard: HardState | None = None, after: list[Message] = ()) -> Ready:  # type: ignore[assignment]
    return Ready(
        hard_state=hard,
        entries=list(entries),
        messages=[Heartbeat(1, 2, 1, 0)],
        messages_after_persist=list(after),
    )


ACK = AppendResponse(1, 2, 1, 5, True)


def test_sync_io_sends_then_writes_then_acknowledges_then_reports():
    driver, io, core = make(sync=True)
    driver.handle(ready([Entry(5, 1, b"x")], HardState(1, 0, 0), [ACK]))
    assert io.events == [
        ("send", "Heartbeat", 2),
        ("persist", [5], HardState(1, 0, 0)),
        ("send", "AppendResponse", 2),
    ]
    assert core.persisted_calls == [(5, 1)]
    assert driver.pending_writes == 0


def test_async_io_holds_acknowledgements_until_the_write_and_every_earlier_write_is_durable():
    driver, io, core = make(sync=False)
    driver.handle(ready([Entry(5, 1, b"x")], None, [ACK]))
    driver.handle(ready((), None, [AppendResponse(1, 2, 1, 5, True)]))  # nothing to write: still waits
    assert [e[0] for e in io.events] == ["send", "persist", "send"]  # only the two leader heartbeats
    assert core.persisted_calls == [] and driver.pending_writes == 2
    driver.durable()
    assert [e[1] for e in io.events if e[0] == "send"] == ["Heartbeat", "Heartbeat", "AppendResponse", "AppendResponse"]
    assert core.persisted_calls == [(5, 1)] and driver.pending_writes == 0


def test_nothing_to_write_and_nothing_pending_sends_at_once():
    driver, io, _ = make(sync=False)
    driver.handle(ready((), None, [ACK]))
    assert [e[1] for e in io.events] == ["Heartbeat", "AppendResponse"]


def test_heartbeat_and_pre_vote_answers_leave_while_a_write_is_pending_acks_and_votes_wait():
    """A slow fsync must not silence a follower towards its leader's check-quorum or a pre-candidate: the
    answers that promise nothing pending leave at once; an ack, a real vote and a heartbeat answer in a term
    not yet durable wait for the write."""
    driver, io, core = make(sync=False)
    driver.handle(ready([Entry(5, 1, b"x")], HardState(1, 0, 0), [ACK]))  # term 1 pending (durable: 0)
    driver.handle(
        ready(
            (),
            None,
            [HeartbeatResponse(1, 2, 1), VoteResponse(1, 3, 2, True, True), VoteResponse(1, 3, 1, False, False)],
        )
    )
    sent = [e[1] for e in io.events if e[0] == "send"]
    assert sent == ["Heartbeat", "Heartbeat", "VoteResponse"] and driver.sent_early == 1  # the pre-vote only
    driver.durable()  # term 1 durable: what waited leaves, in order
    sent = [e[1] for e in io.events if e[0] == "send"]
    assert sent[3:] == ["AppendResponse", "HeartbeatResponse", "VoteResponse"]
    driver.handle(ready([Entry(6, 1, b"y")], None, [ACK]))
    driver.handle(ready((), None, [HeartbeatResponse(1, 2, 1)]))  # term 1 is durable now: at once
    assert [e[1] for e in io.events if e[0] == "send"][-1] == "HeartbeatResponse" and driver.sent_early == 2
    assert core.persisted_calls == [(5, 1)] and driver.pending_writes == 2  # the write, and the empty Ready after it


def test_durable_without_a_pending_write_is_an_invariant_error():
    driver, _, _ = make(sync=False)
    with pytest.raises(InvariantError):
        driver.durable()


def test_tick_advances_the_core_by_whole_milliseconds_of_the_injected_clock():
    driver, io, core = make(sync=True)
    io.now_ms = 0.4
    driver.tick()
    io.now_ms = 7.9
    driver.tick()
    io.now_ms = 8.2
    driver.tick()
    assert core.ticks == [7, 1]


def test_a_real_follower_core_acknowledges_only_after_the_driver_reports_durability():
    core, storage = core_with_log(2, [1, 3], [1, 1])
    sent: list[Message] = []
    writes: list[tuple[list[Entry], HardState | None]] = []

    def persist(entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
        writes.append((entries, hard_state))
        return False

    driver = ReadyDriver(core, sent.extend, persist, lambda: 0.0)
    core.step(AppendEntries(1, 2, 1, 2, 1, (Entry(3, 1, b"3"),), 2))
    while core.has_ready():
        driver.handle(core.ready())
    assert not any(isinstance(m, AppendResponse) for m in sent)
    entries, hard_state = writes[0]
    storage.append(entries, hard_state)
    driver.durable()
    acks = [m for m in sent if isinstance(m, AppendResponse)]
    assert len(acks) == 1 and acks[0].index == 3 and acks[0].success
    assert core.status()["stable_index"] == 3


SNAP = Snapshot(7, 2, b"state")


def test_a_snapshot_write_is_reported_to_the_core_and_acknowledged_only_once_durable():
    driver, io, core = make(sync=False)
    driver.handle(Ready(hard_state=HardState(2, 0, 7), snapshot=SNAP, messages_after_persist=[ACK]))
    assert ("persist", [], HardState(2, 0, 7), SNAP) in io.events
    assert not [e for e in io.events if e[0] == "send"] and core.snapshot_calls == []
    driver.durable()
    assert core.snapshot_calls == [(7, 2)] and io.events[-1] == ("send", "AppendResponse", 2)
    assert core.persisted_calls == []  # no entries in a snapshot's Ready


def test_a_synchronous_snapshot_write_reports_at_once_and_in_order_after_earlier_writes():
    driver, io, core = make(sync=False)
    driver.handle(ready([Entry(3, 1, b"x")], HardState(1, 0, 0)))
    driver.handle(Ready(hard_state=HardState(2, 0, 7), snapshot=SNAP, messages_after_persist=[ACK]))
    driver.durable()  # the entries' write
    assert core.persisted_calls == [(3, 1)] and core.snapshot_calls == []
    driver.durable()
    assert core.snapshot_calls == [(7, 2)]
    sync_driver, _, sync_core = make(sync=True)
    sync_driver.handle(Ready(hard_state=HardState(2, 0, 7), snapshot=SNAP))
    assert sync_core.snapshot_calls == [(7, 2)]


def test_a_real_follower_core_counts_an_installed_snapshot_durable_only_when_the_driver_says_so():
    import zlib

    from shmraft.raft.messages import InstallSnapshot

    core, storage = core_with_log(2, [1, 3], [1], HardState(term=2))
    writes: list[Snapshot | None] = []

    def persist(entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
        writes.append(snapshot)
        if snapshot is not None and hard_state is not None:
            storage.install_snapshot(snapshot, hard_state)
        return False

    sent: list[Message] = []
    driver = ReadyDriver(core, sent.extend, persist, lambda: 0.0)
    core.step(InstallSnapshot(1, 2, 2, 7, 2, 5, zlib.crc32(b"state"), 0, b"state"))
    driver.handle(core.ready())
    assert writes == [SNAP] and sent == [] and core.status()["stable_index"] == 0
    driver.durable()
    assert core.status()["stable_index"] == 7 and [type(m).__name__ for m in sent] == ["AppendResponse"]
