"""Stress a shmraft cluster: load from producer processes, optional faults, and a verification of every log.

    python tools/loadgen.py --duration 30                            # against `shmraft-supervisor up`
    python tools/loadgen.py --start-cluster --events 20000 --size 100 --verify --json
    python tools/loadgen.py --start-cluster --duration 15 --kill-leader-every 5 --verify --json
    python tools/loadgen.py --start-cluster --duration 20 --kill-worker raft@follower --fault-every 5
    python tools/loadgen.py --start-cluster --duration 20 --pause-follower 2 --fault-every 6 --rate 5000

Every event's value is `<run id>:<producer>:<sequence>:` padded with '.' to --size bytes, so the
verification can tell produced events from invented ones. Each producer is an OS process (spawn) with a
pipelined `Client.producer(window, batch_events)` fed by `send_many` in chunks of --batch events; with
--rate the load is open loop (an event's latency counts from when it was due, not when it was sent).
Latency is an HDR-style histogram (log buckets, 1% wide) over every acknowledged event, merged from all
producers. Faults act on the local cluster's processes (pids from the shared state blocks); each fault is
reported with the client-seen unavailability (time from the fault to the next acknowledged event).

--verify reads every node's committed log separately from offset 0, from that node and no other (a client
with `only_node`), and checks: every acknowledged event present exactly once and at its acknowledged offset,
the same order on every node (each node's log a prefix of the longest), nothing that was never produced, every
node serving its own log and none behind the longest. Exit status 1 on loss, duplicate, divergence, a node
that does not serve its log or is still behind at the end of the wait.

--start-cluster runs its own cluster in a temp dir and removes it (processes, /dev/shm, files) at the end,
also on error, SIGTERM or Ctrl-C. --cpu-hogs N runs N busy loops at normal priority beside the cluster from
before the load to the end of the run (CPU contention, as on a machine that does other work). The last
stdout line is one JSON object with --json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.ipc.state import Worker  # noqa: E402
from shmraft.testing.cluster import ClusterDriver, log_start_at, new_cluster_id, read_log_at  # noqa: E402
from shmraft.testing.hogs import CpuHogs  # noqa: E402

DEFAULT_ADDRESSES = "127.0.0.1:7101,127.0.0.1:7201,127.0.0.1:7301"
CLIENT_TIMEOUT_S = 30.0
READ_ATTEMPT_MIN_S = 2.0  # verify gives one node's read at least this long, even at the end of its wait
START_TIMEOUT_S = 60.0
FAULT_WHOLE_WAIT_S = 30.0  # a periodic fault waits this long for the cluster to be whole again, then is skipped

# --- the latency histogram: bucket i holds latencies in (G^(i-1), G^i] microseconds ---------------------------
HIST_GROWTH = 1.01
HIST_BUCKETS = 2000  # up to 1.01^2000 us = 440 s
_LOG_G = math.log(HIST_GROWTH)


def hist_index(latency_s: float) -> int:
    us = latency_s * 1e6
    if us <= 1.0:
        return 0
    return min(HIST_BUCKETS - 1, int(math.ceil(math.log(us) / _LOG_G)))


def hist_percentiles_ms(counts: np.ndarray, max_s: float) -> dict[str, Any]:
    """p50/p90/p99/p999 (upper bound of the bucket, so at most 1% high) and the exact max, in ms."""
    total = int(counts.sum())
    out: dict[str, Any] = {"n": total}
    if total == 0:
        out.update({k: None for k in ("p50", "p90", "p99", "p999", "max")})
        return out
    cum = np.cumsum(counts)
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
        i = int(np.searchsorted(cum, math.ceil(q * total)))
        out[name] = round(min(HIST_GROWTH**i / 1000.0, max_s * 1000.0), 3)
    out["max"] = round(max_s * 1000.0, 3)
    return out


# --- producer processes ------------------------------------------------------------------------------------

# per producer, in a shared float64 array: acked events, errors (failed events), last ack (monotonic), max latency
ST_ACKED, ST_ERRORS, ST_LAST_ACK, ST_MAX_LAT, ST_SENT, ST_FIELDS = 0, 1, 2, 3, 4, 5


def make_value(prefix: bytes, seq: int, size: int) -> bytes:
    v = prefix + str(seq).encode() + b":"
    return v + b"." * (size - len(v)) if len(v) < size else v


def producer_main(k: int, opts: dict, t_start: float, stop, stats, hist, outdir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the children itself
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    st = np.frombuffer(stats, dtype=np.float64)[k * ST_FIELDS : (k + 1) * ST_FIELDS]
    h = np.frombuffer(hist, dtype=np.int64)[k * HIST_BUCKETS : (k + 1) * HIST_BUCKETS]
    lock = threading.Lock()
    acked_seqs = array("q")
    acked_offsets = array("q")
    chunk_due = array("d")  # per acknowledged chunk: when it was due (sent) and when it was acknowledged
    chunk_ack = array("d")
    errors: Counter[str] = Counter()
    prefix = f"{opts['run_id']}:{k}:".encode()
    size, batch, window = opts["size"], opts["batch"], opts["window"]
    quota = opts["quota"][k] if opts["quota"] is not None else None
    per_rate = opts["rate"] / opts["producers"] if opts["rate"] else 0.0

    def on_done(f, first: int, n: int, due: float) -> None:
        now = time.monotonic()
        exc = f.exception()
        with lock:
            if exc is None:
                lat = now - due
                h[hist_index(lat)] += n
                st[ST_ACKED] += n
                st[ST_LAST_ACK] = now
                if lat > st[ST_MAX_LAT]:
                    st[ST_MAX_LAT] = lat
                acked_seqs.extend(range(first, first + n))
                acked_offsets.extend(f.result())
                chunk_due.append(due)
                chunk_ack.append(now)
            else:
                errors[type(exc).__name__] += n
                st[ST_ERRORS] += n

    client = Client(opts["addresses"], timeout_s=opts["client_timeout"])
    buffer_events = max(2 * window * batch, 4096)

    def new_producer():
        return client.producer(
            window=window, batch_events=batch, linger_ms=opts["linger_ms"], buffer_events=buffer_events
        )

    prod = new_producer()
    while time.monotonic() < t_start and not stop.is_set():
        time.sleep(0.005)
    t_end = t_start + opts["duration"] if opts["duration"] else None
    p0 = time.monotonic()
    seq = 0
    while not stop.is_set():
        now = time.monotonic()
        if t_end is not None and now >= t_end:
            break
        if quota is not None and seq >= quota:
            break
        n = batch if quota is None else min(batch, quota - seq)
        if per_rate:
            due_count = int((now - p0) * per_rate) + 1
            if due_count <= seq:
                time.sleep(min(0.05, (seq - due_count + 1) / per_rate))
                continue
            n = min(n, due_count - seq)
            due = p0 + seq / per_rate
        else:
            due = now
        values = [make_value(prefix, s, size) for s in range(seq, seq + n)]
        try:
            fut = prod.send_many(values)
        except ShmraftError as exc:  # not accepted (buffer full for the client timeout, producer failed)
            errors[f"send:{type(exc).__name__}"] += 1
            with contextlib.suppress(Exception):
                prod.close(timeout_s=0.1)
            prod = new_producer()
            continue
        fut.add_done_callback(lambda f, s=seq, n=n, d=due: on_done(f, s, n, d))
        seq += n
        st[ST_SENT] = seq
    try:
        prod.close(timeout_s=opts["client_timeout"] + 10)
    except ShmraftError as exc:
        errors[f"close:{type(exc).__name__}"] += 1
    errors.update({f"leader:{k}": v for k, v in client.leaders.counts.items()})  # probes, rediscovers (not errors)
    client.close()
    with lock:
        np.savez(
            Path(outdir) / f"p{k}.npz",
            seqs=np.frombuffer(acked_seqs, dtype=np.int64) if acked_seqs else np.zeros(0, np.int64),
            offsets=np.frombuffer(acked_offsets, dtype=np.int64) if acked_offsets else np.zeros(0, np.int64),
            generated=np.int64(seq),
            due=np.array(chunk_due, dtype=np.float64),
            ack=np.array(chunk_ack, dtype=np.float64),
        )
        (Path(outdir) / f"p{k}.json").write_text(json.dumps({"errors": dict(errors), "generated": seq}))


# --- the producer pool ----------------------------------------------------------------------------------------


@dataclass
class Acked:
    """What the producers' result files say: acknowledged value -> offset (with `want_values`), events
    generated per producer, errors, and per acknowledged chunk when it was due and acknowledged."""

    values: dict[bytes, int]
    generated: list[int]
    errors: Counter[str]
    due: np.ndarray
    ack: np.ndarray


class ProducerPool:
    """The producer processes (spawned `producer_main`s), their shared stats and histograms, and their result
    files in a temp dir that `close()` removes with any process still running."""

    def __init__(self, opts: dict, tmp: str | None, out_prefix: str, start_margin_s: float = 2.0) -> None:
        self.opts = opts
        self.n = int(opts["producers"])
        ctx = mp.get_context("spawn")
        self._stats_raw = ctx.RawArray("d", self.n * ST_FIELDS)
        self._hist_raw = ctx.RawArray("q", self.n * HIST_BUCKETS)
        self.stats = np.frombuffer(self._stats_raw, dtype=np.float64)
        self.hist = np.frombuffer(self._hist_raw, dtype=np.int64)
        self.stop_event = ctx.Event()
        self.outdir = Path(tempfile.mkdtemp(prefix=out_prefix, dir=tmp))
        self.t_start = time.monotonic() + start_margin_s + 0.5 * self.n  # spawning one with numpy takes ~0.5-1 s
        self.procs = [
            ctx.Process(
                target=producer_main,
                args=(k, opts, self.t_start, self.stop_event, self._stats_raw, self._hist_raw, str(self.outdir)),
                daemon=True,
            )
            for k in range(self.n)
        ]

    def start(self) -> ProducerPool:
        for p in self.procs:
            p.start()
        return self

    def any_alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def join(self, timeout_s: float) -> None:
        """Ask the producers to finish (they close their pipelines) and wait; raise if one failed."""
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout_s)
        self.check_exits()

    def check_exits(self) -> None:
        bad = [p.exitcode for p in self.procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"producer process(es) failed with exit codes {bad} (tracebacks above)")

    @property
    def per_producer(self) -> np.ndarray:
        """One row of ST_* fields per producer (live)."""
        return self.stats.reshape(self.n, ST_FIELDS)

    def histogram(self) -> np.ndarray:
        """The merged latency histogram of every producer."""
        return self.hist.reshape(self.n, HIST_BUCKETS).sum(axis=0)

    def latency_ms(self) -> dict[str, Any]:
        return hist_percentiles_ms(self.histogram(), float(self.per_producer[:, ST_MAX_LAT].max()))

    def results(self, run_id: str, want_values: bool) -> Acked:
        """The producers' result files (after `join`)."""
        values: dict[bytes, int] = {}
        generated: list[int] = []
        errors: Counter[str] = Counter()
        dues, acks = [], []
        for k in range(self.n):
            meta = json.loads((self.outdir / f"p{k}.json").read_text())
            errors.update(meta["errors"])
            generated.append(int(meta["generated"]))
            prefix = f"{run_id}:{k}:".encode()
            with np.load(self.outdir / f"p{k}.npz") as z:
                dues.append(z["due"])
                acks.append(z["ack"])
                if want_values:
                    for s, o in zip(z["seqs"].tolist(), z["offsets"].tolist(), strict=True):
                        values[make_value(prefix, s, self.opts["size"])] = o
        return Acked(values, generated, errors, np.concatenate(dues), np.concatenate(acks))

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join(5)
        shutil.rmtree(self.outdir, ignore_errors=True)


