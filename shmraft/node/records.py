"""The records that travel in a node's rings between its workers (docs/DESIGN.md section 1).

R1 (ingest -> batcher) carries PRODUCE bodies unchanged and R2 (batcher -> raft) carries batch frames;
both need no extra encoding. This module encodes the other three:

- R3 (raft -> sender) and R4 (sender -> raft): a peer message with its peer id, or a "peer disconnected"
  notice;
- R5 (raft -> ingest): what ingest needs to answer producers: which events an appended entry holds, which
  events were refused or found to be duplicates, the commit index, and a change of term or leader; and the
  outcome of a membership change request (CHANGE_RESULT) and the result of a consumer-group request
  (GROUP_RESULT, with its payload);
- R6 (ingest -> raft): control requests, each record starting with its `RequestKind` byte: membership
  changes from the client port (MEMBER_CHANGE), each with an id that the CHANGE_RESULT note carries back, and
  consumer-group requests (commit a position, read one group, list them), each with a token that the
  GROUP_RESULT note carries back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.node import groups as gr

_PEER: Final = struct.Struct("<IB")  # peer id, kind
_NOTE_HEAD: Final = struct.Struct("<BQQI")  # kind, a, b, count
_CHANGE: Final = struct.Struct("<QBI")  # request id, op (wire.client.ChangeOp), node id; then the address
_U64: Final = np.dtype("<u8")
_I64: Final = np.dtype("<i8")


class PeerRecordKind(enum.IntEnum):
    MESSAGE = 0
    DISCONNECTED = 1


PEER_RECORD_HEADER_BYTES: Final = _PEER.size  # before the message body in a data-channel ring record


def encode_peer_record(peer_id: int, kind: PeerRecordKind, body: bytes | memoryview = b"") -> bytes:
    return _PEER.pack(peer_id, kind) + bytes(body)


def decode_peer_record(rec: bytes | memoryview) -> tuple[int, PeerRecordKind, memoryview]:
    view = memoryview(rec)
    peer_id, kind = _PEER.unpack_from(view, 0)
    return peer_id, PeerRecordKind(kind), view[_PEER.size :]


class NoteKind(enum.IntEnum):
    APPENDED = 1  # arrays: producer ids, sequences, offsets of events just appended (one note per loop)
    VERDICTS = 2  # arrays: producer ids, sequences, verdicts (dedup.Verdict), offsets (for duplicates)
    COMMIT = 3  # a = commit index
    LEADER = 4  # a = term, b = leader id (0 = unknown); sent when either changes
    CHANGE_RESULT = 5  # a = request id, b = log index where committed (0: refused); code and text (below)
    GROUP_RESULT = 6  # a = request token, b = status (0 or a wire.client ErrorCode); payload: the answer's data


class RequestKind(enum.IntEnum):
    """The first byte of every R6 record: which request follows."""

    MEMBER_CHANGE = 1
    GROUP = 2


def request_kind(rec: bytes | memoryview) -> RequestKind:
    """The kind of an R6 record (ValueError for an unknown one: a bug, both ends are this release)."""
    return RequestKind(rec[0])


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """A membership change asked on the client port, for the raft worker (R6)."""

    request_id: int
    op: int  # wire.client.ChangeOp
    node_id: int
    address: bytes  # ADD_LEARNER: the new member's address bytes


def encode_change_request(req: ChangeRequest) -> bytes:
    return bytes([RequestKind.MEMBER_CHANGE]) + _CHANGE.pack(req.request_id, req.op, req.node_id) + bytes(req.address)


def decode_change_request(rec: bytes | memoryview) -> ChangeRequest:
    view = memoryview(rec)[1:]
    request_id, op, node_id = _CHANGE.unpack_from(view, 0)
    return ChangeRequest(request_id, op, node_id, bytes(view[_CHANGE.size :]))


@dataclass(frozen=True, slots=True)
class Note:
    kind: NoteKind
    a: int = 0
    b: int = 0
    producer_ids: np.ndarray | None = None
    sequences: np.ndarray | None = None
    verdicts: np.ndarray | None = None
    offsets: np.ndarray | None = None
    code: int = 0  # CHANGE_RESULT: 0 committed, else a wire.client.ErrorCode
    text: str = ""  # CHANGE_RESULT: why it was refused
    payload: bytes = b""  # GROUP_RESULT only


def encode_note(note: Note) -> bytes:
    if note.kind is NoteKind.GROUP_RESULT:
        return _NOTE_HEAD.pack(note.kind, note.a, note.b, len(note.payload)) + note.payload
    parts = []
    count = 0
    if note.producer_ids is not None:
        count = int(note.producer_ids.size)
        parts += [np.asarray(note.producer_ids, _U64).tobytes(), np.asarray(note.sequences, _U64).tobytes()]
    if note.verdicts is not None:
        parts.append(np.asarray(note.verdicts, np.uint8).tobytes())
    if note.offsets is not None:
        parts.append(np.asarray(note.offsets, _I64).tobytes())
    if note.kind is NoteKind.CHANGE_RESULT:
        return _NOTE_HEAD.pack(note.kind, note.a, note.b, note.code) + note.text.encode()
    return _NOTE_HEAD.pack(note.kind, note.a, note.b, count) + b"".join(parts)


def decode_note(rec: bytes | memoryview) -> Note:
    view = memoryview(rec)
    kind, a, b, n = _NOTE_HEAD.unpack_from(view, 0)
    kind = NoteKind(kind)
    pos = _NOTE_HEAD.size
    if kind is NoteKind.APPENDED or kind is NoteKind.VERDICTS:
        pids = np.frombuffer(view, _U64, n, pos)
        seqs = np.frombuffer(view, _U64, n, pos + 8 * n)
        if kind is NoteKind.VERDICTS:
            verdicts = np.frombuffer(view, np.uint8, n, pos + 16 * n)
            offsets = np.frombuffer(view, _I64, n, pos + 17 * n)
            return Note(kind, a, b, pids, seqs, verdicts, offsets)
        return Note(kind, a, b, pids, seqs, None, np.frombuffer(view, _I64, n, pos + 16 * n))
    if kind is NoteKind.CHANGE_RESULT:
        return Note(kind, a, b, code=n, text=bytes(view[pos:]).decode("utf-8", "replace"))
    if kind is NoteKind.GROUP_RESULT:
        return Note(kind, a, b, payload=bytes(view[pos : pos + n]))
    return Note(kind, a, b)


class GroupRequestKind(enum.IntEnum):
    """What a consumer-group request on R6 asks of the raft worker."""

    COMMIT = 1  # propose a GROUP_OFFSETS control entry; answered once applied
    FETCH = 2  # one group's position from the applied table
    LIST = 3  # every group's position from the applied table


_GROUP_REQ: Final = struct.Struct("<BQB")  # kind, token, flags; then the body (a GROUP_OFFSETS body, or a name)


@dataclass(frozen=True, slots=True)
class GroupRequest:
    kind: GroupRequestKind
    token: int
    flags: int
    body: bytes  # COMMIT: a GROUP_OFFSETS control body; FETCH: the group name (UTF-8); LIST: empty


def encode_group_request(req: GroupRequest) -> bytes:
    return bytes([RequestKind.GROUP]) + _GROUP_REQ.pack(req.kind, req.token, req.flags) + req.body


def decode_group_request(rec: bytes | memoryview) -> GroupRequest:
    view = memoryview(rec)[1:]
    kind, token, flags = _GROUP_REQ.unpack_from(view, 0)
    return GroupRequest(GroupRequestKind(kind), token, flags, bytes(view[_GROUP_REQ.size :]))


RESULT_HEAD: Final = struct.Struct("<QQQB")  # applied index, log index of the commit (COMMIT), end offset, flags

RESULT_FLAG_LEADER: Final = 0x01  # answered by a leader with a commit in its term


@dataclass(frozen=True, slots=True)
class GroupResult:
    """A GROUP_RESULT payload, decoded."""

    applied_index: int  # the answering node's table is applied up to here
    entry_index: int  # COMMIT: the log index of the commit's entry
    end_offset: int  # just past the last committed event the answering node has applied (lag = end - position)
    leader: bool  # answered by a leader with a commit in its term
    table: gr.GroupTable | None  # FETCH: the one group; LIST: every group


def encode_result(applied_index: int, entry_index: int, end_offset: int, leader: bool, section: bytes = b"") -> bytes:
    """A GROUP_RESULT payload: the head, then (FETCH, LIST) a groups section (node/groups.py)."""
    return RESULT_HEAD.pack(applied_index, entry_index, end_offset, RESULT_FLAG_LEADER if leader else 0) + section


def decode_result(payload: bytes) -> GroupResult:
    applied, entry, end, flags = RESULT_HEAD.unpack_from(payload, 0)
    rest = payload[RESULT_HEAD.size :]
    table = gr.GroupTable.decode(rest, applied) if rest else None
    return GroupResult(applied, entry, end, bool(flags & RESULT_FLAG_LEADER), table)
