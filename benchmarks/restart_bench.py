"""Restart time against log size: the raft worker's start-up steps that grow with the log, before and after the
verified mark (docs/DESIGN.md "Storage faults"), in the same run.

For each log size it builds a node log of that many entries (each one batch frame of 64 events of 100 B,
encoded as the batcher does, about 7.7 KB), committed, with the verified mark persisted `--tail-entries`
before the end (what the running worker leaves behind at worst: one VERIFIED_MARK_INTERVAL_S of full load,
plus whatever memtable is flushed after the mark), then closes it. It then times, `--repeats` times each:

* open:  `open_node_log` (RocksDB open, the start-up check, the hint and hard-state checks), with
  ``full_scan=True`` ("before": the whole log is scanned, as every start did) and from the mark ("after";
  the mark file is restored before each run, so each run resumes from the same point);
* dedup: rebuilding the dedup table as the worker does after the open: "before" replays the last
  DEDUP_HORIZON_ENTRIES_DEFAULT entries (what every start did before snapshots, and still does for a log
  without one); "after" loads the saved snapshot (docs/DESIGN.md "Snapshots"), written as the worker writes
  it, `--snapshot-tail` entries before the end (the worst case: SNAPSHOT_INTERVAL_ENTRIES), and replays only
  the entries after it. A node serves once both are done.

It also measures the snapshot itself for a table of `--snapshot-producers` producers (3 runs of offsets
each): building it in the raft loop (the frozen view, the longest single step, the whole), encoding,
saving (one synced RocksDB write), and at start loading, decoding and installing it.

With `--node-start` it also starts a real one-node cluster (supervisor, four worker processes) on each log
twice and times, from the supervisor's start, until the node answers METADATA from its client port as the
leader and until a first PRODUCE is acknowledged: what a restart costs whole (Python start-up and imports,
worker spawn, the open, the raft worker's one read of the entries after the snapshot for the core's
configurations, the dedup table and the consumer groups, and a single node's election), `--repeats` times
(the median). The first start
is the one after a crash at the worst point (the verified mark restored, the snapshot `--snapshot-tail` old);
the second follows the first's clean stop. The table adds the raft worker's start-up phases from its log
line (workers/raft.py, "start-up phases"). The snapshot is saved as the worker saves it, with the cluster
configuration and the consumer groups; `--no-snapshot-config` leaves the configuration out (as a log
written before snapshots carried one, and as this benchmark did until it was found to cost the first start
a read of the whole log).

It also times `NodeLog.persist_mark` on each log (what the raft loop pays every VERIFIED_MARK_INTERVAL_S to
keep the first check after a crash short): median and longest of PERSIST_MARK_CALLS calls.

The page cache is warm (the log was just written; a restarted process finds it so); `--drop-caches` (root)
drops it before each open for the cold figures after a reboot.

    python benchmarks/restart_bench.py --quick            # 10 K and 100 K entries (about 1 GB of disk)
    python benchmarks/restart_bench.py                    # 10 K, 555 K (the 4 GiB retention) and 1 M entries
    python benchmarks/restart_bench.py --quick --node-start   # and a whole node's start on each log

Prints a table, then one JSON line with the figures and the machine (CPUs, Python, rocksdict).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.node.dedup import DedupTable  # noqa: E402
from shmraft.node.groups import GroupTable  # noqa: E402
from shmraft.node.snapshot import Snapshot, decode_snapshot, encode_snapshot, snapshot_of  # noqa: E402
from shmraft.raft.membership import encode_membership  # noqa: E402
from shmraft.raft.types import Entry, HardState  # noqa: E402
from shmraft.storage.nodelog import VERIFIED_MARK_INTERVAL_S, open_node_log  # noqa: E402
from shmraft.storage.rocks import SavedSnapshot  # noqa: E402
from shmraft.storage.sidecar import VERIFIED_MARK_FILE  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402
from shmraft.testing.wait import wait_for  # noqa: E402
from shmraft.wire.frame import decode_batch, encode_batch  # noqa: E402
from shmraft.workers.raft import (  # noqa: E402
    SNAPSHOT_INTERVAL_ENTRIES,
    _decode_saved_snapshot,
    bootstrap_config,
    rebuild_dedup,
)

EVENTS_PER_ENTRY = 64
EVENT_BYTES = 100
PRODUCERS = 16
ENTRIES_PER_APPEND = 4096
FULL_LOAD_BYTES_PER_S = 35_000_000  # the measured cluster rate of 100-byte events (issue 12)
SIZES_FULL = (10_000, 555_000, 1_000_000)  # 555 K entries of 7.7 KB: the 4 GiB default retention
SIZES_QUICK = (10_000, 100_000)
TERM = 1
NODE_START_WAIT_S = 300.0  # a whole node's start on the largest log, with room for a busy machine
METADATA_TIMEOUT_S = 1.0
PERSIST_MARK_CALLS = 200  # timed calls of NodeLog.persist_mark per log


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


def build(node_dir: Path, entries: int, tail: int, snapshot_tail: int, configuration: bytes) -> int:
    """A committed log of `entries` frames with the verified mark `tail` entries and the saved snapshot
    `snapshot_tail` entries before the end; returns its data bytes. The snapshot is what the raft worker saves:
    the dedup table, the consumer groups (none) and the cluster configuration (`configuration`, the encoded
    membership). Without the configuration the start-up read covers the whole log, for MEMBERSHIP entries
    (a log written before snapshots carried it): that, not the log check, was the first start's extra seconds."""
    nl = open_node_log(node_dir, fsync="never", retain_entries_max=None, retain_bytes_max=None)
    nbytes = 0
    snap_at = max(1, entries - snapshot_tail)
    table = DedupTable()
    try:
        nl.set_hard_state(HardState(TERM, 1, 0))
        mark_at = entries - tail
        index = 1
        while index <= entries:
            hi = min(entries, index + ENTRIES_PER_APPEND - 1)
            for cut in (mark_at, snap_at):
                if index <= cut < hi:
                    hi = cut
            batch = [Entry(i, TERM, _frame(i)) for i in range(index, hi + 1)]
            nbytes += sum(len(e.data) for e in batch)
            nl.append(batch, HardState(TERM, 1, hi))
            for e in batch:  # the table as the worker holds it (only the horizon before the snapshot counts)
                if e.index > snap_at - table.horizon_entries:
                    b = decode_batch(e.data)
                    table.record(e.index, b.producer_ids, b.sequences, e.index)
            if hi == mark_at:
                nl.persist_mark()
            if hi == snap_at:
                groups = GroupTable()
                groups.advance(hi)
                snap = dataclasses.replace(snapshot_of(table, TERM, groups), configuration=configuration)
                nl.save_snapshot(SavedSnapshot(hi, TERM, encode_snapshot(snap)))
            index = hi + 1
        nl.rocks.sync()
    finally:
        nl.close()
    return nbytes


