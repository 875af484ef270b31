"""The pipelined producer: batches events into requests and keeps a window of them in flight on one connection.

`send()` returns a future that resolves with the event's offset once committed; `send_many()` takes a list
and returns one future of all their offsets (one lock acquisition and one future per call: the cheap way to
produce many events). One background thread does all I/O: it cuts batches (at `batch_events`, `batch_bytes`
or after `linger_ms`; while the window is full the open batch keeps growing instead), gives each batch the
next sequences of this producer, keeps up to `window` requests in flight (answers may come in any order; the
correlation id says which request an answer is for), and after a failover, reconnect or retriable error
resends every unacknowledged request in sequence order with the same sequences, so the server's
deduplication keeps each event once. When the connection's node sends no answer for
ATTEMPT_ANSWER_TIMEOUT_S while requests are in flight (a hung leader keeps its sockets open), it is
suspected and the other nodes are asked who leads now; from PROBE_AFTER_S of silence on, the other nodes are
asked every PROBE_INTERVAL_S, and the producer moves as soon as they name another leader.

A producer's sequences must have no gaps. When the producer gives up on a request (its deadline passed,
or the server refused it for good), every request after it that was already sent is failed too (with
CommitTimeout: they may be in the log), and the requests never sent continue under a fresh producer id
starting at sequence 0, so nothing waits forever behind a gap.
"""

from __future__ import annotations

import bisect
import itertools
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from shmraft.client.client import (
    ATTEMPT_ANSWER_TIMEOUT_S,
    EVENT_BYTES_MAX,
    EVENT_OVERHEAD_BYTES,
    PROBE_AFTER_S,
    PROBE_INTERVAL_S,
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
    Unauthorized,
    error_from_server,
)
from shmraft.client.futures import BatchFuture, EventFuture, completed, run_callbacks
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


# A run of a request's events that belongs to one future: [future, first position in the future,
# first position in the request, count]. A list, because the count of a send() group is set when it closes.
_Part = list[Any]


class _Request:
    """A batch with its producer id and sequences; `sends` counts how often it went out."""

    __slots__ = ("order", "producer_id", "first_sequence", "events", "parts", "nbytes", "deadline", "sends", "cid")

    def __init__(
        self,
        order: int,
        producer_id: int,
        first_sequence: int,
        events: list[bytes],
        parts: list[_Part],
        nbytes: int,
        deadline: float,
    ) -> None:
        self.order, self.producer_id, self.first_sequence = order, producer_id, first_sequence
        self.events, self.parts, self.nbytes, self.deadline = events, parts, nbytes, deadline
        self.sends = 0
        self.cid = 0


