"""Consume throughput on a real local 3-node cluster, beside produce throughput in the same run.

- produce: a pipelined Producer writes the events (events/s, MB/s of event bytes);
- consume from the leader, from a follower, and from the leader while another process-thread produces, each
  with frame verification (FETCH_FRAMES: stored frames, CRC32 checked by the client, the default) and without
  (plain FETCH: events re-encoded by the node), reading every committed event once (`only_node` clients, so
  each figure is one node's).

    python benchmarks/consume_bench.py [--quick]

Prints the machine (with the 1-minute load average before and after the run: the machine may be shared), a
table and one JSON line. Everything started is stopped and every /dev/shm segment of the
run removed (ClusterDriver), also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_bench import machine  # noqa: E402

from shmraft.client import Client  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402

CLIENT_TIMEOUT_S = 60.0
QUICK = {"events": 50_000}
DEFAULT = {"events": 300_000}
EVENT_BYTES = 100
SEND_CALL_EVENTS = 1000  # events per Producer.send_many call
LOAD_SEND_CALL_EVENTS = 200  # the background load's calls: smaller, so it keeps producing throughout
MB: float = 1e6


def _rate(events: int, seconds: float) -> dict[str, float]:
    return {
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "mb_per_s": round(events * EVENT_BYTES / seconds / MB, 2),
    }


def _produce(addresses: list[str], events: int) -> dict[str, float]:
    event = b"p" * EVENT_BYTES
    with Client(addresses, timeout_s=CLIENT_TIMEOUT_S) as c, c.producer() as p:
        t0 = time.perf_counter()
        for start in range(0, events, SEND_CALL_EVENTS):
            p.send_many([event] * min(SEND_CALL_EVENTS, events - start))
        p.flush()
        return _rate(events, time.perf_counter() - t0)


def _consume(address: str, verify: bool, upto_offset: int) -> dict[str, float]:
    """Read one node's log from 0 to `upto_offset` (the produced events: a load may add more behind them)."""
    n = 0
    with Client([address], timeout_s=CLIENT_TIMEOUT_S, only_node=True) as c:
        t0 = time.perf_counter()
        records = c.consume(0, follow=True, poll_wait_ms=200, verify=verify)
        for r in records:
            n += 1
            if r.offset >= upto_offset:
                break
        records.close()  # type: ignore[attr-defined]
        return _rate(n, time.perf_counter() - t0)


class _Load(threading.Thread):
    """Produces to the cluster until stopped; counts what was acknowledged."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.stop_flag = threading.Event()
        self.sent = 0
        self.seconds = 0.0

    def run(self) -> None:
        event = b"l" * EVENT_BYTES
        with Client(self.addresses, timeout_s=CLIENT_TIMEOUT_S) as c, c.producer() as p:
            t0 = time.perf_counter()
            while not self.stop_flag.is_set():
                p.send_many([event] * LOAD_SEND_CALL_EVENTS).result(CLIENT_TIMEOUT_S)
                self.sent += LOAD_SEND_CALL_EVENTS
            self.seconds = time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    p = QUICK if args.quick else DEFAULT
    out: dict[str, Any] = {"machine": machine(), "event_bytes": EVENT_BYTES, **p}
    print("machine:", json.dumps(out["machine"]))
    with ClusterDriver.in_temp_dir("consume-bench-") as cluster:
        cluster.start()
        out["produce"] = _produce(cluster.addresses, p["events"])
        with Client(cluster.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
            last = c.produce(b"end")  # every event of the run is below this offset, and committed
        leader = cluster.leader()
        follower = cluster.followers()[0]
        addr = dict(zip(cluster.node_ids, cluster.addresses, strict=True))
        for verify in (True, False):
            tag = "frames" if verify else "plain"
            out[f"leader_{tag}"] = _consume(addr[leader], verify, last)
            out[f"follower_{tag}"] = _consume(addr[follower], verify, last)
        for verify in (True, False):
            tag = "frames" if verify else "plain"
            load = _Load(cluster.addresses)
            load.start()
            try:
                out[f"leader_under_load_{tag}"] = _consume(addr[leader], verify, last)
            finally:
                load.stop_flag.set()
                load.join(CLIENT_TIMEOUT_S)
            out[f"load_produce_{tag}"] = _rate(load.sent, load.seconds)
    out["load_1min_after"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was meanwhile
    print(f"{'what':<36} {'events/s':>10} {'MB/s':>8} {'events':>9}")
    for key, v in out.items():
        if isinstance(v, dict) and "events_per_s" in v:
            print(f"{key:<36} {v['events_per_s']:>10} {v['mb_per_s']:>8} {v['events']:>9}")
    print(f"load average (1 min): {out['machine']['load_1min']} before, {out['load_1min_after']} after")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
