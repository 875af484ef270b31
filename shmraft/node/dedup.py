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

Truncation of the uncommitted suffix (a follower replacing entries of an old leader) is undone exactly:
every entry above the commit index keeps the previous state of each producer it touched.
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


def event_offset(index: int, position: int) -> int:
    """An event's offset in the total order (docs/PROTOCOL.md section 2)."""
    return index * BATCH_EVENTS_MAX + position


@dataclass(slots=True)
class _Producer:
    high_water: int  # highest sequence in the log
    last_index: int  # log index of its newest event
    spans: deque[tuple[int, np.ndarray]] = field(default_factory=deque)  # (first sequence, offsets)

    def copy(self) -> _Producer:
        return _Producer(self.high_water, self.last_index, deque(self.spans))


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
            state = self._producers.pop(pid, None)
            undo[pid] = state.copy() if state is not None else None
            if state is None:
                state = _Producer(int(seqs[0]) - 1, index)
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
