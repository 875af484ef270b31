"""What must survive the loss of a node's RocksDB log: small files beside it, outside the log directory.

* `HardStateFile` (``<node_dir>/hardstate``): a copy of the term and vote, and the "recovering" mode with
  its recovery term. Written atomically (tmp file, fsync, rename, fsync of the directory) and *before*
  RocksDB's copy whenever term, vote or mode change (rare: elections), so a vote never outlives its record.
  When the RocksDB log is found corrupt and quarantined, this file is what keeps the node from voting
  twice in a term (Raft thesis: a server that loses its log must not vote as if it had it).
* `LastIndexHint` (``<node_dir>/log-last-index``): the log's last index after each write, written in
  place without fsync (a few microseconds). After a process crash the page cache holds it, so if RocksDB
  reopens with a shorter log than the hint (a truncated WAL: RocksDB drops a cut tail silently) the loss
  of synced, acknowledged entries is detected. It is only ever written *after* RocksDB's synced write, so
  a crash between the two leaves it behind the log, never ahead.
* `VerifiedMarkFile` (``<node_dir>/log-verified``): how far the log is known good, so that a start-up checks
  only what was written since (docs/DESIGN.md "Storage faults"): index I with its term, cum_bytes and stored
  CRC32 (entries <= I are committed, so never rewritten), and the live SST files at the time of the mark
  (immutable; a file not listed was written since and is checked whole). Replaced atomically (tmp file,
  rename) without fsync: an old mark is still true and a torn or missing one only costs a full scan.

All carry a magic, a version and a CRC32; a damaged file raises `SidecarError` naming the file.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shmraft.constants import PRIVATE_FILE_MODE

HARD_STATE_FILE: Final = "hardstate"
LAST_INDEX_FILE: Final = "log-last-index"
_HS_MAGIC: Final = 0x5348_4853  # "SHHS"
_HS_VERSION: Final = 1
_HS = struct.Struct("<IIQQQQ")  # magic, version, term, vote, recovering (0/1), recovery_term
_LI_MAGIC: Final = 0x5348_4C49  # "SHLI"
_LI = struct.Struct("<IIQ")  # magic, version, last_index
_CRC = struct.Struct("<I")
_VM_MAGIC: Final = 0x5348_564D  # "SHVM"
_VM_VERSION: Final = 1
_VM = struct.Struct("<IIQQQIQ")  # magic, version, index, term, cum_bytes, entry_crc, file count
_VM_FILE = struct.Struct("<QQ")  # SST file number, size in bytes
VERIFIED_MARK_FILE: Final = "log-verified"
VERIFIED_MARK_FILES_MAX: Final = 1 << 20  # a sanity bound on the file count read back


class SidecarError(Exception):
    """A sidecar file exists but is damaged (size, magic, version or checksum)."""


@dataclass(frozen=True, slots=True)
class SavedHardState:
    """The term/vote copy and the recovery mode (recovery_term is 0 when not recovering)."""

    term: int = 0
    vote: int = 0
    recovering: bool = False
    recovery_term: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HardStateFile:
    """The atomically replaced copy of (term, vote, recovering, recovery_term)."""

    def __init__(self, node_dir: Path) -> None:
        self.path = Path(node_dir) / HARD_STATE_FILE
        self._last: SavedHardState | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> SavedHardState | None:
        """The saved state; None if the file does not exist; SidecarError if it is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _HS.size + _CRC.size:
            raise SidecarError(f"{self.path}: {len(raw)} bytes, expected {_HS.size + _CRC.size}")
        body = raw[: _HS.size]
        if zlib.crc32(body) != _CRC.unpack_from(raw, _HS.size)[0]:
            raise SidecarError(f"{self.path}: checksum mismatch")
        magic, version, term, vote, recovering, recovery_term = _HS.unpack(body)
        if magic != _HS_MAGIC or version != _HS_VERSION:
            raise SidecarError(
                f"{self.path}: magic 0x{magic:X} version {version}, expected 0x{_HS_MAGIC:X} version {_HS_VERSION}"
            )
        self._last = SavedHardState(term, vote, bool(recovering), recovery_term)
        return self._last

    def write(self, state: SavedHardState) -> None:
        """Replace the file atomically and durably (tmp + fsync + rename + directory fsync). OSError
        (ENOSPC included) propagates: the caller must not act on a state it could not save."""
        if state == self._last:
            return
        body = _HS.pack(_HS_MAGIC, _HS_VERSION, state.term, state.vote, int(state.recovering), state.recovery_term)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        try:
            os.write(fd, body + _CRC.pack(zlib.crc32(body)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._last = state


class LastIndexHint:
    """The log's last index, rewritten in place after each log write (no fsync; see the module doc)."""

    def __init__(self, node_dir: Path) -> None:
        self.path = Path(node_dir) / LAST_INDEX_FILE
        self._fd = -1
        self._last = -1

    def read(self) -> int | None:
        """The recorded last index; None if there is no file; SidecarError if it is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _LI.size + _CRC.size or zlib.crc32(raw[: _LI.size]) != _CRC.unpack_from(raw, _LI.size)[0]:
            raise SidecarError(f"{self.path}: damaged ({len(raw)} bytes or checksum mismatch)")
        magic, _version, last = _LI.unpack_from(raw)
        if magic != _LI_MAGIC:
            raise SidecarError(f"{self.path}: magic 0x{magic:X}, expected 0x{_LI_MAGIC:X}")
        return last

    def write(self, last_index: int) -> None:
        """Record `last_index` (call only after the log write that made it so returned)."""
        if last_index == self._last:
            return
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        body = _LI.pack(_LI_MAGIC, 1, last_index)
        os.pwrite(self._fd, body + _CRC.pack(zlib.crc32(body)), 0)
        self._last = last_index

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self._last = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class VerifiedMark:
    """Entries up to `index` (its term, cum_bytes and stored CRC32 identify it) were checked or written and
    committed by this node; `files` are the (number, size) of the SST files live and known good then."""

    index: int
    term: int
    cum_bytes: int
    entry_crc: int
    files: frozenset[tuple[int, int]]


class VerifiedMarkFile:
    """The start-up check's resume point (see the module doc); `read` raises SidecarError when it is damaged
    or of another version, which the caller takes as "verify everything", never as a refusal."""

    def __init__(self, node_dir: Path) -> None:
        self.path = Path(node_dir) / VERIFIED_MARK_FILE

    def read(self) -> VerifiedMark | None:
        """The mark; None if there is none; SidecarError if it is damaged or of an unknown version."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _VM.size + _CRC.size:
            raise SidecarError(f"{self.path}: {len(raw)} bytes, shorter than its header")
        body = raw[: -_CRC.size]
        if zlib.crc32(body) != _CRC.unpack_from(raw, len(body))[0]:
            raise SidecarError(f"{self.path}: checksum mismatch")
        magic, version, index, term, cum, crc, count = _VM.unpack_from(body)
        if magic != _VM_MAGIC or version != _VM_VERSION:
            raise SidecarError(
                f"{self.path}: magic 0x{magic:X} version {version}, expected 0x{_VM_MAGIC:X} version {_VM_VERSION}"
            )
        if count > VERIFIED_MARK_FILES_MAX or len(body) != _VM.size + count * _VM_FILE.size:
            raise SidecarError(f"{self.path}: {count} files do not fit its {len(body)} bytes")
        files = frozenset(_VM_FILE.unpack_from(body, _VM.size + i * _VM_FILE.size) for i in range(count))
        return VerifiedMark(index, term, cum, crc, files)

    def write(self, mark: VerifiedMark) -> None:
        """Replace the mark (tmp file + rename; no fsync, see the module doc). OSError propagates."""
        body = bytearray(
            _VM.pack(_VM_MAGIC, _VM_VERSION, mark.index, mark.term, mark.cum_bytes, mark.entry_crc, len(mark.files))
        )
        for number, size in sorted(mark.files):
            body += _VM_FILE.pack(number, size)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        try:
            os.write(fd, bytes(body) + _CRC.pack(zlib.crc32(body)))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