def fill_unavailability(faults: list[dict], fault_times: list[float], due: np.ndarray, ack: np.ndarray) -> None:
    """Per fault: `unavailability_ms`, the client-seen unavailability (from the fault to the first
    acknowledgement of an event sent after it), and `first_ack_after_ms` (to the first acknowledgement of any
    event, which may be an answer already on its way)."""
    for f, t in zip(faults, fault_times, strict=True):
        later = ack[due >= t]
        f["unavailability_ms"] = round((float(later.min()) - t) * 1000.0, 1) if later.size else None
        after = ack[ack > t]
        f["first_ack_after_ms"] = round((float(after.min()) - t) * 1000.0, 1) if after.size else None


# --- faults and the leader monitor -----------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Polls the leader (state blocks, or METADATA without them) and records the faults, whose
    unavailability `fill_unavailability` computes from the producers' acknowledgements afterwards."""

    def __init__(self, nodes: ClusterDriver | None, addresses: list[str], t0: float) -> None:
        super().__init__(daemon=True, name="monitor")
        self.nodes = nodes
        self.addresses = addresses
        self.t0 = t0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.fault_times: list[float] = []
        self.leader_changes = 0  # a different node leads
        self.elections = 0  # a new term with a leader, the same node re-elected included
        self.leaders_seen: list[tuple[float, int, int]] = []  # (time s, leader, term) at each new leader or term
        self._client: Client | None = None

    def add_fault(self, kind: str, node: int, t: float, **extra: Any) -> dict:
        f = {
            "kind": kind,
            "time_s": round(t - self.t0, 3),
            "node": node,
            "unavailability_ms": None,
            "first_ack_after_ms": None,
            **extra,
        }
        with self.lock:
            self.faults.append(f)
            self.fault_times.append(t)
        return f

    def current_leader(self) -> tuple[int, int]:
        if self.nodes is not None:
            return self.nodes.leader_and_term()
        try:
            if self._client is None:
                self._client = Client(self.addresses, timeout_s=1.0)
            m = self._client.metadata()
            return (int(m.leader_id), int(m.term))
        except Exception:
            return (0, 0)

    def run(self) -> None:
        last, last_term = 0, 0
        interval = 0.02 if self.nodes is not None else 0.25
        while not self.stop_flag.is_set():
            leader, term = self.current_leader()
            if leader and (leader, term) != (last, last_term):
                if last:
                    self.leader_changes += leader != last
                    self.elections += 1
                self.leaders_seen.append((round(time.monotonic() - self.t0, 3), leader, term))
                last, last_term = leader, term
            self.stop_flag.wait(interval)
        if self._client is not None:
            self._client.close()

    def finish(self) -> None:
        self.stop_flag.set()
        if self.is_alive():
            self.join(5)


