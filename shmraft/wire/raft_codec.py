"""Raft messages as bytes: the body of a RAFT peer frame (docs/PROTOCOL.md section 3).

Each body starts with a kind byte and the common fields (src u32, dst u32, term u64); the rest is fixed per
kind, except AppendEntries, which carries its entries as a terms table, a lengths table and the entry
bytes (one batch frame each) back to back, and InstallSnapshot, which carries one chunk of a snapshot after
its fixed fields. Entries are consecutive: entry i has index prev_index + 1 + i.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from shmraft.constants import APPEND_ENTRIES_MAX, SNAPSHOT_CHUNK_BYTES_MAX
from shmraft.raft.membership import MEMBER_ADDRESS_BYTES_MAX, MEMBERS_MAX
from shmraft.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.types import Entry
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

ENTRY_BYTES_MAX: Final = 64 * 1024  # one entry's data (a frame is at most 32,824 bytes)
SNAPSHOT_TOTAL_BYTES_MAX: Final = 1 << 30  # a whole snapshot (a dedup table is tens of MB at most)

_MEMBERSHIP_HEAD_BYTES: Final = 4  # raft/membership.py: body version u16, member count u16
_MEMBER_HEAD_BYTES: Final = 7  # per member: id u32, role u8, address length u16
_COMMON: Final = struct.Struct("<BIIQ")  # kind, src, dst, term
_APPEND: Final = struct.Struct("<QQQI")  # prev_index, prev_term, commit, count
_APPEND_RESP: Final = struct.Struct("<QBQQ")  # index, success, hint_index, hint_term
_HEARTBEAT: Final = struct.Struct("<Q")  # commit
_VOTE: Final = struct.Struct("<QQBB")  # last_index, last_term, pre_vote, transfer
_VOTE_RESP: Final = struct.Struct("<BB")  # granted, pre_vote
_SNAP: Final = struct.Struct("<QQQIQII")  # index, snap_term, total, crc, offset, chunk length, config length
_SNAP_RESP: Final = struct.Struct("<QQ")  # index, received
# the snapshot's configuration (raft/membership.py body, repeated in every chunk): at most this many bytes
SNAPSHOT_CONFIG_BYTES_MAX: Final = _MEMBERSHIP_HEAD_BYTES + MEMBERS_MAX * (
    _MEMBER_HEAD_BYTES + MEMBER_ADDRESS_BYTES_MAX
)
# a chunk's body is at most this + the chunk
INSTALL_SNAPSHOT_OVERHEAD_BYTES: Final = _COMMON.size + _SNAP.size + SNAPSHOT_CONFIG_BYTES_MAX
_U64: Final = np.dtype("<u8")
_U32: Final = np.dtype("<u4")

_KIND: Final = {
    AppendEntries: 1,
    AppendResponse: 2,
    Heartbeat: 3,
    HeartbeatResponse: 4,
    RequestVote: 5,
    VoteResponse: 6,
    TimeoutNow: 7,
    InstallSnapshot: 8,
    SnapshotResponse: 9,
}
_NAMES: Final = {v: k.__name__ for k, v in _KIND.items()}


def encode_raft(m: Message) -> bytes:
    """One message as a RAFT body."""
    head = _COMMON.pack(_KIND[type(m)], m.src, m.dst, m.term)
    if isinstance(m, AppendEntries):
        n = len(m.entries)
        terms = np.fromiter((e.term for e in m.entries), dtype=_U64, count=n)
        lengths = np.fromiter((len(e.data) for e in m.entries), dtype=_U32, count=n)
        return b"".join(
            [
                head,
                _APPEND.pack(m.prev_index, m.prev_term, m.commit, n),
                terms.tobytes(),
                lengths.tobytes(),
                *(e.data for e in m.entries),
            ]
        )
    if isinstance(m, AppendResponse):
        return head + _APPEND_RESP.pack(m.index, m.success, m.hint_index, m.hint_term)
    if isinstance(m, Heartbeat):
        return head + _HEARTBEAT.pack(m.commit)
    if isinstance(m, RequestVote):
        return head + _VOTE.pack(m.last_index, m.last_term, m.pre_vote, m.transfer)
    if isinstance(m, VoteResponse):
        return head + _VOTE_RESP.pack(m.granted, m.pre_vote)
    if isinstance(m, InstallSnapshot):
        if len(m.data) > SNAPSHOT_CHUNK_BYTES_MAX:  # the receiver would refuse it: a bug of the sender's
            raise LocalProtocolError("InstallSnapshot.data", f"at most {SNAPSHOT_CHUNK_BYTES_MAX} bytes", len(m.data))
        if len(m.config) > SNAPSHOT_CONFIG_BYTES_MAX:
            raise LocalProtocolError(
                "InstallSnapshot.config", f"at most {SNAPSHOT_CONFIG_BYTES_MAX} bytes", len(m.config)
            )
        fixed = _SNAP.pack(m.index, m.snap_term, m.total, m.crc, m.offset, len(m.data), len(m.config))
        return b"".join([head, fixed, m.data, m.config])
    if isinstance(m, SnapshotResponse):
        return head + _SNAP_RESP.pack(m.index, m.received)
    return head  # HeartbeatResponse, TimeoutNow


def decode_raft(body: memoryview | bytes, *, expect_dst: int | None = None) -> Message:
    """Decode a RAFT body; RemoteProtocolError names the field on any malformation."""
    view = memoryview(body)
    if len(view) < _COMMON.size:
        raise RemoteProtocolError("raft message", f"at least {_COMMON.size} bytes", len(view))
    kind, src, dst, term = _COMMON.unpack_from(view, 0)
    name = _NAMES.get(kind)
    if name is None:
        raise RemoteProtocolError("raft kind", f"1..{len(_NAMES)}", kind)
    if expect_dst is not None and dst != expect_dst:
        raise RemoteProtocolError(f"{name}.dst", str(expect_dst), dst)
    rest = view[_COMMON.size :]
    if kind == 1:
        return _decode_append(rest, src, dst, term)
    if kind == 8:
        return _decode_snapshot_chunk(rest, src, dst, term)
    sizes = {
        2: _APPEND_RESP.size,
        3: _HEARTBEAT.size,
        4: 0,
        5: _VOTE.size,
        6: _VOTE_RESP.size,
        7: 0,
        9: _SNAP_RESP.size,
    }
    if len(rest) != sizes[kind]:
        raise RemoteProtocolError(f"{name}.body", f"{sizes[kind]} bytes after the common fields", len(rest))
    if kind == 2:
        index, success, hint_index, hint_term = _APPEND_RESP.unpack(rest)
        return AppendResponse(src, dst, term, index, _flag(success, name, "success"), hint_index, hint_term)
    if kind == 3:
        return Heartbeat(src, dst, term, _HEARTBEAT.unpack(rest)[0])
    if kind == 4:
        return HeartbeatResponse(src, dst, term)
    if kind == 5:
        last_index, last_term, pre_vote, transfer = _VOTE.unpack(rest)
        return RequestVote(
            src, dst, term, last_index, last_term, _flag(pre_vote, name, "pre_vote"), _flag(transfer, name, "transfer")
        )
    if kind == 6:
        granted, pre_vote = _VOTE_RESP.unpack(rest)
        return VoteResponse(src, dst, term, _flag(granted, name, "granted"), _flag(pre_vote, name, "pre_vote"))
    if kind == 9:
        index, received = _SNAP_RESP.unpack(rest)
        return SnapshotResponse(src, dst, term, index, received)
    return TimeoutNow(src, dst, term)


def _flag(value: int, name: str, field: str) -> bool:
    """A boolean byte: 0 or 1, nothing else (so that every accepted body has exactly one meaning)."""
    if value > 1:
        raise RemoteProtocolError(f"{name}.{field}", "0 or 1", value)
    return bool(value)


def _decode_append(rest: memoryview, src: int, dst: int, term: int) -> AppendEntries:
    if len(rest) < _APPEND.size:
        raise RemoteProtocolError("AppendEntries.head", f"{_APPEND.size} bytes", len(rest))
    prev_index, prev_term, commit, n = _APPEND.unpack_from(rest, 0)
    if n > APPEND_ENTRIES_MAX:
        raise RemoteProtocolError("AppendEntries.count", f"at most {APPEND_ENTRIES_MAX}", n)
    pos = _APPEND.size
    tables = n * 12
    if len(rest) < pos + tables:
        raise RemoteProtocolError("AppendEntries.tables", f"{tables} bytes", len(rest) - pos)
    terms = np.frombuffer(rest, dtype=_U64, count=n, offset=pos).tolist()
    lengths = np.frombuffer(rest, dtype=_U32, count=n, offset=pos + 8 * n)
    if n and int(lengths.max()) > ENTRY_BYTES_MAX:
        raise RemoteProtocolError("AppendEntries.entry length", f"at most {ENTRY_BYTES_MAX}", int(lengths.max()))
    data = rest[pos + tables :]
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    if (ends[-1] if n else 0) != len(data):
        raise RemoteProtocolError("AppendEntries.entries", f"{ends[-1] if n else 0} bytes", len(data))
    starts = [0, *ends[:-1]]
    entries = tuple(Entry(prev_index + 1 + i, terms[i], bytes(data[starts[i] : ends[i]])) for i in range(n))
    return AppendEntries(src, dst, term, prev_index, prev_term, entries, commit)


def _decode_snapshot_chunk(rest: memoryview, src: int, dst: int, term: int) -> InstallSnapshot:
    """One chunk: bounded (SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_TOTAL_BYTES_MAX) and inside [0, total)."""
    if len(rest) < _SNAP.size:
        raise RemoteProtocolError("InstallSnapshot.head", f"{_SNAP.size} bytes", len(rest))
    index, snap_term, total, crc, offset, length, config_length = _SNAP.unpack_from(rest, 0)
    if total > SNAPSHOT_TOTAL_BYTES_MAX:
        raise RemoteProtocolError("InstallSnapshot.total", f"at most {SNAPSHOT_TOTAL_BYTES_MAX}", total)
    if length > SNAPSHOT_CHUNK_BYTES_MAX:
        raise RemoteProtocolError("InstallSnapshot.length", f"at most {SNAPSHOT_CHUNK_BYTES_MAX}", length)
    if config_length > SNAPSHOT_CONFIG_BYTES_MAX:
        raise RemoteProtocolError(
            "InstallSnapshot.config_length", f"at most {SNAPSHOT_CONFIG_BYTES_MAX}", config_length
        )
    if length + config_length != len(rest) - _SNAP.size:
        raise RemoteProtocolError(
            "InstallSnapshot.data", f"{length} + {config_length} bytes (chunk + config)", len(rest) - _SNAP.size
        )
    if offset + length > total:
        raise RemoteProtocolError("InstallSnapshot.offset", f"offset + length <= total {total}", offset + length)
    data = bytes(rest[_SNAP.size : _SNAP.size + length])
    config = bytes(rest[_SNAP.size + length :])
    return InstallSnapshot(src, dst, term, index, snap_term, total, crc, offset, data, config)
