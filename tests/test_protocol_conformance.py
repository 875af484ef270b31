"""docs/PROTOCOL.md section 2, rule by rule, against a real node driven with raw bytes over a socket.

One single-node cluster (real processes, shared memory, RocksDB, TCP) with a tiny retention, so that the log
start moves; each test names the rule it checks and speaks only the bytes the document describes.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
from clusterkit import Harness, wait_for

from shmraft.node.groups import GROUP_NAME_BYTES_MAX
from shmraft.wire import client as cp
from shmraft.wire.frame import decode_batch

RETAIN_ENTRIES = 20
ANSWER_TIMEOUT_S = 10.0


class Raw:
    """A client socket that sends bytes and reads whole messages (the codec only frames the answers)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_S)
        self.reader = cp.MessageReader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> cp.Message:
        while (msg := self.reader.next_message()) is None:
            data = self.sock.recv(1 << 16)
            assert data, "the node closed the connection without an answer"
            self.reader.feed(data)
        return msg

    def raw_answer(self) -> bytes:
        """The bytes the node sent until it closed the connection (for answers of another version)."""
        out = b""
        while data := self.sock.recv(1 << 16):
            out += data
        return out

    def closed_by_node(self) -> bool:
        self.sock.settimeout(ANSWER_TIMEOUT_S)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def ask(self, data: bytes) -> cp.Message:
        self.send(data)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("conformance"), nodes=1, retain_entries_max=RETAIN_ENTRIES)
    try:
        h.start()
        yield h
    finally:
        h.stop()


@pytest.fixture
def raw(node: Harness) -> Iterator[Raw]:
    r = Raw(node.addresses[0])
    try:
        yield r
    finally:
        r.close()


def _produce(raw: Raw, cid: int, pid: int, seq: int, events: list[bytes]) -> cp.Message:
    return raw.ask(cp.encode_produce(cid, pid, seq, 5000, events))


def _fill_past_retention(raw: Raw, pid: int) -> list[int]:
    """One PRODUCE per entry until retention has deleted the start of the log; the offsets written."""
    offsets = []
    for i in range(RETAIN_ENTRIES * 2):
        ans = _produce(raw, 1000 + i, pid, i, [f"fill-{i}".encode()])
        assert isinstance(ans, cp.Produced), ans
        offsets += ans.offsets.tolist()
    return offsets


def test_malformed_answer_echoes_the_correlation_id_and_closes(raw: Raw) -> None:
    body = b"\x00" * 4  # a PRODUCE body too short for its head
    ans = raw.ask(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.PRODUCE, len(body), 4242) + body)
    assert isinstance(ans, cp.Error) and ans.code is cp.ErrorCode.MALFORMED and ans.correlation_id == 4242
    assert "PRODUCE.head" in ans.message
    assert raw.closed_by_node()


def test_bad_magic_answer_carries_correlation_id_zero(raw: Raw) -> None:
    ans = raw.ask(cp.HEADER.pack(0xBEEF, cp.CLIENT_VERSION, cp.Kind.METADATA, 0, 99))
    assert isinstance(ans, cp.Error) and ans.code is cp.ErrorCode.MALFORMED and ans.correlation_id == 0
    assert raw.closed_by_node()


def test_version_1_is_refused_by_name_in_its_own_layout(raw: Raw) -> None:
    raw.send(cp.HEADER.pack(cp.CLIENT_MAGIC, 1, cp.Kind.METADATA, 0, 77))
    assert raw.raw_answer() == cp.encode_version_refused(77, 1)


def test_metadata_answer_states_the_limits(node: Harness, raw: Raw) -> None:
    ans = raw.ask(cp.encode_metadata(3))
    assert isinstance(ans, cp.MetadataAnswer) and ans.correlation_id == 3
    c = node.config(1)
    assert ans.limits.request_bytes_max == c.client_request_bytes_max
    assert ans.limits.inflight_bytes_max == c.client_inflight_bytes_max
    assert ans.limits.fetch_bytes_max == c.fetch_bytes_max
    assert ans.limits.produce_events_max == cp.PRODUCE_EVENTS_MAX and ans.limits.event_bytes_max > 0
    assert ans.limits.dedup_horizon_entries > 0 and ans.limits.dedup_spans_max > 0


def test_too_large_event_is_refused_and_the_connection_stays(raw: Raw) -> None:
    limit = raw.ask(cp.encode_metadata(1)).limits.event_bytes_max  # type: ignore[union-attr]
    ans = _produce(raw, 5, 0x7001, 0, [b"x" * (limit + 1)])
    assert isinstance(ans, cp.Error) and ans.code is cp.ErrorCode.TOO_LARGE and ans.correlation_id == 5
    assert isinstance(_produce(raw, 6, 0x7001, 0, [b"x" * limit]), cp.Produced)


