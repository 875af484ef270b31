"""The fetch server: FETCH answers from the committed log (docs/PROTOCOL.md section 2), on any node.

Committed batches are read from the raft worker's RocksDB log through a secondary instance
(`RocksLogReader`), caught up when the commit index passes what it has seen, and reopened when the raft worker
quarantined the log and started a new one (the state block's `quarantines` counter). An answer holds whole
batches from the requested offset on, up to `min(max_bytes, fetch_bytes_max)` (at least one batch), built
without a per-event object. A fetch at or past the commit index with `max_wait_ms > 0` waits (a long poll,
at most FETCH_WAIT_MAX_MS) until events are committed there or its wait ends, and is then answered.
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
from shmraft.wire.frame import decode_batch

FETCH_WAIT_MAX_MS: Final = 30_000
_FETCHED_HEAD: Final = struct.Struct("<QQI")  # next_offset, commit_offset, event_count (docs/PROTOCOL.md)


@dataclass(eq=False, slots=True)
class _Parked:
    conn: Connection
    request: cp.Fetch
    deadline_s: float  # monotonic


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

    def fetch(self, conn: Connection, req: cp.Fetch, now_s: float) -> None:
        """A new FETCH: answer it now, or park it if it asks to wait for events not yet committed."""
        self._fetch(conn, req, now_s, first_try=True)

    def retry(self, now_s: float) -> None:
        """Answer the parked fetches whose offset is now committed or whose wait has ended."""
        if not self.parked:
            return
        waiting = self.parked
        self.parked = []
        for f in waiting:
            if f.conn.closed:
                continue
            commit = self.state.get("commit_index")
            ready = f.request.from_offset // BATCH_EVENTS_MAX <= commit
            if ready or now_s >= f.deadline_s:
                self._fetch(f.conn, f.request, now_s, first_try=False)
            else:
                self.parked.append(f)

    def close(self) -> None:
        if self.log_reader is not None:
            self.log_reader.close()

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

    def _fetch(self, conn: Connection, req: cp.Fetch, now_s: float, first_try: bool) -> None:
        """Answer a fetch if committed events exist at or after its offset; park it (long poll) if not."""
        commit = self.state.get("commit_index")
        index, position = divmod(req.from_offset, BATCH_EVENTS_MAX)
        index = max(index, 1)
        commit_offset = (commit + 1) * BATCH_EVENTS_MAX
        reader = self._reader()
        if index > commit or reader is None:
            if first_try and req.max_wait_ms > 0:
                wait_s = min(req.max_wait_ms, FETCH_WAIT_MAX_MS) / 1000
                self.parked.append(_Parked(conn, req, now_s + wait_s))
                return
            self.write(conn, cp.encode_fetched(req.correlation_id, req.from_offset, commit_offset, [], []))
            return
        if reader.last_index() < commit:
            reader.catch_up()
        max_bytes = max(1, min(req.max_bytes, self.config.fetch_bytes_max))
        try:
            entries = reader.entries(index, min(commit, reader.last_index()) + 1, max_bytes)
        except LogCompactedError as exc:
            message = f"offset {req.from_offset}: the oldest retained is {exc.first_index * BATCH_EVENTS_MAX}"
            self.write(conn, cp.encode_error(req.correlation_id, cp.ErrorCode.OFFSET_OUT_OF_RANGE, message))
            return
        offsets, lengths, datas = [], [], []
        total = 0
        next_offset = req.from_offset
        for e in entries:
            next_offset = (e.index + 1) * BATCH_EVENTS_MAX
            if not e.data:
                continue
            b = decode_batch(e.data)
            skip = position if e.index == index else 0
            if skip >= b.header.event_count:
                continue
            n = b.header.event_count - skip
            offs = e.index * BATCH_EVENTS_MAX + np.arange(skip, skip + n, dtype=np.uint64)
            start = int(b.offsets[skip])
            offsets.append(offs)
            lengths.append(b.lengths[skip:])
            datas.append(b.data[start:])
            total += len(b.data) - start
            if total >= max_bytes:
                break
        if offsets:
            body = encode_fetched_batches(
                req.correlation_id, next_offset, commit_offset, np.concatenate(offsets), np.concatenate(lengths), datas
            )
            self.write(conn, body)
        else:
            self.write(conn, cp.encode_fetched(req.correlation_id, next_offset, commit_offset, [], []))


def encode_fetched_batches(
    cid: int, next_offset: int, commit_offset: int, offsets: np.ndarray, lengths: np.ndarray, datas: list[memoryview]
) -> bytes:
    """A FETCHED answer built from whole batches (no per-event objects)."""
    head = _FETCHED_HEAD.pack(next_offset, commit_offset, offsets.size)
    body = b"".join([head, offsets.astype("<u8").tobytes(), lengths.astype("<u4").tobytes(), *datas])
    return cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, cp.Kind.FETCHED, len(body), cid) + body
