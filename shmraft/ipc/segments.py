"""Named shared-memory segments and semaphores: names, creation (O_CREX, mode 0600), ownership, cleanup.

Names are `/shmraft-<run>-<node>-<ring>` (each part `[A-Za-z0-9_]`, 1..64 characters). A ring is one
segment plus two semaphores named `<segment>.data` and `<segment>.space`; on Linux they appear in /dev/shm
as `shmraft-...` and `sem.shmraft-...`.

Every segment created here starts with a common header in its first cache line (u64 words): word 0 the
kind's magic (written last, so that a segment with a magic is fully initialised), word 1 its version,
word 2 the creator's pid, word 3 the creator's start time (ms since the epoch, from psutil, so that a
reused pid is not mistaken for the creator), word 4 a signature saying "this header is ours". That is
what lets `cleanup_stale()` find segments whose creator is dead (a crashed run) and remove them, together
with their semaphores. The owner (the supervisor) creates and unlinks (`SegmentOwner`, in owner.py, is a
context manager for it), and a clean shutdown leaves nothing in /dev/shm.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path
from typing import Final

import numpy as np
import posix_ipc
import psutil

NAME_ROOT: Final = "/shmraft-"
SEGMENT_MODE: Final = 0o600  # owner read/write only: ring contents are client data
NAME_PART_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
SEM_SUFFIXES: Final = (".data", ".space")
DEV_SHM: Final = Path("/dev/shm")
SEGMENT_SIGNATURE: Final = 0x3147_4553_524D_4853  # "SHMRSEG1" little-endian
HEADER_WORDS: Final = 8  # the common header: one 64-byte cache line
SEGMENT_HEADER_BYTES: Final = HEADER_WORDS * 8
H_MAGIC, H_VERSION, H_CREATOR_PID, H_CREATOR_START_MS, H_SIGNATURE = 0, 1, 2, 3, 4
START_TIME_TOLERANCE_MS: Final = 1000  # psutil start times of one process agree to the clock tick


class SegmentError(RuntimeError):
    """A segment or semaphore name, creation, or attachment problem; says which name and why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class SegmentExists(SegmentError):
    """O_CREX failed: a segment of that name exists (a live owner, or a stale one to clean up first)."""


class SegmentMissing(SegmentError):
    """No segment or semaphore of that name."""


def name_for(run_id: str, node: str | int, ring: str) -> str:
    """The segment name `/shmraft-<run_id>-<node>-<ring>`; each part must match [A-Za-z0-9_]{1,64}."""
    parts = {"run_id": str(run_id), "node": str(node), "ring": str(ring)}
    for field, value in parts.items():
        if not NAME_PART_RE.fullmatch(value):
            raise SegmentError(
                f"{NAME_ROOT}{run_id}-{node}-{ring}", f"{field}: expected 1..64 of [A-Za-z0-9_], got {value!r}"
            )
    return f"{NAME_ROOT}{parts['run_id']}-{parts['node']}-{parts['ring']}"


def prefix_for(run_id: str, node: str | int | None = None) -> str:
    """The name prefix of a run (or of one node of a run), for cleanup_stale()."""
    return f"{NAME_ROOT}{run_id}-" if node is None else f"{NAME_ROOT}{run_id}-{node}-"


def check_name(name: str) -> None:
    """Names must start with /shmraft-, contain no further '/' or '.', and fit NAME_MAX with 'sem.'."""
    if not name.startswith(NAME_ROOT) or "/" in name[1:] or "." in name or not 10 <= len(name) <= 200:
        raise SegmentError(name, f"name: expected '{NAME_ROOT}...' of 10..200 characters without '/' or '.'")


def sem_names(name: str) -> tuple[str, str]:
    """The ring's (data, space) semaphore names."""
    return name + SEM_SUFFIXES[0], name + SEM_SUFFIXES[1]


def start_time_ms(pid: int) -> int:
    """A process's start time in ms since the epoch (with the pid, it names one process)."""
    return int(psutil.Process(pid).create_time() * 1000)