def fault_loop(
    name: str, every: float, action, stop: threading.Event, log, until: float | None, nodes: ClusterDriver
) -> threading.Thread:
    """Every `every` seconds, once the cluster is whole again (a fault on a cluster still recovering from the
    last one would test two faults at once: a leader killed while the previous one restarts leaves no quorum),
    `action()`; never in the last second of the load."""

    def run() -> None:
        while not stop.wait(every):
            why = nodes.wait_whole(FAULT_WHOLE_WAIT_S, stop)
            if stop.is_set():
                return
            if until is not None and time.monotonic() > until:
                return  # not in the last second of the load: let the run end with the cluster settled
            if why:
                log(f"fault {name} skipped: the cluster is not whole after {FAULT_WHOLE_WAIT_S:.0f} s ({why})")
                continue
            try:
                action()
            except Exception as exc:  # a fault that failed is reported, the run goes on
                log(f"fault {name} failed: {type(exc).__name__}: {exc}")

    t = threading.Thread(target=run, daemon=True, name=f"fault-{name}")
    t.start()
    return t


class Faults:
    """The periodic faults of --kill-leader-every, --kill-worker and --pause-follower, each reported to the
    monitor; `stop` ends them (and resumes a paused follower)."""

    def __init__(self, args: argparse.Namespace, nodes: ClusterDriver, monitor: Monitor, log) -> None:
        self.args = args
        self.nodes = nodes
        self.monitor = monitor
        self.log = log
        self.stop_event = threading.Event()

    @staticmethod
    def wanted(args: argparse.Namespace) -> bool:
        return bool(args.kill_leader_every or args.kill_worker or args.pause_follower)

    def start(self, t_start: float) -> None:
        """Start each asked-for fault loop; the periods count from the producers' common start."""
        if self.args.kill_leader_every:
            self._delayed(self.kill_leader, self.args.kill_leader_every, t_start)
        if self.args.kill_worker:
            self._delayed(self.kill_worker, self.args.fault_every, t_start)
        if self.args.pause_follower:
            self._delayed(self.pause_follower, self.args.fault_every, t_start)

    def _delayed(self, fn, every: float, t_start: float) -> None:
        def start() -> None:
            if not self.stop_event.wait(max(0.0, t_start - time.monotonic())):
                until = t_start + self.args.duration - 1.0 if self.args.events is None else None
                fault_loop(fn.__name__, every, fn, self.stop_event, self.log, until, self.nodes)

        threading.Thread(target=start, daemon=True).start()

    def kill_leader(self) -> None:
        leader = self.nodes.leader()
        if not leader:
            self.log("fault: no leader to kill")
            return
        t = time.monotonic()
        self.nodes.kill_node(leader)
        f = self.monitor.add_fault("kill-leader", leader, t)
        self.log(f"fault at {f['time_s']:.1f} s: SIGKILL leader node {leader}; restarting it")
        self.nodes.start_node(leader)

    def kill_worker(self) -> None:
        kind, _, where = self.args.kill_worker.partition("@")
        worker = Worker[kind.upper()]
        if where == "follower":
            candidates = self.nodes.followers()
            target = random.choice(candidates) if candidates else 0
        else:
            target = self.nodes.leader()
        if not target:
            self.log("fault: no target node for kill-worker")
            return
        t = time.monotonic()
        pid = self.nodes.kill_worker(target, worker)
        f = self.monitor.add_fault(f"kill-worker:{kind.lower()}@{where or 'leader'}", target, t, pid=pid)
        self.log(f"fault at {f['time_s']:.1f} s: SIGKILL {kind.lower()} worker (pid {pid}) of node {target}")

    def pause_follower(self) -> None:
        candidates = self.nodes.followers()
        if not candidates:
            return
        target = random.choice(candidates)
        t = time.monotonic()
        self.nodes.pause_node(target)
        f = self.monitor.add_fault("pause-follower", target, t, paused_s=self.args.pause_follower)
        self.log(f"fault at {f['time_s']:.1f} s: SIGSTOP follower node {target} for {self.args.pause_follower:g} s")
        self.stop_event.wait(self.args.pause_follower)
        self.nodes.resume_node(target)

    def stop(self) -> None:
        self.stop_event.set()
        self.nodes.resume_all()