def snapshot_cost(producers: int, node_dir: Path) -> dict:
    """Seconds to build, encode, save, load, decode and install the snapshot of a table of `producers`."""
    table = DedupTable()
    per_entry = EVENTS_PER_ENTRY
    index = 0
    for _round in range(3):
        for base in range(0, producers, per_entry):
            index += 1
            pids = np.arange(base + 1, min(base + per_entry, producers) + 1, dtype=np.uint64)
            table.record(index, pids, np.full(pids.size, _round, dtype=np.uint64), index)
    out: dict = {"producers": producers}
    t0 = time.perf_counter()
    export = table.committed_view()
    out["view_s"] = time.perf_counter() - t0
    longest = 0.0
    done = False
    while not done:
        t = time.perf_counter()
        done = export.step()
        longest = max(longest, time.perf_counter() - t)
    t = time.perf_counter()
    state = export.result()
    longest = max(longest, time.perf_counter() - t)
    out["build_s"] = time.perf_counter() - t0
    out["longest_step_s"] = max(longest, out["view_s"])
    t = time.perf_counter()
    data = encode_snapshot(Snapshot(state.index, TERM, state, table.producers_max, table.horizon_entries, 64))
    out["encode_s"] = time.perf_counter() - t
    out["bytes"] = len(data)
    nl = open_node_log(node_dir, retain_entries_max=None, retain_bytes_max=None)
    try:
        for lo in range(1, index + 1, ENTRIES_PER_APPEND):
            hi = min(index, lo + ENTRIES_PER_APPEND - 1)
            nl.append([Entry(i, TERM, b"") for i in range(lo, hi + 1)], HardState(TERM, 1, hi))
        t = time.perf_counter()
        nl.save_snapshot(SavedSnapshot(index, TERM, data))
        out["save_s"] = time.perf_counter() - t
    finally:
        nl.close()
    t = time.perf_counter()
    nl = open_node_log(node_dir, retain_entries_max=None, retain_bytes_max=None)
    try:
        t1 = time.perf_counter()
        snap = decode_snapshot(nl.rocks.load_snapshot().data)
        t2 = time.perf_counter()
        DedupTable.from_state(snap.table)
        out["load_s"], out["decode_s"], out["install_s"] = t1 - t, t2 - t1, time.perf_counter() - t2
    finally:
        nl.close()
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def persist_mark_cost(node_dir: Path, calls: int) -> dict:
    """What advancing the verified mark costs the raft loop (`NodeLog.persist_mark`, every
    VERIFIED_MARK_INTERVAL_S while running: it lists the live SST files and writes the small mark file), timed
    `calls` times on the built log: median and longest milliseconds, and how many SST files the mark lists."""
    nl = open_node_log(node_dir, verify=False, retain_entries_max=None, retain_bytes_max=None)
    try:
        times = []
        for _ in range(calls):
            nl._mark = None  # as if the log had moved on since the last mark: the file is written every time
            t = time.perf_counter()
            mark = nl.persist_mark()
            times.append(time.perf_counter() - t)
        assert mark is not None
        return {
            "median_ms": round(statistics.median(times) * 1000, 3),
            "max_ms": round(max(times) * 1000, 3),
            "sst_files": len(mark.files),
        }
    finally:
        nl.close()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def time_restart(node_dir: Path, mark: bytes, *, full: bool, cold: bool) -> tuple[float, float, int]:
    """(open seconds, dedup seconds, entries verified) of one restart; `full`: as before the verified mark and
    snapshots (whole scan, replay of the horizon), else as now (from the mark, from the snapshot)."""
    (node_dir / VERIFIED_MARK_FILE).write_bytes(mark)
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    nl = open_node_log(
        node_dir,
        full_scan=full,
        retain_entries_max=None,
        retain_bytes_max=None,
        decode_snapshot=None if full else _decode_saved_snapshot,
    )
    t1 = time.perf_counter()
    try:
        assert nl.quarantined is None, nl.corruption
        assert full or nl.snapshot_record is not None
        rebuild_dedup(nl, DedupTable().producers_max)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, nl.open_check.entries_verified
    finally:
        nl.close()


