"""Property-based fuzzing of the client protocol decoder, both directions: the requests a node parses and the
answers a client parses (shmraft/wire/client.py). The properties themselves are in tools/fuzz/oracles.py,
shared with the atheris harness tools/fuzz/fuzz_client.py:

- any bytes, in any chunking, decode to messages that re-encode to exactly the bytes consumed, or raise a
  RemoteProtocolError (never another exception), with the same outcome whatever the chunking;
- the reader never holds more than one header and one maximal body: a huge declared length is refused from
  the header alone;
- valid messages round-trip; a corrupted message is refused or parsed faithfully (this protocol has no
  checksum, TCP's is the only one: a corrupted byte may give another valid message, never a misparse).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "fuzz"))

import oracles  # noqa: E402

from shmraft.wire import client as cp  # noqa: E402
from shmraft.wire.errors import RemoteProtocolError  # noqa: E402

limits = st.builds(cp.Limits, *[st.integers(0, 2**32 - 1)] * len(cp.LIMIT_FIELDS))

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
SMALL_BODY_MAX = 96  # a small reader limit, so that "too large" is reached often
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

events = st.lists(st.binary(max_size=40), min_size=1, max_size=12)
text = st.text(max_size=30)


def _utf8_at_most(n: int) -> st.SearchStrategy[str]:
    return st.text(max_size=n).filter(lambda t: len(t.encode()) <= n)


@st.composite
def _fetched(draw: st.DrawFn) -> bytes:
    evs = draw(st.lists(st.binary(max_size=40), max_size=12))
    offsets = draw(st.lists(U64, min_size=len(evs), max_size=len(evs)))
    return cp.encode_fetched(draw(U64), draw(U64), draw(U64), offsets, evs)


members = st.lists(st.builds(cp.Member, U32, _utf8_at_most(40), st.integers(0, 65535)), max_size=5)
group_names = st.text(min_size=1, max_size=30).filter(lambda t: 1 <= len(t.encode()) <= 255)
I64_NONNEG = st.integers(0, 2**63 - 1)
U8 = st.integers(0, 255)
group_rows = st.lists(st.builds(cp.GroupRow, group_names, I64_NONNEG, U64, U64), max_size=6)
group_requests = [
    st.builds(cp.encode_group_commit, U64, group_names, I64_NONNEG, U32, st.binary(max_size=40)),
    st.builds(cp.encode_group_fetch, U64, group_names, U8),
    st.builds(cp.encode_groups, U64, U8),
]
group_answers = [
    st.builds(cp.encode_group_committed, U64, U64),
    st.builds(cp.encode_group_position, U64, I64_NONNEG, U64, U64, U64, U64, st.binary(max_size=40)),
    st.builds(cp.encode_groups_answer, U64, U64, U64, group_rows),
]

requests = st.one_of(
    st.builds(cp.encode_produce, U64, U64, U64, U32, events),
    st.builds(cp.encode_fetch, U64, U64, U32, U32),
    st.builds(cp.encode_metadata, U64),
    *([st.builds(cp.encode_auth, U64, st.binary(min_size=1, max_size=64))] if hasattr(cp, "encode_auth") else []),
    *group_requests,
)
answers = st.one_of(
    st.builds(cp.encode_produced, U64, st.lists(U64, max_size=20)),
    _fetched(),
    st.builds(cp.encode_metadata_answer, U64, U64, U32, U64, U32, members, limits),
    st.builds(cp.encode_error, U64, st.sampled_from(list(cp.ErrorCode)), text, _utf8_at_most(60), U64, U64),
    *([st.builds(cp.encode_authed, U64)] if hasattr(cp, "encode_authed") else []),
    *group_answers,
)
messages = st.one_of(requests, answers)
chunk_sizes = st.lists(st.integers(1, 64), max_size=6)


@FAST
@given(stream=st.lists(messages, min_size=1, max_size=6), sizes=chunk_sizes)
def test_valid_messages_round_trip_in_any_chunking(stream: list[bytes], sizes: list[int]) -> None:
    data = b"".join(stream)
    encoded, error, left = oracles.check_client_stream(data, sizes)
    assert (encoded, error, left) == (data, None, 0)


@FAST
@given(blob=st.binary(max_size=400), sizes=chunk_sizes)
def test_any_bytes_decode_faithfully_or_raise_a_protocol_error(blob: bytes, sizes: list[int]) -> None:
    oracles.check_client_stream(blob, sizes)
    oracles.check_client_stream(blob, sizes, max_body_bytes=SMALL_BODY_MAX)


@FAST
@given(kind=st.sampled_from([*map(int, cp.Kind), 0, 0x42, 0x7F, 0x80]), body=st.binary(max_size=200))
def test_any_body_behind_a_valid_header_decodes_faithfully_or_is_refused(kind: int, body: bytes) -> None:
    oracles.check_client_body(kind, body)


@FAST
@given(
    stream=st.lists(messages, min_size=1, max_size=4),
    garbage=st.binary(min_size=1, max_size=64),
    where=st.integers(0, 10_000),
    sizes=chunk_sizes,
)
def test_garbage_spliced_into_a_valid_stream(stream: list[bytes], garbage: bytes, where: int, sizes: list[int]) -> None:
    data = b"".join(stream)
    at = where % (len(data) + 1)
    oracles.check_client_stream(data[:at] + garbage + data[at:], sizes)


@FAST
@given(body_len=st.integers(SMALL_BODY_MAX + 1, 2**32 - 1), kind=st.sampled_from(list(cp.Kind)))
def test_a_huge_declared_length_is_refused_from_the_header_alone(body_len: int, kind: cp.Kind) -> None:
    reader = cp.MessageReader(SMALL_BODY_MAX)
    reader.feed(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, kind, body_len, 1))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == "body_len" and str(body_len) in str(info.value)


def test_a_node_sized_reader_refuses_a_4gib_declaration_without_waiting() -> None:
    reader = cp.MessageReader()  # the default limit, as ingest uses it
    reader.feed(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.PRODUCE, 2**32 - 1, 1))
    with pytest.raises(RemoteProtocolError):
        reader.next_message()


SAMPLES = {
    "produce": cp.encode_produce(7, 1, 100, 500, [b"alpha", b"", b"gamma"]),
    "fetch": cp.encode_fetch(8, 640, 4096, 100),
    "metadata": cp.encode_metadata(9),
    "produced": cp.encode_produced(10, [64, 65, 66]),
    "fetched": cp.encode_fetched(11, 130, 192, [128, 129], [b"x", b"yz"]),
    "metadata_answer": cp.encode_metadata_answer(
        12, 3, 2, 99, 1, [cp.Member(1, "127.0.0.1", 7101), cp.Member(2, "host-b", 7201)]
    ),
    "error": cp.encode_error(13, cp.ErrorCode.NOT_LEADER, "not the leader", "127.0.0.1:7201"),
    "offset_out_of_range": cp.encode_error(14, cp.ErrorCode.OFFSET_OUT_OF_RANGE, "below", "", 1280, 4096),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_single_byte_corruption_is_refused_or_parsed_faithfully(name: str) -> None:
    original = SAMPLES[name]
    for pos in range(len(original)):
        for xor in (0x01, 0x80, 0xFF):
            bad = bytearray(original)
            bad[pos] ^= xor
            oracles.check_client_stream(bytes(bad), [pos % 7 + 1])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_waits_for_more_bytes(name: str) -> None:
    original = SAMPLES[name]
    for n in range(len(original)):
        encoded, error, left = oracles.check_client_stream(original[:n])
        assert (encoded, error, left) == (b"", None, n)


@FAST
@given(data=st.data())
def test_random_corruption_is_refused_or_parsed_faithfully(data: st.DataObject) -> None:
    original = bytearray(SAMPLES[data.draw(st.sampled_from(sorted(SAMPLES)))])
    for pos in data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=5)):
        original[pos] = data.draw(st.integers(0, 255))
    oracles.check_client_stream(bytes(original), data.draw(chunk_sizes))


def test_error_text_is_cut_at_a_character_boundary_and_still_decodes() -> None:
    msg = "é" * cp.ERROR_MESSAGE_MAX_BYTES  # 2 bytes each: the limit falls inside characters... or not
    encoded, error, _ = oracles.check_client_stream(cp.encode_error(1, cp.ErrorCode.MALFORMED, msg + "x"))
    assert error is None and encoded


@pytest.mark.parametrize(
    "body, field",
    [
        (b"\x03\x00\x02\x00\xff\xfe\x00" + bytes(16), "ERROR.message"),  # not UTF-8
        (b"\x03\x00\x01\x04" + b"a" * 1025 + b"\x00", "ERROR.message length"),  # over ERROR_MESSAGE_MAX_BYTES
    ],
)
def test_undecodable_error_text_is_refused_by_name(body: bytes, field: str) -> None:
    reader = cp.MessageReader()
    reader.feed(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.ERROR, len(body), 1) + body)
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == field
