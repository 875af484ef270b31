"""Consumer groups' committed positions: the table every node applies from the log, and its bytes.

A group commit is a control entry of kind GROUP_OFFSETS (shmraft/wire/control.py) whose body is encoded here;
every node applies committed entries in log order into a `GroupTable` (group name -> committed offset, the
leader's wall-clock time of the commit, an opaque metadata string, and the log index of the entry), so the
table is a function of the log: the same on every node at the same applied index, and it survives failover.
The table is part of the snapshot (node/snapshot.py version 2 carries `encode_groups`), and is rebuilt at start
from the snapshot plus the committed entries after it (workers/raft_groups.py `rebuild_groups`).

Bounded: at most GROUPS_MAX groups, names of 1..GROUP_NAME_BYTES_MAX bytes of UTF-8, metadata of at most
GROUP_METADATA_BYTES_MAX bytes. A commit of a new group when the table is full is refused at apply time, the
same way on every node (`ApplyResult.TOO_MANY_GROUPS`); the leader checks before proposing too, so the refusal
in the log is the rare race of two new groups at once.

Body of a GROUP_OFFSETS control entry (little-endian)::

    offset  size  field
         0     2  body version (1)
         2     1  op (1 = COMMIT)
         3     1  name length N (1..GROUP_NAME_BYTES_MAX)
         4     N  group name (UTF-8)
       4+N     8  committed offset (i64, >= 0: the next offset the group will read)
      12+N     8  commit time (u64, ms since the Unix epoch, the leader's clock when proposed)
      20+N     2  metadata length M (<= GROUP_METADATA_BYTES_MAX)
      22+N     M  metadata (opaque bytes, e.g. Kafka's committed_metadata)

Snapshot section (`encode_groups`): u32 count, then per group sorted by name: u8 name length, name, i64 offset,
u64 commit time, u64 log index, u16 metadata length, metadata. Deterministic: same table, same bytes.

Pure code: no I/O, no clock (the time is in the entry).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from shmraft.wire.errors import RemoteProtocolError

GROUPS_MAX: Final = 1024  # groups a cluster remembers; a commit of one more is refused (TOO_MANY_GROUPS)
GROUP_NAME_BYTES_MAX: Final = 200  # UTF-8 bytes of a group name (Kafka's group ids are usually far shorter)
GROUP_METADATA_BYTES_MAX: Final = 1024  # opaque metadata stored with a commit (Kafka's offset metadata)
GROUP_BODY_VERSION: Final = 1

_BODY_HEAD: Final = struct.Struct("<HBB")  # version, op, name length
_BODY_MID: Final = struct.Struct("<qQH")  # offset, commit time, metadata length
_SECTION_COUNT: Final = struct.Struct("<I")
_SECTION_ROW: Final = struct.Struct("<qQQH")  # offset, commit time, log index, metadata length


class GroupOp(enum.IntEnum):
    """What a GROUP_OFFSETS body does; the value is on disk."""

    COMMIT = 1


class GroupFormatError(RemoteProtocolError):
    """A GROUP_OFFSETS body or snapshot section that is not exactly the layout above."""


class GroupNameError(ValueError):
    """A group name outside the limits (empty, too long, not UTF-8)."""


class ApplyResult(enum.IntEnum):
    """What applying one commit did; the raft worker tells the proposing ingest (0 = applied)."""

    APPLIED = 0
    TOO_MANY_GROUPS = 1


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """One group's committed position, as proposed (the body of a GROUP_OFFSETS entry)."""

    group: str
    offset: int
    commit_unix_ms: int
    metadata: bytes = b""


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """A group's committed position as applied: the commit and the log index of its entry."""

    offset: int
    commit_unix_ms: int
    index: int
    metadata: bytes = b""


def check_group_name(name: str) -> bytes:
    """The name's UTF-8 bytes; GroupNameError naming the limit when it is outside it."""
    raw = name.encode("utf-8", "strict") if isinstance(name, str) else b""
    if not isinstance(name, str) or not 1 <= len(raw) <= GROUP_NAME_BYTES_MAX:
        raise GroupNameError(f"group name: expected 1..{GROUP_NAME_BYTES_MAX} bytes of UTF-8, got {len(raw)} bytes")
    return raw


def encode_commit(commit: GroupCommit) -> bytes:
    """The GROUP_OFFSETS body of one commit (ValueError for values outside the limits)."""
    name = check_group_name(commit.group)
    if commit.offset < 0:
        raise ValueError(f"offset: expected >= 0, got {commit.offset}")
    if len(commit.metadata) > GROUP_METADATA_BYTES_MAX:
        raise ValueError(f"metadata: expected at most {GROUP_METADATA_BYTES_MAX} bytes, got {len(commit.metadata)}")
    return (
        _BODY_HEAD.pack(GROUP_BODY_VERSION, GroupOp.COMMIT, len(name))
        + name
        + _BODY_MID.pack(commit.offset, commit.commit_unix_ms, len(commit.metadata))
        + bytes(commit.metadata)
    )