_Outcome = tuple[_Request, list[int] | BaseException]  # a request and its offsets or its error


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
        client: Client,
        *,
        window: int = WINDOW_DEFAULT,
        batch_events: int = BATCH_EVENTS_DEFAULT,
        batch_bytes: int = BATCH_BYTES_DEFAULT,
        linger_ms: float = LINGER_MS_DEFAULT,
        buffer_events: int = BUFFER_EVENTS_DEFAULT,
        buffer_bytes: int = BUFFER_BYTES_DEFAULT,
        producer_id: int | None = None,
    ) -> None:
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
        self._queue: deque[_Request] = deque()  # cut, not in flight, in order
        self._sent: dict[int, _Request] = {}  # in flight on the current connection, by correlation id
        self._buffered_events = 0  # accepted by send() and not yet resolved
        self._buffered_bytes = 0
        self._closing = False
        self._fatal: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"shmraft-producer-{self._producer_id:016x}", daemon=True
        )
        self._thread.start()

    # --- public -----------------------------------------------------------------------------------------

    @property
    def producer_id(self) -> int:
        """The current producer id (a fresh one is drawn after the producer gives up on a request)."""
        return self._producer_id

    def send(
        self, event: bytes | bytearray | memoryview | str, callback: Callable[[EventFuture], object] | None = None
    ) -> EventFuture:
        """Queue one event; the future resolves with its offset once committed (or fails with a ShmraftError).

        `callback(future)` runs once it is resolved (in the I/O thread). For many events, send_many() is cheaper.
        """
        if type(event) is not bytes or len(event) > EVENT_BYTES_MAX:
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
        if max(lens) > EVENT_BYTES_MAX:
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
        self._queue.append(
            _Request(
                next(self._order),
                self._producer_id,
                self._next_sequence,
                events,
                parts,
                nbytes,
                self._open_since + self._client.timeout_s,
            )
        )
        self._next_sequence += len(events)

    def _requeue_sent(self) -> None:
        """Put every in-flight request back at the head of the queue, in order (after a reset)."""
        reqs = sorted(self._sent.values(), key=lambda r: r.order)
        self._sent.clear()
        self._queue.extendleft(reversed(reqs))

    def _give_up(self, culprit: _Request, error: BaseException, fail_sent_after: bool, out: list[_Outcome]) -> None:
        """Fail `culprit`; requests after it continue under a fresh producer id (sent ones fail if asked to)."""
        self._requeue_sent()
        reqs = list(self._queue)
        self._queue.clear()
        self._producer_id = secrets.randbits(64)
        self._next_sequence = 0
        for r in reqs:
            if r is culprit:
                out.append((r, error))
            elif r.order < culprit.order:
                self._queue.append(r)  # before the gap: keeps its producer id and sequences
            elif fail_sent_after and r.sends > 0:
                out.append(
                    (
                        r,
                        CommitTimeout(
                            "abandoned after an earlier request of this producer timed out; it may have been committed"
                        ),
                    )
                )
            else:
                r.order, r.producer_id, r.first_sequence, r.sends = (
                    next(self._order),
                    self._producer_id,
                    self._next_sequence,
                    0,
                )
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
        error = CommitTimeout(
            f"{len(culprit.events)} events not confirmed committed within "
            f"{self._client.timeout_s:g} s (they may have been)"
        )
        self._give_up(culprit, error, True, out)
        return True

    # --- the I/O thread ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def _complete(self, outcomes: list[_Outcome]) -> None:
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
                out.append((req, msg.offsets.tolist()))
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
        heard_at = 0.0  # since when the requests in flight wait without any answer on the connection
        probe_at = 0.0  # the next time the other nodes may be asked who leads (while the connection is silent)

        def drop(delay: bool) -> None:
            nonlocal conn, retry_at
            if conn is not None:
                sel.unregister(conn)
                conn.close()
                conn = None
            with self._cv:
                self._requeue_sent()
            retry_at = time.monotonic() + (backoff.next_delay() if delay else 0.0)

        def suspect_and_rediscover() -> None:
            """The connection's node left requests unanswered too long: ask the other nodes who leads now."""
            nonlocal retry_at
            assert conn is not None
            address = conn.address
            drop(delay=False)
            self._client._suspect(address)
            if self._client._rediscover(address, time.monotonic() + FIND_LEADER_TIMEOUT_S) is None:
                retry_at = time.monotonic() + backoff.next_delay()

        try:
            while True:
                outcomes: list[_Outcome] = []
                to_send: list[_Request] = []
                with self._cv:
                    now = time.monotonic()
                    window_full = len(self._sent) + len(self._queue) >= self._window
                    if self._open and (self._closing or (not window_full and now >= self._open_since + self._linger_s)):
                        self._cut()
                    expired = self._expire(now, outcomes)
                    hung = conn is not None and bool(self._sent) and now >= heard_at + ATTEMPT_ANSWER_TIMEOUT_S
                    probe_due = max(heard_at + PROBE_AFTER_S, probe_at)
                    probe = conn is not None and bool(self._sent) and not hung and now >= probe_due
                    if self._closing and not (self._open or self._queue or self._sent or outcomes):
                        break
                    if conn is not None and not expired and not hung:
                        if self._queue and not self._sent:
                            heard_at = now
                        while self._queue and len(self._sent) < self._window:
                            req = self._queue.popleft()
                            req.cid = conn.next_correlation_id()
                            req.sends += 1
                            self._sent[req.cid] = req
                            to_send.append(req)
                    need_conn = conn is None and bool(self._queue)
                    wait = IDLE_WAKE_S
                    if self._open and not (len(self._sent) + len(self._queue) >= self._window):
                        wait = min(wait, self._open_since + self._linger_s - now)
                    for r in itertools.islice(itertools.chain(self._sent.values(), self._queue), 1):
                        wait = min(wait, r.deadline - now)
                    if self._sent:
                        wait = min(wait, heard_at + ATTEMPT_ANSWER_TIMEOUT_S - now, probe_due - now)
                    if need_conn:
                        wait = min(wait, retry_at - now)
                self._complete(outcomes)
                if conn is not None and (expired or hung):
                    suspect_and_rediscover()
                    continue
                if conn is not None and probe:
                    if self._client._leader_elsewhere(conn.address) is not None:
                        drop(delay=False)  # resent to the leader the others name, with the same sequences
                        continue
                    probe_at = time.monotonic() + PROBE_INTERVAL_S
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
                            conn.send(
                                encode_produce(req.cid, req.producer_id, req.first_sequence, timeout_ms, req.events),
                                ATTEMPT_ANSWER_TIMEOUT_S,
                            )
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
                    if messages:
                        heard_at = time.monotonic()
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
                            found = self._client._find_leader(address, leader, time.monotonic() + FIND_LEADER_TIMEOUT_S)
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
                # a refused token ends the producer with that error; anything else is a bug, said as such
                error = exc if isinstance(exc, Unauthorized) else ShmraftError(f"producer I/O thread failed: {exc!r}")
                outcomes = [(r, error) for r in self._queue]
                self._queue.clear()
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
