"""The raft worker's persist thread (workers/walsync.WalSyncer) over a real RocksDB log: every submitted write
is reported durable once and only after a sync that started after it, submits during a sync share the next
one (group commit), a failed sync is raised on the caller's thread, and close never hangs."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmraft.raft.types import Entry, HardState
from shmraft.storage.rocks import RocksLogStorage, StorageIOError
from shmraft.workers.walsync import WalSyncer

WAIT_S = 10.0


class GatedSync:
    """The storage's real `sync_wal`, held at a gate the test opens; records the last index each sync covered."""

    def __init__(self, storage: RocksLogStorage) -> None:
        self.storage = storage
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.covered: list[int] = []
        self.fail: StorageIOError | None = None

    def __call__(self) -> None:
        last = self.storage.last_index()  # everything written before the sync started
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        self.storage.sync_wal()
        self.covered.append(last)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[RocksLogStorage, GatedSync, int, int]]:
    storage = RocksLogStorage(tmp_path / "log", retain_entries_max=None, retain_bytes_max=None)
    storage.append([Entry(1, 1, b"first")], HardState(term=1))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    yield storage, GatedSync(storage), wake_r, wake_w
    storage.close()
    os.close(wake_r)
    os.close(wake_w)


def write(storage: RocksLogStorage, syncer: WalSyncer) -> None:
    index = storage.last_index() + 1
    storage.append([Entry(index, 1, b"e%d" % index)], None, sync=False)
    syncer.submit()


def take_until(syncer: WalSyncer, wake_r: int, want: int) -> tuple[int, int]:
    """Wait on the wake pipe, as the raft loop does, until `want` writes were reported; (writes, syncs)."""
    got = syncs = 0
    while got < want:
        ready, _, _ = select.select([wake_r], [], [], WAIT_S)
        assert ready, f"no wake-up within {WAIT_S} s; {got} of {want} writes reported"
        try:
            os.read(wake_r, 4096)
        except BlockingIOError:
            pass
        n, s, _ns = syncer.take()
        got += n
        syncs += s
    return got, syncs


def test_every_write_is_reported_durable_once(parts) -> None:
    storage, sync, wake_r, wake_w = parts
    syncer = WalSyncer(sync, wake_w)
    try:
        for _ in range(50):
            write(storage, syncer)
            assert take_until(syncer, wake_r, 1)[0] == 1
            assert sync.covered[-1] == storage.last_index()  # the sync that reported it started after it
        assert syncer.pending == 0 and syncer.take()[0] == 0
    finally:
        syncer.close()


def test_writes_submitted_during_a_sync_share_the_next_one(parts) -> None:
    storage, sync, wake_r, wake_w = parts
    syncer = WalSyncer(sync, wake_w)
    try:
        sync.gate.clear()
        write(storage, syncer)
        assert sync.entered.wait(WAIT_S)
        for _ in range(5):  # while the first sync is held
            write(storage, syncer)
        assert syncer.pending == 6 and syncer.take()[0] == 0  # nothing is durable before its sync returns
        sync.gate.set()
        got, syncs = take_until(syncer, wake_r, 6)
        assert got == 6 and syncs == 2  # the held one, then one for the five
        assert sync.covered == [2, 7]
    finally:
        sync.gate.set()
        syncer.close()


def test_a_failed_sync_is_raised_by_take_and_nothing_it_covered_is_reported(parts) -> None:
    storage, sync, wake_r, wake_w = parts
    sync.fail = StorageIOError("disk gone", disk_full=False)
    syncer = WalSyncer(sync, wake_w)
    try:
        write(storage, syncer)
        assert select.select([wake_r], [], [], WAIT_S)[0], "no wake-up after the failed sync"
        with pytest.raises(StorageIOError, match="disk gone"):
            syncer.take()
        assert syncer.pending == 1
    finally:
        syncer.close()


def test_close_returns_when_idle_and_after_a_sync_in_progress(parts) -> None:
    storage, sync, _wake_r, wake_w = parts
    WalSyncer(sync, wake_w).close()
    syncer = WalSyncer(sync, wake_w)
    sync.gate.clear()
    write(storage, syncer)
    assert sync.entered.wait(WAIT_S)
    closer = threading.Thread(target=syncer.close)
    closer.start()
    sync.gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive(), "close hung behind a sync in progress"
