"""The output of the core: everything the driver must do, collected since the previous Ready."""

from __future__ import annotations

from dataclasses import dataclass, field

from shmraft.raft.membership import ClusterConfig
from shmraft.raft.messages import Message
from shmraft.raft.types import Entry, HardState, Snapshot, SoftState


@dataclass(slots=True)
class Ready:
    """What to do, in this order:

    1. send `messages` now (a leader's appends and heartbeats need no local durability, thesis 10.2.1);
    2. persist `entries` (replacing any stored suffix from entries[0].index) and `hard_state` (when not None)
       atomically: `storage.append(entries, hard_state)`, or `set_hard_state` when there are no entries;
       when `snapshot` is set (a follower installing its leader's snapshot; `entries` is then empty and
       `hard_state` set) the write is `storage.install_snapshot(snapshot, hard_state)` instead;
       Readies must be persisted in the order they were taken;
    3. once that is durable, send `messages_after_persist` (votes and acknowledgements promise durable
       state) and, if `entries` was not empty, call `core.persisted(entries[-1].index, entries[-1].term)`;
    4. if `snapshot` is set, replace the applied state by the snapshot's; then apply `committed_entries` (in
       index order, all after the snapshot; an entry with empty data is a leader's no-op).

    When both `entries` and `hard_state` are empty and no earlier Ready is still being persisted, step 3 may
    run at once; otherwise `messages_after_persist` wait for the earlier Readies' writes (they may
    acknowledge entries handed out earlier), except those that promise nothing pending: a pre-vote answer,
    and a HeartbeatResponse whose term is durable (shmraft.raft.driver).
    `soft_state` is the new (role, leader, term) when it changed, for display and client redirection.
    `membership` is the configuration now in effect when it changed since the previous Ready (an entry appended
    or truncated away, a snapshot installed): the driver connects to new members and drops removed ones. It is
    in effect already (appended, not committed: thesis 4.1); the starting one is `RaftCore.membership`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    membership: ClusterConfig | None = None

    @property
    def must_persist(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None

    def __bool__(self) -> bool:
        return bool(
            self.soft_state
            or self.hard_state
            or self.entries
            or self.messages
            or self.messages_after_persist
            or self.committed_entries
            or self.snapshot
            or self.membership
        )
