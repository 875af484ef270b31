"""What fits one PRODUCE request: the body's fixed head, the per-event overhead, and the limits on both.

Shared by the blocking `Client.produce_many` (which splits a call into requests) and the pipelined
`Producer` (which cuts its batches at these limits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from shmraft.client.errors import TooLarge
from shmraft.wire.client import MESSAGE_BODY_MAX_BYTES, PRODUCE_EVENTS_MAX

PRODUCE_HEAD_BYTES: Final = 24  # producer_id, first_sequence, timeout_ms, event_count
EVENT_OVERHEAD_BYTES: Final = 4  # the u32 length of each event in a PRODUCE body
REQUEST_EVENTS_MAX: Final = PRODUCE_EVENTS_MAX  # events in one PRODUCE request (8192)
REQUEST_BYTES_MAX: Final = 1024 * 1024  # body bytes of one PRODUCE request, well below the 4 MiB server limit
REQUEST_EVENT_BYTES_MAX: Final = REQUEST_BYTES_MAX - PRODUCE_HEAD_BYTES - EVENT_OVERHEAD_BYTES  # largest single event

assert PRODUCE_HEAD_BYTES + EVENT_OVERHEAD_BYTES * REQUEST_EVENTS_MAX < REQUEST_BYTES_MAX < MESSAGE_BODY_MAX_BYTES


def as_bytes(event: bytes | bytearray | memoryview | str) -> bytes:
    """Events are bytes; str is encoded as UTF-8. Refuses an event too large for one request."""
    data = event.encode() if isinstance(event, str) else bytes(event)
    if len(data) > REQUEST_EVENT_BYTES_MAX:
        raise TooLarge(f"event of {len(data)} bytes exceeds the {REQUEST_EVENT_BYTES_MAX}-byte limit of one request")
    return data


def split_requests(
    events: list[bytes], max_events: int = REQUEST_EVENTS_MAX, max_bytes: int = REQUEST_BYTES_MAX
) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of `events` such that each range fits one PRODUCE request."""
    start, size = 0, PRODUCE_HEAD_BYTES
    for i, event in enumerate(events):
        cost = len(event) + EVENT_OVERHEAD_BYTES
        if i > start and (i - start >= max_events or size + cost > max_bytes):
            yield start, i
            start, size = i, PRODUCE_HEAD_BYTES
        size += cost
    if start < len(events):
        yield start, len(events)
