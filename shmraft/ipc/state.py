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
from typing import Final

import numpy as np

from shmraft.constants import CLUSTER_SIZE_MAX
from shmraft.ipc import segments
from shmraft.ipc.trace import TRACE_BYTES, TraceArea

STATE_MAGIC: Final = 0x5348_4D52_4146_5453  # "SHMRAFTS"
STATE_VERSION: Final = 7  # 2: latency histogram, errors by kind; 3: storage faults, recovering; 4: peers, snapshots;
# 5: membership (members_epoch, config_index, removed); 6: the trace area (ipc/trace.py) after the peers;
# 7: the trace area's ring of recent leader samples; leader stall transfers (stall_transfer_*, leader_stall_transfers)


class NodeStatus(enum.IntEnum):
    STARTING = 0
    SERVING = 1
    STOPPING = 2
    FAILED = 3  # a worker exhausted its restart budget; the node does not serve


class StorageFault(enum.IntEnum):
    """Why the raft worker cannot use its log (field `storage_fault`, writer: raft). Anything but OK means
    the node neither proposes, acknowledges nor votes; see docs/DESIGN.md "Storage faults"."""

    OK = 0
    DISK_FULL = 1  # a write failed with ENOSPC; retried every storage_retry_interval_ms
    IO_ERROR = 2  # another I/O error; retried likewise
    CORRUPT = 3  # corruption found while running; the log is being verified and quarantined
    HARD_STATE_LOST = 4  # corrupt log and no usable term/vote copy: the operator must act (no retry)


class Worker(enum.IntEnum):
    """Worker kinds, in start order; the value is the worker's record index in the block."""

    RAFT = 0
    SENDER = 1
    BATCHER = 2
    INGEST = 3


NODE_DTYPE: Final = np.dtype(
    [
        ("node_id", "<u8"),
        ("status", "<u8"),
        ("role", "<u8"),
        ("leader_id", "<u8"),
        ("term", "<u8"),
        ("commit_index", "<u8"),
        ("last_index", "<u8"),
        ("first_index", "<u8"),
        ("events_in", "<u8"),
        ("events_committed", "<u8"),
        ("batches_committed", "<u8"),
        ("bytes_committed", "<u8"),
        ("elections", "<u8"),
        ("leader_changes", "<u8"),
        ("fsyncs", "<u8"),
        ("fsync_ns", "<u8"),
        ("errors", "<u8"),
        ("dedup_hits", "<u8"),
        ("commit_latency_us_sum", "<u8"),
        ("commit_latency_count", "<u8"),
        # errors by kind: `errors` above counts clients that broke the protocol (writer: ingest); these two are
        # the raft worker's (peer messages refused as malformed, consensus-channel HELLOs refused)
        ("peer_errors", "<u8"),
        ("peer_refusals", "<u8"),
        # storage faults (writer: raft): StorageFault, since when (0 if OK), recovering mode (0/1), failed log
        # operations, corrupt logs quarantined
        ("storage_fault", "<u8"),
        ("storage_fault_since_unix_ms", "<u8"),
        ("recovering", "<u8"),
        ("storage_errors", "<u8"),
        ("quarantines", "<u8"),
        # InstallSnapshot (writer: raft): transfers this node completed as leader, snapshots it installed
        ("snapshots_sent", "<u8"),
        ("snapshots_installed", "<u8"),
        # membership (writer: raft): bumped after each write of the members file (node/members.py), which the
        # other workers re-read when it moves; the log index of the configuration in effect; 1 when this node
        # is not a member of it (removed, or a joining node not yet added)
        ("members_epoch", "<u8"),
        ("config_index", "<u8"),
        ("removed", "<u8"),
        # leader stall transfers (supervisor/stepaside.py). The supervisor asks the raft worker to hand
        # leadership over when the leader's ingest or batcher is stalled (writer: supervisor; it writes the
        # term it saw, the worker and its stalled time first and bumps `stall_transfer_asks` last). The raft
        # worker acts when the asks counter moves, counts the transfers it started and names the last target
        # (writer: raft)
        ("stall_transfer_asks", "<u8"),
        ("stall_transfer_term", "<u8"),
        ("stall_transfer_worker", "<u8"),
        ("stall_transfer_stalled_ms", "<u8"),
        ("leader_stall_transfers", "<u8"),
        ("stall_transfer_target", "<u8"),
        # PRODUCE receipt to PRODUCED answer, per request (writer: ingest): per-bucket counts, not cumulative;
        # bucket i < LATENCY_BUCKETS - 1 holds latencies <= LATENCY_BOUNDS_MS[i], the last one the rest
        ("commit_latency_buckets", "<u8", (16,)),
    ]
)

LATENCY_BOUNDS_MS: Final = tuple(0.25 * 2**i for i in range(15))  # 0.25 .. 4096 ms, then +Inf
LATENCY_BUCKETS: Final = len(LATENCY_BOUNDS_MS) + 1


