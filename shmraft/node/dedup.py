"""Idempotent producers: which events of a batch are new, duplicates (with their offset), or out of order.

The table is a deterministic function of the log: it is changed only by `record(index, ...)` in log order,
so every node that holds the same log holds the same table, and a new leader after a failover answers a
retry exactly as the old one would have. It is bounded two ways:

- a producer is forgotten once `horizon_entries` log entries have passed since its last event, or when more
  than `producers_max` producers are known (the one whose last event is oldest in the log goes first);
  both rules depend only on the log. A forgotten producer's next event is accepted as new, so a retry that
  arrives after its producer was forgotten is appended again: the horizon must exceed the time producers
  keep retrying (the default, 100,000 entries, is at least 100,000 events; minutes at any realistic rate);
- per producer, the offsets of its last `spans_max` appended runs are kept to answer duplicates; a
  duplicate older than that is reported as DUPLICATE_TOO_OLD (committed long ago, offset forgotten).

Sequences of one producer must arrive in order: sequence s is accepted only right after s-1 (or as the
first event of an unknown producer). A gap is OUT_OF_ORDER: the producer must first resend what is missing.

Kafka's idempotent producers number their records with an int32 that wraps from 2^31-1 to 0. The Kafka door
(ingest/kafka_door.py) sends them as producer ids with bit 63 set (`KAFKA_PRODUCER_BIT`) and sequences in the
band `KAFKA_SEQUENCE_BASE + s` (s < 2^31, split at the wrap so that every raw sequence is in the band). For
such a producer and sequence the table compares modulo 2^31 (`_unwrap`): a band sequence stands for the
number nearest to the producer's next expected one (within 2^30 either way) that is equal to it modulo 2^31,
so 0 follows 2^31-1 and a retry from before the wrap is still a duplicate. The table keeps that unwrapped
number (an int64: 2^62 + laps * 2^31 + s), so the rule stays a function of the log. A native producer's
sequences (any u64 id, sequences from 0, below 2^63) are compared exactly as before unless it picks an id
with bit 63 set and sequences in the band [2^62, 2^62 + 2^31), which the client library never does
(docs/KAFKA.md section 4).

Truncation of the uncommitted suffix (a follower replacing entries of an old leader) is undone exactly:
every entry above the commit index keeps the previous state of each producer it touched. The same undo
records give the table as it stood at the commit index without replaying the log (`committed_state`), which
is what a snapshot persists (node/snapshot.py); `DedupTable.from_state` rebuilds a table from it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX


class Verdict(enum.IntEnum):
    """What becomes of one event of a batch: one byte per event in a VERDICTS note (node/records.py)."""

    ACCEPT = 0  # new: appended
    DUPLICATE = 1  # in the log already, at the offset that comes with it
    OUT_OF_ORDER = 2  # a gap in the producer's sequences
    DUPLICATE_TOO_OLD = 3  # in the log long ago; its offset is forgotten
    NOT_PROPOSED = 255  # not classified: the raft worker did not propose the batch (not the leader, ...)


DEDUP_PRODUCERS_MAX_DEFAULT: Final = 100_000
DEDUP_HORIZON_ENTRIES_DEFAULT: Final = 100_000
DEDUP_SPANS_MAX_DEFAULT: Final = 64
NO_OFFSET: Final = -1
KAFKA_PRODUCER_BIT: Final = 1 << 63  # producer ids of Kafka idempotent producers (ingest/kafka_door.py)
KAFKA_SEQUENCE_BASE: Final = 1 << 62  # Kafka sequence s is sent as KAFKA_SEQUENCE_BASE + s (node/batching.py too)
KAFKA_SEQUENCE_MODULUS: Final = 1 << 31  # Kafka's int32 sequence wraps from 2^31-1 to 0
_KAFKA_HALF: Final = KAFKA_SEQUENCE_MODULUS // 2  # how far from the expected sequence a Kafka one may stand


def event_offset(index: int, position: int) -> int:
    """An event's offset in the total order (docs/PROTOCOL.md section 2)."""
    return index * BATCH_EVENTS_MAX + position


