"""CPU contention beside a cluster: N busy-loop processes at normal priority (issue 17's `--cpu-hogs N`).

Each hog is `python -c` spinning in a loop that also checks, every few million steps, that its parent is
still the process that started it, so a hog never outlives a run that was SIGKILLed. The hogs are not
niced: they compete with the cluster's processes as other work on the machine would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Final

HOG_STOP_WAIT_S: Final = 5.0
HOG_MARK: Final = "shmraft-cpu-hog"  # in each hog's command line, to find them (e.g. in a test)
_HOG_CODE: Final = (
    f"# {HOG_MARK}\n"
    "import os, sys\n"
    "parent = int(sys.argv[1])\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(2_000_000):\n"
    "        pass\n"
)


class CpuHogs:
    """`count` busy-loop processes from `start()` until `stop()` (also as a context manager)."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"cpu hogs: expected a count >= 0, got {count}")
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def start(self) -> CpuHogs:
        for _ in range(self.count - len(self.procs)):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _HOG_CODE, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGKILL every hog and reap it; safe to call more than once."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(HOG_STOP_WAIT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
                pass
        self.procs.clear()

    def __enter__(self) -> CpuHogs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
