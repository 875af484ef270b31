"""The raft worker: drives the Raft core, owns the RocksDB log and the dedup table, speaks the consensus
channel itself and the data channel through the sender.

Each loop: take peer messages (consensus sockets, R4 from the sender) and step them; on the leader take
the frames the batcher cut (R2), drop events the dedup table refuses, stamp each frame with its term and
log position and propose it; tick; then act on the core's Ready through the shared driver
(shmraft.raft.driver, the same ordering code the simulator runs), persisting everything pending in one
RocksDB write (group commit: one fsync for all entries and the hard state gathered since the previous loop).
This worker supplies only the driver's I/O: sockets and the sender ring, the RocksDB write, the clock; it
applies committed entries itself. Ingest hears what it needs through R5.

Storage faults (docs/DESIGN.md "Storage faults"). The log is opened through `open_node_log`, which verifies
it and quarantines a corrupt one (the node then starts empty in recovering mode, from its preserved term).
When a write or read fails for lack of space or another I/O error, or finds corruption, the worker drops
its core and storage (as leader this steps down; as follower nothing it could not persist is acknowledged:
the persist-then-send order of the Ready is simply cut short), publishes the reason in the state block
(`storage_fault`), refuses frames and ignores peers, and retries opening every `storage_retry_interval_ms`;
on success it rebuilds core and dedup table from the log, exactly as after a restart. It never exits for
these faults, so a full disk does not burn the supervisor's restart budget.

Snapshots (docs/DESIGN.md "Snapshots"). Between loop iterations the worker saves the dedup table as it
stands at the commit index (node/snapshot.py), every SNAPSHOT_INTERVAL_ENTRIES committed entries, every
SNAPSHOT_INTERVAL_S, or when retention waits for one; the table's columns are built a slice at a time from a
frozen view, and the rate is bounded by the measured cost. At start the table is the saved snapshot's plus
the replay of the entries after it; retention never deletes past the saved snapshot.

InstallSnapshot. As leader the core reads `storage.snapshot()` (the saved snapshot) and sends it in chunks on
the data channel (through R3 and the sender, like appends; `snapshot_chunk_bytes_for` keeps a chunk within
a ring record and a peer message). As follower, a Ready with a snapshot is persisted by `_install_snapshot`:
the record is decoded and its dedup table built first (a record this node cannot read is refused: logged,
counted, nothing written, and the core rebuilt from the unchanged log so no acknowledgement leaves), then
one synced RocksDB write replaces the log (NodeLog.install_snapshot), then the table replaces the worker's.
The leader's view of each follower (state, entries behind, snapshot bytes sent/acknowledged/total) is
published in the state block's peer records for `status` and the metrics.
"""

from __future__ import annotations

import os
import random
import selectors
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np

from shmraft.constants import HEARTBEAT_INTERVAL_MS, SNAPSHOT_CHUNK_BYTES_MAX
from shmraft.ipc.ring import record_max_for
from shmraft.ipc.state import PEERS_MAX, PeerState, StorageFault, Worker
from shmraft.ipc.trace import RaftTrace
from shmraft.net.links import PeerLinks, PeerSecurity
from shmraft.node import dedup as dd
from shmraft.node import members as mb
from shmraft.node import snapshot as sn
from shmraft.node.layout import Ring
from shmraft.node.records import (
    PEER_RECORD_HEADER_BYTES,
    ChangeRequest,
    Note,
    NoteKind,
    PeerRecordKind,
    RequestKind,
    decode_change_request,
    decode_peer_record,
    encode_note,
    encode_peer_record,
    request_kind,
)
from shmraft.raft.config import RaftConfig
from shmraft.raft.core import RaftCore, StartConfigs
from shmraft.raft.driver import ReadyDriver
from shmraft.raft.errors import NotLeaderError, ProposalError
from shmraft.raft.membership import (
    AddressInUseError,
    AlreadyMemberError,
    ChangeInProgressError,
    ClusterConfig,
    ConfChange,
    ConfChangeError,
    MemberRole,
    NotCaughtUpError,
    QuorumNotActiveError,
    TooManyVotersError,
    UnknownMemberError,
    WouldLoseQuorumError,
    encode_membership,
)
from shmraft.raft.membership import Member as RaftMember
from shmraft.raft.messages import AppendEntries, Channel, Heartbeat, Message
from shmraft.raft.ready import Ready
from shmraft.raft.types import Entry, HardState, Snapshot
from shmraft.raft.types import Role as StateRole
from shmraft.storage.nodelog import HardStateLostError, NodeLog, is_disk_full, open_node_log
from shmraft.storage.rocks import (
    CorruptLogError,
    FsyncPolicy,
    LogOrderError,
    SavedSnapshot,
    StorageError,
    StorageIOError,
)
from shmraft.wire import client as cp
from shmraft.wire.control import decode_control, is_control
from shmraft.wire.errors import ProtocolError
from shmraft.wire.frame import decode_batch, encode_batch_arrays, frame_event_count, restamp
from shmraft.wire.raft_codec import INSTALL_SNAPSHOT_OVERHEAD_BYTES, decode_raft, encode_raft
from shmraft.workers.base import Inbox, LoopSelector, WorkerBase, selector_loop_once
from shmraft.workers.looptime import LoopTimer, StallDiscountingClock
from shmraft.workers.raft_groups import GroupRebuild, GroupService
from shmraft.workers.replay import replay_log
from shmraft.workers.walsync import WalSyncer

TICK_MS: Final = 5  # the loop wakes at least this often to advance the core's clock
# one loop iteration advances the core's timers by at most this (StallDiscountingClock): a stall of this
# process (descheduled, a long fsync) is not taken for its peers' silence
TIMER_STEP_MAX_MS: Final = HEARTBEAT_INTERVAL_MS
FRAMES_PER_LOOP_MAX: Final = 512  # frames proposed per loop before the Ready is acted on
RING_PUSH_TIMEOUT_MS: Final = 50
# An AppendEntries up to this size to a follower that has acknowledged everything before it goes on the consensus
# link straight from this worker instead of through R3, the sender and the follower's R4 (two process hand-offs
# fewer each way: the one-in-flight path); anything larger, or behind unacknowledged appends, takes the data channel
DIRECT_APPEND_BYTES_MAX: Final = 16 * 1024
DECODED_CACHE_MAX: Final = 8192  # entries' producer tables kept between receipt and persist
STORAGE_FAULT_LOG_INTERVAL_MS: Final = 10_000  # a persisting storage fault is logged again this often
SNAPSHOT_INTERVAL_ENTRIES: Final = 10_000  # committed entries between snapshots: a restart replays fewer
SNAPSHOT_INTERVAL_S: Final = 30.0  # ... or this long, if anything was committed since the last one
SNAPSHOT_GAP_MIN_S: Final = 0.5  # never two snapshots closer than this
SNAPSHOT_COST_FACTOR: Final = 20  # nor closer than 20 x the last one's cost: at most 5% of the worker's time
SNAPSHOT_CHECK_INTERVAL_S: Final = 0.1  # whether a snapshot is due is asked at most this often
PEERS_PUBLISH_INTERVAL_S: Final = 0.2  # the leader's view of its followers goes to the state block this often


