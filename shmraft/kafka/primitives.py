"""Kafka's primitive types: big-endian ints, zigzag varints, strings, bytes and arrays, classic and compact.

`Reader` walks a buffer and raises `Truncated` when the bytes end before a field, `MalformedField` when a
field holds a value its type forbids (a negative length other than -1 for null, bad UTF-8, a length past
the end of the buffer); every error names the field. `Writer` collects the parts of an encoding. Compact
forms (flexible versions) store lengths as unsigned varints of length + 1 (0 is null) and end each
structure with tagged fields, which are skipped on the way in and written empty on the way out.
"""

from __future__ import annotations

import struct
from typing import Final

from shmraft.kafka.errors import KafkaEncodeError, MalformedField, Truncated

_I8: Final = struct.Struct(">b")
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_U32: Final = struct.Struct(">I")
_I64: Final = struct.Struct(">q")
VARINT_BYTES_MAX: Final = 5  # an unsigned or zigzag 32-bit varint
VARLONG_BYTES_MAX: Final = 10
INT16_MAX: Final = 2**15 - 1
INT32_MAX: Final = 2**31 - 1


def zigzag(n: int) -> int:
    """A signed int as the unsigned value Kafka's varints carry (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...)."""
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


class Reader:
    """A cursor over received bytes; each read names its field for the error it may raise."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = memoryview(data)
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> memoryview:
        if n > self.end - self.pos:
            raise Truncated(field, f"{n} more bytes", f"{self.end - self.pos}")
        start = self.pos
        self.pos = start + n
        return self.buf[start : self.pos]

    def _fixed(self, s: struct.Struct, field: str) -> int:
        pos = self.pos
        if s.size > self.end - pos:
            raise Truncated(field, f"{s.size} bytes", f"{self.end - pos}")
        self.pos = pos + s.size
        return s.unpack_from(self.buf, pos)[0]

    def int8(self, field: str) -> int:
        return self._fixed(_I8, field)

    def int16(self, field: str) -> int:
        return self._fixed(_I16, field)

    def int32(self, field: str) -> int:
        return self._fixed(_I32, field)

    def uint32(self, field: str) -> int:
        return self._fixed(_U32, field)

    def int64(self, field: str) -> int:
        return self._fixed(_I64, field)

    def boolean(self, field: str) -> bool:
        return self._fixed(_I8, field) != 0

    def uvarint(self, field: str, max_bytes: int = VARINT_BYTES_MAX) -> int:
        result = shift = 0
        buf, pos, end = self.buf, self.pos, self.end
        for i in range(max_bytes):
            if pos + i >= end:
                raise Truncated(field, "a varint", "the end of the bytes inside it")
            b = buf[pos + i]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = pos + i + 1
                return result
            shift += 7
        raise MalformedField(field, f"a varint of at most {max_bytes} bytes", "a longer one")

    def varint(self, field: str) -> int:
        """A zigzag-encoded signed 32-bit varint."""
        return unzigzag(self.uvarint(field, VARINT_BYTES_MAX))

    def varlong(self, field: str) -> int:
        """A zigzag-encoded signed 64-bit varint."""
        return unzigzag(self.uvarint(field, VARLONG_BYTES_MAX))

    # --- lengths --------------------------------------------------------------------------------------------

    def _length(self, n: int, field: str, nullable: bool, unit_bytes: int = 1) -> int:
        """Check a decoded length: -1 is null (if allowed); it must fit in what is left."""
        if n < 0:
            if n == -1 and nullable:
                return -1
            raise MalformedField(field, "a length >= 0" + (" or -1 (null)" if nullable else ""), n)
        if n * unit_bytes > self.end - self.pos:
            raise Truncated(field, f"{n} items ({n * unit_bytes}+ bytes)", f"{self.end - self.pos} bytes")
        return n

    def length(self, field: str, nullable: bool, compact: bool, wide: bool = False, unit_bytes: int = 1) -> int:
        """A string (int16), bytes or array (int32) length, or a compact one (uvarint of length + 1)."""
        if compact:
            n = self.uvarint(field) - 1
        else:
            n = self.int32(field) if wide else self.int16(field)
        return self._length(n, field, nullable, unit_bytes)

    def string(self, field: str, nullable: bool = False, compact: bool = False) -> str | None:
        n = self.length(field, nullable, compact)
        if n < 0:
            return None
        raw = self.take(n, field)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedField(field, "UTF-8", f"invalid bytes ({exc.reason})") from None

    def bytes_(self, field: str, nullable: bool = False, compact: bool = False) -> bytes | None:
        n = self.length(field, nullable, compact, wide=True)
        if n < 0:
            return None
        return bytes(self.take(n, field))

    def skip_tagged_fields(self, field: str) -> None:
        """A flexible structure's tagged fields: none are read, all are skipped (they are optional by design)."""
        count = self.uvarint(field)
        for _ in range(count):
            self.uvarint(field)  # tag
            size = self.uvarint(field)
            self.take(size, field)

    def expect_end(self, field: str) -> None:
        if self.pos != self.end:
            raise MalformedField(field, "no bytes after the last field", f"{self.end - self.pos} more")


