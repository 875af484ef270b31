"""The fetch server: FETCH answers from the committed log (docs/PROTOCOL.md section 2.5), on any node.

Committed batches are read from the raft worker's RocksDB log through a secondary instance
(`RocksLogReader`), caught up when the commit index passes what it has seen, and reopened when the raft worker
quarantined the log and started a new one (the state block's `quarantines` counter). An answer holds whole
batches from the requested offset on (the first from the requested position), until their event bytes reach
`min(max_bytes, fetch_bytes_max)`: at least one batch with events whenever one is committed at or after the
offset. Leaders' no-op entries and control entries (wire/control.py) are skipped, so an empty answer always
means "nothing committed here yet".
A FETCH below the earliest held offset, or past the node's log end, is answered OFFSET_OUT_OF_RANGE with the
earliest offset and the commit offset. A FETCH with `max_wait_ms > 0` that would be answered empty waits
(a long poll, at most FETCH_WAIT_MAX_MS) until an event is committed at or after its offset or its wait ends.

The server is protocol-neutral: it finds the committed spans (`FetchResult`), and the encoder given with the
request writes the answer: `encode_native` (FETCHED or ERROR) by default, `encode_frames_answer` (FRAMES or ERROR)
for a FETCH_FRAMES, the Kafka door's for Kafka Fetch. A FETCH_FRAMES is served without decoding the frames: they
go out as the log stores them (the consumer checks their CRCs), their whole stored size counted against
`max_bytes`; a frame whose event count reads as impossible is sent rather than skipped, so that the consumer's
check, not this server, reports it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.config import NodeConfig
from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.ingest.connections import Connection
from shmraft.ipc.state import StateBlock
from shmraft.storage.rocks import LogCompactedError, RocksLogReader, StorageError
from shmraft.wire import client as cp
from shmraft.wire.control import is_control
from shmraft.wire.frame import Batch, decode_batch, frame_event_count

FETCH_WAIT_MAX_MS: Final = 30_000
_FETCHED_HEAD: Final = struct.Struct("<QQI")  # next_offset, commit_offset, event_count (docs/PROTOCOL.md)


@dataclass(frozen=True, slots=True)
class FetchedSpan:
    """The events of one committed log entry from position `skip` on: the decoded `batch` (FETCH), or the
    stored `frame` undecoded (FETCH_FRAMES, `batch` None)."""

    index: int
    skip: int
    batch: Batch | None
    frame: bytes | memoryview = b""

    @property
    def first_offset(self) -> int:
        return self.index * BATCH_EVENTS_MAX + self.skip


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a fetch found: spans of committed events (none: nothing committed at or after the offset yet), or
    OFFSET_OUT_OF_RANGE (`out_of_range` says why)."""

    next_offset: int
    commit_offset: int
    earliest_offset: int
    spans: tuple[FetchedSpan, ...] = ()
    out_of_range: str = ""


# (correlation id, result) -> the answer's bytes, or None when the encoder delivered the answer itself (the Kafka
# door does, to keep a connection's answers in request order)
FetchEncoder = Callable[[int, FetchResult], bytes | None]


@dataclass(eq=False, slots=True)
class _Parked:
    conn: Connection
    request: cp.Fetch
    deadline_s: float  # monotonic
    commit_seen: int  # the commit index when it was last found empty: worth trying again once it moves
    encode: FetchEncoder


