"""The node's shared state block: role, term, commit index, counters, and one record per worker.

A small posix_ipc shared-memory segment viewed as numpy structured arrays. Every field has exactly one
writing process (the raft worker writes role/term/commit; each worker writes its own record; the
supervisor writes pids and restarts), and each field is an aligned 8-byte integer, so a reader sees
either the old or the new value, never a torn one (x86-64; see docs/DESIGN.md). Readers: the supervisor
(status, metrics, live view), ingest (am I the leader, where is the leader, what is committed) and the
status command of another process.
"""

from __future__ import annotations

import enum
import mmap
import os
from typing import Final

import numpy as np
import posix_ipc

STATE_MAGIC: Final = 0x5348_4D52_4146_5453  # "SHMRAFTS"
STATE_VERSION: Final = 1
SEGMENT_MODE: Final = 0o600


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class NodeStatus(enum.IntEnum):
    STARTING = 0
    SERVING = 1
    STOPPING = 2
    FAILED = 3  # a worker exhausted its restart budget; the node does not serve


class Worker(enum.IntEnum):
    """Worker kinds, in start order; the value is the worker's record index in the block."""

    RAFT = 0
    SENDER = 1
    BATCHER = 2
    INGEST = 3


NODE_DTYPE: Final = np.dtype([
    ("magic", "<u8"), ("version", "<u8"), ("node_id", "<u8"), ("status", "<u8"),
    ("role", "<u8"), ("leader_id", "<u8"), ("term", "<u8"), ("commit_index", "<u8"), ("last_index", "<u8"),
    ("first_index", "<u8"),
    ("events_in", "<u8"), ("events_committed", "<u8"), ("batches_committed", "<u8"), ("bytes_committed", "<u8"),
    ("elections", "<u8"), ("leader_changes", "<u8"), ("fsyncs", "<u8"), ("fsync_ns", "<u8"),
    ("errors", "<u8"), ("dedup_hits", "<u8"), ("commit_latency_us_sum", "<u8"), ("commit_latency_count", "<u8"),
    ("reserved", "<u8", (10,)),
])
WORKER_DTYPE: Final = np.dtype([
    ("pid", "<u8"), ("heartbeat", "<u8"), ("restarts", "<u8"), ("started_unix_ms", "<u8"),
    ("records_in", "<u8"), ("records_out", "<u8"), ("errors", "<u8"), ("reserved", "<u8"),
])
WORKERS_MAX: Final = 8
SIZE_BYTES: Final = NODE_DTYPE.itemsize + WORKER_DTYPE.itemsize * WORKERS_MAX


class StateBlockError(RuntimeError):
    """The named segment is missing, too small, or not a shmraft state block."""


class StateBlock:
    """A mapped state block. `node` is a 0-d structured array; `workers[Worker.X]` a worker's record."""

    def __init__(self, name: str, mem: mmap.mmap, owner: bool) -> None:
        self.name = name
        self._mem = mem
        self.owner = owner
        self.node = np.ndarray((), dtype=NODE_DTYPE, buffer=mem, offset=0)
        self.workers = np.ndarray((WORKERS_MAX,), dtype=WORKER_DTYPE, buffer=mem, offset=NODE_DTYPE.itemsize)

    @classmethod
    def create(cls, name: str, node_id: int) -> StateBlock:
        """Create (replacing a stale segment of the same name) and initialise. The caller owns it."""
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=SEGMENT_MODE, size=SIZE_BYTES)
        mem = mmap.mmap(shm.fd, SIZE_BYTES)
        os.close(shm.fd)
        block = cls(name, mem, owner=True)
        block.node["node_id"] = node_id
        block.node["version"] = STATE_VERSION
        block.node["magic"] = STATE_MAGIC  # last: a reader that sees the magic sees the rest
        return block

    @classmethod
    def attach(cls, name: str) -> StateBlock:
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise StateBlockError(f"state block {name}: no such shared-memory segment") from None
        if shm.size < SIZE_BYTES:
            os.close(shm.fd)
            raise StateBlockError(f"state block {name}: expected {SIZE_BYTES} bytes, got {shm.size}")
        mem = mmap.mmap(shm.fd, SIZE_BYTES)
        os.close(shm.fd)
        block = cls(name, mem, owner=False)
        if int(block.node["magic"]) != STATE_MAGIC or int(block.node["version"]) != STATE_VERSION:
            block.close()
            raise StateBlockError(f"state block {name}: not a shmraft state block of version {STATE_VERSION}")
        return block

    def get(self, field: str) -> int:
        return int(self.node[field])

    def set(self, field: str, value: int) -> None:
        self.node[field] = value

    def add(self, field: str, delta: int = 1) -> None:
        """Increment a counter; only the field's single writer may call this."""
        self.node[field] += delta

    def beat(self, worker: Worker) -> None:
        """A worker's liveness counter: the supervisor restarts a worker whose counter stops moving."""
        self.workers[worker]["heartbeat"] += 1

    def close(self) -> None:
        if self._mem is not None:
            del self.node, self.workers
            self._mem.close()
            self._mem = None  # type: ignore[assignment]

    def unlink(self) -> None:
        """Remove the segment name (owner only); mappings stay valid until closed."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass
