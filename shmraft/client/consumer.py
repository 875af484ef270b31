"""The consumer's decisions, with no I/O: what a FETCH answer means, when to give up, when to commit a group.

Sans-I/O as machine.py's ProducerMachine: the blocking Client (client.py) and the AsyncClient (aio.py) each run
the same loop with their own sockets, sleeps and clocks, and ask these pieces what to do:

- `FetchLoop`: one consume() iteration's state (the next offset, the node to prefer, the last error, when a
  FETCH last succeeded). `stale(now)` says whether to give up (and with which error) once no connection is
  left; `answer(msg, address)` says what an answer means and `after_records(...)` what comes after its
  records (a `Decision`: an error to raise, records to yield, stop, close the connection, pause).
- `GroupCommits`: consume(group=...)'s auto-commit bookkeeping: where to start (`group_start`), which
  position to commit after a record and at the end.
- `check_consume_options`: the arguments of consume(), refused with a ValueError naming the one that is wrong.

Nothing here sleeps, connects or reads a clock: `now` is always the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final

from shmraft.client.backoff import RETRY_BACKOFF_MIN_S
from shmraft.client.errors import (
    NodeNotServing,
    NoNodeReachable,
    OffsetOutOfRange,
    ShmraftError,
    UnavailableError,
    error_from_server,
)
from shmraft.client.frames import frame_events
from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.wire.client import (
    MESSAGE_BODY_MAX_BYTES,
    Error,
    ErrorCode,
    Fetched,
    Frames,
    Message,
    encode_fetch,
    encode_fetch_frames,
)
from shmraft.wire.frame import U64_MAX

# Any node can answer a FETCH from its own log, so one that has not answered this long after its long-poll
# wait is treated as hung and the FETCH goes to another node (a hung node would otherwise hold the consumer
# for the whole timeout_s).
FETCH_ATTEMPT_TIMEOUT_S: Final = 2.0
FETCH_BYTES_DEFAULT: Final = 1024 * 1024  # event bytes asked for by one FETCH
FETCH_BYTES_MAX: Final = MESSAGE_BODY_MAX_BYTES // 2  # an answer must fit the 4 MiB body limit with its tables
FETCH_POLL_WAIT_MS_DEFAULT: Final = 500  # long-poll wait of one FETCH when following
_U32_MAX: Final = 2**32 - 1
RESETS: Final = ("earliest", "latest", "error")  # what consume() does with an offset below the log start
RESET_DEFAULT: Final = "earliest"
AUTO_COMMIT_EVENTS_DEFAULT: Final = 10_000  # consume(group=...) commits after this many records (~2.5 ms each) ...
AUTO_COMMIT_INTERVAL_MS_DEFAULT: Final = 5000  # ... or this long since its last commit (Kafka's default)

_log = logging.getLogger("shmraft.client")


def check_consume_options(
    from_offset: int,
    max_bytes: int,
    poll_wait_ms: int,
    reset: str,
    group: str | None,
    auto_commit_events: int,
    auto_commit_interval_ms: int,
) -> None:
    """consume()'s arguments: a ValueError naming the first one that is wrong."""
    if reset not in RESETS:
        raise ValueError(f"reset: expected one of {', '.join(RESETS)}, got {reset!r}")
    if not 0 <= from_offset <= U64_MAX:
        raise ValueError(f"from_offset: expected a u64, got {from_offset}")
    if not 1 <= max_bytes <= FETCH_BYTES_MAX:
        raise ValueError(f"max_bytes: expected 1..{FETCH_BYTES_MAX}, got {max_bytes}")
    if not 0 <= poll_wait_ms <= _U32_MAX:
        raise ValueError(f"poll_wait_ms: expected 0..{_U32_MAX}, got {poll_wait_ms}")
    if group is not None and (auto_commit_events < 0 or auto_commit_interval_ms < 0):
        raise ValueError("auto_commit_events and auto_commit_interval_ms: expected >= 0")


# --- consume(): one FETCH after another ------------------------------------------------------------------------


