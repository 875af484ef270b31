"""What every worker process shares: start-up from the node's config file, signals, logging, heartbeats,
and `Inbox`, which lets a selector loop wait on a ring without polling.

A posix semaphore cannot sit in `select`, so an Inbox runs one thread that blocks in the ring's pop (a
bounded spin, then a semaphore wait) and hands whole pops to the loop through a deque and an eventfd. The
loop wakes on the eventfd together with its sockets; nothing spins while idle. The thread stops taking
records once `backlog_max_records` are waiting, so a slow loop pushes back on the ring's writer.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shmraft.config import NodeConfig, config_from_json
from shmraft.ipc.ring import RingReader
from shmraft.ipc.state import StateBlock, Worker
from shmraft.node.layout import NodeLayout

RING_POP_RECORDS_MAX: Final = 1024  # records a worker takes from a ring at once
RING_POP_BYTES_MAX: Final = 4 * 1024 * 1024  # bytes a worker takes from a ring at once
INBOX_WAIT_MS: Final = 100  # the pump thread re-checks its stop flag this often
INBOX_BACKLOG_RECORDS_MAX: Final = 8192


class Inbox:
    """A ring made selectable: `fileno()` is readable when records are waiting; `take()` returns them."""

    def __init__(self, reader: RingReader, name: str) -> None:
        self.reader = reader
        self.name = name
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: deque[list[bytes]] = deque()
        self._count = 0
        self._space = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._pump, name=f"inbox-{name}", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._efd

    def _pump(self) -> None:
        while not self._stop:
            with self._space:
                while self._count >= INBOX_BACKLOG_RECORDS_MAX and not self._stop:
                    self._space.wait(INBOX_WAIT_MS / 1000)
            records = self.reader.pop_many(RING_POP_RECORDS_MAX, RING_POP_BYTES_MAX, INBOX_WAIT_MS, release=True)
            if records:
                with self._space:
                    self._queue.append(records)
                    self._count += len(records)
                os.eventfd_write(self._efd, 1)

    def take(self) -> list[bytes]:
        """Every record waiting, in ring order (clears the wake-up)."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        out: list[bytes] = []
        with self._space:
            while self._queue:
                out.extend(self._queue.popleft())
            self._count = 0
            self._space.notify()
        return out

    def close(self) -> None:
        self._stop = True
        with self._space:
            self._space.notify()
        self._thread.join(timeout=1.0)
        os.close(self._efd)


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
