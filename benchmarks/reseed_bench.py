"""Time and bytes to reseed a follower N entries behind (issue 12): a real 3-node cluster with a small retention;
a follower is stopped, the others commit N entries (the leader compacts past the follower's log end meanwhile),
the follower is restarted, and the time until its commit index reaches the leader's (at the restart) is taken,
with the snapshot bytes the leader reports for that follower (or, for a transfer shorter than a poll, the
follower's "installed the leader's snapshot" log line) and the snapshot counters of both nodes.

It needs InstallSnapshot (the snapshot branches): without it the follower stays in RESEED, and each row says
"not caught up" after --timeout-s; counters the status does not have print "not available".

    python benchmarks/reseed_bench.py                                  # 10 K and 100 K entries behind
    python benchmarks/reseed_bench.py --behind 10000 --retain-entries 2000 --timeout-s 60

Prints the machine, one line per N, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.supervisor.status import node_status  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402
from shmraft.testing.wait import wait_for  # noqa: E402

BEHIND_DEFAULT: Final = (10_000, 100_000)
RETAIN_ENTRIES_DEFAULT: Final = 5_000
EVENT_BYTES: Final = 100
EVENTS_PER_CALL: Final = 8  # events per produce request: about one log entry each (a busy batcher merges some)
PRODUCE_WINDOW: Final = 64  # calls in flight through the pipelined producer
POLL_S: Final = 0.05
WHOLE_WAIT_S: Final = 60.0
COMPACT_WAIT_S: Final = 120.0
NOT_AVAILABLE: Final = "not available"
INSTALLED_LINE: Final = re.compile(r"installed the leader's snapshot at \d+ \(term \d+, (\d+) bytes")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def produce_entries(d: ClusterDriver, leader: int, entries: int) -> int:
    """Produce until the leader's log has grown by `entries`; returns the events produced."""
    start = (d.state(leader) or {}).get("last_index", 0)
    sent = 0
    pad = b"r" * (EVENT_BYTES - 12)
    with (
        Client(d.addresses, timeout_s=30.0) as c,
        c.producer(window=PRODUCE_WINDOW, batch_events=EVENTS_PER_CALL, linger_ms=0.0) as p,
    ):
        while (d.state(leader) or {}).get("last_index", 0) - start < entries:
            p.send_many([pad + (sent + i).to_bytes(12, "big") for i in range(EVENTS_PER_CALL * PRODUCE_WINDOW)])
            sent += EVENTS_PER_CALL * PRODUCE_WINDOW
        p.flush()
    return sent


def snapshot_fields(status: dict[str, Any], follower: int) -> dict[str, Any]:
    """The snapshot counters of a node's status, and the leader's view of `follower` (absent: NOT_AVAILABLE)."""
    out: dict[str, Any] = {k: status.get(k, NOT_AVAILABLE) for k in ("snapshots_sent", "snapshots_installed")}
    fol = next((f for f in status.get("followers", []) or [] if f.get("node_id") == follower), None)
    out["snapshot_total_bytes"] = fol.get("snapshot_total_bytes", NOT_AVAILABLE) if fol else NOT_AVAILABLE
    out["state"] = fol.get("state") if fol else None
    return out


def one(d: ClusterDriver, behind: int, timeout_s: float) -> dict[str, Any]:
    why = d.wait_whole(WHOLE_WAIT_S)
    if why:
        raise RuntimeError(f"the cluster is not whole: {why}")
    leader = d.wait_leader()
    follower = next(n for n in d.node_ids if n != leader)
    end = (d.state(follower) or {}).get("last_index", 0)
    d.kill_node(follower)
    events = produce_entries(d, leader, behind)
    wait_for(
        lambda: (d.state(leader) or {}).get("first_index", 0) > end + 1,
        COMPACT_WAIT_S,
        f"the leader to compact past the follower's log end {end}",
    )
    before = snapshot_fields(node_status(d.config(leader)), follower)
    target = (d.state(leader) or {}).get("commit_index", 0)
    row: dict[str, Any] = {
        "behind_entries": target - end,
        "events_produced": events,
        "leader_first_index": (d.state(leader) or {}).get("first_index", 0),
    }
    log_seen = len(d.node_log(follower))
    t0 = time.monotonic()
    d.start_node(follower)
    seen_bytes: int | str = NOT_AVAILABLE
    caught = None
    while time.monotonic() - t0 < timeout_s:
        view = snapshot_fields(node_status(d.config(leader)), follower)
        total = view["snapshot_total_bytes"]
        if isinstance(total, int) and total > 0:
            seen_bytes = max(total, seen_bytes if isinstance(seen_bytes, int) else 0)
        if ((d.state(follower) or {}).get("commit_index", 0)) >= target:
            caught = time.monotonic() - t0
            break
        time.sleep(POLL_S)
    if not isinstance(seen_bytes, int):  # a transfer shorter than a poll: the follower's log line says the size
        found = INSTALLED_LINE.findall(d.node_log(follower)[log_seen:])
        seen_bytes = int(found[-1]) if found else seen_bytes
    after_leader = snapshot_fields(node_status(d.config(leader)), follower)
    after_follower = node_status(d.config(follower))
    row.update(
        seconds_to_caught_up=round(caught, 2) if caught is not None else None,
        snapshot_bytes=seen_bytes,
        snapshots_sent=_delta(after_leader["snapshots_sent"], before["snapshots_sent"]),
        snapshots_installed=after_follower.get("snapshots_installed", NOT_AVAILABLE),
    )
    return row


def _delta(a: Any, b: Any) -> Any:
    return a - b if isinstance(a, int) and isinstance(b, int) else NOT_AVAILABLE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--behind", type=lambda s: tuple(int(x) for x in s.split(",")), default=BEHIND_DEFAULT)
    ap.add_argument("--retain-entries", type=int, default=RETAIN_ENTRIES_DEFAULT, help="the cluster's retention")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per row: until the follower has caught up")
    ap.add_argument("--tmp", default=None, help="parent of the cluster's temp dir")
    args = ap.parse_args()
    m = machine()
    print(f"machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}, load {m['load_avg']}", flush=True)
    print(f"retention {args.retain_entries} entries; {EVENT_BYTES}-byte events, {EVENTS_PER_CALL} per request")
    rows = []
    with ClusterDriver.in_temp_dir("shmraft-reseed-bench-", args.tmp, retain_entries_max=args.retain_entries) as d:
        d.start()
        for behind in args.behind:
            try:
                row = one(d, behind, args.timeout_s)
            except (RuntimeError, ShmraftError) as exc:
                row = {"behind_entries": behind, "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            took = row.get("seconds_to_caught_up")
            print(
                f"  {row.get('behind_entries', behind):>9,} entries behind: "
                + (
                    row["error"]
                    if "error" in row
                    else (
                        f"caught up in {took:.2f} s" if took is not None else f"NOT caught up in {args.timeout_s:g} s"
                    )
                    + f"; snapshot bytes {row['snapshot_bytes']}, snapshots sent {row['snapshots_sent']}, "
                    f"installed on the follower {row['snapshots_installed']}"
                ),
                flush=True,
            )
            if "error" not in row and took is None:
                break  # a follower left behind: the next row would measure nothing
    print(json.dumps({"rows": rows, "retain_entries": args.retain_entries, "machine": m}))


if __name__ == "__main__":
    main()