# --- verification -----------------------------------------------------------------------------------------------


def verify(
    run_id: str,
    addresses: list[str],
    acked: dict[bytes, int],
    generated: list[int],
    nodes: ClusterDriver | None,
    log,
    wait_s: float = 30.0,
    retention: bool = False,
) -> dict[str, Any]:
    """Reads every node's committed log (from that node and no other) and checks it against what was produced.

    Re-reads until every node serves its own log and all have the same length, up to `wait_s` (a restarted node
    catches up); a node that still does not serve its log (`read_errors`, the node named with what it said) or
    serves fewer events than the longest (`behind`) then counts against the run.

    `retention=True` (a cluster with small retention bounds): each node serves only what it still holds, from
    its own log start, so the logs are compared from the latest of their first offsets and only acknowledged
    events at or after it are looked for (`below_log_start` counts the others). A node that serves no event is
    asked where its log starts (a snapshot installed at the commit point leaves an empty log): it is checked
    only for what lies at or after that start. Off, a log that starts late is a loss like any other.
    """
    deadline = time.monotonic() + wait_s
    if nodes is not None:  # until every node reports the same commit index (a restarted node catches up)
        nodes.commits_equal_within(wait_s)
    while True:
        logs: dict[str, list[tuple[int, bytes]]] = {}
        read_errors: dict[str, str] = {}
        for a in addresses:
            try:
                logs[a] = read_log_at(a, min(CLIENT_TIMEOUT_S, max(deadline - time.monotonic(), READ_ATTEMPT_MIN_S)))
            except ShmraftError as exc:
                read_errors[a] = f"{type(exc).__name__}: {exc}"
        lens = {len(v) for v in logs.values()}
        if (len(lens) == 1 and not read_errors) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    prefix = f"{run_id}:".encode()
    below_start = 0
    acknowledged = len(acked)
    empty_starts: dict[str, int] = {}  # retention: where an empty log starts (it holds nothing below)
    if retention and logs:
        for a, entries in logs.items():
            if not entries:
                try:
                    empty_starts[a] = log_start_at(a, CLIENT_TIMEOUT_S)
                except ShmraftError as exc:
                    read_errors[a] = f"{type(exc).__name__}: {exc}"
        start = max((entries[0][0] for entries in logs.values() if entries), default=0)
        logs = {a: [(o, v) for o, v in entries if o >= start] for a, entries in logs.items()}
        kept = {v: o for v, o in acked.items() if o >= start}
        below_start = len(acked) - len(kept)
        acked = kept
    longest = max(logs.values(), key=len) if logs else []
    longest_values = [v for _, v in longest]
    per_node: dict[str, dict[str, Any]] = {}
    lost_any: set[bytes] = set()
    dup_any: set[bytes] = set()
    divergent_nodes = 0
    behind_nodes = 0
    invented: set[bytes] = set()
    misplaced = 0
    foreign = 0
    for a, entries in logs.items():
        values = [v for _, v in entries]
        diverge_at = next((i for i, (x, y) in enumerate(zip(values, longest_values, strict=False)) if x != y), None)
        ours = Counter(v for v in values if v.startswith(prefix))
        dups = {v for v, n in ours.items() if n > 1}
        floor = empty_starts.get(a, 0)
        lost = {v for v, o in acked.items() if o >= floor and v not in ours}
        where = {v: o for o, v in entries if v.startswith(prefix)}
        misplaced_here = sum(1 for v, o in acked.items() if v in where and where[v] != o)
        offsets = [o for o, _ in entries]
        ordered = all(offsets[i] < offsets[i + 1] for i in range(len(offsets) - 1))
        if diverge_at is not None or not ordered:
            divergent_nodes += 1
        elif len(values) < len(longest_values) and not (a in empty_starts and floor > longest[-1][0]):
            behind_nodes += 1  # a prefix of the longest: this node lags (or is stuck) at the end of the wait
        lost_any |= lost
        dup_any |= dups
        misplaced = max(misplaced, misplaced_here)
        foreign = max(foreign, sum(1 for v in values if not v.startswith(prefix)))
        for v in ours:
            parts = v.split(b":", 3)
            ok = False
            if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
                k, s = int(parts[1]), int(parts[2])
                ok = k < len(generated) and s < generated[k]
            elif len(parts) >= 2 and parts[1] == b"w":
                ok = True  # the warm-up event
            if not ok:
                invented.add(v)
        per_node[a] = {
            "events": len(values),
            "ours": sum(ours.values()),
            "lost": len(lost),
            "duplicated": len(dups),
            "diverges_at": diverge_at,
            "offsets_increasing": ordered,
            "misplaced": misplaced_here,
            "behind_by": len(longest_values) - len(values),
        }
        if a in empty_starts:
            per_node[a]["log_start"] = empty_starts[a]
    found = len({v for v in longest_values if v in acked})
    result = {
        "acknowledged": acknowledged,
        "found": found,
        "lost": len(lost_any),
        "duplicated": len(dup_any),
        "divergent": divergent_nodes,
        "behind": behind_nodes,
        "invented": len(invented),
        "misplaced": misplaced,
        "below_log_start": below_start,
        "unacknowledged_in_log": sum(1 for v in set(longest_values) if v.startswith(prefix) and v not in acked),
        "foreign_events": foreign,
        "nodes_read": len(logs),
        "read_errors": read_errors,
        "per_node": per_node,
        "examples": {
            "lost": [v[:40].decode(errors="replace") for v in list(lost_any)[:5]],
            "duplicated": [v[:40].decode(errors="replace") for v in list(dup_any)[:5]],
            "invented": [v[:40].decode(errors="replace") for v in list(invented)[:5]],
        },
    }
    if read_errors:
        log(f"verify: could not read {sorted(read_errors)}: {read_errors}")
    return result