class RaftWorker(WorkerBase):
    kind = Worker.RAFT

    def __init__(self, config) -> None:
        self._started_at = time.monotonic()  # the worker's start, for the start-up phase lines
        super().__init__(config)
        c = config
        self._ready_at = 0.0  # when the first open of the log finished (0: not yet)
        self._first_leader_logged = False  # the start-up line for the first leader known is written once
        self._notes: list[bytes] = []
        # None while the storage is unusable (disk full, I/O error, refused start): see _storage_failed
        self.storage: NodeLog | None = None
        self.core: RaftCore | None = None
        self.driver: ReadyDriver | None = None
        self.dedup = dd.DedupTable(producers_max=c.dedup_producers_max)
        self.groups = GroupService(self.log)  # consumer groups' positions (workers/raft_groups.py)
        self._export_groups = None  # the groups table at the index of the snapshot being built
        # producer tables of entries received and validated, until they are persisted (bounded: cleared
        # when it grows past DECODED_CACHE_MAX, e.g. after appends that were rejected)
        self._decoded: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._fault = StorageFault.OK
        self._fault_logged_ms = 0.0
        self._retry_at = 0.0  # monotonic time of the next attempt to reopen the storage; inf = never
        self._verified = False  # the check on open is done once per process (reopens after ENOSPC skip it)
        self._scan_all = False  # corruption met while running: the next open scans the whole log, not the tail
        self._export: dd.StateExport | None = None  # a snapshot being built (between loop iterations)
        self._export_term = 0  # the term of the entry it is taken at
        self._export_seconds = 0.0  # time spent building it so far
        self._snapshot_at = time.monotonic()  # when the last snapshot was saved (or the worker started)
        self._snapshot_check_at = 0.0  # the next time to ask whether a snapshot is due
        self._peers_at = 0.0  # the next time to publish the leader's view of its followers
        self._sent_seen = 0  # core.snapshots_sent already added to the state block (per core instance)
        # membership changes asked through ingest (R6) and proposed here: log index -> (request id, term)
        self._pending_changes: dict[int, tuple[int, int]] = {}
        self._view = mb.static_view(config)  # the configuration in effect, as published (members file)
        self._former = mb.FormerMembers(
            config.former_member_linger_ms / 1000
        )  # removed members still linked for a while (they learn their removal)
        self.links: PeerLinks | None = None
        self._timer = LoopTimer()  # where each loop iteration's time goes; slow ones are logged
        # the persist thread (workers/walsync.py): fsyncs off the loop thread; its wake-ups come on a pipe
        self._syncer: WalSyncer | None = None
        self._unsynced: deque[tuple[list[Entry], int, int]] = deque()  # (entries, last index after, t0 ns)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._open_storage()
        self.sel = LoopSelector()
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self.links = PeerLinks(
            self.sel,
            cluster_id=c.cluster_id,
            node_id=c.node_id,
            channel=Channel.CONSENSUS,
            bind=(c.bind_host, c.me.raft_port),
            peers=mb.peer_addresses(c, self._view, "raft"),
            on_message=self._on_control,
            on_disconnect=self._peer_disconnected,
            body_max_bytes=c.peer_message_bytes_max,
            security=PeerSecurity.from_config(c),
            inbound_max=c.peer_inbound_connections_max,
            handshake_timeout_ms=c.peer_handshake_timeout_ms,
            admit_non_members=True,  # a removed node back after the linger learns its removal (net/links.py)
        )
        self.frames_in = Inbox(self.layout.reader(Ring.R2), Ring.R2, self.sel)
        self.peer_in = Inbox(self.layout.reader(Ring.R4), Ring.R4, self.sel)
        self.to_sender = self.layout.writer(Ring.R3)
        self.to_ingest = self.layout.writer(Ring.R5)
        # control requests (membership, groups)
        self.requests_in = Inbox(self.layout.reader(Ring.R6), Ring.R6, self.sel)
        self.trace = RaftTrace(self.state.trace, config.trace_sample_every)
        self._refusals_counted = 0
        # heartbeats (the leader's commit advances among them) leave at the end of the loop pass, after the
        # COMMIT note went to ingest: the followers they wake then do not compete for a core with the answer
        self._held_heartbeats: list[tuple[int, bytes]] = []
        # the supervisor's asks to hand leadership over (state block `stall_transfer_asks`): those made before
        # this process started are not this process's to act on
        self._stall_asks_seen = self.state.get("stall_transfer_asks")
        self._publish_state()

    # --- storage: open, fail, retry ------------------------------------------------------------------------

    def _open_storage(self) -> bool:
        """Open (verify, maybe quarantine) the log and build core and dedup table from it. On failure the
        worker stays up without a core, with the reason published, and retries later."""
        c = self.config
        t_open = time.monotonic()
        try:
            nl = open_node_log(
                c.node_dir,
                fsync=c.fsync,
                retain_entries_max=c.retain_entries_max,
                retain_bytes_max=c.retain_bytes_max,
                verify=not self._verified,
                full_scan=self._scan_all,
                progress=self.beat,
                decode_snapshot=_decode_saved_snapshot,
            )
        except HardStateLostError as exc:
            self._retry_at = float("inf")  # the operator must act (the message says how): no retry
            self._set_fault(StorageFault.HARD_STATE_LOST, str(exc))
            return False
        except StorageError as exc:
            self._retry_at = time.monotonic() + c.storage_retry_interval_ms / 1000
            self._set_fault(StorageFault.DISK_FULL if is_disk_full(exc) else StorageFault.IO_ERROR, str(exc))
            return False
        self._verified = True
        self._scan_all = False
        if nl.quarantined is not None:
            self.state.add("quarantines")
            self.log.error(
                "CORRUPT LOG detected and quarantined to %s (%s); re-fetching the log from the other "
                "nodes in recovering mode (no votes until caught up)",
                nl.quarantined,
                nl.corruption,
            )
        hs = nl.hard_state()
        first = nl.first_index()
        applied = max(min(hs.commit, nl.last_index()), first - 1, nl.snapshot_index())
        self.storage = nl
        t_replay = time.monotonic()
        try:  # reads below the verified mark meet damage the open check skipped: full check, as when running
            # the entries after the snapshot, read once for the core's configurations, dedup and groups
            bootstrap = bootstrap_config(c)
            configs = StartConfigs(nl, bootstrap)
            dedup = DedupRebuild(nl, c.dedup_producers_max)
            groups = GroupRebuild(nl)
            replayed = replay_log(nl, (configs, dedup, groups), self.beat)
            self.dedup = dedup.table()
            table, end_offset = groups.result(self.beat)
            self.groups.install(table, table.index, end_offset)
            t_core = time.monotonic()
            self.core = RaftCore(
                c.node_id,
                bootstrap,
                nl,
                RaftConfig.from_node_config(c, snapshot_chunk_bytes=snapshot_chunk_bytes_for(c)),
                random.Random(int.from_bytes(os.urandom(8), "little")),
                applied=applied,
                recovery_term=nl.recovery_term,
                start_configs=configs,
            )
            clock = StallDiscountingClock(_monotonic_ms, TIMER_STEP_MAX_MS)
            self.driver = ReadyDriver(self.core, self._send, self._persist, clock)
            if nl.rocks.fsync is FsyncPolicy.ALWAYS:
                self._syncer = WalSyncer(nl.sync_wal, self._wake_w, f"wal-sync-{c.node_id}")
            self._sent_seen = 0
            self._decoded.clear()
            self._export = None
        except (StorageIOError, CorruptLogError) as exc:
            self._storage_failed(exc)
            return False
        self._publish_membership()
        if self._fault != StorageFault.OK:
            self.log.warning(
                "storage usable again after %s: log [%d..%d], term %d, rejoining the cluster",
                self._fault.name.lower(),
                first,
                nl.last_index(),
                hs.term,
            )
        self._set_fault(StorageFault.OK, "")
        self._check_recovery()
        if not self._ready_at:
            self._ready_at = time.monotonic()
            self._log_open_phases(nl, t_open, t_replay, t_core, replayed)
        self.state.set("last_index", self.core.last_index)
        self.state.set("first_index", self.core.first_index)
        self.state.set("commit_index", self.core.commit_index)
        return True

    def _storage_failed(self, exc: StorageError) -> None:
        """A write or read failed: drop core and storage (nothing unpersisted is counted or acknowledged),
        step down, say why, and retry opening later (at once for corruption: the open check quarantines)."""
        was_leader = self.core is not None and self.core.role == StateRole.LEADER
        if isinstance(exc, CorruptLogError):
            fault, delay_ms = StorageFault.CORRUPT, 0
        else:
            fault = StorageFault.DISK_FULL if is_disk_full(exc) else StorageFault.IO_ERROR
            delay_ms = self.config.storage_retry_interval_ms
        self.state.add("storage_errors")
        self._stop_syncer()
        if self.storage is not None:
            self.storage.close()
        self.storage = None
        self.core = None
        self.driver = None
        self._decoded.clear()
        if fault == StorageFault.CORRUPT:
            self._verified = False  # the reopen must run the full check, which quarantines the log
            self._scan_all = True
        self._retry_at = time.monotonic() + delay_ms / 1000
        self._set_fault(fault, f"{exc}{' (stepped down as leader)' if was_leader else ''}")
        self._publish_state()
        self._notes.append(encode_note(Note(NoteKind.LEADER, self.state.get("term"), 0)))

    def _set_fault(self, fault: StorageFault, detail: str) -> None:
        """Publish the storage fault; log it when it changes and then every STORAGE_FAULT_LOG_INTERVAL_MS."""
        now_ms = time.monotonic() * 1000
        changed = fault != self._fault
        if fault != StorageFault.OK and (changed or now_ms - self._fault_logged_ms >= STORAGE_FAULT_LOG_INTERVAL_MS):
            what = {
                StorageFault.DISK_FULL: "DISK FULL",
                StorageFault.IO_ERROR: "STORAGE I/O ERROR",
                StorageFault.CORRUPT: "CORRUPT LOG",
                StorageFault.HARD_STATE_LOST: "REFUSING TO START",
            }[fault]
            retry = (
                "" if self._retry_at == float("inf") else f"; retrying every {self.config.storage_retry_interval_ms} ms"
            )
            self.log.error("%s: not serving (no proposals, no acknowledgements, no votes): %s%s", what, detail, retry)
            self._fault_logged_ms = now_ms
        if changed:
            self.state.set("storage_fault", int(fault))
            self.state.set("storage_fault_since_unix_ms", 0 if fault == StorageFault.OK else int(time.time() * 1000))
        self._fault = fault

    def _check_recovery(self) -> None:
        """Persist the end of recovering mode once the core left it; publish the mode."""
        core, nl = self.core, self.storage
        if core is None or nl is None:
            return
        if nl.recovery_term and not core.recovering:
            nl.end_recovery()
            self.log.warning(
                "recovery complete: caught up to the leader at index %d (term %d); voting again",
                core.commit_index,
                core.term,
            )
        self.state.set("recovering", int(core.recovering))

    # --- start-up ------------------------------------------------------------------------------------------

    def _log_open_phases(self, nl: NodeLog, t_open: float, t_replay: float, t_core: float, replayed: int) -> None:
        """One line with where the first open of the log went, in seconds (docs/DESIGN.md "Start-up")."""
        check = nl.open_check
        snap = nl.snapshot_record
        self.log.info(
            "start-up phases: worker to open %.3f s, open_node_log %.3f s (check %.3f s, %d entries, %s), "
            "one read of %d entries for configurations, dedup and groups %.3f s (%d entries after the snapshot "
            "at %s), core %.3f s, log ready %.3f s after the worker's start",
            t_open - self._started_at,
            t_replay - t_open,
            check.seconds,
            check.entries_verified,
            f"full scan: {check.reason}" if check.full_scan else "from the verified mark",
            replayed,
            t_core - t_replay,
            nl.last_index() - (snap.index if snap is not None else nl.first_index() - 1),
            snap.index if snap is not None else "none",
            self._ready_at - t_core,
            self._ready_at - self._started_at,
        )

    def _record_dedup(self, e: Entry, commit: int) -> None:
        if e.index <= self.dedup.last_index:
            return
        if e.data and not is_control(e.data):
            cached = self._decoded.pop(e.index, None)
            if cached is not None and cached[0] == e.term:
                pids, seqs = cached[1], cached[2]
            else:
                b = decode_batch(e.data)
                pids, seqs = b.producer_ids, b.sequences
            self.dedup.record(e.index, pids, seqs, commit)
        else:
            self.dedup.record(e.index, _EMPTY, _EMPTY, commit)

    # --- snapshots -----------------------------------------------------------------------------------------

    def _snapshot_step(self) -> None:
        """Between loop iterations: start a snapshot when one is due, or build one more slice of the one in
        progress, and save it once built (one RocksDB write with the compaction it allows)."""
        nl = self.storage
        if nl is None:
            return
        now = time.monotonic()
        if self._export is None:
            if now < self._snapshot_check_at:
                return
            self._snapshot_check_at = now + SNAPSHOT_CHECK_INTERVAL_S
            at = min(self.dedup.commit_index, self.dedup.last_index)
            saved = nl.saved_snapshot_index()
            if at <= (saved or 0) or at > nl.hard_state().commit:  # nothing new, or its commit not yet persisted
                return
            due = (
                saved is None
                or at - saved >= SNAPSHOT_INTERVAL_ENTRIES
                or now - self._snapshot_at >= SNAPSHOT_INTERVAL_S
                or nl.compaction_wanted()
            )
            term = nl.term_at(at) if due else None
            if term is None:  # not due (or below the log start: cannot happen, the log holds all after it)
                return
            if self.groups.table.index != at:  # applied in step with the dedup table's commit: try again later
                self.log.debug("snapshot at %d waits: groups applied to %d", at, self.groups.table.index)
                return
            self._export = self.dedup.committed_view()
            self._export_groups = self.groups.table.copy()
            self._export_term = term
            self._export_seconds = time.monotonic() - now
            return
        export = self._export
        if not export.step():
            self._export_seconds += time.monotonic() - now
            return
        t = self.dedup
        try:
            configuration = encode_membership(self.core.membership_at(export.index)) if self.core else b""
        except ValueError:  # older than what the core still knows: cannot happen below the commit index
            configuration = b""
        record = sn.Snapshot(
            export.index,
            self._export_term,
            export.result(),
            t.producers_max,
            t.horizon_entries,
            t.spans_max,
            configuration,
            groups=self._export_groups,
        )
        data = sn.encode_snapshot(record)
        self._export = None
        try:
            nl.save_snapshot(SavedSnapshot(record.index, record.term, data))
        except LogOrderError as exc:  # a bug, not a fault of the disk: keep serving, say it, try again later
            self.log.error("snapshot at %d not saved: %s", record.index, exc)
            return
        nl.snapshot_record = record  # NodeLog.snapshot() takes the configuration from it
        done = time.monotonic()
        cost = self._export_seconds + done - now
        self._snapshot_at = done
        self._snapshot_check_at = done + max(SNAPSHOT_GAP_MIN_S, SNAPSHOT_COST_FACTOR * cost)
        self.state.set("first_index", nl.first_index())
        self.log.debug(
            "snapshot at %d saved: %d producers, %d bytes, %.1f ms; log now starts at %d",
            record.index,
            len(record.table.producer_ids),
            len(data),
            cost * 1000,
            nl.first_index(),
        )

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            timer = self._timer
            while not self.stopping:
                self.beat()
                timer.begin(time.monotonic(), TICK_MS / 1000)
                selector_loop_once(self.sel, TICK_MS / 1000)
                if self._former.expire(time.monotonic()):
                    self._set_link_peers()
                timer.mark("wait+sockets", time.monotonic())
                self.links.maintain()
                if self.links.refusals != self._refusals_counted:  # strangers refused (metrics)
                    self.state.add("peer_refusals", self.links.refusals - self._refusals_counted)
                    self._refusals_counted = self.links.refusals
                try:
                    self._iterate()
                    self._flush_notes()  # commits to ingest first: what follows can wait
                    if self.storage is not None:
                        self.storage.persist_mark_if_due()  # the next start checks only what follows
                        self.storage.write_deferred_if_due()
                        self._snapshot_step()
                        timer.mark("snapshot", time.monotonic())
                except (StorageIOError, CorruptLogError) as exc:
                    self._storage_failed(exc)
                self._flush_notes()
                self._send_held_heartbeats()
                if (line := timer.end(time.monotonic())) is not None:
                    self.log.info("%s", line)
            if self.core is not None:
                try:
                    self._hand_over()
                except (StorageIOError, CorruptLogError) as exc:
                    self.log.warning("no leadership hand-over: %s", exc)
        finally:
            self.frames_in.close()
            self.peer_in.close()
            self.requests_in.close()
            self.links.close()
            self._stop_syncer()
            if self.storage is not None:
                self.storage.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _iterate(self) -> None:
        """One loop iteration after the sockets: peer records, proposals, tick, Readies."""
        if self.core is None:  # storage unusable: refuse everything, retry opening when due
            self.peer_in.take()
            self._control_requests()
            frames = self.frames_in.take()
            if frames:
                self._refuse_frames(frames)
            if time.monotonic() >= self._retry_at and self._open_storage():
                self._publish_state()
                return
            if self._fault != StorageFault.OK:
                self._set_fault(self._fault, "still failing")  # rate-limited reminder
            return
        timer = self._timer
        for rec in self.peer_in.take():
            self._on_data_record(rec)
        timer.mark("peer records", time.monotonic())
        frames = self.frames_in.take()
        if frames:
            self._propose(frames)
            timer.mark(f"propose {len(frames)} frames", time.monotonic())
        self._control_requests()
        self._stall_transfer_asked()
        if self.core is None or self.driver is None:
            return
        self._collect_synced()
        self.driver.tick()
        while self.core is not None and self.core.has_ready():
            self._handle_ready(self.core.ready())
        timer.mark("ready+persist", time.monotonic())
        self._check_recovery()
        self._publish_peers()

    def _hand_over(self) -> None:
        """On a clean stop, a leader hands leadership to the most caught-up follower (bounded wait)."""
        if self.core.role != StateRole.LEADER or not self.core.peers:
            return
        try:
            self.core.transfer_leadership()
        except (ProposalError, ValueError):
            return
        deadline = time.monotonic() + self.config.election_timeout_ms / 1000
        while time.monotonic() < deadline and self.core.role == StateRole.LEADER:
            selector_loop_once(self.sel, TICK_MS / 1000)
            for rec in self.peer_in.take():
                self._on_data_record(rec)
            self._collect_synced()
            self.driver.tick()
            while self.core.has_ready():
                self._handle_ready(self.core.ready())
            self._send_held_heartbeats()
        self.log.info("leadership handed over: role now %s, leader %d", self.core.role.name, self.core.leader)

    def _stall_transfer_asked(self) -> None:
        """The supervisor saw this leader's ingest or batcher stalled (supervisor/stepaside.py) and bumped
        `stall_transfer_asks`: hand leadership to the most caught-up follower, if still the leader of the term it
        saw. One state read per loop when nothing is asked."""
        asks = self.state.get("stall_transfer_asks")
        if asks == self._stall_asks_seen:
            return
        self._stall_asks_seen = asks
        core = self.core
        term = self.state.get("stall_transfer_term")
        worker = Worker(self.state.get("stall_transfer_worker")).name.lower()
        stalled_ms = self.state.get("stall_transfer_stalled_ms")
        if core is None or core.role != StateRole.LEADER or core.term != term:
            self.log.info(
                "no leadership transfer for the %s worker stalled %d ms: no longer the leader of term %d",
                worker,
                stalled_ms,
                term,
            )
            return
        try:
            target = core.transfer_leadership()
        except (ProposalError, ValueError) as exc:
            self.log.warning(
                "%s worker stalled %d ms while leader: no leadership transfer: %s", worker, stalled_ms, exc
            )
            return
        self.state.add("leader_stall_transfers")
        self.state.set("stall_transfer_target", target)
        self.log.warning(
            "%s worker stalled %d ms while leader of term %d: handing leadership to node %d",
            worker,
            stalled_ms,
            term,
            target,
        )

    # --- inputs --------------------------------------------------------------------------------------------

    def _on_control(self, peer_id: int, body: memoryview) -> None:
        try:
            self._step(peer_id, body, direct=True)
        except (StorageIOError, CorruptLogError) as exc:  # called from the selector, outside _iterate
            self._storage_failed(exc)

    def _peer_disconnected(self, peer_id: int) -> None:
        if self.core is not None:
            self.core.peer_disconnected(peer_id)

    def _data_disconnected(self, peer_id: int) -> None:
        """The sender lost its data connection to `peer_id`. A leader resends to it (the core is told). A
        follower tells the core (which then pre-votes at once if `peer_id` led) only when our consensus link to
        that peer is down too: a leader whose sender worker died (and is being restarted) still runs its core
        and sends heartbeats on the consensus channel, and an election would only cost a leader change. When
        the whole node is gone the consensus link drops as well and says so itself; meanwhile the election
        timeout still covers a leader that went silent."""
        if self.core is None:
            return
        if self.core.role != StateRole.LEADER and self.links.connected(peer_id):
            return
        self.core.peer_disconnected(peer_id)

    def _on_data_record(self, rec: bytes) -> None:
        peer_id, kind, body = decode_peer_record(rec)
        if kind is PeerRecordKind.DISCONNECTED:
            self._data_disconnected(peer_id)
        else:
            self._step(peer_id, body)

    def _step(self, peer_id: int, body: memoryview, direct: bool = False) -> None:
        """Decode and step one peer message; `direct`: it came on the consensus link (a small append may)."""
        if self.core is None:
            return  # storage unusable: the peer hears nothing from us (no acknowledgement, no vote)
        try:
            m = decode_raft(body, expect_dst=self.config.node_id)
            if m.src != peer_id:
                raise ProtocolError("src", f"node {peer_id} (the connection's)", m.src)
            self.trace.stepped(m, direct)
            for e in getattr(m, "entries", ()):
                if not e.data:
                    continue
                if is_control(e.data):
                    decode_control(e.data)  # never persist a control entry that does not validate
                    continue
                b = decode_batch(e.data)  # never persist a frame that does not validate
                self._decoded[e.index] = (e.term, b.producer_ids, b.sequences)
        except ProtocolError as exc:
            self.state.add("peer_errors")
            self.log.warning("message from node %d refused: %s", peer_id, exc)
            return
        self.core.step(m)

    def _propose(self, frames: list[bytes]) -> None:
        """Dedup-check everything drained at once, then stamp and propose frame by frame, in order."""
        if self.core.role != StateRole.LEADER or self.core.transfer_target:
            self._refuse_frames(frames)
            return
        self.trace.frames_taken()
        batches = [decode_batch(raw) for raw in frames]
        all_pids = np.concatenate([b.producer_ids for b in batches])
        all_seqs = np.concatenate([b.sequences for b in batches])
        verdict, known = self.dedup.classify(all_pids, all_seqs)
        refused = verdict != dd.Verdict.ACCEPT
        if refused.any():
            self._notes.append(
                encode_note(
                    Note(
                        NoteKind.VERDICTS,
                        producer_ids=all_pids[refused],
                        sequences=all_seqs[refused],
                        verdicts=verdict[refused],
                        offsets=known[refused],
                    )
                )
            )
            self.state.add("dedup_hits", int((verdict == dd.Verdict.DUPLICATE).sum()))
        note_pids, note_seqs, note_offsets = [], [], []
        start = 0
        for i, (raw, b) in enumerate(zip(frames, batches, strict=True)):
            n = b.header.event_count
            accepted = ~refused[start : start + n]
            start += n
            pids, seqs = b.producer_ids, b.sequences
            if not accepted.all():
                if not accepted.any():
                    continue
                keep = np.flatnonzero(accepted)
                data = [bytes(b.data[int(b.offsets[k]) : int(b.offsets[k] + b.lengths[k])]) for k in keep.tolist()]
                raw = encode_batch_arrays(
                    b.lengths[keep],
                    data,
                    batch_id=b.header.batch_id,
                    producer_ids=pids[keep],
                    sequences=seqs[keep],
                    timestamp_us=b.header.timestamp_us,
                )
                pids, seqs = pids[keep], seqs[keep]
            frame = bytearray(raw)
            prev_index, prev_term = self.core.last_index, self.core.last_term
            restamp(frame, term=self.core.term, prev_index=prev_index, prev_term=prev_term)
            try:
                index = self.core.propose(bytes(frame))
            except ProposalError as exc:
                self.log.debug("proposal refused: %s", exc)
                self._refuse_frames(frames[i:])
                break
            assert index == prev_index + 1, (index, prev_index)
            self.trace.proposed(b.header.batch_id, index)
            self.dedup.record(index, pids, seqs, self.core.commit_index)
            note_pids.append(pids)
            note_seqs.append(seqs)
            note_offsets.append(dd.event_offset(index, 0) + np.arange(pids.size, dtype=np.int64))
        if note_pids:
            pids = np.concatenate(note_pids)
            self._notes.append(
                encode_note(
                    Note(
                        NoteKind.APPENDED,
                        producer_ids=pids,
                        sequences=np.concatenate(note_seqs),
                        offsets=np.concatenate(note_offsets),
                    )
                )
            )
            self.state.add("events_in", int(pids.size))

    def _refuse_frames(self, frames: list[bytes]) -> None:
        """Frames that cannot be proposed here: ingest answers their producers NOT_LEADER / UNAVAILABLE."""
        for raw in frames:
            b = decode_batch(raw)
            n = b.header.event_count
            self._notes.append(
                encode_note(
                    Note(
                        NoteKind.VERDICTS,
                        producer_ids=b.producer_ids,
                        sequences=b.sequences,
                        verdicts=np.full(n, dd.Verdict.NOT_PROPOSED, np.uint8),
                        offsets=np.full(n, -1, np.int64),
                    )
                )
            )

    # --- Ready ---------------------------------------------------------------------------------------------

    def _handle_ready(self, rd: Ready) -> None:
        """Sends, persist and acknowledgements in the driver's order; then what this node does with it."""
        try:
            self.driver.handle(rd)
        except SnapshotRefused as exc:
            self._snapshot_refused(exc)
            return
        if rd.membership is not None:
            self._publish_membership()
        if rd.committed_entries:
            self._on_committed(rd.committed_entries)
            self.groups.on_committed(rd.committed_entries, self._notes)
        if rd.soft_state is not None:
            if rd.soft_state.role != StateRole.LEADER:
                self._fail_pending_changes("leadership was lost before the change was committed")
            self.groups.leadership_changed()
            self._publish_state()
            self._notes.append(encode_note(Note(NoteKind.LEADER, rd.soft_state.term, rd.soft_state.leader)))
        self.state.set("last_index", self.core.last_index)
        self.state.set("first_index", self.core.first_index)

    def _persist(self, entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None = None) -> bool:
        """The driver's write: entries and hard state in one synchronous RocksDB write (durable on return),
        keeping the dedup table in step with the log; or the install of a leader's snapshot."""
        if snapshot is not None:
            assert hard_state is not None and not entries, "a Ready with a snapshot has a hard state, no entries"
            self._install_snapshot(snapshot, hard_state)
            return True
        durable = True
        if entries:
            first = entries[0].index
            if first <= self.dedup.last_index and self.core.role != StateRole.LEADER:
                self.dedup.truncate(first)
            self._timer.mark("ready", time.monotonic())
            t0 = time.perf_counter_ns()
            self.trace.persisting(entries)
            if self._syncer is None:  # fsync "never": the write is all there is
                self.storage.append(entries, hard_state)
                self.trace.persisted(entries)
                self.state.add("fsyncs")
                self.state.add("fsync_ns", time.perf_counter_ns() - t0)
            else:  # written now, fsynced by the persist thread; durable when `_collect_synced` says so
                self.storage.append(entries, hard_state, sync=False)
                self._submit_sync(entries, t0)
                durable = False
            self._timer.mark(f"write {len(entries)} entries", time.monotonic())
            for e in entries:
                self._record_dedup(e, self.core.commit_index)
        elif hard_state is not None:
            hs = self.storage.hard_state()
            if self._syncer is not None and (hard_state.term, hard_state.vote) != (hs.term, hs.vote):
                self.storage.set_hard_state(hard_state, sync=False)  # a term or vote: durable once synced
                self._submit_sync([], time.perf_counter_ns())
                durable = False
            else:  # a commit-only advance needs no fsync (the commit index is re-learned from the leader), nor a
                # write of its own on the commit path: the next write carries it, or the loop within 0.1 s
                self.storage.set_hard_state(hard_state, defer=True)
        if len(self._decoded) > DECODED_CACHE_MAX:
            self._decoded.clear()
        return durable

    # --- the persist thread (workers/walsync.py) -----------------------------------------------------------

    def _submit_sync(self, entries: list[Entry], t0_ns: int) -> None:
        self._unsynced.append((entries, self.storage.last_index(), t0_ns))
        self._syncer.submit()

    def _collect_synced(self) -> None:
        """Report the writes the persist thread made durable to the driver, in order (acknowledgements and
        votes leave, the leader counts itself); then raise the log's last-index hint to match."""
        syncer = self._syncer
        if syncer is None or not self._unsynced:
            return
        try:
            n, syncs, sync_ns = syncer.take()
        except StorageError as exc:  # the fsync failed: nothing it covered was promised
            if isinstance(exc, StorageIOError | CorruptLogError):
                raise
            raise StorageIOError(f"WAL sync failed: {exc}", disk_full=is_disk_full(exc)) from exc
        if syncs:
            self.state.add("fsyncs", syncs)
            self.state.add("fsync_ns", sync_ns)
        if n == 0:
            return
        last_durable = 0
        for _ in range(n):
            entries, last_durable, _t0 = self._unsynced.popleft()
            if entries:
                self.trace.persisted(entries)
        # a later write still unsynced may shorten the log: the hint stays at or below its last index too
        self.storage.synced(min([last_durable, *(w[1] for w in self._unsynced)]))
        for _ in range(n):
            if self.driver is None:
                break
            self.driver.durable()

    def _stop_syncer(self) -> None:
        """Stop the persist thread (before the storage closes); writes it had not synced are forgotten with the
        core that asked for them."""
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        self._unsynced.clear()

    def _drain_wake(self, _mask: int) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def _install_snapshot(self, snapshot: Snapshot, hard_state: HardState) -> None:
        """Replace log and dedup table by a leader's snapshot. The record is decoded and the table built
        before anything is written, so a record this node cannot use (SnapshotRefused) changes nothing."""
        try:
            record = _decode_saved_snapshot(SavedSnapshot(snapshot.index, snapshot.term, snapshot.data))
            table = dd.DedupTable.from_state(
                record.table, self.config.dedup_producers_max, record.horizon_entries, record.spans_max
            )
        except ValueError as exc:  # SnapshotFormatError, or a table this node's limits cannot hold
            raise SnapshotRefused(snapshot.index, str(exc)) from exc
        t0 = time.perf_counter_ns()
        self.storage.install_snapshot(snapshot, hard_state)
        self.state.add("fsyncs")
        self.state.add("fsync_ns", time.perf_counter_ns() - t0)
        self.storage.snapshot_record = record
        self.dedup = table
        self.groups.install(record.groups.copy() if record.groups is not None else None, snapshot.index, 0)
        self._decoded.clear()
        self._export = None  # a snapshot being built is of the replaced table
        self.state.add("snapshots_installed")
        self.state.set("commit_index", snapshot.index)
        self.state.set("first_index", self.storage.first_index())
        self.state.set("last_index", snapshot.index)
        self._notes.append(encode_note(Note(NoteKind.COMMIT, snapshot.index)))
        self.log.warning(
            "installed the leader's snapshot at %d (term %d, %d bytes, %d producers): the log now starts at %d",
            snapshot.index,
            snapshot.term,
            len(snapshot.data),
            len(record.table.producer_ids),
            snapshot.index + 1,
        )

    def _snapshot_refused(self, exc: SnapshotRefused) -> None:
        """A leader's snapshot this node cannot read (a newer format, or damage past the CRC): nothing was
        written; the core, which took the snapshot as installed, is rebuilt from the unchanged log, so the
        leader hears no acknowledgement and keeps the follower in SNAPSHOT (status shows it). Not a worker
        crash: restarting would not make the record readable, and the node keeps serving reads."""
        self.state.add("peer_errors")
        self.log.error("REFUSED the leader's snapshot: %s; not installed, the log is unchanged", exc)
        nl = self.storage
        if nl is None:
            return
        self.storage = None  # _open_storage does not reopen an open log: hand it the one we have
        self.core = self.driver = None
        self._stop_syncer()
        nl.close()
        self._open_storage()

    # --- membership ----------------------------------------------------------------------------------------

    def _publish_membership(self) -> None:
        """The configuration in effect changed (or the core was built): the members file for the other workers
        (sender, ingest, status), then `members_epoch` in the state block, then our own consensus links."""
        core = self.core
        if core is None:
            return
        view = view_of(core.membership, core.membership_index, self.config, self.log)
        removed = int(core.removed)
        if view != self._view or removed != self.state.get("removed") or not self.state.get("members_epoch"):
            mb.write_members_file(self.config.node_dir, view)
            self.state.set("config_index", view.index)
            self.state.set("removed", removed)
            self.state.add("members_epoch")
            if view.ids() != self._view.ids() or removed:
                self.log.warning(
                    "configuration at %d: voters %s, learners %s%s",
                    view.index,
                    view.voters(),
                    view.learners(),
                    "; this node is NOT a member (removed, or not yet added): it stays quiet" if removed else "",
                )
        self._former.update(self._view, view, time.monotonic())
        self._view = view
        self._set_link_peers()

    def _set_link_peers(self) -> None:
        if self.links is not None:
            self.links.set_peers(mb.peer_addresses(self.config, self._former.view(self._view), "raft"))

    def _on_change_request(self, req: ChangeRequest) -> None:
        """A MEMBER_CHANGE from ingest: propose it (the core checks the rules) or say at once why not."""
        core = self.core
        if core is None:
            self._change_result(req.request_id, 0, cp.ErrorCode.UNAVAILABLE, "the node's storage is failing")
            return
        if core.role != StateRole.LEADER:
            self._change_result(
                req.request_id, 0, cp.ErrorCode.NOT_LEADER, f"node {self.config.node_id} is not the leader"
            )
            return
        op = cp.ChangeOp(req.op)
        if op is cp.ChangeOp.ADD_LEARNER:
            try:
                new = mb.decode_address(req.node_id, req.address)
            except mb.AddressError as exc:
                self._change_result(req.request_id, 0, cp.ErrorCode.MALFORMED, str(exc))
                return
            clash = mb.address_collision(new, [v.member for v in self._view.members])
            if clash and new.node_id not in self._view.ids():
                self._change_result(req.request_id, 0, cp.ErrorCode.ADDRESS_IN_USE, clash)
                return
            change = ConfChange.add_learner(req.node_id, req.address)
        elif op is cp.ChangeOp.PROMOTE:
            change = ConfChange.promote(req.node_id)
        else:
            change = ConfChange.remove(req.node_id)
        try:
            index = core.propose_conf_change(change)
        except ConfChangeError as exc:
            self._change_result(req.request_id, 0, _change_error_code(exc, op), str(exc))
            return
        except NotLeaderError as exc:
            self._change_result(req.request_id, 0, cp.ErrorCode.NOT_LEADER, str(exc))
            return
        except ProposalError as exc:  # a leadership transfer in progress, and the like: retry shortly
            self._change_result(req.request_id, 0, cp.ErrorCode.UNAVAILABLE, str(exc))
            return
        self._pending_changes[index] = (req.request_id, core.term)
        self.log.warning("membership change proposed at %d: %s node %d", index, op.name, req.node_id)

    def _change_result(self, request_id: int, index: int, code: int, text: str) -> None:
        self._notes.append(encode_note(Note(NoteKind.CHANGE_RESULT, request_id, index, code=int(code), text=text)))

    def _fail_pending_changes(self, why: str) -> None:
        for request_id, _term in self._pending_changes.values():
            self._change_result(request_id, 0, cp.ErrorCode.TIMEOUT, f"{why}; it may still commit: list the members")
        self._pending_changes.clear()

    # --- control requests from ingest (R6) -------------------------------------------------------------------

    def _control_requests(self) -> None:
        """R6 records, each kind in arrival order: membership changes (refused while the storage fails) and
        consumer-group requests."""
        records = self.requests_in.take()
        if not records:
            return
        groups = []
        for rec in records:
            if request_kind(rec) is RequestKind.MEMBER_CHANGE:
                req = decode_change_request(rec)
                if self.core is None:
                    self._change_result(req.request_id, 0, cp.ErrorCode.UNAVAILABLE, "the node's storage is failing")
                else:
                    self._on_change_request(req)
            else:
                groups.append(rec)
        if groups:
            self._group_requests(groups)

    # --- consumer groups (workers/raft_groups.py) ------------------------------------------------------------

    def _group_requests(self, records: list[bytes]) -> None:
        """Consumer-group requests from ingest (R6): commits proposed on the leader, reads answered here."""
        core = self.core
        leading = core is not None and core.role == StateRole.LEADER and not core.transfer_target
        propose = core.propose if leading else None
        # read-your-commit: a leader answers reads once it has committed an entry of its own term, so its
        # table holds every commit an earlier leader acknowledged
        ready = leading and self.storage is not None and self.storage.term_at(core.commit_index) == core.term
        self.groups.on_requests(records, propose, ready, self._notes)

    def _publish_peers(self) -> None:
        """The leader's view of each follower and the snapshot counters, into the state block (throttled)."""
        now = time.monotonic()
        if now < self._peers_at or self.core is None:
            return
        self._peers_at = now + PEERS_PUBLISH_INTERVAL_S
        st = self.core.status()
        sent = int(st.get("snapshots_sent", 0))
        if sent > self._sent_seen:
            self.state.add("snapshots_sent", sent - self._sent_seen)
            self._sent_seen = sent
        peers = self.state.peers
        progress = sorted(st.get("progress", {}).items())[:PEERS_MAX]
        for i in range(PEERS_MAX):
            if i >= len(progress):
                peers[i] = 0
                continue
            node_id, pr = progress[i]
            state = _peer_state(pr)
            peers[i] = (
                node_id,
                int(state),
                pr.get("match", 0),
                max(0, pr.get("entries_behind", 0)),
                pr.get("snapshot_index", 0),
                pr.get("snapshot_sent_bytes", 0),
                pr.get("snapshot_acked_bytes", 0),
                pr.get("snapshot_total_bytes", 0),
            )

    def _send(self, messages: list[Message]) -> None:
        records = []
        for m in messages:
            body = encode_raft(m)
            if m.channel == Channel.DATA:
                if self._direct(m, body):
                    self.trace.before_r3((m,))
                    self.links.send(m.dst, body)
                    self.trace.sent_direct(m)
                    continue
                records.append(encode_peer_record(m.dst, PeerRecordKind.MESSAGE, body))
            elif isinstance(m, Heartbeat):
                self._held_heartbeats.append((m.dst, body))
            else:
                self.links.send(m.dst, body)
        if records:
            self.trace.before_r3(messages)
            pushed = self.to_sender.push_many(records, RING_PUSH_TIMEOUT_MS)
            if pushed < len(records):  # Raft resends what is lost; a stalled sender must not stall consensus
                self.log.warning("data ring to sender full: %d messages dropped", len(records) - pushed)
        self.trace.sent(messages)

    def _direct(self, m: Message, body: bytes) -> bool:
        """Whether the data message `m` goes on the consensus link (DIRECT_APPEND_BYTES_MAX): a small
        AppendEntries whose follower has acknowledged everything before it, so no earlier append can still be
        on the data channel to overtake (were one there, the follower would refuse the gap and the leader
        resend: never unsafe), over a link that is up with nothing queued."""
        return (
            isinstance(m, AppendEntries)
            and len(body) <= DIRECT_APPEND_BYTES_MAX
            and self.core is not None
            and self.core.match_index(m.dst) >= m.prev_index
            and self.links.connected(m.dst)
            and not self.links.queued_bytes(m.dst)
        )

    def _on_committed(self, entries: list[Entry]) -> None:
        events = 0
        size = 0
        for e in entries:
            if e.data and not is_control(e.data):
                events += frame_event_count(e.data)
                size += len(e.data)
        self.state.add("events_committed", events)
        self.state.add("batches_committed", len(entries))
        self.state.add("bytes_committed", size)
        commit = entries[-1].index
        if self._pending_changes:
            for e in entries:
                pending = self._pending_changes.pop(e.index, None)
                if pending is None:
                    continue
                if e.term == pending[1]:
                    self._change_result(pending[0], e.index, 0, "")
                else:
                    self._change_result(pending[0], 0, cp.ErrorCode.TIMEOUT, "the change was replaced by a new leader")
        self.state.set("commit_index", commit)
        self.dedup.committed(commit)
        self._notes.append(encode_note(Note(NoteKind.COMMIT, commit)))
        self.trace.committed(commit)

    def _publish_state(self) -> None:
        if self.core is None:
            self.state.set("role", int(StateRole.FOLLOWER))
            self.state.set("leader_id", 0)
            return
        prev_leader = self.state.get("leader_id")
        prev_role = self.state.get("role")
        self.state.set("term", self.core.term)
        self.state.set("leader_id", self.core.leader)
        self.state.set("role", int(self.core.role))
        self.state.set("commit_index", self.core.commit_index)
        if self.core.role == StateRole.CANDIDATE and prev_role != StateRole.CANDIDATE:
            self.state.add("elections")
        if self.core.role != prev_role or self.core.leader != prev_leader:  # timestamps for timing analysis
            self.log.info(
                "role %s -> %s, term %d, leader %d",
                StateRole(prev_role).name,
                self.core.role.name,
                self.core.term,
                self.core.leader,
            )
        if self.core.leader and self.core.leader != prev_leader:
            self.state.add("leader_changes")
            if self._ready_at and not self._first_leader_logged:
                self._first_leader_logged = True
                now = time.monotonic()
                self.log.info(
                    "start-up phases: first leader (%d) known %.3f s after the log was ready, %.3f s after the "
                    "worker's start",
                    self.core.leader,
                    now - self._ready_at,
                    now - self._started_at,
                )

    def _send_held_heartbeats(self) -> None:
        held, self._held_heartbeats = self._held_heartbeats, []
        for dst, body in held:
            self.links.send(dst, body)

    def _flush_notes(self) -> None:
        if self._notes:
            notes, self._notes = self._notes, []
            self.trace.before_r5()
            pushed = self.to_ingest.push_many(notes, RING_PUSH_TIMEOUT_MS)
            if pushed < len(notes):
                self.log.warning("note ring to ingest full: %d notes dropped", len(notes) - pushed)


