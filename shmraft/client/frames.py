"""Events out of a FRAMES answer, each frame checked end to end (CRC32, footer, tables, log index) first.

Shared by the blocking and the asyncio client: a FETCH_FRAMES answer carries the batch frames exactly as the
log stores them (docs/PROTOCOL.md sections 1 and 2.5), so the consumer verifies the CRC the batcher computed
(and the Raft worker recomputed when it stamped the log position) before it yields any event of a frame.
"""

from __future__ import annotations

from collections.abc import Iterator

from shmraft.client.errors import IntegrityError
from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.wire.client import Frames
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.frame import decode_batch


def frame_events(answer: Frames, address: str) -> Iterator[tuple[int, memoryview]]:
    """(offset, event bytes) of every event of `answer` at or after the requested offset, in log order.

    Each frame is decoded whole (CRC checked, decompressed) before its first event is yielded; raises
    IntegrityError naming the frame's first offset when a frame fails, when the log index sent beside it is
    not the one its header holds (header prev_index + 1), or when `first_skip` passes the first frame's end.
    """
    for i, (index, frame) in enumerate(zip(answer.indexes.tolist(), answer.frames, strict=True)):
        base = index * BATCH_EVENTS_MAX
        try:
            batch = decode_batch(frame)
        except RemoteProtocolError as exc:
            raise IntegrityError(
                f"frame at offset {base} (log index {index}) from {address} failed its check: {exc}",
                offset=base,
                index=index,
                address=address,
            ) from exc
        if batch.header.prev_index + 1 != index:
            raise IntegrityError(
                f"frame sent as log index {index} from {address} holds prev_index {batch.header.prev_index}",
                offset=base,
                index=index,
                address=address,
            )
        skip = answer.first_skip if i == 0 else 0
        if skip >= batch.header.event_count:
            raise IntegrityError(
                f"first_skip {skip} from {address} passes the {batch.header.event_count} events of index {index}",
                offset=base,
                index=index,
                address=address,
            )
        data = batch.data
        for k, (start, size) in enumerate(zip(batch.offsets.tolist(), batch.lengths.tolist(), strict=True)):
            if k >= skip:
                yield base + k, data[start : start + size]
