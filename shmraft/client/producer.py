"""The pipelined producer: the thread-safe front (send, send_many, flush, close) and its I/O thread.

`send()` returns a future that resolves with the event's offset once committed; `send_many()` takes a list
and returns one future of all their offsets (one lock acquisition and one future per call: the cheap way to
produce many events). The front gathers events into the open batch and cuts it into a request (at
`batch_events`, `batch_bytes` or after `linger_ms`; while the window is full the open batch keeps growing
instead). Everything after the cut (sequences, the window, answers in any order, idempotent resends through
failovers, probing a silent leader, giving up) is the sans-I/O `ProducerMachine` (machine.py); the I/O
thread here only moves bytes between it and the socket, tells it the time, and hands its questions about
the leader to the client's `LeaderTracker` (leader.py).
"""

from __future__ import annotations

import bisect
import itertools
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from shmraft.client.connection import Connection
from shmraft.client.errors import (
    BufferFull,
    CommitTimeout,
    ConnectionFailed,
    NoNodeReachable,
    ProducerClosed,
    ShmraftError,
    Unauthorized,
)
from shmraft.client.futures import BatchFuture, EventFuture, completed, run_callbacks
from shmraft.client.leader import ATTEMPT_ANSWER_TIMEOUT_S, FIND_LEADER_TIMEOUT_S, LeaderTracker
from shmraft.client.machine import Outcome, ProducerMachine
from shmraft.client.sizes import (
    EVENT_OVERHEAD_BYTES,
    PRODUCE_HEAD_BYTES,
    REQUEST_BYTES_MAX,
    REQUEST_EVENT_BYTES_MAX,
    REQUEST_EVENTS_MAX,
    as_bytes,
)

WINDOW_DEFAULT: Final = 8  # requests in flight on the connection
WINDOW_MAX: Final = 256
BATCH_EVENTS_DEFAULT: Final = 1024  # events per request
BATCH_BYTES_DEFAULT: Final = 256 * 1024  # request body bytes
LINGER_MS_DEFAULT: Final = 1.0  # the longest an event waits in the producer for company
LINGER_MS_MAX: Final = 10_000.0
BUFFER_EVENTS_DEFAULT: Final = 100_000  # events accepted by send() and not yet resolved
BUFFER_BYTES_DEFAULT: Final = 64 * 1024 * 1024
JOIN_TIMEOUT_S: Final = 5.0  # close() waits this long for the I/O thread once everything is resolved


# A run of a request's events that belongs to one future: [future, first position in the future,
# first position in the request, count]. A list, because the count of a send() group is set when it closes.
_Part = list[Any]


def check_producer_options(
    window: int, batch_events: int, batch_bytes: int, linger_ms: float, buffer_events: int, buffer_bytes: int
) -> None:
    """The options every pipelined producer takes (blocking and asyncio), checked: ValueError naming the bad one."""
    if not 1 <= window <= WINDOW_MAX:
        raise ValueError(f"window: expected 1..{WINDOW_MAX}, got {window}")
    if not 1 <= batch_events <= REQUEST_EVENTS_MAX:
        raise ValueError(f"batch_events: expected 1..{REQUEST_EVENTS_MAX}, got {batch_events}")
    if not 1 <= batch_bytes <= REQUEST_BYTES_MAX:
        raise ValueError(f"batch_bytes: expected 1..{REQUEST_BYTES_MAX}, got {batch_bytes}")
    if not 0 <= linger_ms <= LINGER_MS_MAX:
        raise ValueError(f"linger_ms: expected 0..{LINGER_MS_MAX}, got {linger_ms}")
    if buffer_events < 1 or buffer_bytes < 1:
        raise ValueError("buffer_events and buffer_bytes must be positive")


class ProducerHost(Protocol):
    """What a Producer needs of its Client (so that this file does not import client.py)."""

    leaders: LeaderTracker
    timeout_s: float
    connect_timeout_s: float