_PHASES = re.compile(
    r"open_node_log (?P<open_s>[\d.]+) s \(check (?P<check_s>[\d.]+) s, (?P<checked>\d+) entries.*?one read of "
    r"(?P<replayed>\d+) entries for configurations, dedup and groups (?P<replay_s>[\d.]+) s.*?core "
    r"(?P<core_s>[\d.]+) s, log ready (?P<ready_s>[\d.]+) s after the worker's start"
)
_LEADER = re.compile(r"first leader \(\d+\) known (?P<election_s>[\d.]+) s after the log was ready")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _stamp_s(line: str) -> float | None:
    """A log line's wall-clock time (the logging module's asctime, local time), seconds since the epoch."""
    m = _STAMP.match(line)
    if m is None:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def start_phases(lines: list[str], started_unix_s: float) -> dict:
    """The raft worker's start-up phase lines (workers/raft.py `_log_open_phases`) and when the supervisor had
    forked the raft worker, seconds from the node's start."""
    out: dict = {}
    for line in lines:
        if "started raft worker" in line and "raft_started_s" not in out:
            at = _stamp_s(line)
            if at is not None:
                out["raft_started_s"] = round(at - started_unix_s, 3)
        elif (m := _PHASES.search(line)) is not None:
            out.update({k: float(v) if "." in v else int(v) for k, v in m.groupdict().items()})
        elif (m := _LEADER.search(line)) is not None:
            out["election_s"] = float(m.group("election_s"))
    return out