def _unwrap(pid: int, seqs: np.ndarray, high_water: int) -> np.ndarray:
    """The sequences (int64) as the table compares them: a Kafka producer's band sequences (module docstring)
    become the number nearest to `high_water + 1` that is equal to them modulo 2^31; others are unchanged."""
    nxt = high_water + 1
    if not pid & KAFKA_PRODUCER_BIT or nxt < KAFKA_SEQUENCE_BASE:
        return seqs
    band = (seqs >= KAFKA_SEQUENCE_BASE) & (seqs < KAFKA_SEQUENCE_BASE + KAFKA_SEQUENCE_MODULUS)
    if not band.any():
        return seqs
    delta = (seqs - nxt) % KAFKA_SEQUENCE_MODULUS
    delta = np.where(delta >= _KAFKA_HALF, delta - KAFKA_SEQUENCE_MODULUS, delta)
    return np.where(band, nxt + delta, seqs)


@dataclass(slots=True)
class _Producer:
    high_water: int  # highest sequence in the log
    last_index: int  # log index of its newest event
    spans: deque[tuple[int, np.ndarray]] = field(default_factory=deque)  # (first sequence, offsets)

    def copy(self) -> _Producer:
        return _Producer(self.high_water, self.last_index, deque(self.spans))


@dataclass(frozen=True, slots=True)
class TableState:
    """The table at log index `index` as columns (what a snapshot stores), producers sorted by id.

    Per producer (P rows): `producer_ids` (strictly increasing), `high_water`, `last_index`, `span_counts`
    (its spans, oldest first, are the next span_counts[i] rows of the span columns). Per span (S rows):
    `span_first_seq`, `span_index` (the log index of the run: all its offsets are in that entry) and
    `span_lengths`. Per event (E rows): `positions` in its batch, so the run's offsets are
    event_offset(span_index, positions). The order of `_producers` (by last index, then id) is implied.
    """

    index: int
    producer_ids: np.ndarray  # uint64 [P]
    high_water: np.ndarray  # int64 [P]
    last_index: np.ndarray  # int64 [P]
    span_counts: np.ndarray  # uint16 [P]
    span_first_seq: np.ndarray  # int64 [S]
    span_index: np.ndarray  # int64 [S]
    span_lengths: np.ndarray  # uint8 [S]
    positions: np.ndarray  # uint8 [E]

    def same_as(self, other: TableState) -> bool:
        """Equal index and columns (dataclass equality would compare arrays elementwise)."""
        return self.index == other.index and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in _STATE_ARRAYS
        )


_STATE_ARRAYS: Final = (
    "producer_ids",
    "high_water",
    "last_index",
    "span_counts",
    "span_first_seq",
    "span_index",
    "span_lengths",
    "positions",
)


