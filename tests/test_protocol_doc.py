"""docs/PROTOCOL.md stays true: every hex example decodes to the values written beside it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from shmraft.client.frames import frame_events
from shmraft.config import LOCAL_PORT_BASE, local_cluster, local_members
from shmraft.ingest.fetch import FETCH_WAIT_MAX_MS, commit_offset, earliest_offset
from shmraft.ingest.limits import node_limits
from shmraft.ingest.tracker import PRODUCE_TIMEOUT_MAX_MS, SEQUENCE_END
from shmraft.net.auth import ROLE_ACCEPTOR, ROLE_CONNECTOR, Secret, handshake_mac, member_change_mac
from shmraft.node.batching import EVENT_BYTES_MAX
from shmraft.node.dedup import DEDUP_HORIZON_ENTRIES_DEFAULT, DEDUP_SPANS_MAX_DEFAULT
from shmraft.wire import client as cp
from shmraft.wire import errors
from shmraft.wire.client import MessageReader, encode_version_refused
from shmraft.wire.frame import decode_batch, encode_batch
from shmraft.wire.peer import (
    PEER_HEADER,
    PEER_MAGIC,
    PEER_VERSION,
    PeerKind,
    PeerReader,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_refused,
    decode_welcome,
)
from shmraft.wire.raft_codec import decode_raft

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
_BLOCK = re.compile(r"```hex\n(.*?)```\s*```json\n(.*?)```", re.S)
_LINE = re.compile(r"^([0-9a-f]{4}): ((?:[0-9a-f]{2} ?)+)$")


def _examples() -> list[tuple[dict[int, bytes], bool, dict]]:
    out = []
    for hexpart, jsonpart in _BLOCK.findall(DOC.read_text()):
        lines: dict[int, bytes] = {}
        abbreviated = False
        for raw in hexpart.strip().splitlines():
            raw = raw.strip()
            if raw == "...":
                abbreviated = True
                continue
            m = _LINE.match(raw)
            assert m, f"unparseable hex line in PROTOCOL.md: {raw!r}"
            lines[int(m.group(1), 16)] = bytes.fromhex(m.group(2))
        out.append((lines, abbreviated, json.loads(jsonpart)))
    return out


EXAMPLES = _examples()


FRAME_EXAMPLES = [e for e in EXAMPLES if "message" not in e[2] and "peer" not in e[2]]
CLIENT_EXAMPLES = [e for e in EXAMPLES if "message" in e[2]]
PEER_EXAMPLES = [e for e in EXAMPLES if "peer" in e[2]]


def test_document_has_the_required_examples() -> None:
    assert len(FRAME_EXAMPLES) >= 4
    assert {e[2]["message"] for e in CLIENT_EXAMPLES} >= {
        "Produce",
        "Produced",
        "Fetch",
        "Fetched",
        "VersionRefused",
        "MetadataAnswer",
        "Error",
        "Auth",
        "Authed",
        "Members",
        "MembersAnswer",
        "MemberChange",
        "MemberChanged",
        "Frames",
    }
    flags = [exp.get("flags") for _, _, exp in FRAME_EXAMPLES]
    assert 0 in flags and 1 in flags  # plain and zstd
    assert any(exp.get("event_count") == 64 for _, _, exp in FRAME_EXAMPLES)


def _joined(lines: dict[int, bytes]) -> bytes:
    buf = b""
    for off in sorted(lines):
        assert off == len(buf), f"gap in a full hex dump at 0x{len(buf):04x}"
        buf += lines[off]
    return buf


def _check_header(batch, expected: dict) -> None:
    h = batch.header
    for key in ("flags", "event_count", "payload_len", "batch_id", "timestamp_us", "prev_index", "term", "prev_term"):
        assert getattr(h, key) == expected[key], key
    assert h.crc32 == int(expected["crc32"], 16)


@pytest.mark.parametrize("index", range(len(FRAME_EXAMPLES)))
def test_frame_example_decodes_to_stated_values(index: int) -> None:
    lines, abbreviated, expected = FRAME_EXAMPLES[index]
    if "error" in expected:
        with pytest.raises(errors.RemoteProtocolError) as info:
            decode_batch(_joined(lines))
        assert type(info.value).__name__ == expected["error"]
        assert info.value.field == expected["field"]
        return
    if not abbreviated:
        batch = decode_batch(_joined(lines))
        _check_header(batch, expected)
        assert [bytes(e).decode() for e in batch.events] == expected["events"]
        return
    # Abbreviated: rebuild the frame from the stated values, check every shown line, then decode.
    count = expected["event_count"]
    events = [(expected["events_format"] % i).encode() for i in range(count)]
    frame = encode_batch(
        events,
        batch_id=expected["batch_id"],
        term=expected["term"],
        prev_index=expected["prev_index"],
        prev_term=expected["prev_term"],
        timestamp_us=expected["timestamp_us"],
        producer_ids=[expected["producer_id"]] * count,
        sequences=range(expected["first_sequence"], expected["first_sequence"] + count),
    )
    assert len(frame) == expected["frame_len"]
    for off, shown in lines.items():
        assert frame[off : off + len(shown)] == shown, f"line 0x{off:04x}"
    batch = decode_batch(frame)
    _check_header(batch, expected)
    assert [bytes(e) for e in batch.events] == events
    assert batch.sequences.tolist() == list(range(expected["first_sequence"], expected["first_sequence"] + count))


@pytest.mark.parametrize("index", range(len(CLIENT_EXAMPLES)))
def test_client_example_decodes_to_stated_values(index: int) -> None:
    lines, abbreviated, expected = CLIENT_EXAMPLES[index]
    assert not abbreviated
    data = _joined(lines)
    if expected["message"] == "VersionRefused":  # another version's layout: the node's exact bytes
        assert data == encode_version_refused(expected["correlation_id"], expected["version"])
        return
    reader = MessageReader()
    reader.feed(data)
    msg = reader.next_message()
    assert reader.buffered_bytes == 0 and reader.next_message() is None
    assert type(msg).__name__ == expected["message"]
    for key, want in expected.items():
        if key in ("message", "secret", "cluster_id"):
            continue
        if expected["message"] == "MembersAnswer" and key == "members":
            got = [[m.node_id, m.role.name, m.match_index, m.entries_behind, m.address.decode()] for m in msg.members]
            assert got == want
        elif key == "address":
            assert msg.address == want.encode()
        elif key == "events":
            assert [bytes(e).decode() for e in msg.events] == want
        elif key == "offsets":
            assert msg.offsets.tolist() == want
        elif key == "members":
            assert [[m.node_id, m.host, m.port] for m in msg.members] == want
        elif key == "code":
            assert msg.code.name == want
        elif key == "text":
            assert msg.message == want
        elif key == "token":
            assert msg.token == want.encode()
        elif key == "limits":
            assert asdict(msg.limits) == want
        elif key == "metadata":
            assert msg.metadata == want.encode()
        elif key == "indexes":
            assert msg.indexes.tolist() == want
        elif key == "crc32":  # the frames as stored: each one's CRC as the document states it
            assert [f"{decode_batch(f).header.crc32:08x}" for f in msg.frames] == want
        elif key == "records":  # what the library yields: the checked frames' events from from_offset on
            assert [[o, bytes(e).decode()] for o, e in frame_events(msg, "doc")] == want
        elif key == "groups":
            assert [[g.group, g.offset, g.commit_unix_ms, g.index] for g in msg.groups] == want
        else:
            assert getattr(msg, key) == want, key
    if expected["message"] == "MemberChange":  # the MAC is the one the stated secret and cluster id give
        secret = Secret(expected["secret"].encode(), "doc")
        assert msg.mac == member_change_mac(secret, expected["cluster_id"], msg.signed_bytes)


def test_document_has_peer_examples() -> None:
    assert {e[2]["peer"] for e in PEER_EXAMPLES} >= {
        "Hello",
        "Challenge",
        "Proof",
        "Welcome",
        "Refused",
        "Heartbeat",
        "RequestVote",
        "AppendEntries",
        "AppendResponse",
        "InstallSnapshot",
        "SnapshotResponse",
    }


def _mac(want: dict, role: int, nonce_a: str) -> bytes:
    """The MAC the document's stated secret, ids and nonces give (docs/PROTOCOL.md section 3)."""
    return handshake_mac(
        Secret(want["secret"].encode(), "doc"),
        role,
        want["cluster_id"],
        want["connector_id"],
        want["acceptor_id"],
        want["channel"],
        bytes.fromhex(want["nonce_c"]),
        bytes.fromhex(nonce_a),
    )


