"""The asyncio client: `AsyncClient` (produce, consume, metadata) and `AsyncProducer` (pipelined), no threads.

The same semantics as the blocking client, from the same sans-I/O parts: an AsyncProducer's requests are a
`ProducerMachine` (sequences, window, answers in any order, idempotent resends through failovers, probing a
silent leader, giving up) driven by one asyncio task the way producer.py's I/O thread drives it; the hints
about the leader are a `LeaderTracker`'s (its state only: the questions are asked here with asyncio
streams, as leader.py asks them with blocking sockets); every message goes through the codec
(shmraft.wire.client). `produce()` and `produce_many()` go through one shared AsyncProducer, so they fail
over exactly like a pipelined producer (unlike the blocking produce(), a call that raised CommitTimeout is
not kept for a resend: its events may be in the log once, and the next call continues under a fresh
producer id). TLS (`tls_ca`) and `token` work as in the blocking client.

Every wait is bounded: connects by `connect_timeout_s`, one question by METADATA_TIMEOUT_S, a FETCH by its
long-poll wait plus FETCH_ATTEMPT_TIMEOUT_S, a request by the client's `timeout_s`, a send by
ATTEMPT_ANSWER_TIMEOUT_S, close() by CLOSE_TIMEOUT_S past the flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Final

from shmraft.client.backoff import RETRY_BACKOFF_MAX_S, Backoff
from shmraft.client.client import (
    _U32_MAX,
    AUTO_COMMIT_EVENTS_DEFAULT,
    AUTO_COMMIT_INTERVAL_MS_DEFAULT,
    FETCH_BYTES_DEFAULT,
    FETCH_POLL_WAIT_MS_DEFAULT,
    RESET_DEFAULT,
    TIMEOUT_S_DEFAULT,
    GroupInfo,
    Record,
    check_client_options,
)
from shmraft.client.connection import (
    CONNECT_TIMEOUT_S_DEFAULT,
    RECV_CHUNK_BYTES,
    AnswerTimeout,
    auth_failure,
    parse_address,
)
from shmraft.client.consumer import (
    FetchLoop,
    GroupCommits,
    check_consume_options,
    group_start,
    latest_offset,
)
from shmraft.client.errors import (
    BufferFull,
    CommitTimeout,
    ConnectionFailed,
    NodeNotServing,
    NoNodeReachable,
    ProducerClosed,
    ShmraftError,
    Unauthorized,
    UnavailableError,
    UnknownGroup,
    error_from_server,
)
from shmraft.client.leader import (
    ATTEMPT_ANSWER_TIMEOUT_S,
    FIND_LEADER_TIMEOUT_S,
    METADATA_TIMEOUT_S,
    Ask,
    AskKind,
    LeaderTracker,
    Survey,
    leader_address,
    member_address,
)
from shmraft.client.machine import Outcome, ProducerMachine
from shmraft.client.producer import (
    BATCH_BYTES_DEFAULT,
    BATCH_EVENTS_DEFAULT,
    BUFFER_BYTES_DEFAULT,
    BUFFER_EVENTS_DEFAULT,
    LINGER_MS_DEFAULT,
    WINDOW_DEFAULT,
    check_producer_options,
)
from shmraft.client.sizes import (
    EVENT_OVERHEAD_BYTES,
    PRODUCE_HEAD_BYTES,
    as_bytes,
)
from shmraft.wire.client import (
    GROUP_FETCH_LEADER_ONLY,
    MESSAGE_BODY_MAX_BYTES,
    Error,
    ErrorCode,
    GroupCommitted,
    GroupPosition,
    GroupsAnswer,
    Message,
    MessageReader,
    MetadataAnswer,
    encode_auth,
    encode_group_commit,
    encode_group_fetch,
    encode_groups,
    encode_metadata,
)
from shmraft.wire.errors import RemoteProtocolError

CLOSE_TIMEOUT_S: Final = 5.0  # close() waits this long for the producer task once everything is resolved
_log = logging.getLogger("shmraft.client")

__all__ = ["AsyncClient", "AsyncConnection", "AsyncProducer", "CLOSE_TIMEOUT_S", "Record"]


# --- one connection ------------------------------------------------------------------------------------------


class AsyncConnection:
    """An asyncio stream to one node's client port, with its own correlation ids and receive buffer; socket
    failures become ConnectionFailed (and close it), a wait that runs out AnswerTimeout (it stays usable)."""

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.address = address
        self._reader, self._writer = reader, writer
        self._messages = MessageReader(MESSAGE_BODY_MAX_BYTES)
        self._next_cid = 1
        self.closed = False

    @classmethod
    async def open(
        cls, address: str, connect_timeout_s: float, tls: ssl.SSLContext | None, token: bytes | None
    ) -> AsyncConnection:
        """Connect (TLS handshake and AUTH included) within `connect_timeout_s`; ConnectionFailed if not."""
        host, port = parse_address(address)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls is not None else None),
                connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            if tls is not None and isinstance(exc, ssl.SSLError):
                from shmraft.net.tls import describe

                raise ConnectionFailed(f"TLS handshake with {address} failed: {describe(exc)}") from exc
            reason = getattr(exc, "strerror", None) or exc or "timed out"
            raise ConnectionFailed(f"cannot connect to {address}: {reason}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(address, reader, writer)
        if token is not None:
            await conn._authenticate(token, connect_timeout_s)
        return conn

    async def _authenticate(self, token: bytes, timeout_s: float) -> None:
        try:
            answer = await self.request(lambda cid: encode_auth(cid, token), timeout_s)
        except AnswerTimeout:
            self.close()
            raise ConnectionFailed(f"no answer to AUTH from {self.address} within {timeout_s:.3f} s") from None
        failure = auth_failure(answer, self.address)
        if failure is not None:
            self.close()
            raise failure

    def __repr__(self) -> str:
        return f"AsyncConnection({self.address!r}{', closed' if self.closed else ''})"

    def _fail(self, what: str, exc: BaseException | None = None) -> ConnectionFailed:
        self.close()
        return ConnectionFailed(f"{what} {self.address}" + (f": {exc}" if exc is not None else ""))

    async def send(self, data: bytes, timeout_s: float) -> None:
        """Write one whole encoded message within `timeout_s`; any failure closes the connection."""
        if self.closed:
            raise ConnectionFailed(f"connection to {self.address} is closed")
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise self._fail("lost connection to", exc) from exc

    async def read_chunk(self) -> bytes:
        """The next bytes that arrive (raw, for the producer's machine); ConnectionFailed if the link broke."""
        try:
            data = await self._reader.read(RECV_CHUNK_BYTES)
        except OSError as exc:
            raise self._fail("lost connection to", exc) from exc
        if not data:
            raise self._fail("connection closed by")
        return data

    async def receive(self, timeout_s: float) -> Message:
        """The next whole message within `timeout_s`: AnswerTimeout if none, ConnectionFailed if the link broke."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self._messages.next_message()
            except RemoteProtocolError as exc:
                raise self._fail("protocol error from", exc) from exc
            if msg is not None:
                return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AnswerTimeout(f"no answer from {self.address} within {timeout_s:.3f} s")
            try:
                data = await asyncio.wait_for(self.read_chunk(), remaining)
            except TimeoutError:
                raise AnswerTimeout(f"no answer from {self.address} within {timeout_s:.3f} s") from None
            self._messages.feed(data)

    async def request(self, encode: Callable[[int], bytes], timeout_s: float) -> Message:
        """Send `encode(correlation_id)` and wait up to `timeout_s` for the answer with that id."""
        cid = self._next_cid
        self._next_cid += 1
        deadline = time.monotonic() + timeout_s
        await self.send(encode(cid), timeout_s)
        while True:
            msg = await self.receive(max(deadline - time.monotonic(), 0.0))
            if msg.correlation_id == cid:
                return msg

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# --- the leader questions, asked with asyncio ------------------------------------------------------------------


def _no_blocking_open(address: str, timeout_s: float) -> Any:
    raise RuntimeError("the asyncio client opens no blocking connection")


class _Leaders:
    """The async counterpart of LeaderTracker's questions (connect, METADATA, surveys, the Producer's asks),
    over a LeaderTracker that keeps the hints (addresses, leader, rotation, suspects) exactly as leader.py."""

    def __init__(self, tracker: LeaderTracker, tls: ssl.SSLContext | None, token: bytes | None) -> None:
        self.hints = tracker
        self._tls, self._token = tls, token

    async def open(self, address: str, connect_timeout_s: float) -> AsyncConnection:
        return await AsyncConnection.open(address, connect_timeout_s, self._tls, self._token)

    async def connect(self, deadline: float, prefer: str | None = None) -> AsyncConnection:
        """A connection to the first node that accepts one, `prefer` first; NoNodeReachable if none does."""
        hints = self.hints
        tried: list[str] = []
        last = ""
        for address in hints.candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0 and tried:
                break
            tried.append(address)
            try:
                return await self.open(address, max(min(hints.connect_timeout_s, remaining), 0.01))
            except Unauthorized:
                raise
            except ConnectionFailed as exc:
                last = str(exc)
                hints.node_failed(address)
        raise NoNodeReachable(tried, last)

    async def ask_metadata(self, address: str, timeout_s: float) -> MetadataAnswer | Error:
        """One METADATA question on a connection of its own; learns the members' addresses."""
        async with await self.open(address, min(self.hints.connect_timeout_s, timeout_s)) as conn:
            answer = await conn.request(encode_metadata, timeout_s)
        if not isinstance(answer, MetadataAnswer | Error):
            raise ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to METADATA")
        if isinstance(answer, Error) and answer.code is ErrorCode.UNAUTHORIZED:
            raise error_from_server(answer.code, answer.message, answer.leader, address)
        if isinstance(answer, MetadataAnswer):
            for m in answer.members:
                self.hints.learn_address(member_address(m))
        return answer

    async def answer(self, ask: Ask, deadline: float) -> str | None:
        """LeaderTracker.answer, asked with asyncio."""
        hints = self.hints
        if ask.kind is AskKind.NODE_FAILED:
            hints.node_failed(ask.address)
            return None
        if ask.kind is AskKind.PROBE:
            hints.counts["probe"] += 1
            survey_s = hints.probe_survey_s(ask.address)
            leader = await self._survey(ask.address, time.monotonic() + survey_s, None)
            if leader is None or leader == ask.address:
                return None
            hints.counts["probe_moved"] += 1
            hints.suspect(ask.address)
            hints.leader = leader
            return leader
        if ask.kind is AskKind.REDISCOVER:
            hints.suspect(ask.address)
            return await self.rediscover(ask.address, deadline)
        if ask.hint and ask.hint != ask.address:  # FIND_LEADER: the leader the NOT_LEADER names, else a survey
            hints.learn_address(ask.hint)
            hints.leader = ask.hint
            return ask.hint
        hints.node_failed(ask.address)
        hints.leader = await self._survey(ask.address, deadline, METADATA_TIMEOUT_S, ask_excluded=True)
        return hints.leader

    async def rediscover(self, excluded: str, deadline: float) -> str | None:
        self.hints.leader = await self._survey(excluded, deadline, METADATA_TIMEOUT_S)
        return self.hints.leader

    async def _survey(
        self, excluded: str, deadline: float, per_node_s: float | None, *, ask_excluded: bool = False
    ) -> str | None:
        """LeaderTracker._survey, asked with asyncio."""
        hints = self.hints
        survey = Survey(hints, excluded, ask_doubted=ask_excluded)
        probe = per_node_s is None
        while (address := survey.next_address()) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            asked_at = time.monotonic()
            try:
                timeout_s = hints.probe_timeouts.timeout_s(address) if probe else per_node_s
                answer = await self.ask_metadata(address, min(timeout_s, remaining))
            except Unauthorized:
                raise
            except ShmraftError:
                if probe:
                    hints.probe_answered(address, None)
                continue
            if probe:
                hints.probe_answered(address, time.monotonic() - asked_at)
            hints.answered(address)
            survey.heard(answer)
        return survey.leader


