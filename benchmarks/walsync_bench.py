"""What one durable write costs the raft worker, and where the rest of the trace's `fsync` stage goes.

One unsynced RocksDB append of one ~7 KB entry (a full batch frame) followed by a WAL sync, timed until the
caller knows it is durable, four ways:

  inline   `append(sync=False)` then `sync_wal()` on the calling thread
  thread   the raft worker's way: `append(sync=False)`, `WalSyncer.submit()`, then wait in select() for the
           persist thread's wake byte and `take()` (workers/walsync.py)

each by one process alone and by three processes at once (a barrier before every write), as the three nodes
of a local cluster do when one event is in flight: they share one disk, so their syncs queue behind each
other. Beside them, a bare 4 KiB `os.write` + `os.fsync` on the same directory (the disk's floor).

    python benchmarks/walsync_bench.py [--writes 300] [--dir /path/on/the/disk]

Prints a table (p50 / p99 µs) and one JSON line with the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import select
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.raft.types import Entry, HardState  # noqa: E402
from shmraft.storage.rocks import RocksLogStorage  # noqa: E402
from shmraft.workers.walsync import WalSyncer  # noqa: E402

ENTRY_BYTES = 7_000  # a full frame: 64 events of 100 B with their tables and header
PROCESSES_AT_ONCE = 3  # the nodes of a local cluster
BARRIER_TIMEOUT_S = 60.0


def timed_writes(path: str, mode: str, writes: int, barrier=None) -> list[float]:
    """Microseconds from the start of each append until it is known durable."""
    storage = RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None)
    storage.append([Entry(1, 1, b"x")], HardState(term=1))
    data = os.urandom(ENTRY_BYTES)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    syncer = WalSyncer(storage.sync_wal, wake_w) if mode == "thread" else None
    out: list[float] = []
    try:
        for index in range(2, writes + 2):
            if barrier is not None:
                barrier.wait(BARRIER_TIMEOUT_S)
            t0 = time.perf_counter_ns()
            storage.append([Entry(index, 1, data)], None, sync=False)
            if syncer is None:
                storage.sync_wal()
            else:
                syncer.submit()
                while True:
                    select.select([wake_r], [], [])
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    if syncer.take()[0]:
                        break
            out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        if syncer is not None:
            syncer.close()
        storage.close()
        os.close(wake_r)
        os.close(wake_w)
    return out


def bare_fsync(root: str, writes: int) -> list[float]:
    path = os.path.join(root, "probe")
    block = os.urandom(4096)
    out: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(writes):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            os.fsync(fd)
            out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
    return out


def _child(path: str, mode: str, writes: int, barrier, results) -> None:
    results.put(timed_writes(path, mode, writes, barrier))


def at_once(root: str, mode: str, writes: int) -> list[float]:
    """Every process's samples together (spawned, so no RocksDB handle or thread crosses a fork)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES_AT_ONCE)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(os.path.join(root, f"{mode}-{i}"), mode, writes, barrier, results))
        for i in range(PROCESSES_AT_ONCE)
    ]
    for p in procs:
        p.start()
    try:
        samples: list[float] = []
        for _ in procs:
            samples += results.get(timeout=BARRIER_TIMEOUT_S * 2)
    finally:
        for p in procs:
            p.join(BARRIER_TIMEOUT_S)
            if p.is_alive():
                p.kill()
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "n": len(ordered),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=300, help="durable writes per process and case")
    ap.add_argument("--dir", default=None, help="directory on the disk to test (default: system temp)")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="walsync-bench-") as root:
        results["bare 4 KiB write+fsync"] = summary(bare_fsync(root, args.writes))
        for mode in ("inline", "thread"):
            results[f"{mode}, alone"] = summary(timed_writes(os.path.join(root, f"{mode}-alone"), mode, args.writes))
        for mode in ("inline", "thread"):
            results[f"{mode}, {PROCESSES_AT_ONCE} at once"] = summary(at_once(root, mode, args.writes))
    print(f"{'case':<28}{'p50 µs':>10}{'p99 µs':>10}{'n':>7}")
    for name, r in results.items():
        print(f"{name:<28}{r['p50_us']:>10}{r['p99_us']:>10}{r['n']:>7}")
    machine = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rocksdict": version("rocksdict"),
        "load_average": os.getloadavg(),
    }
    print(json.dumps({"results": results, "entry_bytes": ENTRY_BYTES, "machine": machine}, separators=(",", ":")))


if __name__ == "__main__":
    main()
