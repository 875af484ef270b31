"""The pipelined producer: batches events into requests and keeps a window of them in flight on one connection.

`send()` returns a Future that resolves with the event's offset once committed. One background thread does
all I/O: it cuts batches (at `batch_events`, `batch_bytes` or after `linger_ms`), gives each batch the next
sequences of this producer, keeps up to `window` requests in flight (answers may come in any order; the
correlation id says which request an answer is for), and after a failover, reconnect or retriable error
resends every unacknowledged request in sequence order with the same sequences, so the server's
deduplication keeps each event once.

A producer's sequences must have no gaps. When the producer gives up on a request (its deadline passed,
or the server refused it for good), every request after it that was already sent is failed too (with
CommitTimeout: they may be in the log), and the requests never sent continue under a fresh producer id
starting at sequence 0, so nothing waits forever behind a gap.
"""

from __future__ import annotations

import itertools
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final

from shmraft.client.client import (
    EVENT_OVERHEAD_BYTES,
    PRODUCE_HEAD_BYTES,
    REDIRECTS_BEFORE_BACKOFF,
    REQUEST_BYTES_MAX,
    REQUEST_EVENTS_MAX,
    Backoff,
    as_bytes,
)
from shmraft.client.connection import Connection
from shmraft.client.errors import (
    BufferFull,
    CommitTimeout,
    ConnectionFailed,
    NoNodeReachable,
    ProducerClosed,
    ShmraftError,
    error_from_server,
)
from shmraft.wire.client import Error, ErrorCode, Message, Produced, encode_produce

if TYPE_CHECKING:
    from shmraft.client.client import Client

WINDOW_DEFAULT: Final = 8  # requests in flight on the connection
WINDOW_MAX: Final = 256
BATCH_EVENTS_DEFAULT: Final = 1024  # events per request
BATCH_BYTES_DEFAULT: Final = 256 * 1024  # request body bytes
LINGER_MS_DEFAULT: Final = 1.0  # the longest an event waits in the producer for company
LINGER_MS_MAX: Final = 10_000.0
BUFFER_EVENTS_DEFAULT: Final = 100_000  # events accepted by send() and not yet resolved
BUFFER_BYTES_DEFAULT: Final = 64 * 1024 * 1024
IDLE_WAKE_S: Final = 1.0  # the I/O thread looks around at least this often, even with nothing to do
FIND_LEADER_TIMEOUT_S: Final = 2.0  # METADATA questions after a NOT_LEADER without a leader address
JOIN_TIMEOUT_S: Final = 5.0  # close() waits this long for the I/O thread once everything is resolved


class _Request:
    """A batch with its producer id and sequences; `sends` counts how often it went out."""

    __slots__ = ("order", "producer_id", "first_sequence", "events", "futures", "nbytes", "deadline", "sends",
                 "cid")

    def __init__(self, order: int, producer_id: int, first_sequence: int, events: list[bytes],
                 futures: list[Future[int]], nbytes: int, deadline: float) -> None:
        self.order, self.producer_id, self.first_sequence = order, producer_id, first_sequence
        self.events, self.futures, self.nbytes, self.deadline = events, futures, nbytes, deadline
        self.sends = 0
        self.cid = 0


_Outcome = tuple[list["Future[int]"], list[int] | BaseException, int]  # futures, offsets or error, bytes