class Decision:
    """What to do after a FETCH answer (FetchLoop.answer) or after its records were yielded
    (FetchLoop.after_records), in this order: raise `error`; yield `pairs` (offset, event bytes; checked
    lazily: a frame raises IntegrityError when its turn comes) then ask after_records; `stop` the iteration;
    `progress`: start the back-off over; `close` the connection (the next one goes to FetchLoop.prefer, or any
    node); `pause` for the back-off's next delay. Nothing set: FETCH again at once on the same connection."""

    __slots__ = ("error", "pairs", "stop", "progress", "close", "pause")

    def __init__(
        self,
        *,
        error: ShmraftError | None = None,
        pairs: Iterable[tuple[int, memoryview]] | None = None,
        stop: bool = False,
        progress: bool = False,
        close: bool = False,
        pause: bool = False,
    ) -> None:
        self.error, self.pairs, self.stop = error, pairs, stop
        self.progress, self.close, self.pause = progress, close, pause


class FetchLoop:
    """The state of one consume() loop, from `next_offset` on; see the module docstring. `only` is the one
    address of an `only_node` client (None otherwise): what would make an ordinary client move raises
    NodeNotServing instead. `prefer` is the node to connect to next (None: any)."""

    def __init__(
        self,
        next_offset: int,
        *,
        follow: bool,
        max_bytes: int,
        poll_wait_ms: int,
        reset: str,
        verify: bool,
        timeout_s: float,
        only: str | None,
        prefer: str | None,
        now: float,
    ) -> None:
        self.next_offset = next_offset
        self.follow, self.max_bytes, self.reset, self.timeout_s, self.only = follow, max_bytes, reset, timeout_s, only
        self.wait_ms = poll_wait_ms if follow else 0
        self._encode = encode_fetch_frames if verify else encode_fetch  # frames: checked end to end
        self.prefer = prefer
        self.last_ok = now
        self.last_error: ShmraftError | None = None
        self._offset = next_offset  # the offset of the FETCH in flight

    @property
    def stale_deadline(self) -> float:
        """Give up once no FETCH has succeeded by then (and no connection is left)."""
        return self.last_ok + self.timeout_s

    @property
    def attempt_timeout_s(self) -> float:
        """How long one FETCH may wait for its answer: the long poll plus the hung-node bound."""
        return self.wait_ms / 1000 + min(self.timeout_s, FETCH_ATTEMPT_TIMEOUT_S)

    def stale(self, now: float, candidates: Callable[[], list[str]]) -> ShmraftError | None:
        """With no connection: the error to raise if no FETCH has succeeded for `timeout_s`, else None."""
        if now <= self.stale_deadline:
            return None
        last = self.last_error
        if self.only is not None:
            message = f"no FETCH answered within {self.timeout_s:g} s (last: {last or 'no answer'})"
            return _caused(NodeNotServing(self.only, message, code=last.code if last is not None else None), last)
        if isinstance(last, OffsetOutOfRange):
            return last
        if last is not None and last.code is not None:
            return UnavailableError(f"no FETCH answered within {self.timeout_s:g} s: {last}", code=last.code)
        return NoNodeReachable(candidates(), "no FETCH answered")

    def connect_deadline(self, now: float) -> float:
        return max(self.stale_deadline, now + 0.01)

    def connect_failed(self, exc: NoNodeReachable, now: float) -> ShmraftError | None:
        """No node took the connection: the error to raise if the time is up, else None (pause, try again)."""
        if now >= self.stale_deadline:
            if self.only is not None:
                return _caused(NodeNotServing(self.only, f"no connection within {self.timeout_s:g} s: {exc}"), exc)
            return exc
        self.last_error = exc
        return None

    def request(self) -> Callable[[int], bytes]:
        """The next FETCH (or FETCH_FRAMES), given its correlation id."""
        offset = self._offset = self.next_offset
        return lambda cid: self._encode(cid, offset, self.max_bytes, self.wait_ms)

    def request_failed(self, exc: ShmraftError) -> None:
        """The FETCH got no answer (a timeout, a broken connection): the caller closes it and reports the node
        failed; the next connection may go to any node."""
        self.last_error = exc
        self.prefer = None

    def answer(self, msg: Message, address: str) -> Decision:
        """What the answer to the FETCH of `request()` means."""
        offset = self._offset
        if isinstance(msg, Error):
            if msg.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                error = OffsetOutOfRange(
                    f"offset {offset} out of range at {address}: {msg.message}",
                    code=msg.code,
                    earliest_offset=msg.earliest_offset,
                    latest_offset=msg.latest_offset,
                )
                if offset >= msg.earliest_offset:  # past this node's log end: it may lag; try another
                    if self.only is not None:
                        return Decision(error=_caused(NodeNotServing(address, str(error), code=msg.code), error))
                    self.last_error = error
                    self.prefer = None
                    return Decision(close=True, pause=True)  # to any node
                if self.reset == "error":
                    return Decision(error=error)
                self.next_offset = msg.earliest_offset if self.reset == "earliest" else msg.latest_offset
                _log.warning("%s; reset to the %s offset %d", error, self.reset, self.next_offset)
                return Decision()  # FETCH the new offset at once
            if msg.code is ErrorCode.NOT_LEADER or msg.code.retriable:
                self.last_error = error_from_server(msg.code, msg.message, msg.leader, address)
                if self.only is not None:
                    refused = NodeNotServing(address, str(self.last_error), code=msg.code)
                    return Decision(error=_caused(refused, self.last_error))
                self.prefer = msg.leader or None
                return Decision(close=True, pause=True)  # to the leader the node named, if it did
            return Decision(error=error_from_server(msg.code, msg.message, msg.leader, address))
        if isinstance(msg, Frames):
            return Decision(pairs=frame_events(msg, address))
        if isinstance(msg, Fetched):
            return Decision(pairs=zip(msg.offsets.tolist(), msg.events, strict=True))
        return Decision(close=True)  # an answer of another kind: a new connection, no pause

    def after_records(self, msg: Message, yielded: int, started: float, now: float) -> Decision:
        """The records of answer `msg` (a FETCHED or FRAMES) were yielded, `yielded` of them, for a FETCH sent
        at `started`: stop (the end without follow), go on, or pause (an empty answer that did not long-poll)."""
        assert isinstance(msg, (Fetched, Frames))
        self.last_ok = now  # the caller's time between records is not the cluster's fault
        self.next_offset = max(self.next_offset, msg.next_offset)
        empty = yielded == 0
        if not self.follow and (empty or self.next_offset >= msg.commit_offset):
            return Decision(stop=True)
        if not empty:
            return Decision(progress=True)
        # nothing came back: pause unless a long poll waited (do not spin)
        return Decision(pause=now - started < max(self.wait_ms / 2000, RETRY_BACKOFF_MIN_S))


