"""Control entries (shmraft/wire/control.py, docs/PROTOCOL.md section 1.6): the envelope round-trips, every
damaged field is named, a batch frame is never taken for one, and the document's example is the code's."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from shmraft.wire.control import (
    CONTROL_BODY_BYTES_MAX,
    ControlEntry,
    ControlFormatError,
    ControlKind,
    decode_control,
    encode_control,
    is_control,
)
from shmraft.wire.errors import LocalProtocolError
from shmraft.wire.frame import encode_batch

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


@pytest.mark.parametrize("kind", list(ControlKind))
@pytest.mark.parametrize("body", [b"", b"x", bytes(range(256)) * 9])
def test_round_trip(kind: ControlKind, body: bytes) -> None:
    data = encode_control(kind, body)
    assert is_control(data)
    assert decode_control(data) == ControlEntry(kind, body)
    assert decode_control(memoryview(data)) == ControlEntry(kind, body)


def test_a_batch_frame_and_a_no_op_are_not_control_entries() -> None:
    assert not is_control(encode_batch([b"event"], batch_id=1))
    assert not is_control(b"")
    assert not is_control(b"CTR")


def test_the_documented_example_is_the_codes() -> None:
    (block,) = re.findall(r"```control-hex\n(.*?)```", DOC.read_text(), re.S)
    data = bytes.fromhex(block.replace("\n", " "))
    assert decode_control(data) == ControlEntry(ControlKind.MEMBERSHIP, b'{"v":1}')
    assert encode_control(ControlKind.MEMBERSHIP, b'{"v":1}') == data


def _damaged(offset: int, value: bytes, body: bytes = b"hello") -> bytes:
    data = bytearray(encode_control(ControlKind.GROUP_OFFSETS, body))
    data[offset : offset + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"CTRL\x01\x00", "control entry"),
        (_damaged(0, b"XTRL"), "control magic"),
        (_damaged(4, struct.pack("<H", 2)), "control version"),
        (_damaged(8, struct.pack("<I", CONTROL_BODY_BYTES_MAX + 1)), "control body length"),
        (_damaged(8, struct.pack("<I", 4)), "control entry size"),
        (_damaged(12, b"J"), "control crc32"),
        (encode_control(ControlKind.MEMBERSHIP, b"hello")[:-1], "control entry size"),
    ],
)
def test_damage_is_refused_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ControlFormatError) as info:
        decode_control(data)
    assert info.value.field == field


def test_an_unknown_kind_is_refused_by_number() -> None:
    import zlib

    head = struct.pack("<IHHI", 0x4C525443, 1, 99, 0)
    with pytest.raises(ControlFormatError, match="control kind.*99"):
        decode_control(head + struct.pack("<I", zlib.crc32(head)))


def test_an_oversized_body_is_not_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        encode_control(ControlKind.MEMBERSHIP, bytes(CONTROL_BODY_BYTES_MAX + 1))
