"""A fake shmraft node for client tests: a real TCP server speaking the client protocol over an in-memory log.

Several FakeNodes may share one FakeLog to imitate a cluster whose leader can move. The log deduplicates
by (producer_id, sequence) like the real node: for a known producer, a sequence at or below its high
water is a duplicate (answered with the offset it already has), the next one is appended, a gap is
OUT_OF_ORDER_SEQUENCE; an unknown producer may start at any sequence. Appended means committed here.

Faults: `reverse_answers` (answers out of request order), follower behaviour (NOT_LEADER with or
without the leader's address), `drop_next()` (close the connection instead of answering, after or before
appending), `fail()` (answer an error code for a number of requests or a while), `kill_connections()`,
`hang()` / `resume()` (a stopped process or vanished host: connections and the listener stay open and
accept, nothing is read or answered), `stop()`.
"""

from __future__ import annotations

import bisect
import socket
import threading
import time
from dataclasses import dataclass, field

from shmraft.wire.client import (
    ErrorCode,
    Fetch,
    Member,
    Message,
    MessageReader,
    Metadata,
    Produce,
    encode_error,
    encode_fetched,
    encode_frames,
    encode_metadata_answer,
    encode_produced,
)
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.frame import encode_batch

BATCH_EVENTS = 64  # events per fake raft entry (offsets are index*64 + position)
POLL_SLICE_S = 0.05  # how often blocked server threads look at the stop flag
JOIN_TIMEOUT_S = 2.0


@dataclass
class _ProducerState:
    high_water: int
    offsets: dict[int, int] = field(default_factory=dict)


