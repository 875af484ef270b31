"""What a leader knows about one follower's log, and the flow-control window towards it."""

from __future__ import annotations

import enum
from collections import deque

from shmraft.raft.types import Snapshot


class ProgressState(enum.IntEnum):
    """PROBE: one append at a time until the follower's match is found. REPLICATE: optimistic pipelining
    within the inflight window. SNAPSHOT: the follower needs entries the leader no longer holds; the leader
    sends it its snapshot (InstallSnapshot), or, when its storage has none (a log of an older release), waits
    for one (shown as `snapshot_missing` in status)."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """Leader-side view of one follower. `inflight` holds (last index, bytes) per unacknowledged message."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "silent_ms",
        "heard",
        "inflight",
        "inflight_bytes",
        "match_at_heartbeat",
        "commit_sent",
        "fallback_armed",
        "snap",
        "snap_crc",
        "snap_sent",
        "snap_acked",
        "snap_ping",
        "snap_progressed",
        "snap_rewind_armed",
        "snap_stalled",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.silent_ms = 0  # since the follower was last heard from (check-quorum); a new leader gives
        # every follower one election timeout to show up
        self.heard = False  # heard from at all since this Progress was made (this leadership, or since the
        # member was added): a follower never heard is not known active (strict reconfiguration check)
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.match_at_heartbeat = 0
        self.commit_sent = 0
        self.fallback_armed = True  # may a rejection in REPLICATE trigger a resend (re-armed every tick)
        # SNAPSHOT: the snapshot being sent (None: none to send yet), its CRC32, the bytes sent and the bytes
        # the follower said it holds; `snap_ping` asks for an empty chunk at the end (all bytes acknowledged,
        # or an empty snapshot: "are you done?"); `snap_progressed`: an acknowledgement moved since the last
        # heartbeat (if not, the transfer resumes from the acknowledged offset)
        self.snap: Snapshot | None = None
        self.snap_crc = 0
        self.snap_sent = 0
        self.snap_acked = 0
        self.snap_ping = False
        self.snap_progressed = False
        self.snap_rewind_armed = True  # may a "received" below what was sent rewind the transfer (once per gap)
        # nothing acknowledged for a heartbeat interval: send one chunk at a time until an acknowledgement
        # moves again, so that a slow link is not flooded with resends of the whole window
        self.snap_stalled = False

    @property
    def inflight_entries(self) -> int:
        """Entries sent and not yet acknowledged (pipelining only happens in REPLICATE)."""
        return self.next - 1 - self.match if self.state == ProgressState.REPLICATE else 0

    def become_probe(self) -> None:
        """Forget the optimistic window; resend from just after the known match."""
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snap = None

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snap = None

    def become_snapshot(self, snap: Snapshot | None, crc: int) -> None:
        """Start sending `snap` from its first byte (None: the leader has no snapshot to send yet)."""
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snap = snap
        self.snap_crc = crc
        self.snap_sent = 0
        self.snap_acked = 0
        self.snap_ping = snap is not None and not snap.data
        self.snap_progressed = True
        self.snap_rewind_armed = True
        self.snap_stalled = False

    def resume_snapshot(self, stalled: bool = False) -> None:
        """Nothing was acknowledged for a while (`stalled`: then one chunk at a time until progress): ask with
        an empty chunk at what was sent, which the follower always answers with what it holds (resending from
        the acknowledged offset could resend only chunks the follower holds, whose answers were lost: it stays
        silent on duplicates, and the transfer would stall for good). The connection dropped: resend from the
        acknowledged offset, or, when every byte is acknowledged, ask again with an empty chunk."""
        if self.snap is None:
            return
        self.snap_stalled = self.snap_stalled or stalled
        if stalled:
            self.snap_ping = True
        else:
            self.snap_sent = self.snap_acked
            self.snap_ping = self.snap_acked >= len(self.snap.data)
        self.snap_rewind_armed = True

    def snapshot_answer(self, received: int) -> None:
        """The follower holds bytes [0, received) of the snapshot. More than acknowledged before is progress;
        less than what was sent reports a gap (a lost chunk, or the follower lost its partial copy): resend
        from there, once per gap (the answers to the rest of the window in flight report the same gap)."""
        if received > self.snap_acked:
            self.snap_acked = received
            self.snap_sent = max(self.snap_sent, received)
            self.snap_progressed = True
            self.snap_rewind_armed = True
            self.snap_stalled = False
        elif received < self.snap_sent and self.snap_rewind_armed:
            self.snap_rewind_armed = False
            self.snap_acked = self.snap_sent = received
            self.snap_ping = False

    def sent(self, last_index: int, nbytes: int) -> None:
        """Record an append carrying entries up to last_index (REPLICATE: advance next optimistically)."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append((last_index, nbytes))
            self.inflight_bytes += nbytes
        else:
            self.probe_sent = True

    def acked(self, index: int) -> bool:
        """The follower stores entries up to `index`; returns whether match moved."""
        moved = index > self.match
        if moved:
            self.match = index
        if self.next <= index:
            self.next = index + 1
        inflight = self.inflight
        while inflight and inflight[0][0] <= index:
            self.inflight_bytes -= inflight.popleft()[1]
        return moved

    def rejected(self, rejected_index: int, next_hint: int) -> bool:
        """An append with prev_index = rejected_index failed; `next_hint` is where the leader's log can
        first differ. Returns False for a stale rejection (one that does not concern the current window)."""
        if self.state == ProgressState.REPLICATE:
            # The follower's log matches ours up to `match`, so a rejection now means an append arrived
            # before its predecessor: lost (resend from match) or merely reordered (still coming). Falling
            # back on *every* such rejection turns heavy reordering into resend bursts that feed on
            # themselves, so at most one fallback per tick; the stall check at each heartbeat and
            # peer_disconnected catch any loss this skips.
            if rejected_index <= self.match or not self.fallback_armed:
                return False
            self.fallback_armed = False
            self.become_probe()
            self.next = max(min(rejected_index, next_hint), self.match + 1)
            return True
        if rejected_index != self.next - 1:
            return False
        if rejected_index <= self.match:
            # the follower lost entries it had acknowledged (possible only with an unsafe fsync policy, or a
            # stale duplicate): believe it, rather than resending the same append forever
            self.match = max(0, min(self.match, next_hint - 1))
        self.next = max(min(rejected_index, next_hint), self.match + 1)
        self.probe_sent = False
        return True