def _caused(error: ShmraftError, cause: BaseException | None) -> ShmraftError:
    error.__cause__ = cause
    return error


# --- consume(group=...): the auto-commit bookkeeping -------------------------------------------------------------


def group_start(committed_offset: int | None, reset: str) -> int | None:
    """Where a group consumer starts: its committed position, or without one the log start (None with
    reset "latest": the caller asks for the commit offset, `latest_offset(commit_index)`)."""
    if committed_offset is not None:
        return committed_offset
    return None if reset == "latest" else 0


def latest_offset(commit_index: int) -> int:
    """The commit offset of a log whose commit index is `commit_index` (just past its last entry's offsets)."""
    return (commit_index + 1) * BATCH_EVENTS_MAX  # a log entry spans 64 offsets, whatever it holds


class GroupCommits:
    """consume(group=...)'s position and when to commit it: after `auto_commit_events` records or
    `auto_commit_interval_ms`, whichever comes first, and at the end (0 events: never; the caller commits)."""

    def __init__(self, start: int, auto_commit_events: int, auto_commit_interval_ms: int, now: float) -> None:
        self.position = start  # the next offset to read once every yielded record is processed
        self.committed_at = start
        self._events, self._interval_ms = auto_commit_events, auto_commit_interval_ms
        self._since = 0
        self._last_commit = now

    def consumed(self, offset: int, now: float) -> int | None:
        """The caller finished the record at `offset`: the position to commit now, or None."""
        self.position = offset + 1
        self._since += 1
        due_by_time = (now - self._last_commit) * 1000 >= self._interval_ms
        if self._events and (self._since >= self._events or due_by_time):
            return self.position
        return None

    def committed(self, position: int, now: float) -> None:
        """`position` (from consumed()) was committed."""
        self.committed_at, self._since, self._last_commit = position, 0, now

    def final(self) -> int | None:
        """At the end of the iteration: the position still to commit, or None."""
        return self.position if self._events and self.position != self.committed_at else None
