"""The client protocol: produce, fetch and metadata requests and their answers (docs/PROTOCOL.md section 2).

Sans-I/O, in the manner of h11: `encode_*` turn values into bytes, `MessageReader` turns received bytes
into messages and never touches a socket. Every message is a 16-byte header followed by a body whose size
the header gives, so a reader knows how much to wait for and can refuse an oversized message before
buffering it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.raft.membership import MEMBERS_MAX  # members in one MEMBERS_ANSWER: a configuration's bound
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

CLIENT_MAGIC: Final = 0x5253  # bytes 53 52, "SR"
CLIENT_VERSION: Final = 3  # what this release sends; version 3 adds membership and consumer-group kinds
CLIENT_VERSIONS_SERVED: Final = (2, 3)  # a node answers each request in the request's own version
CLIENT_VERSION_3: Final = 3  # the first version with the membership and consumer-group kinds (VERSION_3_KINDS)
CLIENT_VERSION_REFUSED: Final = 1  # answered in its own layout (MALFORMED naming both versions), then closed
HEADER: Final = struct.Struct("<HBBIQ")  # magic, version, kind, body_len, correlation_id
HEADER_BYTES: Final = HEADER.size
MESSAGE_BODY_MAX_BYTES: Final = 4 * 1024 * 1024  # the largest body accepted from a peer or client
PRODUCE_EVENTS_MAX: Final = 8192  # events in one produce request
ERROR_MESSAGE_MAX_BYTES: Final = 1024
AUTH_TOKEN_MAX_BYTES: Final = 1024  # the token of an AUTH request; bounded so it stays small

_PRODUCE: Final = struct.Struct("<QQII")  # producer_id, first_sequence, timeout_ms, event_count
_FETCH: Final = struct.Struct("<QII")  # from_offset, max_bytes, max_wait_ms
_FETCHED: Final = struct.Struct("<QQI")  # next_offset, commit_offset, event_count
_FRAMES_HEAD: Final = struct.Struct("<QQIH")  # next_offset, commit_offset, frame_count, first_skip (version 3)
_FRAME_ENTRY: Final = struct.Struct("<QI")  # one frame's log index and size in bytes; then the frame itself
_METADATA_HEAD: Final = struct.Struct("<QIQI")  # term, leader_id, commit_index, node_id
_LIMITS: Final = struct.Struct("<10I")  # Limits, field by field (version 3)
_LIMITS_V2: Final = struct.Struct("<8I")  # version 2: the first eight
_MEMBER_COUNT: Final = struct.Struct("<H")
_MEMBER: Final = struct.Struct("<IH")  # node id, port; then u8 host length + host
_ERROR_HEAD: Final = struct.Struct("<HH")  # code, message length; then message, u8 len + leader address
_ERROR_TAIL: Final = struct.Struct("<QQ")  # earliest_offset, latest_offset (version 2)
_MEMBERS_HEAD: Final = struct.Struct("<QIQBH")  # config_index, leader_id, last_index, flags, member count
_MEMBER_INFO: Final = struct.Struct("<IBQQH")  # node id, role, match index, entries behind, address length
_CHANGE_HEAD: Final = struct.Struct("<BIIQH")  # op, node id, timeout_ms, unix_ms, address length
_CHANGED: Final = struct.Struct("<Q")  # the log index of the committed change
MEMBER_ADDRESS_MAX_BYTES: Final = 512  # one member's address (node/members.py ADDRESS_BYTES_MAX)
CHANGE_MAC_BYTES: Final = 32  # HMAC-SHA256 of MEMBER_CHANGE with the cluster secret
BEHIND_UNKNOWN: Final = 2**64 - 1  # entries_behind when the answering node is not the leader
_U32: Final = np.dtype("<u4")
_U64: Final = np.dtype("<u8")
_GROUP_COMMIT: Final = struct.Struct("<qIH")  # offset, timeout_ms, metadata length (after the name)
_GROUP_POSITION: Final = struct.Struct("<qQQQQH")  # offset, commit ms, index, applied, end offset, meta len
_GROUPS_HEAD: Final = struct.Struct("<QQI")  # applied index, end offset, count
_GROUPS_ROW: Final = struct.Struct("<qQQ")  # offset, commit ms, index (after the name)
GROUP_FETCH_LEADER_ONLY: Final = 0x01  # GROUP_FETCH / GROUPS flags: only the leader answers (read-your-commit)


class Kind(enum.IntEnum):
    """Message kinds: requests below 0x80, answers at or above it."""

    PRODUCE = 0x01
    FETCH = 0x02
    METADATA = 0x03
    AUTH = 0x04  # the first request on a connection to a node that asks for a client token
    FETCH_FRAMES = 0x05  # version 3: FETCH answered with the stored batch frames themselves (FRAMES)
    GROUP_COMMIT = 0x20  # version 3: commit a consumer group's position
    GROUP_FETCH = 0x21  # version 3: a group's committed position
    GROUPS = 0x22  # version 3: every group's position
    GROUP_COMMITTED = 0xA0
    GROUP_POSITION = 0xA1
    GROUPS_ANSWER = 0xA2
    PRODUCED = 0x81
    FETCHED = 0x82
    METADATA_ANSWER = 0x83
    AUTHED = 0x84
    FRAMES = 0x85  # version 3: the answer to FETCH_FRAMES
    MEMBERS = 0x10  # the configuration in effect, with how far behind each member is (any node)
    MEMBER_CHANGE = 0x11  # add a learner, promote a learner, remove a member (the leader; signed)
    MEMBERS_ANSWER = 0x90
    MEMBER_CHANGED = 0x91
    ERROR = 0xFF


# the kinds a node serves only in client protocol version 3 and later (docs/PROTOCOL.md 2.1)
MEMBER_KINDS: Final = frozenset({Kind.MEMBERS, Kind.MEMBER_CHANGE, Kind.MEMBERS_ANSWER, Kind.MEMBER_CHANGED})
GROUP_KINDS: Final = frozenset(
    {Kind.GROUP_COMMIT, Kind.GROUP_FETCH, Kind.GROUPS, Kind.GROUP_COMMITTED, Kind.GROUP_POSITION, Kind.GROUPS_ANSWER}
)
FRAME_KINDS: Final = frozenset({Kind.FETCH_FRAMES, Kind.FRAMES})
VERSION_3_KINDS: Final = MEMBER_KINDS | GROUP_KINDS | FRAME_KINDS


class ErrorCode(enum.IntEnum):
    """What went wrong, as the client sees it. `retriable` says whether the same request may be resent."""

    NOT_LEADER = 1  # with the leader's address when known
    TOO_LARGE = 2
    MALFORMED = 3
    TIMEOUT = 4  # not known to be committed within the request's timeout; retry with the same sequences
    UNAVAILABLE = 5  # no quorum / no leader
    SHUTTING_DOWN = 6
    OUT_OF_ORDER_SEQUENCE = 7  # a gap in a producer's sequences: resend the missing ones first
    OFFSET_OUT_OF_RANGE = 8  # fetch below the earliest held offset or past the node's log end (offsets given)
    UNAUTHORIZED = 9  # no AUTH, or a wrong token, where the node asks for one; the connection is closed
    SEQUENCE_TOO_OLD = 10  # a retry older than the dedup window: the events are in the log, offsets forgotten
    # membership changes (MEMBER_CHANGE; docs/PROTOCOL.md 2.8)
    MEMBER_UNKNOWN = 20  # promote or remove a node that is not a member (or promote a voter)
    CHANGE_IN_PROGRESS = 21  # another change is not yet committed: retry once it is
    NO_QUORUM = 22  # the change would leave no voter, or more than CLUSTER_SIZE_MAX voters
    ADDRESS_IN_USE = 23  # add a node whose id is a member already, or whose address collides with a member's
    NOT_CAUGHT_UP = 24  # promote a learner still too far behind the leader: retry when it has caught up
    # consumer groups (GROUP_COMMIT / GROUP_FETCH; docs/PROTOCOL.md 2.6)
    UNKNOWN_GROUP = 30  # GROUP_FETCH of a group with no committed position
    TOO_MANY_GROUPS = 31  # GROUP_COMMIT of a new group when GROUPS_MAX groups exist
    GROUP_NAME_TOO_LONG = 32  # a group name longer than GROUP_NAME_BYTES_MAX bytes

    @property
    def retriable(self) -> bool:
        return self in (
            ErrorCode.NOT_LEADER,
            ErrorCode.TIMEOUT,
            ErrorCode.UNAVAILABLE,
            ErrorCode.SHUTTING_DOWN,
            ErrorCode.OUT_OF_ORDER_SEQUENCE,
            ErrorCode.CHANGE_IN_PROGRESS,
            ErrorCode.NOT_CAUGHT_UP,
        )

    @property
    def closes_connection(self) -> bool:
        """Whether the node closes the connection after this answer (docs/PROTOCOL.md section 2.2)."""
        return self in (ErrorCode.MALFORMED, ErrorCode.UNAUTHORIZED, ErrorCode.SHUTTING_DOWN)


# --- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Produce:
    """A decoded PRODUCE. `body` is the request body as received (the batcher's event block, forwarded
    unchanged); `lengths` and `data` locate the events without making one object per event."""

    correlation_id: int
    producer_id: int
    first_sequence: int
    timeout_ms: int
    lengths: np.ndarray  # uint32 per event
    data: memoryview  # the event bytes back to back
    body: memoryview

    @property
    def events(self) -> list[memoryview]:
        ends = np.cumsum(self.lengths, dtype=np.int64).tolist()
        starts = [0, *ends[:-1]]
        return [self.data[s:e] for s, e in zip(starts, ends, strict=True)]


@dataclass(frozen=True, slots=True)
class Produced:
    correlation_id: int
    offsets: np.ndarray  # uint64, one per event, in request order


@dataclass(frozen=True, slots=True)
class Fetch:
    """A FETCH, or with `frames` a FETCH_FRAMES (the same body; answered FRAMES instead of FETCHED)."""

    correlation_id: int
    from_offset: int
    max_bytes: int
    max_wait_ms: int
    frames: bool = False


@dataclass(frozen=True, slots=True)
class Fetched:
    correlation_id: int
    next_offset: int  # where the next fetch should start
    commit_offset: int  # offset just past the last committed event on the answering node
    offsets: np.ndarray  # uint64
    events: list[memoryview]


@dataclass(frozen=True, slots=True)
class Frames:
    """A FRAMES answer: committed batch frames exactly as the log stores them (docs/PROTOCOL.md section 1),
    each with its log index; events of frame i have offsets `indexes[i] * 64 + k`. The first frame's first
    `first_skip` events lie before the requested offset (the consumer skips them)."""

    correlation_id: int
    next_offset: int
    commit_offset: int
    first_skip: int
    indexes: np.ndarray  # uint64 log index per frame
    frames: list[memoryview]


@dataclass(frozen=True, slots=True)
class Member:
    node_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Metadata:
    correlation_id: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The answering node's limits, as METADATA_ANSWER states them (0: not stated, as by a test double)."""

    event_bytes_max: int = 0  # the largest event a PRODUCE may carry
    request_bytes_max: int = 0  # the largest request body
    produce_events_max: int = 0  # events in one PRODUCE
    inflight_bytes_max: int = 0  # event bytes produced and not yet answered, per connection
    fetch_bytes_max: int = 0  # the node's cap on a FETCH's max_bytes
    dedup_horizon_entries: int = 0  # a producer silent for this many log entries is forgotten
    dedup_spans_max: int = 0  # PRODUCE requests per producer whose offsets a retry can still get
    dedup_producers_max: int = 0  # producers remembered at once (the least recent is forgotten first)
    groups_max: int = 0  # consumer groups the cluster remembers (version 3)
    group_name_bytes_max: int = 0  # the longest group name, in UTF-8 bytes (version 3)