def test_duplicate_is_answered_with_the_first_writes_offsets(raw: Raw) -> None:
    first = _produce(raw, 1, 0x7002, 0, [b"first-a", b"first-b"])
    again = _produce(raw, 2, 0x7002, 0, [b"other-a", b"other-b"])  # same sequences, other bytes
    assert isinstance(first, cp.Produced) and isinstance(again, cp.Produced)
    assert again.offsets.tolist() == first.offsets.tolist()
    fetched = raw.ask(cp.encode_fetch(3, int(first.offsets[0]), 1 << 16, 0))
    assert isinstance(fetched, cp.Fetched)
    assert [bytes(e) for e in fetched.events[:2]] == [b"first-a", b"first-b"]


def test_producer_may_start_at_any_sequence_and_a_gap_is_out_of_order(raw: Raw) -> None:
    assert isinstance(_produce(raw, 1, 0x7003, 1_000_000, [b"a"]), cp.Produced)
    gap = _produce(raw, 2, 0x7003, 1_000_002, [b"c"])
    assert isinstance(gap, cp.Error) and gap.code is cp.ErrorCode.OUT_OF_ORDER_SEQUENCE and gap.code.retriable
    assert isinstance(_produce(raw, 3, 0x7003, 1_000_001, [b"b"]), cp.Produced)  # same connection goes on
    assert isinstance(_produce(raw, 4, 0x7003, 1_000_002, [b"c"]), cp.Produced)


def test_producer_id_zero_is_not_reserved(raw: Raw) -> None:
    assert isinstance(_produce(raw, 1, 0, 0, [b"zero"]), cp.Produced)


def test_retry_older_than_the_dedup_window_is_sequence_too_old_and_keeps_the_connection(raw: Raw) -> None:
    spans = raw.ask(cp.encode_metadata(1)).limits.dedup_spans_max  # type: ignore[union-attr]
    for seq in range(spans + 1):
        assert isinstance(_produce(raw, 10 + seq, 0x7004, seq, [b"s"]), cp.Produced)
    old = _produce(raw, 9, 0x7004, 0, [b"s"])
    assert isinstance(old, cp.Error) and old.code is cp.ErrorCode.SEQUENCE_TOO_OLD and old.correlation_id == 9
    assert not old.code.retriable
    assert isinstance(raw.ask(cp.encode_metadata(8)), cp.MetadataAnswer)  # still open


def test_fetch_below_the_earliest_offset_is_offset_out_of_range_with_both_offsets(raw: Raw) -> None:
    _fill_past_retention(raw, 0x7005)

    def below_start() -> cp.Error | None:
        a = raw.ask(cp.encode_fetch(7, 0, 1 << 16, 0))
        return a if isinstance(a, cp.Error) else None

    ans = wait_for(below_start, ANSWER_TIMEOUT_S, "retention to delete the start of the log")
    assert ans.code is cp.ErrorCode.OFFSET_OUT_OF_RANGE and ans.correlation_id == 7
    meta = raw.ask(cp.encode_metadata(8))
    assert ans.earliest_offset > 0 and ans.earliest_offset % 64 == 0
    assert ans.latest_offset <= (meta.commit_index + 1) * 64  # type: ignore[union-attr]
    ok = raw.ask(cp.encode_fetch(9, ans.earliest_offset, 1 << 16, 0))
    assert isinstance(ok, cp.Fetched) and ok.offsets.size and int(ok.offsets[0]) >= ans.earliest_offset


def test_fetch_past_the_log_end_is_offset_out_of_range(raw: Raw) -> None:
    meta = raw.ask(cp.encode_metadata(1))
    far = (meta.commit_index + 100) * 64  # type: ignore[union-attr]
    ans = raw.ask(cp.encode_fetch(2, far, 1 << 16, 0))
    assert isinstance(ans, cp.Error) and ans.code is cp.ErrorCode.OFFSET_OUT_OF_RANGE
    assert ans.earliest_offset <= far and ans.latest_offset == (meta.commit_index + 1) * 64  # type: ignore[union-attr]


def test_empty_answer_means_nothing_committed_at_or_after_from_offset(raw: Raw) -> None:
    produced = _produce(raw, 1, 0x7006, 0, [b"last"])
    assert isinstance(produced, cp.Produced)
    after = int(produced.offsets[0]) + 1
    ans = raw.ask(cp.encode_fetch(2, after, 1 << 16, 0))
    assert isinstance(ans, cp.Fetched) and ans.offsets.size == 0
    assert ans.next_offset == max(after, ans.commit_offset) and ans.commit_offset % 64 == 0


