"""Polling a condition against a deadline, failing with what was last seen (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

WAIT_INTERVAL_S: Final = 0.05


class WaitTimeout(AssertionError, TimeoutError):
    """A condition not met in time: an AssertionError for tests, a TimeoutError for tools and benchmarks."""


def wait_for(
    cond: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = WAIT_INTERVAL_S,
    *,
    accept: Callable[[Any], bool] = bool,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `cond()` until `accept(value)` (default: truthy) and return that value; raise WaitTimeout naming
    `what` and the last value seen once `timeout_s` has passed. Exceptions of the `retry_on` types count as
    "not yet" (polling a server that is still starting) and are what was last seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = cond()
            if accept(last):
                return last
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval_s)
