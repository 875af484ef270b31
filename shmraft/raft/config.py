"""Limits and timing of the Raft core, each named with its unit.

Timing defaults are the brief's numbers (shmraft.constants); the flow-control limits are sized for about
4000 batch entries per second of up to 32 KB each with a few milliseconds of round trip and fsync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shmraft.constants import (
    BATCH_PAYLOAD_MAX_BYTES,
    ELECTION_TIMEOUT_MS,
    ELECTION_TIMEOUT_SPREAD_MS,
    FRAME_FOOTER_BYTES,
    FRAME_HEADER_BYTES,
    HEARTBEAT_INTERVAL_MS,
)

# Test-only fault injection into the algorithm itself (see docs/raft-mutations.md). Never set in production:
# each one breaks a safety rule on purpose so that the simulator can show it catches the breakage.
TEST_ONLY_MUTATIONS: Final = frozenset(
    {
        "commit_any_term",  # leader commits by counting replicas even for entries of earlier terms (figure 8)
        "vote_ignores_log",  # voters grant without the "candidate's log is at least as up to date" check (5.4.1)
        "append_ignores_prev_term",  # followers accept an append whose prev entry term does not match (5.3)
        "recovering_votes",  # a node that lost its log votes as if it still had it (recovering mode ignored)
    }
)


class RaftConfigError(ValueError):
    """A Raft limit is out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Everything the core needs besides its id, bootstrap configuration, storage and random source."""

    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS
    election_timeout_ms: int = ELECTION_TIMEOUT_MS  # a follower that heard nothing this long (+ spread) campaigns
    election_timeout_spread_ms: int = ELECTION_TIMEOUT_SPREAD_MS  # random extra, drawn from [0, spread)
    # after peer_disconnected(leader) a follower pre-votes within a random delay drawn from [0, this]
    disconnect_election_delay_max_ms: int = 30
    pre_vote: bool = True
    check_quorum: bool = True
    # replication flow control, per follower
    max_append_entries: int = 256  # entries in one AppendEntries message
    max_append_bytes: int = 1024 * 1024  # entry data in one AppendEntries message (at least one entry is sent)
    max_inflight_entries: int = 1024  # entries sent and not yet acknowledged
    max_inflight_bytes: int = 8 * 1024 * 1024  # entry data sent and not yet acknowledged
    # proposals are refused (BackpressureError) beyond these many uncommitted entries/bytes on the leader
    max_uncommitted_entries: int = 8192
    max_uncommitted_bytes: int = 64 * 1024 * 1024
    max_entry_bytes: int = BATCH_PAYLOAD_MAX_BYTES + FRAME_HEADER_BYTES + FRAME_FOOTER_BYTES
    # committed entries handed out by one Ready (the rest follow in the next Ready)
    max_committed_bytes_per_ready: int = 8 * 1024 * 1024
    # InstallSnapshot: the leader sends its snapshot in chunks of at most this many bytes (and at most
    # max_inflight_bytes of them unacknowledged); a follower refuses a snapshot larger than max_snapshot_bytes
    # (it buffers the whole snapshot in memory before installing it)
    snapshot_chunk_bytes: int = 1024 * 1024
    max_snapshot_bytes: int = 1024 * 1024 * 1024
    # membership: a learner is promoted to voter only when at most this many entries behind the leader's last
    # index (and replicating), so that it does not stall commits while it catches up (thesis 4.2.1)
    promote_max_lag_entries: int = 1024
    test_only_mutation: str = ""  # "" in production; see TEST_ONLY_MUTATIONS

    def __post_init__(self) -> None:
        positive = (
            "heartbeat_interval_ms",
            "election_timeout_ms",
            "max_append_entries",
            "max_append_bytes",
            "max_inflight_entries",
            "max_inflight_bytes",
            "max_uncommitted_entries",
            "max_uncommitted_bytes",
            "max_entry_bytes",
            "max_committed_bytes_per_ready",
            "snapshot_chunk_bytes",
            "max_snapshot_bytes",
        )
        if self.promote_max_lag_entries < 0:
            raise RaftConfigError(f"promote_max_lag_entries: expected >= 0, got {self.promote_max_lag_entries}")
        for name in positive:
            if getattr(self, name) <= 0:
                raise RaftConfigError(f"{name}: expected > 0, got {getattr(self, name)}")
        if self.election_timeout_spread_ms < 1:
            raise RaftConfigError(f"election_timeout_spread_ms: expected >= 1, got {self.election_timeout_spread_ms}")
        if self.election_timeout_ms <= self.heartbeat_interval_ms:
            raise RaftConfigError(
                "election_timeout_ms: expected more than heartbeat_interval_ms, "
                f"got {self.election_timeout_ms} <= {self.heartbeat_interval_ms}"
            )
        if not 0 <= self.disconnect_election_delay_max_ms < self.election_timeout_ms:
            raise RaftConfigError(
                "disconnect_election_delay_max_ms: expected 0..election_timeout_ms-1, "
                f"got {self.disconnect_election_delay_max_ms}"
            )
        if self.max_entry_bytes > self.max_inflight_bytes:
            raise RaftConfigError(
                "max_entry_bytes: expected <= max_inflight_bytes, "
                f"got {self.max_entry_bytes} > {self.max_inflight_bytes}"
            )
        if self.test_only_mutation and self.test_only_mutation not in TEST_ONLY_MUTATIONS:
            raise RaftConfigError(
                f"test_only_mutation: expected one of {sorted(TEST_ONLY_MUTATIONS)}, got {self.test_only_mutation!r}"
            )

    @classmethod
    def from_node_config(cls, node_config: Any, **overrides: Any) -> RaftConfig:
        """Take the timing from a shmraft.config.NodeConfig (duck-typed to keep the core free of it)."""
        base = {
            "heartbeat_interval_ms": node_config.heartbeat_interval_ms,
            "election_timeout_ms": node_config.election_timeout_ms,
            "election_timeout_spread_ms": node_config.election_timeout_spread_ms,
        }
        base.update(overrides)
        return cls(**base)
