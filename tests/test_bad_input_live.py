"""Bad input at every port of a running 3-node cluster while a producer runs (issue 6, "bad input").

The leader and one follower get, on their client, data, raft, metrics and Kafka ports: garbage, truncated messages,
oversized declared lengths, wrong magic, bad CRCs, well-formed requests with wrong field values, slow-loris
connections (a byte now and then, never a whole request or handshake) and thousands of idle connections,
part of them while the follower's ingest worker is short of file descriptors (its RLIMIT_NOFILE lowered
with prlimit, so accept() fails with EMFILE). Then:

- the producer's events kept being acknowledged during the attack (no stall longer than STALL_MAX_S);
- no worker was restarted (the supervisors' restart counters) and no traceback was logged;
- slow-loris and idle connections were closed by the nodes, and connections past a limit refused;
- every acknowledged event is on every node exactly once, in the same order (clusterkit.verify);
- bad FETCH_FRAMES and consumer-group requests (protocol version 3: short or long bodies, empty, overrunning,
  too long or non-UTF-8 group names, a negative offset, a version-2 header on a version-3 kind, answers sent as
  requests) get MALFORMED naming the field with the request's correlation id and are closed; well-formed ones
  a node refuses (a FETCH_FRAMES past the end, a group name or metadata over the limit) get their error code
  and keep the connection; no group position is committed by any of them;
- on the Kafka port, what Kafka clients expect: an ApiVersions of a version not served gets the v0 answer
  with UNSUPPORTED_VERSION and the versions served; a bad record batch gets CORRUPT_MESSAGE on its partition
  and the connection goes on; garbage, a size over the limit or below a header, a truncated frame, an API or
  version not served close the connection without an answer (Kafka's way; the line names the field);
- the logs hold a clear line per bad peer, rate-limited: far fewer lines than bad connections, at most one
  per connection, and "suppressed" summaries.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import resource
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from clusterkit import Harness, Load, verify, wait_for

from shmraft.ingest.kafka_door import KAFKA_TOPIC
from shmraft.ipc.state import Worker
from shmraft.kafka import codec as kcodec
from shmraft.kafka import messages as km
from shmraft.kafka.codes import ApiKey
from shmraft.kafka.codes import ErrorCode as KafkaError
from shmraft.kafka.framing import RequestHeader
from shmraft.kafka.records import Record, RecordBatch, encode_batch
from shmraft.net import links, ratelog
from shmraft.node.groups import GROUP_METADATA_BYTES_MAX, GROUP_NAME_BYTES_MAX
from shmraft.wire import client as cp
from shmraft.wire import peer as wp

CLIENT_CONNECTIONS_MAX = 200  # low, so that the idle flood goes past it
CLIENT_REQUEST_TIMEOUT_MS = 1500
CLIENT_IDLE_TIMEOUT_MS = 4000
CONNECTIONS_PER_KIND = 12  # per port and kind of bad input, in the burst phase
SLOW_LORIS_PER_PORT = 8
SLOW_LORIS_BYTE_INTERVAL_S = 0.3
SLOW_LORIS_CLOSED_WITHIN_S = 20.0  # generous: the longest limit is the metrics deadline (5 s) or the handshake
IDLE_PER_CLIENT_PORT = 600  # well past CLIENT_CONNECTIONS_MAX
IDLE_PER_PEER_PORT = 300  # well past INBOUND_MAX
IDLE_PER_METRICS_PORT = 100  # well past METRICS_CONNECTIONS_MAX
EMFILE_SPARE_FDS = 60  # the follower's ingest may open this many more descriptors during the flood
EMFILE_CPU_MAX = 0.5  # share of one core the starved ingest may use while accept() fails: no spinning
STALL_MAX_S = 30.0  # the longest the producer may go without an acknowledgement during the attack
RNG = random.Random(6)

BAD_PEER_LINE = re.compile(
    r"broke the (peer )?protocol|handshake not done|refused connection from|closed the "
    r"connection during the handshake|inbound connections held|client \S+ refused|"
    r"sent \d+ bytes of a request|cannot accept|metrics: "
)
WORKER_COLUMN = re.compile(r" (node\d+ \w+|supervisor) ")
SUPPRESSED_LINE = re.compile(r"more lines suppressed")
IDLE_CLOSED_WITHIN_S = 45.0  # idle timeout, plus SYN retries (1, 3, 7, 15 s) of connects past the listen backlog
# The rate limit each bad-peer line is under: (the `kind` of the logging process's RateLimitedLog, the line's
# text, lines per interval, interval in s). Lines are counted per (node, process, kind).
_RL = (ratelog.LINES_PER_INTERVAL_DEFAULT, ratelog.INTERVAL_S_DEFAULT)
REPEAT_WINDOW_S = 0.5  # two lines of one kind for one remote address this close are one connection logged twice
LINE_KINDS = [
    ("bad peer", re.compile(r"broke the peer protocol"), *_RL),
    ("bad kafka client", re.compile(r"kafka client \S+ broke the protocol"), *_RL),  # the Kafka port's own limiter
    ("bad client", re.compile(r"broke the protocol"), *_RL),
    ("handshake timeout", re.compile(r"handshake not done"), *_RL),
    ("handshake closed", re.compile(r"closed the connection during the handshake"), *_RL),
    ("refused", re.compile(r"refused connection from"), *_RL),
    ("inbound limit", re.compile(r"inbound connections held .*dropped"), *_RL),
    # refusals past the inbound limit have their own limiter: one line per LIMIT_LOG_INTERVAL_S
    ("inbound refused", re.compile(r"inbound connections held .*refused"), 1, links.LIMIT_LOG_INTERVAL_S),
    ("connection limit", re.compile(r"client \S+ refused"), *_RL),
    ("slow request", re.compile(r"sent \d+ bytes of a request"), *_RL),
    ("accept", re.compile(r"cannot accept"), *_RL),
    ("metrics limit", re.compile(r"metrics: connection from .* refused"), *_RL),
    ("metrics client", re.compile(r"metrics: "), *_RL),
]


# --- what is thrown -------------------------------------------------------------------------------------------


def _client_header(kind: int, body_len: int, magic: int = cp.CLIENT_MAGIC, version: int = cp.CLIENT_VERSION) -> bytes:
    return cp.HEADER.pack(magic, version, kind, body_len, 77)


def _peer(kind: int, body: bytes, crc: int | None = None, magic: int = wp.PEER_MAGIC) -> bytes:
    return (
        wp.PEER_HEADER.pack(magic, wp.PEER_VERSION, kind, len(body), wp.peer_crc32(kind, body) if crc is None else crc)
        + body
    )


def _hello(cluster_id: str, node_id: int, to_node_id: int, channel: wp.Channel) -> bytes:
    fields = wp.Hello.__dataclass_fields__  # the handshake's public shape, whatever version of it this is
    values = {
        "cluster_id": cluster_id,
        "node_id": node_id,
        "to_node_id": to_node_id,
        "channel": channel,
        "nonce": bytes(getattr(wp, "NONCE_BYTES", 32)),
    }
    return wp.encode_hello(wp.Hello(**{k: v for k, v in values.items() if k in fields}))


def client_payloads() -> dict[str, bytes]:
    produce = cp.encode_produce(5, 999_001, 0, 1000, [b"attacker-event"])
    return {
        "garbage": RNG.randbytes(3000),
        "truncated": produce[: len(produce) // 2],
        "oversized": _client_header(cp.Kind.PRODUCE, 2**32 - 1) + b"\x00" * 64,
        "wrong_magic": _client_header(cp.Kind.PRODUCE, 8, magic=0xBEEF) + b"\x00" * 8,
        "wrong_version": _client_header(cp.Kind.FETCH, 20, version=9) + b"\x00" * 20,
        "unknown_kind": _client_header(0x42, 0),
        "answer_as_request": cp.encode_produced(1, [1, 2, 3]),
        "zero_events": _client_header(cp.Kind.PRODUCE, 24) + struct.pack("<QQII", 1, 0, 100, 0),
        "lengths_overrun": _client_header(cp.Kind.PRODUCE, 28) + struct.pack("<QQIII", 1, 0, 100, 1, 2**31),
        "metadata_with_body": _client_header(cp.Kind.METADATA, 4) + b"abcd",
        "fetch_far_future": cp.encode_fetch(9, 2**64 - 1, 0, 0),
        "huge_event": cp.encode_produce(10, 999_002, 0, 100, [b"x" * (1 << 20)]),
        **frames_and_group_payloads(),
    }


def _v2(message: bytes) -> bytes:
    """`message` with a version-2 header: the kinds of version 3 (FETCH_FRAMES, groups) do not exist in it."""
    return message[:2] + bytes([2]) + message[3:]


def _group_name(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def frames_and_group_payloads() -> dict[str, bytes]:
    """Bad FETCH_FRAMES and consumer-group requests (protocol version 3): each kind in BAD_V3_FIELD is answered
    MALFORMED naming the field and closed; each kind in BAD_V3_ANSWERED gets its error code and stays open."""
    commit_head = struct.Struct("<qIH")  # GROUP_COMMIT after the name: offset, timeout_ms, metadata length
    commit = cp.encode_group_commit(30, "attacker-group", 64)
    return {
        # FETCH_FRAMES: FETCH's 20-byte body (from_offset, max_bytes, max_wait_ms)
        "frames_short_body": _client_header(cp.Kind.FETCH_FRAMES, 12) + b"\x00" * 12,
        "frames_long_body": _client_header(cp.Kind.FETCH_FRAMES, 24) + b"\x00" * 24,
        "frames_v2": _v2(cp.encode_fetch_frames(31, 0, 1000, 0)),
        "frames_as_request": cp.encode_frames(32, 0, 0, 0, [], []),
        "frames_far_future": cp.encode_fetch_frames(33, 2**64 - 1, 0, 0),
        # GROUP_COMMIT: name length, name, offset, timeout_ms, metadata length, metadata
        "group_commit_v2": _v2(commit),
        "group_commit_empty_name": _client_header(cp.Kind.GROUP_COMMIT, 15) + b"\x00" + commit_head.pack(64, 0, 0),
        "group_commit_bad_utf8": _client_header(cp.Kind.GROUP_COMMIT, 17)
        + _group_name(b"\xff\xfe")
        + commit_head.pack(64, 0, 0),
        "group_commit_name_overrun": _client_header(cp.Kind.GROUP_COMMIT, 11) + bytes([200]) + b"g" * 10,
        "group_commit_negative_offset": _client_header(cp.Kind.GROUP_COMMIT, 16)
        + _group_name(b"g")
        + commit_head.pack(-1, 0, 0),
        "group_commit_metadata_overrun": _client_header(cp.Kind.GROUP_COMMIT, 16 + 4)
        + _group_name(b"g")
        + commit_head.pack(64, 0, 60_000)
        + b"meta",
        "group_commit_trailing": _client_header(cp.Kind.GROUP_COMMIT, 16 + 3)
        + _group_name(b"g")
        + commit_head.pack(64, 0, 0)
        + b"xyz",
        "group_committed_as_request": cp.encode_group_committed(34, 1),
        "group_name_too_long": cp.encode_group_commit(35, "n" * (GROUP_NAME_BYTES_MAX + 1), 64),
        "group_metadata_too_large": cp.encode_group_commit(
            36, "attacker-g", 64, 0, b"m" * (GROUP_METADATA_BYTES_MAX + 1)
        ),
        # GROUP_FETCH: flags, name length, name
        "group_fetch_v2": _v2(cp.encode_group_fetch(37, "g")),
        "group_fetch_no_name": _client_header(cp.Kind.GROUP_FETCH, 1) + b"\x01",
        "group_fetch_bad_utf8": _client_header(cp.Kind.GROUP_FETCH, 4) + b"\x01" + _group_name(b"\xc3\x28"),
        "group_fetch_name_too_long": cp.encode_group_fetch(38, "f" * 255),
        # GROUPS: one flags byte
        "groups_v2": _v2(cp.encode_groups(39)),
        "groups_no_flags": _client_header(cp.Kind.GROUPS, 0),
        "groups_long_body": _client_header(cp.Kind.GROUPS, 5) + b"\x01abcd",
        "groups_answer_as_request": cp.encode_groups_answer(40, 1, 0, []),
    }


# the kind of bad input -> a word the MALFORMED answer's message has (the field it names)
BAD_V3_FIELD = {
    "frames_short_body": "head",
    "frames_long_body": "body",
    "frames_v2": "version",
    "frames_as_request": "kind",
    "group_commit_v2": "version",
    "group_commit_empty_name": "group length",
    "group_commit_bad_utf8": "UTF-8",
    "group_commit_name_overrun": "group",
    "group_commit_negative_offset": "offset",
    "group_commit_metadata_overrun": "metadata",
    "group_commit_trailing": "body",
    "group_committed_as_request": "kind",
    "group_fetch_v2": "version",
    "group_fetch_no_name": "group length",
    "group_fetch_bad_utf8": "UTF-8",
    "groups_v2": "version",
    "groups_no_flags": "flags",
    "groups_long_body": "body",
    "groups_answer_as_request": "kind",
}
# well-formed requests a node refuses with a code, keeping the connection: kind -> the codes it may answer
# (a follower answers NOT_LEADER to a GROUP_COMMIT before looking at its metadata)
BAD_V3_ANSWERED = {
    "frames_far_future": {cp.ErrorCode.OFFSET_OUT_OF_RANGE},
    "group_name_too_long": {cp.ErrorCode.GROUP_NAME_TOO_LONG},
    "group_fetch_name_too_long": {cp.ErrorCode.GROUP_NAME_TOO_LONG},
    "group_metadata_too_large": {cp.ErrorCode.TOO_LARGE, cp.ErrorCode.NOT_LEADER},
}


def peer_payloads(cluster_id: str, channel: wp.Channel, me: int) -> dict[str, bytes]:
    hello = _hello(cluster_id, 2, me, channel)
    return {
        "garbage": RNG.randbytes(3000),
        "truncated": hello[: len(hello) - 5],
        "oversized": wp.PEER_HEADER.pack(wp.PEER_MAGIC, wp.PEER_VERSION, wp.PeerKind.HELLO, 2**32 - 1, 0),
        "wrong_magic": _peer(wp.PeerKind.HELLO, hello[wp.PEER_HEADER_BYTES :], magic=0xBEEF),
        "bad_crc": _peer(wp.PeerKind.HELLO, hello[wp.PEER_HEADER_BYTES :], crc=0x12345678),
        "raft_before_hello": _peer(wp.PeerKind.RAFT, b"\x03" + b"\x00" * 24),
        "other_cluster": _hello("not_this_cluster", 2, me, channel),
        "unknown_node": _hello(cluster_id, 99, me, channel),
        "bad_hello_body": _peer(wp.PeerKind.HELLO, b"\x40" + b"z" * 10),
    }


def metrics_payloads() -> dict[str, bytes]:
    return {
        "garbage": RNG.randbytes(3000),
        "truncated": b"GET /metr",
        "oversized": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        "wrong_method": b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad_header": b"GET /metrics HTTP/1.1\r\n" + b"X" * 70_000 + b"\r\n\r\n",
    }


KAFKA_CID = 77
KAFKA_CLOSE_WITHIN_S = 10.0  # a Kafka connection with bad input is closed by the node within this
ANSWER_WITHIN_S = 10.0  # a refused request that keeps its connection is answered within this (a loaded machine)
ANSWER_GRACE_S = 0.3  # after such an answer, how long the connection is watched for a close that must not come
KAFKA_CLOSED = ("kafka_garbage", "kafka_oversized", "kafka_small", "kafka_truncated", "kafka_unknown_api")
KAFKA_CLOSED += ("kafka_unsupported_version",)
KAFKA_ANSWERED = ("kafka_api_versions_too_new", "kafka_bad_crc")  # answered, the connection kept


def _kafka(key: int, version: int, body: object) -> bytes:
    return kcodec.encode_request(RequestHeader(key, version, KAFKA_CID, "attacker"), body)


def kafka_payloads() -> dict[str, bytes]:
    """Bad input on the Kafka port (a size prefix is a big-endian int32, as in Kafka)."""
    batch = bytearray(encode_batch(RecordBatch(0, [Record(0, b"attacker-kafka-event")])))
    batch[-1] ^= 0xFF  # a record batch whose CRC-32C does not match
    produce = km.ProduceRequest(
        None, -1, 5000, [km.ProduceTopicData(KAFKA_TOPIC, [km.ProducePartitionData(0, bytes(batch))])]
    )
    metadata = _kafka(ApiKey.METADATA, 8, km.MetadataRequest([km.MetadataRequestTopic(KAFKA_TOPIC)]))
    return {
        "kafka_garbage": struct.pack(">i", 3000) + RNG.randbytes(3000),
        "kafka_oversized": struct.pack(">i", 2**31 - 1) + b"\x00" * 64,
        "kafka_small": struct.pack(">i", 3) + b"\x00" * 3,  # below a request header
        # a whole frame whose request body ends inside its last fields (Metadata v8's three booleans)
        "kafka_truncated": struct.pack(">i", len(metadata) - 7) + metadata[4:-3],
        "kafka_unknown_api": struct.pack(">ihhih", 10, 999, 0, KAFKA_CID, -1),
        "kafka_unsupported_version": struct.pack(">ihhih", 10, ApiKey.PRODUCE, 99, KAFKA_CID, -1),
        # header v2 (as ApiVersions v3+: tagged fields after client_id), then a body of a version not known
        "kafka_api_versions_too_new": struct.pack(">ihhihb", 11, ApiKey.API_VERSIONS, 99, KAFKA_CID, -1, 0),
        "kafka_bad_crc": _kafka(ApiKey.PRODUCE, 8, produce),
    }


def kafka_answers(data: bytes, key: int, version: int) -> list[object]:
    """The Kafka answers in `data` (read as answers to `key` at `version`), or the error that stopped reading."""
    out: list[object] = []
    pos = 0
    try:
        while pos + 4 <= len(data):
            (size,) = struct.unpack_from(">i", data, pos)
            out.append(kcodec.decode_response(key, version, data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
    except Exception as exc:  # noqa: BLE001 - reported by the assertion that uses the result
        out.append(exc)
    return out


def throw_seen(
    address: tuple[str, int], payload: bytes, read_s: float = 1.0, answered: Callable[[bytes], bool] | None = None
) -> tuple[bytes, bool]:
    """Connect, send, read what comes back until the node closes or `read_s` passes (with `answered`: or
    ANSWER_GRACE_S after `answered(got)` is true, time for a close that would follow the answer); never raises.
    Also says whether the node closed the connection (False: still open when reading stopped)."""
    got = b""
    closed = False
    try:
        with socket.create_connection(address, timeout=2.0) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass
            s.settimeout(read_s)
            deadline = time.monotonic() + read_s
            while time.monotonic() < deadline:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                got += chunk
                if answered is not None and answered(got):
                    deadline = min(deadline, time.monotonic() + ANSWER_GRACE_S)
                    answered = None
    except TimeoutError:
        pass
    except OSError:
        closed = True  # reset by the node
    return got, closed


# --- slow-loris and idle connections -----------------------------------------------------------------------------


def slow_loris(
    addresses: list[tuple[str, int]], per_port: int, prefix: Callable[[tuple[str, int]], bytes], within_s: float
) -> dict[tuple[str, int], list[float]]:
    """Open `per_port` connections per address and send one byte of `prefix(address)` every
    SLOW_LORIS_BYTE_INTERVAL_S, never the whole of it; return, per address, when each was closed by the node
    (inf if it never was within `within_s`)."""
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    conns: list[tuple[socket.socket, tuple[str, int], bytes]] = []
    for addr in addresses:
        for _ in range(per_port):
            s = socket.create_connection(addr, timeout=2.0)
            s.setblocking(False)
            conns.append((s, addr, prefix(addr)))
            sel.register(s, selectors.EVENT_READ, len(conns) - 1)
    closed_at: dict[int, float] = {}
    sent = [0] * len(conns)
    next_byte = time.monotonic()
    try:
        while len(closed_at) < len(conns) and time.monotonic() - start < within_s:
            for key, _ in sel.select(0.05):
                i = key.data
                try:
                    data = conns[i][0].recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed_at[i] = time.monotonic() - start
                    sel.unregister(conns[i][0])
            if time.monotonic() >= next_byte:
                next_byte += SLOW_LORIS_BYTE_INTERVAL_S
                for i, (s, _addr, pre) in enumerate(conns):
                    if i in closed_at:
                        continue
                    try:
                        s.send(pre[sent[i] % (len(pre) - 1) : sent[i] % (len(pre) - 1) + 1])
                        sent[i] += 1
                    except OSError:
                        closed_at[i] = time.monotonic() - start
                        sel.unregister(s)
    finally:
        for s, _, _ in conns:
            s.close()
        sel.close()
    out: dict[tuple[str, int], list[float]] = {}
    for i, (_s, addr, _) in enumerate(conns):
        out.setdefault(addr, []).append(closed_at.get(i, float("inf")))
    return out


@contextmanager
def idle_connections(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte (non-blocking connects: past the listen backlog, connects
    simply stay pending), closed on exit."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(address)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_peer(s: socket.socket) -> bool | None:
    """True if the node closed it (EOF or reset), False if still open, None if never connected."""
    try:
        data = s.recv(65536)
    except (BlockingIOError, InterruptedError):
        return False
    except ConnectionResetError:
        return True
    except OSError:
        return None
    if data:  # an error answer (too many connections) before the close
        return closed_by_peer(s) if s.fileno() >= 0 else True
    return True


# --- the test ----------------------------------------------------------------------------------------------------


class ProgressWatch:
    """Samples the producer's acknowledged count; the longest time it did not grow is the stall."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.monotonic(), len(self.load.acked)))

    def longest_stall_s(self) -> float:
        longest, since, last = 0.0, None, -1
        for t, n in self.samples:
            if since is None or n > last:
                since, last = t, n
            longest = max(longest, t - since)
        return longest


