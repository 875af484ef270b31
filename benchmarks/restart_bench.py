"""Restart time against log size: the raft worker's start-up steps that grow with the log, before and after the
verified mark (docs/DESIGN.md "Storage faults"), in the same run.

For each log size it builds a node log of that many entries (each one batch frame of 64 events of 100 B,
encoded as the batcher does, about 7.7 KB), committed, with the verified mark persisted `--tail-entries`
before the end (what the running worker leaves behind at worst: one VERIFIED_MARK_INTERVAL_S of full load,
plus whatever memtable is flushed after the mark), then closes it. It then times, `--repeats` times each:

* open:  `open_node_log` (RocksDB open, the start-up check, the hint and hard-state checks), with
  ``full_scan=True`` ("before": the whole log is scanned, as every start did) and from the mark ("after";
  the mark file is restored before each run, so each run resumes from the same point);
* dedup: rebuilding the dedup table from the last DEDUP_HORIZON_ENTRIES_DEFAULT entries, as the worker does
  after the open (the same for both; a node serves once both are done).

The page cache is warm (the log was just written; a restarted process finds it so); `--drop-caches` (root)
drops it before each open for the cold figures after a reboot.

    python benchmarks/restart_bench.py --quick            # 10 K and 100 K entries (about 1 GB of disk)
    python benchmarks/restart_bench.py                    # 10 K, 555 K (the 4 GiB retention) and 1 M entries

Prints a table, then one JSON line with the figures and the machine (CPUs, Python, rocksdict).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.node.dedup import DedupTable  # noqa: E402
from shmraft.raft.types import Entry, HardState  # noqa: E402
from shmraft.storage.nodelog import VERIFIED_MARK_INTERVAL_S, open_node_log  # noqa: E402
from shmraft.storage.sidecar import VERIFIED_MARK_FILE  # noqa: E402
from shmraft.wire.frame import decode_batch, encode_batch  # noqa: E402
from shmraft.workers.raft import DEDUP_REBUILD_READ_BYTES  # noqa: E402

EVENTS_PER_ENTRY = 64
EVENT_BYTES = 100
PRODUCERS = 16
ENTRIES_PER_APPEND = 4096
FULL_LOAD_BYTES_PER_S = 35_000_000  # the measured cluster rate of 100-byte events (issue 12)
SIZES_FULL = (10_000, 555_000, 1_000_000)  # 555 K entries of 7.7 KB: the 4 GiB default retention
SIZES_QUICK = (10_000, 100_000)
TERM = 1


def _frame(index: int) -> bytes:
    events = [index.to_bytes(8, "big") * (EVENT_BYTES // 8) + bytes(EVENT_BYTES % 8)] * EVENTS_PER_ENTRY
    pid = 1 + index % PRODUCERS
    first_seq = (index // PRODUCERS) * EVENTS_PER_ENTRY
    return encode_batch(
        events,
        batch_id=index,
        term=TERM,
        producer_ids=np.full(EVENTS_PER_ENTRY, pid, dtype=np.uint64),
        sequences=np.arange(first_seq, first_seq + EVENTS_PER_ENTRY, dtype=np.uint64),
    )


def build(node_dir: Path, entries: int, tail: int) -> int:
    """A committed log of `entries` frames with the verified mark `tail` entries before the end; returns
    its data bytes."""
    nl = open_node_log(node_dir, fsync="never", retain_entries_max=None, retain_bytes_max=None)
    nbytes = 0
    try:
        nl.set_hard_state(HardState(TERM, 1, 0))
        mark_at = entries - tail
        index = 1
        while index <= entries:
            hi = min(entries, index + ENTRIES_PER_APPEND - 1)
            if index <= mark_at < hi:
                hi = mark_at
            batch = [Entry(i, TERM, _frame(i)) for i in range(index, hi + 1)]
            nbytes += sum(len(e.data) for e in batch)
            nl.append(batch, HardState(TERM, 1, hi))
            if hi == mark_at:
                nl.persist_mark()
            index = hi + 1
        nl.rocks.sync()
    finally:
        nl.close()
    return nbytes


def rebuild_dedup(nl) -> None:
    """What the raft worker does after the open (workers/raft.py `_rebuild_dedup`)."""
    table = DedupTable()
    last = nl.last_index()
    lo = max(nl.first_index(), last - table.horizon_entries + 1, 1)
    commit = nl.hard_state().commit
    while lo <= last:
        batch = nl.entries(lo, last + 1, DEDUP_REBUILD_READ_BYTES)
        for e in batch:
            b = decode_batch(e.data)
            table.record(e.index, b.producer_ids, b.sequences, commit)
        lo = batch[-1].index + 1


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def time_restart(node_dir: Path, mark: bytes, *, full: bool, cold: bool) -> tuple[float, float, int]:
    """(open seconds, dedup seconds, entries verified) of one restart."""
    (node_dir / VERIFIED_MARK_FILE).write_bytes(mark)
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    nl = open_node_log(node_dir, full_scan=full, retain_entries_max=None, retain_bytes_max=None)
    t1 = time.perf_counter()
    try:
        assert nl.quarantined is None, nl.corruption
        rebuild_dedup(nl)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, nl.open_check.entries_verified
    finally:
        nl.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"sizes {SIZES_QUICK} instead of {SIZES_FULL}")
    ap.add_argument("--entries", type=lambda s: tuple(int(x) for x in s.split(",")), help="sizes, e.g. 10000,50000")
    default_tail = int(VERIFIED_MARK_INTERVAL_S * FULL_LOAD_BYTES_PER_S / len(_frame(1)))
    ap.add_argument("--tail-entries", type=int, default=default_tail, help="entries written after the mark")
    ap.add_argument("--repeats", type=int, default=None, help="runs per case, median reported (3; 1 with --quick)")
    ap.add_argument("--drop-caches", action="store_true", help="cold page cache before each open (root)")
    ap.add_argument("--dir", default=None, help="where to build the logs (default: a temporary directory)")
    args = ap.parse_args()
    sizes = args.entries or (SIZES_QUICK if args.quick else SIZES_FULL)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="restart-bench-", dir=args.dir))
    rows = []
    try:
        for n in sizes:
            node_dir = root / f"n{n}"
            tail = min(n // 2, args.tail_entries)  # a small log: the mark halfway
            t0 = time.perf_counter()
            nbytes = build(node_dir, n, tail)
            build_s = time.perf_counter() - t0
            mark = (node_dir / VERIFIED_MARK_FILE).read_bytes()
            row = {"entries": n, "bytes": nbytes, "tail_entries": tail, "build_s": round(build_s, 1)}
            for case, full in (("before", True), ("after", False)):
                runs = [time_restart(node_dir, mark, full=full, cold=args.drop_caches) for _ in range(args.repeats)]
                row[f"{case}_open_s"] = round(statistics.median(r[0] for r in runs), 3)
                row[f"{case}_dedup_s"] = round(statistics.median(r[1] for r in runs), 3)
                row[f"{case}_verified"] = runs[-1][2]
            rows.append(row)
            print(
                f"{n:>9} entries {nbytes / 1e9:6.2f} GB | before: open {row['before_open_s']:6.3f} s "
                f"({row['before_verified']} checked) | after: open {row['after_open_s']:6.3f} s "
                f"({row['after_verified']} checked) | dedup rebuild {row['after_dedup_s']:6.3f} s",
                flush=True,
            )
            shutil.rmtree(node_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rocksdict": version("rocksdict"),
        "platform": platform.platform(),
        "page_cache": "cold" if args.drop_caches else "warm",
        "repeats": args.repeats,
    }
    print(json.dumps({"restart": rows, "machine": machine}))


if __name__ == "__main__":
    main()
