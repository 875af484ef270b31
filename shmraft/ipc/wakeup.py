"""Waiting without burning a core: a bounded spin, then a posix semaphore, with a `waiting` flag.

One side of a ring (the reader waiting for data, or the writer waiting for space) waits; the other side
notifies after it publishes. The protocol is the classic flag + semaphore ("eventcount"):

    waiter:   flag = 1; FENCE; if ready(): done  else sem_wait(bounded timeout); flag = 0
    notifier: publish (store position); FENCE; if flag: sem_post

Without the two fences this is Dekker's pattern, which x86-64 does NOT order: a store followed by a load
of another address may be reordered (the store waits in the store buffer), so the waiter could miss the
new position while the notifier misses the flag, and the waiter would sleep with data available (a lost
wake-up). Python cannot emit MFENCE, so `full_fence()` executes a locked instruction through C: acquiring
and releasing an uncontended CPython lock is `sem_trywait` + `sem_post` on glibc, i.e. `lock cmpxchg` and
`lock xadd`, each a full barrier on x86-64 (about 80 ns). The bounded semaphore timeout
(`wait_timeout_ms`) remains as a safety net should that implementation detail ever change: a missed post
then costs at most one timeout of latency, never a hang. Posting only when the flag is set keeps the
semaphore count small (it would otherwise grow by one per push while nobody waits).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import posix_ipc

SPIN_ITERATIONS_DEFAULT: Final = 64  # readiness checks before sleeping: about 5-10 us of spinning
WAIT_TIMEOUT_MS_DEFAULT: Final = 100.0  # longest single sleep on the semaphore (safety net, see above)

_FENCE_LOCK: Final = threading.Lock()


def full_fence() -> None:
    """A StoreLoad barrier: an uncontended lock round trip runs two locked instructions (x86-64 glibc)."""
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


def deadline_after(timeout_ms: float | None) -> float | None:
    """Monotonic deadline for a timeout in ms; None means wait forever."""
    if timeout_ms is None:
        return None
    if timeout_ms < 0:
        raise ValueError(f"timeout_ms: expected >= 0 or None, got {timeout_ms}")
    return time.monotonic() + timeout_ms / 1000.0


class Doorbell:
    """The waiting side's flag (a u64 in the control block, written only by the waiter) and semaphore."""

    __slots__ = ("_ctl", "_flag", "_sem", "spin_iterations", "wait_timeout_ms", "sleeps")

    def __init__(
        self,
        ctl: np.ndarray,
        flag_index: int,
        sem: posix_ipc.Semaphore,
        spin_iterations: int = SPIN_ITERATIONS_DEFAULT,
        wait_timeout_ms: float = WAIT_TIMEOUT_MS_DEFAULT,
    ) -> None:
        assert 0 <= spin_iterations <= 1_000_000, spin_iterations
        assert 0 < wait_timeout_ms <= 60_000, wait_timeout_ms
        self._ctl = ctl
        self._flag = flag_index
        self._sem = sem
        self.spin_iterations = spin_iterations
        self.wait_timeout_ms = wait_timeout_ms
        self.sleeps = 0  # semaphore waits so far (a figure for the status tool and the tests)

    def wait(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Block until `ready()` or the deadline (None: forever). Returns ready(). Waiter side only."""
        for _ in range(self.spin_iterations):
            if ready():
                return True
        ctl, flag, sem = self._ctl, self._flag, self._sem
        slice_s = self.wait_timeout_ms / 1000.0
        while True:
            ctl[flag] = 1
            full_fence()  # the flag store must be visible before we load the position (Dekker)
            if ready():
                ctl[flag] = 0
                return True
            if deadline is None:
                wait_s = slice_s
            else:
                wait_s = min(slice_s, deadline - time.monotonic())
                if wait_s <= 0:
                    ctl[flag] = 0
                    return False
            self.sleeps += 1
            try:
                sem.acquire(wait_s)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # timed out, or a signal (e.g. SIGTERM, whose handler sets a flag): re-check
            ctl[flag] = 0
            if ready():
                return True

    def notify(self) -> None:
        """Notifier side, after publishing: post if the waiter announced that it sleeps."""
        full_fence()  # our position store must be visible before we load the flag (Dekker)
        if self._ctl.item(self._flag):
            self._sem.release()

    def poke(self) -> None:
        """Post unconditionally (closing a ring: the waiter must notice even if it is between checks)."""
        self._sem.release()