@pytest.fixture
def nofile_at_hard_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _ports(h: Harness, node: int) -> dict[str, tuple[str, int]]:
    m = h.config(node).me
    return {
        "client": (m.host, m.client_port),
        "data": (m.host, m.data_port),
        "raft": (m.host, m.raft_port),
        "metrics": (m.host, m.metrics_port),
        "kafka": (m.host, m.kafka_port),
    }


def _burst(h: Harness, targets: list[int]) -> list[bytes]:
    """Every kind of bad input at every port of every target; returns the client ports' answers."""
    jobs: list[tuple[tuple[str, int], bytes, str]] = []
    for node in targets:
        ports = _ports(h, node)
        for name, payload in client_payloads().items():
            jobs += [(ports["client"], payload, name)] * CONNECTIONS_PER_KIND
        for port, channel in (("data", wp.Channel.DATA), ("raft", wp.Channel.CONSENSUS)):
            for payload in peer_payloads(h.cluster_id, channel, node).values():
                jobs += [(ports[port], payload, "peer")] * CONNECTIONS_PER_KIND
        for payload in metrics_payloads().values():
            jobs += [(ports["metrics"], payload, "metrics")] * CONNECTIONS_PER_KIND
        for name, payload in kafka_payloads().items():
            jobs += [(ports["kafka"], payload, name)] * CONNECTIONS_PER_KIND
    RNG.shuffle(jobs)
    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(lambda j: (j[2], throw_seen(j[0], j[1], _read_s(j[2]), _answered(j[2]))), jobs))
    return [(name, a) for name, a in answers if name not in ("peer", "metrics")], len(jobs)