class FakeLog:
    """The committed log shared by fake nodes, with the dedup rule of the real node."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._offsets: list[int] = []
        self._values: list[bytes] = []
        self._keys: list[tuple[int, int]] = []  # (producer_id, sequence) of each event
        self._producers: dict[int, _ProducerState] = {}
        self.index = 0  # raft index of the last entry

    def append(self, producer_id: int, first_sequence: int, events: list[bytes]) -> list[int] | None:
        """Offsets of the events (existing ones for duplicates), or None for a sequence gap."""
        with self._cv:
            st = self._producers.get(producer_id)
            if st is not None and first_sequence > st.high_water + 1:
                return None
            if st is None:
                st = self._producers[producer_id] = _ProducerState(first_sequence - 1)
            out: list[int] = []
            position = BATCH_EVENTS
            for i, event in enumerate(events):
                seq = first_sequence + i
                if seq <= st.high_water:
                    out.append(st.offsets[seq])
                    continue
                if position == BATCH_EVENTS:
                    self.index += 1
                    position = 0
                offset = self.index * BATCH_EVENTS + position
                position += 1
                self._offsets.append(offset)
                self._values.append(bytes(event))
                self._keys.append((producer_id, seq))
                st.offsets[seq] = offset
                st.high_water = seq
                out.append(offset)
            self._cv.notify_all()
            return out

    @property
    def commit_offset(self) -> int:
        with self._cv:
            return self._offsets[-1] + 1 if self._offsets else 0

    def values(self) -> list[bytes]:
        with self._cv:
            return list(self._values)

    def event_ids(self) -> list[tuple[int, int]]:
        """(producer_id, sequence) of every event, in log order."""
        with self._cv:
            return list(self._keys)

    def read(self, from_offset: int, max_bytes: int) -> tuple[int, list[int], list[bytes]]:
        """(next_offset, offsets, events) at or after from_offset: at least one event if any, then up to max_bytes."""
        with self._cv:
            i = bisect.bisect_left(self._offsets, from_offset)
            offsets: list[int] = []
            events: list[bytes] = []
            size = 0
            while i < len(self._offsets) and (not events or size + len(self._values[i]) <= max_bytes):
                offsets.append(self._offsets[i])
                events.append(self._values[i])
                size += len(self._values[i])
                i += 1
            return (offsets[-1] + 1 if offsets else from_offset), offsets, events

    def wait_beyond(self, offset: int, timeout_s: float) -> None:
        with self._cv:
            self._cv.wait_for(lambda: bool(self._offsets) and self._offsets[-1] >= offset, timeout_s)


class FakeNode:
    """One fake node on 127.0.0.1 with an ephemeral port; a thread per connection."""

    def __init__(self, log: FakeLog | None = None, node_id: int = 1) -> None:
        self.log = log if log is not None else FakeLog()
        self.node_id = node_id
        self.term = 1
        self.leader_id = node_id  # whom this node believes to be the leader (0: unknown)
        self.leader_hint = True  # whether NOT_LEADER carries the leader's address
        self.members: list[FakeNode] = [self]
        self.min_offset = 0  # fetches below this answer OFFSET_OUT_OF_RANGE
        self.corrupt_frame_index = 0  # FETCH_FRAMES: flip a payload byte of the frame of this log index (0: none)
        self.reverse_answers = False  # answer requests that arrived in one read in reverse order
        self.reversed_batches = 0
        self.produce_requests = 0
        self._lock = threading.Lock()
        self._drop = 0
        self._drop_after_append = True
        self._fail_code: ErrorCode | None = None
        self._fail_count: int | None = None
        self._fail_until = 0.0
        self._stopped = threading.Event()
        self._running = threading.Event()  # cleared while hung
        self._running.set()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_SLICE_S)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._spawn(self._accept_loop, "accept")

    # --- faults -----------------------------------------------------------------------------------------

    def drop_next(self, count: int = 1, *, after_append: bool = True) -> None:
        """Close the connection instead of answering the next `count` PRODUCE requests."""
        with self._lock:
            self._drop, self._drop_after_append = count, after_append

    def fail(self, code: ErrorCode, *, count: int | None = None, seconds: float | None = None) -> None:
        """Answer ERROR `code` to PRODUCE requests, `count` times or for `seconds` (without appending)."""
        with self._lock:
            self._fail_code, self._fail_count = code, count
            self._fail_until = time.monotonic() + seconds if seconds is not None else float("inf")

    def hang(self) -> None:
        """Stop reading and answering (like SIGSTOP): connections stay open, new ones are still accepted."""
        self._running.clear()

    def resume(self) -> None:
        """Go on after hang() (like SIGCONT): what arrived meanwhile is read and answered."""
        self._running.set()

    def kill_connections(self) -> None:
        """Shut every open connection down (their threads close them)."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop listening, close every connection and join the threads."""
        self._stopped.set()
        self._running.set()
        self.kill_connections()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(JOIN_TIMEOUT_S)
        self._listener.close()

    @property
    def leader_address(self) -> str:
        for m in self.members:
            if m.node_id == self.leader_id:
                return m.address
        return ""

    # --- serving ----------------------------------------------------------------------------------------

    def _spawn(self, target, name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=f"fake-node{self.node_id}-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._lock:
                self._conns.add(sock)
                self._threads = [t for t in self._threads if t.is_alive()]
            self._spawn(self._serve, "conn", sock)

    def _serve(self, sock: socket.socket) -> None:
        reader = MessageReader()
        try:
            while not self._stopped.is_set():
                if not self._running.is_set():
                    self._running.wait(POLL_SLICE_S)
                    continue
                data = sock.recv(65536)
                while not self._running.is_set() and not self._stopped.is_set():
                    self._running.wait(POLL_SLICE_S)  # hung while blocked in recv: hold what arrived
                if not data:
                    return
                reader.feed(data)
                answers: list[bytes] = []
                while (msg := reader.next_message()) is not None:
                    answer = self._handle(msg)
                    if answer is None:
                        sock.sendall(b"".join(answers))
                        return
                    answers.append(answer)
                if self.reverse_answers and len(answers) > 1:
                    self.reversed_batches += 1
                    answers.reverse()  # requests that arrived together are answered last first
                sock.sendall(b"".join(answers))
        except RemoteProtocolError as exc:
            try:
                sock.sendall(encode_error(0, ErrorCode.MALFORMED, str(exc)))
            except OSError:
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(sock)
            _shut(sock)

    def _handle(self, msg: Message) -> bytes | None:
        """The answer to one request; None closes the connection."""
        cid = msg.correlation_id
        if isinstance(msg, Produce):
            return self._produce(msg)
        if isinstance(msg, Fetch):
            if msg.from_offset < self.min_offset:
                return encode_error(
                    cid,
                    ErrorCode.OFFSET_OUT_OF_RANGE,
                    f"oldest offset is {self.min_offset}",
                    earliest_offset=self.min_offset,
                    latest_offset=self.log.commit_offset,
                )
            deadline = time.monotonic() + msg.max_wait_ms / 1000
            while not self._stopped.is_set():
                next_offset, offsets, events = self.log.read(msg.from_offset, msg.max_bytes)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    if msg.frames:
                        return self._frames(cid, msg.from_offset, next_offset, offsets, events)
                    return encode_fetched(cid, next_offset, self.log.commit_offset, offsets, events)
                self.log.wait_beyond(msg.from_offset, min(remaining, POLL_SLICE_S))
            return None
        if isinstance(msg, Metadata):
            members = [Member(m.node_id, "127.0.0.1", m.port) for m in self.members]
            return encode_metadata_answer(cid, self.term, self.leader_id, self.log.index, self.node_id, members)
        return encode_error(cid, ErrorCode.MALFORMED, f"unexpected {type(msg).__name__}")

    def _frames(self, cid: int, from_offset: int, next_offset: int, offsets: list[int], events: list[bytes]) -> bytes:
        """FRAMES: the entries read, each encoded as a stored frame (prev_index stamped, as the Raft worker does)."""
        entries: dict[int, list[bytes]] = {}
        if offsets and offsets[0] // BATCH_EVENTS == from_offset // BATCH_EVENTS:  # the whole first entry
            _, before, before_events = self.log.read(from_offset - from_offset % BATCH_EVENTS, 2**62)
            kept = [(o, e) for o, e in zip(before, before_events, strict=True) if o < offsets[0]]
            offsets = [o for o, _ in kept] + offsets
            events = [e for _, e in kept] + events
        for o, e in zip(offsets, events, strict=True):
            entries.setdefault(o // BATCH_EVENTS, []).append(e)
        skip = from_offset % BATCH_EVENTS if entries and min(entries) == from_offset // BATCH_EVENTS else 0
        frames = []
        for index, evs in sorted(entries.items()):
            frame = bytearray(encode_batch(evs, batch_id=index, prev_index=index - 1, term=self.term))
            if index == self.corrupt_frame_index:
                frame[-9] ^= 0x01  # the last payload byte: only the CRC can tell
            frames.append(bytes(frame))
        return encode_frames(cid, next_offset, self.log.commit_offset, skip, sorted(entries), frames)

    def _produce(self, msg: Produce) -> bytes | None:
        cid = msg.correlation_id
        with self._lock:
            self.produce_requests += 1
            drop = self._drop > 0
            if drop:
                self._drop -= 1
            drop_after = self._drop_after_append
            fail = self._fail_code if self._fail_code is not None and time.monotonic() < self._fail_until else None
            if fail is not None and self._fail_count is not None:
                self._fail_count -= 1
                if self._fail_count <= 0:
                    self._fail_code = None
        if drop and not drop_after:
            return None
        if fail is not None:
            return encode_error(cid, fail, f"fake {fail.name}")
        if self.leader_id != self.node_id:
            leader = self.leader_address if self.leader_hint else ""
            return encode_error(cid, ErrorCode.NOT_LEADER, "not leader", leader)
        offsets = self.log.append(msg.producer_id, msg.first_sequence, [bytes(e) for e in msg.events])
        if offsets is None:
            return encode_error(cid, ErrorCode.OUT_OF_ORDER_SEQUENCE, "sequence gap")
        if drop:
            return None
        return encode_produced(cid, offsets)


class FakeCluster:
    """`size` FakeNodes sharing one FakeLog; node 1 leads until `set_leader` moves the lead."""

    def __init__(self, size: int = 3) -> None:
        self.log = FakeLog()
        self.nodes: list[FakeNode] = []
        try:
            for n in range(1, size + 1):
                self.nodes.append(FakeNode(self.log, n))
        except BaseException:
            self.stop()
            raise
        for node in self.nodes:
            node.members = self.nodes
        self.set_leader(1)

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, node_id: int) -> FakeNode:
        return self.nodes[node_id - 1]

    def set_leader(self, node_id: int, *, hint: bool = True, among: list[int] | None = None) -> None:
        """Move the lead (0: no leader); followers name the leader in NOT_LEADER when `hint`.

        `among`: only these nodes learn it (the others, e.g. a hung old leader, keep their stale view).
        """
        for node in self.nodes if among is None else [self.node(n) for n in among]:
            node.term += 1
            node.leader_id = node_id
            node.leader_hint = hint

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