class Producer:
    """Pipelined, idempotent producer. Use as a context manager, or call close() (which flushes).

    `window` requests in flight; a request holds up to `batch_events` events / `batch_bytes` body bytes
    and is cut after `linger_ms` at the latest (unless the window is full: then the open batch keeps
    growing until it is full or a request is answered); send() and send_many() block while
    `buffer_events` / `buffer_bytes` are taken by unresolved events (then raise BufferFull after the
    client's timeout; a send_many larger than the buffer waits until the buffer is empty). Each request must
    be acknowledged within the client's `timeout_s`, else its futures fail with CommitTimeout.
    """

    def __init__(
        self,
        client: ProducerHost,
        *,
        window: int = WINDOW_DEFAULT,
        batch_events: int = BATCH_EVENTS_DEFAULT,
        batch_bytes: int = BATCH_BYTES_DEFAULT,
        linger_ms: float = LINGER_MS_DEFAULT,
        buffer_events: int = BUFFER_EVENTS_DEFAULT,
        buffer_bytes: int = BUFFER_BYTES_DEFAULT,
        producer_id: int | None = None,
    ) -> None:
        check_producer_options(window, batch_events, batch_bytes, linger_ms, buffer_events, buffer_bytes)
        self._client = client
        self._window = window
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._linger_s = linger_ms / 1000
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        # the requests after the cut, and all their I/O decisions (guarded by the lock below)
        self._machine = ProducerMachine(
            window=window,
            producer_id=secrets.randbits(64) if producer_id is None else producer_id,
            attempt_timeout_s=ATTEMPT_ANSWER_TIMEOUT_S,
        )
        self._attempt_timeout_s = ATTEMPT_ANSWER_TIMEOUT_S  # read here, so a test can set this module's value
        # One plain lock guards the state below; send() takes it directly (cheaper than the Condition's
        # Python-level __enter__). The Condition on it is shared by flush(), blocked senders and every future.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        # the open batch: events handed to send()/send_many() and not yet cut into a request
        self._open: list[bytes] = []
        self._open_parts: list[_Part] = []
        self._open_bytes = PRODUCE_HEAD_BYTES
        self._open_since = 0.0
        self._group: BatchFuture | None = None  # the future shared by send() calls into the open batch's last part
        self._buffered_events = 0  # accepted by send() and not yet resolved
        self._buffered_bytes = 0
        self._closing = False
        self._fatal: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"shmraft-producer-{self._machine.producer_id:016x}", daemon=True
        )
        self._thread.start()

    # --- public -----------------------------------------------------------------------------------------

    @property
    def producer_id(self) -> int:
        """The current producer id (a fresh one is drawn after the producer gives up on a request)."""
        return self._machine.producer_id

    def send(
        self, event: bytes | bytearray | memoryview | str, callback: Callable[[EventFuture], object] | None = None
    ) -> EventFuture:
        """Queue one event; the future resolves with its offset once committed (or fails with a ShmraftError).

        `callback(future)` runs once it is resolved (in the I/O thread). For many events, send_many() is cheaper.
        """
        if type(event) is not bytes or len(event) > REQUEST_EVENT_BYTES_MAX:
            event = as_bytes(event)
        n = len(event)
        wake = False
        with self._lock:
            if (
                self._buffered_events >= self._buffer_events
                or self._buffered_bytes + n > self._buffer_bytes
                or self._closing
                or self._fatal is not None
            ):
                self._wait_for_room(1, n)
            group = self._group
            if (
                group is None
                or len(self._open) >= self._batch_events
                or self._open_bytes + n + EVENT_OVERHEAD_BYTES > self._batch_bytes
            ):
                wake = self._new_group(n + EVENT_OVERHEAD_BYTES)
                group = self._group
                assert group is not None
            index = group._n
            group._n = index + 1
            self._open.append(event)
            self._open_bytes += n + EVENT_OVERHEAD_BYTES
            self._buffered_events += 1
            self._buffered_bytes += n
            if len(self._open) >= self._batch_events or self._open_bytes >= self._batch_bytes:
                self._cut()
                wake = True
        if wake:
            self._wake()
        future = EventFuture(group, index)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def send_many(self, events: Iterable[bytes | bytearray | memoryview | str]) -> BatchFuture:
        """Queue events in order; the future resolves with the list of their offsets once all are committed.

        One lock acquisition and one future for the whole call. The events may go out in several requests;
        if any of them fails, the future fails with that error (events of the other requests may be
        committed).
        """
        data = events if type(events) is list else list(events)
        if not data:
            return completed([], self._cv)
        if set(map(type, data)) != {bytes}:
            data = [as_bytes(e) for e in data]
        lens = list(map(len, data))
        if max(lens) > REQUEST_EVENT_BYTES_MAX:
            as_bytes(data[lens.index(max(lens))])  # raises TooLarge
        total = sum(lens)
        future = BatchFuture(self._cv, len(data))
        with self._lock:
            if (
                self._buffered_events + len(data) > self._buffer_events
                or self._buffered_bytes + total > self._buffer_bytes
                or self._closing
                or self._fatal is not None
            ):
                self._wait_for_room(len(data), total)
            wake = self._add_many(data, lens, future)
            self._buffered_events += len(data)
            self._buffered_bytes += total
        if wake:
            self._wake()
        return future

    def flush(self, timeout_s: float | None = None) -> None:
        """Send what is buffered now and wait until every event sent so far is resolved (success or error).

        Raises CommitTimeout if `timeout_s` passes first (the events stay in flight).
        """
        with self._cv:
            if self._open:
                self._cut()
            self._wake()
            if not self._cv.wait_for(lambda: self._buffered_events == 0 or not self._thread.is_alive(), timeout_s):
                raise CommitTimeout(f"flush: {self._buffered_events} events unresolved after {timeout_s} s")

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop the I/O thread and close the connection. Further send() raise ProducerClosed.

        Every event is resolved within the client's timeout, so this returns; with `timeout_s` it raises
        CommitTimeout sooner and the I/O thread finishes on its own.
        """
        with self._cv:
            self._closing = True
        self.flush(timeout_s)
        self._wake()
        self._thread.join(JOIN_TIMEOUT_S)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- called with the lock held -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise ProducerClosed(f"producer failed: {self._fatal}")
        if self._closing:
            raise ProducerClosed("producer is closed")

    def _wait_for_room(self, events: int, nbytes: int) -> None:
        """Block until `events` events of `nbytes` fit the buffer (or it is empty); raise if closed or too long."""
        deadline = time.monotonic() + self._client.timeout_s
        while self._buffered_events > 0 and (
            self._buffered_events + events > self._buffer_events or self._buffered_bytes + nbytes > self._buffer_bytes
        ):
            self._check_open()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or threading.current_thread() is self._thread:
                raise BufferFull(
                    f"producer buffer full ({self._buffered_events} events, {self._buffered_bytes} bytes unresolved)"
                )
            self._cv.wait(remaining)
        self._check_open()

    def _start_open(self) -> None:
        if not self._open:
            self._open_since = time.monotonic()

    def _close_group(self) -> None:
        """The send() group stops growing: its part's count is final."""
        group = self._group
        if group is not None:
            part = self._open_parts[-1]
            assert part[0] is group
            part[3] = group._n
            self._group = None

    def _new_group(self, cost: int) -> bool:
        """A fresh send() group at the end of the open batch (cut first if `cost` does not fit); True: wake."""
        wake = False
        if self._open and (len(self._open) >= self._batch_events or self._open_bytes + cost > self._batch_bytes):
            self._cut()
            wake = True
        self._close_group()
        if not self._open:
            self._open_since = time.monotonic()
            wake = True
        group = BatchFuture(self._cv, 0)
        self._open_parts.append([group, 0, len(self._open), 0])
        self._group = group
        return wake

    def _add_many(self, data: list[bytes], lens: list[int], future: BatchFuture) -> bool:
        """Append `data` to the open batch, cutting full batches on the way; True if the I/O thread must wake."""
        self._close_group()
        # ends[j]: body bytes of data[:j] with their length fields; a run i..j costs ends[j] - ends[i]
        ends = list(itertools.accumulate(lens, lambda acc, n: acc + n + EVENT_OVERHEAD_BYTES, initial=0))
        wake = False
        i, count = 0, len(data)
        while i < count:
            room_events = self._batch_events - len(self._open)
            room_bytes = self._batch_bytes - self._open_bytes
            j = min(i + room_events, count, bisect.bisect_right(ends, ends[i] + room_bytes, lo=i) - 1)
            if j <= i:
                if self._open:
                    self._cut()
                    wake = True
                    continue
                j = i + 1  # one event larger than batch_bytes goes alone
            if not self._open:
                self._open_since = time.monotonic()
                wake = True
            self._open_parts.append([future, i, len(self._open), j - i])
            self._open.extend(data[i:j])
            self._open_bytes += ends[j] - ends[i]
            i = j
            if len(self._open) >= self._batch_events or self._open_bytes >= self._batch_bytes:
                self._cut()
                wake = True
        return wake

    def _cut(self) -> None:
        """Turn the open batch into a request with the next sequences."""
        self._close_group()
        events, parts = self._open, self._open_parts
        nbytes = self._open_bytes - PRODUCE_HEAD_BYTES - EVENT_OVERHEAD_BYTES * len(events)
        self._open, self._open_parts, self._open_bytes = [], [], PRODUCE_HEAD_BYTES
        self._machine.submit(events, parts, nbytes, self._open_since, self._client.timeout_s)

    # --- the I/O thread ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def _complete(self, outcomes: list[Outcome]) -> None:
        """Resolve the futures of answered or failed requests under one lock, release their buffer space,
        wake the waiters, then run callbacks outside the lock."""
        if not outcomes:
            return
        callbacks: list[Any] = []
        with self._cv:
            for req, result in outcomes:
                if isinstance(result, BaseException):
                    for part in req.parts:
                        part[0]._fail(result, callbacks)
                else:
                    for future, start, at, count in req.parts:
                        future._fill(start, result[at : at + count], callbacks)
                self._buffered_events -= len(req.events)
                self._buffered_bytes -= req.nbytes
            self._cv.notify_all()
        run_callbacks(callbacks)

    def _run(self) -> None:
        """The I/O thread: feed the machine the time and the bytes received, do what its steps say."""
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        machine = self._machine
        leaders = self._client.leaders
        conn: Connection | None = None
        try:
            while True:
                with self._cv:
                    now = time.monotonic()
                    linger_open = bool(self._open) and not machine.window_full
                    if self._open and (self._closing or (linger_open and now >= self._open_since + self._linger_s)):
                        self._cut()
                        linger_open = False
                    if self._closing:
                        machine.close()
                    step = machine.poll(now)
                    wake_at = step.wake_at
                    if linger_open:
                        wake_at = min(wake_at, self._open_since + self._linger_s)
                self._complete(step.outcomes)
                if step.close and conn is not None:
                    sel.unregister(conn)
                    conn.close()
                    conn = None
                if step.finished:
                    break
                if step.ask is not None:
                    found = leaders.answer(step.ask, time.monotonic() + FIND_LEADER_TIMEOUT_S)
                    with self._cv:
                        machine.leader_answer(found, time.monotonic())
                    continue
                if step.connect:
                    try:
                        conn = leaders.connect(now + self._client.connect_timeout_s, leaders.leader)
                    except NoNodeReachable:
                        with self._cv:
                            machine.connect_failed(time.monotonic())
                        continue
                    sel.register(conn, selectors.EVENT_READ)
                    with self._cv:
                        machine.connected(conn.address, time.monotonic())
                    continue
                if step.send and conn is not None:
                    try:
                        for data in step.send:
                            conn.send(data, self._attempt_timeout_s)
                    except ConnectionFailed:
                        with self._cv:
                            machine.connection_lost(time.monotonic())
                        continue
                for key, _ in sel.select(max(wake_at - now, 0.0)):
                    if key.fileobj is self._wake_r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                    elif conn is not None:
                        try:
                            data = conn.read_available()
                        except ConnectionFailed:
                            with self._cv:
                                machine.connection_lost(time.monotonic())
                            continue
                        if data:
                            with self._cv:
                                machine.receive(data, time.monotonic())
        except BaseException as exc:  # a bug: fail everything rather than hang the callers
            with self._cv:
                self._fatal = exc
                if self._open:
                    self._cut()
                # a refused token ends the producer with that error; anything else is a bug, said as such
                error = exc if isinstance(exc, Unauthorized) else ShmraftError(f"producer I/O thread failed: {exc!r}")
                outcomes = machine.fail_all(error)
            self._complete(outcomes)
            if not isinstance(exc, Unauthorized):
                raise
        finally:
            if conn is not None:
                conn.close()
            sel.close()
            with self._cv:
                self._closing = True
                self._wake_r.close()
                self._wake_w.close()
                self._cv.notify_all()