def test_max_bytes_zero_still_gives_one_whole_batch(raw: Raw) -> None:
    produced = _produce(raw, 1, 0x7007, 0, [b"one", b"two", b"three"])
    assert isinstance(produced, cp.Produced)
    ans = raw.ask(cp.encode_fetch(2, int(produced.offsets[0]), 0, 0))
    assert isinstance(ans, cp.Fetched) and [bytes(e) for e in ans.events][:3] == [b"one", b"two", b"three"]


def test_commit_offset_is_the_end_of_the_last_committed_batch(raw: Raw) -> None:
    produced = _produce(raw, 1, 0x7008, 0, [b"solo"])
    assert isinstance(produced, cp.Produced)
    ans = raw.ask(cp.encode_fetch(2, int(produced.offsets[0]), 1 << 16, 0))
    assert isinstance(ans, cp.Fetched) and ans.commit_offset == (int(produced.offsets[0]) // 64 + 1) * 64


def test_long_poll_waits_for_an_event_at_or_after_from_offset(node: Harness, raw: Raw) -> None:
    meta = raw.ask(cp.encode_metadata(1))
    end = (meta.commit_index + 1) * 64  # type: ignore[union-attr]
    started = time.monotonic()
    raw.send(cp.encode_fetch(2, end, 1 << 16, 5000))
    producer = Raw(node.addresses[0])
    try:
        time.sleep(0.3)  # the poll must be parked before the event comes, to show it waited for it
        assert isinstance(_produce(producer, 3, 0x7009, 0, [b"awaited"]), cp.Produced)
    finally:
        producer.close()
    ans = raw.answer()
    assert isinstance(ans, cp.Fetched) and [bytes(e) for e in ans.events] == [b"awaited"]
    assert time.monotonic() - started < 5.0  # answered by the commit, not by the end of the wait


# --- consumer groups (section 2.6), version 3 ----------------------------------------------------------------


def test_group_commit_fetch_and_list_round_trip(raw: Raw) -> None:
    committed = raw.ask(cp.encode_group_commit(301, "conf-g", 4096, 5000, b"meta"))
    assert isinstance(committed, cp.GroupCommitted) and committed.correlation_id == 301 and committed.index > 0
    pos = raw.ask(cp.encode_group_fetch(302, "conf-g"))
    assert isinstance(pos, cp.GroupPosition) and (pos.offset, pos.index, pos.metadata) == (
        4096,
        committed.index,
        b"meta",
    )
    assert pos.applied_index >= committed.index
    listed = raw.ask(cp.encode_groups(303))
    assert isinstance(listed, cp.GroupsAnswer) and ("conf-g", 4096) in [(g.group, g.offset) for g in listed.groups]


def test_unknown_group_and_too_long_name_keep_the_connection(raw: Raw) -> None:
    unknown = raw.ask(cp.encode_group_fetch(311, "conf-nobody"))
    assert (
        isinstance(unknown, cp.Error) and unknown.code is cp.ErrorCode.UNKNOWN_GROUP and unknown.correlation_id == 311
    )
    long_name = "x" * (GROUP_NAME_BYTES_MAX + 1)
    too_long = raw.ask(cp.encode_group_commit(312, long_name, 1))
    assert isinstance(too_long, cp.Error) and too_long.code is cp.ErrorCode.GROUP_NAME_TOO_LONG
    assert isinstance(raw.ask(cp.encode_metadata(313)), cp.MetadataAnswer)  # still open


def test_a_group_kind_in_a_version_2_request_is_malformed_and_version_2_is_answered_in_version_2(raw: Raw) -> None:
    meta = cp.encode_metadata(321)
    raw.send(meta[:2] + bytes([2]) + meta[3:])
    answer = raw.sock.recv(1 << 16)
    assert answer[2] == 2  # the answer's header names version 2, and its limits are version 2's eight
    r = cp.MessageReader()
    r.feed(answer)
    got = r.next_message()
    assert isinstance(got, cp.MetadataAnswer) and got.limits.groups_max == 0 and got.limits.dedup_producers_max > 0
    fetch = cp.encode_group_fetch(322, "g")
    answer = raw.ask(fetch[:2] + bytes([2]) + fetch[3:])
    assert isinstance(answer, cp.Error) and answer.code is cp.ErrorCode.MALFORMED and answer.correlation_id == 322
    assert "version" in answer.message and raw.closed_by_node()


def test_an_empty_group_name_is_malformed(raw: Raw) -> None:
    body = b"\x01\x00"  # flags, name length 0
    answer = raw.ask(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.GROUP_FETCH, len(body), 331) + body)
    assert isinstance(answer, cp.Error) and answer.code is cp.ErrorCode.MALFORMED and "group length" in answer.message
    assert raw.closed_by_node()


# --- FETCH_FRAMES / FRAMES (section 2.5, version 3): raw bytes in, the answer parsed by hand ------------------