@dataclass(frozen=True, slots=True)
class MetadataAnswer:
    correlation_id: int
    term: int
    leader_id: int  # 0 when unknown
    commit_index: int
    node_id: int  # the node that answered
    members: list[Member]
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class Auth:
    """The client's token (never shown by repr)."""

    correlation_id: int
    token: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Authed:
    correlation_id: int


@dataclass(frozen=True, slots=True)
class Error:
    correlation_id: int
    code: ErrorCode
    message: str
    leader: str = ""  # "host:port" with NOT_LEADER when known
    earliest_offset: int = 0  # with OFFSET_OUT_OF_RANGE: the earliest offset the node holds
    latest_offset: int = 0  # with OFFSET_OUT_OF_RANGE: the node's commit offset


class ChangeOp(enum.IntEnum):
    """What a MEMBER_CHANGE asks (the core's ConfChange kinds)."""

    ADD_LEARNER = 1  # a new node, as a non-voting learner, at the request's address
    PROMOTE = 2  # a learner becomes a voter
    REMOVE = 3  # a voter or learner leaves (the leader too: it steps down once the change commits)


class MemberRole(enum.IntEnum):
    """A member's role in MEMBERS_ANSWER (the same values as the core's raft/membership.py MemberRole)."""

    VOTER = 1
    LEARNER = 2


