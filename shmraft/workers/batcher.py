"""The batcher worker: cuts the event blocks ingest accepted (R1) into batch frames for the raft worker (R2).

A frame is cut when it holds `batch_events_max` events or `batch_payload_max_bytes`, or when the oldest
pending event has waited `batch_linger_ms` for company. An idle pipeline holds nothing back: when the
raft worker has no frame waiting in R2, a partial frame goes at once, because waiting could only add
latency; when frames are queued ahead of it, waiting for company costs nothing and makes fewer, fuller
entries.
"""

from __future__ import annotations

import time
from typing import Final

from shmraft.ipc.state import Worker
from shmraft.ipc.trace import BatcherTrace
from shmraft.node.batching import BatchCutter
from shmraft.node.layout import Ring
from shmraft.workers.base import RING_POP_BYTES_MAX, RING_POP_RECORDS_MAX, WorkerBase

IDLE_WAIT_MS: Final = 100  # heartbeat cadence while nothing arrives
PUSH_TIMEOUT_MS: Final = 100


class BatcherWorker(WorkerBase):
    kind = Worker.BATCHER

    def __init__(self, config) -> None:
        super().__init__(config)
        self.blocks = self.layout.reader(Ring.R1)
        self.frames = self.layout.writer(Ring.R2)
        self.cutter = BatchCutter(
            config.batch_events_max,
            config.batch_payload_max_bytes,
            config.batch_compress,
            first_batch_id=time.time_ns(),
        )
        self.linger_s = config.batch_linger_ms / 1000
        self._oldest = 0.0
        self.trace = BatcherTrace(self.state.trace, config.trace_sample_every)

    def run(self) -> None:
        out: list[bytes] = []
        while not self.stopping:
            self.beat()
            if self.cutter.pending_events:
                wait_ms = max(0.0, (self._oldest + self.linger_s - time.monotonic()) * 1000)
            else:
                wait_ms = IDLE_WAIT_MS
            bodies = self.blocks.pop_many(RING_POP_RECORDS_MAX, RING_POP_BYTES_MAX, wait_ms, release=True)
            self.trace.popped(bodies, self.cutter.pending_events)
            for body in bodies:
                if not self.cutter.pending_events:
                    self._oldest = time.monotonic()
                self.cutter.add(body)
                self.record["records_in"] += 1
            out += self.cutter.cut(flush=False)
            if self.cutter.pending_events:
                lingered = time.monotonic() - self._oldest >= self.linger_s
                if lingered or self.frames.fill_bytes() == 0:
                    out += self.cutter.cut(flush=True)
            self.trace.cut(out)
            if out:
                while out and not self.stopping:
                    pushed = self.frames.push_many(out, PUSH_TIMEOUT_MS)  # back-pressure: wait for the raft worker
                    self.record["records_out"] += pushed
                    del out[:pushed]
                    self.beat()
                if self.cutter.pending_events:
                    self._oldest = min(self._oldest, time.monotonic())
