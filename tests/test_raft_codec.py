"""Raft messages round-trip through their peer encoding; malformed bodies are refused by field."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.types import Entry
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError
from shmraft.wire.raft_codec import (
    SNAPSHOT_CHUNK_BYTES_MAX,
    SNAPSHOT_CONFIG_BYTES_MAX,
    SNAPSHOT_TOTAL_BYTES_MAX,
    decode_raft,
    encode_raft,
)

ids = st.integers(1, 7)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def appends(draw) -> AppendEntries:
    prev = draw(st.integers(0, 2**40))
    datas = draw(st.lists(st.binary(max_size=200), max_size=10))
    terms = draw(st.lists(st.integers(0, 2**32), min_size=len(datas), max_size=len(datas)))
    entries = tuple(Entry(prev + 1 + i, t, d) for i, (t, d) in enumerate(zip(terms, datas, strict=True)))
    return AppendEntries(draw(ids), draw(ids), draw(u64), prev, draw(u64), entries, draw(u64))


@st.composite
def snapshot_chunks(draw) -> InstallSnapshot:
    data = draw(st.binary(max_size=300))
    total = draw(st.integers(len(data), SNAPSHOT_TOTAL_BYTES_MAX))
    offset = draw(st.integers(0, total - len(data)))
    config = draw(st.binary(max_size=100))
    return InstallSnapshot(
        draw(ids), draw(ids), draw(u64), draw(u64), draw(u64), total, draw(u32), offset, data, config
    )


messages = st.one_of(
    appends(),
    st.builds(AppendResponse, ids, ids, u64, u64, st.booleans(), u64, u64),
    st.builds(Heartbeat, ids, ids, u64, u64),
    st.builds(HeartbeatResponse, ids, ids, u64),
    st.builds(RequestVote, ids, ids, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(VoteResponse, ids, ids, u64, st.booleans(), st.booleans()),
    st.builds(TimeoutNow, ids, ids, u64),
    snapshot_chunks(),
    st.builds(SnapshotResponse, ids, ids, u64, u64, u64),
)


@settings(max_examples=300, deadline=None)
@given(m=messages)
def test_every_message_round_trips(m) -> None:
    assert decode_raft(encode_raft(m)) == m


def test_wrong_destination_is_refused() -> None:
    body = encode_raft(Heartbeat(1, 2, 3, 4))
    with pytest.raises(RemoteProtocolError) as info:
        decode_raft(body, expect_dst=3)
    assert info.value.field == "Heartbeat.dst"


def _chunk_head(*, total: int = 100, offset: int = 0, length: int = 0, config_length: int = 0) -> bytes:
    """The fixed part of an InstallSnapshot body (kind 8) from node 1 to node 2, term 3, snapshot (40, 2)."""
    head = struct.pack("<QQQIQII", 40, 2, total, 0x1234, offset, length, config_length)
    return struct.pack("<BIIQ", 8, 1, 2, 3) + head


@pytest.mark.parametrize(
    "body, field",
    [
        (b"\x01\x00", "raft message"),
        (struct.pack("<BIIQ", 10, 1, 2, 3), "raft kind"),
        (struct.pack("<BIIQ", 9, 1, 2, 3) + b"\x00" * 15, "SnapshotResponse.body"),
        (_chunk_head()[:30], "InstallSnapshot.head"),
        (_chunk_head(total=SNAPSHOT_TOTAL_BYTES_MAX + 1), "InstallSnapshot.total"),
        (_chunk_head(length=SNAPSHOT_CHUNK_BYTES_MAX + 1), "InstallSnapshot.length"),
        (_chunk_head(length=4) + b"abc", "InstallSnapshot.data"),
        (_chunk_head(length=3) + b"abcd", "InstallSnapshot.data"),
        (_chunk_head(total=10, offset=8, length=3) + b"abc", "InstallSnapshot.offset"),
        (_chunk_head(length=3, config_length=2) + b"abc" + b"x", "InstallSnapshot.data"),
        (_chunk_head(length=3, config_length=SNAPSHOT_CONFIG_BYTES_MAX + 1) + b"abc", "InstallSnapshot.config_length"),
        (struct.pack("<BIIQ", 3, 1, 2, 3), "Heartbeat.body"),
        (struct.pack("<BIIQ", 1, 1, 2, 3) + struct.pack("<QQQI", 0, 0, 0, 99999), "AppendEntries.count"),
        (struct.pack("<BIIQ", 1, 1, 2, 3) + struct.pack("<QQQI", 0, 0, 0, 2), "AppendEntries.tables"),
        (
            struct.pack("<BIIQ", 1, 1, 2, 3) + struct.pack("<QQQI", 0, 0, 0, 1) + struct.pack("<QI", 1, 5) + b"abc",
            "AppendEntries.entries",
        ),
    ],
)
def test_malformed_bodies_are_refused_by_field(body: bytes, field: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_raft(body)
    assert info.value.field == field


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=120))
def test_garbage_is_refused_or_decodes(blob: bytes) -> None:
    try:
        decode_raft(blob)
    except RemoteProtocolError:
        pass


def test_a_snapshot_chunk_at_the_limit_round_trips_and_one_byte_more_is_not_sent() -> None:
    m = InstallSnapshot(1, 2, 3, 40, 2, SNAPSHOT_CHUNK_BYTES_MAX, 7, 0, bytes(SNAPSHOT_CHUNK_BYTES_MAX))
    assert decode_raft(encode_raft(m)) == m
    with pytest.raises(LocalProtocolError) as info:
        encode_raft(InstallSnapshot(1, 2, 3, 40, 2, 2**30, 7, 0, bytes(SNAPSHOT_CHUNK_BYTES_MAX + 1)))
    assert info.value.field == "InstallSnapshot.data"


def test_the_configuration_travels_with_every_chunk_and_is_bounded() -> None:
    m = InstallSnapshot(1, 2, 3, 40, 2, 10, 7, 0, b"xyz", b"\x01\x00\x01\x00cfg")
    assert decode_raft(encode_raft(m)).config == m.config
    with pytest.raises(LocalProtocolError) as info:
        encode_raft(InstallSnapshot(1, 2, 3, 40, 2, 10, 7, 0, b"xyz", bytes(SNAPSHOT_CONFIG_BYTES_MAX + 1)))
    assert info.value.field == "InstallSnapshot.config"


def test_the_last_chunk_may_end_exactly_at_the_total() -> None:
    m = InstallSnapshot(1, 2, 3, 40, 2, 10, 7, 7, b"xyz")
    assert decode_raft(encode_raft(m)) == m
