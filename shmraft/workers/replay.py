"""One read of a log's entries for several users at start (docs/DESIGN.md "Start-up").

At start the raft worker needs the entries after the saved snapshot three times: the core's configurations
(`raft.core.StartConfigs`), the dedup table (`workers/raft.py DedupRebuild`) and the consumer groups
(`workers/raft_groups.py GroupRebuild`). Each states the entries it needs (`lo`..`hi`, inclusive; none when
lo > hi) and takes them in order (`feed`); `replay_log` reads the union of those ranges once, in bounded
chunks, and hands every user exactly its own entries, each once. Which entries a user needs and what it does
with them stay the user's: the results are those of reading each range separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

from shmraft.raft.types import Entry
from shmraft.storage.rocks import CorruptLogError

REPLAY_READ_BYTES: Final = 8 * 1024 * 1024  # entry data read at a time (memory held by the start-up read)


class LogUser(Protocol):
    """A user of the start-up read: the entries lo..hi (inclusive) are fed to it in order, each once."""

    lo: int
    hi: int

    def feed(self, entries: Sequence[Entry]) -> None: ...


def replay_log(log, users: Sequence[LogUser], progress: Callable[[], None] | None = None) -> int:
    """Read the entries every user needs, once, from the lowest `lo` to the highest `hi`, and feed each user
    the part of every chunk that lies in its own range. `log` is the node's log (`entries(lo, hi, max_bytes)`,
    checked reads: a damaged entry raises CorruptLogError); `progress` is called before each read (the worker's
    heartbeat: a long read is not a stall). Returns how many entries were read."""
    wanted = [u for u in users if u.lo <= u.hi]
    if not wanted:
        return 0
    lo = min(u.lo for u in wanted)
    hi = max(u.hi for u in wanted)
    read = 0
    while lo <= hi:
        if progress is not None:
            progress()
        chunk = log.entries(lo, hi + 1, REPLAY_READ_BYTES)
        if not chunk or chunk[0].index != lo:
            raise CorruptLogError(lo, f"the log returned no entry at {lo} (replaying up to {hi})")
        first, last = lo, chunk[-1].index
        for u in wanted:
            if u.lo <= last and first <= u.hi:
                u.feed(chunk[max(u.lo - first, 0) : min(u.hi, last) - first + 1])
        read += len(chunk)
        lo = last + 1
    return read
