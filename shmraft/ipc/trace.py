"""The trace area of the state block: one sampled request's timestamps at every hand-off, and per-stage histograms.

A sampled PRODUCE request (one in `trace_sample_every`, or every one while the `ALL` control word is set) is
stamped with CLOCK_MONOTONIC (`time.monotonic_ns`, one clock for every process of a host) at each hand-off
between the leader's workers; a follower samples one AppendEntries in N likewise, from its own receipt to its
acknowledgement. At most one leader sample and one follower sample are in flight per node, so the hot path does
per-loop checks of one word and per-sample work only (docs/DESIGN.md "Trace").

Single writer per field: the leader slot has one row per worker (ingest, batcher, raft, sender); a worker writes
only its row: the generation it serves, a key (what it matched) and its own points. A point counts only while
its row's generation equals the ingest row's (the sample's). Every point of a ring hand-off is taken just before
the push, so the next worker never sees the record before the point. The leader histograms are written by
ingest when it answers the sample, the follower histograms by the follower's raft worker when it acknowledges.
"""

from __future__ import annotations

import bisect
import enum
import struct
import time
from typing import Final

import numpy as np

from shmraft.raft.messages import AppendEntries, AppendResponse, Message


class Point(enum.IntEnum):
    """The leader's timestamps of one sampled request, in the order of the path (writer in brackets)."""

    RECV = 0  # PRODUCE decoded, before admission (ingest)
    R1_PUSH = 1  # handed to R1 (ingest)
    BATCH_POP = 2  # popped from R1 (batcher)
    CUT = 3  # its frame cut (batcher)
    R2_PUSH = 4  # the frame handed to R2 (batcher)
    RAFT_POP = 5  # frames taken from R2 (raft)
    PROPOSE = 6  # proposed: log index known (raft)
    R3_PUSH = 7  # its AppendEntries handed to R3 (raft)
    PERSIST_START = 8  # the log write with fsync begins (raft)
    PERSIST_END = 9  # ... and is durable (raft)
    SENDER_POP = 10  # AppendEntries popped from R3 (sender)
    SEND = 11  # written to the first follower's socket (sender)
    ACK_RECV = 12  # the first follower acknowledgement covering it (raft)
    COMMIT = 13  # commit index covers it (raft)
    R5_PUSH = 14  # the COMMIT note handed to R5 (raft)
    R5_POP = 15  # ingest saw the commit (R5 note, or the state block's commit index) (ingest)
    REPLY = 16  # PRODUCED written to the client's socket (ingest)


class FPoint(enum.IntEnum):
    """A follower's timestamps of one sampled AppendEntries (its own clock, from its own receipt)."""

    RECV = 0  # decoded from the data channel (sender)
    R4_PUSH = 1  # handed to R4 (sender)
    RAFT_POP = 2  # stepped by the raft worker (raft)
    PERSIST_START = 3  # log write with fsync begins (raft)
    PERSIST_END = 4  # ... and is durable (raft)
    ACK_SENT = 5  # the acknowledgement written to the consensus socket (raft)


class Row(enum.IntEnum):
    """Rows of the leader slot, one per writing worker."""

    INGEST = 0
    BATCHER = 1
    RAFT = 2
    SENDER = 3


class FRow(enum.IntEnum):
    """Rows of the follower slot."""

    SENDER = 0
    RAFT = 1


JOIN: Final = -1  # pseudo point: when the entry is on a majority (3 nodes): max(ACK_RECV, PERSIST_END), or COMMIT
# when the followers made the majority before the leader's own write was durable (leader_durations)