# --- the pipelined producer -------------------------------------------------------------------------------------


class _Holder:
    """The outcome of one send() (one offset) or send_many() (the list of offsets) as an asyncio future."""

    __slots__ = ("future", "offsets", "missing", "single")

    def __init__(self, future: asyncio.Future[Any], n: int, single: bool) -> None:
        self.future, self.offsets, self.missing, self.single = future, [0] * n, n, single

    def fill(self, start: int, offsets: list[int]) -> None:
        if self.future.done():
            return
        self.offsets[start : start + len(offsets)] = offsets
        self.missing -= len(offsets)
        if self.missing <= 0:
            self.future.set_result(self.offsets[0] if self.single else self.offsets)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class AsyncProducer:
    """Pipelined, idempotent producer on an event loop: `async with client.producer() as p`.

    `await p.send(value)` returns an asyncio future (await it for the offset); `await p.send_many(values)` one
    future of all their offsets. Both wait while `buffer_events` / `buffer_bytes` are taken by unresolved
    events (BufferFull after the client's `timeout_s`). `window`, `batch_events`, `batch_bytes`, `linger_ms`
    mean what they mean for the blocking Producer; each request must be acknowledged within the client's
    `timeout_s`, else its futures fail with CommitTimeout. Use from the loop it was created on only.
    """

    def __init__(
        self,
        client: AsyncClient,
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
        self._batch_events, self._batch_bytes = batch_events, batch_bytes
        self._linger_s = linger_ms / 1000
        self._buffer_events, self._buffer_bytes = buffer_events, buffer_bytes
        self._machine = ProducerMachine(
            window=window,
            producer_id=secrets.randbits(64) if producer_id is None else producer_id,
            attempt_timeout_s=ATTEMPT_ANSWER_TIMEOUT_S,
        )
        self._loop = asyncio.get_running_loop()
        # the open batch: events handed to send()/send_many() and not yet cut into a request
        self._open: list[bytes] = []
        self._open_parts: list[list[Any]] = []  # [holder, first position in the holder, first in the batch, count]
        self._open_bytes = PRODUCE_HEAD_BYTES
        self._open_since = 0.0
        self._buffered_events = 0  # accepted and not yet resolved
        self._buffered_bytes = 0
        self._closing = False
        self._fatal: BaseException | None = None
        self._progress = asyncio.Condition()  # notified whenever requests are resolved (room, flush)
        self._wake: asyncio.Future[None] = self._loop.create_future()
        self._task = asyncio.create_task(self._run(), name=f"shmraft-aio-producer-{self._machine.producer_id:016x}")

    @property
    def producer_id(self) -> int:
        """The current producer id (a fresh one is drawn after the producer gives up on a request)."""
        return self._machine.producer_id

    # --- public -----------------------------------------------------------------------------------------

    async def send(self, value: bytes | bytearray | memoryview | str) -> asyncio.Future[int]:
        """Queue one event (waiting for buffer room); the future resolves with its offset once committed."""
        data = as_bytes(value)
        await self._wait_for_room(1, len(data))
        holder = _Holder(self._loop.create_future(), 1, True)
        self._add([data], holder)
        return holder.future

    async def send_many(self, values: Iterable[bytes | bytearray | memoryview | str]) -> asyncio.Future[list[int]]:
        """Queue events in order; the future resolves with the list of their offsets once all are committed
        (or fails with the first error of any of their requests: events of the others may be committed)."""
        data = [as_bytes(v) for v in values]
        future: asyncio.Future[list[int]] = self._loop.create_future()
        if not data:
            future.set_result([])
            return future
        await self._wait_for_room(len(data), sum(map(len, data)))
        self._add(data, _Holder(future, len(data), False))
        return future

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send what is buffered now and wait until every event sent so far is resolved (success or error);
        CommitTimeout if `timeout_s` (default: the client's timeout_s plus CLOSE_TIMEOUT_S) passes first."""
        if self._open:
            self._cut()
        self._poke()
        limit_s = self._client.timeout_s + CLOSE_TIMEOUT_S if timeout_s is None else timeout_s
        try:
            async with self._progress:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._buffered_events == 0 or self._task.done()), limit_s
                )
        except TimeoutError:
            raise CommitTimeout(f"flush: {self._buffered_events} events unresolved after {limit_s:g} s") from None

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop the producer's task and close its connection. Further sends raise ProducerClosed."""
        self._closing = True
        await self.flush(timeout_s)
        self._poke()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
        if not self._task.done():
            self._task.cancel()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the front ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise ProducerClosed(f"producer failed: {self._fatal}")
        if self._closing:
            raise ProducerClosed("producer is closed")

    async def _wait_for_room(self, events: int, nbytes: int) -> None:
        """Wait until `events` events of `nbytes` fit the buffer (or it is empty); BufferFull after timeout_s."""
        self._check_open()

        def room() -> bool:
            return self._buffered_events == 0 or (
                self._buffered_events + events <= self._buffer_events
                and self._buffered_bytes + nbytes <= self._buffer_bytes
            )

        if room():
            return
        timeout_s = self._client.timeout_s
        try:
            async with self._progress:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: room() or self._fatal is not None or self._closing), timeout_s
                )
        except TimeoutError:
            raise BufferFull(
                f"producer buffer full ({self._buffered_events} events, {self._buffered_bytes} bytes unresolved)"
            ) from None
        self._check_open()

    def _add(self, data: list[bytes], holder: _Holder) -> None:
        """Append `data` to the open batch, cutting it at batch_events / batch_bytes on the way."""
        self._buffered_events += len(data)
        self._buffered_bytes += sum(map(len, data))
        part: list[Any] | None = None
        for i, event in enumerate(data):
            cost = len(event) + EVENT_OVERHEAD_BYTES
            if self._open and (len(self._open) >= self._batch_events or self._open_bytes + cost > self._batch_bytes):
                self._cut()
                part = None
            if not self._open:
                self._open_since = time.monotonic()
                self._poke()  # the task times the linger from now
            if part is None:
                part = [holder, i, len(self._open), 0]
                self._open_parts.append(part)
            self._open.append(event)
            self._open_bytes += cost
            part[3] += 1
        if len(self._open) >= self._batch_events or self._open_bytes >= self._batch_bytes:
            self._cut()

    def _cut(self) -> None:
        """Turn the open batch into a request with the next sequences."""
        events, parts = self._open, self._open_parts
        nbytes = self._open_bytes - PRODUCE_HEAD_BYTES - EVENT_OVERHEAD_BYTES * len(events)
        self._open, self._open_parts, self._open_bytes = [], [], PRODUCE_HEAD_BYTES
        self._machine.submit(events, parts, nbytes, self._open_since, self._client.timeout_s)
        self._poke()

    def _poke(self) -> None:
        if not self._wake.done():
            self._wake.set_result(None)

    async def _complete(self, outcomes: list[Outcome]) -> None:
        """Resolve the futures of answered or failed requests, release their buffer room, wake the waiters."""
        if not outcomes:
            return
        for req, result in outcomes:
            if isinstance(result, BaseException):
                for part in req.parts:
                    part[0].fail(result)
            else:
                for holder, start, at, count in req.parts:
                    holder.fill(start, result[at : at + count])
            self._buffered_events -= len(req.events)
            self._buffered_bytes -= req.nbytes
        async with self._progress:
            self._progress.notify_all()

    # --- the task that drives the machine -----------------------------------------------------------------

    async def _run(self) -> None:
        """Feed the machine the time and the bytes received, do what its steps say (producer.py's _run)."""
        machine = self._machine
        leaders = self._client._leaders
        conn: AsyncConnection | None = None
        reading: asyncio.Task[bytes] | None = None

        def drop() -> None:
            nonlocal conn, reading
            if reading is not None:
                reading.cancel()
                reading = None
            if conn is not None:
                conn.close()
                conn = None

        try:
            while True:
                now = time.monotonic()
                linger_open = bool(self._open) and not machine.window_full
                if self._open and (self._closing or (linger_open and now >= self._open_since + self._linger_s)):
                    self._cut()
                    linger_open = False
                if self._closing:
                    machine.close()
                if self._wake.done():
                    self._wake = self._loop.create_future()
                step = machine.poll(now)
                wake_at = step.wake_at
                if linger_open:
                    wake_at = min(wake_at, self._open_since + self._linger_s)
                await self._complete(step.outcomes)
                if step.close:
                    drop()
                if step.finished:
                    break
                if step.ask is not None:
                    found = await leaders.answer(step.ask, time.monotonic() + FIND_LEADER_TIMEOUT_S)
                    machine.leader_answer(found, time.monotonic())
                    continue
                if step.connect:
                    try:
                        conn = await leaders.connect(now + self._client.connect_timeout_s, leaders.hints.leader)
                    except NoNodeReachable:
                        machine.connect_failed(time.monotonic())
                        continue
                    reading = asyncio.ensure_future(conn.read_chunk())
                    machine.connected(conn.address, time.monotonic())
                    continue
                if step.send and conn is not None:
                    try:
                        for data in step.send:
                            await conn.send(data, ATTEMPT_ANSWER_TIMEOUT_S)
                    except ConnectionFailed:
                        drop()
                        machine.connection_lost(time.monotonic())
                        continue
                waits: list[asyncio.Future[Any]] = [self._wake]
                if reading is not None:
                    waits.append(reading)
                await asyncio.wait(
                    waits, timeout=max(wake_at - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if reading is not None and reading.done():
                    done, reading = reading, None
                    try:
                        data = done.result()
                    except ConnectionFailed:
                        drop()
                        machine.connection_lost(time.monotonic())
                        continue
                    assert conn is not None
                    reading = asyncio.ensure_future(conn.read_chunk())
                    machine.receive(data, time.monotonic())
        except BaseException as exc:  # a bug or a refused token: fail everything rather than hang the callers
            self._fatal = exc
            if self._open:
                self._cut()
            error = exc if isinstance(exc, Unauthorized) else ShmraftError(f"producer task failed: {exc!r}")
            await self._complete(machine.fail_all(error))
            if not isinstance(exc, Unauthorized | asyncio.CancelledError):
                raise
        finally:
            drop()
            self._closing = True
            async with self._progress:
                self._progress.notify_all()


# --- the client ----------------------------------------------------------------------------------------------------


class AsyncClient:
    """A connection to a shmraft cluster for asyncio: produce, consume, metadata; the options are the blocking
    Client's (addresses, producer_id, timeout_s, connect_timeout_s, tls_ca, token, only_node).

    produce() / produce_many() share one AsyncProducer (window WINDOW_DEFAULT, no linger), so calls from
    several tasks are pipelined, in call order. Close with `await client.close()` or `async with`.
    """

    def __init__(
        self,
        addresses: Iterable[str] | str | None = None,
        *,
        producer_id: int | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        tls_ca: str | Path | None = None,
        token: bytes | str | None = None,
        only_node: bool = False,
    ) -> None:
        known, tls, token = check_client_options(addresses, producer_id, timeout_s, connect_timeout_s, tls_ca, token)
        self.producer_id: int | None = producer_id
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        tracker = LeaderTracker(known, _no_blocking_open, float(connect_timeout_s), only_node=only_node)
        self._leaders = _Leaders(tracker, tls, token)
        self._producer: AsyncProducer | None = None  # behind produce() / produce_many()

    @property
    def addresses(self) -> list[str]:
        return list(self._leaders.hints.addresses)

    @property
    def only_node(self) -> bool:
        return self._leaders.hints.only_node

    def __repr__(self) -> str:  # never the token
        return f"AsyncClient({self.addresses!r}, only_node={self.only_node})"

    async def close(self) -> None:
        """Flush and close the producer behind produce() (bounded by its timeouts)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def producer(self, **kwargs: Any) -> AsyncProducer:
        """A pipelined AsyncProducer (an async context manager); options as AsyncProducer's. Needs a running loop."""
        return AsyncProducer(self, **kwargs)

    # --- produce ------------------------------------------------------------------------------------------

    async def produce(self, value: bytes | bytearray | memoryview | str) -> int:
        """Append one event; return its offset once committed. Raises CommitTimeout after `timeout_s`."""
        return (await self.produce_many([value]))[0]

    async def produce_many(self, values: Iterable[bytes | bytearray | memoryview | str]) -> list[int]:
        """Append events in order; return their offsets once all are committed (CommitTimeout after timeout_s)."""
        if self._producer is None or self._producer._fatal is not None:
            self._producer = AsyncProducer(self, linger_ms=0.0, producer_id=self.producer_id)
        future = await self._producer.send_many(values)
        return await future

    # --- metadata ------------------------------------------------------------------------------------------

    async def metadata(self) -> MetadataAnswer:
        """The cluster as the first reachable node sees it: term, leader id, commit index, members."""
        deadline = time.monotonic() + self.timeout_s
        hints = self._leaders.hints
        tried: list[str] = []
        errors: list[str] = []
        prefer = hints.leader if hints.leader not in hints.current_suspects() else None
        for address in hints.candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tried.append(address)
            try:
                answer = await self._leaders.ask_metadata(address, min(METADATA_TIMEOUT_S, remaining))
            except Unauthorized:
                raise
            except ShmraftError as exc:
                errors.append(str(exc))
                continue
            if isinstance(answer, MetadataAnswer):
                if (leader := leader_address(answer)) is not None:
                    hints.leader = leader
                return answer
            errors.append(str(error_from_server(answer.code, answer.message, answer.leader, address)))
        if hints.only_node:
            raise NodeNotServing(hints.addresses[0], "; ".join(errors) or "no METADATA answer in time")
        if len(errors) == len(tried) and all(e.startswith("cannot connect") for e in errors):
            raise NoNodeReachable(tried, errors[-1] if errors else "")
        raise UnavailableError("no node answered METADATA: " + "; ".join(errors))

    # --- consumer groups (as the blocking Client's) --------------------------------------------------------

    async def _ask_leader(self, encode: Callable[[int], bytes], expect: type, what: str) -> Message:
        """One request to the leader on a connection of its own, followed through NOT_LEADER and retriable
        errors until `timeout_s`; the answer of type `expect`, or the typed error of a non-retriable ERROR."""
        deadline = time.monotonic() + self.timeout_s
        hints = self._leaders.hints
        backoff = Backoff()
        last: ShmraftError | None = None

        async def pause() -> None:
            await asyncio.sleep(max(0.0, min(backoff.next_delay(), deadline - time.monotonic())))

        while deadline - time.monotonic() > 0:
            try:
                async with await self._leaders.connect(deadline, hints.leader) as conn:
                    answer = await conn.request(encode, min(ATTEMPT_ANSWER_TIMEOUT_S, self.timeout_s))
            except (AnswerTimeout, ConnectionFailed) as exc:  # NoNodeReachable included
                last = exc
                await pause()
                continue
            if isinstance(answer, expect):
                return answer
            if not isinstance(answer, Error):
                raise ConnectionFailed(f"unexpected {type(answer).__name__} from {conn.address} to {what}")
            last = error_from_server(answer.code, answer.message, answer.leader, conn.address)
            if answer.code is ErrorCode.NOT_LEADER:
                if hints.only_node:
                    raise NodeNotServing(conn.address, str(last), code=answer.code) from last
                await self._leaders.answer(Ask(AskKind.FIND_LEADER, conn.address, answer.leader), deadline)
                await pause()
                continue
            if not answer.code.retriable:
                raise last
            await pause()
        if isinstance(last, NoNodeReachable):
            raise last
        raise CommitTimeout(f"{what} not answered within {self.timeout_s:g} s; last error: {last}")

    async def commit(self, group: str, offset: int, metadata: bytes = b"") -> int:
        """Client.commit: `offset` (the next offset the group reads) as `group`'s position, once committed."""
        timeout_ms = max(1, min(int(self.timeout_s * 1000), _U32_MAX))
        answer = await self._ask_leader(
            lambda cid: encode_group_commit(cid, group, offset, timeout_ms, metadata), GroupCommitted, "GROUP_COMMIT"
        )
        return answer.index

    async def committed(self, group: str, *, leader_only: bool = True) -> GroupInfo | None:
        """Client.committed: `group`'s committed position (None without one)."""
        flags = GROUP_FETCH_LEADER_ONLY if leader_only else 0
        try:
            a = await self._ask_leader(lambda cid: encode_group_fetch(cid, group, flags), GroupPosition, "GROUP_FETCH")
        except UnknownGroup:
            return None
        return GroupInfo(group, a.offset, a.commit_unix_ms, a.index, max(0, a.end_offset - a.offset), a.metadata)

    async def groups(self, *, leader_only: bool = True) -> list[GroupInfo]:
        """Client.groups: every group's position and lag, by name."""
        flags = GROUP_FETCH_LEADER_ONLY if leader_only else 0
        a = await self._ask_leader(lambda cid: encode_groups(cid, flags), GroupsAnswer, "GROUPS")
        return [
            GroupInfo(g.group, g.offset, g.commit_unix_ms, g.index, max(0, a.end_offset - g.offset)) for g in a.groups
        ]

    async def _consume_group(
        self,
        group: str,
        follow: bool,
        max_bytes: int,
        poll_wait_ms: int,
        reset: str,
        auto_commit_events: int,
        auto_commit_interval_ms: int,
        verify: bool = True,
    ) -> AsyncIterator[Record]:
        """consume(group=...): Client._consume_group with asyncio (the same consumer.GroupCommits)."""
        info = await self.committed(group)
        start = group_start(info.offset if info is not None else None, reset)
        if start is None:
            start = latest_offset((await self.metadata()).commit_index)
        commits = GroupCommits(start, auto_commit_events, auto_commit_interval_ms, time.monotonic())
        records = self._consume(start, follow, max_bytes, poll_wait_ms, reset, verify)
        try:
            async for record in records:
                yield record  # handled by the caller once it asks for the next one
                if (due := commits.consumed(record.offset, time.monotonic())) is not None:
                    await self.commit(group, due)
                    commits.committed(due, time.monotonic())
        finally:
            await records.aclose()  # type: ignore[attr-defined]
            if (position := commits.final()) is not None:
                try:
                    await self.commit(group, position)
                except ShmraftError as exc:
                    _log.warning("group %s: final commit of %d failed: %s", group, position, exc)

    # --- consume -------------------------------------------------------------------------------------------

    def consume(
        self,
        from_offset: int = 0,
        *,
        follow: bool = False,
        max_bytes: int = FETCH_BYTES_DEFAULT,
        poll_wait_ms: int = FETCH_POLL_WAIT_MS_DEFAULT,
        reset: str = RESET_DEFAULT,
        group: str | None = None,
        auto_commit_events: int = AUTO_COMMIT_EVENTS_DEFAULT,
        auto_commit_interval_ms: int = AUTO_COMMIT_INTERVAL_MS_DEFAULT,
        verify: bool = True,
    ) -> AsyncIterator[Record]:
        """Committed events at or after `from_offset`, in log order, as Records: `async for offset, value in ...`.

        As the blocking Client.consume: any node, failover on connection errors and hung nodes, stop at the
        commit offset unless `follow` (then long-poll forever), `reset` for offsets deleted by retention; with
        `group`, from the group's committed position, committing as it goes (close it with `aclose()`);
        `verify` checks every stored frame end to end (FETCH_FRAMES, IntegrityError on a failed frame).
        """
        check_consume_options(
            from_offset, max_bytes, poll_wait_ms, reset, group, auto_commit_events, auto_commit_interval_ms
        )
        if group is not None:
            return self._consume_group(
                group, follow, max_bytes, poll_wait_ms, reset, auto_commit_events, auto_commit_interval_ms, verify
            )
        return self._consume(from_offset, follow, max_bytes, poll_wait_ms, reset, verify)

    async def _consume(
        self, next_offset: int, follow: bool, max_bytes: int, poll_wait_ms: int, reset: str, verify: bool = True
    ) -> AsyncIterator[Record]:
        """Client._consume with asyncio: the same consumer.FetchLoop decides."""
        leaders, hints = self._leaders, self._leaders.hints
        loop = FetchLoop(
            next_offset,
            follow=follow,
            max_bytes=max_bytes,
            poll_wait_ms=poll_wait_ms,
            reset=reset,
            verify=verify,
            timeout_s=self.timeout_s,
            only=hints.addresses[0] if hints.only_node else None,
            prefer=hints.leader,
            now=time.monotonic(),
        )
        conn: AsyncConnection | None = None
        backoff = Backoff()

        async def pause(deadline: float) -> None:
            await asyncio.sleep(max(0.0, min(backoff.next_delay(), deadline - time.monotonic())))

        try:
            while True:
                if conn is None and (error := loop.stale(time.monotonic(), lambda: hints.candidates(None))) is not None:
                    raise error
                if conn is None or conn.closed:
                    try:
                        conn = await leaders.connect(loop.connect_deadline(time.monotonic()), loop.prefer)
                    except NoNodeReachable as exc:
                        if (error := loop.connect_failed(exc, time.monotonic())) is not None:
                            raise error from error.__cause__
                        await pause(loop.stale_deadline)
                        continue
                started = time.monotonic()
                try:
                    answer = await conn.request(loop.request(), loop.attempt_timeout_s)
                except (AnswerTimeout, ConnectionFailed) as exc:
                    loop.request_failed(exc)
                    hints.node_failed(conn.address)
                    conn.close()
                    conn = None
                    continue
                decision = loop.answer(answer, conn.address)
                if decision.error is not None:
                    raise decision.error from decision.error.__cause__
                if decision.pairs is not None:
                    yielded = 0  # a frame's events go out once it is checked: those of good frames before a bad one
                    for off, event in decision.pairs:
                        yield Record(off, bytes(event))
                        yielded += 1
                    decision = loop.after_records(answer, yielded, started, time.monotonic())
                    if decision.stop:
                        return
                if decision.progress:
                    backoff.reset()
                if decision.close:
                    conn.close()
                    conn = None
                if decision.pause:
                    await pause(time.monotonic() + RETRY_BACKOFF_MAX_S)
        finally:
            if conn is not None:
                conn.close()
