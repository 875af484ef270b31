"""A leader whose own request path is stalled steps aside: the decision, pure.

On the leader, a client's PRODUCE goes ingest -> batcher -> raft worker. When the ingest or the batcher
stops making progress (SIGSTOP, a debugger, a wedged loop) while the raft worker and the sender run, the
leader's Raft is healthy: heartbeats flow, the followers never elect, and the clients keep being told that
this node leads. Nothing can be committed until the worker moves again, or until the supervisor kills it at
`worker_stall_timeout_ms` (5 s). So the supervisor asks its raft worker to hand leadership to a follower once
one of those two workers has been stalled for `leader_stall_transfer_ms`, measured by the same
starvation-proof clock (supervisor/stall.py): a worker waiting for a CPU is not stalled, a stopped one is.

The sender is not watched: a leader whose sender is stopped cannot hand over either, since TimeoutNow goes only
to a follower that holds every entry, and entries reach the followers only through the sender; its stall is
left to the restart at `worker_stall_timeout_ms`. The raft worker is not watched: when it stops the followers
hear no heartbeats and elect.

At most one transfer is asked per LEADER_STALL_TRANSFER_GAP_S per node, so a node whose worker keeps
stalling cannot make leadership flap; the raft worker refuses the ask when it is no longer the leader of
the term the supervisor saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from shmraft.ipc.state import Worker

WATCHED_WORKERS: Final = (Worker.INGEST, Worker.BATCHER)  # the leader's request path above the raft worker
LEADER_STALL_TRANSFER_GAP_S: Final = 10.0  # at most one stall transfer asked per node within this


class StepAside(NamedTuple):
    """Ask the raft worker to hand leadership over: `worker` has been stalled `stalled_ms`."""

    worker: Worker
    stalled_ms: int


def step_aside(
    now_s: float,
    leader: bool,
    stalled_s: Mapping[Worker, float],
    threshold_ms: int,
    last_ask_s: float | None,
    gap_s: float = LEADER_STALL_TRANSFER_GAP_S,
) -> StepAside | None:
    """Whether to ask for a leadership transfer now (None: not).

    `stalled_s`: per worker that is alive and has beaten since its start, the seconds it could have run without
    beating (StallClock). `threshold_ms` 0 disables. `last_ask_s`: the monotonic time of this node's previous
    ask (None: never). The most stalled watched worker is named."""
    if threshold_ms <= 0 or not leader:
        return None
    if last_ask_s is not None and now_s - last_ask_s < gap_s:
        return None
    worst = max(WATCHED_WORKERS, key=lambda w: stalled_s.get(w, 0.0))
    worst_s = stalled_s.get(worst, 0.0)
    if worst_s * 1000 < threshold_ms:
        return None
    return StepAside(worst, int(worst_s * 1000))
