"""The pause between attempts after a failure: bounded, doubling, reset by a success."""

from __future__ import annotations

import time
from typing import Final

RETRY_BACKOFF_MIN_S: Final = 0.020  # first pause after a failed attempt
RETRY_BACKOFF_MAX_S: Final = 0.500  # the pause doubles up to this


class Backoff:
    """A bounded, doubling pause between attempts that never sleeps past a deadline."""

    def __init__(self, first_s: float = RETRY_BACKOFF_MIN_S, max_s: float = RETRY_BACKOFF_MAX_S) -> None:
        self.first_s, self.max_s, self.delay_s = first_s, max_s, first_s

    def next_delay(self) -> float:
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.max_s)
        return delay

    def sleep(self, deadline: float) -> None:
        time.sleep(max(0.0, min(self.next_delay(), deadline - time.monotonic())))

    def reset(self) -> None:
        self.delay_s = self.first_s