class MembersFlag(enum.IntFlag):
    CHANGE_PENDING = 1  # the configuration in effect is not yet committed (a change is in progress)
    REMOVED = 2  # the answering node is not a member of the configuration in effect


@dataclass(frozen=True, slots=True)
class Members:
    correlation_id: int


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: int
    role: MemberRole
    match_index: int  # the leader's view: the last entry known on the member (0 when not the leader)
    entries_behind: int  # the leader's last index minus match_index; BEHIND_UNKNOWN when not the leader
    address: bytes  # the member's address bytes (node/members.py: canonical JSON)


@dataclass(frozen=True, slots=True)
class MembersAnswer:
    correlation_id: int
    config_index: int  # the log index of the configuration in effect (0: the config files' own)
    leader_id: int  # 0 when unknown
    last_index: int  # the answering node's last log index
    flags: MembersFlag
    members: list[MemberInfo]


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A membership change, signed with the cluster secret (`mac` over `signed_bytes`, net/auth.py)."""

    correlation_id: int
    op: ChangeOp
    node_id: int
    timeout_ms: int  # 0 = the node's default
    unix_ms: int  # when the operator signed it: a node refuses one outside its clock window
    address: bytes  # ADD_LEARNER: the new member's address bytes; empty otherwise
    mac: bytes = field(repr=False, default=b"")

    @property
    def signed_bytes(self) -> bytes:
        """What the MAC covers: the body without the MAC."""
        return _CHANGE_HEAD.pack(self.op, self.node_id, self.timeout_ms, self.unix_ms, len(self.address)) + bytes(
            self.address
        )


@dataclass(frozen=True, slots=True)
class MemberChanged:
    correlation_id: int
    index: int  # the log index at which the change is committed


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """Commit `offset` (the next offset the group will read) as the group's position."""

    correlation_id: int
    group: str
    offset: int
    timeout_ms: int = 0
    metadata: bytes = b""


@dataclass(frozen=True, slots=True)
class GroupCommitted:
    correlation_id: int
    index: int  # the log index of the control entry that holds the commit


@dataclass(frozen=True, slots=True)
class GroupFetch:
    correlation_id: int
    group: str
    flags: int = GROUP_FETCH_LEADER_ONLY


@dataclass(frozen=True, slots=True)
class GroupPosition:
    correlation_id: int
    offset: int
    commit_unix_ms: int
    index: int  # the log index of the commit's entry
    applied_index: int  # the answering node's table is applied up to here
    end_offset: int  # just past the last committed event the answering node applied (lag = end - offset)
    metadata: bytes = b""


@dataclass(frozen=True, slots=True)
class Groups:
    correlation_id: int
    flags: int = GROUP_FETCH_LEADER_ONLY


@dataclass(frozen=True, slots=True)
class GroupRow:
    group: str
    offset: int
    commit_unix_ms: int
    index: int


@dataclass(frozen=True, slots=True)
class GroupsAnswer:
    correlation_id: int
    applied_index: int
    end_offset: int  # as in GroupPosition
    groups: list[GroupRow]


LIMIT_FIELDS: Final = tuple(f.name for f in fields(Limits))

Message = (
    Produce
    | Produced
    | Fetch
    | Fetched
    | Frames
    | Metadata
    | MetadataAnswer
    | Auth
    | Authed
    | Members
    | MembersAnswer
    | MemberChange
    | MemberChanged
    | Error
    | GroupCommit
    | GroupCommitted
    | GroupFetch
    | GroupPosition
    | Groups
    | GroupsAnswer
)