class Producer:
    """Pipelined, idempotent producer. Use as a context manager, or call close() (which flushes).

    `window` requests in flight; a request holds up to `batch_events` events / `batch_bytes` body bytes
    and is cut after `linger_ms` at the latest; send() blocks while `buffer_events` / `buffer_bytes` are
    taken by unresolved events (then raises BufferFull after the client's timeout). Each request must be
    acknowledged within the client's `timeout_s`, else its futures fail with CommitTimeout.
    """

    def __init__(self, client: Client, *, window: int = WINDOW_DEFAULT, batch_events: int = BATCH_EVENTS_DEFAULT,
                 batch_bytes: int = BATCH_BYTES_DEFAULT, linger_ms: float = LINGER_MS_DEFAULT,
                 buffer_events: int = BUFFER_EVENTS_DEFAULT, buffer_bytes: int = BUFFER_BYTES_DEFAULT,
                 producer_id: int | None = None) -> None:
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
        self._client = client
        self._window = window
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._linger_s = linger_ms / 1000
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._producer_id = secrets.randbits(64) if producer_id is None else producer_id
        self._next_sequence = 0
        self._order = itertools.count()
        self._cv = threading.Condition()
        # the open batch: events handed to send() and not yet cut into a request
        self._open: list[bytes] = []
        self._open_futures: list[Future[int]] = []
        self._open_bytes = PRODUCE_HEAD_BYTES
        self._open_since = 0.0
        self._queue: deque[_Request] = deque()  # cut, not in flight, in order
        self._sent: dict[int, _Request] = {}  # in flight on the current connection, by correlation id
        self._buffered_events = 0  # accepted by send() and not yet resolved
        self._buffered_bytes = 0
        self._closing = False
        self._fatal: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"shmraft-producer-{self._producer_id:016x}",
                                        daemon=True)
        self._thread.start()

    # --- public -----------------------------------------------------------------------------------------

    @property
    def producer_id(self) -> int:
        """The current producer id (a fresh one is drawn after the producer gives up on a request)."""
        return self._producer_id

    def send(self, event: bytes | bytearray | memoryview | str,
             callback: Callable[[Future[int]], object] | None = None) -> Future[int]:
        """Queue one event; the Future resolves with its offset once committed (or fails with a ShmraftError)."""
        data = as_bytes(event)
        future: Future[int] = Future()
        if callback is not None:
            future.add_done_callback(callback)
        cost = len(data) + EVENT_OVERHEAD_BYTES
        wake = False
        with self._cv:
            deadline = time.monotonic() + self._client.timeout_s
            while self._buffered_events > 0 and (self._buffered_events >= self._buffer_events
                                                 or self._buffered_bytes + len(data) > self._buffer_bytes):
                self._check_open()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or threading.current_thread() is self._thread:
                    raise BufferFull(f"producer buffer full ({self._buffered_events} events, "
                                     f"{self._buffered_bytes} bytes unresolved)")
                self._cv.wait(remaining)
            self._check_open()
            if self._open and (len(self._open) >= self._batch_events or self._open_bytes + cost > self._batch_bytes):
                self._cut()
                wake = True
            if not self._open:
                self._open_since = time.monotonic()
                wake = True
            self._open.append(data)
            self._open_futures.append(future)
            self._open_bytes += cost
            self._buffered_events += 1
            self._buffered_bytes += len(data)
            if len(self._open) >= self._batch_events or self._open_bytes >= self._batch_bytes:
                self._cut()
                wake = True
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

    def _cut(self) -> None:
        """Turn the open batch into a request with the next sequences."""
        events, futures = self._open, self._open_futures
        self._open, self._open_futures, self._open_bytes = [], [], PRODUCE_HEAD_BYTES
        nbytes = sum(map(len, events))
        self._queue.append(_Request(next(self._order), self._producer_id, self._next_sequence, events, futures,
                                    nbytes, self._open_since + self._client.timeout_s))
        self._next_sequence += len(events)

    def _requeue_sent(self) -> None:
        """Put every in-flight request back at the head of the queue, in order (after a reset)."""
        reqs = sorted(self._sent.values(), key=lambda r: r.order)
        self._sent.clear()
        self._queue.extendleft(reversed(reqs))

    def _give_up(self, culprit: _Request, error: BaseException, fail_sent_after: bool,
                 out: list[_Outcome]) -> None:
        """Fail `culprit`; requests after it continue under a fresh producer id (sent ones fail if asked to)."""
        self._requeue_sent()
        reqs = list(self._queue)
        self._queue.clear()
        self._producer_id = secrets.randbits(64)
        self._next_sequence = 0
        for r in reqs:
            if r is culprit:
                out.append((r.futures, error, r.nbytes))
            elif r.order < culprit.order:
                self._queue.append(r)  # before the gap: keeps its producer id and sequences
            elif fail_sent_after and r.sends > 0:
                out.append((r.futures, CommitTimeout(
                    "abandoned after an earlier request of this producer timed out; it may have been committed"),
                    r.nbytes))
            else:
                r.order, r.producer_id, r.first_sequence, r.sends = (next(self._order), self._producer_id,
                                                                     self._next_sequence, 0)
                self._next_sequence += len(r.events)
                self._queue.append(r)
        self._queue = deque(sorted(self._queue, key=lambda r: r.order))

    def _expire(self, now: float, out: list[_Outcome]) -> bool:
        """Give up on the oldest request whose deadline passed; True if one was (the connection must reset)."""
        # deadlines follow the order of cutting, so the in-flight requests and the queue's head suffice
        expired = [r for r in (*self._sent.values(), *itertools.islice(self._queue, 1)) if r.deadline <= now]
        if not expired:
            return False
        culprit = min(expired, key=lambda r: r.order)
        error = CommitTimeout(f"{len(culprit.events)} events not confirmed committed within "
                              f"{self._client.timeout_s:g} s (they may have been)")
        self._give_up(culprit, error, True, out)
        return True

    # --- the I/O thread ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def _complete(self, outcomes: list[_Outcome]) -> None:
        """Resolve futures outside the lock (callbacks run here), then release their buffer space."""
        if not outcomes:
            return
        for futures, result, _ in outcomes:
            for i, f in enumerate(futures):
                if isinstance(result, BaseException):
                    f.set_exception(result)
                else:
                    f.set_result(result[i])
        with self._cv:
            self._buffered_events -= sum(len(futures) for futures, _, _ in outcomes)
            self._buffered_bytes -= sum(nbytes for _, _, nbytes in outcomes)
            self._cv.notify_all()

    def _on_answer(self, msg: Message, address: str, out: list[_Outcome]) -> tuple[ErrorCode, str] | None:
        """Apply one answer; None if the pipeline goes on, else (code, leader) and the connection must reset."""
        with self._cv:
            req = self._sent.get(msg.correlation_id)
            if req is None:
                return None  # an answer to a send before a reset; that request was resent
            if isinstance(msg, Produced):
                if msg.offsets.size != len(req.events):
                    return ErrorCode.MALFORMED, ""  # a bad answer: resend on a new connection
                del self._sent[msg.correlation_id]
                out.append((req.futures, msg.offsets.tolist(), req.nbytes))
                return None
            if not isinstance(msg, Error):
                return ErrorCode.MALFORMED, ""
            if msg.code.retriable:
                return msg.code, msg.leader
            self._give_up(req, error_from_server(msg.code, msg.message, msg.leader, address), False, out)
            return msg.code, ""

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        conn: Connection | None = None
        backoff = Backoff()
        retry_at = 0.0
        redirects = 0

        def drop(delay: bool) -> None:
            nonlocal conn, retry_at
            if conn is not None:
                sel.unregister(conn)
                conn.close()
                conn = None
            with self._cv:
                self._requeue_sent()
            retry_at = time.monotonic() + (backoff.next_delay() if delay else 0.0)

        try:
            while True:
                outcomes: list[_Outcome] = []
                to_send: list[_Request] = []
                with self._cv:
                    now = time.monotonic()
                    if self._open and (self._closing or now >= self._open_since + self._linger_s):
                        self._cut()
                    if self._expire(now, outcomes) and conn is not None:
                        self._requeue_sent()
                        sel.unregister(conn)
                        conn.close()
                        conn = None
                    if self._closing and not (self._open or self._queue or self._sent or outcomes):
                        break
                    if conn is not None:
                        while self._queue and len(self._sent) < self._window:
                            req = self._queue.popleft()
                            req.cid = conn.next_correlation_id()
                            req.sends += 1
                            self._sent[req.cid] = req
                            to_send.append(req)
                    need_conn = conn is None and bool(self._queue)
                    wait = IDLE_WAKE_S
                    if self._open:
                        wait = min(wait, self._open_since + self._linger_s - now)
                    for r in itertools.islice(itertools.chain(self._sent.values(), self._queue), 1):
                        wait = min(wait, r.deadline - now)
                    if need_conn:
                        wait = min(wait, retry_at - now)
                self._complete(outcomes)
                if need_conn and now >= retry_at:
                    try:
                        conn = self._client._connect(now + self._client.connect_timeout_s, self._client._leader)
                    except NoNodeReachable:
                        retry_at = time.monotonic() + backoff.next_delay()
                        continue
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                if conn is not None and to_send:
                    try:
                        for req in to_send:
                            timeout_ms = max(1, int((req.deadline - time.monotonic()) * 1000))
                            conn.send(encode_produce(req.cid, req.producer_id, req.first_sequence, timeout_ms,
                                                     req.events), self._client.timeout_s)
                    except ConnectionFailed:
                        self._client._node_failed(conn.address)
                        drop(delay=True)
                        continue
                for key, _ in sel.select(max(wait, 0.0)):
                    if key.fileobj is self._wake_r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                        continue
                    if conn is None:
                        continue
                    try:
                        messages = conn.receive_available()
                    except ConnectionFailed:
                        self._client._node_failed(conn.address)
                        drop(delay=True)
                        continue
                    answered: list[_Outcome] = []
                    actions = [self._on_answer(msg, conn.address, answered) for msg in messages]
                    self._complete(answered)
                    for action in actions:
                        if action is None:
                            redirects = 0
                            backoff.reset()
                            continue
                        code, leader = action
                        if code is ErrorCode.NOT_LEADER:
                            address = conn.address
                            drop(delay=False)
                            found = self._client._find_leader(address, leader,
                                                              time.monotonic() + FIND_LEADER_TIMEOUT_S)
                            redirects += 1
                            if found is None or redirects > REDIRECTS_BEFORE_BACKOFF:
                                retry_at = time.monotonic() + backoff.next_delay()
                        else:
                            drop(delay=True)
                        break
        except BaseException as exc:  # a bug: fail everything rather than hang the callers
            with self._cv:
                self._fatal = exc
                if self._open:
                    self._cut()
                self._requeue_sent()
                error = ShmraftError(f"producer I/O thread failed: {exc!r}")
                outcomes = [(r.futures, error, r.nbytes) for r in self._queue]
                self._queue.clear()
            self._complete(outcomes)
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