class Writer:
    """Collects the parts of an encoding; `getvalue()` joins them."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def raw(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))

    def _fixed(self, s: struct.Struct, value: int, field: str) -> None:
        try:
            self.parts.append(s.pack(value))
        except struct.error:
            raise KafkaEncodeError(field, f"an integer that fits {s.format[1:]}", value) from None

    def int8(self, value: int, field: str = "int8") -> None:
        self._fixed(_I8, value, field)

    def int16(self, value: int, field: str = "int16") -> None:
        self._fixed(_I16, value, field)

    def int32(self, value: int, field: str = "int32") -> None:
        self._fixed(_I32, value, field)

    def uint32(self, value: int, field: str = "uint32") -> None:
        self._fixed(_U32, value, field)

    def int64(self, value: int, field: str = "int64") -> None:
        self._fixed(_I64, value, field)

    def boolean(self, value: bool, field: str = "bool") -> None:
        self.parts.append(b"\x01" if value else b"\x00")

    def uvarint(self, value: int) -> None:
        self.parts.append(encode_uvarint(value))

    def varint(self, value: int, field: str = "varint") -> None:
        if not -(2**31) <= value < 2**31:
            raise KafkaEncodeError(field, "a signed 32-bit integer", value)
        self.parts.append(encode_uvarint(zigzag(value)))

    def varlong(self, value: int, field: str = "varlong") -> None:
        if not -(2**63) <= value < 2**63:
            raise KafkaEncodeError(field, "a signed 64-bit integer", value)
        self.parts.append(encode_uvarint(zigzag(value)))

    def length(self, n: int, field: str, compact: bool, wide: bool = False) -> None:
        """A length (-1 for null) in the classic or compact form."""
        if compact:
            self.uvarint(n + 1)
        elif wide:
            self.int32(n, field)
        else:
            if n > INT16_MAX:
                raise KafkaEncodeError(field, f"at most {INT16_MAX} bytes", n)
            self.int16(n, field)

    def string(self, value: str | None, field: str = "string", compact: bool = False) -> None:
        if value is None:
            self.length(-1, field, compact)
            return
        raw = value.encode("utf-8")
        self.length(len(raw), field, compact)
        self.parts.append(raw)

    def bytes_(self, value: bytes | memoryview | None, field: str = "bytes", compact: bool = False) -> None:
        if value is None:
            self.length(-1, field, compact, wide=True)
            return
        self.length(len(value), field, compact, wide=True)
        self.parts.append(bytes(value))

    def empty_tagged_fields(self) -> None:
        self.parts.append(b"\x00")


def encode_uvarint(value: int) -> bytes:
    """An unsigned varint: 7 bits a byte, low bits first, the high bit set on every byte but the last."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