# --- the run, phase by phase ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, default=2, help="producer processes (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="events per produce request and per send_many (64)")
    ap.add_argument("--window", type=int, default=16, help="requests in flight per producer (16)")
    ap.add_argument("--linger-ms", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=100, help="event bytes (at least the id; default 100)")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s in all, open loop (default: flat out)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, help="seconds of load (default 10)")
    g.add_argument("--events", type=int, help="events in all")
    ap.add_argument("--addresses", help=f"host:port,... (default {DEFAULT_ADDRESSES}, or the started cluster)")
    ap.add_argument("--data-dir", default="shmraft-data", help="the local cluster's data dir (for faults)")
    ap.add_argument("--start-cluster", action="store_true", help="run an own 3-node cluster in a temp dir")
    ap.add_argument("--nodes", type=int, default=3, help="nodes of the started cluster")
    ap.add_argument("--fsync", default=None, help="fsync policy of the started cluster")
    ap.add_argument("--tmp", default=None, help="parent of the started cluster's temp dir")
    ap.add_argument("--cluster-id", default=None, help="cluster id of the started cluster (default random)")
    ap.add_argument("--kill-leader-every", type=float, default=0.0, help="SIGKILL the leader node, restart it")
    ap.add_argument("--kill-worker", default=None, help="KIND[@leader|@follower]: SIGKILL that worker")
    ap.add_argument("--pause-follower", type=float, default=0.0, help="SIGSTOP a follower node this many s")
    ap.add_argument("--fault-every", type=float, default=5.0, help="period of --kill-worker / --pause-follower")
    ap.add_argument(
        "--cpu-hogs",
        type=int,
        default=0,
        help="run N busy-loop processes at normal priority beside the cluster for the whole run (CPU contention)",
    )
    ap.add_argument("--verify", action="store_true", help="check every node's log afterwards")
    ap.add_argument("--json", action="store_true", help="the report as one JSON line, last")
    ap.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT_S)
    args = ap.parse_args(argv)
    if args.duration is None and args.events is None:
        args.duration = 10.0
    if args.producers < 1 or args.batch < 1 or args.window < 1:
        ap.error("--producers, --batch and --window must be positive")
    if args.cpu_hogs < 0:
        ap.error("--cpu-hogs must be 0 or more")
    if args.kill_worker:
        kind, _, where = args.kill_worker.partition("@")
        if kind.upper() not in Worker.__members__ or where not in ("", "leader", "follower"):
            ap.error(
                f"--kill-worker: expected KIND[@leader|@follower] with KIND in "
                f"{[w.name.lower() for w in Worker]}, got {args.kill_worker!r}"
            )
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM and Ctrl-C both raise KeyboardInterrupt, so the run cleans up in its `finally`."""

    def on_term(_s: int, _f: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (nohup, &)


def plan_load(args: argparse.Namespace, run_id: str, addresses: list[str]) -> dict[str, Any]:
    """The producers' options: who sends what, how fast and for how long."""
    quota = None
    if args.events is not None:
        base, extra = divmod(args.events, args.producers)
        quota = [base + (1 if k < extra else 0) for k in range(args.producers)]
    return {
        "run_id": run_id,
        "addresses": addresses,
        "size": args.size,
        "batch": args.batch,
        "window": args.window,
        "linger_ms": args.linger_ms,
        "rate": args.rate,
        "producers": args.producers,
        "duration": args.duration if args.events is None else None,
        "quota": quota,
        "client_timeout": args.client_timeout,
    }


