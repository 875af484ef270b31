"""The Raft core's own cost: entries/s committed through an in-memory 3-node cluster (no faults, no I/O).

Each "loop" models one raft-worker iteration: the leader takes `batch` proposals (one entry = one batch
frame of `entry_bytes`), then every node's Ready is processed and all messages delivered until quiet, so
entries reach commit on all three nodes. Storage is MemStorage, the network the harness's instant queue:
what is measured is the core (plus that minimal driver), the ceiling the node's raft worker cannot beat.

    python benchmarks/raft_core_bench.py [--entries 20000] [--nodes 3]

Prints a table, then one JSON line with the machine (cores, Python version).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.sim.harness import Cluster  # noqa: E402

BATCHES = (1, 4, 16, 64)  # proposals per loop iteration (per Ready)


def run(nodes: int, entries: int, batch: int, entry_bytes: int) -> dict[str, float]:
    c = Cluster(nodes, record=False)
    c.elect(1)
    leader = c.cores[1]
    data = b"e" * entry_bytes
    start_commit = leader.commit_index
    loops = entries // batch
    started = time.perf_counter()
    for _ in range(loops):
        for _ in range(batch):
            leader.propose(data)
        c.process(1)
        c.deliver_all()
    elapsed = time.perf_counter() - started
    done = leader.commit_index - start_commit
    if done != loops * batch or any(c.cores[i].commit_index != leader.commit_index for i in c.ids):
        raise AssertionError("not every entry committed on every node")
    return {
        "nodes": nodes,
        "batch": batch,
        "entry_bytes": entry_bytes,
        "entries": done,
        "seconds": round(elapsed, 3),
        "entries_per_s": round(done / elapsed),
        "us_per_entry": round(elapsed / done * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    ap.add_argument("--entry-bytes", type=int, default=1024)
    args = ap.parse_args(argv)
    rows = [run(args.nodes, args.entries, b, args.entry_bytes) for b in BATCHES]
    print(f"{'nodes':>5} {'batch/loop':>10} {'entries':>8} {'seconds':>8} {'entries/s':>10} {'us/entry':>9}")
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['batch']:>10} {r['entries']:>8} {r['seconds']:>8} {r['entries_per_s']:>10} "
            f"{r['us_per_entry']:>9}"
        )
    print(
        json.dumps(
            {
                "benchmark": "raft_core",
                "results": rows,
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
