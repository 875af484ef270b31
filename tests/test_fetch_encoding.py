"""The fetch server's FETCHED answer built from whole batches has the bytes of the protocol's encoder
(docs/PROTOCOL.md section 2), without an object per event."""

from __future__ import annotations

import numpy as np

from shmraft.ingest.fetch import encode_fetched_batches
from shmraft.wire import client as cp


def test_fetched_from_batch_slices_equals_the_event_by_event_encoding() -> None:
    events = [b"a", b"", b"bcd", b"e" * 300, b"fg"]
    datas = [memoryview(b"".join(events[:3])), memoryview(b"".join(events[3:]))]
    offsets = np.array([128, 129, 130, 192, 193], dtype=np.uint64)
    lengths = np.array([len(e) for e in events], dtype=np.uint32)
    fast = encode_fetched_batches(9, 194, 256, offsets, lengths, datas)
    assert fast == cp.encode_fetched(9, 194, 256, offsets, events)