class FetchServer:
    """Answers FETCH requests with committed events; holds long polls until they can be answered."""

    def __init__(
        self, config: NodeConfig, state: StateBlock, log: logging.Logger, write: Callable[[Connection, bytes], None]
    ) -> None:
        self.config = config
        self.state = state
        self.log = log
        self.write = write  # queue an answer on a connection
        self.parked: list[_Parked] = []
        self.log_reader: RocksLogReader | None = None
        self.reader_quarantines = state.get("quarantines")  # the raft worker's count when the view opened

    def waiting_connections(self) -> set[int]:
        """Ids of the connections with a long poll parked (they are not idle)."""
        return {f.conn.id for f in self.parked}

    def fetch(self, conn: Connection, req: cp.Fetch, now_s: float, encode: FetchEncoder | None = None) -> None:
        """A new FETCH: answer it now, or park it if it would be answered empty and asks to wait. `encode`
        writes the answer (default: the native FETCHED / ERROR)."""
        wait_s = min(req.max_wait_ms, FETCH_WAIT_MAX_MS) / 1000
        default = encode_frames_answer if req.frames else encode_native
        self._serve(_Parked(conn, req, now_s + wait_s, 0, encode or default), now_s)

    def offsets(self) -> tuple[int, int] | None:
        """(earliest offset, commit offset) of this node's committed log; None while the log is not readable."""
        commit = self.state.get("commit_index")
        reader = self._reader()
        if reader is None:
            return None
        reader.catch_up()
        return earliest_offset(reader.first_index()), commit_offset(commit)

    def retry(self, now_s: float) -> None:
        """Try the parked fetches again where the commit index moved, and answer those whose wait has ended."""
        if not self.parked:
            return
        waiting = self.parked
        self.parked = []
        commit = self.state.get("commit_index")
        for f in waiting:
            if f.conn.closed:
                continue
            if commit > f.commit_seen or now_s >= f.deadline_s:
                self._serve(f, now_s)
            else:
                self.parked.append(f)

    def close(self) -> None:
        if self.log_reader is not None:
            self.log_reader.close()

    def _serve(self, f: _Parked, now_s: float) -> None:
        commit = self.state.get("commit_index")
        result = self._collect(f.request, commit)
        if not result.spans and not result.out_of_range and now_s < f.deadline_s:
            f.commit_seen = commit
            self.parked.append(f)
            return
        answer = f.encode(f.request.correlation_id, result)
        if answer is not None:
            self.write(f.conn, answer)

    def _reader(self) -> RocksLogReader | None:
        quarantines = self.state.get("quarantines")
        if quarantines != self.reader_quarantines and self.log_reader is not None:
            # the raft worker moved a corrupt log aside and started a new one: this view shows the old files
            self.log.warning("the log was quarantined and re-created; reopening the fetch view")
            self.log_reader.close()
            self.log_reader = None
        self.reader_quarantines = quarantines
        if self.log_reader is None:
            try:
                self.log_reader = RocksLogReader(
                    str(self.config.node_dir / "log"), str(self.config.node_dir / "ingest-secondary")
                )
            except StorageError as exc:
                self.log.debug("log not readable yet: %s", exc)
                return None
        return self.log_reader

    def _collect(self, req: cp.Fetch, commit: int) -> FetchResult:
        """What `req` finds with the log committed up to `commit`: spans of events, OFFSET_OUT_OF_RANGE, or no
        span when no event is committed at or after its offset (yet)."""
        empty = FetchResult(max(req.from_offset, commit_offset(commit)), commit_offset(commit), 0)
        reader = self._reader()
        if reader is None:
            return empty
        if reader.last_index() < commit:
            reader.catch_up()
        index, position = divmod(req.from_offset, BATCH_EVENTS_MAX)
        if req.from_offset < earliest_offset(reader.first_index()) or index > max(reader.last_index(), commit) + 1:
            reader.catch_up()  # the view may be behind the raft worker's retention or appends: look again
            earliest = earliest_offset(reader.first_index())
            end_index = max(reader.last_index(), commit) + 1
            if req.from_offset < earliest or index > end_index:
                where = (
                    f"below the earliest held offset {earliest}"
                    if req.from_offset < earliest
                    else (f"past this node's log end {end_index * BATCH_EVENTS_MAX}")
                )
                return FetchResult(
                    req.from_offset,
                    commit_offset(commit),
                    earliest,
                    out_of_range=f"offset {req.from_offset} is {where} (commit offset {commit_offset(commit)})",
                )
        max_bytes = max(1, min(req.max_bytes, self.config.fetch_bytes_max))
        last = min(commit, reader.last_index())
        lo = max(index, reader.first_index(), 1)
        spans: list[FetchedSpan] = []
        total = 0
        next_offset = req.from_offset
        try:
            while lo <= last and total < max_bytes:
                entries = reader.entries(lo, last + 1, max_bytes - total)
                if not entries:
                    break
                for e in entries:
                    next_offset = (e.index + 1) * BATCH_EVENTS_MAX
                    if not e.data or is_control(e.data):  # a no-op or a control entry: no events, skipped
                        continue
                    if req.frames:  # as stored, undecoded: the consumer checks the CRC
                        skip = position if e.index == index else 0
                        count = frame_event_count(e.data)
                        if 1 <= count <= BATCH_EVENTS_MAX and skip >= count:
                            continue
                        spans.append(FetchedSpan(e.index, skip, None, e.data))
                        total += len(e.data)
                        if total >= max_bytes:
                            break
                        continue
                    b = decode_batch(e.data)
                    skip = position if e.index == index else 0
                    if skip >= b.header.event_count:
                        continue
                    spans.append(FetchedSpan(e.index, skip, b))
                    total += len(b.data) - int(b.offsets[skip])
                    if total >= max_bytes:
                        break
                lo = next_offset // BATCH_EVENTS_MAX
        except LogCompactedError as exc:  # retention passed the offset while this view caught up
            return FetchResult(
                req.from_offset,
                commit_offset(commit),
                earliest_offset(exc.first_index),
                out_of_range=(
                    f"offset {req.from_offset} is below the earliest held offset {earliest_offset(exc.first_index)}"
                ),
            )
        if not spans:
            return empty
        return FetchResult(next_offset, commit_offset(commit), earliest_offset(reader.first_index()), tuple(spans))


