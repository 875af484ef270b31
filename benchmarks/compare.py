"""shmraft beside its peers, measured in one run on this machine (issue 5.3).

Each system runs as a 3-node cluster on 127.0.0.1 and is driven by a Python client; 100-byte events:

  (a) committed throughput: events acknowledged only once committed, with an in-flight window (per system,
      set by the --*-window flags; not swept);
  (b) latency with one event in flight (blocking write in a loop): p50, p99;
  (c) failover: SIGKILL the leader while a client writes at a steady rate (--failover-rate, blocking writes);
      figure = kill -> first acknowledged write that was sent after the kill; median and max over --kills.
      The killed node is restarted and caught up before the next kill.

Systems (durability beside every figure; the client is always Python, on the same 2 cores as the servers):
  shmraft     LocalCluster, fsync "always" (fsync on a majority before ack); pipelined Producer.send_many
  pysyncobj   3 processes, a @replicated counter taking the 100-byte event; journalFile (mmap, never
              fsynced/msynced per write: acks before fsync); the client is the library inside a node process
  etcd        /usr/bin/etcd (Debian 3.4), 3 members, default fsync of the WAL per write batch;
              hand-encoded gRPC KV.Put with grpcio (futures with a window); leader from the JSON /v3 status API
  nats        /usr/sbin/nats-server (2.9.10) x3, JetStream stream with replicas=3 (file storage; 2.9 acks
              before fsync, no per-write sync option); nats-py publish_async with a window

    python benchmarks/compare.py            # full run (several minutes; NATS elections take 4-9 s each)
    python benchmarks/compare.py --quick    # ~2-3 minutes: short durations, 2 kills
    python benchmarks/compare.py --systems shmraft,etcd

Prints a table, writes benchmarks/results/compare.png (matplotlib) and compare.json, and prints one JSON line
last: {"systems": {...}, "ratios": {...}, "machine": {...}}. A peer that cannot be started is reported as
skipped with its reason. Every process and temp dir is removed, also on error and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shmraft.testing.wait import wait_for as poll  # noqa: E402

RESULTS_DIR = HERE / "results"
EVENT = b"x" * 100
SYSTEMS = ("shmraft", "pysyncobj", "etcd", "nats")

PSO_GIVE_UP_S = 60.0  # a PySyncObj kill with no ack this long after it is counted at this bound
CHILDREN: list[Any] = []  # subprocess.Popen and mp.Process objects, all killed at the end


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def pct(samples_s) -> dict:
    import numpy as np

    a = np.asarray(samples_s, dtype=float) * 1000
    if a.size == 0:
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "n": int(a.size)}


def median_max(xs: list[float]) -> dict:
    if not xs:
        return {"median": None, "max": None, "samples": []}
    s = sorted(xs)
    m = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return {"median": round(m, 1), "max": round(max(xs), 1), "samples": [round(x, 1) for x in xs]}


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02):
    """Until cond() answers something other than None or False (0 is a node index); an exception is a
    server still starting."""
    return poll(
        cond, timeout_s, what, interval_s, accept=lambda v: v is not None and v is not False, retry_on=(Exception,)
    )


def kill_child(p) -> None:
    with contextlib.suppress(Exception):
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait(5)
        else:
            if p.is_alive():
                p.kill()
            p.join(5)


class AckCounter:
    """Counts events acknowledged inside [t0, t1) (monotonic); callbacks may come from any one thread."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1, self.count, self.errors = t0, t1, 0, 0

    def ok(self, n: int = 1) -> None:
        now = time.monotonic()
        if self.t0 <= now < self.t1:
            self.count += n

    def rate(self) -> float:
        return self.count / (self.t1 - self.t0)