_EMPTY = np.zeros(0, dtype=np.uint64)


class SnapshotRefused(Exception):
    """A leader's snapshot record this node cannot use (decode or table limits): not installed."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"snapshot at {index}: {detail}")
        self.index = index


def snapshot_chunk_bytes_for(config) -> int:
    """The InstallSnapshot chunk size for this node: the configured one (or the Raft default), lowered so that
    a chunk's message fits a data-channel ring record (raft -> sender) and a peer message."""
    ring_room = record_max_for(config.ring_capacity_bytes) - PEER_RECORD_HEADER_BYTES - INSTALL_SNAPSHOT_OVERHEAD_BYTES
    peer_room = config.peer_message_bytes_max - INSTALL_SNAPSHOT_OVERHEAD_BYTES
    wanted = config.snapshot_chunk_bytes or RaftConfig().snapshot_chunk_bytes
    return max(1, min(wanted, SNAPSHOT_CHUNK_BYTES_MAX, ring_room, peer_room))


def bootstrap_config(config) -> ClusterConfig:
    """The configuration of the config file, with each member's address bytes: used by the core only while
    neither the log nor the snapshot holds one. A joining node names itself a learner (`config.join`)."""
    return ClusterConfig.of(
        RaftMember(
            v.member.node_id,
            MemberRole.VOTER if v.role == mb.ROLE_VOTER else MemberRole.LEARNER,
            mb.encode_address(v.member),
        )
        for v in mb.static_view(config).members
    )