def _read_s(kind: str) -> float:
    """How long a burst connection waits for the node: Kafka's bad input closes without an answer, so the test
    waits for the close itself (a loaded 2-core machine may take a while)."""
    if kind in KAFKA_CLOSED:
        return KAFKA_CLOSE_WITHIN_S
    if kind in KAFKA_ANSWERED or kind in BAD_V3_ANSWERED or kind in BAD_V3_FIELD:
        return ANSWER_WITHIN_S  # the read ends at the answer (and its close), long before this unless starved
    return 1.0


def _answered(kind: str) -> Callable[[bytes], bool] | None:
    """For a kind answered with one message: whether the bytes read hold it whole (then reading stops soon)."""
    if kind in KAFKA_ANSWERED:
        return lambda d: len(d) >= 4 and len(d) >= 4 + struct.unpack_from(">i", d)[0]
    if kind in BAD_V3_ANSWERED or kind in BAD_V3_FIELD:
        return lambda d: len(d) >= cp.HEADER_BYTES and len(d) >= cp.HEADER_BYTES + cp.HEADER.unpack_from(d)[3]
    return None


def check_kafka_answers(answers: list[tuple[str, tuple[bytes, bool]]]) -> None:
    """What Kafka clients expect from the Kafka port's bad input (the module docstring)."""
    got: dict[str, list[tuple[bytes, bool]]] = {}
    for name, seen in answers:
        if name.startswith("kafka_"):
            got.setdefault(name, []).append(seen)
    for name in KAFKA_CLOSED:  # no answer, and closed by the node
        assert got[name] and all(a == (b"", True) for a in got[name]), (name, got[name][:3])
    for name in KAFKA_ANSWERED:  # answered, and the connection goes on
        assert all(not closed for _, closed in got[name]), (name, got[name][:3])
    for data, _ in got["kafka_api_versions_too_new"]:
        ((cid, body),) = kafka_answers(data, ApiKey.API_VERSIONS, 0)
        assert cid == KAFKA_CID and body.error_code == KafkaError.UNSUPPORTED_VERSION, body
        assert {r.api_key for r in body.api_keys} >= {ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA}
    corrupt = []
    for data, _ in got["kafka_bad_crc"]:  # the leader checks the CRC-32C; a follower refuses any Produce first
        ((cid, body),) = kafka_answers(data, ApiKey.PRODUCE, 8)
        part = body.responses[0].partition_responses[0]
        assert cid == KAFKA_CID and part.error_code in (KafkaError.CORRUPT_MESSAGE, KafkaError.NOT_LEADER_OR_FOLLOWER)
        if part.error_code == KafkaError.CORRUPT_MESSAGE:
            corrupt.append(part)
    assert corrupt and all("crc" in (p.error_message or "").lower() for p in corrupt), corrupt[:3]