def time_node_start(d: ClusterDriver) -> dict:
    """One start of the one-node cluster `d` on its log: seconds from starting its supervisor until it answers
    METADATA as the leader (`leader_s`) and until a first PRODUCE is acknowledged (`produce_s`), and the start-up
    phases from the node's log (`start_phases`); the node is stopped cleanly (SIGTERM) afterwards."""
    address = d.addresses[0]
    log_path = d.local.log_dir / "node1.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0

    def serving() -> bool:
        try:
            with Client([address], only_node=True, timeout_s=METADATA_TIMEOUT_S) as c:
                return c.metadata().leader_id == 1
        except ShmraftError:
            return False

    def produced(client: Client) -> bool:
        try:
            client.produce(b"restart-bench")
            return True
        except ShmraftError:
            return False

    started_unix_s = time.time()
    t0 = time.perf_counter()
    try:
        d.start(leader_timeout_s=None)
        wait_for(serving, NODE_START_WAIT_S, "the node to answer as leader", 0.01)
        out: dict = {"leader_s": round(time.perf_counter() - t0, 3)}
        with Client([address], only_node=True, timeout_s=METADATA_TIMEOUT_S) as c:
            wait_for(lambda: produced(c), NODE_START_WAIT_S, "a first produce to be acknowledged", 0.01)
        out["produce_s"] = round(time.perf_counter() - t0, 3)
    finally:
        d.stop()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(log_from)
        out.update(start_phases(f.read().splitlines(), started_unix_s))
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run with the median time to the first acknowledged produce (its phases belong to it)."""
    return sorted(runs, key=lambda r: r["produce_s"])[len(runs) // 2]


def print_node_table(rows: list[dict]) -> None:
    """The whole node's starts: after a crash (the verified mark VERIFIED_MARK_INTERVAL_S of full load old, the
    snapshot SNAPSHOT_INTERVAL_ENTRIES old) and after a clean stop, with the raft worker's phases."""
    print(
        "\nwhole node (one-node cluster), seconds from starting its supervisor; phases from the raft worker's log:\n"
        f"{'entries':>9} {'GB':>5} {'start':<7} {'leader':>7} {'produce':>8} {'fork raft':>9} {'open':>6} "
        f"{'(check':>7} {'entries)':>9} {'replay':>7} {'(entries)':>9} {'core':>6} {'ready':>6} {'election':>8}"
    )
    for row in rows:
        for name in ("first", "second"):
            r = row[f"{name}_start"]
            print(
                f"{row['entries']:>9} {row['bytes'] / 1e9:5.2f} {name:<7} {r['leader_s']:7.3f} {r['produce_s']:8.3f} "
                f"{r.get('raft_started_s', float('nan')):9.3f} {r.get('open_s', float('nan')):6.3f} "
                f"{r.get('check_s', float('nan')):7.3f} {r.get('checked', -1):9d} "
                f"{r.get('replay_s', float('nan')):7.3f} {r.get('replayed', -1):9d} "
                f"{r.get('core_s', float('nan')):6.3f} {r.get('ready_s', float('nan')):6.3f} "
                f"{r.get('election_s', float('nan')):8.3f}"
            )
    print(
        "  first: after a crash at the worst point (the mark and the snapshot as old as they get); second: the\n"
        "  next start after the first's clean stop. fork raft: the supervisor had the raft worker forked;\n"
        "  open/ready: the raft worker's open_node_log, log ready after its start; replay: its one read of the\n"
        "  entries after the snapshot for the core's configurations, dedup and groups (entries read); core: the\n"
        "  core and its driver built; election: log ready to leader known.",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"sizes {SIZES_QUICK} instead of {SIZES_FULL}")
    ap.add_argument("--entries", type=lambda s: tuple(int(x) for x in s.split(",")), help="sizes, e.g. 10000,50000")
    default_tail = int(VERIFIED_MARK_INTERVAL_S * FULL_LOAD_BYTES_PER_S / len(_frame(1)))
    ap.add_argument("--tail-entries", type=int, default=default_tail, help="entries written after the mark")
    ap.add_argument("--repeats", type=int, default=None, help="runs per case, median reported (3; 1 with --quick)")
    ap.add_argument(
        "--snapshot-tail", type=int, default=SNAPSHOT_INTERVAL_ENTRIES, help="entries written after the snapshot"
    )
    ap.add_argument("--snapshot-producers", type=int, default=100_000, help="producers in the snapshot-cost table")
    ap.add_argument("--drop-caches", action="store_true", help="cold page cache before each open (root)")
    ap.add_argument("--dir", default=None, help="where to build the logs (default: a temporary directory)")
    ap.add_argument("--node-start", action="store_true", help="also time a whole node's start on each log")
    ap.add_argument(
        "--no-snapshot-config",
        action="store_true",
        help="save the snapshot without the cluster configuration (as this benchmark did before, and as a log "
        "written before snapshots carried it): the start-up read then covers the whole log, for MEMBERSHIP entries",
    )
    args = ap.parse_args()
    sizes = args.entries or (SIZES_QUICK if args.quick else SIZES_FULL)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, rocksdict {version('rocksdict')}, "
        f"{platform.platform()}, load {[round(x, 2) for x in os.getloadavg()]}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="restart-bench-", dir=args.dir))
    rows = []
    try:
        for n in sizes:
            # the one-node cluster first: its configuration goes into the saved snapshot, as a worker's would
            d = ClusterDriver.create(root / f"n{n}", nodes=1, id_prefix="rb")
            node_dir = d.configs[0].node_dir
            configuration = b"" if args.no_snapshot_config else encode_membership(bootstrap_config(d.configs[0]))
            tail = min(n // 2, args.tail_entries)  # a small log: the mark halfway
            t0 = time.perf_counter()
            nbytes = build(node_dir, n, tail, min(n // 2, args.snapshot_tail), configuration)
            build_s = time.perf_counter() - t0
            mark = (node_dir / VERIFIED_MARK_FILE).read_bytes()
            row = {"entries": n, "bytes": nbytes, "tail_entries": tail, "build_s": round(build_s, 1)}
            row["persist_mark"] = persist_mark_cost(node_dir, PERSIST_MARK_CALLS)  # time_restart restores the mark
            row["snapshot_tail_entries"] = min(n // 2, args.snapshot_tail)
            for case, full in (("before", True), ("after", False)):
                runs = [time_restart(node_dir, mark, full=full, cold=args.drop_caches) for _ in range(args.repeats)]
                row[f"{case}_open_s"] = round(statistics.median(r[0] for r in runs), 3)
                row[f"{case}_dedup_s"] = round(statistics.median(r[1] for r in runs), 3)
                row[f"{case}_verified"] = runs[-1][2]
            if args.node_start:
                firsts, seconds = [], []
                for _ in range(args.repeats):  # each pair: after a crash (the mark restored), then after a clean stop
                    (node_dir / VERIFIED_MARK_FILE).write_bytes(mark)
                    if args.drop_caches:
                        drop_caches()
                    firsts.append(time_node_start(d))
                    if args.drop_caches:
                        drop_caches()
                    seconds.append(time_node_start(d))
                row["first_start"] = _median_run(firsts)
                row["second_start"] = _median_run(seconds)
            rows.append(row)
            print(
                f"{n:>9} entries {nbytes / 1e9:6.2f} GB | before: open {row['before_open_s']:6.3f} s "
                f"({row['before_verified']} checked) | after: open {row['after_open_s']:6.3f} s "
                f"({row['after_verified']} checked) | dedup: before {row['before_dedup_s']:6.3f} s, after "
                f"{row['after_dedup_s']:6.3f} s | serving after {row['after_open_s'] + row['after_dedup_s']:6.3f} s | "
                f"persist_mark {row['persist_mark']['median_ms']:.3f} ms median, {row['persist_mark']['max_ms']:.3f} "
                f"ms max ({row['persist_mark']['sst_files']} SST files, every {VERIFIED_MARK_INTERVAL_S:g} s)",
                flush=True,
            )
            shutil.rmtree(node_dir.parent, ignore_errors=True)
        if args.node_start:
            print_node_table(rows)
        cost = snapshot_cost(args.snapshot_producers, root / "snapcost")
        print(f"snapshot of {cost['producers']} producers: {cost}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rocksdict": version("rocksdict"),
        "platform": platform.platform(),
        "page_cache": "cold" if args.drop_caches else "warm",
        "snapshot_config": not args.no_snapshot_config,
        "repeats": args.repeats,
    }
    print(json.dumps({"restart": rows, "snapshot": cost, "machine": machine}))


if __name__ == "__main__":
    main()
