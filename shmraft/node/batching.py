"""Cutting event blocks into batch frames: at most 64 events and 32 KiB of payload per frame.

Pure code, used by the batcher worker. An event block is the body of a client PRODUCE request
(docs/PROTOCOL.md section 2: producer id, first sequence, timeout, count, lengths, bytes) forwarded by
ingest unchanged. Work is per frame and per block, never per event: cut points come from a cumulative
sum of sizes and `searchsorted`.

One rule keeps the offsets a Kafka producer computes exact (docs/KAFKA.md section 2): a Kafka client takes
record i's offset to be `base_offset + i`, which holds while a block lands at consecutive positions, or is cut
only by the 64-event limit (`index*64 + 64 + k` is `(index+1)*64 + k`). So a Kafka door block (first sequence
in `KAFKA_SEQUENCE_BASE`'s band or above, node/dedup.py) that the payload limit would cut in a frame already
holding events starts a frame of its own instead, when from there on only the 64-event limit would cut it
(`_aligned_fit`). Native blocks are packed as before (a native PRODUCED answer lists every event's offset).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.constants import BATCH_EVENTS_MAX, BATCH_PAYLOAD_MAX_BYTES
from shmraft.node.dedup import KAFKA_SEQUENCE_BASE
from shmraft.wire.frame import encode_batch_arrays

BLOCK_HEAD: Final = struct.Struct("<QQII")  # producer_id, first_sequence, timeout_ms, event_count
PER_EVENT_TABLE_BYTES: Final = 4 + 8 + 8  # length + producer id + sequence in the frame's tables
EVENT_BYTES_MAX: Final = BATCH_PAYLOAD_MAX_BYTES - PER_EVENT_TABLE_BYTES  # the largest event that fits
_U32: Final = np.dtype("<u4")


@dataclass(slots=True)
class _Block:
    producer_id: int
    first_sequence: int
    lengths: np.ndarray  # uint32
    starts: np.ndarray  # int64 offset of each event within data
    data: memoryview
    frame_sizes: np.ndarray  # int64 cumulative frame payload bytes of events 0..i (event + its table entries)
    next_event: int = 0  # events before this one are already in frames

    @property
    def remaining(self) -> int:
        return self.lengths.size - self.next_event


def parse_block(body: bytes | memoryview) -> _Block:
    """Parse a PRODUCE body (already validated by ingest) into a block; asserts on inconsistency."""
    view = memoryview(body)
    producer_id, first_sequence, _timeout_ms, count = BLOCK_HEAD.unpack_from(view, 0)
    lengths = np.frombuffer(view, dtype=_U32, count=count, offset=BLOCK_HEAD.size)
    data = view[BLOCK_HEAD.size + 4 * count :]
    ends = np.cumsum(lengths, dtype=np.int64)
    assert count >= 1 and int(ends[-1]) == len(data), "event block sizes disagree"
    frame_sizes = ends + PER_EVENT_TABLE_BYTES * np.arange(1, count + 1, dtype=np.int64)
    return _Block(producer_id, first_sequence, lengths, ends - lengths, data, frame_sizes)


def _aligned_fit(frame_sizes: np.ndarray, i: int, events_max: int, payload_max_bytes: int) -> bool:
    """Whether events i.. of a block, cut into runs of `events_max` from an empty frame, fit `payload_max_bytes`
    run by run (`frame_sizes`: cumulative frame bytes of events 0..k). Work per run, not per event."""
    starts = np.arange(i, frame_sizes.size, events_max)
    ends = np.minimum(starts + events_max, frame_sizes.size) - 1
    before = np.where(starts > 0, frame_sizes[starts - 1], 0)
    return bool(((frame_sizes[ends] - before) <= payload_max_bytes).all())


class BatchCutter:
    """Accumulates blocks and cuts frames of at most `events_max` events and `payload_max_bytes`."""

    def __init__(
        self,
        events_max: int = BATCH_EVENTS_MAX,
        payload_max_bytes: int = BATCH_PAYLOAD_MAX_BYTES,
        compress: bool = False,
        first_batch_id: int = 1,
    ) -> None:
        assert 1 <= events_max <= BATCH_EVENTS_MAX and 0 < payload_max_bytes <= BATCH_PAYLOAD_MAX_BYTES
        self.events_max = events_max
        self.payload_max_bytes = payload_max_bytes
        self.compress = compress
        self.next_batch_id = first_batch_id
        self._blocks: deque[_Block] = deque()
        self.pending_events = 0
        self.pending_bytes = 0  # payload bytes the pending events will take in frames

    def add(self, body: bytes | memoryview) -> None:
        block = parse_block(body)
        assert int(block.lengths.max()) <= EVENT_BYTES_MAX, "ingest must refuse events that cannot fit a frame"
        self._blocks.append(block)
        self.pending_events += block.lengths.size
        self.pending_bytes += len(block.data) + PER_EVENT_TABLE_BYTES * block.lengths.size

    def full_frame_ready(self) -> bool:
        return self.pending_events >= self.events_max or self.pending_bytes >= self.payload_max_bytes

    def cut(self, *, flush: bool) -> list[bytes]:
        """Frames for all full batches pending, and for the remainder too when `flush`."""
        frames = []
        while self._blocks and (flush or self.full_frame_ready()):
            frames.append(self._cut_one())
        return frames

    def _keep_aligned(self, block: _Block, i: int) -> bool:
        """A Kafka door block whose events i.. would be cut only by the event limit from an empty frame on."""
        if block.first_sequence < KAFKA_SEQUENCE_BASE or self.events_max != BATCH_EVENTS_MAX:
            return False
        return _aligned_fit(block.frame_sizes, i, self.events_max, self.payload_max_bytes)

    def _cut_one(self) -> bytes:
        lengths: list[np.ndarray] = []
        data: list[memoryview] = []
        pids: list[np.ndarray] = []
        seqs: list[np.ndarray] = []
        events = 0
        payload = 0
        while self._blocks and events < self.events_max:
            block = self._blocks[0]
            i = block.next_event
            base = int(block.frame_sizes[i - 1]) if i else 0
            room = self.payload_max_bytes - payload
            # events i..j-1 fit when frame_sizes[j-1] - base <= room; search only as far as the count limit
            limit = min(block.lengths.size, i + self.events_max - events)
            take = int(np.searchsorted(block.frame_sizes[i:limit], base + room, side="right"))
            if take == 0:
                break  # the next event does not fit in this frame
            j = i + take
            if events and j < block.lengths.size and take < limit - i and self._keep_aligned(block, i):
                break  # the payload limit would cut a Kafka block mid-way: it starts the next frame (docstring)
            lengths.append(block.lengths[i:j])
            end = int(block.starts[j - 1] + block.lengths[j - 1])
            data.append(block.data[int(block.starts[i]) : end])
            pids.append(np.full(take, block.producer_id, dtype=np.uint64))
            seqs.append(np.arange(block.first_sequence + i, block.first_sequence + j, dtype=np.uint64))
            events += take
            payload += int(block.frame_sizes[j - 1]) - base
            block.next_event = j
            if block.remaining == 0:
                self._blocks.popleft()
        assert events >= 1
        self.pending_events -= events
        self.pending_bytes -= payload
        batch_id = self.next_batch_id
        self.next_batch_id += 1
        return encode_batch_arrays(
            np.concatenate(lengths),
            data,
            batch_id=batch_id,
            producer_ids=np.concatenate(pids),
            sequences=np.concatenate(seqs),
            compress=self.compress,
        )
