"""Group-commit benchmark of the RocksDB Raft log (shmraft.storage.rocks.RocksLogStorage).

For fsync policy always/never and 1, 16, 64 entries of ~6 KiB per append (one WriteBatch, one fsync each),
appends for a fixed time and reports appends/s (= fsyncs/s under ALWAYS), entries/s, MB/s and append
latency percentiles. Each append also carries the hard state (commit = last index), as the raft worker's
would; retention is on (bounded disk), so its range deletes are part of the cost.

    python benchmarks/storage_bench.py [--seconds 3] [--entry-bytes 6144] [--dir /path/on/the/disk/to/test]

Prints a table, then one JSON line with the figures and the machine (cores, Python, rocksdict, filesystem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.raft.types import Entry, HardState  # noqa: E402
from shmraft.storage.rocks import FsyncPolicy, RocksLogStorage  # noqa: E402

RETAIN_BYTES_MAX = 256 * 1024 * 1024  # keeps the benchmark's disk use bounded
BATCH_SIZES = (1, 16, 64)


def run_case(root: str, policy: FsyncPolicy, per_append: int, entry_bytes: int, seconds: float) -> dict:
    path = os.path.join(root, f"{policy.value}-{per_append}")
    payload = os.urandom(entry_bytes)
    latencies: list[float] = []
    with RocksLogStorage(path, fsync=policy, retain_entries_max=None, retain_bytes_max=RETAIN_BYTES_MAX) as s:
        s.set_hard_state(HardState(term=1, vote=1, commit=0))
        synced0 = s.stats().synced_writes
        index = 1
        t_end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while True:
            batch = [Entry(i, 1, payload) for i in range(index, index + per_append)]
            index += per_append
            a = time.perf_counter()
            s.append(batch, HardState(term=1, vote=1, commit=index - 1))
            b = time.perf_counter()
            latencies.append(b - a)
            if b >= t_end:
                break
        elapsed = time.perf_counter() - t0
        st = s.stats()
    shutil.rmtree(path, ignore_errors=True)
    appends = len(latencies)
    q = statistics.quantiles(latencies, n=100) if appends >= 2 else latencies * 99
    return {
        "fsync": policy.value,
        "entries_per_append": per_append,
        "entry_bytes": entry_bytes,
        "seconds": round(elapsed, 3),
        "appends_per_s": round(appends / elapsed, 1),
        "fsyncs_per_s": round((st.synced_writes - synced0) / elapsed, 1),
        "entries_per_s": round(appends * per_append / elapsed, 1),
        "mb_per_s": round(appends * per_append * entry_bytes / elapsed / 1e6, 2),
        "p50_ms": round(q[49] * 1e3, 3),
        "p99_ms": round(q[98] * 1e3, 3),
        "compactions": st.compactions,
    }


def run_read(root: str, entry_bytes: int, count: int, max_bytes: int) -> dict:
    """Catch-up reads: entries(lo, hi, max_bytes) over `count` entries flushed to SST files."""
    path = os.path.join(root, "read")
    payload = os.urandom(entry_bytes)
    with RocksLogStorage(path, fsync=FsyncPolicy.NEVER, retain_entries_max=None, retain_bytes_max=None) as s:
        s.set_hard_state(HardState(term=1, vote=1, commit=0))
        for lo in range(1, count + 1, 64):
            s.append([Entry(i, 1, payload) for i in range(lo, min(lo + 64, count + 1))])
        s.flush()
        t0 = time.perf_counter()
        index = 1
        calls = 0
        while index <= count:
            got = s.entries(index, count + 1, max_bytes)
            index = got[-1].index + 1
            calls += 1
        elapsed = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    return {
        "read_entries_per_s": round(count / elapsed, 1),
        "read_mb_per_s": round(count * entry_bytes / elapsed / 1e6, 2),
        "max_bytes_per_call": max_bytes,
        "calls": calls,
    }


def filesystem_of(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each case")
    ap.add_argument("--entry-bytes", type=int, default=6 * 1024)
    ap.add_argument("--dir", default=None, help="parent directory for the databases (default: a temp dir)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="shmraft-storage-bench-", dir=args.dir)
    results = []
    try:
        for policy in (FsyncPolicy.ALWAYS, FsyncPolicy.NEVER):
            for n in BATCH_SIZES:
                results.append(run_case(root, policy, n, args.entry_bytes, args.seconds))
        read = run_read(root, args.entry_bytes, count=20_000, max_bytes=1024 * 1024)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["fsync", "entries_per_append", "appends_per_s", "fsyncs_per_s", "entries_per_s", "mb_per_s"]
    cols += ["p50_ms", "p99_ms"]
    print(" | ".join(f"{c:>18}" for c in cols))
    for r in results:
        print(" | ".join(f"{r[c]!s:>18}" for c in cols))
    print(
        f"catch-up reads from SST (entries(lo, hi, 1 MiB)): {read['read_entries_per_s']} entries/s, "
        f"{read['read_mb_per_s']} MB/s"
    )
    machine = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rocksdict": version("rocksdict"),
        "filesystem": filesystem_of(args.dir or tempfile.gettempdir()),
    }
    print(json.dumps({"bench": "storage", "machine": machine, "results": results, "read": read}))


if __name__ == "__main__":
    main()
