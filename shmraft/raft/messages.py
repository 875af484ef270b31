"""The messages Raft nodes exchange, as plain values (the wire encoding lives elsewhere).

Every message names its sender `src`, its destination `dst` and the sender's `term`. Each one says which
connection it belongs on through `channel`: DATA for AppendEntries carrying entries (bulk, pipelined,
ordered per connection), CONSENSUS for everything else (small: votes, heartbeats, acknowledgements, empty
probes), so a node can keep consensus traffic off the bulk connection. The core tolerates loss, duplication
and reordering of any message, within and across channels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shmraft.raft.types import Entry


class Channel(enum.IntEnum):
    """Which peer connection a message travels on. The values are on the wire: the channel byte of the peer
    HELLO (docs/PROTOCOL.md section 3, shmraft/wire/peer.py), which binds a connection to its channel."""

    DATA = 1
    CONSENSUS = 2


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries following (prev_index, prev_term); may be empty (a probe)."""

    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int  # leader's commit index

    @property
    def channel(self) -> Channel:
        return Channel.DATA if self.entries else Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader. success: `index` is now the follower's match index (entries durable).
    Rejection: `index` is the rejected prev_index; (hint_index, hint_term) is the follower's last entry at or
    below it whose term is <= the leader's prev_term, so the leader can skip a whole conflicting term."""

    src: int
    dst: int
    term: int
    index: int
    success: bool
    hint_index: int = 0
    hint_term: int = 0

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: "I am alive"; `commit` is min(leader commit, follower's known match)."""

    src: int
    dst: int
    term: int
    commit: int

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Follower -> leader: the follower is reachable (check-quorum) and may need entries."""

    src: int
    dst: int
    term: int

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class RequestVote:
    """(Pre-)candidate -> all. For a pre-vote `term` is the term the sender would campaign in (its term + 1)
    and nobody changes state; `transfer` marks an election started by TimeoutNow (it overrides leases)."""

    src: int
    dst: int
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """Answer to RequestVote. A granted pre-vote carries the proposed term; a refusal the voter's term."""

    src: int
    dst: int
    term: int
    granted: bool
    pre_vote: bool = False

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> caught-up follower during leadership transfer: campaign now, skipping pre-vote."""

    src: int
    dst: int
    term: int

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: bytes [offset, offset + len(data)) of the leader's snapshot at (index, snap_term),
    which is `total` bytes long with CRC32 `crc`. Sent when the follower needs an entry below the leader's log
    start; chunks are bounded (RaftConfig) and travel on the DATA channel so they never delay heartbeats.
    `config` is the snapshot's configuration (Snapshot.config: encode_membership bytes, b"" = none), repeated
    in every chunk (a few hundred bytes at most) so that the chunk that completes the transfer carries it; it
    is not covered by `crc` (the peer link checks its frames)."""

    src: int
    dst: int
    term: int
    index: int
    snap_term: int
    total: int
    crc: int
    offset: int
    data: bytes
    config: bytes = b""

    @property
    def channel(self) -> Channel:
        return Channel.DATA


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Follower -> leader: the follower holds bytes [0, received) of the snapshot at `index` and wants the chunk
    at `received` next (0 after a restart or a failed checksum: the leader resends from 0). Once the snapshot is
    installed and durable the follower answers AppendResponse(success, index) instead."""

    src: int
    dst: int
    term: int
    index: int
    received: int

    @property
    def channel(self) -> Channel:
        return Channel.CONSENSUS


Message = (
    AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | RequestVote
    | VoteResponse
    | TimeoutNow
    | InstallSnapshot
    | SnapshotResponse
)
MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
    TimeoutNow,
    InstallSnapshot,
    SnapshotResponse,
)
