"""The produce tracker: which PRODUCE requests wait for what, and the answer each gets (pure: no I/O, no clock).

A request is submitted with its connection id, correlation id, producer id, first sequence and event
lengths; the raft worker's notes (R5, shmraft/node/records.py) then say, per event, at which offset it was
appended, or what the dedup window said of it (shmraft/node/dedup.py):

- APPENDED and DUPLICATE give an event its offset; a request whose events all have one waits for the commit
  index to reach the highest log index among them, and is then answered PRODUCED with the offsets;
- OUT_OF_ORDER fails the request OUT_OF_ORDER_SEQUENCE; DUPLICATE_TOO_OLD (in the log long ago, offset
  forgotten) fails it SEQUENCE_TOO_OLD; any other verdict (a frame the raft worker could not propose)
  NOT_LEADER;
- a new term or another leader fails every waiting request NOT_LEADER, and so does `fail_all`;
- a request past its timeout fails TIMEOUT (UNAVAILABLE where this node is no longer the leader).

Every request gets exactly one answer. Time comes in as monotonic nanoseconds from the caller; answers go out
as `Answer` values that the caller encodes for its protocol and writes. Work is per request and per note,
with numpy over the events, never a Python step per event.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.node import dedup as dd
from shmraft.node.batching import EVENT_BYTES_MAX
from shmraft.wire.client import ErrorCode

PRODUCE_TIMEOUT_MAX_MS: Final = 120_000
SEQUENCE_END: Final = 2**63  # first_sequence + event count must stay below this
NS_PER_MS: Final = 1_000_000
TIMEOUT_MESSAGE: Final = "not committed within the request's timeout; retry with the same producer id and sequences"


@dataclass(frozen=True, slots=True)
class Answer:
    """The one answer to a PRODUCE request: PRODUCED (`offsets` set) or an error (`code` set)."""

    conn_id: int
    correlation_id: int
    size_bytes: int  # the request's bytes, no longer in flight once this answer goes out (0: never admitted)
    offsets: np.ndarray | None = None  # int64, one per event, in request order
    code: ErrorCode | None = None
    message: str = ""
    latency_ns: int = 0  # PRODUCED: receipt to answer


@dataclass(eq=False, slots=True)
class _Pending:
    conn_id: int
    correlation_id: int
    producer_id: int
    first_sequence: int
    count: int
    size_bytes: int
    deadline_ns: int
    received_ns: int
    offsets: np.ndarray  # -1 until known
    unresolved: int  # events without an offset yet
    max_index: int = 0  # the highest log index among the events' offsets
    done: bool = False


class ProduceTracker:
    """PRODUCE requests from receipt to answer; see the module docstring for the rules."""

    def __init__(self, node_id: int, term: int, timeout_ms_default: int) -> None:
        self.node_id = node_id
        self.known_term = term  # the term of the last LEADER note (or of the state block at start)
        self.timeout_ms_default = timeout_ms_default
        self._by_producer: dict[int, list[_Pending]] = {}
        self._awaiting_commit: list[tuple[int, int, _Pending]] = []  # heap of (max_index, arrival, request)
        self._arrival = itertools.count()

    @property
    def waiting(self) -> int:
        """Producers with requests not yet answered."""
        return len(self._by_producer)

    # --- requests in -----------------------------------------------------------------------------------------

    def submit(
        self,
        conn_id: int,
        correlation_id: int,
        producer_id: int,
        first_sequence: int,
        lengths: np.ndarray,
        size_bytes: int,
        timeout_ms: int,
        now_ns: int,
    ) -> Answer | None:
        """Admit a request (None: it waits for notes) or refuse it at once (TOO_LARGE, MALFORMED)."""
        largest = int(lengths.max())
        if largest > EVENT_BYTES_MAX:
            return Answer(
                conn_id,
                correlation_id,
                0,
                code=ErrorCode.TOO_LARGE,
                message=f"event of {largest} bytes: expected at most {EVENT_BYTES_MAX}",
            )
        count = int(lengths.size)
        if first_sequence + count >= SEQUENCE_END:
            return Answer(
                conn_id, correlation_id, 0, code=ErrorCode.MALFORMED, message="first_sequence: expected < 2^63 - count"
            )
        timeout_ms = min(timeout_ms or self.timeout_ms_default, PRODUCE_TIMEOUT_MAX_MS)
        pending = _Pending(
            conn_id,
            correlation_id,
            producer_id,
            first_sequence,
            count,
            size_bytes,
            now_ns + timeout_ms * NS_PER_MS,
            now_ns,
            np.full(count, -1, dtype=np.int64),
            count,
        )
        self._by_producer.setdefault(producer_id, []).append(pending)
        return None

    # --- notes in (R5) ---------------------------------------------------------------------------------------

    def on_appended(self, producer_ids: np.ndarray, sequences: np.ndarray, offsets: np.ndarray) -> None:
        """Events appended to the log at `offsets` (an APPENDED note)."""
        if producer_ids.size and bool((producer_ids == producer_ids[0]).all()):  # the common case: one producer
            self._resolve(int(producer_ids[0]), sequences, offsets)
            return
        for pid in np.unique(producer_ids).tolist():
            mask = producer_ids == pid
            self._resolve(pid, sequences[mask], offsets[mask])

    def on_verdicts(
        self, producer_ids: np.ndarray, sequences: np.ndarray, verdicts: np.ndarray, offsets: np.ndarray
    ) -> list[Answer]:
        """The dedup window's verdicts on events not appended (a VERDICTS note): duplicates get the offset they
        already have; the requests holding the others fail."""
        out: list[Answer] = []
        for pid in np.unique(producer_ids).tolist():
            mask = producer_ids == pid
            v, seqs, offs = verdicts[mask], sequences[mask], offsets[mask]
            dup = v == dd.Verdict.DUPLICATE
            if dup.any():
                self._resolve(pid, seqs[dup], offs[dup])
            bad = ~dup
            if bad.any():
                self._fail_sequences(pid, seqs[bad], v[bad], out)
        return out

    def on_leader(self, term: int, leader_id: int) -> list[Answer]:
        """A LEADER note: unless it names this node in the term already known, every waiting request fails."""
        if term == self.known_term and leader_id == self.node_id:
            return []
        self.known_term = term
        return self.fail_all(ErrorCode.NOT_LEADER, f"leadership changed (term {term}, leader {leader_id or '?'})")

    def committed(self, commit_index: int, now_ns: int) -> list[Answer]:
        """PRODUCED for every request whose events all have offsets at or below `commit_index`."""
        out: list[Answer] = []
        heap = self._awaiting_commit
        while heap and heap[0][0] <= commit_index:
            _, _, p = heapq.heappop(heap)
            if p.done:
                continue
            p.done = True
            self._forget(p)
            out.append(Answer(p.conn_id, p.correlation_id, p.size_bytes, p.offsets, latency_ns=now_ns - p.received_ns))
        return out

    # --- time and failover -----------------------------------------------------------------------------------

    def expire(self, now_ns: int, is_leader: bool) -> list[Answer]:
        """Fail requests past their deadline: TIMEOUT on the leader, UNAVAILABLE elsewhere."""
        out: list[Answer] = []
        code = ErrorCode.TIMEOUT if is_leader else ErrorCode.UNAVAILABLE
        for lst in list(self._by_producer.values()):
            for p in list(lst):
                if now_ns >= p.deadline_ns:
                    self._fail(p, code, TIMEOUT_MESSAGE, out)
        return out

    def fail_all(self, code: ErrorCode, message: str) -> list[Answer]:
        """Fail every waiting request (leadership lost or changed)."""
        out: list[Answer] = []
        for lst in list(self._by_producer.values()):
            for p in list(lst):
                self._fail(p, code, message, out)
        self._awaiting_commit.clear()
        return out

    # --- inside ----------------------------------------------------------------------------------------------

    def _resolve(self, pid: int, seqs: np.ndarray, offsets: np.ndarray) -> None:
        """Record known offsets for a producer's sequences in every waiting request that holds them."""
        pendings = self._by_producer.get(pid)
        if not pendings:
            return
        lo, hi = int(seqs.min()), int(seqs.max())
        for p in pendings:
            if p.done or hi < p.first_sequence or lo >= p.first_sequence + p.count:
                continue
            rel = seqs.astype(np.int64) - p.first_sequence
            hit = (rel >= 0) & (rel < p.count)
            if not hit.any():
                continue
            idx = rel[hit]
            fresh = p.offsets[idx] < 0
            p.offsets[idx] = offsets[hit]
            p.unresolved -= int(np.count_nonzero(fresh))
            p.max_index = max(p.max_index, int(offsets[hit].max()) // BATCH_EVENTS_MAX)
            if p.unresolved == 0:
                heapq.heappush(self._awaiting_commit, (p.max_index, next(self._arrival), p))

    def _fail_sequences(self, pid: int, seqs: np.ndarray, verdicts: np.ndarray, out: list[Answer]) -> None:
        for p in list(self._by_producer.get(pid, ())):
            rel = seqs.astype(np.int64) - p.first_sequence
            hit = (rel >= 0) & (rel < p.count)
            if not hit.any():
                continue
            v = int(verdicts[hit][0])
            if v == dd.Verdict.OUT_OF_ORDER:
                code = ErrorCode.OUT_OF_ORDER_SEQUENCE
                message = f"producer {pid}: sequence {int(seqs[hit][0])} does not follow the last one in the log"
            elif v == dd.Verdict.DUPLICATE_TOO_OLD:
                code = ErrorCode.SEQUENCE_TOO_OLD
                message = (
                    f"producer {pid}: sequence {int(seqs[hit][0])} is in the log already, older than the dedup "
                    "window remembers (its offset is forgotten); do not resend it"
                )
            else:  # Verdict.NOT_PROPOSED: the raft worker could not propose the frame
                code = ErrorCode.NOT_LEADER
                message = "leadership changed before the events were appended"
            self._fail(p, code, message, out)

    def _fail(self, p: _Pending, code: ErrorCode, message: str, out: list[Answer]) -> None:
        if p.done:
            return
        p.done = True
        self._forget(p)
        out.append(Answer(p.conn_id, p.correlation_id, p.size_bytes, code=code, message=message))

    def _forget(self, p: _Pending) -> None:
        lst = self._by_producer.get(p.producer_id)
        if lst is not None:
            try:
                lst.remove(p)
            except ValueError:
                pass
            if not lst:
                del self._by_producer[p.producer_id]
