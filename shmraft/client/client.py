"""The blocking client: produce (idempotent, acknowledged once committed), consume by offset, metadata.

Leader discovery and retries follow what Kafka, etcd and NATS users expect: requests go to the last known
leader; NOT_LEADER redirects (to the address in the error, or to what METADATA says); connection errors
and retriable errors are retried with a bounded back-off until the call's deadline, always with the same
producer id and the same sequences, so the server's deduplication keeps every event in the log once.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from shmraft.client.connection import (
    CONNECT_TIMEOUT_S_DEFAULT,
    AnswerTimeout,
    Connection,
    parse_address,
)
from shmraft.client.errors import (
    CommitTimeout,
    ConnectionFailed,
    NoNodeReachable,
    OffsetOutOfRange,
    ShmraftError,
    TooLarge,
    Unauthorized,
    UnavailableError,
    error_from_server,
)
from shmraft.constants import CLUSTER_SIZE_MAX, ELECTION_TIMEOUT_MS
from shmraft.wire.client import (
    AUTH_TOKEN_MAX_BYTES,
    MESSAGE_BODY_MAX_BYTES,
    PRODUCE_EVENTS_MAX,
    Error,
    ErrorCode,
    Fetched,
    Member,
    Message,
    MetadataAnswer,
    Produced,
    encode_fetch,
    encode_metadata,
    encode_produce,
)

if TYPE_CHECKING:
    from shmraft.client.producer import Producer


class LeaderMoved(ShmraftError):
    """The node a request waits on has been silent while the other nodes name another leader (the request is
    resent there, deduplicated)."""


TIMEOUT_S_DEFAULT: Final = 10.0  # how long produce() and friends keep trying before they give up
RETRY_BACKOFF_MIN_S: Final = 0.020  # first pause after a failed attempt
RETRY_BACKOFF_MAX_S: Final = 0.500  # the pause doubles up to this
REDIRECTS_BEFORE_BACKOFF: Final = 2  # NOT_LEADER redirects followed at once before pausing (elections)
ANSWER_GRACE_S: Final = 1.0  # wait this long past the server-side timeout for the server's own answer
METADATA_TIMEOUT_S: Final = 1.0  # one METADATA question to one node
# One attempt (a PRODUCE, or the requests in flight of a Producer) waits this long for an answer before the
# node is suspected to be hung (a stopped process or a vanished host keeps its sockets open, so nothing
# fails): about twice the election timeout, so that by then the other nodes have elected a new leader.
ATTEMPT_ANSWER_TIMEOUT_S: Final = 1.0
# Meanwhile, once a leader has been silent for an election timeout, the other nodes are asked who leads every
# PROBE_INTERVAL_S (one METADATA each, PROBE_METADATA_TIMEOUT_S at most): when they name another leader the
# client goes there at once, so a vanished leader costs about the election (~0.5-0.6 s), not the full 1 s.
# A leader that is only slow is still named by the others, and is waited for up to ATTEMPT_ANSWER_TIMEOUT_S.
PROBE_AFTER_S: Final = ELECTION_TIMEOUT_MS / 1000
PROBE_INTERVAL_S: Final = 0.05
PROBE_METADATA_TIMEOUT_S: Final = 0.2
# Any node can answer a FETCH from its own log, so one that has not answered this long after its long-poll
# wait is treated as hung and the FETCH goes to another node (a hung node would otherwise hold the consumer
# for the whole timeout_s).
FETCH_ATTEMPT_TIMEOUT_S: Final = 2.0
SUSPECT_S: Final = 5.0  # a node that did not answer in time is tried last for this long (unless named leader)
ADDRESSES_MAX: Final = 2 * CLUSTER_SIZE_MAX  # addresses given plus members learnt from METADATA
PRODUCE_HEAD_BYTES: Final = 24  # producer_id, first_sequence, timeout_ms, event_count
EVENT_OVERHEAD_BYTES: Final = 4  # the u32 length of each event in a PRODUCE body
REQUEST_EVENTS_MAX: Final = PRODUCE_EVENTS_MAX  # events in one PRODUCE request (8192)
REQUEST_BYTES_MAX: Final = 1024 * 1024  # body bytes of one PRODUCE request, well below the 4 MiB server limit
EVENT_BYTES_MAX: Final = REQUEST_BYTES_MAX - PRODUCE_HEAD_BYTES - EVENT_OVERHEAD_BYTES  # largest single event
FETCH_BYTES_DEFAULT: Final = 1024 * 1024  # event bytes asked for by one FETCH
FETCH_BYTES_MAX: Final = MESSAGE_BODY_MAX_BYTES // 2  # an answer must fit the 4 MiB body limit with its tables
FETCH_POLL_WAIT_MS_DEFAULT: Final = 500  # long-poll wait of one FETCH when following
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1

assert ATTEMPT_ANSWER_TIMEOUT_S >= 2 * ELECTION_TIMEOUT_MS / 1000
assert PROBE_AFTER_S + PROBE_METADATA_TIMEOUT_S < ATTEMPT_ANSWER_TIMEOUT_S
assert PRODUCE_HEAD_BYTES + EVENT_OVERHEAD_BYTES * REQUEST_EVENTS_MAX < REQUEST_BYTES_MAX < MESSAGE_BODY_MAX_BYTES


class Record(NamedTuple):
    """One committed event: unpacks as `(offset, value)`."""

    offset: int
    value: bytes


def as_bytes(event: bytes | bytearray | memoryview | str) -> bytes:
    """Events are bytes; str is encoded as UTF-8. Refuses an event too large for one request."""
    data = event.encode() if isinstance(event, str) else bytes(event)
    if len(data) > EVENT_BYTES_MAX:
        raise TooLarge(f"event of {len(data)} bytes exceeds the {EVENT_BYTES_MAX}-byte limit of one request")
    return data


def split_requests(
    events: list[bytes], max_events: int = REQUEST_EVENTS_MAX, max_bytes: int = REQUEST_BYTES_MAX
) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of `events` such that each range fits one PRODUCE request."""
    start, size = 0, PRODUCE_HEAD_BYTES
    for i, event in enumerate(events):
        cost = len(event) + EVENT_OVERHEAD_BYTES
        if i > start and (i - start >= max_events or size + cost > max_bytes):
            yield start, i
            start, size = i, PRODUCE_HEAD_BYTES
        size += cost
    if start < len(events):
        yield start, len(events)


