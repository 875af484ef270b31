"""Where a one-in-flight commit goes: the trace's waterfall of a real local 3-node cluster (fsync always).

One producer sends one 100-byte event and waits for its answer, `--requests` times, in two alternating
phases per round: tracing off (the client's latency alone) and every request traced (`trace --all on`), so
the trace's own cost shows as the ratio of the two client medians. The traced phases' histograms (the
state blocks' trace areas, diffed before/after) give the per-stage p50/p99/mean on the leader and on each
follower; the traced requests' whole samples give the waterfall of the median request (the samples around
the median total, each stage's mean over them) and the check that its critical stages add up to the
end-to-end median (ingest receipt to answer) within 10 %, so the waterfall is known to be true (a stage
missing from the samples would show as a shortfall). Also printed: the machine, its load, and the
median time of a 4 KiB write + fsync in the data directory (the floor under both fsyncs of a commit).

    python benchmarks/trace_bench.py                    # 4 rounds x 500 requests per phase
    python benchmarks/trace_bench.py --requests 200 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from shmraft.client import Client  # noqa: E402
from shmraft.ipc.trace import STAGES  # noqa: E402
from shmraft.node.layout import NodeLayout  # noqa: E402
from shmraft.supervisor.waterfall import (  # noqa: E402
    diff_histograms,
    format_waterfall,
    merge_diffs,
    set_sampling,
    trace_report,
)
from shmraft.testing.cluster import ClusterDriver  # noqa: E402

EVENT_BYTES: Final = 100
WARMUP_REQUESTS: Final = 200
FSYNC_PROBES: Final = 200
FSYNC_PROBE_BYTES: Final = 4096
AGREEMENT_TOLERANCE: Final = 0.10  # the median request's critical stages must add up to the end-to-end p50 within this


def fsync_probe_us(directory: Path) -> float:
    """Median µs of a 4 KiB overwrite + fsync of one file in `directory`."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        times = []
        for _ in range(FSYNC_PROBES):
            os.pwrite(fd, os.urandom(FSYNC_PROBE_BYTES), 0)
            t0 = time.perf_counter_ns()
            os.fsync(fd)
            times.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) / 1000


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def pct_us(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p99", 99), ("p999", 99.9))}


def one_in_flight(client: Client, count: int, tag: bytes) -> list[int]:
    out = []
    pad = b"." * (EVENT_BYTES - len(tag) - 8)
    for i in range(count):
        event = tag + b"%08d" % i + pad
        t0 = time.monotonic_ns()
        client.produce(event)
        out.append(time.monotonic_ns() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="one-in-flight requests per phase and round")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of (off, traced) phases, back to back")
    ap.add_argument("--fsync", choices=["always", "never"], default="always")
    ap.add_argument("--tmp", default=None, help="parent of the cluster's temp dir")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    probe_dir = Path(tempfile.mkdtemp(prefix="shmraft-fsync-probe-", dir=args.tmp))
    fsync_us = fsync_probe_us(probe_dir)
    probe_dir.rmdir()
    off_ns: list[int] = []
    on_ns: list[int] = []
    with ClusterDriver.in_temp_dir("shmraft-trace-bench-", args.tmp, fsync=args.fsync, trace_sample_every=0) as d:
        d.start()
        leader = d.wait_leader()
        blocks = {n: NodeLayout(d.config(n)).attach_state() for n in d.node_ids}
        try:
            with Client(d.addresses) as client:
                one_in_flight(client, WARMUP_REQUESTS, b"warm")
                diffs: dict[int, dict[str, np.ndarray]] = {}
                for r in range(args.rounds):
                    off_ns += one_in_flight(client, args.requests, b"off%d-" % r)
                    for b in blocks.values():
                        set_sampling(b.trace, sample_all=True)
                    before = {n: b.trace.snapshot() for n, b in blocks.items()}
                    on_ns += one_in_flight(client, args.requests, b"on%d-" % r)
                    time.sleep(0.05)  # the followers' last acknowledgements
                    for n, b in blocks.items():
                        set_sampling(b.trace, sample_all=False)
                        d_n = diff_histograms(b.trace.snapshot(), before[n])
                        diffs[n] = d_n if n not in diffs else merge_diffs(diffs[n], d_n)
            leader_now = d.leader()
        finally:
            for b in blocks.values():
                b.close()
    report = trace_report(leader_now if leader_now == leader else None, diffs, True)
    print(
        f"shmraft trace benchmark: 3 local nodes, fsync {args.fsync}, one {EVENT_BYTES}-byte event in flight, "
        f"{args.rounds} x {args.requests} requests per phase"
    )
    m = machine()
    print(
        f"machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, load {m['load_avg']}, "
        f"4 KiB write + fsync median {fsync_us:.0f} µs"
    )
    print()
    print(format_waterfall(report))
    off, on = pct_us(off_ns), pct_us(on_ns)
    s = report["leader_stages"]["summary"]
    req = s.get("p50_request") or {"critical_sum_us": 0.0, "samples": 0}
    agree = abs(req["critical_sum_us"] - s["total_p50_us"]) / s["total_p50_us"]
    print()
    print(
        f"client latency p50/p99/p99.9: tracing off {off['p50']}/{off['p99']}/{off['p999']} µs, "
        f"every request traced {on['p50']}/{on['p99']}/{on['p999']} µs (ratio {on['p50'] / off['p50']:.3f})"
    )
    print(
        f"the median request's stages ({req['samples']} samples around the median) add up to "
        f"{req['critical_sum_us']} µs vs end-to-end p50 {s['total_p50_us']} µs: {100 * agree:.1f} % apart "
        f"({'within' if agree <= AGREEMENT_TOLERANCE else 'NOT within'} {100 * AGREEMENT_TOLERANCE:.0f} %); "
        f"per-stage p50s add up to {s['critical_p50_sum_us']} µs; client-seen p50 {on['p50']} µs"
    )
    crit = [r for r, st in zip(report["leader_stages"]["stages"], STAGES, strict=True) if st[3]]
    top = sorted(crit, key=lambda r: -(r["p50_us"] or 0))[:4]
    print("largest critical stages at p50: " + ", ".join(f"{r['stage']} {r['p50_us']} µs" for r in top))
    if s.get("p50_request"):
        top_req = sorted(crit, key=lambda r: -(r["p50_req_us"] or 0))[:4]
        print(
            "largest stages of the median request: " + ", ".join(f"{r['stage']} {r['p50_req_us']} µs" for r in top_req)
        )
    out = {
        "machine": m,
        "fsync_probe_us": round(fsync_us, 1),
        "client_off_us": off,
        "client_traced_us": on,
        "report": report,
    }
    print(json.dumps({"client_off_us": off, "client_traced_us": on, "fsync_probe_us": round(fsync_us, 1)}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