def latency_bucket(ns: int) -> int:
    """The histogram bucket of a latency in nanoseconds: the first bound >= it (integer arithmetic)."""
    q = max(1, -(-ns // 250_000))  # ceil(ns / 0.25 ms)
    return min((q - 1).bit_length(), LATENCY_BUCKETS - 1)  # ceil(log2(q)), capped at the +Inf bucket


WORKER_DTYPE: Final = np.dtype(
    [
        ("pid", "<u8"),
        ("heartbeat", "<u8"),
        ("restarts", "<u8"),
        ("started_unix_ms", "<u8"),
        ("records_in", "<u8"),
        ("records_out", "<u8"),
        ("errors", "<u8"),
        ("reserved", "<u8"),
    ]
)
WORKERS_MAX: Final = 8


class PeerState(enum.IntEnum):
    """How the leader replicates to a follower (field `state` of a peer record; the core's ProgressState
    plus one): RESEED is shown while the follower needs entries the leader no longer holds (SNAPSHOT: a
    snapshot is being sent; a leader with no snapshot to send yet shows RESEED until it has one)."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2
    RESEED = 3


# the leader's view of each follower (writer: raft, about every PEERS_PUBLISH_INTERVAL_MS; node_id 0 = unused,
# all unused when this node is not the leader)
PEER_DTYPE: Final = np.dtype(
    [
        ("node_id", "<u8"),
        ("state", "<u8"),  # PeerState
        ("match", "<u8"),
        ("entries_behind", "<u8"),
        ("snapshot_index", "<u8"),
        ("snapshot_sent_bytes", "<u8"),
        ("snapshot_acked_bytes", "<u8"),
        ("snapshot_total_bytes", "<u8"),
    ]
)
PEERS_MAX: Final = CLUSTER_SIZE_MAX - 1
NODE_OFFSET: Final = segments.SEGMENT_HEADER_BYTES  # after the common segment header (creator pid, magic, ...)
PEERS_OFFSET: Final = NODE_OFFSET + NODE_DTYPE.itemsize + WORKER_DTYPE.itemsize * WORKERS_MAX
TRACE_OFFSET: Final = PEERS_OFFSET + PEER_DTYPE.itemsize * PEERS_MAX
SIZE_BYTES: Final = TRACE_OFFSET + TRACE_BYTES


class StateBlockError(RuntimeError):
    """The named segment is missing, too small, or not a shmraft state block."""


class StateBlock:
    """A mapped state block. `node` is a 0-d structured array; `workers[Worker.X]` a worker's record;
    `peers` the leader's records of its followers."""

    def __init__(self, name: str, mem: mmap.mmap, owner: bool) -> None:
        self.name = name
        self._mem = mem
        self.owner = owner
        self.node = np.ndarray((), dtype=NODE_DTYPE, buffer=mem, offset=NODE_OFFSET)
        self.workers = np.ndarray(
            (WORKERS_MAX,), dtype=WORKER_DTYPE, buffer=mem, offset=NODE_OFFSET + NODE_DTYPE.itemsize
        )
        self.peers = np.ndarray((PEERS_MAX,), dtype=PEER_DTYPE, buffer=mem, offset=PEERS_OFFSET)
        self.trace = TraceArea(mem, TRACE_OFFSET)  # sampled requests' hand-offs and stage histograms

    @classmethod
    def create(cls, name: str, node_id: int) -> StateBlock:
        """Create (O_CREX, 0600) and initialise. The caller owns it; stale ones are cleaned by the layout."""
        mem = segments.create_segment(name, SIZE_BYTES)
        block = cls(name, mem, owner=True)
        block.node["node_id"] = node_id
        segments.seal(mem, STATE_MAGIC, STATE_VERSION)  # last: a reader that sees the magic sees the rest
        return block

    @classmethod
    def attach(cls, name: str) -> StateBlock:
        try:
            mem, size = segments.open_segment(name)
        except segments.SegmentError as exc:
            raise StateBlockError(f"state block {name}: {exc}") from None
        head = np.frombuffer(mem, dtype=np.uint64, count=segments.HEADER_WORDS)
        magic, version = int(head[segments.H_MAGIC]), int(head[segments.H_VERSION])
        del head
        if size < SIZE_BYTES or magic != STATE_MAGIC or version != STATE_VERSION:
            mem.close()
            raise StateBlockError(
                f"state block {name}: expected a shmraft state block of version {STATE_VERSION} "
                f"and {SIZE_BYTES} bytes, got magic 0x{magic:X} version {version}, {size} bytes"
            )
        return cls(name, mem, owner=False)

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
            del self.node, self.workers, self.peers
            self.trace.close()
            self._mem.close()
            self._mem = None  # type: ignore[assignment]

    def unlink(self) -> None:
        """Remove the segment name (owner only); mappings stay valid until closed."""
        segments.unlink_segment(self.name)