@pytest.mark.parametrize("index", range(len(PEER_EXAMPLES)))
def test_peer_example_decodes_to_stated_values(index: int) -> None:
    lines, abbreviated, expected = PEER_EXAMPLES[index]
    assert not abbreviated
    reader = PeerReader()
    reader.feed(_joined(lines))
    kind, body = reader.next()
    assert reader.buffered_bytes == 0
    want = dict(expected)
    name = want.pop("peer")
    if name == "Hello":
        assert kind is PeerKind.HELLO
        hello = decode_hello(body)
        assert (hello.cluster_id, hello.node_id, hello.to_node_id, int(hello.channel), hello.nonce.hex()) == (
            want["cluster_id"],
            want["node_id"],
            want["to_node_id"],
            want["channel"],
            want["nonce"],
        )
        return
    if name == "Challenge":
        assert kind is PeerKind.CHALLENGE
        ch = decode_challenge(body)
        assert (ch.node_id, ch.nonce.hex(), ch.mac.hex()) == (want["node_id"], want["nonce"], want["mac"])
        assert ch.mac == _mac(want, ROLE_ACCEPTOR, want["nonce"])
        return
    if name == "Proof":
        assert kind is PeerKind.PROOF
        mac = decode_proof(body)
        assert mac.hex() == want["mac"] and mac == _mac(want, ROLE_CONNECTOR, want["nonce_a"])
        return
    if name == "Welcome":
        assert kind is PeerKind.WELCOME
        decode_welcome(body)
        return
    if name == "Refused":
        assert kind is PeerKind.REFUSED and decode_refused(body) == want["reason"]
        return
    assert kind is PeerKind.RAFT
    msg = decode_raft(body)
    assert type(msg).__name__ == name
    entries = want.pop("entries", None)
    if entries is not None:
        assert [[e.index, e.term, e.data.decode()] for e in msg.entries] == entries
    data = want.pop("data", None)
    if data is not None:
        assert msg.data.hex() == data
    config = want.pop("config", None)
    if config is not None:
        assert msg.config.hex() == config
    for key, value in want.items():
        assert getattr(msg, key) == value, key


# --- section 2's statements -------------------------------------------------------------------------------

SECTION_2 = DOC.read_text().split("## 2. The client protocol")[1].split("## 3. ")[0]


def _table_rows(text: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with `first_header`, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_stated_peer_version_and_its_refusal_are_the_codes() -> None:
    section_3 = DOC.read_text().split("## 3. The peer protocol")[1].split("## 4. ")[0]
    assert f"| `version`  | `{PEER_VERSION}` (version {PEER_VERSION - 1} had" in section_3
    with pytest.raises(errors.RemoteProtocolError) as info:
        reader = PeerReader()
        reader.feed(PEER_HEADER.pack(PEER_MAGIC, PEER_VERSION - 1, PeerKind.WELCOME, 0, 0))
        reader.next()
    assert f"`{info.value}`" in section_3


def test_the_stated_version_is_the_codes() -> None:
    assert f"| `version`        | `{cp.CLIENT_VERSION}` (a node also serves `2`: section 2.1) |" in SECTION_2
    assert cp.CLIENT_VERSIONS_SERVED == (2, 3) and "A node serves versions 2 and 3" in SECTION_2
    assert f"this node speaks versions {' and '.join(map(str, cp.CLIENT_VERSIONS_SERVED))}" in SECTION_2
    assert f"A request of version {cp.CLIENT_VERSION_REFUSED} is answered" in SECTION_2
    assert f"client protocol version {cp.CLIENT_VERSION_REFUSED} is not\nserved" in SECTION_2


def test_every_error_code_is_defined_with_its_retry_and_close_rules() -> None:
    rows = _table_rows(SECTION_2, "code")
    assert [(int(r[0]), r[1]) for r in rows] == [(c.value, c.name) for c in cp.ErrorCode]
    for r in rows:
        code = cp.ErrorCode(int(r[0]))
        assert r[3].startswith("yes") == code.retriable, code.name
        assert r[4] == ("yes" if code.closes_connection else "no"), code.name


def test_the_limits_are_stated_in_wire_order_with_the_node_defaults() -> None:
    rows = _table_rows(SECTION_2.split("### 2.4 Limits")[1], "field")
    assert [r[0].strip("`") for r in rows] == list(cp.LIMIT_FIELDS)
    limits = node_limits(local_cluster(Path("/nonexistent"))[0])
    meta = next(e for e in CLIENT_EXAMPLES if e[2]["message"] == "MetadataAnswer")[2]
    assert meta["limits"] == asdict(limits)  # the example shows a default node's limits
    assert f"({limits.event_bytes_max}:" in SECTION_2 and f"({cp.PRODUCE_EVENTS_MAX})" in SECTION_2
    assert f"({DEDUP_HORIZON_ENTRIES_DEFAULT})" in SECTION_2 and f"({DEDUP_SPANS_MAX_DEFAULT})" in SECTION_2
    assert limits.event_bytes_max == EVENT_BYTES_MAX


def test_the_stated_ports_are_the_local_clusters() -> None:
    for m in local_members():
        n = m.node_id
        base = LOCAL_PORT_BASE + 100 * n
        assert (m.client_port, m.data_port, m.raft_port, m.metrics_port) == (base + 1, base + 2, base + 3, base + 4)
    assert f"node N listens on {LOCAL_PORT_BASE} + 100 N + 1 for clients, + 2 for the data channel, + 3 for the" in (
        SECTION_2
    )


def test_the_stated_waits_and_timeouts_are_the_codes() -> None:
    assert f"(at most {FETCH_WAIT_MAX_MS} ms)" in SECTION_2
    assert f"at most {PRODUCE_TIMEOUT_MAX_MS})" in SECTION_2
    assert f"stay below 2^{SEQUENCE_END.bit_length() - 1}" in SECTION_2


def test_commit_offset_and_earliest_offset_are_as_stated() -> None:
    assert commit_offset(5) == 384  # the FETCHED example: commit index 5
    assert earliest_offset(1) == 0 and earliest_offset(20) == 1280  # the OFFSET_OUT_OF_RANGE example


def test_every_consumer_group_kind_has_an_example() -> None:
    shown = {e[2]["message"] for e in CLIENT_EXAMPLES}
    group_messages = {"GroupCommit", "GroupCommitted", "GroupFetch", "GroupPosition", "Groups", "GroupsAnswer"}
    assert group_messages <= shown, group_messages - shown
