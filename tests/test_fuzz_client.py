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

from shmraft.client.errors import IntegrityError  # noqa: E402
from shmraft.client.frames import frame_events  # noqa: E402
from shmraft.wire import client as cp  # noqa: E402
from shmraft.wire.errors import RemoteProtocolError  # noqa: E402
from shmraft.wire.frame import encode_batch  # noqa: E402

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


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """A FRAMES answer (its frames are any bytes: the message layer does not look inside them)."""
    blobs = draw(st.lists(st.binary(max_size=60), max_size=5))
    indexes = draw(st.lists(U64, min_size=len(blobs), max_size=len(blobs)))
    skip = draw(st.integers(0, 63)) if blobs else 0
    return cp.encode_frames(draw(U64), draw(U64), draw(U64), skip, indexes, blobs)


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
    st.builds(cp.encode_fetch_frames, U64, U64, U32, U32),
    st.builds(cp.encode_metadata, U64),
    *([st.builds(cp.encode_auth, U64, st.binary(min_size=1, max_size=64))] if hasattr(cp, "encode_auth") else []),
    *group_requests,
)
answers = st.one_of(
    st.builds(cp.encode_produced, U64, st.lists(U64, max_size=20)),
    _fetched(),
    _frames(),
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
    "fetch_frames": cp.encode_fetch_frames(15, 130, 4096, 0),
    "frames": cp.encode_frames(16, 192, 192, 2, [2], [b"frame bytes"]),
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


# --- FRAMES end to end: stored frames checked by the consumer (shmraft/client/frames.py) -------------------


def _stored_frames(batches: list[list[bytes]], first_index: int) -> tuple[list[int], list[bytes]]:
    """Frames as the log stores them: log index i stamped with prev_index i - 1 (the Raft worker's restamp)."""
    indexes = list(range(first_index, first_index + len(batches)))
    frames = [
        encode_batch(evs, batch_id=i, prev_index=i - 1, term=1, compress=i % 2 == 0)
        for i, evs in zip(indexes, batches, strict=True)
    ]
    return indexes, frames


def _decoded(data: bytes) -> cp.Frames:
    reader = cp.MessageReader()
    reader.feed(data)
    msg = reader.next_message()
    assert isinstance(msg, cp.Frames)
    return msg


frame_batches = st.lists(st.lists(st.binary(max_size=30), min_size=1, max_size=8), min_size=1, max_size=4)


@FAST
@given(batches=frame_batches, first_index=st.integers(1, 2**40), data=st.data())
def test_frames_yield_exactly_the_stored_events_from_the_requested_offset(
    batches: list[list[bytes]], first_index: int, data: st.DataObject
) -> None:
    indexes, frames = _stored_frames(batches, first_index)
    skip = data.draw(st.integers(0, len(batches[0]) - 1))
    answer = _decoded(cp.encode_frames(5, 0, 0, skip, indexes, frames))
    want = [(i * 64 + k, ev) for i, evs in zip(indexes, batches, strict=True) for k, ev in enumerate(evs)][skip:]
    assert [(o, bytes(e)) for o, e in frame_events(answer, "n1")] == want


@FAST
@given(batches=frame_batches, data=st.data())
def test_any_corrupted_frame_byte_raises_integrity_error_naming_that_frame(
    batches: list[list[bytes]], data: st.DataObject
) -> None:
    indexes, frames = _stored_frames(batches, 10)
    bad = data.draw(st.integers(0, len(frames) - 1))
    pos = data.draw(st.integers(0, len(frames[bad]) - 1))
    corrupted = bytearray(frames[bad])
    corrupted[pos] ^= data.draw(st.integers(1, 255))
    frames[bad] = bytes(corrupted)
    answer = _decoded(cp.encode_frames(5, 0, 0, 0, indexes, frames))
    seen = []
    with pytest.raises(IntegrityError) as info:
        seen.extend(o for o, _ in frame_events(answer, "n1"))
    assert (info.value.offset, info.value.index, info.value.address) == (indexes[bad] * 64, indexes[bad], "n1")
    assert seen == [i * 64 + k for i, evs in zip(indexes[:bad], batches, strict=False) for k in range(len(evs))]


def test_a_frame_sent_under_another_log_index_raises_integrity_error() -> None:
    indexes, frames = _stored_frames([[b"a", b"b"]], 7)
    answer = _decoded(cp.encode_frames(5, 0, 0, 0, [8], frames))
    with pytest.raises(IntegrityError, match="prev_index 6") as info:
        list(frame_events(answer, "n1"))
    assert info.value.offset == 8 * 64


def test_first_skip_past_the_first_frame_raises_integrity_error() -> None:
    indexes, frames = _stored_frames([[b"a", b"b"]], 7)
    with pytest.raises(IntegrityError, match="first_skip 2"):
        list(frame_events(_decoded(cp.encode_frames(5, 0, 0, 2, indexes, frames)), "n1"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (cp._FRAMES_HEAD.pack(0, 0, 0, 1), "FRAMES.first_skip"),  # a skip without frames
        (cp._FRAMES_HEAD.pack(0, 0, 1, 64), "FRAMES.first_skip"),
        (cp._FRAMES_HEAD.pack(0, 0, 2**32 - 1, 0), "FRAMES.frame_count"),
        (cp._FRAMES_HEAD.pack(0, 0, 1, 0) + cp._FRAME_ENTRY.pack(1, 100) + b"short", "FRAMES.frame"),
    ],
)
def test_bad_frames_answers_are_refused_by_name(body: bytes, field: str) -> None:
    reader = cp.MessageReader()
    reader.feed(cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.FRAMES, len(body), 3) + body)
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == field


@pytest.mark.parametrize("kind", [cp.Kind.FETCH_FRAMES, cp.Kind.FRAMES])
def test_frame_kinds_are_refused_in_version_2(kind: cp.Kind) -> None:
    reader = cp.MessageReader()
    reader.feed(cp.HEADER.pack(cp.CLIENT_MAGIC, 2, kind, 0, 3))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.field == "version"