class Backoff:
    """A bounded, doubling pause between attempts that never sleeps past a deadline."""

    def __init__(self, first_s: float = RETRY_BACKOFF_MIN_S, max_s: float = RETRY_BACKOFF_MAX_S) -> None:
        self.first_s, self.max_s, self.delay_s = first_s, max_s, first_s

    def next_delay(self) -> float:
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.max_s)
        return delay

    def sleep(self, deadline: float) -> None:
        time.sleep(max(0.0, min(self.next_delay(), deadline - time.monotonic())))

    def reset(self) -> None:
        self.delay_s = self.first_s


class _Unacked(NamedTuple):
    """Events handed to the log under (producer_id, first_sequence..) and not yet acknowledged."""

    producer_id: int
    first_sequence: int
    events: list[bytes]


def member_address(member: Member) -> str:
    return f"{member.host}:{member.port}"


def leader_address(answer: MetadataAnswer) -> str | None:
    """The client address of the leader a METADATA answer names, None when it names none."""
    for m in answer.members:
        if m.node_id == answer.leader_id and answer.leader_id != 0:
            return member_address(m)
    return None


class Client:
    """A connection to a shmraft cluster: produce (blocking), consume, metadata. Safe to share between threads.

    `addresses`: "host:port" of any nodes' client ports (default: the local cluster). `producer_id`: the
    identity under which the server deduplicates this client's events (random 64 bits by default).
    `timeout_s` bounds every call. produce() calls are serialised: a producer's sequences must reach
    the leader in order. For throughput, use `producer()` (pipelined, with its own producer id).
    `tls_ca`: the CA file of a cluster with TLS on (the nodes' certificates must chain to it and name the
    host dialled). `token` (bytes or str): sent with AUTH on every connection, for nodes that ask for one;
    a wrong token raises `Unauthorized`.
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
    ) -> None:
        if addresses is None:
            from shmraft.config import local_members

            addresses = [m.client_address for m in local_members()]
        elif isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a.strip()]
        self._addresses = [a.strip() for a in addresses]
        if not self._addresses:
            raise ValueError("addresses: expected at least one host:port")
        if len(self._addresses) > ADDRESSES_MAX:
            raise ValueError(f"addresses: expected at most {ADDRESSES_MAX}, got {len(self._addresses)}")
        for a in self._addresses:
            parse_address(a)
        if producer_id is not None and not 0 <= producer_id <= _U64_MAX:
            raise ValueError(f"producer_id: expected a u64, got {producer_id}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeout_s and connect_timeout_s must be positive")
        self.producer_id: int = secrets.randbits(64) if producer_id is None else producer_id
        self._tls: ssl.SSLContext | None = None
        if tls_ca is not None:
            from shmraft.net.tls import client_context

            try:
                self._tls = client_context(tls_ca)
            except ValueError as exc:  # ConfigError: the CA file cannot be read
                raise ValueError(f"tls_ca: {exc}") from None
        if isinstance(token, str):
            token = token.encode()
        if token is not None and not 1 <= len(token) <= AUTH_TOKEN_MAX_BYTES:
            raise ValueError(f"token: expected 1..{AUTH_TOKEN_MAX_BYTES} bytes, got {len(token)}")
        self._token = token
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._next_sequence = 0
        self._unacked: _Unacked | None = None  # a produce call that gave up; resent first by the next one
        self._lock = threading.Lock()  # serialises produce calls and guards the produce connection
        self._conn: Connection | None = None
        self._leader: str | None = None  # last known leader address (a hint, shared with producers)
        self._rotation = 0  # where the next search over addresses starts, moved past failed nodes
        self._suspects: dict[str, float] = {}  # address -> until when it is tried last (it did not answer)
        self._suspects_lock = threading.Lock()  # produce() and producers' I/O threads share the hints

    # --- life cycle ------------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    @property
    def next_sequence(self) -> int:
        """The sequence the next new event of this client will carry."""
        return self._next_sequence

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:  # never the token
        return (
            f"Client({self._addresses!r}, producer_id={self.producer_id}, tls={self._tls is not None}, "
            f"token={'set' if self._token else 'none'})"
        )

    def _open(self, address: str, connect_timeout_s: float) -> Connection:
        """A connection with this client's TLS and token settings."""
        return Connection(address, connect_timeout_s=connect_timeout_s, tls=self._tls, token=self._token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def producer(self, **kwargs: Any) -> Producer:
        """A pipelined Producer on this cluster; see `shmraft.client.Producer` for the options."""
        from shmraft.client.producer import Producer

        return Producer(self, **kwargs)

    # --- addresses and leader discovery (also used by Producer) ------------------------------------------

    def _learn_address(self, address: str) -> None:
        if address not in self._addresses and len(self._addresses) < ADDRESSES_MAX:
            try:
                parse_address(address)
            except ValueError:
                return
            self._addresses.append(address)

    def _candidates(self, prefer: str | None) -> list[str]:
        """Every known address: `prefer` first, then from the rotation point on, nodes under suspicion last."""
        addrs = list(self._addresses)
        k = self._rotation % len(addrs)
        ordered = addrs[k:] + addrs[:k]
        suspects = self._current_suspects()
        if suspects:
            ordered = [a for a in ordered if a not in suspects] + [a for a in ordered if a in suspects]
        if prefer:
            ordered = [prefer] + [a for a in ordered if a != prefer]
        return ordered

    def _current_suspects(self) -> set[str]:
        now = time.monotonic()
        with self._suspects_lock:
            for address in [a for a, until in self._suspects.items() if until <= now]:
                del self._suspects[address]
            return set(self._suspects)

    def _suspect(self, address: str) -> None:
        """`address` did not answer in time (hung or vanished): forget it as leader, try it last for a while."""
        with self._suspects_lock:
            self._suspects[address] = time.monotonic() + SUSPECT_S
        self._node_failed(address)

    def _answered(self, address: str) -> None:
        """`address` answered: it is not under suspicion any more."""
        if self._suspects:
            with self._suspects_lock:
                self._suspects.pop(address, None)

    def _node_failed(self, address: str) -> None:
        """Forget `address` as leader and start the next search after it."""
        if self._leader == address:
            self._leader = None
        if address in self._addresses:
            self._rotation = self._addresses.index(address) + 1

    def _connect(self, deadline: float, prefer: str | None = None) -> Connection:
        """A connection to the first node that accepts one, `prefer` first; NoNodeReachable if none does."""
        tried: list[str] = []
        last = ""
        for address in self._candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0 and tried:
                break
            tried.append(address)
            try:
                return self._open(address, max(min(self.connect_timeout_s, remaining), 0.01))
            except ConnectionFailed as exc:
                last = str(exc)
                self._node_failed(address)
        raise NoNodeReachable(tried, last)

    def _ask_metadata(self, address: str, timeout_s: float) -> MetadataAnswer | Error:
        with self._open(address, min(self.connect_timeout_s, timeout_s)) as conn:
            answer = conn.request(encode_metadata, timeout_s)
        if not isinstance(answer, MetadataAnswer | Error):
            raise ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to METADATA")
        if isinstance(answer, Error) and answer.code is ErrorCode.UNAUTHORIZED:
            raise error_from_server(answer.code, answer.message, answer.leader, address)
        if isinstance(answer, MetadataAnswer):
            for m in answer.members:
                self._learn_address(member_address(m))
        return answer

    def _find_leader(self, not_leader: str, hint: str, deadline: float) -> str | None:
        """After NOT_LEADER from `not_leader`: the leader named in the error, else the one METADATA names."""
        if hint and hint != not_leader:
            self._learn_address(hint)
            self._leader = hint
            return hint
        self._node_failed(not_leader)
        return self._rediscover(not_leader, deadline)

    def _rediscover(self, excluded: str, deadline: float) -> str | None:
        """Ask every node but `excluded` (a follower, or a leader that stopped answering) for METADATA.

        The leader named with the highest term wins; at equal terms one other than `excluded` is preferred
        (a hung leader's own view is stale, and it is not asked at all). Sets and returns the client's
        leader hint; None when no node names a leader by `deadline` (an election is still going on).
        """
        self._leader = self._survey(excluded, deadline, METADATA_TIMEOUT_S)
        return self._leader

    def _leader_elsewhere(self, silent: str) -> str | None:
        """`silent` leads but has left a request unanswered for PROBE_AFTER_S: if the other nodes now name
        another leader, make it the client's leader and return it; else None (keep waiting for `silent`)."""
        survey_s = PROBE_METADATA_TIMEOUT_S * (len(self._addresses) - 1)
        leader = self._survey(silent, time.monotonic() + survey_s, PROBE_METADATA_TIMEOUT_S)
        if leader is None or leader == silent:
            return None
        self._suspect(silent)
        self._leader = leader
        return leader

    def _survey(self, excluded: str, deadline: float, per_node_s: float) -> str | None:
        """The leader the nodes other than `excluded` name, highest term first (see _rediscover)."""
        best: tuple[tuple[int, bool], str] | None = None
        for address in self._candidates(None):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if address == excluded:
                continue
            try:
                answer = self._ask_metadata(address, min(per_node_s, remaining))
            except Unauthorized:
                raise
            except ShmraftError:
                continue
            self._answered(address)
            if isinstance(answer, MetadataAnswer) and (leader := leader_address(answer)) is not None:
                key = (answer.term, leader != excluded)
                if best is None or key > best[0]:
                    best = (key, leader)
        return best[1] if best is not None else None

    # --- metadata ---------------------------------------------------------------------------------------

    def metadata(self) -> MetadataAnswer:
        """The cluster as the first reachable node sees it: term, leader id, commit index, members."""
        deadline = time.monotonic() + self.timeout_s
        tried: list[str] = []
        errors: list[str] = []
        conn = self._conn
        prefer = conn.address if conn is not None and not conn.closed else self._leader
        if prefer in self._current_suspects():
            prefer = None
        for address in self._candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tried.append(address)
            try:
                answer = self._ask_metadata(address, min(METADATA_TIMEOUT_S, remaining))
            except Unauthorized:
                raise  # every node has the same token: asking the others would not help
            except ShmraftError as exc:
                errors.append(str(exc))
                continue
            if isinstance(answer, MetadataAnswer):
                if (leader := leader_address(answer)) is not None:
                    self._leader = leader
                return answer
            errors.append(str(error_from_server(answer.code, answer.message, answer.leader, address)))
        if len(errors) == len(tried) and all(e.startswith("cannot connect") for e in errors):
            raise NoNodeReachable(tried, errors[-1] if errors else "")
        raise UnavailableError("no node answered METADATA: " + "; ".join(errors))

    def leader(self) -> Member | None:
        """The leader as a reachable node knows it (id, host, client port), None during an election."""
        answer = self.metadata()
        for m in answer.members:
            if m.node_id == answer.leader_id and answer.leader_id != 0:
                return m
        return None

    # --- produce ----------------------------------------------------------------------------------------

    def produce(self, event: bytes | bytearray | memoryview | str) -> int:
        """Append one event; return its offset once committed. Raises CommitTimeout after `timeout_s`."""
        return self.produce_many([event])[0]

    def produce_many(self, events: Iterable[bytes | bytearray | memoryview | str]) -> list[int]:
        """Append events in order (split into requests as needed); return their offsets once all are committed.

        If a call fails with CommitTimeout, the client keeps its events with their sequences: calling again
        with the same events resends them with the same sequences (exactly once); calling with other events
        first delivers the kept ones (a producer's sequences must have no gaps), then the new ones.
        """
        data = [as_bytes(e) for e in events]
        if not data:
            return []
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            unacked = self._unacked
            if unacked is not None:
                if unacked.events == data and unacked.producer_id == self.producer_id:
                    return self._deliver(unacked, deadline)
                self._deliver(unacked, deadline)
            batch = _Unacked(self.producer_id, self._next_sequence, data)
            self._next_sequence += len(data)
            return self._deliver(batch, deadline)

    def _deliver(self, batch: _Unacked, deadline: float) -> list[int]:
        """Send `batch` request by request until every event is acknowledged; keep it as unacked on timeout."""
        offsets: list[int] = []
        for start, end in split_requests(batch.events):
            try:
                offsets += self._produce_request(
                    batch.producer_id, batch.first_sequence + start, batch.events[start:end], deadline
                )
            except CommitTimeout as exc:
                self._unacked = batch
                exc.committed = offsets
                raise
            except NoNodeReachable:
                # Nothing of this request was ever sent, so its sequences are free again (if nothing follows).
                if self._unacked is batch:
                    raise CommitTimeout(
                        f"{len(batch.events)} earlier events not confirmed: no node reachable", committed=offsets
                    ) from None
                self._next_sequence = batch.first_sequence + start
                raise
            except ShmraftError:
                # Refused for good (too large, malformed, unauthorized): not in the log; reuse the sequences.
                self._unacked = None
                self._next_sequence = batch.first_sequence + start
                raise
        self._unacked = None
        return offsets

    def _leader_connection(self, deadline: float) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed and (self._leader is None or conn.address == self._leader):
            return conn
        if conn is not None:
            conn.close()
        self._conn = None
        self._conn = self._connect(deadline, self._leader)
        return self._conn

    def _attempt(self, conn: Connection, encode: Callable[[int], bytes], timeout_s: float) -> Message:
        """Send one request to the leader and wait up to `timeout_s` for its answer; past PROBE_AFTER_S of
        silence, ask the other nodes who leads now and raise LeaderMoved if they name another node."""
        cid = conn.send_request(encode, timeout_s)
        started = time.monotonic()
        end = started + timeout_s
        probe_at = started + PROBE_AFTER_S
        while True:
            now = time.monotonic()
            try:
                return conn.wait_answer(cid, max(min(end, probe_at) - now, 0.0))
            except AnswerTimeout:
                if time.monotonic() >= end:
                    raise
            if (leader := self._leader_elsewhere(conn.address)) is not None:
                raise LeaderMoved(
                    f"{conn.address} silent for {time.monotonic() - started:.2f} s; "
                    f"the other nodes name {leader} as leader"
                )
            probe_at = time.monotonic() + PROBE_INTERVAL_S

    def _produce_request(
        self, producer_id: int, first_sequence: int, events: list[bytes], deadline: float
    ) -> list[int]:
        """One PRODUCE request, retried (same sequences) through failovers until acknowledged or `deadline`.

        Each attempt waits at most ATTEMPT_ANSWER_TIMEOUT_S for the answer: a leader that does not answer
        by then (stopped, vanished host, or just slow) is suspected, its connection closed, and the other
        nodes are asked who leads now; the retry goes there (or back to it, if they still name it).
        """
        backoff = Backoff()
        sent = False
        redirects = 0
        last: ShmraftError | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                conn = self._leader_connection(deadline)
            except NoNodeReachable as exc:
                last = exc
                backoff.sleep(deadline)
                continue
            timeout_ms = max(1, min(int(remaining * 1000), _U32_MAX))
            try:
                sent = True
                answer = self._attempt(
                    conn,
                    lambda cid, t=timeout_ms: encode_produce(cid, producer_id, first_sequence, t, events),
                    min(remaining + ANSWER_GRACE_S, ATTEMPT_ANSWER_TIMEOUT_S),
                )
            except LeaderMoved as exc:
                last = exc
                conn.close()
                self._conn = None
                continue
            except AnswerTimeout as exc:
                last = exc
                conn.close()
                self._conn = None
                self._suspect(conn.address)
                if self._rediscover(conn.address, deadline) is None:
                    backoff.sleep(deadline)
                continue
            except ConnectionFailed as exc:
                last = exc
                self._node_failed(conn.address)
                backoff.sleep(deadline)
                continue
            self._answered(conn.address)
            if isinstance(answer, Produced):
                if answer.offsets.size != len(events):
                    conn.close()
                    raise ConnectionFailed(
                        f"{conn.address} answered {answer.offsets.size} offsets for {len(events)} events"
                    )
                return answer.offsets.tolist()
            if not isinstance(answer, Error):
                conn.close()
                last = ConnectionFailed(f"unexpected {type(answer).__name__} from {conn.address} to PRODUCE")
                backoff.sleep(deadline)
                continue
            last = error_from_server(answer.code, answer.message, answer.leader, conn.address)
            if answer.code is ErrorCode.NOT_LEADER:
                self._find_leader(conn.address, answer.leader, deadline)
                redirects += 1
                if redirects > REDIRECTS_BEFORE_BACKOFF or self._leader is None:
                    backoff.sleep(deadline)
                continue
            if not answer.code.retriable:
                raise last
            backoff.sleep(deadline)
        if not sent and isinstance(last, NoNodeReachable):
            raise last
        raise CommitTimeout(
            f"{len(events)} events not confirmed committed within {self.timeout_s:g} s "
            f"(they may have been; retry with the same client); last error: {last}"
        )

    # --- consume ----------------------------------------------------------------------------------------

    def consume(
        self,
        from_offset: int = 0,
        *,
        follow: bool = False,
        max_bytes: int = FETCH_BYTES_DEFAULT,
        poll_wait_ms: int = FETCH_POLL_WAIT_MS_DEFAULT,
    ) -> Iterator[Record]:
        """Committed events at or after `from_offset`, in log order, as Records (offset, value).

        Reads from any node (the one this client talks to first) and fails over on connection errors and
        when a node does not answer within FETCH_ATTEMPT_TIMEOUT_S after the long-poll wait (a hung node).
        Without `follow` it stops at the commit offset the node reports; with `follow` it long-polls
        (`poll_wait_ms` per FETCH) forever. Raises OffsetOutOfRange, or NoNodeReachable when no node
        answers for `timeout_s`.
        """
        if not 0 <= from_offset <= _U64_MAX:
            raise ValueError(f"from_offset: expected a u64, got {from_offset}")
        if not 1 <= max_bytes <= FETCH_BYTES_MAX:
            raise ValueError(f"max_bytes: expected 1..{FETCH_BYTES_MAX}, got {max_bytes}")
        if not 0 <= poll_wait_ms <= _U32_MAX:
            raise ValueError(f"poll_wait_ms: expected 0..{_U32_MAX}, got {poll_wait_ms}")
        return self._consume(from_offset, follow, max_bytes, poll_wait_ms)

    def _consume(self, next_offset: int, follow: bool, max_bytes: int, poll_wait_ms: int) -> Iterator[Record]:
        conn: Connection | None = None
        backoff = Backoff()
        last_ok = time.monotonic()
        wait_ms = poll_wait_ms if follow else 0
        prefer: str | None = self._conn.address if self._conn is not None else self._leader
        last_error: ShmraftError | None = None
        try:
            while True:
                stale_deadline = last_ok + self.timeout_s
                if time.monotonic() > stale_deadline and conn is None:
                    if last_error is not None and last_error.code is not None:
                        raise UnavailableError(
                            f"no FETCH answered within {self.timeout_s:g} s: {last_error}", code=last_error.code
                        )
                    raise NoNodeReachable(self._candidates(None), "no FETCH answered")
                if conn is None or conn.closed:
                    try:
                        conn = self._connect(max(stale_deadline, time.monotonic() + 0.01), prefer)
                    except NoNodeReachable:
                        if time.monotonic() >= stale_deadline:
                            raise
                        backoff.sleep(stale_deadline)
                        continue
                offset = next_offset
                started = time.monotonic()
                try:
                    answer = conn.request(
                        lambda cid, o=offset: encode_fetch(cid, o, max_bytes, wait_ms),
                        wait_ms / 1000 + min(self.timeout_s, FETCH_ATTEMPT_TIMEOUT_S),
                    )
                except (AnswerTimeout, ConnectionFailed) as exc:
                    last_error = exc
                    self._node_failed(conn.address)
                    conn.close()
                    conn, prefer = None, None
                    continue
                if isinstance(answer, Error):
                    if answer.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                        raise OffsetOutOfRange(
                            f"offset {offset} out of range at {conn.address}: {answer.message}", code=answer.code
                        )
                    if answer.code is ErrorCode.NOT_LEADER or answer.code.retriable:
                        last_error = error_from_server(answer.code, answer.message, answer.leader, conn.address)
                        prefer = answer.leader or None
                        conn.close()
                        conn = None
                        backoff.sleep(time.monotonic() + RETRY_BACKOFF_MAX_S)
                        continue
                    raise error_from_server(answer.code, answer.message, answer.leader, conn.address)
                if not isinstance(answer, Fetched):
                    conn.close()
                    conn = None
                    continue
                last_ok = time.monotonic()
                for off, event in zip(answer.offsets.tolist(), answer.events, strict=True):
                    yield Record(off, bytes(event))
                last_ok = time.monotonic()  # the caller's time between records is not the cluster's fault
                next_offset = max(next_offset, answer.next_offset)
                empty = not answer.events
                if not follow and (empty or next_offset >= answer.commit_offset):
                    return
                if not empty:
                    backoff.reset()
                elif time.monotonic() - started < max(wait_ms / 2000, RETRY_BACKOFF_MIN_S):
                    backoff.sleep(time.monotonic() + RETRY_BACKOFF_MAX_S)  # no long poll: do not spin
        finally:
            if conn is not None:
                conn.close()
