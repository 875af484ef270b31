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

--verify reads every node's committed log separately from offset 0 and checks: every acknowledged event
present exactly once and at its acknowledged offset, the same order on every node (each node's log a
prefix of the longest), nothing that was never produced. Exit status 1 on loss, duplicate or divergence.

--start-cluster runs its own cluster in a temp dir and removes it (processes, /dev/shm, files) at the end,
also on error, SIGTERM or Ctrl-C. The last stdout line is one JSON object with --json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.config import NodeConfig, local_cluster  # noqa: E402
from shmraft.ipc import segments  # noqa: E402
from shmraft.ipc.state import StateBlockError, Worker  # noqa: E402
from shmraft.node.layout import NodeLayout  # noqa: E402
from shmraft.raft.types import Role  # noqa: E402
from shmraft.supervisor.cluster import free_port_base  # noqa: E402

DEFAULT_ADDRESSES = "127.0.0.1:7101,127.0.0.1:7201,127.0.0.1:7301"
CLIENT_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0

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


# --- the cluster: processes and state -----------------------------------------------------------------------


def remove_segments(cluster_id: str) -> list[str]:
    segs, sems = segments.list_names(segments.prefix_for(cluster_id))
    for name in sems:
        segments.unlink_semaphore(name)
    for name in segs:
        segments.unlink_ring(name)
    return segs + sems


class Nodes:
    """The local cluster's processes: state blocks, leader, kill/restart/signal a node or a worker."""

    def __init__(self, configs: list[NodeConfig], cluster=None, log_dir: Path | None = None) -> None:
        self.configs = configs
        self.cluster = cluster  # a LocalCluster we started, or None (restart detached)
        self.log_dir = log_dir
        self.seen_pids: set[int] = set()
        self.detached: list[subprocess.Popen] = []
        self.down: set[int] = set()  # killed and not yet restarted: their state blocks are stale

    def config(self, node_id: int) -> NodeConfig:
        return next(c for c in self.configs if c.node_id == node_id)

    def state(self, node_id: int) -> dict[str, Any] | None:
        try:
            block = NodeLayout(self.config(node_id)).attach_state()
        except (StateBlockError, OSError, ValueError):
            return None
        try:
            n = block.node
            out = {k: int(n[k]) for k in ("role", "term", "leader_id", "commit_index")}
            out["pids"] = {w: int(block.workers[w]["pid"]) for w in Worker}
        finally:
            block.close()
        self.seen_pids |= {p for p in out["pids"].values() if p}
        return out

    def leader(self) -> tuple[int, int]:
        """(node, term) of the node that says it leads in the highest term; (0, 0) if none."""
        best = (0, 0)
        for c in self.configs:
            if c.node_id in self.down:
                continue
            s = self.state(c.node_id)
            if s and s["role"] == Role.LEADER and s["term"] >= best[1]:
                best = (c.node_id, s["term"])
        return best

    def followers(self) -> list[int]:
        leader = self.leader()[0]
        return [c.node_id for c in self.configs if c.node_id != leader and c.node_id not in self.down]

    def pgid(self, node_id: int) -> int | None:
        if self.cluster is not None and node_id in self.cluster.procs:
            return self.cluster.procs[node_id].pid
        s = self.state(node_id)
        pid = s["pids"][Worker.RAFT] if s else 0
        try:
            return os.getpgid(pid) if pid else None
        except ProcessLookupError:
            return None

    def signal_node(self, node_id: int, sig: int) -> None:
        pgid = self.pgid(node_id)
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)

    def kill_node(self, node_id: int) -> None:
        s = self.state(node_id)
        self.down.add(node_id)
        if self.cluster is not None:
            if node_id in self.cluster.procs:
                self.seen_pids.add(self.cluster.procs[node_id].pid)
            self.cluster.kill_node(node_id)
            return
        pgid = self.pgid(node_id)
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            pids = [p for p in (s["pids"].values() if s else []) if p] + [pgid]
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.01)

    def start_node(self, node_id: int) -> None:
        if self.cluster is not None:
            self.cluster.start_node(node_id)
        else:
            config = self.config(node_id)
            path = config.node_dir / "node.json"
            log_dir = Path(config.data_dir) / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / f"node{node_id}.log", "ab") as out:
                self.detached.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "shmraft.cli.supervisor", "node", "--config-json", str(path)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        self.down.discard(node_id)

    def kill_worker(self, node_id: int, worker: Worker) -> int:
        s = self.state(node_id)
        pid = s["pids"][worker] if s else 0
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pid


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def load_local_configs(data_dir: Path) -> list[NodeConfig]:
    from shmraft.supervisor.node import config_from_json

    paths = sorted(data_dir.glob("node*/node.json"))
    if not paths:
        raise SystemExit(f"loadgen: no node*/node.json in {data_dir}: is `shmraft-supervisor up` running there?")
    return [config_from_json(p.read_text()) for p in paths]


