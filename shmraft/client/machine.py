"""The pipelined producer's protocol state machine, with no I/O: requests, sequences, window, timers, failover.

Sans-I/O in the manner of h11: the machine owns no socket, no thread, no clock and no lock. Its caller (the
Producer's I/O thread) feeds it events, each with the time `now`:

- `submit(...)`: a batch was cut (a send requested), it becomes a request with the next sequences;
- `connected(address)` / `connect_failed()`: the outcome of a `Step.connect`;
- `receive(data)`: bytes arrived on the connection; `connection_lost()`: the connection broke;
- `leader_answer(found)`: the answer to a `Step.ask` (a question about the leader for the LeaderTracker);
- `close()`: no more submits; the machine finishes once every request is resolved;

and `poll(now)` returns a `Step`: what to do now (futures to resolve or fail, close the connection, ask
about the leader, connect, bytes to send on the connection) and when to poll again at the latest.

Behaviour (the Producer's promises): up to `window` requests in flight; answers may come in any order (the
correlation id says which request an answer is for); after a failover, reconnect or retriable error every
unacknowledged request is resent in order with the same (producer id, sequences), so the server's
deduplication keeps each event once. A connection whose node leaves requests unanswered is probed (the other
nodes are asked who leads, see `Silence`) and dropped once they name another leader, or once it has been
silent for the attempt timeout (then the node is suspected and the others asked again).

A producer's sequences must have no gaps. When the machine gives up on a request (its deadline passed, or
the server refused it for good), every request after it that was already sent is failed too (with
CommitTimeout: they may be in the log), and the requests never sent continue under a fresh producer id
starting at sequence 0, so nothing waits forever behind a gap.

The work is per request and per answer, never per event: the events of a request are only counted.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from shmraft.client.backoff import Backoff
from shmraft.client.errors import CommitTimeout, error_from_server
from shmraft.client.leader import ATTEMPT_ANSWER_TIMEOUT_S, REDIRECTS_BEFORE_BACKOFF, Ask, AskKind, Silence
from shmraft.wire.client import (
    MESSAGE_BODY_MAX_BYTES,
    Error,
    ErrorCode,
    Message,
    MessageReader,
    Produced,
    encode_produce,
)
from shmraft.wire.errors import RemoteProtocolError

IDLE_WAKE_S: Final = 1.0  # poll at least this often, even with nothing to do


class Request:
    """A batch with its producer id and sequences; `parts` is the caller's (which futures its events fill);
    `sends` counts how often it went out, `cid` is its correlation id on the current connection."""

    __slots__ = (
        "order",
        "producer_id",
        "first_sequence",
        "events",
        "parts",
        "nbytes",
        "deadline",
        "timeout_s",
        "sends",
        "cid",
    )

    def __init__(
        self,
        order: int,
        producer_id: int,
        first_sequence: int,
        events: list[bytes],
        parts: Any,
        nbytes: int,
        deadline: float,
        timeout_s: float,
    ) -> None:
        self.order, self.producer_id, self.first_sequence = order, producer_id, first_sequence
        self.events, self.parts, self.nbytes = events, parts, nbytes
        self.deadline, self.timeout_s = deadline, timeout_s
        self.sends = 0
        self.cid = 0


Outcome = tuple[Request, list[int] | BaseException]  # a request and its offsets (in event order) or its error


class Step:
    """What the I/O loop does now, in this order: resolve `outcomes`, `close` the connection, stop if
    `finished`, answer `ask` (then poll again), `connect` (then report and poll again), write `send` (each an
    encoded request) on the connection; then wait for bytes or a wake-up until `wake_at` at the latest."""

    __slots__ = ("outcomes", "close", "finished", "ask", "connect", "send", "wake_at")

    def __init__(self, outcomes: list[Outcome], wake_at: float) -> None:
        self.outcomes = outcomes
        self.close = False
        self.finished = False
        self.ask: Ask | None = None
        self.connect = False
        self.send: list[bytes] = []
        self.wake_at = wake_at


def _random_producer_id() -> int:
    return secrets.randbits(64)


class ProducerMachine:
    """The requests of one Producer, from cut to resolved; see the module docstring. Not thread-safe."""

    def __init__(
        self,
        *,
        window: int,
        producer_id: int,
        attempt_timeout_s: float = ATTEMPT_ANSWER_TIMEOUT_S,
        new_producer_id: Callable[[], int] = _random_producer_id,
        max_answer_bytes: int = MESSAGE_BODY_MAX_BYTES,
    ) -> None:
        self.window = window
        self.producer_id = producer_id
        self._new_producer_id = new_producer_id
        self._max_answer_bytes = max_answer_bytes
        self._next_sequence = 0
        self._order = itertools.count()
        self._queue: deque[Request] = deque()  # submitted, not in flight, in order
        self._sent: dict[int, Request] = {}  # in flight on the current connection, by correlation id
        self._outcomes: list[Outcome] = []  # resolved since the last poll
        self.address: str | None = None  # the node of the current connection
        self._reader = MessageReader(max_answer_bytes)
        self._next_cid = 1
        self._silence = Silence(0.0, attempt_timeout_s)  # of the connection's node, while requests wait
        self._backoff = Backoff()
        self._retry_at = 0.0  # no connection is opened before this
        self._redirects = 0  # NOT_LEADER answers followed since the last success
        self._close_connection = False  # the connection is to be closed (reported by the next poll)
        self._ask: Ask | None = None  # a question to report by the next poll
        self._awaiting: Ask | None = None  # the question whose answer is due before anything else
        self._closing = False

    # --- state the caller reads ------------------------------------------------------------------------------

    @property
    def in_window(self) -> int:
        """Requests submitted and not resolved (in flight or queued)."""
        return len(self._sent) + len(self._queue)

    @property
    def window_full(self) -> bool:
        return len(self._sent) + len(self._queue) >= self.window

    @property
    def finished(self) -> bool:
        return self._closing and not (self._queue or self._sent)

    # --- events -------------------------------------------------------------------------------------------------

    def submit(self, events: list[bytes], parts: Any, nbytes: int, opened_at: float, timeout_s: float) -> Request:
        """A cut batch becomes a request with the next sequences; it must be answered by opened_at + timeout_s."""
        req = Request(
            next(self._order),
            self.producer_id,
            self._next_sequence,
            events,
            parts,
            nbytes,
            opened_at + timeout_s,
            timeout_s,
        )
        self._next_sequence += len(events)
        self._queue.append(req)
        return req

    def close(self) -> None:
        """No more submits: the machine is finished once every request is resolved."""
        self._closing = True

    def connected(self, address: str, now: float) -> None:
        """The connection asked for by `Step.connect` is open to `address`."""
        self.address = address
        self._reader = MessageReader(self._max_answer_bytes)

    def connect_failed(self, now: float) -> None:
        """No node accepted a connection: try again after the back-off."""
        self._retry_at = now + self._backoff.next_delay()

    def connection_lost(self, now: float) -> None:
        """The connection broke (a send or receive failed, or the node closed it): resend elsewhere after a pause."""
        address = self.address
        self._drop(now, delay=True)
        if address is not None:
            self._ask = Ask(AskKind.NODE_FAILED, address)

    def receive(self, data: bytes, now: float) -> None:
        """Bytes arrived on the connection: apply every whole answer in them."""
        address = self.address
        if address is None:
            return  # the connection was dropped; its late bytes do not matter
        self._reader.feed(data)
        messages: list[Message] = []
        try:
            while (msg := self._reader.next_message()) is not None:
                messages.append(msg)
        except RemoteProtocolError:
            self._close_connection = True
            self.connection_lost(now)
            return
        if not messages:
            return
        self._silence.heard(now)
        reset: tuple[ErrorCode, str] | None = None
        for msg in messages:
            action = self._on_answer(msg, address)
            if reset is None:
                if action is None:
                    self._redirects = 0
                    self._backoff.reset()
                else:
                    reset = action
        if reset is None:
            return
        code, leader = reset
        if code is ErrorCode.NOT_LEADER:
            self._drop(now, delay=False)
            self._ask = Ask(AskKind.FIND_LEADER, address, leader)
        else:
            self._drop(now, delay=True)

    def leader_answer(self, found: str | None, now: float) -> None:
        """The LeaderTracker's answer to the last `Step.ask`: the leader it found (or names elsewhere), or None."""
        ask, self._awaiting = self._awaiting, None
        assert ask is not None, "leader_answer without a question"
        if ask.kind is AskKind.PROBE:
            if found is not None:
                self._drop(now, delay=False)  # resent to the leader the others name, with the same sequences
            else:
                self._silence.probed(now)
        elif ask.kind is AskKind.REDISCOVER:
            if found is None:
                self._retry_at = now + self._backoff.next_delay()
        elif ask.kind is AskKind.FIND_LEADER:
            self._redirects += 1
            if found is None or self._redirects > REDIRECTS_BEFORE_BACKOFF:
                self._retry_at = now + self._backoff.next_delay()

    def fail_all(self, error: BaseException) -> list[Outcome]:
        """Every unresolved request, failed with `error` (the I/O thread is ending abnormally)."""
        self._requeue_sent()
        outcomes: list[Outcome] = [(r, error) for r in self._queue]
        self._queue.clear()
        return outcomes

    # --- the timers and what to do now ------------------------------------------------------------------------

    def poll(self, now: float) -> Step:
        """What to do now; see Step. Call again after acting, and at `wake_at` at the latest."""
        assert self._awaiting is None, f"the answer to {self._awaiting} is due first"
        step = Step(self._outcomes, now + IDLE_WAKE_S)
        self._outcomes = []
        if self._close_connection:
            step.close, self._close_connection = True, False
        if self._ask is not None:
            step.ask = self._awaiting = self._ask
            self._ask = None
            return step
        queue, sent, silence = self._queue, self._sent, self._silence
        expired = self._expire(now, step.outcomes)
        if self._closing and not (queue or sent):
            step.finished = True
            return step
        address = self.address
        if address is not None and (expired or (sent and now >= silence.hung_at())):
            # the node left requests unanswered too long (or one expired): suspect it, ask who leads now
            self._drop(now, delay=False)
            step.close, self._close_connection = True, False
            step.ask = self._awaiting = Ask(AskKind.REDISCOVER, address)
            return step
        if address is not None and sent and now >= silence.probe_due():
            step.ask = self._awaiting = Ask(AskKind.PROBE, address)
            return step
        if address is not None:
            if queue and not sent:
                silence.heard(now)  # the wait for answers starts now
            window = self.window
            while queue and len(sent) < window:
                req = queue.popleft()
                req.cid = cid = self._next_cid
                self._next_cid = cid + 1
                req.sends += 1
                sent[cid] = req
                timeout_ms = max(1, int((req.deadline - now) * 1000))
                step.send.append(encode_produce(cid, req.producer_id, req.first_sequence, timeout_ms, req.events))
        elif queue and now >= self._retry_at:
            step.connect = True
        wake_at = step.wake_at
        for r in itertools.islice(itertools.chain(sent.values(), queue), 1):
            wake_at = min(wake_at, r.deadline)  # deadlines follow the order of submitting
        if sent:
            wake_at = min(wake_at, silence.hung_at(), silence.probe_due())
        if address is None and queue:
            wake_at = min(wake_at, self._retry_at)
        step.wake_at = wake_at
        return step

    # --- internals ------------------------------------------------------------------------------------------------

    def _drop(self, now: float, delay: bool) -> None:
        """Leave the connection: its requests in flight go back to the head of the queue, in order."""
        if self.address is not None:
            self.address = None
            self._close_connection = True
        self._requeue_sent()
        self._retry_at = now + (self._backoff.next_delay() if delay else 0.0)

    def _requeue_sent(self) -> None:
        reqs = sorted(self._sent.values(), key=lambda r: r.order)
        self._sent.clear()
        self._queue.extendleft(reversed(reqs))

    def _on_answer(self, msg: Message, address: str) -> tuple[ErrorCode, str] | None:
        """Apply one answer; None if the pipeline goes on, else (code, leader) and the connection must reset."""
        req = self._sent.get(msg.correlation_id)
        if req is None:
            return None  # an answer to a send before a reset; that request was resent
        if isinstance(msg, Produced):
            if msg.offsets.size != len(req.events):
                return ErrorCode.MALFORMED, ""  # a bad answer: resend on a new connection
            del self._sent[msg.correlation_id]
            self._outcomes.append((req, msg.offsets.tolist()))
            return None
        if not isinstance(msg, Error):
            return ErrorCode.MALFORMED, ""
        if msg.code.retriable:
            return msg.code, msg.leader
        self._give_up(req, error_from_server(msg.code, msg.message, msg.leader, address), False)
        return msg.code, ""

    def _give_up(self, culprit: Request, error: BaseException, fail_sent_after: bool) -> None:
        """Fail `culprit`; requests after it continue under a fresh producer id (sent ones fail if asked to)."""
        self._requeue_sent()
        reqs = list(self._queue)
        self._queue.clear()
        self.producer_id = self._new_producer_id()
        self._next_sequence = 0
        out = self._outcomes
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
                    self.producer_id,
                    self._next_sequence,
                    0,
                )
                self._next_sequence += len(r.events)
                self._queue.append(r)
        self._queue = deque(sorted(self._queue, key=lambda r: r.order))

    def _expire(self, now: float, out: list[Outcome]) -> bool:
        """Give up on the oldest request whose deadline passed; True if one was (the connection must reset)."""
        # deadlines follow the order of submitting, so the in-flight requests and the queue's head suffice
        expired = [r for r in (*self._sent.values(), *itertools.islice(self._queue, 1)) if r.deadline <= now]
        if not expired:
            return False
        culprit = min(expired, key=lambda r: r.order)
        error = CommitTimeout(
            f"{len(culprit.events)} events not confirmed committed within {culprit.timeout_s:g} s (they may have been)"
        )
        self._give_up(culprit, error, True)
        out.extend(self._outcomes)
        self._outcomes = []
        return True
