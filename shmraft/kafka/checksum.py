"""CRC-32C (Castagnoli), the checksum of Kafka's record batches: the `crc32c` C extension, or pure Python.

Measured (2-core x86-64, Python 3.11) on a 32 KiB batch: the `crc32c` package (hardware CRC32C where the
CPU has it) takes about 1.6 us; a table-driven pure-Python loop takes about 10 ms, which would cost a
core at a few hundred batches a second. The extension is therefore an optional dependency of the Kafka
door (`pip install shmraft[kafka]`; the `test` extra installs it too) and the pure loop is the fallback
that keeps the codec correct without it. `ACCELERATED` says which one runs; a listener should warn when
it is False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

CASTAGNOLI_POLY_REFLECTED: Final = 0x82F63B78
_MASK32: Final = 0xFFFFFFFF


def _table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ CASTAGNOLI_POLY_REFLECTED if c & 1 else c >> 1
        out.append(c)
    return tuple(out)


_TABLE: Final = _table()


def crc32c_pure(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of `data`, continuing from `value` (the CRC of the bytes before it)."""
    crc = value ^ _MASK32
    table = _TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK32


try:
    from crc32c import crc32c as _crc32c_ext  # the `crc32c` package (optional extra `kafka`)
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_ext = None

ACCELERATED: Final = _crc32c_ext is not None
crc32c: Callable[..., int] = _crc32c_ext if _crc32c_ext is not None else crc32c_pure