def open_cluster(args: argparse.Namespace) -> tuple[ClusterDriver | None, list[str]]:
    """The cluster to load: a new one (--start-cluster; started by `start_cluster`), or the one at
    --addresses, with its state blocks when its data dir is here (needed for faults)."""
    if args.start_cluster:
        overrides = {"fsync": args.fsync} if args.fsync else {}
        cluster_id = args.cluster_id or new_cluster_id("lg")
        driver = ClusterDriver.in_temp_dir("shmraft-loadgen-", args.tmp, args.nodes, cluster_id, **overrides)
        return driver, driver.addresses
    addresses = [a.strip() for a in (args.addresses or DEFAULT_ADDRESSES).split(",") if a.strip()]
    data_dir = Path(args.data_dir).resolve()
    if Faults.wanted(args) or (data_dir / "node1" / "node.json").exists():
        try:
            return ClusterDriver.attach(data_dir), addresses
        except FileNotFoundError as exc:
            if Faults.wanted(args):
                raise SystemExit(f"loadgen: {exc}") from None
    return None, addresses


def start_cluster(nodes: ClusterDriver | None) -> None:
    """Start the nodes of a cluster made here (the warm-up then waits for the whole path)."""
    if nodes is not None and nodes.owned:
        log(f"loadgen: starting a {len(nodes.configs)}-node cluster {nodes.cluster_id} in {nodes.root}")
        nodes.start(leader_timeout_s=None)