class DedupTable:
    """Producer id -> high-water sequence and recent offsets; see the module docstring for the rules."""

    def __init__(
        self,
        producers_max: int = DEDUP_PRODUCERS_MAX_DEFAULT,
        horizon_entries: int = DEDUP_HORIZON_ENTRIES_DEFAULT,
        spans_max: int = DEDUP_SPANS_MAX_DEFAULT,
    ):
        assert producers_max >= 1 and horizon_entries >= 1 and spans_max >= 1
        self.producers_max = producers_max
        self.horizon_entries = horizon_entries
        self.spans_max = spans_max
        self._producers: OrderedDict[int, _Producer] = OrderedDict()  # ordered by last_index, oldest first
        self._undo: OrderedDict[int, dict[int, _Producer | None]] = OrderedDict()  # index -> prior states
        self.last_index = 0
        self.commit_index = 0  # the highest commit index heard; no undo record is kept at or below it

    def __len__(self) -> int:
        return len(self._producers)

    def classify(self, producer_ids: np.ndarray, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`Verdict` (ACCEPT, DUPLICATE, OUT_OF_ORDER or DUPLICATE_TOO_OLD) and known offset for each event.

        Events of one producer within the batch are judged in order, as if appended one after another.
        Work is per distinct producer in the batch, not per event.
        """
        n = producer_ids.size
        verdict = np.full(n, Verdict.ACCEPT, dtype=np.uint8)
        offsets = np.full(n, NO_OFFSET, dtype=np.int64)
        for pid in np.unique(producer_ids).tolist():
            mask = np.flatnonzero(producer_ids == pid)
            seqs = sequences[mask].astype(np.int64)
            state = self._producers.get(pid)
            seqs = _unwrap(pid, seqs, int(seqs[0]) - 1 if state is None else state.high_water)
            if state is None:
                expected = np.arange(seqs[0], seqs[0] + seqs.size)
                new = np.zeros(seqs.size, dtype=bool)
            else:
                new = seqs > state.high_water
                dup = ~new
                if dup.any():
                    d_off, d_ver = self._lookup(state, seqs[dup])
                    offsets[mask[dup]] = d_off
                    verdict[mask[dup]] = d_ver
                first_new = seqs[new]
                expected = np.arange(state.high_water + 1, state.high_water + 1 + first_new.size)
                seqs = first_new
                mask = mask[new]
            # Among the new ones, accept the contiguous run that starts where expected; the rest is a gap.
            ok = seqs == expected[: seqs.size]
            if not ok.all():
                bad_from = int(np.argmin(ok))
                verdict[mask[bad_from:]] = Verdict.OUT_OF_ORDER
        return verdict, offsets

    def _lookup(self, state: _Producer, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offs = np.full(seqs.size, NO_OFFSET, dtype=np.int64)
        for first, span_offsets in state.spans:
            hit = (seqs >= first) & (seqs < first + span_offsets.size)
            if hit.any():
                offs[hit] = span_offsets[seqs[hit] - first]
        verdict = np.where(offs == NO_OFFSET, Verdict.DUPLICATE_TOO_OLD, Verdict.DUPLICATE).astype(np.uint8)
        return offs, verdict

    def record(self, index: int, producer_ids: np.ndarray, sequences: np.ndarray, commit_index: int) -> None:
        """Apply log entry `index` (entries must come in log order). Only accepted events may be in it."""
        assert index > self.last_index, (index, self.last_index)
        undo: dict[int, _Producer | None] = {}
        positions = np.arange(producer_ids.size, dtype=np.int64)
        for pid in np.unique(producer_ids).tolist():
            mask = producer_ids == pid
            seqs = sequences[mask].astype(np.int64)
            offs = event_offset(index, 0) + positions[mask]
            prior = self._producers.pop(pid, None)
            seqs = _unwrap(pid, seqs, int(seqs[0]) - 1 if prior is None else prior.high_water)
            undo[pid] = prior  # never mutated again (copy on write): undo records and frozen views share it
            state = _Producer(int(seqs[0]) - 1, index) if prior is None else prior.copy()
            assert state.high_water < seqs[0], f"producer {pid}: sequence {seqs[0]} after {state.high_water}"
            state.high_water = int(seqs[-1])
            state.last_index = index
            state.spans.append((int(seqs[0]), offs))
            while len(state.spans) > self.spans_max:
                state.spans.popleft()
            self._producers[pid] = state  # re-inserted at the newest end
        self._undo[index] = undo
        self.last_index = index
        self._forget(index, undo)
        self.committed(commit_index)

    def _forget(self, index: int, undo: dict[int, _Producer | None]) -> None:
        while self._producers:
            pid, oldest = next(iter(self._producers.items()))
            if len(self._producers) <= self.producers_max and oldest.last_index > index - self.horizon_entries:
                break
            del self._producers[pid]
            undo.setdefault(pid, oldest)  # truncating this entry brings the producer back

    def committed(self, commit_index: int) -> None:
        """Entries at or below the commit index can never be truncated: drop their undo records."""
        self.commit_index = max(self.commit_index, commit_index)
        while self._undo and next(iter(self._undo)) <= commit_index:
            self._undo.popitem(last=False)

    def truncate(self, from_index: int) -> None:
        """Undo entries >= from_index (all above the commit index), newest first."""
        while self._undo and next(reversed(self._undo)) >= from_index:
            index, undo = self._undo.popitem()
            for pid, prior in undo.items():
                self._producers.pop(pid, None)
                if prior is not None:
                    self._producers[pid] = prior
        self._producers = OrderedDict(sorted(self._producers.items(), key=lambda kv: (kv[1].last_index, kv[0])))
        self.last_index = min(self.last_index, from_index - 1)

    # --- snapshots ---------------------------------------------------------------------------------------

    def committed_view(self) -> StateExport:
        """A frozen view of the table at min(commit index, last index), taken in O(producers) dict work
        without replaying the log: the live table with, for each producer an entry above that index touched,
        its prior state from the oldest such entry's undo record. `_Producer` objects are never mutated once
        shared (record() copies on write), so the view stays exact while the table moves on; its columns
        are built in steps (`StateExport.step`) off the hot path."""
        at = min(self.commit_index, self.last_index)
        states: dict[int, _Producer | None] = dict(self._producers)
        seen: set[int] = set()
        for index, undo in self._undo.items():  # oldest first: the first prior seen is the state at `at`
            if index > at:
                for pid, prior in undo.items():
                    if pid not in seen:
                        seen.add(pid)
                        states[pid] = prior
        return StateExport(at, {pid: p for pid, p in states.items() if p is not None})

    def committed_state(self) -> TableState:
        """`committed_view()` built in one go (tests, tools, start-up)."""
        export = self.committed_view()
        while not export.step():
            pass
        return export.result()

    @classmethod
    def from_state(
        cls,
        state: TableState,
        producers_max: int = DEDUP_PRODUCERS_MAX_DEFAULT,
        horizon_entries: int = DEDUP_HORIZON_ENTRIES_DEFAULT,
        spans_max: int = DEDUP_SPANS_MAX_DEFAULT,
    ) -> DedupTable:
        """The table at `state.index`, committed (no undo records): continue with record(state.index + 1)."""
        table = cls(producers_max, horizon_entries, spans_max)
        event_ends = np.cumsum(state.span_lengths, dtype=np.int64)
        offsets = np.repeat(state.span_index * BATCH_EVENTS_MAX, state.span_lengths) + state.positions
        starts = (event_ends - state.span_lengths).tolist()
        chunks = [offsets[a:b] for a, b in zip(starts, event_ends.tolist(), strict=True)]
        spans = list(zip(state.span_first_seq.tolist(), chunks, strict=True))
        span_ends = np.cumsum(state.span_counts, dtype=np.int64).tolist()
        span_starts = [0, *span_ends[:-1]] if span_ends else []
        columns = (state.last_index.tolist(), state.producer_ids.tolist(), state.high_water.tolist())
        rows = sorted(zip(*columns, span_starts, span_ends, strict=True))
        table._producers = OrderedDict(
            (pid, _Producer(high_water, last, deque(spans[a:b]))) for last, pid, high_water, a, b in rows
        )
        table.last_index = table.commit_index = state.index
        return table


EXPORT_STEP_PRODUCERS: Final = 4096  # producers turned into columns per StateExport.step (about 10 ms)


class StateExport:
    """Columns of a frozen table view (`DedupTable.committed_view`), built a slice of producers at a time so
    that a large table never holds up the raft loop for long."""

    def __init__(self, index: int, states: dict[int, _Producer]) -> None:
        self.index = index
        self._states = states
        self._pids = sorted(states)
        self._done = 0
        self._chunks: list[tuple[np.ndarray, ...]] = []  # per step: rows, first sequences, lengths, offsets

    def step(self, producers: int = EXPORT_STEP_PRODUCERS) -> bool:
        """Convert the next `producers` producers; True once all are done."""
        chunk = [self._states[pid] for pid in self._pids[self._done : self._done + producers]]
        self._done += len(chunk)
        if chunk:
            rows = np.array([(p.high_water, p.last_index, len(p.spans)) for p in chunk], dtype=np.int64)
            spans = [span for p in chunk for span in p.spans]
            offsets = [o for _, o in spans]
            first_seq = np.fromiter((first for first, _ in spans), dtype=np.int64, count=len(spans))
            lengths = np.fromiter(map(len, offsets), dtype=np.int64, count=len(offsets))
            self._chunks.append((rows, first_seq, lengths, np.concatenate(offsets)))
        return self._done >= len(self._pids)

    def result(self) -> TableState:
        """The columns (call once `step` returned True)."""
        assert self._done >= len(self._pids), "StateExport.result() before the last step"
        empty = np.zeros(0, dtype=np.int64)
        rows = np.concatenate([c[0] for c in self._chunks]) if self._chunks else np.zeros((0, 3), np.int64)
        first_seq, lengths, flat = (
            np.concatenate([c[k] for c in self._chunks]) if self._chunks else empty for k in (1, 2, 3)
        )
        starts = np.cumsum(lengths) - lengths
        return TableState(
            index=self.index,
            producer_ids=np.array(self._pids, dtype=np.uint64),
            high_water=rows[:, 0].copy(),
            last_index=rows[:, 1].copy(),
            span_counts=rows[:, 2].astype(np.uint16),
            span_first_seq=first_seq,
            span_index=(flat[starts] // BATCH_EVENTS_MAX).astype(np.int64),
            span_lengths=lengths.astype(np.uint8),
            positions=(flat % BATCH_EVENTS_MAX).astype(np.uint8),
        )