def decode_commit(body: bytes | memoryview) -> GroupCommit:
    """A GROUP_OFFSETS body; GroupFormatError naming the field when it is not one this release reads."""
    mv = memoryview(body)
    if len(mv) < _BODY_HEAD.size:
        raise GroupFormatError("group body", f"at least {_BODY_HEAD.size} bytes", len(mv))
    version, op, n = _BODY_HEAD.unpack_from(mv, 0)
    if version != GROUP_BODY_VERSION:
        raise GroupFormatError("group body version", str(GROUP_BODY_VERSION), version)
    if op != GroupOp.COMMIT:
        raise GroupFormatError("group op", f"{int(GroupOp.COMMIT)} (COMMIT)", op)
    if not 1 <= n <= GROUP_NAME_BYTES_MAX:
        raise GroupFormatError("group name length", f"1..{GROUP_NAME_BYTES_MAX}", n)
    pos = _BODY_HEAD.size
    if len(mv) < pos + n + _BODY_MID.size:
        raise GroupFormatError("group body", f"at least {pos + n + _BODY_MID.size} bytes", len(mv))
    name = _utf8(mv[pos : pos + n], "group name")
    offset, when_ms, m = _BODY_MID.unpack_from(mv, pos + n)
    if offset < 0:
        raise GroupFormatError("group offset", ">= 0", offset)
    if m > GROUP_METADATA_BYTES_MAX:
        raise GroupFormatError("group metadata length", f"at most {GROUP_METADATA_BYTES_MAX}", m)
    end = pos + n + _BODY_MID.size + m
    if len(mv) != end:
        raise GroupFormatError("group body size", str(end), len(mv))
    return GroupCommit(name, offset, when_ms, bytes(mv[end - m : end]))


def _utf8(raw: memoryview, what: str) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise GroupFormatError(what, "UTF-8 text", bytes(raw)[:16]) from None


class GroupTable:
    """Group name -> committed position, applied in log order; `index` is the last log index applied."""

    def __init__(self, groups_max: int = GROUPS_MAX) -> None:
        self.groups_max = groups_max
        self.index = 0
        self._rows: dict[str, GroupPosition] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupTable) and (self.index, self._rows) == (other.index, other._rows)

    def get(self, group: str) -> GroupPosition | None:
        return self._rows.get(group)

    def names(self) -> list[str]:
        return sorted(self._rows)

    def would_refuse(self, group: str) -> bool:
        """Whether a commit of `group` now would be refused as one group too many."""
        return group not in self._rows and len(self._rows) >= self.groups_max

    def apply(self, index: int, commit: GroupCommit) -> ApplyResult:
        """Apply the commit in the entry at `index` (the same result on every node)."""
        self.advance(index)
        if self.would_refuse(commit.group):
            return ApplyResult.TOO_MANY_GROUPS
        self._rows[commit.group] = GroupPosition(commit.offset, commit.commit_unix_ms, index, commit.metadata)
        return ApplyResult.APPLIED

    def advance(self, index: int) -> None:
        """Entries up to `index` are applied (those without group commits change nothing else)."""
        if index < self.index:
            raise ValueError(f"group table at index {self.index} cannot go back to {index}")
        self.index = index

    @classmethod
    def of_rows(cls, index: int, rows: dict[str, GroupPosition]) -> GroupTable:
        """A table holding `rows` at `index` (a few rows of another table, e.g. to send them)."""
        t = cls()
        t.index = index
        t._rows = dict(rows)
        return t

    def rows(self) -> dict[str, GroupPosition]:
        """Every group's position, by name (a copy)."""
        return dict(self._rows)

    def copy(self) -> GroupTable:
        t = GroupTable(self.groups_max)
        t.index = self.index
        t._rows = dict(self._rows)
        return t

    def encode(self) -> bytes:
        """The snapshot section (module docstring): deterministic."""
        parts = [_SECTION_COUNT.pack(len(self._rows))]
        for name in sorted(self._rows):
            row = self._rows[name]
            raw = name.encode()
            parts += [
                bytes([len(raw)]),
                raw,
                _SECTION_ROW.pack(row.offset, row.commit_unix_ms, row.index, len(row.metadata)),
                row.metadata,
            ]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | memoryview, index: int, groups_max: int = GROUPS_MAX) -> GroupTable:
        """The table in a snapshot section taken at `index`; GroupFormatError naming what is wrong."""
        mv = memoryview(data)
        if len(mv) < _SECTION_COUNT.size:
            raise GroupFormatError("groups section", f"at least {_SECTION_COUNT.size} bytes", len(mv))
        (count,) = _SECTION_COUNT.unpack_from(mv, 0)
        if count > groups_max:
            raise GroupFormatError("groups count", f"at most {groups_max}", count)
        t = cls(groups_max)
        t.index = index
        pos = _SECTION_COUNT.size
        prev = None
        for _ in range(count):
            if pos >= len(mv):
                raise GroupFormatError("groups section", "one more row", "end of section")
            n = mv[pos]
            if not 1 <= n <= GROUP_NAME_BYTES_MAX:
                raise GroupFormatError("group name length", f"1..{GROUP_NAME_BYTES_MAX}", n)
            if len(mv) < pos + 1 + n + _SECTION_ROW.size:
                raise GroupFormatError("groups section", "a whole row", len(mv) - pos)
            name = _utf8(mv[pos + 1 : pos + 1 + n], "group name")
            if prev is not None and not prev < name:
                raise GroupFormatError("group names", "strictly increasing", name)
            prev = name
            offset, when_ms, at, m = _SECTION_ROW.unpack_from(mv, pos + 1 + n)
            pos += 1 + n + _SECTION_ROW.size
            if m > GROUP_METADATA_BYTES_MAX or pos + m > len(mv):
                raise GroupFormatError("group metadata length", f"<= {GROUP_METADATA_BYTES_MAX}, in the section", m)
            if offset < 0 or not 1 <= at <= index:
                raise GroupFormatError("group row", f"offset >= 0 and index in [1, {index}]", (offset, at))
            t._rows[name] = GroupPosition(offset, when_ms, at, bytes(mv[pos : pos + m]))
            pos += m
        if pos != len(mv):
            raise GroupFormatError("groups section size", str(pos), len(mv))
        return t