def process_alive(pid: int, start_ms: int) -> bool:
    """True if `pid` runs and is the same process that recorded `start_ms` (not a zombie, not a reuse)."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(int(proc.create_time() * 1000) - start_ms) <= START_TIME_TOLERANCE_MS
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def create_segment(name: str, size_bytes: int) -> mmap.mmap:
    """Create a segment with O_CREX and mode 0600, map it, and write the common header except the magic.

    The caller initialises its fields and then calls `seal()`. Raises SegmentExists if the name is taken.
    """
    check_name(name)
    assert size_bytes >= SEGMENT_HEADER_BYTES, size_bytes
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=SEGMENT_MODE, size=size_bytes)
    except posix_ipc.ExistentialError:
        raise SegmentExists(name, "exists already (a live owner, or a crashed run: see cleanup_stale)") from None
    try:
        os.fchmod(shm.fd, SEGMENT_MODE)  # shm_open's mode is masked by the umask: make 0600 exact
        mem = mmap.mmap(shm.fd, size_bytes)
    finally:
        os.close(shm.fd)
    head = np.ndarray((HEADER_WORDS,), dtype=np.uint64, buffer=mem)
    pid = os.getpid()
    head[H_CREATOR_PID] = pid
    head[H_CREATOR_START_MS] = start_time_ms(pid)
    head[H_SIGNATURE] = SEGMENT_SIGNATURE
    del head
    return mem


def seal(mem: mmap.mmap, magic: int, version: int) -> None:
    """Write version, then magic: a reader that sees the magic sees a fully initialised segment (x86 TSO)."""
    head = np.ndarray((HEADER_WORDS,), dtype=np.uint64, buffer=mem)
    head[H_VERSION] = version
    head[H_MAGIC] = magic
    del head


def open_segment(name: str) -> tuple[mmap.mmap, int]:
    """Map an existing segment read/write; returns (mapping, size in bytes)."""
    check_name(name)
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        raise SegmentMissing(name, "no such shared-memory segment") from None
    try:
        size = shm.size
        if size < SEGMENT_HEADER_BYTES:
            raise SegmentError(name, f"size: expected >= {SEGMENT_HEADER_BYTES} bytes, got {size}")
        mem = mmap.mmap(shm.fd, size)
    finally:
        os.close(shm.fd)
    return mem, size


def create_semaphore(name: str) -> posix_ipc.Semaphore:
    try:
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=SEGMENT_MODE, initial_value=0)
    except posix_ipc.ExistentialError:
        raise SegmentExists(name, "semaphore exists already") from None
    try:  # sem_open's mode is masked by the umask: make 0600 exact (Linux keeps it as /dev/shm/sem.NAME)
        os.chmod(os.path.join(DEV_SHM, "sem." + name[1:]), SEGMENT_MODE)
    except FileNotFoundError:
        pass
    return sem


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name)
    except posix_ipc.ExistentialError:
        raise SegmentMissing(name, "no such semaphore") from None


def unlink_segment(name: str) -> bool:
    """Remove a segment name (mappings stay valid until closed). False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def unlink_semaphore(name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def unlink_ring(name: str) -> list[str]:
    """Remove a ring's semaphores, then its segment (creation order reversed). Returns what was removed."""
    removed = [s for s in sem_names(name) if unlink_semaphore(s)]
    if unlink_segment(name):
        removed.append(name)
    return removed


def list_names(prefix: str) -> tuple[list[str], list[str]]:
    """(segment names, semaphore names) in /dev/shm that start with `prefix` (Linux layout)."""
    if not prefix.startswith(NAME_ROOT):
        raise SegmentError(prefix, f"prefix: expected to start with {NAME_ROOT!r}")
    bare = prefix[1:]
    segs: list[str] = []
    sems: list[str] = []
    try:
        entries = os.listdir(DEV_SHM)
    except FileNotFoundError:
        return segs, sems
    for entry in sorted(entries):
        if entry.startswith("sem." + bare):
            sems.append("/" + entry[4:])
        elif entry.startswith(bare):
            segs.append("/" + entry)
    return segs, sems


def read_header(name: str) -> np.ndarray | None:
    """The common header words of a segment, read from /dev/shm without mapping; None if not ours (yet)."""
    try:
        with open(DEV_SHM / name[1:], "rb") as f:
            raw = f.read(SEGMENT_HEADER_BYTES)
    except OSError:
        return None
    if len(raw) < SEGMENT_HEADER_BYTES:
        return None  # being created (size set after open) or not a shmraft segment
    words = np.array(struct.unpack(f"<{HEADER_WORDS}Q", raw), dtype=np.uint64)
    return words if int(words[H_SIGNATURE]) == SEGMENT_SIGNATURE else None


def cleanup_stale(prefix: str) -> list[str]:
    """Remove segments under `prefix` whose creator process is dead, with their semaphores, and
    semaphores whose segment is gone. Segments without our header signature are left alone.

    Safe against a live owner: its segments have a live creator; its semaphores are created after and
    removed before its segment, so a semaphore without a segment never belongs to a live ring.
    Returns the names removed.
    """
    segs, sems = list_names(prefix)
    removed: list[str] = []
    live_segments: set[str] = set()
    for name in segs:
        head = read_header(name)
        if head is None:
            live_segments.add(name)  # unknown or half-created: not ours to judge
            continue
        if process_alive(int(head[H_CREATOR_PID]), int(head[H_CREATOR_START_MS])):
            live_segments.add(name)
            continue
        removed += unlink_ring(name)
    for sem in sems:
        base = sem.rpartition(".")[0]
        if base not in live_segments and unlink_semaphore(sem):
            removed.append(sem)
    return removed