class Load:
    """A steady blocking writer: `put()` once every 1/rate s in a thread; remembers (sent, acked) of each
    success so the failover figure can be 'first ack of a write sent after the kill'."""

    def __init__(self, put: Callable[[], None], rate: float) -> None:
        self.put, self.interval = put, 1.0 / rate
        self.ok: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                self.put()
                self.ok.append((t, time.monotonic()))
            except Exception:  # noqa: BLE001 - errors during failover are expected
                self.errors += 1
            nxt += self.interval
            wait = nxt - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                nxt = time.monotonic()

    def first_ack_after(self, t_kill: float) -> float | None:
        for sent, _acked in reversed(self.ok):
            if sent < t_kill:
                break
        # scan forward for the first success sent after the kill
        for sent, acked in self.ok:
            if sent >= t_kill:
                return acked
        return None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def failover_loop(kills: int, find_leader, kill, restart, caught_up, load: Load, give_up_s: float, name: str) -> dict:
    out: list[float] = []
    wait_for(lambda: len(load.ok) >= 20, 30, f"{name}: the steady load to run")
    for k in range(kills):
        leader = wait_for(find_leader, 60, f"{name}: a leader")
        time.sleep(random.uniform(0.2, 0.5))
        t_kill = time.monotonic()
        kill(leader)
        ack = wait_for(
            lambda t=t_kill: load.first_ack_after(t), give_up_s, f"{name}: an ack after killing {leader}", 0.005
        )
        out.append(1000 * (ack - t_kill))
        restart(leader)
        t_r = time.monotonic()
        wait_for(lambda n=leader: caught_up(n), 90, f"{name}: node {leader} to catch up", 0.1)
        log(
            f"  {name} kill {k + 1}/{kills}: leader {leader}: next ack after {out[-1]:.0f} ms; "
            f"restarted node caught up in {time.monotonic() - t_r:.1f} s"
        )
    return median_max(out)


# --- shmraft ---------------------------------------------------------------------------------------------------


def run_shmraft(root: Path, args) -> dict:
    sys.path.insert(0, str(HERE))
    import cluster_bench as cb  # noqa: PLC0415 - reuse its cluster and failover code

    from shmraft.client import Client

    res: dict = {
        "durability": "fsync always (RocksDB WAL fsync, group commit) on a majority before ack",
        "client": f"shmraft Producer.send_many (window {args.shmraft_window} requests x {args.shmraft_batch} "
        "events, linger 1 ms), in the bench process; blocking Client.produce for latency/failover",
    }
    with cb.bench_cluster(root, "always") as bench:
        try:
            with Client(bench.addresses, timeout_s=30) as c:
                prod = c.producer(
                    window=args.shmraft_window,
                    batch_events=args.shmraft_batch,
                    linger_ms=1.0,
                    buffer_events=max(2 * args.shmraft_window * args.shmraft_batch, 4096),
                )
                chunk = [EVENT] * args.shmraft_batch
                t0 = time.monotonic() + args.warmup
                ctr = AckCounter(t0, t0 + args.duration)

                n_chunk = len(chunk)

                def done(f, n=n_chunk, ctr=ctr):
                    if f.exception() is None:
                        ctr.ok(n)
                    else:
                        ctr.errors += 1

                while time.monotonic() < ctr.t1:
                    prod.send_many(chunk).add_done_callback(done)
                prod.close(timeout_s=30)
            res["throughput"] = {
                "events_per_s": round(ctr.rate()),
                "errors": ctr.errors,
                "window": f"{args.shmraft_window}x{args.shmraft_batch}",
            }
            log(f"  shmraft throughput {res['throughput']}")
            one = cb.measure_one_in_flight(bench, args.samples)
            res["latency"] = {"p50": one["p50"], "p99": one["p99"], "n": one["n"]}
            log(f"  shmraft latency {res['latency']}")
            fo = cb.measure_failover(bench, args.kills, args.failover_rate, lambda m: log("  shmraft " + m.lstrip()))
            res["failover"] = {
                "median": fo["median"],
                "max": fo["max"],
                "samples": fo["samples"],
                "definition": "kill -> next ack (no write in flight at the kill)",
            }
        finally:
            pass
    return res


# --- PySyncObj -------------------------------------------------------------------------------------------------