# --- encoding ---------------------------------------------------------------------------------------------


def _frame(kind: Kind, correlation_id: int, body: bytes, version: int = CLIENT_VERSION) -> bytes:
    if len(body) > MESSAGE_BODY_MAX_BYTES:
        raise LocalProtocolError("body", f"at most {MESSAGE_BODY_MAX_BYTES} bytes", len(body))
    return HEADER.pack(CLIENT_MAGIC, version, kind, len(body), correlation_id) + body


def _events_block(events: Sequence[bytes | bytearray | memoryview]) -> list[bytes | bytearray | memoryview]:
    lengths = np.fromiter(map(len, events), dtype=_U32, count=len(events))
    return [lengths.tobytes(), *events]


def encode_produce(
    correlation_id: int,
    producer_id: int,
    first_sequence: int,
    timeout_ms: int,
    events: Sequence[bytes | bytearray | memoryview],
) -> bytes:
    if not 1 <= len(events) <= PRODUCE_EVENTS_MAX:
        raise LocalProtocolError("event_count", f"1..{PRODUCE_EVENTS_MAX}", len(events))
    body = b"".join([_PRODUCE.pack(producer_id, first_sequence, timeout_ms, len(events)), *_events_block(events)])
    return _frame(Kind.PRODUCE, correlation_id, body)


def encode_produced(correlation_id: int, offsets: Sequence[int] | np.ndarray) -> bytes:
    arr = np.asarray(offsets, dtype=_U64)
    return _frame(Kind.PRODUCED, correlation_id, struct.pack("<I", arr.size) + arr.tobytes())


def encode_fetch(correlation_id: int, from_offset: int, max_bytes: int, max_wait_ms: int = 0) -> bytes:
    return _frame(Kind.FETCH, correlation_id, _FETCH.pack(from_offset, max_bytes, max_wait_ms))


def encode_fetched(
    correlation_id: int,
    next_offset: int,
    commit_offset: int,
    offsets: Sequence[int] | np.ndarray,
    events: Sequence[bytes | bytearray | memoryview],
) -> bytes:
    arr = np.asarray(offsets, dtype=_U64)
    if arr.size != len(events):
        raise LocalProtocolError("offsets", f"{len(events)} offsets", arr.size)
    head = _FETCHED.pack(next_offset, commit_offset, len(events))
    return _frame(Kind.FETCHED, correlation_id, b"".join([head, arr.tobytes(), *_events_block(events)]))


def encode_fetch_frames(correlation_id: int, from_offset: int, max_bytes: int, max_wait_ms: int = 0) -> bytes:
    """FETCH_FRAMES: FETCH's body, answered with the stored frames (version 3)."""
    return _frame(Kind.FETCH_FRAMES, correlation_id, _FETCH.pack(from_offset, max_bytes, max_wait_ms))


def encode_frames(
    correlation_id: int,
    next_offset: int,
    commit_offset: int,
    first_skip: int,
    indexes: Sequence[int] | np.ndarray,
    frames: Sequence[bytes | bytearray | memoryview],
) -> bytes:
    """A FRAMES answer; the frames are copied once, into the message, never re-encoded."""
    if len(indexes) != len(frames):
        raise LocalProtocolError("FRAMES.indexes", f"{len(frames)} indexes", len(indexes))
    if not 0 <= first_skip < BATCH_EVENTS_MAX or (first_skip and not frames):
        raise LocalProtocolError("FRAMES.first_skip", f"0..{BATCH_EVENTS_MAX - 1}, 0 without frames", first_skip)
    parts: list[bytes | bytearray | memoryview] = [
        _FRAMES_HEAD.pack(next_offset, commit_offset, len(frames), first_skip)
    ]
    for index, frame in zip(indexes, frames, strict=True):
        parts += [_FRAME_ENTRY.pack(int(index), len(frame)), frame]
    return _frame(Kind.FRAMES, correlation_id, b"".join(parts))


def encode_metadata(correlation_id: int) -> bytes:
    return _frame(Kind.METADATA, correlation_id, b"")


