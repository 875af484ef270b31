"""Rate-limited logging of bad peers: one clear line per bad peer, but never a flood.

A node under attack (garbage on a port, thousands of connections that break the protocol) must say what
happened without writing one line per bad message or per connection: a log that grows without bound is
itself a denial of service, and the one useful line drowns. `RateLimitedLog` lets at most
`lines_per_interval` lines of each *kind* through per `interval_s`; the rest are counted, and the next line
of that kind (or `flush()`, which the owner's loop calls now and then) writes one summary line:
"<kind>: 123 more lines suppressed in the last 10.0 s".

Pure and single-threaded: the caller's loop owns it; `clock` is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

LINES_PER_INTERVAL_DEFAULT: Final = 10
INTERVAL_S_DEFAULT: Final = 10.0
KINDS_MAX: Final = 64  # distinct kinds tracked; kinds are a fixed vocabulary, this only bounds a misuse


@dataclass(slots=True)
class _Window:
    started_s: float
    lines: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """At most `lines_per_interval` lines per kind per `interval_s` through `logger`, then a summary."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines_per_interval: int = LINES_PER_INTERVAL_DEFAULT,
        interval_s: float = INTERVAL_S_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lines_per_interval < 1 or interval_s <= 0:
            raise ValueError(
                f"lines_per_interval >= 1 and interval_s > 0 expected, got {lines_per_interval}, {interval_s}"
            )
        self.logger = logger
        self.lines_per_interval = lines_per_interval
        self.interval_s = interval_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless this kind's budget is spent; True if the line was written."""
        now = self.clock()
        win = self._windows.get(kind)
        if win is None:
            if len(self._windows) >= KINDS_MAX:
                self.flush(force=True)
                self._windows.clear()
            win = self._windows[kind] = _Window(now)
        elif now - win.started_s >= self.interval_s:
            self._summarise(kind, win, now)
            win.started_s, win.lines = now, 0
        if win.lines >= self.lines_per_interval:
            win.suppressed += 1
            self.suppressed_total += 1
            return False
        win.lines += 1
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def error(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, kind, msg, *args)

    def flush(self, force: bool = False) -> None:
        """Write the summary of every kind whose window has ended (all of them with `force`)."""
        now = self.clock()
        for kind, win in list(self._windows.items()):
            if force or now - win.started_s >= self.interval_s:
                self._summarise(kind, win, now)
                if win.lines == 0 or now - win.started_s >= self.interval_s:
                    del self._windows[kind]  # an idle kind costs nothing

    def _summarise(self, kind: str, win: _Window, now: float) -> None:
        if win.suppressed:
            self.logger.warning(
                "%s: %d more lines suppressed in the last %.1f s", kind, win.suppressed, now - win.started_s
            )
            win.suppressed = 0
