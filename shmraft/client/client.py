"""The blocking client: produce (idempotent, acknowledged once committed), consume by offset, metadata.

Leader discovery and retries follow what Kafka, etcd and NATS users expect: requests go to the last known
leader; NOT_LEADER redirects (to the address in the error, or to what METADATA says); connection errors
and retriable errors are retried with a bounded back-off until the call's deadline, always with the same
producer id and the same sequences, so the server's deduplication keeps every event in the log once.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

from shmraft.client.backoff import RETRY_BACKOFF_MAX_S, Backoff
from shmraft.client.connection import (
    CONNECT_TIMEOUT_S_DEFAULT,
    AnswerTimeout,
    Connection,
    parse_address,
)
from shmraft.client.consumer import (
    AUTO_COMMIT_EVENTS_DEFAULT,
    AUTO_COMMIT_INTERVAL_MS_DEFAULT,
    FETCH_BYTES_DEFAULT,
    FETCH_POLL_WAIT_MS_DEFAULT,
    RESET_DEFAULT,
    FetchLoop,
    GroupCommits,
    check_consume_options,
    group_start,
    latest_offset,
)
from shmraft.client.errors import (
    CommitTimeout,
    ConnectionFailed,
    NodeNotServing,
    NoNodeReachable,
    SequenceTooOld,
    ShmraftError,
    Unauthorized,
    UnavailableError,
    UnknownGroup,
    error_from_server,
)
from shmraft.client.leader import (
    ADDRESSES_MAX,
    ATTEMPT_ANSWER_TIMEOUT_S,
    METADATA_TIMEOUT_S,
    PROBE_AFTER_S,
    REDIRECTS_BEFORE_BACKOFF,
    LeaderTracker,
    Silence,
    leader_address,
    member_address,
)
from shmraft.client.producer import Producer
from shmraft.client.sizes import REQUEST_BYTES_MAX, REQUEST_EVENT_BYTES_MAX, as_bytes, split_requests
from shmraft.wire.client import (
    AUTH_TOKEN_MAX_BYTES,
    GROUP_FETCH_LEADER_ONLY,
    Error,
    ErrorCode,
    GroupCommitted,
    GroupPosition,
    GroupsAnswer,
    Member,
    Message,
    MetadataAnswer,
    Produced,
    encode_group_commit,
    encode_group_fetch,
    encode_groups,
    encode_produce,
)
from shmraft.wire.frame import U64_MAX

# Names other modules and tests know from here; each is defined once, in the module imported from.
__all__ = [
    "ATTEMPT_ANSWER_TIMEOUT_S",
    "REQUEST_EVENT_BYTES_MAX",
    "PROBE_AFTER_S",
    "REQUEST_BYTES_MAX",
    "Client",
    "LeaderMoved",
    "Record",
    "leader_address",
    "member_address",
    "split_requests",
]


class LeaderMoved(ShmraftError):
    """The node a request waits on has been silent while the other nodes name another leader (the request is
    resent there, deduplicated)."""


TIMEOUT_S_DEFAULT: Final = 10.0  # how long produce() and friends keep trying before they give up
ANSWER_GRACE_S: Final = 1.0  # wait this long past the server-side timeout for the server's own answer
_U32_MAX: Final = 2**32 - 1
_log = logging.getLogger("shmraft.client")


class Record(NamedTuple):
    """One committed event: unpacks as `(offset, value)`."""

    offset: int
    value: bytes


class GroupInfo(NamedTuple):
    """A consumer group's committed position, as the leader's applied table holds it."""

    group: str
    offset: int  # the next offset the group reads (Kafka's convention)
    commit_unix_ms: int  # when the leader proposed the commit
    index: int  # the log index of the commit's control entry
    lag: int  # offsets from `offset` to just past the last committed event (not dense: at most that many events)
    metadata: bytes = b""


class _Unacked(NamedTuple):
    """Events handed to the log under (producer_id, first_sequence..) and not yet acknowledged."""

    producer_id: int
    first_sequence: int
    events: list[bytes]


def check_client_options(
    addresses: Iterable[str] | str | None,
    producer_id: int | None,
    timeout_s: float,
    connect_timeout_s: float,
    tls_ca: str | Path | None,
    token: bytes | str | None,
) -> tuple[list[str], ssl.SSLContext | None, bytes | None]:
    """The options every client takes (blocking and asyncio), checked: (addresses, TLS context, token bytes).
    No addresses means the local cluster; a string is comma-separated. Each bad option raises ValueError
    naming it."""
    if addresses is None:
        from shmraft.config import local_members

        addresses = [m.client_address for m in local_members()]
    elif isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a.strip()]
    known = [a.strip() for a in addresses]
    if not known:
        raise ValueError("addresses: expected at least one host:port")
    if len(known) > ADDRESSES_MAX:
        raise ValueError(f"addresses: expected at most {ADDRESSES_MAX}, got {len(known)}")
    for a in known:
        parse_address(a)
    if producer_id is not None and not 0 <= producer_id <= U64_MAX:
        raise ValueError(f"producer_id: expected a u64, got {producer_id}")
    if timeout_s <= 0 or connect_timeout_s <= 0:
        raise ValueError("timeout_s and connect_timeout_s must be positive")
    tls: ssl.SSLContext | None = None
    if tls_ca is not None:
        from shmraft.net.tls import client_context

        try:
            tls = client_context(tls_ca)
        except ValueError as exc:  # ConfigError: the CA file cannot be read
            raise ValueError(f"tls_ca: {exc}") from None
    if isinstance(token, str):
        token = token.encode()
    if token is not None and not 1 <= len(token) <= AUTH_TOKEN_MAX_BYTES:
        raise ValueError(f"token: expected 1..{AUTH_TOKEN_MAX_BYTES} bytes, got {len(token)}")
    return known, tls, token


class Client:
    """A connection to a shmraft cluster: produce (blocking), consume, metadata. Safe to share between threads.

    `addresses`: "host:port" of any nodes' client ports (default: the local cluster). `producer_id`: the
    identity under which the server deduplicates this client's events (random 64 bits by default).
    `timeout_s` bounds every call. produce() calls are serialised: a producer's sequences must reach
    the leader in order. For throughput, use `producer()` (pipelined, with its own producer id).
    `tls_ca`: the CA file of a cluster with TLS on (the nodes' certificates must chain to it and name the
    host dialled). `token` (bytes or str): sent with AUTH on every connection, for nodes that ask for one;
    a wrong token raises `Unauthorized`.

    `only_node=True` binds the client to its one address (exactly one must be given): it learns no other member
    and never goes to another node, whatever that node answers. consume() then reads that node's own log or
    raises `NodeNotServing` naming it: when it does not answer within `timeout_s` (connections and hung
    FETCHes are retried on it alone), or at once when it answers what would send an ordinary client elsewhere
    (NOT_LEADER, OFFSET_OUT_OF_RANGE past its log end, a retriable error). For verifiers that read "each node's
    log"; metadata(), produce() and producers use that node only, too (produce() raises NodeNotServing on
    NOT_LEADER, a Producer keeps retrying that node until its timeout).
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
        known, self._tls, self._token = check_client_options(
            addresses, producer_id, timeout_s, connect_timeout_s, tls_ca, token
        )
        self.producer_id: int = secrets.randbits(64) if producer_id is None else producer_id
        self.timeout_s = float(timeout_s)
        self._next_sequence = 0
        self._unacked: _Unacked | None = None  # a produce call that gave up; resent first by the next one
        self._lock = threading.Lock()  # serialises produce calls and guards the produce connection
        self._conn: Connection | None = None
        # which node leads and which are suspected: shared with this client's producers
        self.leaders = LeaderTracker(known, self._open, float(connect_timeout_s), only_node=only_node)

    # --- life cycle ------------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return list(self.leaders.addresses)

    @property
    def only_node(self) -> bool:
        """Whether this client is bound to its one node (see the class docstring)."""
        return self.leaders.only_node

    @property
    def connect_timeout_s(self) -> float:
        return self.leaders.connect_timeout_s

    @connect_timeout_s.setter
    def connect_timeout_s(self, value: float) -> None:
        self.leaders.connect_timeout_s = value

    @property
    def _leader(self) -> str | None:
        """The last known leader address (a hint)."""
        return self.leaders.leader

    def _connect(self, deadline: float, prefer: str | None = None) -> Connection:
        """A connection to the first node that accepts one (kept for callers of the old name)."""
        return self.leaders.connect(deadline, prefer)

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
            f"Client({self.leaders.addresses!r}, producer_id={self.producer_id}, tls={self._tls is not None}, "
            f"token={'set' if self._token else 'none'}, only_node={self.only_node})"
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
        return Producer(self, **kwargs)

    # --- metadata ---------------------------------------------------------------------------------------

    def metadata(self) -> MetadataAnswer:
        """The cluster as the first reachable node sees it: term, leader id, commit index, members."""
        deadline = time.monotonic() + self.timeout_s
        tried: list[str] = []
        errors: list[str] = []
        conn = self._conn
        leaders = self.leaders
        prefer = conn.address if conn is not None and not conn.closed else leaders.leader
        if prefer in leaders.current_suspects():
            prefer = None
        for address in leaders.candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tried.append(address)
            try:
                answer = leaders.ask_metadata(address, min(METADATA_TIMEOUT_S, remaining))
            except Unauthorized:
                raise  # every node has the same token: asking the others would not help
            except ShmraftError as exc:
                errors.append(str(exc))
                continue
            if isinstance(answer, MetadataAnswer):
                if (leader := leader_address(answer)) is not None:
                    leaders.leader = leader
                return answer
            errors.append(str(error_from_server(answer.code, answer.message, answer.leader, address)))
        if leaders.only_node:
            raise NodeNotServing(leaders.addresses[0], "; ".join(errors) or "no METADATA answer in time")
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
            except SequenceTooOld:
                # In the log already (offsets forgotten): these sequences are used; the rest of the batch is not.
                self._unacked = None
                self._next_sequence = batch.first_sequence + end
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
        leader = self.leaders.leader
        if conn is not None and not conn.closed and (leader is None or conn.address == leader):
            return conn
        if conn is not None:
            conn.close()
        self._conn = None
        self._conn = self.leaders.connect(deadline, leader)
        return self._conn

    def _attempt(self, conn: Connection, encode: Callable[[int], bytes], timeout_s: float) -> Message:
        """Send one request to the leader and wait up to `timeout_s` for its answer; past PROBE_AFTER_S of
        silence, ask the other nodes who leads now and raise LeaderMoved if they name another node."""
        cid = conn.send_request(encode, timeout_s)
        started = time.monotonic()
        silence = Silence(started, timeout_s)
        while True:
            now = time.monotonic()
            try:
                return conn.wait_answer(cid, max(min(silence.hung_at(), silence.probe_due()) - now, 0.0))
            except AnswerTimeout:
                if time.monotonic() >= silence.hung_at():
                    raise
            if (leader := self.leaders.leader_elsewhere(conn.address)) is not None:
                raise LeaderMoved(
                    f"{conn.address} silent for {time.monotonic() - started:.2f} s; "
                    f"the other nodes name {leader} as leader"
                )
            silence.probed(time.monotonic())

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
                self.leaders.suspect(conn.address)
                if self.leaders.rediscover(conn.address, deadline) is None:
                    backoff.sleep(deadline)
                continue
            except ConnectionFailed as exc:
                last = exc
                self.leaders.node_failed(conn.address)
                backoff.sleep(deadline)
                continue
            self.leaders.answered(conn.address)
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
                if self.leaders.only_node:
                    raise NodeNotServing(conn.address, str(last), code=answer.code) from last
                self.leaders.find_leader(conn.address, answer.leader, deadline)
                redirects += 1
                if redirects > REDIRECTS_BEFORE_BACKOFF or self.leaders.leader is None:
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

    # --- consumer groups --------------------------------------------------------------------------------

    def _ask_leader(self, encode: Callable[[int], bytes], expect: type, what: str) -> Message:
        """One request to the leader, followed through NOT_LEADER and retriable errors until `timeout_s`;
        the answer of type `expect`, or the typed error of a non-retriable ERROR. Shares the produce
        connection, so it takes the produce lock."""
        with self._lock:
            return self._ask_leader_locked(encode, expect, what)

    def _ask_leader_locked(self, encode: Callable[[int], bytes], expect: type, what: str) -> Message:
        deadline = time.monotonic() + self.timeout_s
        backoff = Backoff()
        last: ShmraftError | None = None
        while deadline - time.monotonic() > 0:
            try:
                conn = self._leader_connection(deadline)
                answer = self._attempt(conn, encode, ATTEMPT_ANSWER_TIMEOUT_S)
            except NoNodeReachable as exc:
                last = exc
                backoff.sleep(deadline)
                continue
            except (LeaderMoved, AnswerTimeout, ConnectionFailed) as exc:
                last = exc
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                backoff.sleep(deadline)
                continue
            self.leaders.answered(conn.address)
            if isinstance(answer, expect):
                return answer
            if not isinstance(answer, Error):
                conn.close()
                raise ConnectionFailed(f"unexpected {type(answer).__name__} from {conn.address} to {what}")
            last = error_from_server(answer.code, answer.message, answer.leader, conn.address)
            if answer.code is ErrorCode.NOT_LEADER:
                if self.leaders.only_node:
                    raise NodeNotServing(conn.address, str(last), code=answer.code) from last
                self.leaders.find_leader(conn.address, answer.leader, deadline)
                backoff.sleep(deadline)
                continue
            if not answer.code.retriable:
                raise last
            backoff.sleep(deadline)
        if isinstance(last, NoNodeReachable):
            raise last
        raise CommitTimeout(f"{what} not answered within {self.timeout_s:g} s; last error: {last}")

    def commit(self, group: str, offset: int, metadata: bytes = b"") -> int:
        """Commit `offset` (the next offset the group will read) as `group`'s position; returns once it is
        committed on a majority with fsync and applied by the leader (the log index of its entry). A retry after
        a failover commits the same position again, which is harmless."""
        timeout_ms = max(1, min(int(self.timeout_s * 1000), _U32_MAX))
        answer = self._ask_leader(
            lambda cid: encode_group_commit(cid, group, offset, timeout_ms, metadata), GroupCommitted, "GROUP_COMMIT"
        )
        return answer.index

    def committed(self, group: str, *, leader_only: bool = True) -> GroupInfo | None:
        """`group`'s committed position as the leader holds it (every commit acknowledged before this call is
        seen), or None when the group has none. `leader_only=False` (with `only_node`) reads that node's own
        applied table, which a follower may hold a little behind the leader's."""
        flags = GROUP_FETCH_LEADER_ONLY if leader_only else 0
        try:
            a = self._ask_leader(lambda cid: encode_group_fetch(cid, group, flags), GroupPosition, "GROUP_FETCH")
        except UnknownGroup:
            return None
        return GroupInfo(group, a.offset, a.commit_unix_ms, a.index, max(0, a.end_offset - a.offset), a.metadata)

    def groups(self, *, leader_only: bool = True) -> list[GroupInfo]:
        """Every consumer group's committed position and lag, as the leader holds them, by name
        (`leader_only=False`: as the node answering holds them; see committed())."""
        flags = GROUP_FETCH_LEADER_ONLY if leader_only else 0
        a = self._ask_leader(lambda cid: encode_groups(cid, flags), GroupsAnswer, "GROUPS")
        return [
            GroupInfo(g.group, g.offset, g.commit_unix_ms, g.index, max(0, a.end_offset - g.offset)) for g in a.groups
        ]

    def _consume_group(
        self,
        group: str,
        follow: bool,
        max_bytes: int,
        poll_wait_ms: int,
        reset: str,
        auto_commit_events: int,
        auto_commit_interval_ms: int,
        verify: bool = True,
    ) -> Iterator[Record]:
        """consume(group=...): from the group's committed position, committing as it goes (see consume and
        consumer.GroupCommits)."""
        info = self.committed(group)
        start = group_start(info.offset if info is not None else None, reset)
        if start is None:
            start = latest_offset(self.metadata().commit_index)
        commits = GroupCommits(start, auto_commit_events, auto_commit_interval_ms, time.monotonic())
        try:
            for record in self._consume(start, follow, max_bytes, poll_wait_ms, reset, verify):
                yield record  # the caller processes it before asking for the next: then it counts as consumed
                if (due := commits.consumed(record.offset, time.monotonic())) is not None:
                    self.commit(group, due)
                    commits.committed(due, time.monotonic())
        finally:
            if (position := commits.final()) is not None:
                try:
                    self.commit(group, position)
                except ShmraftError as exc:
                    _log.warning("group %s: final commit of %d failed: %s", group, position, exc)

    # --- consume ----------------------------------------------------------------------------------------

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
    ) -> Iterator[Record]:
        """Committed events at or after `from_offset`, in log order, as Records (offset, value).

        With `group`, a consumer group's consumer: it starts at the group's committed position (ignoring
        `from_offset`; without one, at the log start, or with `reset="latest"` at the commit offset) and
        commits `offset + 1` of the last record the caller has finished with (a record counts as finished when
        the next one is asked for) every `auto_commit_events` records or `auto_commit_interval_ms`, whichever
        comes first, and when the iteration ends or is closed (Kafka's enable.auto.commit;
        `auto_commit_events=0` commits nothing: call commit() yourself). Delivery is at-least-once: a consumer
        that dies between processing and its next commit gets those records again from a restarted consumer.

        Reads from any node (the one this client talks to first) and fails over on connection errors and
        when a node does not answer within FETCH_ATTEMPT_TIMEOUT_S after the long-poll wait (a hung node).
        Without `follow` it stops at the commit offset the node reports; with `follow` it long-polls
        (`poll_wait_ms` per FETCH) forever.

        `reset` (Kafka's auto.offset.reset) says what an offset below the earliest one the node holds (deleted
        by retention) becomes: "earliest" (the default: read from the oldest event still held, skipping only
        what was deleted), "latest" (skip to the commit offset: only events committed from now on) or
        "error" (raise OffsetOutOfRange, which carries `earliest_offset` and `latest_offset`). An offset past
        a node's log end is looked for on the other nodes (a lagging node) and raises OffsetOutOfRange if no
        node has it within `timeout_s`. Raises NoNodeReachable when no node answers for `timeout_s`.

        With `verify` (the default) it asks for the stored batch frames (FETCH_FRAMES, protocol version 3) and
        checks each frame's CRC32 and log index before yielding its events, raising IntegrityError naming the
        frame's offset when one fails; `verify=False` uses the plain FETCH (events re-encoded by the node).

        On a client with `only_node`, every FETCH goes to that node and nothing else: what would make an
        ordinary client move raises NodeNotServing instead (see the class docstring).
        """
        check_consume_options(
            from_offset, max_bytes, poll_wait_ms, reset, group, auto_commit_events, auto_commit_interval_ms
        )
        if group is not None:
            return self._consume_group(
                group, follow, max_bytes, poll_wait_ms, reset, auto_commit_events, auto_commit_interval_ms, verify
            )
        return self._consume(from_offset, follow, max_bytes, poll_wait_ms, reset, verify)

    def _consume(
        self, next_offset: int, follow: bool, max_bytes: int, poll_wait_ms: int, reset: str, verify: bool = True
    ) -> Iterator[Record]:
        """The FETCH loop with blocking sockets; every decision is consumer.FetchLoop's."""
        loop = FetchLoop(
            next_offset,
            follow=follow,
            max_bytes=max_bytes,
            poll_wait_ms=poll_wait_ms,
            reset=reset,
            verify=verify,
            timeout_s=self.timeout_s,
            only=self.leaders.addresses[0] if self.leaders.only_node else None,
            prefer=self._conn.address if self._conn is not None else self.leaders.leader,
            now=time.monotonic(),
        )
        conn: Connection | None = None
        backoff = Backoff()
        try:
            while True:
                if conn is None and (error := loop.stale(time.monotonic(), self._candidates)) is not None:
                    raise error
                if conn is None or conn.closed:
                    try:
                        conn = self.leaders.connect(loop.connect_deadline(time.monotonic()), loop.prefer)
                    except NoNodeReachable as exc:
                        if (error := loop.connect_failed(exc, time.monotonic())) is not None:
                            raise error from error.__cause__
                        backoff.sleep(loop.stale_deadline)
                        continue
                started = time.monotonic()
                try:
                    answer = conn.request(loop.request(), loop.attempt_timeout_s)
                except (AnswerTimeout, ConnectionFailed) as exc:
                    loop.request_failed(exc)
                    self.leaders.node_failed(conn.address)
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
                    backoff.sleep(time.monotonic() + RETRY_BACKOFF_MAX_S)
        finally:
            if conn is not None:
                conn.close()

    def _candidates(self) -> list[str]:
        return self.leaders.candidates(None)