def encode_metadata_answer(
    correlation_id: int,
    term: int,
    leader_id: int,
    commit_index: int,
    node_id: int,
    members: Sequence[Member],
    limits: Limits = Limits(),
    version: int = CLIENT_VERSION,
) -> bytes:
    st = _LIMITS if version >= CLIENT_VERSION_3 else _LIMITS_V2
    parts = [
        _METADATA_HEAD.pack(term, leader_id, commit_index, node_id),
        st.pack(*(getattr(limits, f) for f in LIMIT_FIELDS[: st.size // 4])),
        _MEMBER_COUNT.pack(len(members)),
    ]
    for m in members:
        host = m.host.encode()
        parts.append(_MEMBER.pack(m.node_id, m.port) + bytes([len(host)]) + host)
    return _frame(Kind.METADATA_ANSWER, correlation_id, b"".join(parts), version)


def encode_auth(correlation_id: int, token: bytes) -> bytes:
    if not 1 <= len(token) <= AUTH_TOKEN_MAX_BYTES:
        raise LocalProtocolError("AUTH.token", f"1..{AUTH_TOKEN_MAX_BYTES} bytes", len(token))
    return _frame(Kind.AUTH, correlation_id, bytes(token))


def encode_authed(correlation_id: int) -> bytes:
    return _frame(Kind.AUTHED, correlation_id, b"")


def encode_error(
    correlation_id: int,
    code: ErrorCode,
    message: str,
    leader: str = "",
    earliest_offset: int = 0,
    latest_offset: int = 0,
) -> bytes:
    text = _cut(message, ERROR_MESSAGE_MAX_BYTES)
    addr = _cut(leader, 255)
    body = _ERROR_HEAD.pack(code, len(text)) + text + bytes([len(addr)]) + addr
    return _frame(Kind.ERROR, correlation_id, body + _ERROR_TAIL.pack(earliest_offset, latest_offset))


def encode_version_refused(correlation_id: int, version: int) -> bytes:
    """The answer to a request of another protocol version: MALFORMED naming both versions, laid out as
    version 1's ERROR (no offsets) when the request was version 1, so that a version-1 client can read it."""
    served = " and ".join(map(str, CLIENT_VERSIONS_SERVED))
    message = f"client protocol version {version} is not served: this node speaks versions {served}"
    if version != CLIENT_VERSION_REFUSED:
        return encode_error(correlation_id, ErrorCode.MALFORMED, message)
    text = _cut(message, ERROR_MESSAGE_MAX_BYTES)
    body = _ERROR_HEAD.pack(ErrorCode.MALFORMED, len(text)) + text + b"\x00"
    return _frame(Kind.ERROR, correlation_id, body, version=CLIENT_VERSION_REFUSED)


def encode_members(correlation_id: int) -> bytes:
    return _frame(Kind.MEMBERS, correlation_id, b"")


def encode_members_answer(
    correlation_id: int,
    config_index: int,
    leader_id: int,
    last_index: int,
    flags: int,
    members: Sequence[MemberInfo],
) -> bytes:
    if len(members) > MEMBERS_MAX:
        raise LocalProtocolError("MEMBERS_ANSWER.member_count", f"at most {MEMBERS_MAX}", len(members))
    parts = [_MEMBERS_HEAD.pack(config_index, leader_id, last_index, flags, len(members))]
    for m in members:
        if len(m.address) > MEMBER_ADDRESS_MAX_BYTES:
            raise LocalProtocolError(
                "MEMBERS_ANSWER.address", f"at most {MEMBER_ADDRESS_MAX_BYTES} bytes", len(m.address)
            )
        parts.append(_MEMBER_INFO.pack(m.node_id, m.role, m.match_index, m.entries_behind, len(m.address)))
        parts.append(bytes(m.address))
    return _frame(Kind.MEMBERS_ANSWER, correlation_id, b"".join(parts))


def encode_member_change(m: MemberChange) -> bytes:
    """A signed MEMBER_CHANGE (`m.mac` computed by the caller over `m.signed_bytes`)."""
    if len(m.address) > MEMBER_ADDRESS_MAX_BYTES:
        raise LocalProtocolError("MEMBER_CHANGE.address", f"at most {MEMBER_ADDRESS_MAX_BYTES} bytes", len(m.address))
    if len(m.mac) != CHANGE_MAC_BYTES:
        raise LocalProtocolError("MEMBER_CHANGE.mac", f"{CHANGE_MAC_BYTES} bytes", len(m.mac))
    return _frame(Kind.MEMBER_CHANGE, m.correlation_id, m.signed_bytes + bytes(m.mac))


def encode_member_changed(correlation_id: int, index: int) -> bytes:
    return _frame(Kind.MEMBER_CHANGED, correlation_id, _CHANGED.pack(index))


def _name(group: str, field: str) -> bytes:
    raw = group.encode()
    if not 1 <= len(raw) <= 255:
        raise LocalProtocolError(field, "1..255 bytes of UTF-8", len(raw))
    return bytes([len(raw)]) + raw


def encode_group_commit(
    correlation_id: int, group: str, offset: int, timeout_ms: int = 0, metadata: bytes = b""
) -> bytes:
    if offset < 0:
        raise LocalProtocolError("GROUP_COMMIT.offset", ">= 0", offset)
    if len(metadata) > 0xFFFF:
        raise LocalProtocolError("GROUP_COMMIT.metadata", "at most 65535 bytes", len(metadata))
    body = _name(group, "GROUP_COMMIT.group") + _GROUP_COMMIT.pack(offset, timeout_ms, len(metadata)) + metadata
    return _frame(Kind.GROUP_COMMIT, correlation_id, body)


def encode_group_committed(correlation_id: int, index: int) -> bytes:
    return _frame(Kind.GROUP_COMMITTED, correlation_id, struct.pack("<Q", index))


def encode_group_fetch(correlation_id: int, group: str, flags: int = GROUP_FETCH_LEADER_ONLY) -> bytes:
    return _frame(Kind.GROUP_FETCH, correlation_id, bytes([flags]) + _name(group, "GROUP_FETCH.group"))


def encode_group_position(
    correlation_id: int,
    offset: int,
    commit_unix_ms: int,
    index: int,
    applied_index: int,
    end_offset: int,
    metadata: bytes = b"",
) -> bytes:
    head = _GROUP_POSITION.pack(offset, commit_unix_ms, index, applied_index, end_offset, len(metadata))
    return _frame(Kind.GROUP_POSITION, correlation_id, head + metadata)


def encode_groups(correlation_id: int, flags: int = GROUP_FETCH_LEADER_ONLY) -> bytes:
    return _frame(Kind.GROUPS, correlation_id, bytes([flags]))


def encode_groups_answer(correlation_id: int, applied_index: int, end_offset: int, groups: Sequence[GroupRow]) -> bytes:
    parts = [_GROUPS_HEAD.pack(applied_index, end_offset, len(groups))]
    for g in groups:
        parts += [_name(g.group, "GROUPS_ANSWER.group"), _GROUPS_ROW.pack(g.offset, g.commit_unix_ms, g.index)]
    return _frame(Kind.GROUPS_ANSWER, correlation_id, b"".join(parts))


def encode_message(m: Message, version: int = CLIENT_VERSION) -> bytes:
    """The one encoding of a decoded message in `version` (what a decoder's output must re-encode to)."""
    data = _encode_message(m, version)
    return data if version == CLIENT_VERSION else data[:2] + bytes([version]) + data[3:]


def _encode_message(m: Message, version: int) -> bytes:
    if isinstance(m, Produce):
        return encode_produce(m.correlation_id, m.producer_id, m.first_sequence, m.timeout_ms, m.events)
    if isinstance(m, Produced):
        return encode_produced(m.correlation_id, m.offsets)
    if isinstance(m, Fetch):
        encode = encode_fetch_frames if m.frames else encode_fetch
        return encode(m.correlation_id, m.from_offset, m.max_bytes, m.max_wait_ms)
    if isinstance(m, Frames):
        return encode_frames(m.correlation_id, m.next_offset, m.commit_offset, m.first_skip, m.indexes, m.frames)
    if isinstance(m, Fetched):
        return encode_fetched(m.correlation_id, m.next_offset, m.commit_offset, m.offsets, m.events)
    if isinstance(m, Metadata):
        return encode_metadata(m.correlation_id)
    if isinstance(m, MetadataAnswer):
        return encode_metadata_answer(
            m.correlation_id, m.term, m.leader_id, m.commit_index, m.node_id, m.members, m.limits, version
        )
    if isinstance(m, Auth):
        return encode_auth(m.correlation_id, m.token)
    if isinstance(m, Authed):
        return encode_authed(m.correlation_id)
    if isinstance(m, Members):
        return encode_members(m.correlation_id)
    if isinstance(m, MembersAnswer):
        return encode_members_answer(m.correlation_id, m.config_index, m.leader_id, m.last_index, m.flags, m.members)
    if isinstance(m, MemberChange):
        return encode_member_change(m)
    if isinstance(m, MemberChanged):
        return encode_member_changed(m.correlation_id, m.index)

    if isinstance(m, GroupCommit):
        return encode_group_commit(m.correlation_id, m.group, m.offset, m.timeout_ms, m.metadata)
    if isinstance(m, GroupCommitted):
        return encode_group_committed(m.correlation_id, m.index)
    if isinstance(m, GroupFetch):
        return encode_group_fetch(m.correlation_id, m.group, m.flags)
    if isinstance(m, GroupPosition):
        return encode_group_position(
            m.correlation_id, m.offset, m.commit_unix_ms, m.index, m.applied_index, m.end_offset, m.metadata
        )
    if isinstance(m, Groups):
        return encode_groups(m.correlation_id, m.flags)
    if isinstance(m, GroupsAnswer):
        return encode_groups_answer(m.correlation_id, m.applied_index, m.end_offset, m.groups)
    return encode_error(m.correlation_id, m.code, m.message, m.leader, m.earliest_offset, m.latest_offset)


def _cut(text: str, limit_bytes: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit_bytes` at a character boundary (the decoder is strict)."""
    return text.encode()[:limit_bytes].decode("utf-8", "ignore").encode()


# --- decoding ---------------------------------------------------------------------------------------------


class MessageError(RemoteProtocolError):
    """A received message breaks the protocol. `correlation_id` is the header's (0 when the magic was wrong,
    so nothing of the header can be trusted); `version` is set when the header named another version."""

    def __init__(self, field: str, expected: str, got: object, correlation_id: int = 0, version: int = 0) -> None:
        super().__init__(field, expected, got)
        self.correlation_id = correlation_id
        self.version = version


class _Body:
    """A cursor over one message body that raises a named RemoteProtocolError on any overrun."""

    __slots__ = ("view", "pos", "kind")

    def __init__(self, view: memoryview, kind: Kind) -> None:
        self.view, self.pos, self.kind = view, 0, kind

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise RemoteProtocolError(
                f"{self.kind.name}.{field}", f"{n} more bytes", f"{len(self.view) - self.pos} left"
            )
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, field: str) -> tuple:
        return st.unpack(self.take(st.size, field))

    def array(self, dtype: np.dtype, count: int, field: str) -> np.ndarray:
        return np.frombuffer(self.take(count * dtype.itemsize, field), dtype=dtype)

    def table(self, count: int) -> tuple[np.ndarray, memoryview]:
        """A lengths table and the event bytes it describes."""
        lengths = self.array(_U32, count, "lengths")
        total = int(lengths.sum(dtype=np.int64))
        return lengths, self.take(total, "event bytes")

    def events(self, count: int) -> list[memoryview]:
        lengths, data = self.table(count)
        if count == 0:
            return []
        ends = np.cumsum(lengths, dtype=np.int64).tolist()
        starts = [0, *ends[:-1]]
        return [data[s:e] for s, e in zip(starts, ends, strict=True)]

    def text(self, n: int, field: str) -> str:
        """n bytes of UTF-8 (strictly: every accepted body has one meaning, and one encoding)."""
        raw = bytes(self.take(n, field))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"{self.kind.name}.{field}", "UTF-8 text", f"{raw[exc.start : exc.start + 4]!r} at byte {exc.start}"
            ) from None

    def done(self) -> None:
        if self.pos != len(self.view):
            raise RemoteProtocolError(f"{self.kind.name}.body", f"{self.pos} bytes", len(self.view))


def decode_message(kind_byte: int, correlation_id: int, body: memoryview, version: int = CLIENT_VERSION) -> Message:
    """Decode one body whose header has been checked (`version`: the header's). Raises RemoteProtocolError
    naming the field."""
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise RemoteProtocolError("kind", "a known message kind", f"0x{kind_byte:02X}") from None
    b = _Body(body, kind)
    msg: Message
    if kind is Kind.PRODUCE:
        producer_id, first_seq, timeout_ms, count = b.unpack(_PRODUCE, "head")
        if not 1 <= count <= PRODUCE_EVENTS_MAX:
            raise RemoteProtocolError("PRODUCE.event_count", f"1..{PRODUCE_EVENTS_MAX}", count)
        lengths, data = b.table(count)
        msg = Produce(correlation_id, producer_id, first_seq, timeout_ms, lengths, data, body)
    elif kind is Kind.PRODUCED:
        (count,) = b.unpack(struct.Struct("<I"), "event_count")
        msg = Produced(correlation_id, b.array(_U64, count, "offsets"))
    elif kind is Kind.FETCH or kind is Kind.FETCH_FRAMES:
        msg = Fetch(correlation_id, *b.unpack(_FETCH, "head"), frames=kind is Kind.FETCH_FRAMES)
    elif kind is Kind.FRAMES:
        next_offset, commit_offset, count, first_skip = b.unpack(_FRAMES_HEAD, "head")
        if first_skip >= BATCH_EVENTS_MAX or (first_skip and not count):
            raise RemoteProtocolError("FRAMES.first_skip", f"0..{BATCH_EVENTS_MAX - 1}, 0 without frames", first_skip)
        indexes = np.empty(count, dtype=_U64) if count <= len(body) // _FRAME_ENTRY.size else None
        if indexes is None:  # each frame takes at least its entry: refuse a count the body cannot hold
            raise RemoteProtocolError("FRAMES.frame_count", f"at most {len(body) // _FRAME_ENTRY.size}", count)
        frames = []
        for i in range(count):
            indexes[i], size = b.unpack(_FRAME_ENTRY, "frame entry")
            frames.append(b.take(size, "frame"))
        msg = Frames(correlation_id, next_offset, commit_offset, first_skip, indexes, frames)
    elif kind is Kind.FETCHED:
        next_offset, commit_offset, count = b.unpack(_FETCHED, "head")
        offsets = b.array(_U64, count, "offsets")
        msg = Fetched(correlation_id, next_offset, commit_offset, offsets, b.events(count))
    elif kind is Kind.METADATA:
        msg = Metadata(correlation_id)
    elif kind is Kind.AUTH:
        if not 1 <= len(body) <= AUTH_TOKEN_MAX_BYTES:
            raise RemoteProtocolError("AUTH.token", f"1..{AUTH_TOKEN_MAX_BYTES} bytes", len(body))
        msg = Auth(correlation_id, bytes(b.take(len(body), "token")))
    elif kind is Kind.AUTHED:
        msg = Authed(correlation_id)
    elif kind is Kind.GROUP_COMMIT:
        group = b.text(_name_len(b), "group")
        offset, timeout_ms, meta_len = b.unpack(_GROUP_COMMIT, "head")
        if offset < 0:
            raise RemoteProtocolError("GROUP_COMMIT.offset", ">= 0", offset)
        msg = GroupCommit(correlation_id, group, offset, timeout_ms, bytes(b.take(meta_len, "metadata")))
    elif kind is Kind.GROUP_COMMITTED:
        msg = GroupCommitted(correlation_id, *b.unpack(struct.Struct("<Q"), "index"))
    elif kind is Kind.GROUP_FETCH:
        flags = b.take(1, "flags")[0]
        msg = GroupFetch(correlation_id, b.text(_name_len(b), "group"), flags)
    elif kind is Kind.GROUP_POSITION:
        offset, when, index, applied, end_offset, meta_len = b.unpack(_GROUP_POSITION, "head")
        meta = bytes(b.take(meta_len, "metadata"))
        msg = GroupPosition(correlation_id, offset, when, index, applied, end_offset, meta)
    elif kind is Kind.GROUPS:
        msg = Groups(correlation_id, b.take(1, "flags")[0])
    elif kind is Kind.GROUPS_ANSWER:
        applied, end_offset, count = b.unpack(_GROUPS_HEAD, "head")
        rows = []
        for _ in range(count):
            name = b.text(_name_len(b), "group")
            rows.append(GroupRow(name, *b.unpack(_GROUPS_ROW, "group row")))
        msg = GroupsAnswer(correlation_id, applied, end_offset, rows)
    elif kind is Kind.METADATA_ANSWER:
        term, leader_id, commit_index, node_id = b.unpack(_METADATA_HEAD, "head")
        limits = Limits(*b.unpack(_LIMITS if version >= CLIENT_VERSION_3 else _LIMITS_V2, "limits"))
        (count,) = b.unpack(_MEMBER_COUNT, "member_count")
        members = []
        for _ in range(count):
            member_id, port = b.unpack(_MEMBER, "member")
            host = b.text(b.take(1, "host length")[0], "host")
            members.append(Member(member_id, host, port))
        msg = MetadataAnswer(correlation_id, term, leader_id, commit_index, node_id, members, limits)
    elif kind is Kind.MEMBERS:
        msg = Members(correlation_id)
    elif kind is Kind.MEMBERS_ANSWER:
        config_index, leader_id, last_index, flags, count = b.unpack(_MEMBERS_HEAD, "head")
        if count > MEMBERS_MAX:
            raise RemoteProtocolError("MEMBERS_ANSWER.member_count", f"at most {MEMBERS_MAX}", count)
        if flags & ~int(MembersFlag.CHANGE_PENDING | MembersFlag.REMOVED):
            raise RemoteProtocolError("MEMBERS_ANSWER.flags", "bits 0 and 1 only", flags)
        infos = []
        for _ in range(count):
            node_id, role, match, behind, alen = b.unpack(_MEMBER_INFO, "member")
            infos.append(MemberInfo(node_id, _member_role(role), match, behind, _address(b, alen, kind)))
        msg = MembersAnswer(correlation_id, config_index, leader_id, last_index, MembersFlag(flags), infos)
    elif kind is Kind.MEMBER_CHANGE:
        op, node_id, timeout_ms, unix_ms, alen = b.unpack(_CHANGE_HEAD, "head")
        try:
            op = ChangeOp(op)
        except ValueError:
            raise RemoteProtocolError("MEMBER_CHANGE.op", "1 (ADD_LEARNER), 2 (PROMOTE) or 3 (REMOVE)", op) from None
        if node_id < 1:
            raise RemoteProtocolError("MEMBER_CHANGE.node_id", "at least 1", node_id)
        address = _address(b, alen, kind)
        if (op is ChangeOp.ADD_LEARNER) != bool(address):
            raise RemoteProtocolError(
                "MEMBER_CHANGE.address", "an address with ADD_LEARNER only", f"{alen} bytes with {op.name}"
            )
        mac = bytes(b.take(CHANGE_MAC_BYTES, "mac"))
        msg = MemberChange(correlation_id, op, node_id, timeout_ms, unix_ms, address, mac)
    elif kind is Kind.MEMBER_CHANGED:
        (index,) = b.unpack(_CHANGED, "index")
        msg = MemberChanged(correlation_id, index)
    else:  # Kind.ERROR
        code, length = b.unpack(_ERROR_HEAD, "head")
        if length > ERROR_MESSAGE_MAX_BYTES:
            raise RemoteProtocolError("ERROR.message length", f"at most {ERROR_MESSAGE_MAX_BYTES}", length)
        text = b.text(length, "message")
        leader = b.text(b.take(1, "leader length")[0], "leader")
        earliest, latest = b.unpack(_ERROR_TAIL, "offsets")
        try:
            code = ErrorCode(code)
        except ValueError:
            raise RemoteProtocolError("ERROR.code", "a known error code", code) from None
        msg = Error(correlation_id, code, text, leader, earliest, latest)
    b.done()
    return msg


def _member_role(value: int) -> MemberRole:
    try:
        return MemberRole(value)
    except ValueError:
        raise RemoteProtocolError("MEMBERS_ANSWER.role", "1 (voter) or 2 (learner)", value) from None


def _address(b: _Body, length: int, kind: Kind) -> bytes:
    if length > MEMBER_ADDRESS_MAX_BYTES:
        raise RemoteProtocolError(f"{kind.name}.address length", f"at most {MEMBER_ADDRESS_MAX_BYTES}", length)
    return bytes(b.take(length, "address"))


def _name_len(b: _Body) -> int:
    n = b.take(1, "group length")[0]
    if n == 0:
        raise RemoteProtocolError(f"{b.kind.name}.group length", "1..255", 0)
    return n


class MessageReader:
    """Accumulates received bytes and yields whole messages; refuses bad headers before buffering bodies.

    `max_body_bytes` bounds what one message may make this reader hold.
    """

    def __init__(self, max_body_bytes: int = MESSAGE_BODY_MAX_BYTES) -> None:
        self._buf = bytearray()
        self._max_body_bytes = max_body_bytes
        self.version = CLIENT_VERSION  # the version of the last message read (a node answers in it)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def allow_body_bytes(self, max_body_bytes: int) -> None:
        """Change the largest body accepted from now on (small before AUTH, the node's limit after)."""
        self._max_body_bytes = max_body_bytes

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    @property
    def pending_correlation_id(self) -> int:
        """The correlation id of a request partly received (0 unless its header is whole, with the magic)."""
        if len(self._buf) < HEADER_BYTES:
            return 0
        magic, _version, _kind, _body_len, correlation_id = HEADER.unpack_from(self._buf, 0)
        return correlation_id if magic == CLIENT_MAGIC else 0

    def next_message(self) -> Message | None:
        """Return the next whole message, None if more bytes are needed; raise MessageError (a
        RemoteProtocolError that carries the correlation id once the header's magic was right)."""
        if len(self._buf) < HEADER_BYTES:
            return None
        magic, version, kind, body_len, correlation_id = HEADER.unpack_from(self._buf, 0)
        if magic != CLIENT_MAGIC:
            raise MessageError("magic", f"0x{CLIENT_MAGIC:04X}", f"0x{magic:04X}")
        if version not in CLIENT_VERSIONS_SERVED:
            raise MessageError("version", f"one of {CLIENT_VERSIONS_SERVED}", version, correlation_id, version)
        if version < CLIENT_VERSION_3 and kind in VERSION_3_KINDS:
            raise MessageError(
                "version",
                f"{CLIENT_VERSION_3} for kind 0x{kind:02X} (membership, consumer groups)",
                version,
                correlation_id,
            )
        if body_len > self._max_body_bytes:
            raise MessageError("body_len", f"at most {self._max_body_bytes}", body_len, correlation_id)
        end = HEADER_BYTES + body_len
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER_BYTES:end])
        del self._buf[:end]
        self.version = version
        try:
            return decode_message(kind, correlation_id, memoryview(body), version)
        except MessageError:
            raise
        except RemoteProtocolError as exc:
            raise MessageError(exc.field, exc.expected, exc.got, correlation_id) from None
