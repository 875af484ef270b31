"""Where a node's shared memory lives: the names and sizes of its rings and state block.

The supervisor creates them (after removing any left by a crashed run of the same node) and removes them
on exit; workers attach by name. R1..R6 (`Ring`) are described in docs/DESIGN.md section 1.
"""

from __future__ import annotations

import enum
from typing import Final

from shmraft.config import NodeConfig
from shmraft.ipc import segments
from shmraft.ipc.ring import RingReader, RingWriter, create_ring, destroy_ring
from shmraft.ipc.state import StateBlock


class Ring(enum.StrEnum):
    """A node's six rings, by writer -> reader; the value is the last part of the segment's name."""

    R1 = "r1"  # ingest -> batcher: event blocks (one client request each)
    R2 = "r2"  # batcher -> raft: batch frames, Raft fields unset
    R3 = "r3"  # raft -> sender: peer messages for the data channel
    R4 = "r4"  # sender -> raft: peer messages received on the data channel
    R5 = "r5"  # raft -> ingest: notes (appended, verdicts, commit index, leader changes, request outcomes)
    R6 = "r6"  # ingest -> raft: control requests (membership changes; consumer-group commits and reads)


STATE: Final = "state"


class NodeLayout:
    """Names and lifecycle of one node's segments."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.prefix = segments.prefix_for(config.cluster_id, config.node_id)

    def name(self, part: Ring | str) -> str:
        return segments.name_for(self.config.cluster_id, self.config.node_id, part)

    def cleanup_stale(self) -> list[str]:
        return segments.cleanup_stale(self.prefix)

    def create_all(self) -> StateBlock:
        """Create the rings and the state block; returns the state block (owned by the caller)."""
        created: list[str] = []
        try:
            for ring in Ring:
                create_ring(self.name(ring), self.config.ring_capacity_bytes)
                created.append(ring)
            return StateBlock.create(self.name(STATE), self.config.node_id)
        except BaseException:
            for ring in created:
                destroy_ring(self.name(ring))
            raise

    def destroy_all(self) -> None:
        for ring in Ring:
            destroy_ring(self.name(ring))
        segments.unlink_segment(self.name(STATE))

    def attach_state(self) -> StateBlock:
        return StateBlock.attach(self.name(STATE))

    def reader(self, ring: Ring) -> RingReader:
        return RingReader(self.name(ring), self.config.ring_capacity_bytes)

    def writer(self, ring: Ring) -> RingWriter:
        return RingWriter(self.name(ring), self.config.ring_capacity_bytes)