# --- faults and the leader monitor -----------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Polls the leader (state blocks, or METADATA without them) and fills in each fault's unavailability:
    the time from the fault to the next event acknowledged to any producer."""

    def __init__(
        self, nodes: Nodes | None, addresses: list[str], stats: np.ndarray, n_producers: int, t0: float
    ) -> None:
        super().__init__(daemon=True, name="monitor")
        self.nodes = nodes
        self.addresses = addresses
        self.stats = stats
        self.n = n_producers
        self.t0 = t0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.fault_times: list[float] = []
        self.leader_changes = 0
        self.leaders_seen: list[tuple[float, int, int]] = []
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
            return self.nodes.leader()
        try:
            if self._client is None:
                self._client = Client(self.addresses, timeout_s=1.0)
            m = self._client.metadata()
            return (int(m.leader_id), int(m.term))
        except Exception:
            return (0, 0)

    def run(self) -> None:
        last = 0
        interval = 0.02 if self.nodes is not None else 0.25
        while not self.stop_flag.is_set():
            leader, term = self.current_leader()
            if leader and leader != last:
                if last:
                    self.leader_changes += 1
                self.leaders_seen.append((round(time.monotonic() - self.t0, 3), leader, term))
                last = leader
            self.stop_flag.wait(interval)
        if self._client is not None:
            self._client.close()


def fault_loop(name: str, every: float, action, stop: threading.Event, log, until: float | None) -> threading.Thread:
    def run() -> None:
        while not stop.wait(every):
            if until is not None and time.monotonic() > until:
                return  # not in the last second of the load: let the run end with the cluster settled
            try:
                action()
            except Exception as exc:  # a fault that failed is reported, the run goes on
                log(f"fault {name} failed: {type(exc).__name__}: {exc}")

    t = threading.Thread(target=run, daemon=True, name=f"fault-{name}")
    t.start()
    return t


# --- verification -----------------------------------------------------------------------------------------------


def read_log(address: str, timeout_s: float = CLIENT_TIMEOUT_S) -> list[tuple[int, bytes]]:
    with Client([address], timeout_s=timeout_s) as c:
        return [(r.offset, bytes(r.value)) for r in c.consume(0)]


def verify(
    run_id: str,
    addresses: list[str],
    acked: dict[bytes, int],
    generated: list[int],
    nodes: Nodes | None,
    log,
    wait_s: float = 30.0,
) -> dict[str, Any]:
    """Reads every node's committed log (from that node only) and checks it against what was produced."""
    deadline = time.monotonic() + wait_s
    if nodes is not None:  # until every node reports the same commit index (a restarted node catches up)
        while time.monotonic() < deadline:
            commits = [nodes.state(c.node_id) for c in nodes.configs]
            if all(commits) and len({s["commit_index"] for s in commits}) == 1:
                break
            time.sleep(0.1)
    while True:
        logs: dict[str, list[tuple[int, bytes]]] = {}
        read_errors: dict[str, str] = {}
        for a in addresses:
            try:
                logs[a] = read_log(a)
            except ShmraftError as exc:
                read_errors[a] = f"{type(exc).__name__}: {exc}"
        lens = {len(v) for v in logs.values()}
        if (len(lens) == 1 and not read_errors) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    prefix = f"{run_id}:".encode()
    longest = max(logs.values(), key=len) if logs else []
    longest_values = [v for _, v in longest]
    per_node: dict[str, dict[str, Any]] = {}
    lost_any: set[bytes] = set()
    dup_any: set[bytes] = set()
    divergent_nodes = 0
    invented: set[bytes] = set()
    misplaced = 0
    foreign = 0
    for a, entries in logs.items():
        values = [v for _, v in entries]
        diverge_at = next((i for i, (x, y) in enumerate(zip(values, longest_values, strict=False)) if x != y), None)
        ours = Counter(v for v in values if v.startswith(prefix))
        dups = {v for v, n in ours.items() if n > 1}
        lost = {v for v in acked if v not in ours}
        where = {v: o for o, v in entries if v.startswith(prefix)}
        misplaced_here = sum(1 for v, o in acked.items() if v in where and where[v] != o)
        offsets = [o for o, _ in entries]
        ordered = all(offsets[i] < offsets[i + 1] for i in range(len(offsets) - 1))
        if diverge_at is not None or not ordered:
            divergent_nodes += 1
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
        }
    found = len({v for v in longest_values if v in acked})
    result = {
        "acknowledged": len(acked),
        "found": found,
        "lost": len(lost_any),
        "duplicated": len(dup_any),
        "divergent": divergent_nodes,
        "invented": len(invented),
        "misplaced": misplaced,
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


# --- main ---------------------------------------------------------------------------------------------------------


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
    ap.add_argument("--verify", action="store_true", help="check every node's log afterwards")
    ap.add_argument("--json", action="store_true", help="the report as one JSON line, last")
    ap.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT_S)
    args = ap.parse_args(argv)
    if args.duration is None and args.events is None:
        args.duration = 10.0
    if args.producers < 1 or args.batch < 1 or args.window < 1:
        ap.error("--producers, --batch and --window must be positive")
    if args.kill_worker:
        kind, _, where = args.kill_worker.partition("@")
        if kind.upper() not in Worker.__members__ or where not in ("", "leader", "follower"):
            ap.error(
                f"--kill-worker: expected KIND[@leader|@follower] with KIND in "
                f"{[w.name.lower() for w in Worker]}, got {args.kill_worker!r}"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def on_term(_s, _f):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faults_wanted = bool(args.kill_leader_every or args.kill_worker or args.pause_follower)
    run_id = secrets.token_hex(4)
    ctx = mp.get_context("spawn")
    root: Path | None = None
    cluster = None
    cluster_id = None
    nodes: Nodes | None = None
    procs: list = []
    paused: set[int] = set()
    stop_faults = threading.Event()
    monitor: Monitor | None = None
    outdir: Path | None = None
    try:
        if args.start_cluster:
            from shmraft.supervisor.cluster import LocalCluster

            root = Path(tempfile.mkdtemp(prefix="shmraft-loadgen-", dir=args.tmp))
            cluster_id = args.cluster_id or f"lg{os.getpid()}x{random.randrange(10**6)}"
            overrides = {"fsync": args.fsync} if args.fsync else {}
            configs = local_cluster(
                root, count=args.nodes, port_base=free_port_base(args.nodes), cluster_id=cluster_id, **overrides
            )
            cluster = LocalCluster(configs, log_dir=root / "logs")
            nodes = Nodes(configs, cluster)
            log(f"loadgen: starting a {args.nodes}-node cluster {cluster_id} in {root}")
            cluster.start()
            addresses = [c.me.client_address for c in configs]
        else:
            addresses = [a.strip() for a in (args.addresses or DEFAULT_ADDRESSES).split(",") if a.strip()]
            data_dir = Path(args.data_dir).resolve()
            if faults_wanted or (data_dir / "node1" / "node.json").exists():
                try:
                    nodes = Nodes(load_local_configs(data_dir))
                except SystemExit:
                    if faults_wanted:
                        raise
        # warm-up: the whole path works (and the run id's warm-up event is a produced event)
        t_w = time.monotonic()
        with Client(addresses, timeout_s=START_TIMEOUT_S) as c:
            c.produce(f"{run_id}:w:0:".encode())
        log(f"loadgen: cluster serving ({time.monotonic() - t_w:.1f} s); run {run_id}, {args.producers} producer(s)")

        quota = None
        if args.events is not None:
            base, extra = divmod(args.events, args.producers)
            quota = [base + (1 if k < extra else 0) for k in range(args.producers)]
        opts = {
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
        stats_raw = ctx.RawArray("d", args.producers * ST_FIELDS)
        hist_raw = ctx.RawArray("q", args.producers * HIST_BUCKETS)
        stats = np.frombuffer(stats_raw, dtype=np.float64)
        hist = np.frombuffer(hist_raw, dtype=np.int64)
        stop = ctx.Event()
        outdir = Path(tempfile.mkdtemp(prefix="shmraft-loadgen-out-", dir=args.tmp))
        t_start = time.monotonic() + 2.0 + 0.5 * args.producers  # spawning a process with numpy takes ~0.5-1 s
        procs = [
            ctx.Process(
                target=producer_main, args=(k, opts, t_start, stop, stats_raw, hist_raw, str(outdir)), daemon=True
            )
            for k in range(args.producers)
        ]
        for p in procs:
            p.start()
        monitor = Monitor(nodes, addresses, stats, args.producers, t_start)
        monitor.start()

        if faults_wanted:
            assert nodes is not None

            def kill_leader() -> None:
                leader = nodes.leader()[0]
                if not leader:
                    log("fault: no leader to kill")
                    return
                t = time.monotonic()
                nodes.kill_node(leader)
                f = monitor.add_fault("kill-leader", leader, t)
                log(f"fault at {f['time_s']:.1f} s: SIGKILL leader node {leader}; restarting it")
                nodes.start_node(leader)

            def kill_worker() -> None:
                kind, _, where = args.kill_worker.partition("@")
                worker = Worker[kind.upper()]
                if where == "follower":
                    candidates = nodes.followers()
                    target = random.choice(candidates) if candidates else 0
                else:
                    target = nodes.leader()[0]
                if not target:
                    log("fault: no target node for kill-worker")
                    return
                t = time.monotonic()
                pid = nodes.kill_worker(target, worker)
                f = monitor.add_fault(f"kill-worker:{kind.lower()}@{where or 'leader'}", target, t, pid=pid)
                log(f"fault at {f['time_s']:.1f} s: SIGKILL {kind.lower()} worker (pid {pid}) of node {target}")

            def pause_follower() -> None:
                candidates = nodes.followers()
                if not candidates:
                    return
                target = random.choice(candidates)
                t = time.monotonic()
                paused.add(target)
                nodes.signal_node(target, signal.SIGSTOP)
                f = monitor.add_fault("pause-follower", target, t, paused_s=args.pause_follower)
                log(f"fault at {f['time_s']:.1f} s: SIGSTOP follower node {target} for {args.pause_follower:g} s")
                stop_faults.wait(args.pause_follower)
                nodes.signal_node(target, signal.SIGCONT)
                paused.discard(target)

            def delayed(fn, every):
                # the periods count from the common start of the producers
                def start() -> None:
                    if not stop_faults.wait(max(0.0, t_start - time.monotonic())):
                        until = t_start + args.duration - 1.0 if args.events is None else None
                        fault_loop(fn.__name__, every, fn, stop_faults, log, until)

                threading.Thread(target=start, daemon=True).start()

            if args.kill_leader_every:
                delayed(kill_leader, args.kill_leader_every)
            if args.kill_worker:
                delayed(kill_worker, args.fault_every)
            if args.pause_follower:
                delayed(pause_follower, args.fault_every)

        # --- progress until the producers are done ---------------------------------------------------------
        expect_long = (args.duration or 0) > 3
        last_print = time.monotonic()
        last_acked = 0.0
        while any(p.is_alive() for p in procs):
            time.sleep(0.2)
            now = time.monotonic()
            if args.duration and now > t_start + args.duration:
                stop_faults.set()  # no faults while the producers drain
            if now - last_print >= 1.0 and now > t_start and (expect_long or now - t_start > 3):
                st = stats.reshape(args.producers, ST_FIELDS)
                acked = float(st[:, ST_ACKED].sum())
                pct = hist_percentiles_ms(
                    hist.reshape(args.producers, HIST_BUCKETS).sum(axis=0), float(st[:, ST_MAX_LAT].max())
                )
                log(
                    f"[{now - t_start:6.1f} s] {(acked - last_acked) / (now - last_print):>9,.0f} ev/s  "
                    f"committed {acked:>11,.0f}  errors {st[:, ST_ERRORS].sum():,.0f}  "
                    f"p50 {pct['p50'] or 0:.1f} ms  p99 {pct['p99'] or 0:.1f} ms  "
                    f"leader changes {monitor.leader_changes}"
                )
                last_print, last_acked = now, acked
        stop_faults.set()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"producer process(es) failed with exit codes {bad} (tracebacks above)")
        for t in [*paused]:
            nodes.signal_node(t, signal.SIGCONT)
        # let the monitor see acks after the last fault, then stop it
        time.sleep(0.1)
        monitor.stop_flag.set()
        monitor.join(5)

        # --- gather ---------------------------------------------------------------------------------------
        st = stats.reshape(args.producers, ST_FIELDS)
        counts = hist.reshape(args.producers, HIST_BUCKETS).sum(axis=0)
        errors: Counter[str] = Counter()
        acked_map: dict[bytes, int] = {}
        generated: list[int] = []
        dues, acks = [], []
        for k in range(args.producers):
            meta = json.loads((outdir / f"p{k}.json").read_text())
            errors.update(meta["errors"])
            generated.append(int(meta["generated"]))
            with np.load(outdir / f"p{k}.npz") as z:
                dues.append(z["due"])
                acks.append(z["ack"])
            if args.verify:
                with np.load(outdir / f"p{k}.npz") as z:
                    prefix = f"{run_id}:{k}:".encode()
                    for s, o in zip(z["seqs"].tolist(), z["offsets"].tolist(), strict=True):
                        acked_map[make_value(prefix, s, args.size)] = o
        due_all, ack_all = np.concatenate(dues), np.concatenate(acks)
        for f, t in zip(monitor.faults, monitor.fault_times, strict=True):
            # client-seen unavailability: from the fault to the first acknowledgement of an event sent after it
            later = ack_all[due_all >= t]
            if later.size:
                f["unavailability_ms"] = round((float(later.min()) - t) * 1000.0, 1)
            # the first acknowledgement of any event after the fault (may be an answer already on its way)
            after = ack_all[ack_all > t]
            if after.size:
                f["first_ack_after_ms"] = round((float(after.min()) - t) * 1000.0, 1)
        acked_total = int(st[:, ST_ACKED].sum())
        last_ack = float(st[:, ST_LAST_ACK].max())
        elapsed = max(1e-9, (last_ack if last_ack > t_start else time.monotonic()) - t_start)
        report: dict[str, Any] = {
            "run_id": run_id,
            "committed_events_per_s": round(acked_total / elapsed),
            "latency_ms": hist_percentiles_ms(counts, float(st[:, ST_MAX_LAT].max())),
            "acknowledged": acked_total,
            "produced": sum(generated),
            "failed_events": int(st[:, ST_ERRORS].sum()),
            "errors": dict(errors),
            "retries": None,  # the Producer resends internally and does not count it (see the report notes)
            "leader_changes": monitor.leader_changes,
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
                "started_cluster": bool(cluster),
            },
        }
        status = 0
        if args.verify:
            log(f"loadgen: verifying {len(addresses)} node logs ...")
            v = verify(run_id, addresses, acked_map, generated, nodes, log)
            report["verify"] = v
            report.update({k: v[k] for k in ("found", "lost", "divergent", "invented")})
            report["duplicates"] = v["duplicated"]
            if v["lost"] or v["duplicated"] or v["divergent"] or v["invented"] or v["misplaced"] or v["read_errors"]:
                status = 1
        else:
            report.update({"lost": None, "duplicates": None, "divergent": None})

        lat = report["latency_ms"]
        lines = [
            f"loadgen run {run_id}: {args.producers} producer(s), batch {args.batch}, window {args.window}, "
            f"{args.size}-byte events, " + (f"open loop {args.rate:g} ev/s" if args.rate else "flat out"),
            f"  committed {acked_total:,} events in {elapsed:.2f} s = {report['committed_events_per_s']:,} ev/s; "
            f"failed {report['failed_events']:,}; errors {dict(errors) or 'none'}",
            "  commit latency ms: "
            + "  ".join(f"{k} {lat[k]}" for k in ("p50", "p90", "p99", "p999", "max"))
            + f"  (n={lat['n']:,})",
            f"  leader changes seen: {monitor.leader_changes}",
        ]
        for f in monitor.faults:
            lines.append(
                f"  fault {f['kind']} node {f['node']} at {f['time_s']:.2f} s: first ack of an event sent "
                f"after it {f['unavailability_ms']} ms later (first ack of any event {f['first_ack_after_ms']}"
                " ms)"
            )
        if args.verify:
            v = report["verify"]
            lines.append(
                f"  verify: acknowledged {v['acknowledged']:,}  found {v['found']:,}  lost {v['lost']}  "
                f"duplicated {v['duplicated']}  divergent {v['divergent']}  invented {v['invented']}  "
                f"misplaced {v['misplaced']}  unacknowledged-but-committed {v['unacknowledged_in_log']}  "
                f"-> {'FAIL' if status else 'OK'}"
            )
            for a, n in v["per_node"].items():
                lines.append(
                    f"    {a}: {n['events']:,} events, lost {n['lost']}, duplicated {n['duplicated']}, "
                    f"diverges at {n['diverges_at']}"
                )
        print("\n".join(lines), flush=True)
        if args.json:
            print(json.dumps(report, separators=(",", ":")), flush=True)
        return status
    except KeyboardInterrupt:
        log("loadgen: interrupted; stopping everything")
        return 130
    finally:
        stop_faults.set()
        if monitor is not None:
            monitor.stop_flag.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
        if outdir is not None:
            shutil.rmtree(outdir, ignore_errors=True)
        if nodes is not None:
            for t in list(paused):
                nodes.signal_node(t, signal.SIGCONT)
        if cluster is not None:
            for c in cluster.configs:
                with contextlib.suppress(Exception):
                    nodes.state(c.node_id)
            for proc in cluster.procs.values():
                nodes.seen_pids.add(proc.pid)
            try:
                cluster.stop()
            finally:
                for pid in nodes.seen_pids:
                    if _alive(pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                left = remove_segments(cluster_id)
                if left:
                    log(f"loadgen: removed leftover shared memory: {left}")
                if root is not None:
                    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
