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

A reader whose thread also serves sockets cannot put a semaphore in `select`. It waits on a `WakeSocket`
instead: a non-blocking AF_UNIX datagram socket bound to an abstract address named by a random token that
the reader publishes in the ring's control block. The flag then says WAITING_SOCKET, and the notifier sends
one empty datagram to that address instead of posting the semaphore: the producer wakes the consumer's
selector directly (one `sendto`, one epoll wake), with no helper thread in between. Same flag, same two
fences, so the same proof: either the waiter sees the new position when it re-checks after arming, or
the notifier sees the flag and sends. Datagrams queue in the socket, so a send before the waiter reaches
`select` is not lost either; the waiter drains them after it wakes.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import posix_ipc

SPIN_ITERATIONS_DEFAULT: Final = 64  # readiness checks before sleeping: about 5-10 us of spinning
WAIT_TIMEOUT_MS_DEFAULT: Final = 100.0  # longest single sleep on the semaphore (safety net, see above)
WAITING_SEMAPHORE: Final = 1  # flag value: the waiter sleeps on the semaphore (post it)
WAITING_SOCKET: Final = 2  # flag value: the waiter sits in select on its WakeSocket (send it a datagram)
WAKE_ADDRESS_PREFIX: Final = b"\0shmraft-wake-"  # abstract AF_UNIX namespace: no file, gone with the socket
WAKE_DRAIN_BYTES: Final = 256  # receive buffer of one drain call (the datagrams are empty)

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


def wake_address(token: int) -> bytes:
    """The abstract socket address of a reader's WakeSocket (token: a random nonzero u64)."""
    return WAKE_ADDRESS_PREFIX + b"%016x" % token


class WakeSocket:
    """The waiter's end of a socket wake-up: a bound, non-blocking datagram socket a selector can watch.

    The token (random, 64 bits) makes the address unguessable before it is bound, so no other process can
    take it first; it is published only in the ring's control block (mode 0600). A process that reads the
    address from /proc/net/unix can send datagrams to it, which costs us spurious wake-ups and nothing else:
    a wake-up is only a hint to look at the ring again.
    """

    __slots__ = ("token", "sock")

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            while True:
                self.token = int.from_bytes(os.urandom(8), "little")
                if not self.token:
                    continue
                try:
                    self.sock.bind(wake_address(self.token))
                    break
                except OSError as exc:  # EADDRINUSE: 1 in 2**64; try another token
                    if exc.errno != errno.EADDRINUSE:
                        raise
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Receive every queued wake-up datagram (non-blocking). Returns how many."""
        n = 0
        recv = self.sock.recv
        while True:
            try:
                recv(WAKE_DRAIN_BYTES)
            except (BlockingIOError, InterruptedError):
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()


class _WakeSender:
    """The notifier's end: one unbound datagram socket, the last address built from the token cached."""

    __slots__ = ("_sock", "_token", "_addr")

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._token = 0
        self._addr = b""

    def send(self, token: int) -> None:
        """Send one empty datagram to the waiter of `token`. A full queue means a wake-up is pending
        already, and a missing socket means the waiter is gone: both are fine to ignore."""
        if not token:
            return
        if token != self._token:
            self._token, self._addr = token, wake_address(token)
        sock = self._sock
        if sock is None:
            sock = self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
        try:
            sock.sendto(b"", self._addr)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError, InterruptedError):
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Doorbell:
    """The waiting side's flag (a u64 in the control block, written only by the waiter) and semaphore."""

    __slots__ = ("_ctl", "_flag", "_sem", "_token", "_sender", "spin_iterations", "wait_timeout_ms", "sleeps")

    def __init__(
        self,
        ctl: np.ndarray,
        flag_index: int,
        sem: posix_ipc.Semaphore,
        spin_iterations: int = SPIN_ITERATIONS_DEFAULT,
        wait_timeout_ms: float = WAIT_TIMEOUT_MS_DEFAULT,
        token_index: int | None = None,
    ) -> None:
        """`token_index`: the control word where the waiter publishes its WakeSocket token (None: the
        waiter only ever sleeps on the semaphore)."""
        assert 0 <= spin_iterations <= 1_000_000, spin_iterations
        assert 0 < wait_timeout_ms <= 60_000, wait_timeout_ms
        self._ctl = ctl
        self._flag = flag_index
        self._sem = sem
        self._token = token_index
        self._sender = _WakeSender() if token_index is not None else None
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
            ctl[flag] = WAITING_SEMAPHORE
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
        """Notifier side, after publishing: wake the waiter if it announced that it waits, the way it
        said (semaphore post, or a datagram to its WakeSocket)."""
        full_fence()  # our position store must be visible before we load the flag (Dekker)
        waiting = self._ctl.item(self._flag)
        if waiting:
            if waiting == WAITING_SOCKET and self._sender is not None:
                self._sender.send(self._ctl.item(self._token))
            else:
                self._sem.release()

    def poke(self) -> None:
        """Wake unconditionally (closing a ring: the waiter must notice even if it is between checks)."""
        self._sem.release()
        if self._sender is not None:
            self._sender.send(self._ctl.item(self._token))

    def close(self) -> None:
        """Close the notifier's socket (if one was opened)."""
        if self._sender is not None:
            self._sender.close()