def check_frames_and_group_answers(answers: list[tuple[str, tuple[bytes, bool]]]) -> None:
    """Bad FETCH_FRAMES and group requests: MALFORMED naming the field, with the request's correlation id, then
    closed (BAD_V3_FIELD); or the code of a well-formed refusal, the connection kept (BAD_V3_ANSWERED)."""
    payloads = frames_and_group_payloads()
    got: dict[str, list[tuple[list[cp.Message], bool]]] = {}
    for name, (data, closed) in answers:
        if name in payloads:
            got.setdefault(name, []).append((_decode_answers(data), closed))
    assert set(got) == set(payloads), set(payloads) - set(got)
    for kind, field in BAD_V3_FIELD.items():
        cid = cp.HEADER.unpack_from(payloads[kind])[4]
        for msgs, closed in got[kind]:
            assert len(msgs) == 1 and isinstance(msgs[0], cp.Error), (kind, msgs)
            e = msgs[0]
            assert e.code is cp.ErrorCode.MALFORMED and field in e.message and "expected" in e.message, (kind, e)
            assert e.correlation_id == cid, (kind, e.correlation_id, cid)
            assert closed, f"{kind}: the connection stayed open after MALFORMED"
    for kind, codes in BAD_V3_ANSWERED.items():
        cid = cp.HEADER.unpack_from(payloads[kind])[4]
        for msgs, closed in got[kind]:
            assert len(msgs) == 1 and isinstance(msgs[0], cp.Error), (kind, msgs)
            assert msgs[0].code in codes and msgs[0].correlation_id == cid, (kind, msgs[0])
            assert not closed, f"{kind}: a refused well-formed request closed the connection"