def warm_up(addresses: list[str], run_id: str, timeout_s: float = START_TIMEOUT_S) -> float:
    """One event through the whole path (the run id's warm-up event is a produced event); seconds it took."""
    t = time.monotonic()
    with Client(addresses, timeout_s=timeout_s) as c:
        c.produce(f"{run_id}:w:0:".encode())
    return time.monotonic() - t


def drive_load(args: argparse.Namespace, pool: ProducerPool, monitor: Monitor, faults: Faults | None) -> None:
    """Progress lines until the producers are done; the faults stop when the load's duration is over."""
    expect_long = (args.duration or 0) > 3
    t_start = pool.t_start
    last_print = time.monotonic()
    last_acked = 0.0
    while pool.any_alive():
        time.sleep(0.2)
        now = time.monotonic()
        if faults is not None and args.duration and now > t_start + args.duration:
            faults.stop()  # no faults while the producers drain
        if now - last_print >= 1.0 and now > t_start and (expect_long or now - t_start > 3):
            st = pool.per_producer
            acked = float(st[:, ST_ACKED].sum())
            pct = pool.latency_ms()
            log(
                f"[{now - t_start:6.1f} s] {(acked - last_acked) / (now - last_print):>9,.0f} ev/s  "
                f"committed {acked:>11,.0f}  errors {st[:, ST_ERRORS].sum():,.0f}  "
                f"p50 {pct['p50'] or 0:.1f} ms  p99 {pct['p99'] or 0:.1f} ms  "
                f"leader changes {monitor.leader_changes}"
            )
            last_print, last_acked = now, acked
    if faults is not None:
        faults.stop()
    pool.check_exits()
    time.sleep(0.1)  # let the monitor see acks after the last fault, then stop it
    monitor.finish()


def build_report(
    args: argparse.Namespace, run_id: str, addresses: list[str], pool: ProducerPool, monitor: Monitor, got: Acked
) -> dict[str, Any]:
    """The run's figures (the JSON report, before verification)."""
    fill_unavailability(monitor.faults, monitor.fault_times, got.due, got.ack)
    st = pool.per_producer
    acked_total = int(st[:, ST_ACKED].sum())
    last_ack = float(st[:, ST_LAST_ACK].max())
    elapsed = max(1e-9, (last_ack if last_ack > pool.t_start else time.monotonic()) - pool.t_start)
    return {
        "run_id": run_id,
        "committed_events_per_s": round(acked_total / elapsed),
        "latency_ms": pool.latency_ms(),
        "acknowledged": acked_total,
        "produced": sum(got.generated),
        "failed_events": int(st[:, ST_ERRORS].sum()),
        "errors": dict(got.errors),
        "retries": None,  # the Producer resends internally and does not count it (see the report notes)
        "leader_changes": monitor.leader_changes,
        "elections": monitor.elections,
        "leaders_seen": monitor.leaders_seen,
        "faults": monitor.faults,
        "elapsed_s": round(elapsed, 3),
        "settings": {
            "producers": args.producers,
            "batch": args.batch,
            "window": args.window,
            "size": args.size,
            "rate": args.rate or None,
            "duration_s": args.duration,
            "events": args.events,
            "addresses": addresses,
            "started_cluster": bool(args.start_cluster),
            "cpu_hogs": args.cpu_hogs,
        },
    }