# (name, from, to, on the critical path): the critical stages tile RECV..REPLY, so per sample they sum to it
STAGES: Final = (
    ("ingest", Point.RECV, Point.R1_PUSH, True),
    ("r1_wake", Point.R1_PUSH, Point.BATCH_POP, True),
    ("batcher_cut", Point.BATCH_POP, Point.CUT, True),
    ("batcher_r2_push", Point.CUT, Point.R2_PUSH, True),
    ("r2_wake", Point.R2_PUSH, Point.RAFT_POP, True),
    ("raft_propose", Point.RAFT_POP, Point.PROPOSE, True),
    ("raft_r3_push", Point.PROPOSE, Point.R3_PUSH, True),
    ("persist_wait", Point.R3_PUSH, Point.PERSIST_START, False),
    ("fsync", Point.PERSIST_START, Point.PERSIST_END, False),
    ("r3_wake", Point.R3_PUSH, Point.SENDER_POP, False),
    ("sender_send", Point.SENDER_POP, Point.SEND, False),
    ("follower_round_trip", Point.SEND, Point.ACK_RECV, False),
    ("quorum", Point.R3_PUSH, JOIN, True),
    ("commit", JOIN, Point.COMMIT, True),
    ("raft_r5_push", Point.COMMIT, Point.R5_PUSH, True),
    ("r5_wake", Point.R5_PUSH, Point.R5_POP, True),
    ("ingest_reply", Point.R5_POP, Point.REPLY, True),
    ("total", Point.RECV, Point.REPLY, False),
)
FSTAGES: Final = (
    ("f_r4_push", FPoint.RECV, FPoint.R4_PUSH, True),
    ("f_r4_wake", FPoint.R4_PUSH, FPoint.RAFT_POP, True),
    ("f_persist_wait", FPoint.RAFT_POP, FPoint.PERSIST_START, True),
    ("f_fsync", FPoint.PERSIST_START, FPoint.PERSIST_END, True),
    ("f_ack_send", FPoint.PERSIST_END, FPoint.ACK_SENT, True),
    ("f_total", FPoint.RECV, FPoint.ACK_SENT, False),
)
STAGE_NAMES: Final = tuple(s[0] for s in STAGES)
FSTAGE_NAMES: Final = tuple(s[0] for s in FSTAGES)

# fixed log-scale buckets: four per octave from 1 us to 2^22 us (4.2 s); bucket i < BUCKETS - 1 holds
# durations <= BOUNDS_NS[i], the last one the rest
BUCKETS_PER_OCTAVE: Final = 4
OCTAVES: Final = 22
BOUNDS_NS: Final = tuple(round(1000 * 2 ** (i / BUCKETS_PER_OCTAVE)) for i in range(OCTAVES * BUCKETS_PER_OCTAVE + 1))
BUCKETS: Final = len(BOUNDS_NS) + 1

# the last finished leader samples, each its stage durations (ns; NO_STAGE where it has none): the waterfall of
# the median and of the p99 request comes from whole requests, whose critical stages add up, not from medians
# of separate stages, which do not (supervisor/waterfall.py)
RECENT_SAMPLES: Final = 1024
NO_STAGE: Final = (1 << 64) - 1
SAMPLE_TIMEOUT_NS: Final = 1_000_000_000  # a sample not answered by then is abandoned; the next may start
CTL_WORDS: Final = 8
CTL_ALL: Final = 0  # 1: sample every request (writer: `shmraft-supervisor trace --all on`)
CTL_EVERY: Final = 1  # >0: overrides the config's trace_sample_every (writer: the trace command)
ROW_HEAD: Final = 4  # gen, key, key2, extra (ingest: samples abandoned; follower sender: samples started)
_LEADER_COLS: Final = ROW_HEAD + len(Point)
_FOLLOWER_COLS: Final = ROW_HEAD + len(FPoint)
_BLOCK_KEY: Final = struct.Struct("<QQ")  # producer id, first sequence: the head of a PRODUCE body (R1 record)
_FRAME_BATCH_ID: Final = struct.Struct("<Q")  # at offset 16 of a batch frame
_FRAME_BATCH_ID_OFFSET: Final = 16
_FRAME_EVENT_COUNT: Final = struct.Struct("<H")  # at offset 6 of a batch frame
_FRAME_EVENT_COUNT_OFFSET: Final = 6
C_GEN, C_KEY, C_KEY2, C_EXTRA = 0, 1, 2, 3

