"""The raft worker's persist thread: WAL fsyncs off the loop thread, so that heartbeats, votes and the
answers to them keep leaving while the disk is slow (docs/DESIGN.md "Timing on a busy machine").

The loop thread still writes every Ready to RocksDB itself, in order, without sync (`NodeLog.append(...,
sync=False)`: fast, and all the log's Python state stays on one thread); it then `submit`s a sync. This thread
runs `sync_wal` (RocksDB's FlushWAL with sync: one fsync covering every write issued before it; rocksdict
releases the GIL in it, which it does not in a synced `write`), so one fsync serves every write submitted
while the previous one ran (group commit, as before). The loop `take`s the number of writes made durable
and reports each to its ReadyDriver (`durable()`): only then do acknowledgements and votes leave, and does
the leader count itself. A failed sync is raised by `take` on the loop thread (the storage-fault path).
A byte on `wake_fd` wakes the loop's select when a sync completes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from shmraft.storage.rocks import StorageError


class WalSyncer:
    """One thread that syncs the WAL on request; counts of submitted and durable writes in between."""

    def __init__(self, sync: Callable[[], None], wake_fd: int, name: str = "wal-sync") -> None:
        self._sync = sync
        self._wake_fd = wake_fd
        self._cond = threading.Condition()
        self._submitted = 0  # writes handed over, in all
        self._durable = 0  # writes a completed sync covered, in all
        self._taken = 0  # writes already reported by `take`
        self._syncs = 0  # fsyncs done (one may cover many writes), not yet reported
        self._sync_ns = 0  # their time, not yet reported
        self._error: StorageError | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Writes submitted and not yet reported durable."""
        return self._submitted - self._taken

    def submit(self) -> None:
        """One more write was issued (unsynced): sync it."""
        with self._cond:
            self._submitted += 1
            self._cond.notify()

    def take(self) -> tuple[int, int, int]:
        """(writes made durable since the last call, fsyncs done, their nanoseconds); raises the sync's error."""
        with self._cond:
            if self._error is not None:
                raise self._error
            n = self._durable - self._taken
            self._taken = self._durable
            syncs, ns = self._syncs, self._sync_ns
            self._syncs = self._sync_ns = 0
        return n, syncs, ns

    def close(self) -> None:
        """Stop after the sync in progress (if any); the caller may close the storage once this returns."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._submitted == self._durable:
                    self._cond.wait()
                if self._stop:
                    return
                target = self._submitted
            t0 = time.perf_counter_ns()
            try:
                self._sync()
            except StorageError as exc:
                with self._cond:
                    self._error = exc
                self._wake()
                return
            with self._cond:
                self._durable = target
                self._syncs += 1
                self._sync_ns += time.perf_counter_ns() - t0
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_fd, b"\0")
        except (BlockingIOError, OSError):  # full pipe: a wake-up is pending anyway; closed: stopping
            pass
