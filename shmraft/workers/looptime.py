"""Where a worker loop's time goes: per-phase milliseconds of one iteration, and a line to log when it was slow.

Pure (the caller passes monotonic times in seconds): `begin(now, wait_s)` before the loop's wait (with the wait's
timeout), `mark(phase, now)` after each phase (the first phase ends the wait), `end(now)` returns a summary line
when the iteration took more than `slow_ms` (or the wait overran its timeout by more than `slow_ms`: the process
woke late, the CPU was elsewhere), at most once per `log_interval_s`, with the worst iteration seen meanwhile and
how many were slow. The raft worker uses it to say whether a late heartbeat or vote was a late wake or work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

SLOW_LOOP_MS: Final = 100  # an iteration (or a wake) this much slower than asked is worth a log line
SLOW_LOOP_LOG_INTERVAL_S: Final = 1.0  # at most one slow-loop line per second (the worst one in it)


class LoopTimer:
    """Per-phase time of one loop iteration; a summary of the slow ones, rate-limited."""

    __slots__ = (
        "slow_ms",
        "log_interval_s",
        "_start",
        "_last",
        "_wait_s",
        "_phases",
        "_worst_ms",
        "_worst",
        "_slow_count",
        "_logged_at",
        "max_late_ms",
        "max_iteration_ms",
    )

    def __init__(self, slow_ms: float = SLOW_LOOP_MS, log_interval_s: float = SLOW_LOOP_LOG_INTERVAL_S) -> None:
        self.slow_ms = slow_ms
        self.log_interval_s = log_interval_s
        self._start = 0.0
        self._last = 0.0
        self._wait_s = 0.0
        self._phases: list[tuple[str, float]] = []
        self._worst_ms = 0.0
        self._worst = ""
        self._slow_count = 0
        self._logged_at = float("-inf")
        self.max_late_ms = 0.0  # the largest wake overrun seen (for tests and status)
        self.max_iteration_ms = 0.0  # the largest iteration seen, its wait's timeout excluded

    def begin(self, now: float, wait_s: float) -> None:
        """The iteration starts: next comes a wait of at most `wait_s` (a select)."""
        self._start = self._last = now
        self._wait_s = wait_s
        self._phases.clear()

    def mark(self, phase: str, now: float) -> None:
        """The phase named `phase` ended at `now` (it began at the previous mark or at `begin`)."""
        self._phases.append((phase, (now - self._last) * 1000.0))
        self._last = now

    def end(self, now: float) -> str | None:
        """The iteration ended: a summary line to log, or None (not slow, or one was logged too recently)."""
        if now > self._last:
            self.mark("other", now)
        total_ms = (now - self._start) * 1000.0
        first_ms = self._phases[0][1] if self._phases else 0.0
        late_ms = max(0.0, first_ms - self._wait_s * 1000.0)  # the wait overran its timeout: a late wake
        work_ms = total_ms - min(first_ms, self._wait_s * 1000.0)
        self.max_late_ms = max(self.max_late_ms, late_ms)
        self.max_iteration_ms = max(self.max_iteration_ms, work_ms)
        if work_ms >= self.slow_ms:
            self._slow_count += 1
            if work_ms > self._worst_ms:
                self._worst_ms = work_ms
                parts = ", ".join(f"{name} {ms:.0f}" for name, ms in self._phases if ms >= 1.0)
                self._worst = f"{work_ms:.0f} ms ({parts}; the wait's timeout {self._wait_s * 1000.0:.0f} ms)"
        if self._slow_count == 0 or now - self._logged_at < self.log_interval_s:
            return None
        line = f"slow loop: {self._slow_count} iteration(s) over {self.slow_ms:.0f} ms, the worst {self._worst}"
        self._logged_at = now
        self._slow_count = 0
        self._worst_ms = 0.0
        self._worst = ""
        return line


class StallDiscountingClock:
    """The raft worker's clock for the core's timers (the ReadyDriver's `clock_ms`): monotonic milliseconds,
    except that one step between two readings counts for at most `step_max_ms`.

    Why: the core's timers measure a peer's silence (a follower's election timeout, the leader's check-quorum).
    When this process itself did not run for a while (descheduled on a busy machine, or one long fsync), it
    could neither hear its peers nor send heartbeats; the answers that did arrive wait in the socket and are
    stepped just before the tick, which then credited the whole stall after them: a leader whose loop stalled
    600 ms stepped down although both followers had answered, a follower that stalled campaigned although the
    leader's heartbeat was in its buffer. The driver reads the clock once per loop iteration, which runs every
    TICK_MS when nothing stalls, so the cap changes nothing then; under stalls the timers run slower by what
    this process missed. Timers decide only liveness in this Raft (no lease reads), never safety.
    """

    __slots__ = ("_raw_ms", "step_max_ms", "_last_raw_ms", "_now_ms", "discounted_ms")

    def __init__(self, raw_ms: Callable[[], float], step_max_ms: float) -> None:
        if step_max_ms <= 0:
            raise ValueError(f"step_max_ms: expected > 0, got {step_max_ms}")
        self._raw_ms = raw_ms
        self.step_max_ms = step_max_ms
        self._last_raw_ms = raw_ms()
        self._now_ms = self._last_raw_ms
        self.discounted_ms = 0.0  # stall time not credited to the timers, in all (for logs and tests)

    def __call__(self) -> float:
        raw = self._raw_ms()
        step = max(raw - self._last_raw_ms, 0.0)
        self._last_raw_ms = raw
        credited = min(step, self.step_max_ms)
        self.discounted_ms += step - credited
        self._now_ms += credited
        return self._now_ms