def view_of(conf: ClusterConfig, index: int, config, log) -> mb.MembersView:
    """The node layer's view of a core configuration. A member whose address bytes this node cannot read
    (a newer format) keeps the address of the config file when it has one, else is left out of the links."""
    members = []
    for m in conf.members:
        try:
            member = mb.decode_address(m.id, m.address)
        except mb.AddressError as exc:
            known = [x for x in config.members if x.node_id == m.id]
            if not known:
                log.error("member %d: %s; not connected", m.id, exc)
                continue
            member = known[0]
        role = mb.ROLE_VOTER if m.role == MemberRole.VOTER else mb.ROLE_LEARNER
        members.append(mb.MemberView(member, role))
    return mb.MembersView(index, tuple(members))


def _change_error_code(exc: ConfChangeError, op: cp.ChangeOp) -> cp.ErrorCode:
    """The client error code of a core refusal (docs/PROTOCOL.md 2.2)."""
    if isinstance(exc, ChangeInProgressError):
        return cp.ErrorCode.CHANGE_IN_PROGRESS
    if isinstance(exc, NotCaughtUpError):
        return cp.ErrorCode.NOT_CAUGHT_UP
    if isinstance(exc, QuorumNotActiveError):
        # the strict reconfiguration check: no active quorum for the new configuration yet, retriable; the
        # existing code keeps every client of protocol version 3 able to read it (the text says what is silent)
        return cp.ErrorCode.UNAVAILABLE
    if isinstance(exc, WouldLoseQuorumError | TooManyVotersError):
        return cp.ErrorCode.NO_QUORUM
    if isinstance(exc, AddressInUseError) or (isinstance(exc, AlreadyMemberError) and op is cp.ChangeOp.ADD_LEARNER):
        return cp.ErrorCode.ADDRESS_IN_USE
    if isinstance(exc, UnknownMemberError | AlreadyMemberError):
        return cp.ErrorCode.MEMBER_UNKNOWN
    return cp.ErrorCode.MALFORMED  # InvalidChangeError: an id or address the configuration cannot hold


