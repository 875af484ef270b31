"""The owner of a run's rings (the supervisor, or a test): removes stale segments of crashed runs on enter,
creates rings, and unlinks every ring it owns on exit, so that a clean shutdown leaves nothing in /dev/shm.

It builds on both segments.py (names, cleanup) and ring.py (a ring's layout), which is why it is neither.
"""

from __future__ import annotations

from types import TracebackType

from shmraft.ipc import segments
from shmraft.ipc.ring import create_ring


class SegmentOwner:
    """Context manager of the process that owns a run's segments (the supervisor, or a test).

    On enter it removes stale segments of crashed runs under `prefix`; on exit (also on an exception) it
    unlinks every ring it created, so that a clean shutdown leaves nothing in /dev/shm.
    """

    def __init__(self, prefix: str, clean_stale: bool = True) -> None:
        segments.check_name(prefix.rstrip("-") + "-x")
        self.prefix = prefix
        self.clean_stale = clean_stale
        self.names: list[str] = []
        self.stale_removed: list[str] = []

    def __enter__(self) -> SegmentOwner:
        if self.clean_stale:
            self.stale_removed = segments.cleanup_stale(self.prefix)
        return self

    def create_ring(self, ring: str, capacity_bytes: int, record_max_bytes: int | None = None) -> str:
        """Create the ring `<prefix><ring>` and own it; returns its name."""
        name = self.prefix + ring
        create_ring(name, capacity_bytes, record_max_bytes)
        self.names.append(name)
        return name

    def adopt(self, name: str) -> None:
        """Own a ring created elsewhere (it will be unlinked on exit)."""
        self.names.append(name)

    def close(self) -> list[str]:
        removed: list[str] = []
        while self.names:
            removed += segments.unlink_ring(self.names.pop())
        return removed

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
