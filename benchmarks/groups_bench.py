"""Consumer groups on a real local 3-node cluster: what a committed position costs.

- one-at-a-time GROUP_COMMIT latency (median, p99) beside one-at-a-time PRODUCE of one event, in the same run:
  both are one entry committed on a majority with fsync, so they should cost about the same;
- GROUP_FETCH latency (the leader's applied table, no log write);
- consume(group=...) throughput with the default auto-commit against plain consume() over the same events.

    python benchmarks/groups_bench.py [--quick]

Prints a table and one JSON line with the figures and the machine. Everything started is stopped and every
/dev/shm segment of the run removed (ClusterDriver), also on error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_bench import machine  # noqa: E402

from shmraft.client import Client  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402

CLIENT_TIMEOUT_S = 60.0
QUICK = {"samples": 100, "events": 20_000}
DEFAULT = {"samples": 500, "events": 100_000}
EVENT_BYTES = 100
PRODUCE_CALL_EVENTS = 1000


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": round(statistics.median(s) * 1000, 3), "p99_ms": round(s[int(len(s) * 0.99) - 1] * 1000, 3)}


def _timed(call, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    p = QUICK if args.quick else DEFAULT
    out: dict[str, Any] = {"machine": machine(), **p}
    print("machine:", json.dumps(out["machine"]))
    with ClusterDriver.in_temp_dir("groups-bench-") as cluster:
        cluster.start()
        with Client(cluster.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
            event = b"e" * EVENT_BYTES
            for start in range(0, p["events"], PRODUCE_CALL_EVENTS):
                c.produce_many([event] * min(PRODUCE_CALL_EVENTS, p["events"] - start))
            c.commit("bench", 0)  # the connection and the leader are known before timing
            out["produce_one"] = _ms(_timed(lambda _i: c.produce(event), p["samples"]))
            out["group_commit"] = _ms(_timed(lambda i: c.commit("bench", i * 64), p["samples"]))
            out["group_fetch"] = _ms(_timed(lambda _i: c.committed("bench"), p["samples"]))
            t0 = time.perf_counter()
            plain = sum(1 for _ in c.consume(0))
            plain_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            grouped = sum(1 for _ in c.consume(group="bench-consume"))
            grouped_s = time.perf_counter() - t0
            out["consume_events_per_s"] = round(plain / plain_s)
            out["consume_group_events_per_s"] = round(grouped / grouped_s)
            out["consumed"] = [plain, grouped]
    print(f"{'what':<34} {'median':>10} {'p99':>10}")
    for key in ("produce_one", "group_commit", "group_fetch"):
        print(f"{key:<34} {out[key]['median_ms']:>8.3f}ms {out[key]['p99_ms']:>8.3f}ms")
    print(f"{'consume() events/s':<34} {out['consume_events_per_s']:>10}")
    print(f"{'consume(group=...) events/s':<34} {out['consume_group_events_per_s']:>10} (default auto-commit)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
