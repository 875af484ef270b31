"""The client protocol codec: round trips, split delivery, and every malformed input refused by name."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.wire import client as cp
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError


def _decode_one(data: bytes) -> cp.Message:
    reader = cp.MessageReader()
    reader.feed(data)
    msg = reader.next_message()
    assert msg is not None and reader.buffered_bytes == 0
    return msg


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.binary(max_size=300), min_size=1, max_size=50),
    pid=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**63),
    cid=st.integers(0, 2**64 - 1),
)
def test_produce_round_trip(events, pid, seq, cid) -> None:
    msg = _decode_one(cp.encode_produce(cid, pid, seq, 1000, events))
    assert isinstance(msg, cp.Produce)
    assert (msg.correlation_id, msg.producer_id, msg.first_sequence, msg.timeout_ms) == (cid, pid, seq, 1000)
    assert [bytes(e) for e in msg.events] == events


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.binary(max_size=100), max_size=30))
def test_fetched_round_trip(events) -> None:
    offsets = list(range(100, 100 + len(events)))
    msg = _decode_one(cp.encode_fetched(5, 200, 300, offsets, events))
    assert isinstance(msg, cp.Fetched)
    assert msg.offsets.tolist() == offsets and [bytes(e) for e in msg.events] == events
    assert (msg.next_offset, msg.commit_offset) == (200, 300)


def test_small_messages_round_trip() -> None:
    assert _decode_one(cp.encode_fetch(1, 7, 100, 50)) == cp.Fetch(1, 7, 100, 50)
    assert _decode_one(cp.encode_metadata(2)) == cp.Metadata(2)
    err = _decode_one(cp.encode_error(3, cp.ErrorCode.UNAVAILABLE, "no quorum"))
    assert err == cp.Error(3, cp.ErrorCode.UNAVAILABLE, "no quorum", "")
    assert err.code.retriable and not cp.ErrorCode.MALFORMED.retriable
    produced = _decode_one(cp.encode_produced(4, [1, 2, 3]))
    assert produced.offsets.tolist() == [1, 2, 3]


def test_reader_waits_for_whole_messages_fed_byte_by_byte() -> None:
    stream = cp.encode_produce(1, 2, 3, 4, [b"a", b"bc"]) + cp.encode_metadata(9)
    reader = cp.MessageReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (msg := reader.next_message()) is not None:
            got.append(msg)
    assert [type(m).__name__ for m in got] == ["Produce", "Metadata"]


def test_encoder_refuses_empty_or_oversized_requests() -> None:
    with pytest.raises(LocalProtocolError) as info:
        cp.encode_produce(1, 1, 0, 0, [])
    assert info.value.field == "event_count"
    with pytest.raises(LocalProtocolError):
        cp.encode_produce(1, 1, 0, 0, [b"x" * (cp.MESSAGE_BODY_MAX_BYTES + 1)])


def _header(kind: int, body_len: int, magic: int = cp.CLIENT_MAGIC, version: int = cp.CLIENT_VERSION) -> bytes:
    return cp.HEADER.pack(magic, version, kind, body_len, 1)


@pytest.mark.parametrize(
    "data, field",
    [
        (_header(1, 0, magic=0xBEEF), "magic"),
        (_header(1, 0, version=9), "version"),
        (_header(1, cp.MESSAGE_BODY_MAX_BYTES + 1), "body_len"),
        (_header(0x42, 0), "kind"),
        (_header(1, 4) + b"\x00" * 4, "PRODUCE.head"),
        (_header(1, 24) + struct.pack("<QQII", 1, 1, 1, 0), "PRODUCE.event_count"),
        (_header(1, 28) + struct.pack("<QQIII", 1, 1, 1, 1, 5), "PRODUCE.event bytes"),
        (_header(1, 24) + struct.pack("<QQII", 1, 1, 1, 2), "PRODUCE.lengths"),
        (_header(3, 1) + b"\x00", "METADATA.body"),
        (_header(0xFF, 21) + struct.pack("<HH", 99, 0) + b"\x00" + bytes(16), "ERROR.code"),
        (_header(0xFF, 5) + struct.pack("<HH", 1, 0) + b"\x00", "ERROR.offsets"),
    ],
)
def test_malformed_messages_are_refused_by_field(data: bytes, field: str) -> None:
    reader = cp.MessageReader()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == field


def test_oversized_body_is_refused_from_the_header_alone() -> None:
    reader = cp.MessageReader(max_body_bytes=1000)
    reader.feed(_header(1, 1001))  # no body sent: the reader must not wait for it
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == "body_len"


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=300))
def test_garbage_gives_a_protocol_error_or_needs_more_bytes(blob: bytes) -> None:
    reader = cp.MessageReader()
    reader.feed(blob)
    try:
        while reader.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(token=st.binary(min_size=1, max_size=cp.AUTH_TOKEN_MAX_BYTES), cid=st.integers(0, 2**64 - 1))
def test_auth_round_trip_and_the_token_stays_out_of_reprs(token: bytes, cid: int) -> None:
    msg = _decode_one(cp.encode_auth(cid, token))
    assert isinstance(msg, cp.Auth) and msg.token == token and msg.correlation_id == cid
    assert repr(token) not in repr(msg)
    answer = _decode_one(cp.encode_authed(cid))
    assert isinstance(answer, cp.Authed) and answer.correlation_id == cid


def test_auth_token_sizes_are_bounded_both_ways() -> None:
    with pytest.raises(LocalProtocolError, match="AUTH.token"):
        cp.encode_auth(1, b"")
    with pytest.raises(LocalProtocolError, match="AUTH.token"):
        cp.encode_auth(1, b"x" * (cp.AUTH_TOKEN_MAX_BYTES + 1))
    for body in (b"", b"x" * (cp.AUTH_TOKEN_MAX_BYTES + 1)):
        with pytest.raises(RemoteProtocolError) as info:
            _decode_one(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.AUTH, len(body), 1) + body)
        assert info.value.field == "AUTH.token"
    authed_with_body = cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.AUTHED, 1, 1) + b"x"
    with pytest.raises(RemoteProtocolError, match="AUTHED.body"):
        _decode_one(authed_with_body)


def test_reader_limit_can_be_raised_after_auth() -> None:
    reader = cp.MessageReader(cp.AUTH_TOKEN_MAX_BYTES)
    big = cp.encode_produce(1, 1, 0, 1000, [b"x" * 4000])
    reader.feed(big)
    with pytest.raises(RemoteProtocolError, match="body_len"):
        reader.next_message()
    reader = cp.MessageReader(cp.AUTH_TOKEN_MAX_BYTES)
    reader.allow_body_bytes(1 << 20)
    reader.feed(big)
    assert isinstance(reader.next_message(), cp.Produce)
