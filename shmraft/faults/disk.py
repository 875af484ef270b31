"""Disk faults for tests and the fault campaign: a small disk that can be filled, and damaged RocksDB files.

A node's data directory (or just its log) is put on a small tmpfs (`mount_small_disk`, root only), filled
with a filler file until the kernel answers ENOSPC (`fill_disk`) and freed again (`free_disk`). While full,
the node reports ``storage: disk_full`` (shmraft-supervisor status) and must recover by itself once freed.

`corrupt_rocksdb` damages a *stopped* node's RocksDB files in one of several ways (flipped bytes in the
newest SST, a truncated SST, flipped bytes or a cut in the WAL, a garbled MANIFEST or CURRENT), chosen by the
caller's random source so a campaign replays from its seed. On restart the node must detect it, quarantine
the log, and re-fetch it from the others (docs/DESIGN.md "Storage faults").
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shmraft.storage.nodelog import node_log_dir as _node_log_dir

FILL_CHUNK_BYTES: Final = 1024 * 1024  # the filler grows by this much, then by smaller writes to the last byte
FILL_TAIL_CHUNK_BYTES: Final = 4096
FILLER_NAME: Final = "shmraft-filler"
FLIP_BYTES: Final = 16  # bytes inverted by a "flip" corruption
MOUNT_TIMEOUT_S: Final = 10.0


class DiskFaultError(RuntimeError):
    """A disk fault could not be set up (not root, mount failed, nothing to corrupt)."""


def node_log_dir(node_dir: Path) -> Path:
    """Where a node's RocksDB log lives (``<data_dir>/node<N>/log``)."""
    return _node_log_dir(node_dir)


def can_mount() -> str:
    """ "" if this process may mount a tmpfs, else the reason (for a clear pytest skip)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (tests run as root in CI)"
    return ""


def mount_small_disk(path: Path, size_bytes: int) -> None:
    """Mount a tmpfs of `size_bytes` at `path` (created if missing, mode 0700). Root only."""
    reason = can_mount()
    if reason:
        raise DiskFaultError(reason)
    if size_bytes < 64 * 1024:
        raise DiskFaultError(f"size_bytes: expected at least 65536, got {size_bytes}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)], f"mount a tmpfs at {path}")


def unmount_small_disk(path: Path) -> None:
    """Unmount the tmpfs at `path` (lazily if still busy); its contents are gone afterwards."""
    path = Path(path)
    if not os.path.ismount(path):
        return
    try:
        _run(["umount", str(path)], f"unmount {path}")
    except DiskFaultError:
        _run(["umount", "-l", str(path)], f"lazily unmount {path}")


def fill_disk(path: Path) -> Path:
    """Write a filler file in directory `path` until the file system answers ENOSPC; returns the filler.
    The last writes are small so that no free block is left (RocksDB's next write fails)."""
    filler = Path(path) / FILLER_NAME
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (FILL_CHUNK_BYTES, FILL_TAIL_CHUNK_BYTES, 512, 1):
            block = b"\xa5" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
    finally:
        os.close(fd)
    return filler


def free_disk(filler: Path) -> None:
    """Remove the filler written by `fill_disk` (space returns at once)."""
    Path(filler).unlink(missing_ok=True)


# --- corruption -----------------------------------------------------------------------------------------


def corrupt_rocksdb(log_dir: Path, rng: random.Random) -> str:
    """Damage the RocksDB files of a stopped node in one way chosen by `rng` among those its files allow;
    returns what was done (file and offset). Raises DiskFaultError if there is no database there."""
    log_dir = Path(log_dir)
    if not (log_dir / "CURRENT").exists():
        raise DiskFaultError(f"no RocksDB database at {log_dir}")
    options = _corruptions(log_dir)
    name = rng.choice(sorted(options))
    return options[name](rng)


def corruption_kinds(log_dir: Path) -> list[str]:
    """The corruption kinds `corrupt_rocksdb` could apply to this database now."""
    return sorted(_corruptions(Path(log_dir)))


def corrupt_rocksdb_as(log_dir: Path, kind: str, rng: random.Random) -> str:
    """Like `corrupt_rocksdb` but with the kind given (one of `corruption_kinds`): for tests of each way."""
    options = _corruptions(Path(log_dir))
    if kind not in options:
        raise DiskFaultError(f"kind: expected one of {sorted(options)}, got {kind!r}")
    return options[kind](rng)


def _corruptions(log_dir: Path) -> dict[str, Callable[[random.Random], str]]:
    ssts = sorted(p for p in log_dir.glob("*.sst") if p.stat().st_size > 0)
    wals = sorted(p for p in log_dir.glob("*.log") if p.stat().st_size > 0)
    manifests = sorted(log_dir.glob("MANIFEST-*"))
    out: dict[str, Callable[[random.Random], str]] = {}
    if ssts:
        out["sst_flip"] = lambda rng: "newest SST: " + _flip(ssts[-1], rng)
        out["sst_truncate"] = lambda rng: "newest SST: " + _truncate(ssts[-1], rng)
    if wals:
        out["wal_flip"] = lambda rng: "newest WAL: " + _flip(wals[-1], rng)
        out["wal_truncate"] = lambda rng: "newest WAL: " + _truncate(wals[-1], rng)
    if manifests:
        out["manifest_garble"] = lambda rng: "MANIFEST: " + _flip(manifests[-1], rng)
    out["current_garble"] = lambda rng: _garble_current(log_dir, rng)
    return out


def _flip(path: Path, rng: random.Random) -> str:
    """Invert FLIP_BYTES bytes in the middle half of the file (away from headers most readers skip)."""
    size = path.stat().st_size
    n = min(FLIP_BYTES, size)
    lo, hi = size // 4, max(size // 4, size * 3 // 4 - n)
    offset = rng.randint(lo, hi)
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    return f"inverted {n} bytes at offset {offset} of {path.name} ({size} bytes)"


def _truncate(path: Path, rng: random.Random) -> str:
    size = path.stat().st_size
    keep = rng.randint(size // 4, max(size // 4, size * 3 // 4))
    os.truncate(path, keep)
    return f"truncated {path.name} from {size} to {keep} bytes"


def _garble_current(log_dir: Path, rng: random.Random) -> str:
    current = log_dir / "CURRENT"
    choice = rng.choice(("missing manifest", "no newline"))
    if choice == "missing manifest":
        current.write_bytes(b"MANIFEST-%06d\n" % rng.randint(900_000, 999_999))
    else:
        current.write_bytes(current.read_bytes().rstrip(b"\n")[:-2])
    return f"garbled CURRENT ({choice})"


def _run(cmd: list[str], what: str) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskFaultError(f"cannot {what}: {exc}") from exc
    if res.returncode != 0:
        raise DiskFaultError(f"cannot {what}: {' '.join(cmd)} exited with {res.returncode}: {res.stderr.strip()}")
