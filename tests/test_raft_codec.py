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
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.types import Entry
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.raft_codec import decode_raft, encode_raft

ids = st.integers(1, 7)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def appends(draw) -> AppendEntries:
    prev = draw(st.integers(0, 2**40))
    datas = draw(st.lists(st.binary(max_size=200), max_size=10))
    terms = draw(st.lists(st.integers(0, 2**32), min_size=len(datas), max_size=len(datas)))
    entries = tuple(Entry(prev + 1 + i, t, d) for i, (t, d) in enumerate(zip(terms, datas, strict=True)))
    return AppendEntries(draw(ids), draw(ids), draw(u64), prev, draw(u64), entries, draw(u64))


messages = st.one_of(
    appends(),
    st.builds(AppendResponse, ids, ids, u64, u64, st.booleans(), u64, u64),
    st.builds(Heartbeat, ids, ids, u64, u64),
    st.builds(HeartbeatResponse, ids, ids, u64),
    st.builds(RequestVote, ids, ids, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(VoteResponse, ids, ids, u64, st.booleans(), st.booleans()),
    st.builds(TimeoutNow, ids, ids, u64),
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


@pytest.mark.parametrize(
    "body, field",
    [
        (b"\x01\x00", "raft message"),
        (struct.pack("<BIIQ", 9, 1, 2, 3), "raft kind"),
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