def verify_into(
    report: dict[str, Any], run_id: str, addresses: list[str], got: Acked, nodes: ClusterDriver | None
) -> int:
    """--verify: every node's log checked, the verdict added to `report`; exit status 1 on any fault."""
    log(f"loadgen: verifying {len(addresses)} node logs ...")
    v = verify(run_id, addresses, got.values, got.generated, nodes, log)
    report["verify"] = v
    report.update({k: v[k] for k in ("found", "lost", "divergent", "invented")})
    report["duplicates"] = v["duplicated"]
    bad = (
        v["lost"]
        or v["duplicated"]
        or v["divergent"]
        or v["behind"]
        or v["invented"]
        or v["misplaced"]
        or v["read_errors"]
    )
    return 1 if bad else 0


def print_report(args: argparse.Namespace, report: dict[str, Any], status: int) -> None:
    lat = report["latency_ms"]
    lines = [
        f"loadgen run {report['run_id']}: {args.producers} producer(s), batch {args.batch}, window {args.window}, "
        f"{args.size}-byte events, " + (f"open loop {args.rate:g} ev/s" if args.rate else "flat out"),
        f"  committed {report['acknowledged']:,} events in {report['elapsed_s']:.2f} s = "
        f"{report['committed_events_per_s']:,} ev/s; failed {report['failed_events']:,}; "
        f"errors {report['errors'] or 'none'}",
        "  commit latency ms: "
        + "  ".join(f"{k} {lat[k]}" for k in ("p50", "p90", "p99", "p999", "max"))
        + f"  (n={lat['n']:,})",
        f"  leader changes seen: {report['leader_changes']}; elections (a new term, the same leader included): "
        f"{report['elections']}",
    ]
    if args.cpu_hogs:
        lines.append(f"  beside {args.cpu_hogs} CPU hog(s) (busy loops at normal priority)")
    for f in report["faults"]:
        lines.append(
            f"  fault {f['kind']} node {f['node']} at {f['time_s']:.2f} s: first ack of an event sent "
            f"after it {f['unavailability_ms']} ms later (first ack of any event {f['first_ack_after_ms']}"
            " ms)"
        )
    if "verify" in report:
        v = report["verify"]
        lines.append(
            f"  verify: acknowledged {v['acknowledged']:,}  found {v['found']:,}  lost {v['lost']}  "
            f"duplicated {v['duplicated']}  divergent {v['divergent']}  behind {v['behind']}  "
            f"invented {v['invented']}  "
            f"misplaced {v['misplaced']}  unacknowledged-but-committed {v['unacknowledged_in_log']}  "
            f"-> {'FAIL' if status else 'OK'}"
        )
        for a, n in v["per_node"].items():
            lines.append(
                f"    {a}: {n['events']:,} events, lost {n['lost']}, duplicated {n['duplicated']}, "
                f"diverges at {n['diverges_at']}, behind by {n['behind_by']:,}"
            )
        for a, why in v["read_errors"].items():
            lines.append(f"    {a}: NOT READ: {why}")
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps(report, separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    run_id = secrets.token_hex(4)
    nodes: ClusterDriver | None = None
    hogs = CpuHogs(args.cpu_hogs)
    pool: ProducerPool | None = None
    monitor: Monitor | None = None
    faults: Faults | None = None
    try:
        nodes, addresses = open_cluster(args)
        start_cluster(nodes)
        hogs.start()
        took_s = warm_up(addresses, run_id)
        log(f"loadgen: cluster serving ({took_s:.1f} s); run {run_id}, {args.producers} producer(s)")
        pool = ProducerPool(plan_load(args, run_id, addresses), args.tmp, "shmraft-loadgen-out-")
        pool.start()
        monitor = Monitor(nodes, addresses, pool.t_start)
        monitor.start()
        if Faults.wanted(args):
            assert nodes is not None
            faults = Faults(args, nodes, monitor, log)
            faults.start(pool.t_start)
        drive_load(args, pool, monitor, faults)
        got = pool.results(run_id, want_values=args.verify)
        report = build_report(args, run_id, addresses, pool, monitor, got)
        status = 0
        if args.verify:
            status = verify_into(report, run_id, addresses, got, nodes)
        else:
            report.update({"lost": None, "duplicates": None, "divergent": None})
        print_report(args, report, status)
        return status
    except KeyboardInterrupt:
        log("loadgen: interrupted; stopping everything")
        return 130
    finally:
        if faults is not None:
            faults.stop()
        if monitor is not None:
            monitor.stop_flag.set()
        if pool is not None:
            pool.close()
        hogs.stop()
        if nodes is not None:
            left = nodes.stop()
            if left.segments:
                log(f"loadgen: removed leftover shared memory: {left.segments}")


if __name__ == "__main__":
    sys.exit(main())