def _raw_fetch_frames(cid: int, from_offset: int, max_bytes: int, version: int = 3) -> bytes:
    body = struct.pack("<QII", from_offset, max_bytes, 0)
    return struct.pack("<HBBIQ", 0x5253, version, 0x05, len(body), cid) + body


def _frames_by_hand(raw: Raw) -> tuple[int, int, int, list[tuple[int, bytes]], bytes]:
    """(next_offset, commit_offset, first_skip, [(index, frame)], the header) of one FRAMES, read from the
    socket byte by byte as section 2.1's table lays it out."""
    head = _recv_exactly(raw.sock, 16)
    magic, version, kind, body_len, _cid = struct.unpack("<HBBIQ", head)
    assert (magic, version, kind) == (0x5253, 3, 0x85), head.hex()
    body = _recv_exactly(raw.sock, body_len)
    next_offset, commit_offset, count, first_skip = struct.unpack_from("<QQIH", body, 0)
    pos, frames = 22, []
    for _ in range(count):
        index, size = struct.unpack_from("<QI", body, pos)
        frames.append((index, body[pos + 12 : pos + 12 + size]))
        pos += 12 + size
    assert pos == body_len
    return next_offset, commit_offset, first_skip, frames, head


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        assert data, "the node closed the connection mid-answer"
        out += data
    return out


def test_fetch_frames_answers_the_stored_frames_with_their_crc_index_and_first_skip(raw: Raw) -> None:
    events = [b"frame-a", b"frame-b", b"frame-c"]
    produced = _produce(raw, 401, 4401, 0, events)
    assert isinstance(produced, cp.Produced), produced
    second = produced.offsets.tolist()[1]
    raw.send(_raw_fetch_frames(402, second, 1 << 20))
    next_offset, commit_offset, first_skip, frames, _ = _frames_by_hand(raw)
    assert frames and frames[0][0] == second // 64 and first_skip == second % 64
    assert commit_offset >= next_offset > second
    records = []
    for i, (index, frame) in enumerate(frames):
        batch = decode_batch(frame)  # section 1.4: CRC32, footer, tables
        assert zlib.crc32(frame[16 : 48 + batch.header.payload_len], zlib.crc32(frame[:12])) == batch.header.crc32
        assert batch.header.prev_index + 1 == index  # stamped by the Raft worker, under the CRC
        skip = first_skip if i == 0 else 0
        records += [(index * 64 + k, bytes(e)) for k, e in enumerate(batch.events)][skip:]
    want = dict(zip(produced.offsets.tolist(), events, strict=True))
    assert [(o, e) for o, e in records if o in want] == [(o, want[o]) for o in sorted(want) if o >= second]
    fetched = raw.ask(cp.encode_fetch(403, second, 1 << 20))  # FETCH reads the same events, re-encoded
    assert isinstance(fetched, cp.Fetched)
    same = [(o, bytes(e)) for o, e in zip(fetched.offsets.tolist(), fetched.events, strict=True) if o < next_offset]
    assert same == [r for r in records if r[0] < fetched.next_offset]


def test_fetch_frames_max_bytes_counts_whole_frames_and_returns_at_least_one(raw: Raw) -> None:
    firsts = []
    for i in range(3):  # three PRODUCEs answered one by one: three log entries
        ans = _produce(raw, 410 + i, 4410, i, [f"one-{i}".encode()])
        assert isinstance(ans, cp.Produced), ans
        firsts.append(int(ans.offsets[0]))
    raw.send(_raw_fetch_frames(414, firsts[0], 0))
    _, _, _, frames, _ = _frames_by_hand(raw)
    assert len(frames) == 1 and frames[0][0] == firsts[0] // 64
    size = len(frames[0][1])
    raw.send(_raw_fetch_frames(415, firsts[0], size + 1))  # the first frame leaves the total below: one more
    _, _, _, frames, _ = _frames_by_hand(raw)
    assert [i for i, _ in frames] == [firsts[0] // 64, firsts[1] // 64]


def test_fetch_frames_in_a_version_2_request_is_malformed_and_closes(raw: Raw) -> None:
    answer = raw.ask(_raw_fetch_frames(421, 0, 1024, version=2))
    assert isinstance(answer, cp.Error) and answer.code is cp.ErrorCode.MALFORMED and answer.correlation_id == 421
    assert "version" in answer.message and raw.closed_by_node()


def test_fetch_frames_past_the_end_is_offset_out_of_range_and_keeps_the_connection(raw: Raw) -> None:
    answer = raw.ask(_raw_fetch_frames(431, 2**50, 1024))
    assert isinstance(answer, cp.Error) and answer.code is cp.ErrorCode.OFFSET_OUT_OF_RANGE
    assert answer.correlation_id == 431 and answer.latest_offset > 0
    assert isinstance(raw.ask(cp.encode_metadata(432)), cp.MetadataAnswer)