def _pso_node(me: str, partners: list[str], journal: str, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Log(SyncObj):
        def __init__(self):
            super().__init__(me, partners, SyncObjConf(journalFile=journal, dynamicMembershipChange=False))
            self.n = 0

        @replicated
        def add(self, event):
            self.n += 1
            return self.n

    o = Log()
    load_stop = threading.Event()
    shared = {}
    while True:
        cmd, *a = conn.recv()
        try:
            if cmd == "status":
                s = o.getStatus()
                conn.send(
                    {
                        "state": int(s["state"]),
                        "leader": str(s["leader"]) if s["leader"] else None,
                        "commit_idx": s["commit_idx"],
                        "has_quorum": s["has_quorum"],
                        "last_applied": s["last_applied"],
                        "term": s["raft_term"],
                    }
                )
            elif cmd == "tput":
                duration, window, warm = a
                sem = threading.Semaphore(window)
                t0 = time.monotonic() + warm
                ctr = AckCounter(t0, t0 + duration)

                def cb(res, err, ctr=ctr, sem=sem):
                    if err == FAIL_REASON.SUCCESS:
                        ctr.ok()
                    else:
                        ctr.errors += 1
                    sem.release()

                while time.monotonic() < ctr.t1:
                    sem.acquire()
                    o.add(EVENT, callback=cb)
                for _ in range(window):
                    sem.acquire(timeout=10)
                conn.send({"events_per_s": round(ctr.rate()), "errors": ctr.errors, "window": window})
            elif cmd == "lat":
                (samples,) = a
                for _ in range(min(100, samples)):
                    o.add(EVENT, sync=True, timeout=10)
                lat = array("d")
                for _ in range(samples):
                    t = time.perf_counter()
                    o.add(EVENT, sync=True, timeout=10)
                    lat.append(time.perf_counter() - t)
                conn.send(list(lat))
            elif cmd == "load":
                (rate,) = a
                shared["load"] = Load(lambda: o.add(EVENT, sync=True, timeout=1.0), rate)
                conn.send(True)
            elif cmd == "first_ack_after":
                conn.send(shared["load"].first_ack_after(a[0]) if "load" in shared else None)
            elif cmd == "load_ok":
                conn.send(len(shared["load"].ok))
            elif cmd == "unload":  # stop this node's load; the node keeps running
                if "load" in shared:
                    shared.pop("load").close()
                conn.send(True)
            elif cmd == "stop":
                if "load" in shared:
                    shared["load"].close()
                conn.send(True)
                break
        except Exception as exc:  # noqa: BLE001
            conn.send({"error": repr(exc)})
    load_stop.set()


class PsoCluster:
    def __init__(self, root: Path, name: str = "pysyncobj") -> None:
        self.ctx = mp.get_context("spawn")
        ports = free_ports(3)
        self.addrs = [f"127.0.0.1:{p}" for p in ports]
        self.root = root / name
        self.root.mkdir()
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}
        for i in range(3):
            self.start(i)

    def start(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        partners = [a for j, a in enumerate(self.addrs) if j != i]
        p = self.ctx.Process(
            target=_pso_node, args=(self.addrs[i], partners, str(self.root / f"j{i}"), child), daemon=True
        )
        p.start()
        CHILDREN.append(p)
        self.procs[i], self.conns[i] = p, parent

    def call(self, i: int, *cmd, timeout: float = 120):
        c = self.conns[i]
        c.send(cmd)
        if not c.poll(timeout):
            raise TimeoutError(f"pysyncobj node {i}: no answer to {cmd[0]}")
        r = c.recv()
        if isinstance(r, dict) and "error" in r:
            raise RuntimeError(f"pysyncobj node {i}: {r['error']}")
        return r

    def leader(self, exclude: int = -1) -> int | None:
        for i in range(3):
            if i == exclude or not self.procs[i].is_alive():
                continue
            s = self.call(i, "status", timeout=5)
            if s["state"] == 2 and s["has_quorum"]:
                return i
        return None

    def kill(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].join(5)

    def stop(self) -> None:
        for p in self.procs.values():
            kill_child(p)


def run_pysyncobj(root: Path, args) -> dict:
    from importlib.metadata import version

    import pysyncobj  # noqa: F401 - fail early with a clear reason

    res: dict = {
        "durability": "journalFile (mmap), no fsync/msync per write: acks before fsync",
        "client": f"pysyncobj {version('pysyncobj')} @replicated call inside the leader's process "
        f"(callback, window {args.pso_window}); sync=True for latency; failover load split over the 3 node "
        "processes",
    }
    cl = PsoCluster(root)
    try:
        leader = wait_for(cl.leader, 60, "a pysyncobj leader", 0.2)
        res["throughput"] = cl.call(leader, "tput", args.duration, args.pso_window, args.warmup)
        log(f"  pysyncobj throughput {res['throughput']}")
        res["latency"] = pct(cl.call(leader, "lat", args.samples))
        log(f"  pysyncobj latency {res['latency']}")
        # failover on a fresh cluster: a node restarted after the throughput phase replays its whole journal
        # (~150,000 entries) before it applies anything new, and its sync writes time out meanwhile
        cl.stop()
        cl = PsoCluster(root, "pysyncobj-failover")
        wait_for(cl.leader, 60, "a pysyncobj leader", 0.2)
        # the library's client lives inside a node process: every node runs a third of the failover load, and
        # the figure after a kill is the first ack of a write sent after the kill, seen by any surviving node
        for i in range(3):
            cl.call(i, "load", args.failover_rate / 3)
        out: list[float] = []
        wait_for(lambda: all(cl.call(i, "load_ok") >= 10 for i in range(3)), 30, "pysyncobj load")

        def first_ack(t_kill: float, dead: int) -> float | None:
            acks = [cl.call(i, "first_ack_after", t_kill) for i in range(3) if i != dead]
            return min((x for x in acks if x is not None), default=None)

        gave_up = 0
        for k in range(args.kills):
            ld = wait_for(cl.leader, 60, "a pysyncobj leader", 0.05)
            time.sleep(random.uniform(0.2, 0.5))
            t_kill = time.monotonic()
            cl.kill(ld)
            try:
                ack = wait_for(lambda t=t_kill, d=ld: first_ack(t, d), PSO_GIVE_UP_S, "pysyncobj ack after kill", 0.005)
                out.append(1000 * (ack - t_kill))
            except TimeoutError:
                # the two survivors did not commit again: count the kill at the give-up bound (a lower bound,
                # marked in the result) and bring the killed node back, which restores a working majority
                survivors = {i: cl.call(i, "status", timeout=5) for i in range(3) if i != ld}
                log(f"  pysyncobj kill {k + 1}: no ack within {PSO_GIVE_UP_S} s; survivors: {survivors}")
                out.append(1000.0 * PSO_GIVE_UP_S)
                gave_up += 1
            cl.start(ld)
            cl.call(ld, "load", args.failover_rate / 3)
            t_r = time.monotonic()

            def caught(i=ld):
                cur = cl.leader(exclude=i)
                s, ls = cl.call(i, "status", timeout=5), cl.call(cur, "status", timeout=5) if cur is not None else None
                return ls and s["commit_idx"] >= ls["commit_idx"] - 50 and s["leader"] is not None

            try:
                wait_for(caught, 90, "pysyncobj restarted node catching up", 0.2)
            except TimeoutError:
                cur = cl.leader(exclude=ld)
                log(
                    f"  pysyncobj: restarted {cl.call(ld, 'status')}, leader {cur}: "
                    f"{cl.call(cur, 'status') if cur is not None else None}"
                )
                raise
            log(
                f"  pysyncobj kill {k + 1}/{args.kills}: leader {ld}: next ack after {out[-1]:.0f} ms; "
                f"caught up in {time.monotonic() - t_r:.1f} s"
            )
        res["failover"] = {
            **median_max(out),
            "definition": "kill -> first ack of a write sent after the kill",
            "gave_up": gave_up,
            "gave_up_s": PSO_GIVE_UP_S,
        }
        for i in range(3):
            with contextlib.suppress(Exception):
                cl.call(i, "stop", timeout=10)
    finally:
        cl.stop()
    return res


# --- etcd ------------------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def etcd_put_request(key: bytes, value: bytes) -> bytes:
    """etcdserverpb.PutRequest{key=1, value=2}, hand-encoded."""
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


class EtcdCluster:
    def __init__(self, root: Path) -> None:
        self.bin = shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(self.bin).exists():
            raise FileNotFoundError("etcd not installed (apt-get install -y etcd-server)")
        ports = free_ports(6)
        self.client_ports, self.peer_ports = ports[:3], ports[3:]
        self.root = root / "etcd"
        self.root.mkdir()
        self.names = [f"e{i}" for i in range(3)]
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        self.procs: dict[int, subprocess.Popen] = {}
        for i in range(3):
            self.start(i)
        self.ids: dict[int, str] = {}

    def start(self, i: int) -> None:
        cmd = [
            self.bin,
            "--name",
            self.names[i],
            "--data-dir",
            str(self.root / self.names[i]),
            "--listen-client-urls",
            f"http://127.0.0.1:{self.client_ports[i]}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{self.client_ports[i]}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-cluster",
            self.initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"cmp{os.getpid()}",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        logf = open(self.root / f"{self.names[i]}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        CHILDREN.append(p)
        self.procs[i] = p

    def status(self, i: int) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.client_ports[i]}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(req, timeout=1.0) as r:
            return json.loads(r.read())

    def leader(self, exclude: int = -1) -> int | None:
        ids = {}
        lead = None
        for i in range(3):
            if i == exclude or self.procs[i].poll() is not None:
                continue
            try:
                s = self.status(i)
            except Exception:  # noqa: BLE001
                continue
            ids[s["header"]["member_id"]] = i
            lead = lead or (s.get("leader") if s.get("leader") not in (None, "0") else None)
        return ids.get(lead) if lead else None

    def stop(self) -> None:
        for p in self.procs.values():
            kill_child(p)


def run_etcd(root: Path, args) -> dict:
    import grpc

    cl = EtcdCluster(root)
    res: dict = {
        "durability": "etcd 3.4 default: WAL fsync per write batch on a majority before ack",
        "client": f"grpcio {grpc.__version__}, hand-encoded KV.Put to the leader (futures, window "
        f"{args.etcd_window}); failover client rotates endpoints on any error, 1 s request timeout "
        "(a Put forwarded by a follower hangs through the election until that timeout, so the figure is "
        "bounded by it)",
    }
    chans = []
    try:
        leader = wait_for(cl.leader, 60, "an etcd leader", 0.2)

        def put_fn(i: int):
            ch = grpc.insecure_channel(f"127.0.0.1:{cl.client_ports[i]}")
            chans.append(ch)
            return ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=None, response_deserializer=None)

        req = etcd_put_request(b"bench", EVENT)
        put = put_fn(leader)
        put(req, timeout=10)
        sem = threading.Semaphore(args.etcd_window)
        t0 = time.monotonic() + args.warmup
        ctr = AckCounter(t0, t0 + args.duration)

        def done(f):
            if f.exception() is None:
                ctr.ok()
            else:
                ctr.errors += 1
            sem.release()

        while time.monotonic() < ctr.t1:
            sem.acquire()
            put.future(req, timeout=30).add_done_callback(done)
        for _ in range(args.etcd_window):
            sem.acquire(timeout=30)
        res["throughput"] = {"events_per_s": round(ctr.rate()), "errors": ctr.errors, "window": args.etcd_window}
        log(f"  etcd throughput {res['throughput']}")
        for _ in range(min(100, args.samples)):
            put(req, timeout=10)
        lat = array("d")
        for _ in range(args.samples):
            t = time.perf_counter()
            put(req, timeout=10)
            lat.append(time.perf_counter() - t)
        res["latency"] = pct(lat)
        log(f"  etcd latency {res['latency']}")

        puts = [put_fn(i) for i in range(3)]
        cur = [random.randrange(3)]

        def put_rotating():
            try:
                puts[cur[0]](req, timeout=1.0)
            except Exception:
                cur[0] = (cur[0] + 1) % 3
                raise

        load = Load(put_rotating, args.failover_rate)
        try:

            def kill(i):
                cl.procs[i].kill()
                cl.procs[i].wait(5)

            def caught_up(i):
                s = cl.status(i)
                ld = cl.leader(exclude=i)
                return ld is not None and s["raftIndex"] and int(s["raftIndex"]) >= int(cl.status(ld)["raftIndex"]) - 50

            res["failover"] = {
                **failover_loop(args.kills, cl.leader, kill, cl.start, caught_up, load, 60, "etcd"),
                "definition": "kill -> first ack of a write sent after the kill",
                "election": "etcd defaults: heartbeat 100 ms, election timeout 1000 ms",
            }
        finally:
            load.close()
    finally:
        for ch in chans:
            with contextlib.suppress(Exception):
                ch.close()
        cl.stop()
    return res


# --- NATS JetStream --------------------------------------------------------------------------------------------


class NatsCluster:
    def __init__(self, root: Path) -> None:
        self.bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.bin).exists():
            raise FileNotFoundError("nats-server not installed (apt-get install -y nats-server)")
        ports = free_ports(6)
        self.client_ports, self.route_ports = ports[:3], ports[3:]
        self.root = root / "nats"
        self.root.mkdir()
        self.names = [f"n{i}" for i in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i, n in enumerate(self.names):
            (self.root / f"{n}.conf").write_text(
                f'server_name: "{n}"\nlisten: "127.0.0.1:{self.client_ports[i]}"\n'
                f'jetstream {{ store_dir: "{self.root / n}" }}\n'
                f'cluster {{ name: "cmp", listen: "127.0.0.1:{self.route_ports[i]}", routes: [{routes}] }}\n'
            )
        for i in range(3):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def start(self, i: int) -> None:
        logf = open(self.root / f"{self.names[i]}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(
            [self.bin, "-c", str(self.root / f"{self.names[i]}.conf")],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        CHILDREN.append(p)
        self.procs[i] = p

    def kill(self, name: str) -> int:
        i = self.names.index(name)
        self.procs[i].kill()
        self.procs[i].wait(5)
        return i

    def stop(self) -> None:
        for p in self.procs.values():
            kill_child(p)


async def _nats_bench(cl: NatsCluster, args) -> dict:
    import asyncio

    import nats

    out: dict = {}

    async def quiet(_exc) -> None:  # reconnect errors during the kills are expected
        return None

    nc = await nats.connect(
        servers=cl.urls, error_cb=quiet, reconnect_time_wait=0.05, max_reconnect_attempts=-1, connect_timeout=2
    )
    try:
        js = nc.jetstream(timeout=5, publish_async_max_pending=args.nats_window)
        deadline = time.monotonic() + 60
        while True:
            try:
                await js.add_stream(name="BENCH", subjects=["ev"], num_replicas=3)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await js.publish("ev", EVENT)
        # (a) throughput
        t0 = time.monotonic() + args.warmup
        ctr = AckCounter(t0, t0 + args.duration)

        def done(f):
            if not f.cancelled() and f.exception() is None:
                ctr.ok()
            else:
                ctr.errors += 1

        while time.monotonic() < ctr.t1:
            (await js.publish_async("ev", EVENT)).add_done_callback(done)
        await asyncio.wait_for(js.publish_async_completed(), 60)
        out["throughput"] = {"events_per_s": round(ctr.rate()), "errors": ctr.errors, "window": args.nats_window}
        log(f"  nats throughput {out['throughput']}")
        # (b) latency
        for _ in range(min(100, args.samples)):
            await js.publish("ev", EVENT)
        lat = array("d")
        for _ in range(args.samples):
            t = time.perf_counter()
            await js.publish("ev", EVENT)
            lat.append(time.perf_counter() - t)
        out["latency"] = pct(lat)
        log(f"  nats latency {out['latency']}")
        # (c) failover
        oks: list[tuple[float, float]] = []
        stop = asyncio.Event()

        async def loader():
            interval = 1.0 / args.failover_rate
            nxt = time.monotonic()
            while not stop.is_set():
                t = time.monotonic()
                try:
                    await js.publish("ev", EVENT, timeout=1.0)
                    oks.append((t, time.monotonic()))
                except Exception:  # noqa: BLE001
                    pass
                nxt += interval
                w = nxt - time.monotonic()
                if w > 0:
                    await asyncio.sleep(w)
                else:
                    nxt = time.monotonic()

        async def stream_leader() -> str | None:
            try:
                info = await js.stream_info("BENCH")
                return info.cluster.leader if info.cluster else None
            except Exception:  # noqa: BLE001
                return None

        async def all_current() -> bool:
            try:
                info = await js.stream_info("BENCH")
            except Exception:  # noqa: BLE001
                return False
            reps = info.cluster.replicas or []
            return bool(info.cluster.leader) and len(reps) == 2 and all(r.current for r in reps)

        task = asyncio.create_task(loader())
        samples: list[float] = []
        try:
            t_w = time.monotonic()
            while len(oks) < 20:
                if time.monotonic() - t_w > 30:
                    raise TimeoutError("nats: steady load not running")
                await asyncio.sleep(0.05)
            for k in range(args.kills):
                t_w = time.monotonic()
                while not (leader := await stream_leader()):
                    if time.monotonic() - t_w > 60:
                        raise TimeoutError("nats: no stream leader")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(random.uniform(0.2, 0.5))
                t_kill = time.monotonic()
                i = cl.kill(leader)
                while True:
                    ack = next((a for s, a in oks if s >= t_kill), None)
                    if ack is not None:
                        break
                    if time.monotonic() - t_kill > 60:
                        raise TimeoutError("nats: no ack within 60 s of the kill")
                    await asyncio.sleep(0.005)
                samples.append(1000 * (ack - t_kill))
                cl.start(i)
                t_r = time.monotonic()
                await asyncio.sleep(1.0)
                while not await all_current():
                    if time.monotonic() - t_r > 90:
                        raise TimeoutError("nats: restarted server did not catch up")
                    await asyncio.sleep(0.2)
                log(
                    f"  nats kill {k + 1}/{args.kills}: stream leader {leader}: next ack after {samples[-1]:.0f} ms;"
                    f" replicas current after {time.monotonic() - t_r:.1f} s"
                )
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        out["failover"] = {
            **median_max(samples),
            "definition": "kill -> first ack of a write sent after the kill",
            "election": "nats-server 2.9 Raft election timeout 4-9 s",
        }
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    return out


def run_nats(root: Path, args) -> dict:
    import asyncio
    from importlib.metadata import version

    import nats  # noqa: F401

    cl = NatsCluster(root)
    try:
        res: dict = {
            "durability": "JetStream file storage, R=3; 2.9.10 acks before fsync (no per-write sync option)",
            "client": f"nats-py {version('nats-py')} publish_async (window {args.nats_window}); "
            "js.publish for latency/failover (1 s timeout, reconnect wait 50 ms)",
        }
        res.update(asyncio.run(_nats_bench(cl, args)))
    finally:
        cl.stop()
    return res


# --- report ----------------------------------------------------------------------------------------------------

RUNNERS = {"shmraft": run_shmraft, "pysyncobj": run_pysyncobj, "etcd": run_etcd, "nats": run_nats}


def ratios(systems: dict) -> dict:
    """shmraft / peer for each figure (throughput: higher is better; latency and failover: lower is better)."""
    s = systems.get("shmraft", {})
    out = {}
    if "throughput" not in s:
        return out
    for name, r in systems.items():
        if name == "shmraft" or "throughput" not in r:
            continue
        d = {}

        def div(a, b):
            return round(a / b, 3) if a is not None and b else None

        d["throughput_x"] = div(s["throughput"]["events_per_s"], r["throughput"]["events_per_s"])
        if "latency" in r and "latency" in s:
            d["latency_p50_x"] = div(s["latency"]["p50"], r["latency"]["p50"])
            d["latency_p99_x"] = div(s["latency"]["p99"], r["latency"]["p99"])
        if "failover" in r and "failover" in s:
            d["failover_median_x"] = div(s["failover"]["median"], r["failover"]["median"])
        out[name] = d
    return out


def table(systems: dict) -> str:
    rows = [("system", "events/s", "p50 ms", "p99 ms", "failover med/max ms", "durability")]
    for name, r in systems.items():
        if "throughput" not in r:
            rows.append((name, "-", "-", "-", "-", r.get("skipped") or r.get("failed", "")[:90]))
            continue
        lat, fo = r.get("latency", {}), r.get("failover", {})
        rows.append(
            (
                name,
                f"{r['throughput']['events_per_s']:,}",
                f"{lat.get('p50', '-')}",
                f"{lat.get('p99', '-')}",
                f"{fo.get('median', '-')}/{fo.get('max', '-')}" if fo else "-",
                r["durability"],
            )
        )
    w = [max(len(str(row[k])) for row in rows) for k in range(5)]
    lines = ["  ".join(str(c).ljust(w[k]) if k < 5 else str(c) for k, c in enumerate(row)) for row in rows]
    lines.insert(1, "-" * min(160, len(lines[0])))
    lines.append("")
    lines.append("clients:")
    for name, r in systems.items():
        if "client" in r:
            lines.append(f"  {name}: {r['client']}")
    return "\n".join(lines)


def chart(systems: dict, path: Path, note: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no chart: {exc}"
    names = [n for n, r in systems.items() if "throughput" in r]
    if not names:
        return "no chart: no results"
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.8))
    ax[0].bar(names, [systems[n]["throughput"]["events_per_s"] for n in names], color="tab:blue")
    ax[0].set_title("committed events/s (100 B), higher is better")
    ax[0].set_yscale("log")
    x = range(len(names))
    ax[1].bar([i - 0.2 for i in x], [systems[n]["latency"]["p50"] for n in names], 0.4, label="p50")
    ax[1].bar([i + 0.2 for i in x], [systems[n]["latency"]["p99"] for n in names], 0.4, label="p99")
    ax[1].set_xticks(list(x), names)
    ax[1].set_title("latency, one event in flight (ms, log)")
    ax[1].set_yscale("log")
    ax[1].legend()
    fo = [n for n in names if systems[n].get("failover", {}).get("median") is not None]
    xf = range(len(fo))
    ax[2].bar([i - 0.2 for i in xf], [systems[n]["failover"]["median"] for n in fo], 0.4, label="median")
    ax[2].bar([i + 0.2 for i in xf], [systems[n]["failover"]["max"] for n in fo], 0.4, label="max")
    ax[2].set_xticks(list(xf), fo)
    ax[2].set_title("leader SIGKILL -> next ack (ms, log)")
    ax[2].set_yscale("log")
    ax[2].legend()
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def machine_info() -> dict:
    import psutil

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    for tool, flag in (("etcd", "--version"), ("nats-server", "--version")):
        with contextlib.suppress(Exception):
            info[tool] = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (~2-3 min): 3 s throughput, 200 samples, 2 kills")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--duration", type=float, help="seconds of throughput measurement (default 10; quick 3)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before the throughput window opens")
    ap.add_argument("--samples", type=int, help="one-in-flight latency samples (default 500; quick 200)")
    ap.add_argument("--kills", type=int, help="leader kills per system (default 5; quick 2)")
    ap.add_argument("--failover-rate", type=float, default=200.0, help="writes/s of the steady blocking client")
    ap.add_argument("--shmraft-window", type=int, default=16, help="shmraft requests in flight")
    ap.add_argument("--shmraft-batch", type=int, default=1024, help="shmraft events per send_many")
    ap.add_argument("--pso-window", type=int, default=2000, help="pysyncobj calls in flight")
    ap.add_argument("--etcd-window", type=int, default=256, help="etcd Puts in flight")
    ap.add_argument("--nats-window", type=int, default=1000, help="nats publish_async pending acks")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="directory for compare.png and compare.json")
    args = ap.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.samples = args.samples or (200 if args.quick else 500)
    args.kills = args.kills if args.kills is not None else (2 if args.quick else 5)
    wanted = [s for s in args.systems.split(",") if s]
    for s in wanted:
        if s not in RUNNERS:
            ap.error(f"unknown system {s!r}")

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix="shmraft-compare-"))
    systems: dict = {}
    t_start = time.monotonic()
    try:
        for name in wanted:
            log(f"== {name}")
            t = time.monotonic()
            try:
                systems[name] = RUNNERS[name](root, args)
            except (ImportError, FileNotFoundError) as exc:
                systems[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one peer failing must not lose the others
                traceback.print_exc()
                systems[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            finally:
                for p in CHILDREN:
                    kill_child(p)
                CHILDREN.clear()
            log(f"   {name} done in {time.monotonic() - t:.0f} s")
    finally:
        for p in CHILDREN:
            kill_child(p)
        shutil.rmtree(root, ignore_errors=True)

    machine = machine_info()
    machine.update(
        {
            "quick": args.quick,
            "duration_s": args.duration,
            "latency_samples": args.samples,
            "kills": args.kills,
            "failover_rate": args.failover_rate,
            "run_s": round(time.monotonic() - t_start),
            "note": "all servers and Python clients share the same cores; figures are noisy",
        }
    )
    note = (
        f"{machine['cpus']} cores shared by 3 servers + a Python client; noisy. "
        f"{'quick run' if args.quick else 'full run'}, {args.kills} kills; durability differs: see compare.json"
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    err = chart(systems, out_dir / "compare.png", note)
    print(table(systems))
    print(f"\nchart: {err or out_dir / 'compare.png'}; {note}")
    doc = {"systems": systems, "ratios": ratios(systems), "machine": machine}
    (out_dir / "compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