def encode_native(cid: int, result: FetchResult) -> bytes:
    """The native answer: FETCHED with the spans' events, or ERROR OFFSET_OUT_OF_RANGE."""
    if result.out_of_range:
        return cp.encode_error(
            cid,
            cp.ErrorCode.OFFSET_OUT_OF_RANGE,
            result.out_of_range,
            earliest_offset=result.earliest_offset,
            latest_offset=result.commit_offset,
        )
    if not result.spans:
        return cp.encode_fetched(cid, result.next_offset, result.commit_offset, [], [])
    offsets, lengths, datas = [], [], []
    for s in result.spans:
        b = s.batch
        assert b is not None  # a FETCH (not FETCH_FRAMES) decodes every span
        offsets.append(s.first_offset + np.arange(b.header.event_count - s.skip, dtype=np.uint64))
        lengths.append(b.lengths[s.skip :])
        datas.append(b.data[int(b.offsets[s.skip]) :])
    return encode_fetched_batches(
        cid, result.next_offset, result.commit_offset, np.concatenate(offsets), np.concatenate(lengths), datas
    )


def encode_frames_answer(cid: int, result: FetchResult) -> bytes:
    """The FETCH_FRAMES answer: FRAMES with the stored frames as they are, or ERROR OFFSET_OUT_OF_RANGE."""
    if result.out_of_range:
        return encode_native(cid, result)
    spans = result.spans
    first_skip = spans[0].skip if spans else 0
    return cp.encode_frames(
        cid, result.next_offset, result.commit_offset, first_skip, [s.index for s in spans], [s.frame for s in spans]
    )


def commit_offset(commit_index: int) -> int:
    """The offset just past the last committed batch's 64 offsets: every event below it is committed."""
    return (commit_index + 1) * BATCH_EVENTS_MAX


def earliest_offset(first_index: int) -> int:
    """The earliest offset a FETCH may name: 0 while the log still begins at index 1, else the first offset
    of the first entry held (offsets below it were deleted by retention)."""
    return 0 if first_index <= 1 else first_index * BATCH_EVENTS_MAX


def encode_fetched_batches(
    cid: int, next_offset: int, commit_offset: int, offsets: np.ndarray, lengths: np.ndarray, datas: list[memoryview]
) -> bytes:
    """A FETCHED answer built from whole batches (no per-event objects)."""
    head = _FETCHED_HEAD.pack(next_offset, commit_offset, offsets.size)
    body = b"".join([head, offsets.astype("<u8").tobytes(), lengths.astype("<u4").tobytes(), *datas])
    return cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.FETCHED, len(body), cid) + body