def _peer_state(pr: dict) -> PeerState:
    """A follower's PeerState from the core's progress entry (RESEED: it needs a snapshot the leader lacks)."""
    state = PeerState[str(pr.get("state", "probe")).upper()]  # the core names ProgressState in lower case
    if state == PeerState.SNAPSHOT and pr.get("snapshot_missing"):
        return PeerState.RESEED
    return state


def _monotonic_ms() -> float:
    """The driver's clock."""
    return time.monotonic() * 1000


class DedupRebuild:
    """The dedup table of a log, a function of the log and its saved snapshot: the snapshot's table, then the
    entries after it recorded (at most what was written since the last snapshot). A log without a snapshot
    (written by an older release) records the last `horizon` entries, as releases before snapshots did. The
    entries lo..hi are fed in order (workers/replay.py: one read at start shared with the core and the groups);
    `table()` is the result."""

    def __init__(self, nl: NodeLog, producers_max: int) -> None:
        snap: sn.Snapshot | None = nl.snapshot_record
        last = nl.last_index()
        if snap is not None:
            self._table = dd.DedupTable.from_state(snap.table, producers_max, snap.horizon_entries, snap.spans_max)
            self.lo = snap.index + 1
        else:
            self._table = dd.DedupTable(producers_max=producers_max)
            self.lo = max(nl.first_index(), last - self._table.horizon_entries + 1, 1)
        self.hi = last
        self._commit = nl.hard_state().commit

    def feed(self, entries: Sequence[Entry]) -> None:
        """Record the next entries (batch frames decoded once; control entries and no-ops take no events)."""
        table, commit = self._table, self._commit
        for e in entries:
            if e.data and not is_control(e.data):
                b = decode_batch(e.data)
                table.record(e.index, b.producer_ids, b.sequences, commit)
            else:
                table.record(e.index, _EMPTY, _EMPTY, commit)

    def table(self) -> dd.DedupTable:
        """The table, its committed part marked (call once, after every entry was fed)."""
        self._table.committed(self._commit)
        return self._table


def rebuild_dedup(nl: NodeLog, producers_max: int, progress: Callable[[], None] | None = None) -> dd.DedupTable:
    """The dedup table of a log read on its own (`DedupRebuild`; the worker shares the read, `replay_log`).
    `progress` is called between reads (the worker's heartbeat: a long replay is not a stall)."""
    rebuild = DedupRebuild(nl, producers_max)
    replay_log(nl, (rebuild,), progress)
    return rebuild.table()


def _decode_saved_snapshot(saved: SavedSnapshot) -> sn.Snapshot:
    """The saved record decoded and matched with its storage head (a mismatch is corruption)."""
    snap = sn.decode_snapshot(saved.data)
    if (snap.index, snap.term) != (saved.index, saved.term):
        raise sn.SnapshotFormatError(
            f"the record says index/term {snap.index}/{snap.term}, its storage head {saved.index}/{saved.term}"
        )
    return snap
