"""Property-based fuzzing of the peer protocol: the envelope reader (shmraft/wire/peer.py PeerReader), the
handshake bodies (decode_hello and the authenticated handshake's bodies) and RAFT bodies
(shmraft/wire/raft_codec.py). Properties are in tools/fuzz/oracles.py, shared with the atheris harnesses:

- any bytes, in any chunking, give envelopes that re-encode to exactly the bytes consumed, or a
  RemoteProtocolError, the same whatever the chunking; the reader never holds more than one header and one
  maximal body (a huge declared length is refused from the header alone);
- every body of a known kind decodes to a value that re-encodes to exactly it, or is refused by name;
- valid envelopes round-trip; a single corrupted byte is refused (the CRC covers the header and the body) or
  leaves the reader waiting for bytes that never come (a corrupted length); it never yields an envelope.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "fuzz"))

import oracles  # noqa: E402

from shmraft.constants import APPEND_ENTRIES_MAX  # noqa: E402
from shmraft.raft import messages as rm  # noqa: E402
from shmraft.raft.types import Entry  # noqa: E402
from shmraft.wire import peer as wp  # noqa: E402
from shmraft.wire.errors import RemoteProtocolError  # noqa: E402
from shmraft.wire.raft_codec import SNAPSHOT_TOTAL_BYTES_MAX, decode_raft, encode_raft  # noqa: E402

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
SMALL_BODY_MAX = 128
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
chunk_sizes = st.lists(st.integers(1, 64), max_size=6)

# --- strategies for valid messages ------------------------------------------------------------------------------


@st.composite
def append_entries(draw: st.DrawFn) -> rm.AppendEntries:
    prev_index = draw(st.integers(0, 2**62))
    datas = draw(st.lists(st.binary(max_size=60), max_size=6))
    entries = tuple(Entry(prev_index + 1 + i, draw(U64), d) for i, d in enumerate(datas))
    return rm.AppendEntries(draw(U32), draw(U32), draw(U64), prev_index, draw(U64), entries, draw(U64))


@st.composite
def install_snapshots(draw: st.DrawFn) -> rm.InstallSnapshot:
    data = draw(st.binary(max_size=60))
    total = draw(st.integers(len(data), SNAPSHOT_TOTAL_BYTES_MAX))
    offset = draw(st.integers(0, total - len(data)))
    return rm.InstallSnapshot(draw(U32), draw(U32), draw(U64), draw(U64), draw(U64), total, draw(U32), offset, data)


raft_messages = st.one_of(
    append_entries(),
    st.builds(rm.AppendResponse, U32, U32, U64, U64, st.booleans(), U64, U64),
    st.builds(rm.Heartbeat, U32, U32, U64, U64),
    st.builds(rm.HeartbeatResponse, U32, U32, U64),
    st.builds(rm.RequestVote, U32, U32, U64, U64, U64, st.booleans(), st.booleans()),
    st.builds(rm.VoteResponse, U32, U32, U64, st.booleans(), st.booleans()),
    st.builds(rm.TimeoutNow, U32, U32, U64),
    install_snapshots(),
    st.builds(rm.SnapshotResponse, U32, U32, U64, U64, U64),
)
cluster_ids = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=wp.CLUSTER_ID_MAX_BYTES)
nonces = st.binary(min_size=getattr(wp, "NONCE_BYTES", 32), max_size=getattr(wp, "NONCE_BYTES", 32))
macs = st.binary(min_size=getattr(wp, "MAC_BYTES", 32), max_size=getattr(wp, "MAC_BYTES", 32))


def _hello(cluster_id: str, node_id: int, to_node_id: int, channel: wp.Channel, nonce: bytes) -> bytes:
    fields = wp.Hello.__dataclass_fields__  # the handshake is being extended: build what this version has
    values = {
        "cluster_id": cluster_id,
        "node_id": node_id,
        "to_node_id": to_node_id,
        "channel": channel,
        "nonce": nonce,
    }
    return wp.encode_hello(wp.Hello(**{k: v for k, v in values.items() if k in fields}))


_handshake = []
if hasattr(wp, "encode_challenge"):
    _handshake += [
        st.builds(lambda i, n, m: wp.encode_challenge(wp.Challenge(i, n, m)), U32, nonces, macs),
        st.builds(wp.encode_proof, macs),
        st.just(wp.encode_welcome()),
    ]
envelopes = st.one_of(
    st.builds(_hello, cluster_ids, U32, U32, st.sampled_from(list(wp.Channel)), nonces),
    st.builds(lambda m: wp.encode_peer(wp.PeerKind.RAFT, encode_raft(m)), raft_messages),
    st.builds(wp.encode_refused, st.text(string.printable.strip() + " ", max_size=60)),
    *_handshake,
)

# --- the envelope stream ----------------------------------------------------------------------------------------


@FAST
@given(stream=st.lists(envelopes, min_size=1, max_size=5), sizes=chunk_sizes)
def test_valid_envelopes_round_trip_in_any_chunking(stream: list[bytes], sizes: list[int]) -> None:
    data = b"".join(stream)
    assert oracles.check_peer_stream(data, sizes) == (data, None, 0)


@FAST
@given(blob=st.binary(max_size=400), sizes=chunk_sizes)
def test_any_bytes_give_whole_envelopes_or_a_protocol_error(blob: bytes, sizes: list[int]) -> None:
    oracles.check_peer_stream(blob, sizes)
    oracles.check_peer_stream(blob, sizes, max_body_bytes=SMALL_BODY_MAX)


@FAST
@given(kind=st.integers(0, 255), body=st.binary(max_size=300), sizes=chunk_sizes)
def test_any_body_in_a_sealed_envelope_decodes_faithfully_or_is_refused(
    kind: int, body: bytes, sizes: list[int]
) -> None:
    """A correct CRC around random bytes: the body decoders of every kind get garbage."""
    oracles.check_peer_stream(oracles.sealed_peer(kind, body), sizes)


@FAST
@given(
    stream=st.lists(envelopes, min_size=1, max_size=3),
    garbage=st.binary(min_size=1, max_size=48),
    where=st.integers(0, 10_000),
    sizes=chunk_sizes,
)
def test_garbage_spliced_into_a_valid_stream(stream: list[bytes], garbage: bytes, where: int, sizes: list[int]) -> None:
    data = b"".join(stream)
    at = where % (len(data) + 1)
    oracles.check_peer_stream(data[:at] + garbage + data[at:], sizes)


@FAST
@given(body_len=st.integers(SMALL_BODY_MAX + 1, 2**32 - 1), kind=st.sampled_from(list(wp.PeerKind)))
def test_a_huge_declared_length_is_refused_from_the_header_alone(body_len: int, kind: wp.PeerKind) -> None:
    reader = wp.PeerReader(SMALL_BODY_MAX)
    reader.feed(wp.PEER_HEADER.pack(wp.PEER_MAGIC, wp.PEER_VERSION, kind, body_len, 0))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next()
    assert "body_len" in info.value.field


SAMPLES = {
    "hello": _hello("prod_cluster", 2, 1, wp.Channel.CONSENSUS, bytes(range(32))),
    "raft_vote": wp.encode_peer(wp.PeerKind.RAFT, encode_raft(rm.RequestVote(1, 2, 7, 40, 6, False, False))),
    "raft_append": wp.encode_peer(
        wp.PeerKind.RAFT,
        encode_raft(rm.AppendEntries(1, 2, 7, 40, 6, (Entry(41, 7, b"frame-one"), Entry(42, 7, b"frame-two")), 39)),
    ),
    "raft_snapshot_chunk": wp.encode_peer(
        wp.PeerKind.RAFT, encode_raft(rm.InstallSnapshot(1, 2, 7, 40, 6, 100, 0xDEADBEEF, 20, b"snapshot-bytes"))
    ),
    "raft_snapshot_response": wp.encode_peer(wp.PeerKind.RAFT, encode_raft(rm.SnapshotResponse(2, 1, 7, 40, 34))),
    "refused": wp.encode_refused("cluster id: expected 'a', got 'b'"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_single_byte_corruption_is_refused(name: str) -> None:
    original = SAMPLES[name]
    for pos in range(len(original)):
        for xor in (0x01, 0x80, 0xFF):
            bad = bytearray(original)
            bad[pos] ^= xor
            reader = wp.PeerReader()
            reader.feed(bad)
            try:
                got = reader.next()
            except RemoteProtocolError:
                continue
            # a corrupted length that asks for more: waiting for bytes that will not come (the links time out)
            assert got is None, f"byte {pos} ^ {xor:#x}: a corrupted envelope was accepted as {got[0]!r}"


@FAST
@given(data=st.data())
def test_random_corruption_never_yields_another_body(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SAMPLES)))
    original = bytearray(SAMPLES[name])
    for pos in data.draw(st.lists(st.integers(wp.PEER_HEADER_BYTES, len(original) - 1), min_size=1, max_size=4)):
        original[pos] ^= data.draw(st.integers(1, 255))
    reader = wp.PeerReader()
    reader.feed(original)
    got = None
    try:
        got = reader.next()
    except RemoteProtocolError:
        pass
    assert got is None or bytes(got[1]) == SAMPLES[name][wp.PEER_HEADER_BYTES :]


def test_every_truncation_waits_for_more_bytes() -> None:
    data = b"".join(SAMPLES.values())
    for n in range(len(data)):
        encoded, error, _ = oracles.check_peer_stream(data[:n])
        assert error is None and data[:n].startswith(encoded)


# --- handshake and RAFT bodies ------------------------------------------------------------------------------------


@FAST
@given(body=st.binary(max_size=120))
def test_hello_bodies_decode_faithfully_or_are_refused(body: bytes) -> None:
    oracles.check_peer_body(wp.PeerKind.HELLO, body)


@FAST
@given(n=st.integers(0, 255), rest=st.binary(max_size=120))
def test_hello_bodies_with_a_plausible_length_byte(n: int, rest: bytes) -> None:
    oracles.check_peer_body(wp.PeerKind.HELLO, bytes([n]) + rest)


def test_a_cluster_id_that_is_not_utf8_is_refused_by_name() -> None:
    good = SAMPLES["hello"][wp.PEER_HEADER_BYTES :]
    bad = bytes([good[0]]) + b"\xff" + good[2:]
    with pytest.raises(RemoteProtocolError) as info:
        wp.decode_hello(bad)
    assert info.value.field.startswith("HELLO.cluster_id")


@FAST
@given(msg=raft_messages)
def test_raft_messages_round_trip(msg: rm.Message) -> None:
    assert decode_raft(encode_raft(msg)) == msg


@FAST
@given(kind=st.integers(0, 11), head=st.binary(min_size=16, max_size=16), rest=st.binary(max_size=200))
def test_any_raft_body_decodes_faithfully_or_is_refused(kind: int, head: bytes, rest: bytes) -> None:
    oracles.check_raft_body(bytes([kind]) + head + rest)


@FAST
@given(msg=raft_messages, data=st.data())
def test_corrupted_raft_bodies_decode_faithfully_or_are_refused(msg: rm.Message, data: st.DataObject) -> None:
    body = bytearray(encode_raft(msg))
    for pos in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=3)):
        body[pos] = data.draw(st.integers(0, 255))
    oracles.check_raft_body(bytes(body))


@pytest.mark.parametrize(
    "flag_offset, field", [(25, "AppendResponse.success"), (33, "RequestVote.pre_vote"), (17, "VoteResponse.granted")]
)
def test_a_boolean_byte_other_than_0_or_1_is_refused(flag_offset: int, field: str) -> None:
    msgs = {
        "AppendResponse": rm.AppendResponse(1, 2, 3, 4, True),
        "RequestVote": rm.RequestVote(1, 2, 3, 4, 5),
        "VoteResponse": rm.VoteResponse(1, 2, 3, True),
    }
    body = bytearray(encode_raft(msgs[field.split(".")[0]]))
    body[flag_offset] = 2
    with pytest.raises(RemoteProtocolError) as info:
        decode_raft(bytes(body))
    assert info.value.field == field


def test_an_append_with_a_huge_entry_count_is_refused_before_reading_tables() -> None:
    body = bytearray(encode_raft(rm.AppendEntries(1, 2, 3, 4, 5, (), 6)))
    body[-4:] = (APPEND_ENTRIES_MAX + 1).to_bytes(4, "little")
    with pytest.raises(RemoteProtocolError) as info:
        decode_raft(bytes(body))
    assert info.value.field == "AppendEntries.count"
