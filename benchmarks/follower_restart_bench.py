"""Where a killed follower's restart goes (issue 12 item 6): a real 3-node cluster under a steady load, with
`--cpu-hogs` busy loops beside it; a follower is SIGKILLed, held down, restarted, and its state block is read
every POLL_S to time each step from the supervisor's start:

* `serving`: the supervisor has made its shared memory and started its workers (status SERVING);
* `beat:<worker>`: the worker's first heartbeat (it imported its modules and is in its loop; the raft worker
  has opened and checked its log and rebuilt its dedup table);
* `follows`: the node names the leader (it heard from it on the consensus channel): the cluster is whole
  again, as tools/chaos.py counts it;
* `caught_up`: its commit index reached the leader's at the restart.

    python benchmarks/follower_restart_bench.py --restarts 6 --cpu-hogs 2

Prints one line per restart, the medians, then one JSON line with the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.ipc.state import NodeStatus, Worker  # noqa: E402
from shmraft.node.layout import NodeLayout  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402
from shmraft.testing.hogs import CpuHogs  # noqa: E402

POLL_S: Final = 0.005
HOLD_S: Final = 1.5  # down this long, as chaos's kill-follower (1-3 s)
STEP_WAIT_S: Final = 30.0
LOAD_EVENTS_PER_CALL: Final = 20
LOAD_PAUSE_S: Final = 0.01  # a steady, light load (a few thousand events/s)
SETTLE_S: Final = 2.0  # between restarts


def _load(addresses: list[str], stop: threading.Event) -> None:
    with Client(addresses, timeout_s=10.0) as c:
        n = 0
        while not stop.is_set():
            try:
                c.produce_many([f"restart-{n + i}".encode() for i in range(LOAD_EVENTS_PER_CALL)])
                n += LOAD_EVENTS_PER_CALL
            except ShmraftError:
                time.sleep(0.1)
            time.sleep(LOAD_PAUSE_S)


def _timeline(d: ClusterDriver, node: int, leader: int, target: int, t0: float) -> dict[str, float | None]:
    """Seconds from `t0` (the supervisor's start) to each step; None for a step not reached in STEP_WAIT_S."""
    out: dict[str, float | None] = {"serving": None, "follows": None, "caught_up": None}
    out |= {f"beat:{w.name.lower()}": None for w in Worker}
    first_beats: dict[Worker, int] = {}
    deadline = t0 + STEP_WAIT_S
    block = None
    while time.monotonic() < deadline and any(v is None for v in out.values()):
        now = time.monotonic() - t0
        if block is None:
            try:
                block = NodeLayout(d.config(node)).attach_state()
            except Exception:
                time.sleep(POLL_S)
                continue
        n = block.node
        if out["serving"] is None and int(n["status"]) == NodeStatus.SERVING:
            out["serving"] = now
        for w in Worker:
            key = f"beat:{w.name.lower()}"
            beat = int(block.workers[w]["heartbeat"])
            if out[key] is None and int(block.workers[w]["pid"]):
                if w not in first_beats:
                    first_beats[w] = beat
                elif beat != first_beats[w]:
                    out[key] = now
        if out["follows"] is None and int(n["leader_id"]) == leader:
            out["follows"] = now
        if out["caught_up"] is None and int(n["commit_index"]) >= target:
            out["caught_up"] = now
        time.sleep(POLL_S)
    if block is not None:
        block.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=6)
    ap.add_argument("--cpu-hogs", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="parent of the cluster's temp dir")
    args = ap.parse_args()
    rows: list[dict[str, float | None]] = []
    with CpuHogs(args.cpu_hogs), ClusterDriver.in_temp_dir("shmraft-restart-bench-", args.tmp) as d:
        d.start()
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(d.addresses, stop), daemon=True)
        load.start()
        try:
            for i in range(args.restarts):
                why = d.wait_whole(STEP_WAIT_S)
                if why:
                    print(f"restart {i}: cluster not whole ({why}); going on", flush=True)
                leader = d.wait_leader()
                node = next(n for n in d.node_ids if n != leader)
                d.kill_node(node)
                time.sleep(HOLD_S)
                target = (d.state(leader) or {}).get("commit_index", 0)
                NodeLayout(d.config(node)).cleanup_stale()  # the killed node's old state block: not read as new
                t0 = time.monotonic()
                d.start_node(node)
                row = _timeline(d, node, leader, target, t0)
                rows.append(row)
                print(
                    f"restart {i} (node {node}): "
                    + "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in row.items()),
                    flush=True,
                )
                time.sleep(SETTLE_S)
        finally:
            stop.set()
            load.join(15.0)
    keys = list(rows[0]) if rows else []
    medians = {k: statistics.median([r[k] for r in rows if r[k] is not None] or [float("nan")]) for k in keys}
    print("medians (s from the supervisor's start): " + "  ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps({"restarts": rows, "medians_s": medians, "cpu_hogs": args.cpu_hogs, "machine": machine}))


if __name__ == "__main__":
    main()