def _decode_answers(data: bytes) -> list[cp.Message]:
    reader = cp.MessageReader()
    reader.feed(data)
    out = []
    try:
        while (m := reader.next_message()) is not None:
            out.append(m)
    except Exception as exc:  # noqa: BLE001 - reported by the assertion that uses the result
        out.append(exc)
    return out


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def test_bad_input_at_every_port_while_producing(tmp_path: Path, nofile_at_hard_limit: None) -> None:
    h = Harness(
        tmp_path,
        client_connections_max=CLIENT_CONNECTIONS_MAX,
        client_request_timeout_ms=CLIENT_REQUEST_TIMEOUT_MS,
        client_idle_timeout_ms=CLIENT_IDLE_TIMEOUT_MS,
        kafka=True,
    )
    started = time.monotonic()  # any rate-limit window of a bad-peer line starts after this
    try:
        h.start()
        leader = h.wait_leader()
        follower = next(n for n in h.followers() if n != leader)
        targets = [leader, follower]
        restarts_before = {(n, w): h.restarts(n, w) for n in targets for w in Worker}
        bad_connections = 0
        with Load(h, events_per_call=10) as load:
            load.wait_acked(100, 60)
            with ProgressWatch(load) as watch:
                # 1. a burst of every kind of bad input at every port
                answers, n = _burst(h, targets)
                bad_connections += n
                check_kafka_answers(answers)
                by_kind: dict[str, list] = {}
                for name, (data, _closed) in answers:
                    if not name.startswith("kafka_"):
                        by_kind.setdefault(name, []).append(_decode_answers(data))
                for kind in (
                    "garbage",
                    "wrong_magic",
                    "wrong_version",
                    "oversized",
                    "zero_events",
                    "unknown_kind",
                    "lengths_overrun",
                    "metadata_with_body",
                    "answer_as_request",
                ):
                    errors = [m for msgs in by_kind[kind] for m in msgs if isinstance(m, cp.Error)]
                    assert errors and all(e.code is cp.ErrorCode.MALFORMED for e in errors), (kind, by_kind[kind][:3])
                wrong_magic = [m for msgs in by_kind["wrong_magic"] for m in msgs]
                assert any("magic" in e.message and "expected" in e.message for e in wrong_magic), wrong_magic[:3]
                check_frames_and_group_answers(answers)
                with h.client() as c:
                    assert c.groups() == [], "a bad group request committed a position"

                # 2. slow-loris: a byte now and then, never a whole request or handshake; the nodes must close
                def prefix(addr: tuple[str, int]) -> bytes:
                    for node in targets:
                        ports = _ports(h, node)
                        if addr == ports["client"]:
                            return cp.encode_produce(1, 999_003, 0, 100, [b"slow" * 50])
                        if addr == ports["metrics"]:
                            return b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 100
                        if addr == ports["kafka"]:
                            return _kafka(ApiKey.METADATA, 8, km.MetadataRequest([km.MetadataRequestTopic("s" * 200)]))
                    return _hello(h.cluster_id, 2, 1, wp.Channel.DATA) * 2

                addresses = [a for node in targets for a in _ports(h, node).values()]
                closed = slow_loris(addresses, SLOW_LORIS_PER_PORT, prefix, SLOW_LORIS_CLOSED_WITHIN_S)
                bad_connections += SLOW_LORIS_PER_PORT * len(addresses)
                never = {f"{a[1]}": [t for t in ts if t == float("inf")] for a, ts in closed.items()}
                assert not any(never.values()), f"slow-loris connections never closed, by port: {never}"
                for node in targets:
                    for port in ("client", "kafka"):  # closed by the slow-request timeout, not before
                        client_closed = closed[_ports(h, node)[port]]
                        assert min(client_closed) >= CLIENT_REQUEST_TIMEOUT_MS / 1000 * 0.9, (port, client_closed)

                # 3. thousands of idle connections, past every limit, with the follower's ingest out of fds
                ingest_pid = h.worker_pids(follower)[Worker.INGEST]
                open_fds = len(os.listdir(f"/proc/{ingest_pid}/fd"))
                old_limit = resource.prlimit(ingest_pid, resource.RLIMIT_NOFILE)
                resource.prlimit(ingest_pid, resource.RLIMIT_NOFILE, (open_fds + EMFILE_SPARE_FDS, old_limit[1]))
                try:
                    lp, fp = _ports(h, leader), _ports(h, follower)
                    with (
                        idle_connections(lp["client"], IDLE_PER_CLIENT_PORT) as leader_idle,
                        idle_connections(fp["client"], IDLE_PER_CLIENT_PORT),
                        idle_connections(lp["raft"], IDLE_PER_PEER_PORT),
                        idle_connections(lp["data"], IDLE_PER_PEER_PORT),
                        idle_connections(fp["raft"], IDLE_PER_PEER_PORT),
                        idle_connections(lp["metrics"], IDLE_PER_METRICS_PORT),
                        idle_connections(fp["metrics"], IDLE_PER_METRICS_PORT),
                    ):
                        bad_connections += 2 * IDLE_PER_CLIENT_PORT + 3 * IDLE_PER_PEER_PORT + 2 * IDLE_PER_METRICS_PORT
                        cpu0, t0 = _cpu_s(ingest_pid), time.monotonic()
                        time.sleep(3.0)  # measuring, not synchronising: the starved ingest's CPU over a window
                        cpu_share = (_cpu_s(ingest_pid) - cpu0) / (time.monotonic() - t0)
                        assert cpu_share < EMFILE_CPU_MAX, f"ingest at {cpu_share:.0%} of a core while out of fds"
                        # idle connections are closed by the node (past the limit at once, the others when idle)
                        wait_for(
                            lambda: all(closed_by_peer(s) is not False for s in leader_idle),
                            IDLE_CLOSED_WITHIN_S,
                            "every idle client connection closed by leader",
                        )
                finally:
                    resource.prlimit(ingest_pid, resource.RLIMIT_NOFILE, old_limit)
                assert h.worker_pids(follower)[Worker.INGEST] == ingest_pid, "the starved ingest was restarted"
                acked_after_attack = len(load.acked)
            load.wait_acked(acked_after_attack + 200, 60)
            stall = watch.longest_stall_s()
        assert stall < STALL_MAX_S, f"the producer got no acknowledgement for {stall:.1f} s during the attack"

        restarts_after = {(n, w): h.restarts(n, w) for n in targets for w in Worker}
        assert restarts_after == restarts_before, f"workers restarted: {restarts_before} -> {restarts_after}"
        verify(h, load.acked)

        logs = {n: (h.log_dir / f"node{n}.log").read_text(errors="replace") for n in targets}
        logged_within_s = time.monotonic() - started
        for node, text in logs.items():
            assert "Traceback" not in text, f"node {node} logged a traceback:\n{text[text.index('Traceback') :][:3000]}"
        lines = [(n, ln) for n, text in logs.items() for ln in text.splitlines() if BAD_PEER_LINE.search(ln)]
        suppressed = [ln for text in logs.values() for ln in text.splitlines() if SUPPRESSED_LINE.search(ln)]
        assert lines, "no bad peer was logged"
        assert suppressed, "no 'suppressed' summary: the logging was not rate-limited"
        assert "cannot accept client connections" in logs[follower], "the EMFILE path was not exercised"
        # rate-limited: per process and kind at most lines_per_interval per window, and a window starts at most
        # once per interval in the logged_within_s the cluster ran (broken limiting: hundreds for the floods)
        per_kind: dict[tuple[int, str, str], int] = {}
        bound: dict[tuple[int, str, str], int] = {}
        for n, ln in lines:
            kind, per_interval, interval_s = next(
                ((k, p, i) for k, pattern, p, i in LINE_KINDS if pattern.search(ln)), ("unclassified", 0, 1.0)
            )
            w = WORKER_COLUMN.search(ln)
            key = (n, w.group(1) if w else "?", kind)
            per_kind[key] = per_kind.get(key, 0) + 1
            bound[key] = per_interval * (int(logged_within_s // interval_s) + 1)
        over = {key: (count, bound[key]) for key, count in per_kind.items() if count > bound[key]}
        assert not over, (
            f"bad-peer lines over the rate limit in {logged_within_s:.0f} s, (node, process, kind): "
            f"(lines, bound) {over}"
        )

        # one line per bad peer: the same connection (process, kind of line, remote address) is never logged
        # twice. The OS reuses ephemeral ports (thousands of bad connections here), so a remote address names
        # a connection only together with the kind of line and the moment: two lines for one connection come
        # from handling one event, well within REPEAT_WINDOW_S; a reused port's next connection is logged later
        # (seen on a busy machine: a native and the next Kafka connection from one port 74 ms apart)
        def line_kind(ln: str) -> str:
            return next((k for k, pattern, _p, _i in LINE_KINDS if pattern.search(ln)), "unclassified")

        def line_time_s(ln: str) -> float:
            stamp = datetime.datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()

        by_conn: dict[tuple[int, str, str, str], list[tuple[float, str]]] = {}
        for n, ln in lines:
            m, w = re.search(r"127\.0\.0\.1:\d+", ln), WORKER_COLUMN.search(ln)
            if m and w:
                by_conn.setdefault((n, w.group(0), line_kind(ln), m.group(0)), []).append((line_time_s(ln), ln))
        repeated_lines = []
        for seen in by_conn.values():
            ordered = sorted(seen)
            repeated_lines += [
                (ordered[i][1], ordered[i + 1][1])
                for i in range(len(ordered) - 1)
                if ordered[i + 1][0] - ordered[i][0] < REPEAT_WINDOW_S
            ]
        assert not repeated_lines, f"several lines for one bad peer: {repeated_lines[:5]}"
        print(
            f"\nbad connections {bad_connections}, bad-peer log lines {len(lines)} in {logged_within_s:.0f} s, "
            f"most per process and kind {max(per_kind.values())}, summaries {len(suppressed)}, "
            f"acknowledged {len(load.acked)}, longest stall {stall:.1f} s, starved ingest CPU {cpu_share:.0%}"
        )
    finally:
        h.stop()
