"""The Raft consensus algorithm as a pure, deterministic state machine (sans-I/O, in the style of etcd raft).

Inputs: `tick(elapsed_ms)`, `step(message)`, `propose(data)`, `persisted(index, term)`,
`snapshot_persisted(index, term)`, `transfer_leadership(to)`, `peer_disconnected(peer)`. Output: `ready()`
collects messages to send (each with its destination and channel), entries and hard state (or a snapshot) to
persist, committed entries and role changes; see shmraft.raft.ready.Ready for the order in which the driver
must act on them.

Time is only what tick() says and randomness only what the injected random source gives, so a simulator
can replay any run exactly. The algorithm follows the Raft paper and Ongaro's thesis: pre-vote (9.6),
check-quorum (6.2), leadership transfer (3.10), a leader's own log counting only once durable (10.2.1),
the commit rule of 5.4.2 (figure 8), fast back-off with a term hint (5.3), and InstallSnapshot (5.1) for a
follower that needs entries below the leader's log start (chunked, flow-controlled, resumable; see
docs/DESIGN.md "InstallSnapshot (the core)"). Safety invariants are
asserted where they could break (InvariantError), TigerBeetle style.

Recovering mode (`recovery_term` > 0): a node whose log was lost (quarantined as corrupt) restarts with an
empty log and its preserved term raised to `recovery_term`. It may have acknowledged entries it no longer
holds, so it must not help elect a leader that lacks them: it grants no votes and no pre-votes, never
campaigns (nor on TimeoutNow), and otherwise follows and acknowledges what it durably holds. It leaves the
mode once it holds, durably and committed, an entry of a term >= `recovery_term`: that entry's leader was
elected without this node, so (Raft's leader completeness, the voters intersecting the majority that stored
any entry it helped commit) the leader's log, of which ours is now a prefix up to that entry, holds every
entry committed with this node's lost acknowledgements. Its term being above the current leader's, its first
answer makes that leader step down: one election, without it, follows. Nobody leads that term and the node
never campaigns, so the old leader pre-votes at once (within disconnect_election_delay_max_ms, `_campaign_soon`)
rather than after an election timeout, and its other followers answer it although their lease names it (the
leader they hear has stepped down). See docs/DESIGN.md "Storage faults".
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable, Sequence

from shmraft.constants import CLUSTER_SIZE_MAX
from shmraft.raft.config import RaftConfig
from shmraft.raft.errors import (
    BackpressureError,
    EntryTooLargeError,
    InvariantError,
    NotLeaderError,
    TransferInProgressError,
)
from shmraft.raft.log import RaftLog
from shmraft.raft.membership import (
    ChangeInProgressError,
    ClusterConfig,
    ConfChange,
    ConfChangeKind,
    NotCaughtUpError,
    apply_change,
    check_active_quorum,
    decode_membership,
    membership_entry,
    membership_of_entry,
)
from shmraft.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from shmraft.raft.progress import Progress, ProgressState
from shmraft.raft.quorum import quorum_index, vote_result
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, LogStorage, RandomSource, Role, Snapshot, SoftState
from shmraft.wire.control import ControlKind, is_control


def _is_membership(data: bytes) -> bool:
    """Whether entry data is a MEMBERSHIP control entry (by magic and kind: the cheap test of every entry)."""
    return is_control(data) and len(data) >= 8 and int.from_bytes(data[6:8], "little") == ControlKind.MEMBERSHIP


NOOP: bytes = b""  # the entry a new leader appends to commit earlier terms' entries (5.4.2)


class StartConfigs:
    """The configurations a core starts with: the saved snapshot's (else the bootstrap one), then every
    MEMBERSHIP entry of the log after it, oldest first. Pure: the entries lo..hi are handed in (`feed`, in
    order, in one or more calls). `RaftCore` reads them itself; a driver that reads the entries after the
    snapshot anyway at start (the node's raft worker: dedup table, consumer groups) feeds them here in the
    same pass and passes this to `RaftCore(start_configs=...)`, so the log is read once. The range is bounded
    by how often snapshots are saved (the whole log when no snapshot carries a configuration)."""

    def __init__(self, storage: LogStorage, bootstrap: ClusterConfig) -> None:
        snap = storage.snapshot()
        first = storage.first_index()
        if snap is not None and snap.config:
            self.configs = [(snap.index, decode_membership(snap.config))]
            self.lo = max(snap.index + 1, first)  # the first entry to feed
        else:
            self.configs = [(first - 1, bootstrap)]
            self.lo = first
        self.hi = storage.last_index()  # the last entry to feed
        self._first = first
        self._bootstrap = bootstrap
        self._next = self.lo

    def feed(self, entries: Sequence[Entry]) -> None:
        """The next entries of lo..hi, in order (ValueError for any other)."""
        for e in entries:
            if e.index != self._next or e.index > self.hi:
                raise ValueError(
                    f"start configurations: expected entry {self._next} (of {self.lo}..{self.hi}), got {e.index}"
                )
            conf = RaftCore._membership_of(e)
            if conf is not None:
                self.configs.append((e.index, conf))
            self._next += 1

    def result(self, storage: LogStorage, bootstrap: ClusterConfig) -> list[tuple[int, ClusterConfig]]:
        """The configurations, once every entry was fed, for the storage and bootstrap configuration they were
        scanned for (ValueError otherwise: a driver's mistake, never silently a wrong membership)."""
        if self._next <= self.hi:
            raise ValueError(f"start configurations: entries {self._next}..{self.hi} were not fed")
        if (storage.first_index(), storage.last_index(), bootstrap) != (self._first, self.hi, self._bootstrap):
            raise ValueError(
                f"start configurations: scanned for log [{self._first}..{self.hi}] and bootstrap "
                f"{self._bootstrap}, used with log [{storage.first_index()}..{storage.last_index()}] and {bootstrap}"
            )
        return list(self.configs)


class RaftCore:
    """One Raft node's consensus state. Not thread-safe: one driver owns it."""

    def __init__(
        self,
        node_id: int,
        peers: Iterable[int] | ClusterConfig,
        storage: LogStorage,
        config: RaftConfig,
        rng: RandomSource,
        *,
        applied: int | None = None,
        recovery_term: int = 0,
        start_configs: StartConfigs | None = None,
    ) -> None:
        """Restart from `storage` (read only here; the driver writes it from Readies).

        `peers` is the bootstrap configuration: a ClusterConfig, or (the fixed-cluster form) the ids of the
        other voters, meaning all of them and this node are voters with empty addresses. It is used only when
        neither the log nor the saved snapshot holds a configuration; otherwise the configuration in effect is
        the latest MEMBERSHIP entry of the log (read from the saved snapshot's index on: bounded by the
        snapshot interval), else the snapshot's (`Snapshot.config`). A node joining a running cluster must
        name itself a LEARNER (or not at all) in its bootstrap configuration: as a voter alone it could elect
        itself. `applied` is the last index the driver's state machine has
        already applied; committed entries after it are handed out again (default: all held entries).
        `recovery_term` > 0 starts in recovering mode (see the module docstring); it must not exceed the
        stored term, which the driver raised to it when it replaced the lost log. `start_configs`: the
        configurations, scanned by the driver from this storage and this bootstrap configuration (`StartConfigs`,
        when it reads the log at start anyway); default: read here."""
        if node_id < 1:
            raise ValueError(f"node ids start at 1, got {node_id}")
        if isinstance(peers, ClusterConfig):
            bootstrap = peers
            bootstrap.check()
        else:
            peer_ids = tuple(sorted(set(peers)))
            if any(p < 1 for p in peer_ids):
                raise ValueError(f"node ids start at 1, got {node_id} and peers {peer_ids}")
            if node_id in peer_ids:
                raise ValueError(f"peers must not include this node ({node_id})")
            if len(peer_ids) + 1 > CLUSTER_SIZE_MAX:
                raise ValueError(f"at most {CLUSTER_SIZE_MAX} voters, got {len(peer_ids) + 1}")
            bootstrap = ClusterConfig.voters_of((node_id, *peer_ids))
        self.id = node_id
        self.config = config
        self._rng = rng
        self._bootstrap = bootstrap
        self._mutation = config.test_only_mutation
        self._log = RaftLog(storage)
        # membership: (index, configuration) of the configurations of the log, oldest first, the last one in
        # effect; the first is the base (the snapshot's or the bootstrap one, at the snapshot's index or 0)
        self._configs: list[tuple[int, ClusterConfig]] = (
            self._load_configs(storage, bootstrap)
            if start_configs is None
            else start_configs.result(storage, bootstrap)
        )
        self.peers: tuple[int, ...] = ()  # the other members (voters and learners): whom a leader replicates to
        self._conf: ClusterConfig | None = None  # the configuration in effect (set by _use_config)
        self._conf_index = 0  # the index of its entry (0: bootstrap; the snapshot's index: from a snapshot)
        self._voters: frozenset[int] = frozenset()
        self._counted: frozenset[int] = frozenset()  # whose logs count for commits and votes for elections
        self._quorum = 1
        self._log.on_append = self._on_append
        hs = storage.hard_state()
        self._term = hs.term
        self._vote = hs.vote
        self._commit = max(min(hs.commit, self._log.last_index()), storage.snapshot_index())
        first = self._log.first_index()
        self._applied = first - 1 if applied is None else applied
        if not first - 1 <= self._applied <= self._commit:
            raise ValueError(f"applied: expected {first - 1}..{self._commit}, got {applied}")
        self._role = Role.FOLLOWER
        self._leader = 0
        self._election_elapsed_ms = 0
        self._heartbeat_elapsed_ms = 0
        self._randomized_timeout_ms = config.election_timeout_ms
        self._progress: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._leader_term_start = 0  # index of the leader's first entry of its own term
        self._transfer_target = 0
        self._transfer_elapsed_ms = 0
        self._uncommitted: deque[tuple[int, int]] = deque()  # leader: (index, bytes) of entries > commit
        self._uncommitted_bytes = 0
        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._prev_hard = hs
        self._prev_soft = SoftState(self._role, self._leader, self._term)
        self.dropped_messages = 0  # messages from unknown nodes, counted not raised
        # InstallSnapshot. Leader: the snapshot being sent (with its CRC32), shared by every transfer that
        # started while it was the newest; dropped when no transfer uses it. Follower: the chunks received so
        # far of one snapshot, keyed by (index, term, total, crc), and a snapshot installed but not yet in a
        # Ready. Counters for status and metrics.
        self._snap_cache: tuple[Snapshot, int] | None = None
        self._snap_buf: bytearray | None = None
        self._snap_buf_key: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._snap_buf_term = 0  # the term in which the partial copy was started
        self._snap_to_persist: Snapshot | None = None
        self.snapshots_sent = 0  # leader: transfers completed (the follower then held the snapshot's index)
        self.snapshots_installed = 0  # follower: snapshots installed
        self.snapshots_refused = 0  # follower: snapshots larger than max_snapshot_bytes, ignored
        self.snapshots_abandoned = 0  # leader: transfers in progress when this node stopped leading
        if recovery_term < 0 or recovery_term > self._term:
            raise ValueError(f"recovery_term: expected 0..{self._term} (the stored term), got {recovery_term}")
        self._recovery_term = recovery_term
        self.conf_changes_proposed = 0  # leader: membership changes appended
        self.removed_steps_down = 0  # leader: stepped down after committing its own removal
        self.removed_told = 0  # leader: heartbeats telling a removed node's pre-vote the commit index
        self._use_config()
        self._prev_conf = self.membership
        self._reset_election_timer()
        self._maybe_end_recovery()
        if self._voters == {self.id} and not self._recovery_term:
            # the sole voter of its configuration: no other node can lead it and its own vote elects it, so
            # waiting an election timeout to hear a leader gains nothing; it campaigns at its first tick
            self._election_elapsed_ms = self._randomized_timeout_ms

    # --- read-only state --------------------------------------------------------------------------------
    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> int:
        """Known leader id, 0 when unknown."""
        return self._leader

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        """Last committed index handed out in a Ready."""
        return self._applied

    @property
    def first_index(self) -> int:
        """Oldest entry still held (retention deletes committed entries below it)."""
        return self._log.first_index()

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def last_term(self) -> int:
        return self._log.last_term()

    @property
    def transfer_target(self) -> int:
        return self._transfer_target

    def match_index(self, peer: int) -> int:
        """The leader's match index for `peer` (the last entry it acknowledged as durable); 0 when not leading
        or `peer` is not followed. Lets the driver see that nothing is in flight to a follower."""
        pr = self._progress.get(peer) if self._role == Role.LEADER else None
        return pr.match if pr is not None else 0

    @property
    def recovering(self) -> bool:
        """In recovering mode: no votes, no pre-votes, no campaign until caught up (module docstring)."""
        return self._recovery_term > 0

    @property
    def recovery_term(self) -> int:
        return self._recovery_term

    @property
    def membership(self) -> ClusterConfig:
        """The configuration in effect: the latest in this node's log, committed or not (thesis 4.1)."""
        assert self._conf is not None
        return self._conf

    @property
    def membership_index(self) -> int:
        """Index of the entry of the configuration in effect (0: the bootstrap one)."""
        return self._conf_index

    @property
    def conf_change_pending(self) -> bool:
        """The latest configuration entry is not committed yet (a leader refuses another change until it is)."""
        return self._configs[-1][0] > self._commit

    @property
    def removed(self) -> bool:
        """This node is not a member of the configuration in effect (it was removed, or has not yet received
        the entry that adds it). It never campaigns; the driver may stop it."""
        return self.id not in self.membership

    @property
    def is_voter(self) -> bool:
        return self.id in self._voters

    def membership_at(self, index: int) -> ClusterConfig:
        """The configuration in effect at log index `index` (the latest entry at or below it), for the
        snapshot saved at `index` (Snapshot.config = encode_membership(core.membership_at(index))). Answers
        for first_index - 1 <= index <= last_index; ValueError outside what this node still knows."""
        if index > self._log.last_index() or index < self._configs[0][0]:
            raise ValueError(
                f"index: expected {self._configs[0][0]}..{self._log.last_index()} (configurations known), got {index}"
            )
        found = self._configs[0][1]
        for at, conf in self._configs:
            if at > index:
                break
            found = conf
        return found

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index in this node's log (unstable tail included)."""
        return self._log.term(index)

    def log_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) of this node's log (unstable tail included); for tests, tools and checks."""
        return self._log.entries(lo, hi, max_bytes)

    def status(self) -> dict[str, object]:
        """A snapshot for status displays; progress only on the leader."""
        out: dict[str, object] = {
            "id": self.id,
            "role": self._role.name.lower(),
            "term": self._term,
            "leader": self._leader,
            "vote": self._vote,
            "commit": self._commit,
            "applied": self._applied,
            "last_index": self._log.last_index(),
            "stable_index": self._log.stable_last(),
            "recovering": self.recovering,
            "snapshots_sent": self.snapshots_sent,
            "snapshots_installed": self.snapshots_installed,
            "members": self.membership.to_dict(),
            "membership_index": self._conf_index,
            "conf_change_pending": self.conf_change_pending,
            "removed": self.removed,
        }
        if self._snap_buf is not None:
            index, _, total, _ = self._snap_buf_key
            out["snapshot_receiving"] = {"index": index, "received_bytes": len(self._snap_buf), "total_bytes": total}
        if self._role == Role.LEADER:
            last = self._log.last_index()
            out["progress"] = {
                p: {
                    "match": pr.match,
                    "next": pr.next,
                    "state": pr.state.name.lower(),
                    "inflight_entries": pr.inflight_entries,
                    "inflight_bytes": pr.inflight_bytes,
                    "silent_ms": pr.silent_ms,
                    "entries_behind": last - pr.match,
                    "snapshot_index": pr.snap.index if pr.snap is not None else 0,
                    "snapshot_sent_bytes": pr.snap_sent if pr.snap is not None else 0,
                    "snapshot_acked_bytes": pr.snap_acked if pr.snap is not None else 0,
                    "snapshot_total_bytes": len(pr.snap.data) if pr.snap is not None else 0,
                    "snapshot_missing": pr.state == ProgressState.SNAPSHOT and pr.snap is None,
                }
                for p, pr in self._progress.items()
            }
            out["transfer_target"] = self._transfer_target
            out["learners_behind"] = {
                p: last - self._progress[p].match for p in self.membership.learners() if p in self._progress
            }
        return out

    @property
    def snapshot_receiving(self) -> bool:
        """A follower holds part of a snapshot (chunks received, not yet complete)."""
        return self._snap_buf is not None

    # --- inputs -------------------------------------------------------------------------------------------
    def tick(self, elapsed_ms: int) -> None:
        """Advance this node's clock by elapsed_ms (any granularity; the driver calls it every few ms)."""
        if elapsed_ms < 0:
            raise ValueError(f"elapsed_ms: expected >= 0, got {elapsed_ms}")
        if self._role == Role.LEADER:
            self._tick_leader(elapsed_ms)
        else:
            self._election_elapsed_ms += elapsed_ms
            if self._election_elapsed_ms >= self._randomized_timeout_ms:
                if self._recovery_term or not self._may_campaign():
                    # no leader heard: forget it, but never campaign while recovering, nor as a learner or a
                    # node whose removal is committed (thesis 4.2.3: a removed server must not disrupt)
                    self._leader = 0
                    self._reset_election_timer()
                else:
                    self._campaign(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append `data` as a new entry on the leader; returns its index. The entry is committed when it
        appears in Ready.committed_entries with this index and the current term (another entry at that
        index means this one was lost with a leader change and may be retried)."""
        if self._role != Role.LEADER:
            raise NotLeaderError(self._leader)
        if self._transfer_target:
            raise TransferInProgressError(f"transferring leadership to {self._transfer_target}")
        if _is_membership(data):
            raise ValueError("data: a MEMBERSHIP control entry is proposed with propose_conf_change, not propose")
        return self._append_proposal(data)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append the configuration `change` leads to on the leader; returns the entry's index. It is in effect
        at once (on every node as soon as appended: thesis 4.1) and committed like any entry (same rule as
        `propose` for telling whether it was). Refused (nothing appended) with: NotLeaderError;
        TransferInProgressError; ChangeInProgressError while the latest configuration entry is uncommitted or
        this leader has not committed an entry of its term yet; UnknownMemberError, AlreadyMemberError,
        AddressInUseError, TooManyVotersError, WouldLoseQuorumError, InvalidChangeError (apply_change);
        NotCaughtUpError for a PROMOTE of a learner more than promote_max_lag_entries behind;
        QuorumNotActiveError (the strict reconfiguration check, `check_active_quorum`) for a change of the
        voters (REMOVE of a voter, PROMOTE) after which the voters known active (`active_ids`) would not be a
        majority; BackpressureError. Removing the leader itself is allowed: it keeps leading, without counting itself,
        until the entry is committed, then hands over and steps down (thesis 4.2.2)."""
        if self._role != Role.LEADER:
            raise NotLeaderError(self._leader)
        if self._transfer_target:
            raise TransferInProgressError(f"transferring leadership to {self._transfer_target}")
        latest_index, latest = self._configs[-1]
        if latest_index > self._commit:
            raise ChangeInProgressError(f"the configuration entry at {latest_index} is not committed yet")
        if self._commit < self._leader_term_start:
            raise ChangeInProgressError(
                f"this leader has not committed an entry of its term {self._term} yet (commit {self._commit})"
            )
        new = apply_change(latest, change)
        if change.kind == ConfChangeKind.PROMOTE:
            pr = self._progress.get(change.node_id)
            bound = self.config.promote_max_lag_entries
            behind = self._log.last_index() - (pr.match if pr is not None else 0)
            if pr is None or pr.state != ProgressState.REPLICATE or behind > bound:
                raise NotCaughtUpError(change.node_id, behind, bound)
        check_active_quorum(latest, new, change, self.active_ids())
        index = self._append_proposal(membership_entry(new))
        self.conf_changes_proposed += 1
        return index

    def active_ids(self) -> frozenset[int]:
        """Leader: the members known active, for the strict reconfiguration check: itself, and every follower
        heard from in this leadership within the check-quorum window (election_timeout_ms, the `silent_ms`
        that check-quorum counts), and not disconnected since (`peer_disconnected`: a killed follower's
        connection resets at once). A follower not heard since this node became leader (a leader that just
        took over from a dead one) is not known active, although check-quorum gives it a window to show up."""
        timeout = self.config.election_timeout_ms
        active = {p for p, pr in self._progress.items() if pr.heard and pr.silent_ms < timeout}
        active.add(self.id)
        return frozenset(active)

    def _append_proposal(self, data: bytes) -> int:
        """Append one proposed entry on the leader (flow-control limits checked)."""
        size = len(data)
        if size > self.config.max_entry_bytes:
            raise EntryTooLargeError(f"entry of {size} bytes exceeds max_entry_bytes {self.config.max_entry_bytes}")
        if (
            len(self._uncommitted) >= self.config.max_uncommitted_entries
            or self._uncommitted_bytes + size > self.config.max_uncommitted_bytes
        ):
            raise BackpressureError(f"{len(self._uncommitted)} entries / {self._uncommitted_bytes} bytes uncommitted")
        index = self._log.last_index() + 1
        self._log.append((Entry(index, self._term, data),))
        self._uncommitted.append((index, size))
        self._uncommitted_bytes += size
        self._maybe_commit()  # a one-voter cluster commits at once; otherwise nothing moves here
        return index

    def persisted(self, up_to_index: int, term: int) -> None:
        """The driver made the entries of a Ready durable, the last one being (up_to_index, term)."""
        if self._log.stable_to(up_to_index, term):
            if self._role == Role.LEADER:
                self._maybe_commit()
            self._maybe_end_recovery()

    def snapshot_persisted(self, index: int, term: int) -> None:
        """The driver made the snapshot of a Ready (Ready.snapshot at (index, term)) durable."""
        if self._log.snapshot_stable(index, term):
            self._maybe_end_recovery()

    def transfer_leadership(self, to: int | None = None) -> int:
        """Hand leadership to `to` (default: the most caught-up follower), e.g. before a clean shutdown.
        Proposals are refused until it completes or one election timeout passes. Returns the target."""
        if self._role != Role.LEADER:
            raise NotLeaderError(self._leader)
        voters = [p for p in self.peers if p in self._voters]
        if not voters:
            raise ValueError("no other voter to transfer leadership to")
        if to is None:
            to = max(voters, key=lambda p: (self._progress[p].match, -p))
        if to not in self._progress or to not in self._voters:
            raise ValueError(f"transfer target {to} is not a voting peer")
        if self._transfer_target == to:
            return to
        self._transfer_target = to
        self._transfer_elapsed_ms = 0
        if self._progress[to].match == self._log.last_index():
            self._send(TimeoutNow(self.id, to, self._term))
        return to

    def peer_disconnected(self, peer: int) -> None:
        """The driver lost its connection to `peer`. A follower that loses its leader forgets the leader
        (and so its lease) and pre-votes within disconnect_election_delay_max_ms, instead of waiting for the
        election timeout: safe because pre-vote cannot disturb a leader that others still hear. A leader
        resends to that peer from its known match, since whatever was in flight may be lost."""
        if self._role == Role.LEADER:
            pr = self._progress.get(peer)
            if pr is None:
                return
            pr.heard = False  # not known active until it answers again (the strict reconfiguration check counts,
            # as etcd's does, the members the leader is connected to; check-quorum still gives it its window)
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = False  # resend the probe where it was (a new leader's next is not match + 1)
            else:
                pr.resume_snapshot()  # resend from the acknowledged offset
            return
        if self._role == Role.FOLLOWER and peer == self._leader and peer != 0:
            self._leader = 0
            self._campaign_soon()

    def _campaign_soon(self) -> None:
        """A follower with no leader pre-votes within disconnect_election_delay_max_ms (random) instead of
        an election timeout. Safe at any time: a pre-vote changes no state, and its voters still in a live
        leader's lease ignore it; `tick` still refuses to campaign while recovering, as a learner or removed."""
        delay = self._rng.randrange(self.config.disconnect_election_delay_max_ms + 1)
        self._election_elapsed_ms = max(self._election_elapsed_ms, self._randomized_timeout_ms - delay)

    def step(self, m: Message) -> None:
        """Process one message from a peer."""
        if m.dst != self.id:
            raise ValueError(f"message for node {m.dst} stepped into node {self.id}")
        if m.src < 1 or m.src == self.id:
            self.dropped_messages += 1
            return
        # messages from nodes outside our configuration are processed (thesis 4.1: a new server accepts the
        # leader that adds it before it holds the entry; a voter may answer a candidate whose promotion it does
        # not know yet); a leader ignores answers from non-members, a candidate counts only its voters' votes
        if isinstance(m, RequestVote) and m.pre_vote and self._role == Role.LEADER and m.src not in self.membership:
            self._tell_removed(m)
        if m.term > self._term:
            if isinstance(m, RequestVote):
                in_lease = (
                    self.config.check_quorum
                    and self._leader != 0
                    and self._leader != m.src  # our leader campaigning has stepped down: it has no lease to keep
                    and self._election_elapsed_ms < self.config.election_timeout_ms
                )
                if in_lease and not m.transfer:
                    return  # we hear a leader: a disrupting (pre-)candidate is ignored (thesis 4.2.3)
            if isinstance(m, RequestVote) and m.pre_vote:
                pass  # pre-votes never change terms
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                leader = m.src if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else 0
                # a follower's answer in a higher term: nobody leads that term yet (typically a node back in
                # recovering mode, which never campaigns): this node, whose log was the leader's, pre-votes soon
                answered_higher = self._role == Role.LEADER and isinstance(
                    m, AppendResponse | HeartbeatResponse | SnapshotResponse
                )
                self._become_follower(m.term, leader)
                if answered_higher:
                    self._campaign_soon()
        elif m.term < self._term:
            if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
                # tell a stale leader about the newer term so that it steps down
                self._send(AppendResponse(self.id, m.src, self._term, 0, False))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self._send(VoteResponse(self.id, m.src, self._term, False, True))
            return
        if isinstance(m, RequestVote):
            self._handle_request_vote(m)
        elif self._role == Role.LEADER:
            self._step_leader(m)
        elif self._role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # --- output -------------------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        """Whether ready() would return something to do."""
        if self._msgs or self._msgs_after_persist or self._log.in_progress < self._log.last_index():
            return True
        if self._snap_to_persist is not None:
            return True
        if self._applied < self._commit:
            return True
        if self.membership != self._prev_conf:
            return True
        if self._role == Role.LEADER and self._leader_has_sends():
            return True
        return (
            HardState(self._term, self._vote, self._commit) != self._prev_hard
            or SoftState(self._role, self._leader, self._term) != self._prev_soft
        )

    def ready(self) -> Ready:
        """Everything accumulated since the last call; the caller must act on it (see Ready)."""
        if self._role == Role.LEADER:
            self._flush_leader_sends()
        rd = Ready()
        soft = SoftState(self._role, self._leader, self._term)
        if soft != self._prev_soft:
            rd.soft_state = self._prev_soft = soft
        hard = HardState(self._term, self._vote, self._commit)
        if hard != self._prev_hard or self._snap_to_persist is not None:
            rd.hard_state = self._prev_hard = hard
        if self.membership != self._prev_conf:
            rd.membership = self._prev_conf = self.membership
        self._prune_configs()
        if self._msgs:
            rd.messages, self._msgs = self._msgs, []
        if self._msgs_after_persist:
            rd.messages_after_persist, self._msgs_after_persist = self._msgs_after_persist, []
        if self._snap_to_persist is not None:
            # a Ready with a snapshot carries no entries and nothing to apply: the next Ready does
            rd.snapshot, self._snap_to_persist = self._snap_to_persist, None
            return rd
        rd.entries = self._log.take_unpersisted()
        if self._applied < self._commit:
            lo = max(self._applied + 1, self._log.first_index())
            rd.committed_entries = self._log.entries(lo, self._commit + 1, self.config.max_committed_bytes_per_ready)
            if rd.committed_entries:
                self._applied = rd.committed_entries[-1].index
        return rd

    # --- membership ---------------------------------------------------------------------------------------
    def _load_configs(self, storage: LogStorage, bootstrap: ClusterConfig) -> list[tuple[int, ClusterConfig]]:
        """The configurations known at start (`StartConfigs`), reading the entries it needs from `storage`."""
        scan = StartConfigs(storage, bootstrap)
        lo = scan.lo
        while lo <= scan.hi:
            chunk = storage.entries(lo, scan.hi + 1, self.config.max_committed_bytes_per_ready)
            if not chunk:
                raise InvariantError(f"storage returned no entry at {lo} (last index {scan.hi})")
            scan.feed(chunk)
            lo = chunk[-1].index + 1
        return scan.result(storage, bootstrap)

    @staticmethod
    def _membership_of(e: Entry) -> ClusterConfig | None:
        try:
            return membership_of_entry(e.data)
        except ValueError as exc:  # the driver validates entries from peers: this is a damaged log
            raise InvariantError(f"entry {e.index}: a damaged configuration entry ({exc})") from exc

    def _on_append(self, entries: Sequence[Entry]) -> None:
        """Every append to the log (RaftLog.on_append): a truncation drops the configurations it removes, new
        configuration entries take effect at once (thesis 4.1)."""
        first = entries[0].index
        configs = self._configs
        changed = False
        while len(configs) > 1 and configs[-1][0] >= first:
            configs.pop()
            changed = True
        for e in entries:
            if _is_membership(e.data):
                conf = self._membership_of(e)
                assert conf is not None
                configs.append((e.index, conf))
                changed = True
        if changed:
            self._use_config()

    def _may_campaign(self) -> bool:
        """A voter campaigns; so does a voter whose removal is not committed yet (thesis 4.2.2: it may still be
        needed, e.g. the only node holding that entry after the leader that appended it crashed), without
        counting its own vote. A learner, or a node whose removal is committed, never does."""
        if self.id in self._voters:
            return True
        if self.id in self.membership or self._conf_index <= self._commit:
            return False
        return self.membership_at_or_below(self._conf_index - 1).is_voter(self.id)

    def membership_at_or_below(self, index: int) -> ClusterConfig:
        """The newest configuration known at or below `index` (the oldest known if none)."""
        found = self._configs[0][1]
        for at, conf in self._configs:
            if at > index:
                break
            found = conf
        return found

    def _prune_configs(self) -> None:
        """Forget configurations superseded at or below the log's start (membership_at never asks for them)."""
        configs = self._configs
        floor = self._log.first_index() - 1
        while len(configs) > 1 and configs[1][0] <= floor:
            configs.pop(0)

    def _use_config(self) -> None:
        """Put the configuration in effect (the latest in the log) to use: peers, voters, quorum; a leader
        starts replicating to new members and forgets removed ones."""
        index, conf = self._configs[-1]  # in effect once appended, committed or not (thesis 4.1)
        self._conf_index = index
        if conf is self._conf:
            return
        self._conf = conf
        self.peers = tuple(i for i in conf.ids() if i != self.id)
        self._voters = frozenset(conf.voters())
        self._counted = self._voters  # learners' logs and votes never count
        self._quorum = conf.quorum
        if self._role == Role.LEADER:
            last = self._log.last_index()
            for p in self.peers:
                if p not in self._progress:
                    self._progress[p] = Progress(last + 1)
            # a removed member keeps its progress (never counted) until it holds its removal, so that it
            # learns it was removed and stops campaigning (thesis 4.2.3); see _forget_removed
            if self._transfer_target and self._transfer_target not in self._voters:
                self._transfer_target = 0
        elif self._role != Role.FOLLOWER and not self._may_campaign():
            self._become_follower(self._term, 0)  # a (pre-)candidate no longer voting stops campaigning

    # --- role changes -------------------------------------------------------------------------------------
    def _reset_election_timer(self) -> None:
        self._election_elapsed_ms = 0
        self._randomized_timeout_ms = self.config.election_timeout_ms + self._rng.randrange(
            self.config.election_timeout_spread_ms
        )

    def _become_follower(self, term: int, leader: int) -> None:
        if term < self._term:
            raise InvariantError(f"term would go back from {self._term} to {term}")
        if term > self._term:
            self._term = term
            self._vote = 0
        if self._role == Role.LEADER:
            self.snapshots_abandoned += sum(1 for pr in self._progress.values() if pr.snap is not None)
        self._role = Role.FOLLOWER
        self._leader = leader
        self._progress = {}
        self._snap_cache = None
        self._votes = {}
        self._transfer_target = 0
        self._uncommitted.clear()
        self._uncommitted_bytes = 0
        self._reset_election_timer()

    def _campaign(self, transfer: bool) -> None:
        """Start an election: a pre-vote round first (thesis 9.6) unless pre-vote is off or this is a
        leadership transfer."""
        if self.config.pre_vote and not transfer:
            self._role = Role.PRE_CANDIDATE
            self._leader = 0
            self._votes = {self.id: True}
            self._progress = {}
            self._reset_election_timer()
            if self._quorum == 1 and self.id in self._voters:
                self._start_election(transfer=False)
                return
            self._request_votes(self._term + 1, pre_vote=True, transfer=False)
        else:
            self._start_election(transfer)

    def _start_election(self, transfer: bool) -> None:
        self._role = Role.CANDIDATE
        self._term += 1
        self._vote = self.id
        self._leader = 0
        self._votes = {self.id: True}
        self._progress = {}
        self._reset_election_timer()
        if self._quorum == 1 and self.id in self._voters:
            self._become_leader()
            return
        self._request_votes(self._term, pre_vote=False, transfer=transfer)

    def _request_votes(self, term: int, pre_vote: bool, transfer: bool) -> None:
        last_index, last_term = self._log.last_index(), self._log.last_term()
        for p in self.peers:
            if p not in self._counted:
                continue  # a learner's vote would not count
            self._send(RequestVote(self.id, p, term, last_index, last_term, pre_vote, transfer))

    def _win_round(self) -> None:
        if self._role == Role.PRE_CANDIDATE:
            self._start_election(transfer=False)  # pre-vote won: now the real election
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        if self._role != Role.CANDIDATE:
            raise InvariantError(f"only a candidate becomes leader, not a {self._role.name}")
        self._role = Role.LEADER
        self._leader = self.id
        self._votes = {}
        self._heartbeat_elapsed_ms = 0
        self._election_elapsed_ms = 0
        self._transfer_target = 0
        last = self._log.last_index()
        self._progress = {p: Progress(last + 1) for p in self.peers}
        self._snap_cache = None
        self._leader_term_start = last + 1
        self._uncommitted.clear()
        self._uncommitted_bytes = 0
        self._log.append((Entry(last + 1, self._term, NOOP),))
        self._uncommitted.append((last + 1, 0))
        self._maybe_commit()

    # --- message handling ------------------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        """Queue a message. Only a leader's messages may leave before the Ready is persisted: everything a
        non-leader says may promise durable state (a vote, an acknowledgement, a term)."""
        if self._role == Role.LEADER:
            self._msgs.append(m)
        else:
            self._msgs_after_persist.append(m)

    def _handle_request_vote(self, m: RequestVote) -> None:
        if self._recovery_term and self._mutation != "recovering_votes":  # a node that lost its log must not
            # vote as if it had it
            self._send(VoteResponse(self.id, m.src, self._term, False, m.pre_vote))
            return
        can_vote = (
            self._vote == m.src or (self._vote == 0 and self._leader == 0) or (m.pre_vote and m.term > self._term)
        )
        up_to_date = self._mutation == "vote_ignores_log" or self._log.is_up_to_date(m.last_index, m.last_term)
        if can_vote and up_to_date:
            self._send(VoteResponse(self.id, m.src, m.term, True, m.pre_vote))
            if m.pre_vote:
                self._yield_to_pre_candidate(m)
            else:
                if self._vote not in (0, m.src):
                    raise InvariantError(f"second vote in term {self._term}")
                self._vote = m.src
                self._election_elapsed_ms = 0
        else:
            self._send(VoteResponse(self.id, m.src, self._term, False, m.pre_vote))

    def _yield_to_pre_candidate(self, m: RequestVote) -> None:
        """Having granted a pre-vote, hold back our own election so that two nodes timing out together
        (typically both told at once that the leader's connection dropped) do not split the vote: a
        follower restarts its timer; a pre-candidate steps back if the other's (log, id) ranks higher.

        The follower also forgets its leader: granting a pre-vote means it no longer hears one, and keeping
        the old leader would make the restarted timer look like a live lease, so that the real RequestVote
        that follows would be ignored (thesis 4.2.3) and the election lost."""
        if self._role == Role.FOLLOWER:
            self._election_elapsed_ms = 0
            self._leader = 0
        elif self._role == Role.PRE_CANDIDATE:
            mine = (self._log.last_term(), self._log.last_index(), self.id)
            if (m.last_term, m.last_index, m.src) > mine:
                self._become_follower(self._term, 0)

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self._election_elapsed_ms = 0
            self._leader = m.src
            self._handle_append(m)
        elif isinstance(m, InstallSnapshot):
            self._election_elapsed_ms = 0
            self._leader = m.src
            self._handle_snapshot(m)
        elif isinstance(m, Heartbeat):
            self._election_elapsed_ms = 0
            self._leader = m.src
            self._commit_to(min(m.commit, self._log.last_index()))
            self._send(HeartbeatResponse(self.id, m.src, self._term))
        elif isinstance(m, TimeoutNow) and not self._recovery_term and self._may_campaign():
            self._campaign(transfer=True)
        # responses meant for a leader or candidate we no longer are: ignored

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._become_follower(self._term, m.src)  # a leader of our term exists (5.2)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            pre = self._role == Role.PRE_CANDIDATE
            if m.pre_vote != pre:
                return
            if pre and m.granted and m.term != self._term + 1:
                return  # a stale grant from an earlier round
            if m.src not in self._counted:
                return  # not a voter of our configuration (thesis 4.1): its answer does not count
            self._votes.setdefault(m.src, m.granted)
            votes = {p: g for p, g in self._votes.items() if p in self._counted}
            result = vote_result(votes, len(self._voters))
            if result is True:
                self._win_round()
            elif result is False:
                self._become_follower(self._term, 0)

    def _handle_append(self, m: AppendEntries) -> None:
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if prev_index < self._commit:
            # everything up to our commit matches the leader already: skip that part of the message
            skip = self._commit - prev_index
            if skip >= len(entries):
                self._send(AppendResponse(self.id, m.src, self._term, self._commit, True))
                return
            entries = entries[skip:]
            prev_index = self._commit
            prev_term = self._log.term(prev_index) or 0
        last_new = self._log.maybe_append(
            prev_index, prev_term, entries, self._commit, ignore_prev_term=self._mutation == "append_ignores_prev_term"
        )
        if last_new is not None:
            self._commit_to(min(m.commit, last_new))
            self._send(AppendResponse(self.id, m.src, self._term, last_new, True))
            return
        hint_index = self._log.find_conflict_by_term(min(m.prev_index, self._log.last_index()), m.prev_term)
        hint_term = self._log.term(hint_index) or 0
        self._send(AppendResponse(self.id, m.src, self._term, m.prev_index, False, hint_index, hint_term))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        """Follower side of InstallSnapshot (thesis 5.1, chunked): answer at once when the snapshot is not
        needed, otherwise buffer the chunk if it is the next one, and install the snapshot once complete and
        checksummed. The installing Ready's write (Ready.snapshot) replaces the whole log atomically; the
        acknowledgement leaves only once it is durable."""
        if m.index <= self._commit:
            # we hold (and have committed) everything up to the snapshot: never move commit backwards
            self._send(AppendResponse(self.id, m.src, self._term, self._commit, True))
            return
        if self._log.term(m.index) == m.snap_term:
            # our log holds the snapshot's last entry: it matches the leader's up to there (log matching), so
            # keep it, and the suffix after it, which the leader's next appends check as usual
            self._snap_buf = None
            self._commit_to(m.index)
            self._send(AppendResponse(self.id, m.src, self._term, m.index, True))
            return
        if m.total > self.config.max_snapshot_bytes:
            self.snapshots_refused += 1  # cannot be buffered here: ignored (the operator sees it in status)
            return
        if m.offset < 0 or m.total < 0 or m.offset + len(m.data) > m.total or m.index < 1:
            self.dropped_messages += 1  # inconsistent chunk: ignored
            return
        key = (m.index, m.snap_term, m.total, m.crc)
        if self._snap_buf is None or self._snap_buf_key != key:
            if self._snap_buf is not None and m.index < self._snap_buf_key[0] and self._snap_buf_term == self._term:
                # a chunk of an older snapshot than the one this leader is sending: stale, ignored. A leader
                # of a later term replaces a partial copy whatever its index: each node saves snapshots at
                # its own points, and a dead leader's half is worth nothing now
                return
            self._snap_buf = bytearray()
            self._snap_buf_key = key
            self._snap_buf_term = self._term
        buf = self._snap_buf
        if m.offset != len(buf):
            # a gap (a chunk was lost, or our partial copy was): ask for what we miss. A chunk we already hold
            # is answered only at offset 0 (a new transfer: tell the leader how much we hold); answering every
            # duplicate would look like a gap to the leader and make it resend
            if m.offset > len(buf) or m.offset == 0 or not m.data:  # an empty chunk asks: always answered
                self._send(SnapshotResponse(self.id, m.src, self._term, m.index, len(buf)))
            return
        buf += m.data
        if len(buf) < m.total:
            self._send(SnapshotResponse(self.id, m.src, self._term, m.index, len(buf)))
            return
        self._snap_buf = None
        if zlib.crc32(buf) != m.crc:
            self._send(SnapshotResponse(self.id, m.src, self._term, m.index, 0))  # damaged: start again
            return
        if m.config:
            try:
                decode_membership(m.config)
            except ValueError:
                self.dropped_messages += 1  # a damaged configuration: the transfer starts again
                self._send(SnapshotResponse(self.id, m.src, self._term, m.index, 0))
                return
        self._install_snapshot(Snapshot(m.index, m.snap_term, bytes(buf), m.config))
        self._send(AppendResponse(self.id, m.src, self._term, m.index, True))

    def _install_snapshot(self, snap: Snapshot) -> None:
        """Replace the log by `snap` (index above our commit): commit and applied move to its index."""
        if snap.index <= self._commit:
            raise InvariantError(f"snapshot at {snap.index} installed at or below commit {self._commit}")
        self._log.restore(snap.index, snap.term)
        base = decode_membership(snap.config) if snap.config else self.membership_at_or_below(snap.index)
        self._configs = [(snap.index, base)]
        self._commit = max(self._commit, snap.index)
        self._applied = snap.index
        self._snap_to_persist = snap
        self.snapshots_installed += 1
        self._use_config()

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        if index > self._log.last_index():
            raise InvariantError(f"commit {index} beyond last index {self._log.last_index()}")
        self._commit = index
        self._maybe_end_recovery()

    def _maybe_end_recovery(self) -> None:
        """Leave recovering mode once a durable, committed entry of a term >= recovery_term is held."""
        if not self._recovery_term:
            return
        index = min(self._commit, self._log.stable_last())
        term = self._log.term(index) if index >= self._log.first_index() - 1 else None
        if index > 0 and term is not None and term >= self._recovery_term:
            self._recovery_term = 0

    # --- leader -------------------------------------------------------------------------------------------
    def _tick_leader(self, elapsed_ms: int) -> None:
        timeout = self.config.election_timeout_ms
        active = 1 if self.id in self._voters else 0
        for p, pr in self._progress.items():
            pr.fallback_armed = True
            pr.silent_ms += elapsed_ms
            if pr.silent_ms < timeout and p in self._voters:
                active += 1
        if self.config.check_quorum and active < self._quorum:
            self._become_follower(self._term, 0)  # no majority heard for an election timeout: step down (6.2)
            # and pre-vote soon: on a busy machine the silent majority is mostly late (a stalled process), and its
            # answers to this pre-vote, waiting in its sockets, end the election when it runs again; a majority
            # that elected someone else meanwhile ignores it (lease), a partition drops it
            self._campaign_soon()
            return
        self._heartbeat_elapsed_ms += elapsed_ms
        self._election_elapsed_ms += elapsed_ms
        if self._election_elapsed_ms >= timeout:
            self._election_elapsed_ms = 0  # a leader stays "in lease": it ignores disruptive vote requests
        if self._transfer_target:
            self._transfer_elapsed_ms += elapsed_ms
            if self._transfer_elapsed_ms >= timeout:
                self._transfer_target = 0  # the target did not take over in time: abort, accept proposals
        if self._heartbeat_elapsed_ms >= self.config.heartbeat_interval_ms:
            self._heartbeat_elapsed_ms = 0
            self._forget_removed()
            for p, pr in self._progress.items():
                stalled = pr.match < pr.next - 1 and pr.match == pr.match_at_heartbeat
                if pr.state == ProgressState.REPLICATE and stalled:
                    pr.become_probe()  # no acknowledgement for a whole interval: assume a loss, resend
                elif pr.state == ProgressState.SNAPSHOT:
                    if pr.snap is None:
                        self._begin_snapshot(pr)  # none to send before: perhaps one was saved since
                    elif not pr.snap_progressed:
                        pr.resume_snapshot(stalled=True)  # no chunk acknowledged for a whole interval: resend
                    pr.snap_progressed = False
                pr.match_at_heartbeat = pr.match
                self._send_heartbeat(p, pr)

    def _tell_removed(self, m: RequestVote) -> None:
        """A node outside our configuration pre-votes: it missed its removal, or that it is committed (thesis
        4.2.3). Its log matches ours up to (last_index, last_term) when we hold that entry (log matching), so
        send it the entries after it (one bounded append; the next pre-vote gets the next one) and the commit
        they cover: once it holds its committed removal it stops campaigning. Not when its term is above ours
        (our older term would make it answer with its own and depose us), nor when we no longer hold them."""
        if m.term > self._term + 1 or self._log.term(m.last_index) != m.last_term:
            return
        if m.last_index + 1 < self._log.first_index():
            return
        cfg = self.config
        hi = min(self._log.last_index(), m.last_index + cfg.max_append_entries)
        entries = tuple(self._log.entries(m.last_index + 1, hi + 1, cfg.max_append_bytes))
        commit = min(self._commit, m.last_index + len(entries))
        self._msgs.append(AppendEntries(self.id, m.src, self._term, m.last_index, m.last_term, entries, commit))
        self.removed_told += 1

    def _forget_removed(self) -> None:
        """Stop replicating to removed members that hold the configuration removing them (or were not heard
        for an election timeout: they may be gone for good)."""
        conf = self.membership
        timeout = self.config.election_timeout_ms
        for p in [p for p, pr in self._progress.items() if p not in conf]:
            pr = self._progress[p]
            if pr.match >= self._conf_index or pr.silent_ms >= timeout:
                del self._progress[p]
                if pr.snap is not None:
                    self.snapshots_abandoned += 1
                    self._drop_snapshot_cache_if_unused()

    def _send_heartbeat(self, peer: int, pr: Progress) -> None:
        commit = min(pr.match, self._commit)
        pr.commit_sent = max(pr.commit_sent, commit)
        self._msgs.append(Heartbeat(self.id, peer, self._term, commit))

    def _step_leader(self, m: Message) -> None:
        pr = self._progress.get(m.src)
        if pr is None:
            return
        pr.silent_ms = 0
        pr.heard = True
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            if pr.state == ProgressState.PROBE:
                pr.probe_sent = False  # resume probing: the previous probe or its answer may be lost
        elif isinstance(m, SnapshotResponse):
            self._handle_snapshot_response(m, pr)
        elif isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            raise InvariantError(f"two leaders in term {self._term}: {self.id} and {m.src}")

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        if pr.state == ProgressState.SNAPSHOT:
            self._snapshot_append_response(m, pr)
            return
        if not m.success:
            if m.hint_term > 0:
                next_hint = self._log.find_conflict_by_term(m.hint_index, m.hint_term) + 1
            else:
                next_hint = m.hint_index + 1
            pr.rejected(m.index, next_hint)
            return
        if m.index > self._log.last_index():
            raise InvariantError(
                f"follower {m.src} acknowledged {m.index} beyond leader's last {self._log.last_index()}"
            )
        answers_probe = m.index >= pr.next - 1  # not an older, reordered acknowledgement
        moved = pr.acked(m.index)
        if pr.state == ProgressState.PROBE and answers_probe:
            pr.become_replicate()
        if moved:
            self._maybe_commit()
            if self._transfer_target == m.src and pr.match == self._log.last_index():
                self._send(TimeoutNow(self.id, m.src, self._term))

    def _snapshot_append_response(self, m: AppendResponse, pr: Progress) -> None:
        """An append answer from a follower we send a snapshot to. A success at or past the snapshot's index
        (the follower installed it, or held it already) ends the transfer; rejections are answers to appends
        sent before and are ignored (the snapshot will settle where the follower's log stands)."""
        if not m.success:
            return
        if m.index > self._log.last_index():
            raise InvariantError(
                f"follower {m.src} acknowledged {m.index} beyond leader's last {self._log.last_index()}"
            )
        moved = pr.acked(m.index)
        # the follower now holds what our appends can continue from: the snapshot's index, or our log start
        target = self._log.first_index() - 1
        if pr.snap is not None:
            target = min(target, pr.snap.index)
        if m.index >= target:
            if pr.snap is not None:
                self.snapshots_sent += 1
            pr.become_replicate()
            self._drop_snapshot_cache_if_unused()
        if moved:
            self._maybe_commit()

    def _handle_snapshot_response(self, m: SnapshotResponse, pr: Progress) -> None:
        """The follower holds bytes [0, received) of the snapshot at m.index (Progress.snapshot_answer)."""
        snap = pr.snap
        if snap is None or m.index != snap.index or not 0 <= m.received <= len(snap.data):
            return
        pr.snapshot_answer(m.received)

    def _begin_snapshot(self, pr: Progress) -> None:
        """The follower needs entries we no longer hold: send it our snapshot (or wait for one)."""
        cached = self._snapshot_to_send()
        if cached is None:
            pr.become_snapshot(None, 0)
            self._drop_snapshot_cache_if_unused()
            return
        pr.become_snapshot(cached[0], cached[1])

    def _snapshot_to_send(self) -> tuple[Snapshot, int] | None:
        """The newest saved snapshot that covers our log start, and its CRC32; fetched from storage once and
        shared by the transfers that start while it is the newest."""
        first = self._log.first_index()
        cached = self._snap_cache
        if cached is not None and cached[0].index >= first - 1:
            return cached
        snap = self._log.storage.snapshot()
        if snap is None or snap.index < first - 1 or snap.index > self._commit:
            return None  # a log of an older release (no snapshot), or one that does not fit our log
        held = self._log.term(snap.index)
        if held is not None and held != snap.term:
            raise InvariantError(f"saved snapshot at {snap.index} has term {snap.term}, the log {held}")
        self._snap_cache = (snap, zlib.crc32(snap.data))
        return self._snap_cache

    def _drop_snapshot_cache_if_unused(self) -> None:
        if self._snap_cache is not None and not any(pr.snap is not None for pr in self._progress.values()):
            self._snap_cache = None

    def _maybe_commit(self) -> None:
        """Commit the highest index stored on a majority, if it belongs to this leader's term (5.4.2)."""
        counted = self._counted
        matches = [pr.match for p, pr in self._progress.items() if p in counted]
        if self.id in counted:
            matches.append(self._log.stable_last())  # our own log counts once durable (thesis 10.2.1)
        if len(matches) < self._quorum:
            return
        index = quorum_index(matches, self._quorum)
        if index <= self._commit:
            return
        if index < self._leader_term_start and self._mutation != "commit_any_term":
            return  # an earlier term's entry: only committed indirectly, by one of ours after it
        self._commit_to(index)
        uncommitted = self._uncommitted
        while uncommitted and uncommitted[0][0] <= index:
            self._uncommitted_bytes -= uncommitted.popleft()[1]
        self._maybe_step_down_removed()

    def _maybe_step_down_removed(self) -> None:
        """A leader whose removal is committed hands leadership to the most caught-up voter (TimeoutNow, when
        one holds our whole log) and steps down (thesis 4.2.2): the new configuration elects a leader in about
        a round trip instead of an election timeout."""
        if self._role != Role.LEADER or self.id in self._voters or self._conf_index > self._commit:
            return
        last = self._log.last_index()
        caught_up = [p for p, pr in self._progress.items() if p in self._voters and pr.match == last]
        if caught_up:
            self._msgs.append(TimeoutNow(self.id, min(caught_up), self._term))
        for p, pr in self._progress.items():
            self._send_heartbeat(p, pr)  # tell the others the commit (their no-op leader will too)
        self.removed_steps_down += 1
        self._become_follower(self._term, 0)

    def _leader_has_sends(self) -> bool:
        last = self._log.last_index()
        for pr in self._progress.values():
            if self._window_open(pr, last) or pr.commit_sent < min(pr.match, self._commit):
                return True
            if self._snapshot_window_open(pr):
                return True
        return False

    def _snapshot_window_open(self, pr: Progress) -> bool:
        """Whether a snapshot chunk may be sent now: bytes left to send within max_inflight_bytes of
        unacknowledged ones, or an empty "are you done?" chunk wanted."""
        snap = pr.snap
        if pr.state != ProgressState.SNAPSHOT or snap is None:
            return False
        if pr.snap_ping:
            return True
        window = self.config.snapshot_chunk_bytes if pr.snap_stalled else self.config.max_inflight_bytes
        return pr.snap_sent < len(snap.data) and pr.snap_sent - pr.snap_acked < window

    def _send_snapshot_chunk(self, peer: int, pr: Progress) -> bool:
        """Send the next chunk of the follower's snapshot if its window allows; returns whether one was sent."""
        if not self._snapshot_window_open(pr):
            return False
        snap = pr.snap
        assert snap is not None
        total = len(snap.data)
        offset = pr.snap_sent
        if offset >= total or pr.snap_ping:
            pr.snap_ping = False
            data = b""  # "how much do you hold?"
        else:
            window = self.config.snapshot_chunk_bytes if pr.snap_stalled else self.config.max_inflight_bytes
            room = window - (offset - pr.snap_acked)
            size = min(self.config.snapshot_chunk_bytes, total - offset, room)
            data = snap.data[offset : offset + size]
            pr.snap_sent = offset + size
        self._msgs.append(
            InstallSnapshot(
                self.id, peer, self._term, snap.index, snap.term, total, pr.snap_crc, offset, data, snap.config
            )
        )
        return True

    def _window_open(self, pr: Progress, last: int) -> bool:
        """Whether the follower's state and flow-control window allow sending it an append now."""
        if pr.state == ProgressState.REPLICATE:
            return (
                pr.next <= last
                and pr.next - 1 - pr.match < self.config.max_inflight_entries
                and pr.inflight_bytes < self.config.max_inflight_bytes
            )
        return pr.state == ProgressState.PROBE and not pr.probe_sent

    def _flush_leader_sends(self) -> None:
        """Send what each follower's window allows (coalescing everything proposed since the last Ready),
        and tell followers that got no append about a commit advance."""
        last = self._log.last_index()
        for peer, pr in self._progress.items():
            sent = False
            while self._send_append(peer, pr, last):
                sent = True
            while self._send_snapshot_chunk(peer, pr):
                sent = True
            if not sent and pr.commit_sent < min(pr.match, self._commit):
                self._send_heartbeat(peer, pr)

    def _send_append(self, peer: int, pr: Progress, last: int) -> bool:
        """Send one AppendEntries if the follower's state and window allow; returns whether one was sent."""
        cfg = self.config
        if not self._window_open(pr, last):
            return False
        if pr.state == ProgressState.REPLICATE:
            room_entries = cfg.max_inflight_entries - (pr.next - 1 - pr.match)
            room_bytes = cfg.max_inflight_bytes - pr.inflight_bytes
        else:
            room_entries, room_bytes = cfg.max_append_entries, cfg.max_append_bytes
        prev_index = pr.next - 1
        prev_term = self._log.term(prev_index)
        if prev_term is None or pr.next < self._log.first_index():
            self._begin_snapshot(pr)  # the follower needs entries we no longer hold
            return False
        count = min(last - prev_index, cfg.max_append_entries, room_entries)
        entries = self._log.entries(pr.next, pr.next + count, min(cfg.max_append_bytes, room_bytes)) if count else []
        nbytes = 0
        for e in entries:
            nbytes += len(e.data)
        commit = self._commit
        pr.commit_sent = max(pr.commit_sent, min(commit, prev_index + len(entries)))
        self._msgs.append(AppendEntries(self.id, peer, self._term, prev_index, prev_term, tuple(entries), commit))
        if entries:
            pr.sent(entries[-1].index, nbytes)
        else:
            pr.probe_sent = True
        return pr.state == ProgressState.REPLICATE
