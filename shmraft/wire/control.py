"""Control entries: log entries that carry no events but state every node applies in log order.

A Raft log entry's data is one of three things: empty (a new leader's no-op), a batch frame (section 1 of
docs/PROTOCOL.md, magic 0xDEADBEEF), or a control entry (magic b"CTRL"): a cluster configuration
(membership changes) or a consumer group's committed positions. A control entry is replicated, committed and
compacted like any other entry, holds no event offsets (a consumer's FETCH skips it like a no-op), and its
effect is part of the state a snapshot captures. The envelope is fixed here; each kind's body is defined by
the module that applies it.

Layout (little-endian)::

    offset  size  field
         0     4  magic 0x4C525443 (b"CTRL")
         4     2  version (1)
         6     2  kind (ControlKind)
         8     4  body length N (<= CONTROL_BODY_BYTES_MAX)
        12     N  body
      12+N     4  CRC32 of bytes [0, 12 + N)

Pure code: bytes in, bytes out.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

CONTROL_MAGIC: Final = 0x4C525443  # b"CTRL" read as a little-endian u32; a frame starts 0xDEADBEEF
CONTROL_VERSION: Final = 1
CONTROL_HEADER_BYTES: Final = 12
CONTROL_TRAILER_BYTES: Final = 4
CONTROL_BODY_BYTES_MAX: Final = 1024 * 1024  # a control entry is small state, never bulk data

_HEAD: Final = struct.Struct("<IHHI")  # magic, version, kind, body length
_CRC: Final = struct.Struct("<I")
_MAGIC_BYTES: Final = struct.pack("<I", CONTROL_MAGIC)


class ControlKind(enum.IntEnum):
    """What a control entry's body is; the value is on disk and on the wire."""

    MEMBERSHIP = 1  # a cluster configuration (members and their roles)
    GROUP_OFFSETS = 2  # a consumer group's committed positions


class ControlFormatError(RemoteProtocolError):
    """A control entry that is not exactly the layout above (from a peer or the disk)."""


@dataclass(frozen=True, slots=True)
class ControlEntry:
    kind: ControlKind
    body: bytes


def is_control(data: bytes | memoryview) -> bool:
    """Whether an entry's data is a control entry (by its magic; `decode_control` checks the rest)."""
    return len(data) >= 4 and bytes(data[:4]) == _MAGIC_BYTES


def encode_control(kind: ControlKind, body: bytes) -> bytes:
    """The entry data for a control entry of `kind` carrying `body`."""
    if len(body) > CONTROL_BODY_BYTES_MAX:
        raise LocalProtocolError("control body", f"at most {CONTROL_BODY_BYTES_MAX} bytes", len(body))
    head = _HEAD.pack(CONTROL_MAGIC, CONTROL_VERSION, int(kind), len(body)) + body
    return head + _CRC.pack(zlib.crc32(head))


def decode_control(data: bytes | memoryview) -> ControlEntry:
    """The control entry in `data`; ControlFormatError naming the field when it is not one."""
    size = len(data)
    if size < CONTROL_HEADER_BYTES + CONTROL_TRAILER_BYTES:
        raise ControlFormatError(
            "control entry", f"at least {CONTROL_HEADER_BYTES + CONTROL_TRAILER_BYTES} bytes", size
        )
    magic, version, kind, length = _HEAD.unpack_from(data, 0)
    if magic != CONTROL_MAGIC:
        raise ControlFormatError("control magic", f"{CONTROL_MAGIC:#010x}", f"{magic:#010x}")
    if version != CONTROL_VERSION:
        raise ControlFormatError("control version", f"{CONTROL_VERSION} (this release reads version 1 only)", version)
    if length > CONTROL_BODY_BYTES_MAX:
        raise ControlFormatError("control body length", f"at most {CONTROL_BODY_BYTES_MAX}", length)
    if size != CONTROL_HEADER_BYTES + length + CONTROL_TRAILER_BYTES:
        raise ControlFormatError(
            "control entry size", f"{CONTROL_HEADER_BYTES + length + CONTROL_TRAILER_BYTES} (header + body + CRC)", size
        )
    end = CONTROL_HEADER_BYTES + length
    (crc,) = _CRC.unpack_from(data, end)
    actual = zlib.crc32(data[:end])
    if crc != actual:
        raise ControlFormatError("control crc32", f"{actual:#010x}", f"{crc:#010x}")
    try:
        k = ControlKind(kind)
    except ValueError:
        raise ControlFormatError("control kind", f"one of {[int(x) for x in ControlKind]}", kind) from None
    return ControlEntry(k, bytes(data[CONTROL_HEADER_BYTES:end]))
