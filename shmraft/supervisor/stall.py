"""Stall detection that a busy machine cannot fool: a worker is stalled when it could have run and did not beat.

A worker's heartbeat counter (state block) moves once per loop iteration. Wall time since the last beat is
not the measure: on a machine whose cores are taken by other work, a healthy worker can wait seconds for a
CPU, and the supervisor itself can be descheduled or paused (SIGSTOP of the whole node). So the clock that
decides a stall counts only the time the worker *could have run*:

- time a thread of the worker spent waiting for a CPU is not counted: that is starvation, not a stall. Linux
  reports it per thread in `/proc/<pid>/task/<tid>/schedstat` (second field, ns), but only once the wait
  has ended; a wait still going on shows as a thread that is runnable (`R` in `stat`) whose CPU time
  (first field) did not move between two observations. Any one starved thread counts for the whole
  worker: the others may be asleep on the GIL it holds.
- each observation credits at most `OBSERVATION_CREDIT_MAX_S` of wall time, so a supervisor that did not
  run for a while (paused, starved) never judges the gap it did not see.

Both rules can only delay a stall verdict, never cause one: a worker stopped (SIGSTOP) or spinning without
beating still accumulates credit at every regular observation and is restarted after the timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final, NamedTuple

OBSERVATION_CREDIT_MAX_S: Final = 0.25  # wall time one observation may credit (the monitor runs every 50 ms)
THREADS_READ_MAX: Final = 64  # a worker has a handful of threads; never read an unbounded list


class ThreadSample(NamedTuple):
    runnable: bool  # state R: on a CPU or waiting for one
    cpu_ns: int  # time spent on a CPU
    waited_ns: int  # time spent waiting for a CPU, counted when each wait ends


ProcessSample = dict[int, ThreadSample]  # by thread id


def sample_process(pid: int) -> ProcessSample | None:
    """The scheduler's view of every thread of `pid`; None where not available (not Linux, process gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out: ProcessSample = {}
    for tid in tids[:THREADS_READ_MAX]:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                cpu, waited = f.read().split()[:2]
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            out[int(tid)] = ThreadSample(state == b"R", int(cpu), int(waited))
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return out


def starved_s(before: ProcessSample | None, after: ProcessSample | None, wall_s: float) -> float:
    """Of `wall_s` between two samples, the time the worker was kept off a CPU (0 when unknown)."""
    if not before or not after:
        return 0.0
    starved = 0.0
    for tid, now in after.items():
        was = before.get(tid)
        if was is None:
            continue
        if now.runnable and was.runnable and now.cpu_ns == was.cpu_ns:
            return wall_s  # waiting for a CPU all along
        starved = max(starved, (now.waited_ns - was.waited_ns) / 1e9)
    return min(max(starved, 0.0), wall_s)


@dataclass(slots=True)
class StallClock:
    """Time a worker could have run since its heartbeat last moved. Pure: the caller passes every reading."""

    last_beat: int = -1
    last_now_s: float | None = None
    last_sample: ProcessSample | None = field(default=None)
    could_run_s: float = 0.0

    def reset(self) -> None:
        """A new process: forget the old one's beat and clocks."""
        self.last_beat = -1
        self.last_now_s = None
        self.last_sample = None
        self.could_run_s = 0.0

    def observe(self, now_s: float, beat: int, sample: ProcessSample | None) -> float:
        """Feed one observation (monotonic now, heartbeat counter, scheduler sample or None); return the
        seconds the worker could have run without beating."""
        if beat != self.last_beat or self.last_now_s is None:
            self.could_run_s = 0.0
        else:
            wall_s = min(max(now_s - self.last_now_s, 0.0), OBSERVATION_CREDIT_MAX_S)
            self.could_run_s += wall_s - starved_s(self.last_sample, sample, wall_s)
        self.last_beat = beat
        self.last_now_s = now_s
        self.last_sample = sample
        return self.could_run_s