_PARTS: Final = (
    ("ctl", (CTL_WORDS,)),
    ("leader", (len(Row), _LEADER_COLS)),
    ("follower", (len(FRow), _FOLLOWER_COLS)),
    ("hist", (len(STAGES), BUCKETS)),
    ("hist_sum_ns", (len(STAGES),)),
    ("fhist", (len(FSTAGES), BUCKETS)),
    ("fhist_sum_ns", (len(FSTAGES),)),
    ("recent", (RECENT_SAMPLES, len(STAGES))),
    ("recent_n", (1,)),  # leader samples written to `recent` in all (the next row is recent_n % RECENT_SAMPLES)
)
TRACE_BYTES: Final = 8 * sum(int(np.prod(shape)) for _n, shape in _PARTS)


def bucket_of(ns: int) -> int:
    """The histogram bucket of a duration: the first bound >= it (the last bucket past the last bound)."""
    return bisect.bisect_left(BOUNDS_NS, ns)


class TraceArea:
    """Views (u64 numpy arrays) of the trace area at `offset` of a mapped state block."""

    def __init__(self, mem, offset: int) -> None:
        self.ctl = self.leader = self.follower = self.hist = self.hist_sum_ns = self.fhist = self.fhist_sum_ns = None
        self.recent = self.recent_n = None
        for name, shape in _PARTS:
            arr = np.ndarray(shape, dtype=np.uint64, buffer=mem, offset=offset)
            setattr(self, name, arr)
            offset += arr.nbytes

    def close(self) -> None:
        for name, _shape in _PARTS:
            setattr(self, name, None)

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of the histograms and of the recent samples (the trace command and benchmarks diff two)."""
        names = ("hist", "hist_sum_ns", "fhist", "fhist_sum_ns", "recent", "recent_n")
        return {name: np.array(getattr(self, name)) for name in names}


# --- pure parts ---------------------------------------------------------------------------------------------------


def leader_durations(points: dict[int, int]) -> dict[str, int]:
    """Per-stage durations (ns) of one leader sample from its valid points (Point -> ns; missing = not seen).

    The critical stages are made to tile RECV..REPLY exactly: walking back from REPLY each point is capped by
    the next one (a point taken by a racing worker just after the stage that consumed it counts as that
    stage's). Branch stages are plain differences, never negative. A stage with a missing end is left out."""
    p = dict(points)
    if Point.ACK_RECV in p and Point.PERSIST_END in p:
        p[JOIN] = max(p[Point.ACK_RECV], p[Point.PERSIST_END])
    elif Point.PERSIST_END in p and Point.SEND not in p:  # a lone node: its own persist is the majority
        p[JOIN] = p[Point.PERSIST_END]
    elif Point.ACK_RECV in p and Point.COMMIT in p:
        # committed on both followers' acknowledgements before the leader's own write was durable (the leader
        # counts itself once its persist thread synced): the majority is the second acknowledgement, which
        # is not stamped; the commit it caused is the closest point after it
        p[JOIN] = p[Point.COMMIT]
    chain = [s for s in STAGES if s[3]]
    order = [chain[0][1]] + [s[2] for s in chain]
    capped: dict[int, int] = {}
    nxt = None
    for pt in reversed(order):
        if pt not in p:
            continue
        v = p[pt] if nxt is None else min(p[pt], nxt)
        capped[pt] = v
        nxt = v
    out: dict[str, int] = {}
    for name, a, b, crit in STAGES:
        src = capped if crit else p
        if a in src and b in src:
            out[name] = max(0, src[b] - src[a])
    if Point.RECV in p and Point.REPLY in p:
        out["total"] = max(0, p[Point.REPLY] - p[Point.RECV])
    return out


def record_recent(recent: np.ndarray, recent_n: np.ndarray, durations: dict[str, int]) -> None:
    """Keep one finished leader sample's stage durations in the ring of recent samples (its single writer)."""
    n = int(recent_n[0])
    row = recent[n % RECENT_SAMPLES]
    row[:] = NO_STAGE
    for i, name in enumerate(STAGE_NAMES):
        ns = durations.get(name)
        if ns is not None:
            row[i] = ns
    recent_n[0] = n + 1  # last: a reader takes only rows below the count


def recent_rows(recent: np.ndarray, end: int, count: int) -> np.ndarray:
    """The last `count` (at most RECENT_SAMPLES) samples written before the `end`-th, oldest first, as float64 ns
    with NaN for a stage a sample did not have."""
    k = max(0, min(count, end, RECENT_SAMPLES))
    idx = np.arange(end - k, end) % RECENT_SAMPLES
    raw = np.asarray(recent)[idx]
    rows = raw.astype(np.float64)
    rows[raw == NO_STAGE] = np.nan
    return rows


def follower_durations(points: dict[int, int]) -> dict[str, int]:
    """Per-stage durations (ns) of one follower sample (FPoint -> ns)."""
    out: dict[str, int] = {}
    for name, a, b, _crit in FSTAGES:
        if a in points and b in points:
            out[name] = max(0, points[b] - points[a])
    return out


def add_durations(hist: np.ndarray, sums: np.ndarray, names: tuple[str, ...], durations: dict[str, int]) -> None:
    """Count one sample's durations into histograms (rows in `names` order); the caller is their single writer."""
    for i, name in enumerate(names):
        ns = durations.get(name)
        if ns is not None:
            hist[i, bucket_of(ns)] += 1
            sums[i] += ns


def _valid_points(rows: np.ndarray, gen: int, owners: dict[int, int], alt: dict[int, int]) -> dict[int, int]:
    """The sample `gen`'s points: each from its owner's row, else (a direct append) from its `alt` row."""
    out = {}
    for pt, row in owners.items():
        for r in (row, alt.get(pt)):
            if r is not None and int(rows[r, C_GEN]) == gen:
                v = int(rows[r, ROW_HEAD + pt])
                if v:
                    out[pt] = v
                    break
    return out


_LEADER_OWNER: Final = {
    Point.RECV: Row.INGEST,
    Point.R1_PUSH: Row.INGEST,
    Point.BATCH_POP: Row.BATCHER,
    Point.CUT: Row.BATCHER,
    Point.R2_PUSH: Row.BATCHER,
    Point.RAFT_POP: Row.RAFT,
    Point.PROPOSE: Row.RAFT,
    Point.R3_PUSH: Row.RAFT,
    Point.PERSIST_START: Row.RAFT,
    Point.PERSIST_END: Row.RAFT,
    Point.SENDER_POP: Row.SENDER,
    Point.SEND: Row.SENDER,
    Point.ACK_RECV: Row.RAFT,
    Point.COMMIT: Row.RAFT,
    Point.R5_PUSH: Row.RAFT,
    Point.R5_POP: Row.INGEST,
    Point.REPLY: Row.INGEST,
}
# A small append to a follower with nothing in flight goes on the consensus link from the raft worker itself
# (workers/raft.py DIRECT_APPEND_BYTES_MAX): no R3, sender, R4. The raft worker then stamps the sender's points
# in its own row: on the leader SENDER_POP at its R3_PUSH (no hop) and SEND at the socket write; on a follower
# RECV, R4_PUSH and RAFT_POP at once, under a generation of its own (DIRECT_GEN_BASE + n, never a sender's).
_LEADER_ALT: Final = {Point.SENDER_POP: Row.RAFT, Point.SEND: Row.RAFT}
_FOLLOWER_ALT: Final = {FPoint.RECV: FRow.RAFT, FPoint.R4_PUSH: FRow.RAFT}
DIRECT_GEN_BASE: Final = 1 << 62
_FOLLOWER_OWNER: Final = {
    FPoint.RECV: FRow.SENDER,
    FPoint.R4_PUSH: FRow.SENDER,
    FPoint.RAFT_POP: FRow.RAFT,
    FPoint.PERSIST_START: FRow.RAFT,
    FPoint.PERSIST_END: FRow.RAFT,
    FPoint.ACK_SENT: FRow.RAFT,
}


def _sampling(area: TraceArea, every_config: int, count: int) -> bool:
    """Whether the `count`-th candidate is sampled: always while ALL is set, else one in N (0 = never)."""
    if area.ctl[CTL_ALL]:
        return True
    every = int(area.ctl[CTL_EVERY]) or every_config
    return every > 0 and count % every == 0


# --- the workers' hooks: each a few word reads when no sample is theirs ---------------------------------------------


class _Hooks:
    def __init__(self, area: TraceArea, sample_every: int) -> None:
        self.area = area
        self.every = sample_every
        self.leader = area.leader
        self.follower = area.follower

    def _stamp(self, row: int, pt: int, ns: int | None = None) -> None:
        self.leader[row, ROW_HEAD + pt] = time.monotonic_ns() if ns is None else ns

    def _fstamp(self, row: int, pt: int, ns: int | None = None) -> None:
        self.follower[row, ROW_HEAD + pt] = time.monotonic_ns() if ns is None else ns

    def _gen(self) -> int:
        return int(self.leader[Row.INGEST, C_GEN])


class IngestTrace(_Hooks):
    """Ingest: starts leader samples, stamps RECV/R1_PUSH, R5_POP/REPLY, and counts the finished sample."""

    def __init__(self, area: TraceArea, sample_every: int) -> None:
        super().__init__(area, sample_every)
        self._count = 0
        self._recv_ns = 0
        self._active: tuple[int, int] | None = None  # (conn id, correlation id) of the sample in flight
        self._started_ns = 0
        self._index = 0

    def sample(self) -> bool:
        """Per PRODUCE request: whether to sample it (then its receipt time is kept)."""
        self._count += 1
        if not _sampling(self.area, self.every, self._count):
            return False
        now = time.monotonic_ns()
        if self._active is not None:
            if now - self._started_ns < SAMPLE_TIMEOUT_NS:
                return False
            self._active = None
            self.leader[Row.INGEST, C_EXTRA] += 1  # abandoned
        self._recv_ns = now
        return True

    def admitted(self, producer_id: int, first_sequence: int, conn_id: int, cid: int, queued: bool) -> None:
        """A sampled request admitted; it goes to R1 now unless `queued` behind others (then it is dropped)."""
        if queued:
            return
        row = self.leader[Row.INGEST]
        row[ROW_HEAD:] = 0
        row[ROW_HEAD + Point.RECV] = self._recv_ns
        row[C_KEY] = producer_id
        row[C_KEY2] = first_sequence
        row[ROW_HEAD + Point.R1_PUSH] = time.monotonic_ns()
        row[C_GEN] += 1  # last: the batcher matches only a published generation
        self._active = (conn_id, cid)
        self._started_ns = self._recv_ns

    def commit_seen(self, commit_index: int) -> None:
        """A COMMIT note popped from R5."""
        if self._active is None or self.leader[Row.INGEST, ROW_HEAD + Point.R5_POP]:
            return
        gen = self._gen()
        raft = self.leader[Row.RAFT]
        if int(raft[C_GEN]) == gen and raft[ROW_HEAD + Point.PROPOSE] and commit_index >= int(raft[C_KEY]):
            self._stamp(Row.INGEST, Point.R5_POP)

    def answered(self, conn_id: int, cid: int, ok: bool) -> None:
        """After an answer is written: if it is the sample's, stamp REPLY and count the sample."""
        if self._active is None or self._active != (conn_id, cid):
            return
        self._active = None
        if not ok:
            self.leader[Row.INGEST, C_EXTRA] += 1
            return
        now = time.monotonic_ns()
        if not self.leader[Row.INGEST, ROW_HEAD + Point.R5_POP]:
            self._stamp(Row.INGEST, Point.R5_POP, now)  # answered from the state block's commit index
        self._stamp(Row.INGEST, Point.REPLY, now)
        points = _valid_points(self.leader, self._gen(), _LEADER_OWNER, _LEADER_ALT)
        durations = leader_durations(points)
        add_durations(self.area.hist, self.area.hist_sum_ns, STAGE_NAMES, durations)
        record_recent(self.area.recent, self.area.recent_n, durations)


def _sample_key(area: TraceArea) -> tuple[int, int]:
    return int(area.leader[Row.INGEST, C_KEY]), int(area.leader[Row.INGEST, C_KEY2])


class BatcherTrace(_Hooks):
    """Batcher: finds the sampled block among those popped, then the frame it starts in."""

    def __init__(self, area: TraceArea, sample_every: int) -> None:
        super().__init__(area, sample_every)
        self._seen_gen = int(self.leader[Row.INGEST, C_GEN])
        self._events_before = -1  # events to be cut before the sample's first (when found)

    def popped(self, bodies: list, pending_events_before: int) -> None:
        """After a pop from R1 (`pending_events_before`: the cutter's pending events before these bodies)."""
        gen = self._gen()
        if gen == self._seen_gen:
            return
        key = _sample_key(self.area)
        before = pending_events_before
        for body in bodies:
            if _BLOCK_KEY.unpack_from(body, 0) == key:
                now = time.monotonic_ns()
                row = self.leader[Row.BATCHER]
                row[ROW_HEAD:] = 0
                row[C_EXTRA] = 0  # the frame's batch id not yet known
                row[ROW_HEAD + Point.BATCH_POP] = now
                row[C_GEN] = gen
                self._seen_gen = gen
                self._events_before = before
                return
            before += struct.unpack_from("<I", body, 20)[0]  # event count of the block

    def cut(self, frames: list) -> None:
        """After cutting (before the push): stamp CUT and publish the batch id of the sample's frame."""
        if self._events_before < 0 or not frames:
            return
        for frame in frames:
            n = _FRAME_EVENT_COUNT.unpack_from(frame, _FRAME_EVENT_COUNT_OFFSET)[0]
            if self._events_before < n:
                row = self.leader[Row.BATCHER]
                row[ROW_HEAD + Point.CUT] = time.monotonic_ns()
                row[C_KEY] = _FRAME_BATCH_ID.unpack_from(frame, _FRAME_BATCH_ID_OFFSET)[0]
                row[C_EXTRA] = 1  # key published
                row[ROW_HEAD + Point.R2_PUSH] = time.monotonic_ns()  # the push follows at once
                self._events_before = -1
                return
            self._events_before -= n


class RaftTrace(_Hooks):
    """Raft worker: leader points from R2 to R5 and the acknowledgement; a follower's from R4 to its ack."""

    def __init__(self, area: TraceArea, sample_every: int) -> None:
        super().__init__(area, sample_every)
        self._seen_gen = self._gen()
        self._index = 0  # the leader sample's log index once proposed
        self._taken_ns = 0
        self._fseen = int(self.follower[FRow.SENDER, C_GEN])
        self._findex = 0  # the follower sample's last entry index once stepped
        self._fgen = 0  # the follower sample's generation (the sender's, or DIRECT_GEN_BASE + n)
        self._fdirect = 0  # direct appends stepped (the sampling count), and samples started of them
        self._fdirect_started = 0
        self._fstarted_ns = 0

    # leader
    def frames_taken(self) -> None:
        gen = self._gen()
        if gen != self._seen_gen and self.leader[Row.BATCHER, C_GEN] == gen and self.leader[Row.BATCHER, C_EXTRA]:
            self._taken_ns = time.monotonic_ns()

    def proposed(self, batch_id: int, index: int) -> None:
        if not self._taken_ns:
            return
        gen = self._gen()
        if gen == self._seen_gen or batch_id != int(self.leader[Row.BATCHER, C_KEY]):
            return
        row = self.leader[Row.RAFT]
        row[ROW_HEAD:] = 0
        row[ROW_HEAD + Point.RAFT_POP] = self._taken_ns
        row[ROW_HEAD + Point.PROPOSE] = time.monotonic_ns()
        row[C_KEY] = index
        row[C_GEN] = gen
        self._seen_gen = gen
        self._index = index
        self._taken_ns = 0

    def _due(self, pt: int) -> bool:
        return bool(self._index) and not self.leader[Row.RAFT, ROW_HEAD + pt]

    def before_r3(self, messages: list[Message]) -> None:
        if self._index and self._due(Point.R3_PUSH):
            for m in messages:
                if isinstance(m, AppendEntries) and m.entries and m.entries[-1].index >= self._index:
                    self._stamp(Row.RAFT, Point.R3_PUSH)
                    return

    def _fdue(self, entries: list, pt: int) -> bool:
        return bool(self._findex) and entries[-1].index >= self._findex and not self.follower[FRow.RAFT, ROW_HEAD + pt]

    def persisting(self, entries: list) -> None:
        """Just before the log write of `entries`."""
        if self._index and entries[-1].index >= self._index and self._due(Point.PERSIST_START):
            self._stamp(Row.RAFT, Point.PERSIST_START)
        if self._fdue(entries, FPoint.PERSIST_START):
            self._fstamp(FRow.RAFT, FPoint.PERSIST_START)

    def persisted(self, entries: list) -> None:
        """Just after the log write (durable)."""
        if self._index and entries[-1].index >= self._index and self._due(Point.PERSIST_END):
            self._stamp(Row.RAFT, Point.PERSIST_END)
        if self._fdue(entries, FPoint.PERSIST_END):
            self._fstamp(FRow.RAFT, FPoint.PERSIST_END)

    def stepped(self, m: Message, direct: bool = False) -> None:
        """Every peer message the core is about to step; `direct`: it came on the consensus link."""
        if self._index and isinstance(m, AppendResponse):
            if m.success and m.index >= self._index and self._due(Point.ACK_RECV):
                self._stamp(Row.RAFT, Point.ACK_RECV)
        elif isinstance(m, AppendEntries) and m.entries and direct:
            self._fdirect += 1
            now = time.monotonic_ns()
            if self._findex and now - self._fstarted_ns < SAMPLE_TIMEOUT_NS:
                return  # the previous sample is still in flight
            if not _sampling(self.area, self.every, self._fdirect):
                return
            self._fdirect_started += 1
            gen = DIRECT_GEN_BASE + self._fdirect_started
            row = self.follower[FRow.RAFT]
            row[ROW_HEAD:] = 0
            row[ROW_HEAD + FPoint.RECV] = row[ROW_HEAD + FPoint.R4_PUSH] = row[ROW_HEAD + FPoint.RAFT_POP] = now
            row[C_KEY] = m.entries[-1].index
            row[C_GEN] = gen
            self._fgen, self._findex, self._fstarted_ns = gen, m.entries[-1].index, now
        elif isinstance(m, AppendEntries) and m.entries:
            gen = int(self.follower[FRow.SENDER, C_GEN])
            if gen != self._fseen:
                self._fseen = gen
                row = self.follower[FRow.RAFT]
                row[ROW_HEAD:] = 0
                row[ROW_HEAD + FPoint.RAFT_POP] = time.monotonic_ns()
                row[C_KEY] = m.entries[-1].index
                row[C_GEN] = gen
                self._fgen, self._findex = gen, m.entries[-1].index
                self._fstarted_ns = int(row[ROW_HEAD + FPoint.RAFT_POP])

    def committed(self, commit_index: int) -> None:
        if self._index and commit_index >= self._index and self._due(Point.COMMIT):
            self._stamp(Row.RAFT, Point.COMMIT)

    def before_r5(self) -> None:
        if self._index and self.leader[Row.RAFT, ROW_HEAD + Point.COMMIT] and self._due(Point.R5_PUSH):
            self._stamp(Row.RAFT, Point.R5_PUSH)
            self._index = 0  # the leader's part of this sample is done

    def sent_direct(self, m: AppendEntries) -> None:
        """After a direct append (on the consensus link) of the leader sample's entry: the sender's points."""
        if self._index and m.entries[-1].index >= self._index and not self.leader[Row.RAFT, ROW_HEAD + Point.SEND]:
            row = self.leader[Row.RAFT]
            row[ROW_HEAD + Point.SENDER_POP] = row[ROW_HEAD + Point.R3_PUSH]
            row[ROW_HEAD + Point.SEND] = time.monotonic_ns()

    def sent(self, messages: list[Message]) -> None:
        """After consensus messages went out: a follower's acknowledgement of its sample ends it."""
        if not self._findex:
            return
        for m in messages:
            if isinstance(m, AppendResponse) and m.success and m.index >= self._findex:
                self._fstamp(FRow.RAFT, FPoint.ACK_SENT)
                self._findex = 0
                points = _valid_points(self.follower, self._fgen, _FOLLOWER_OWNER, _FOLLOWER_ALT)
                add_durations(self.area.fhist, self.area.fhist_sum_ns, FSTAGE_NAMES, follower_durations(points))
                return


class SenderTrace(_Hooks):
    """Sender: the leader's R3 pop and send; a follower's receipt and R4 push of one AppendEntries in N."""

    def __init__(self, area: TraceArea, sample_every: int) -> None:
        super().__init__(area, sample_every)
        self._seen_gen = self._gen()
        self._pop_ns = 0
        self._count = 0
        self._recv_ns = 0
        self._started_ns = 0

    def popped(self) -> None:
        """Per record popped from R3 (before its send)."""
        gen = self._gen()
        if gen == self._seen_gen:
            return
        raft = self.leader[Row.RAFT]
        if int(raft[C_GEN]) == gen and raft[ROW_HEAD + Point.R3_PUSH]:
            self._seen_gen = gen
            self._pop_ns = time.monotonic_ns()

    def sent(self) -> None:
        if self._pop_ns:
            row = self.leader[Row.SENDER]
            row[ROW_HEAD:] = 0
            row[ROW_HEAD + Point.SENDER_POP] = self._pop_ns
            row[ROW_HEAD + Point.SEND] = time.monotonic_ns()
            row[C_GEN] = self._seen_gen
            self._pop_ns = 0

    def received(self) -> None:
        """Per message received on the data channel."""
        if self._recv_ns:
            return
        self._count += 1
        if not _sampling(self.area, self.every, self._count):
            return
        now = time.monotonic_ns()
        fr = self.follower
        done = int(fr[FRow.RAFT, C_GEN]) == int(fr[FRow.SENDER, C_GEN]) and fr[FRow.RAFT, ROW_HEAD + FPoint.ACK_SENT]
        if self._started_ns and not done and now - self._started_ns < SAMPLE_TIMEOUT_NS:
            return  # the previous sample is still in flight
        self._recv_ns = now

    def before_r4(self) -> None:
        """Just before pushing received messages to R4."""
        if not self._recv_ns:
            return
        row = self.follower[FRow.SENDER]
        row[ROW_HEAD:] = 0
        row[ROW_HEAD + FPoint.RECV] = self._recv_ns
        row[ROW_HEAD + FPoint.R4_PUSH] = time.monotonic_ns()
        row[C_EXTRA] += 1
        row[C_GEN] += 1  # last: the raft worker takes the next AppendEntries with entries it steps
        self._started_ns = self._recv_ns
        self._recv_ns = 0
