"""What every worker process shares: start-up from the node's config file, signals, logging, heartbeats,
and `Inbox` + `LoopSelector`, which let a selector loop wait on rings and sockets together without polling.

An Inbox is a ring's reader made selectable: the writer wakes the loop's `select` directly through the
reader's wake-up socket (`RingReader.wake_fileno`, wakeup.py), with the ring's flag + fence protocol, so a
hand-off costs one datagram and one epoll wake-up, like the batcher's direct semaphore wait on R1. (Until
issue 14 a pump thread blocked in the ring's pop and forwarded through an eventfd: a second wake-up, and a
GIL hand-over between two threads, on every hand-off.) `LoopSelector.select` arms every Inbox just before
it blocks and disarms them after; `take()` pops in the loop's own thread, at most RING_POP_RECORDS_MAX
records at a time, so a slow loop leaves the rest in the ring and pushes back on its writer.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shmraft.config import NodeConfig, config_from_json
from shmraft.ipc.ring import RingClosed, RingReader
from shmraft.ipc.state import StateBlock, Worker
from shmraft.node.layout import NodeLayout

RING_POP_RECORDS_MAX: Final = 1024  # records a worker takes from a ring at once
RING_POP_BYTES_MAX: Final = 4 * 1024 * 1024  # bytes a worker takes from a ring at once


class Inbox:
    """A ring read from a selector loop: registered on a `LoopSelector`, `take()` returns what waits."""

    def __init__(self, reader: RingReader, name: str, sel: LoopSelector) -> None:
        self.reader = reader
        self.name = name
        self._fd = reader.wake_fileno()
        sel.add_inbox(self)

    def fileno(self) -> int:
        return self._fd

    def on_readable(self, _mask: int) -> None:
        """The selector saw wake-up datagrams: consume them (the records are taken by `take()`)."""
        self.reader.drain_wake()

    def take(self) -> list[bytes]:
        """Up to RING_POP_RECORDS_MAX records (RING_POP_BYTES_MAX bytes) waiting, in ring order, released.
        More may wait: the next `select` then does not block."""
        reader = self.reader
        if not reader.available():
            return []  # the common case on a busy loop: skip the pop's block and array work
        try:
            return reader.pop_many(RING_POP_RECORDS_MAX, RING_POP_BYTES_MAX, 0, release=True)
        except RingClosed:
            return []

    def close(self) -> None:
        self.reader.close()


class LoopSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector that also waits on its Inboxes' rings (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._inboxes: list[Inbox] = []

    def add_inbox(self, inbox: Inbox) -> None:
        self.register(inbox, selectors.EVENT_READ, inbox.on_readable)
        self._inboxes.append(inbox)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Arm every Inbox (flag + fence + re-check), select (not blocking if a ring has records), disarm."""
        inboxes = self._inboxes
        for inbox in inboxes:
            if inbox.reader.arm():
                timeout = 0
        try:
            return super().select(timeout)
        finally:
            for inbox in inboxes:
                inbox.reader.disarm()


class WorkerBase:
    """Start-up and shutdown shared by the four workers. Subclasses implement `run()`."""

    kind: Worker

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.layout = NodeLayout(config)
        self.state: StateBlock = self.layout.attach_state()
        self.stopping = False
        self.log = logging.getLogger(f"shmraft.node{config.node_id}.{self.kind.name.lower()}")
        self.record = self.state.workers[self.kind]
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def beat(self) -> None:
        self.state.beat(self.kind)

    def run(self) -> None:
        raise NotImplementedError


def setup_logging(node_id: int, kind: str) -> None:
    level = os.environ.get("SHMRAFT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format=f"%(asctime)s node{node_id} {kind:<7} %(levelname)s %(message)s"
    )


def selector_loop_once(sel: selectors.BaseSelector, timeout_s: float) -> None:
    """Dispatch ready keys: every key's data is a callable taking the event mask."""
    for key, mask in sel.select(timeout_s):
        callback: Callable[[int], None] = key.data
        callback(mask)


def load_config(path: str | Path) -> NodeConfig:
    return config_from_json(Path(path).read_text())
