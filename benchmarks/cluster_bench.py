"""End-to-end benchmark of a real local 3-node shmraft cluster (all processes on this machine).

Starts its own cluster (shmraft.testing's ClusterDriver: unique cluster id, free ports, temporary data dir)
once per fsync policy and measures, with 100-byte events (`--event-bytes N` for others, e.g. 1024):

1. committed events/s with 1 and with 4 producer processes (multiprocessing, spawn), each a pipelined
   `Client.producer(window, batch_events, linger_ms)`; only acknowledged events count, over `--duration`
   seconds after a warm-up; all producers share one measurement window;
2. commit latency p50/p99/p99.9: one event in flight (blocking `Client.produce` in a loop), and open-loop
   at half the best rate of (1) (paced producers; latency = ack time - scheduled send time, so a stalled
   pipeline is charged for every event it delayed: no coordinated omission);
3. both with fsync "always" and "never";
4. CPU of every process (psutil cpu_times deltas; % of one core) during the throughput runs;
5. leader SIGKILL (its whole process group) to the next acknowledged event, seen by a blocking client that
   produces at a steady rate; the node is restarted and caught up before the next kill (`--kills`).
   SIGKILL closes the node's sockets, so the followers learn of it at once; `--freezes` also SIGSTOPs the
   leader (a host that vanishes without FIN/RST), where only the missed heartbeats tell. Both also report
   the server-side time to the new leader committing (state blocks, polled every 5 ms).

Optionally (`--profile`) a separate throughput run with py-spy on the leader's raft, ingest, batcher and
sender workers, one follower's raft and sender workers and one producer process, in two modes: `--gil` (the
thread holding the GIL; py-spy reads the last holder, so a C call that released the GIL while no other thread
wanted it, such as the RocksDB write + fsync, still counts) and "active" (every non-idle thread, including ones
waiting for the GIL).
Raw stacks go to benchmarks/results/profile_<mode>_<process>.txt.

    python benchmarks/cluster_bench.py            # full run (a few minutes)
    python benchmarks/cluster_bench.py --quick    # CI size: about a minute, fsync always only, 3 kills
    python benchmarks/cluster_bench.py --profile  # also profile (needs py-spy)

Prints a table, then, last, one JSON line (also saved to benchmarks/results/cluster_bench.json).
Everything started is stopped and every /dev/shm segment of the run is removed, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.testing.cluster import ClusterDriver, new_cluster_id, remove_segments  # noqa: E402
from shmraft.testing.wait import wait_for  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# --event-bytes reaches the producer processes (multiprocessing spawn re-imports this module) through this variable
EVENT_BYTES_ENV: Final = "SHMRAFT_BENCH_EVENT_BYTES"
EVENT_BYTES = int(os.environ.get(EVENT_BYTES_ENV, "100"))
EVENT = b"x" * EVENT_BYTES
START_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 30.0
POLL_S = 0.01  # the benchmark's waits poll this often (its figures are timed by them)


# --- small helpers ---------------------------------------------------------------------------------------------


def percentiles_ms(samples_s) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan"), "max": float("nan"), "n": 0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "p999": round(float(p999), 3),
        "max": round(float(a.max()), 3),
        "n": int(a.size),
    }


def cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores, every process, kernel included)."""
    t = psutil.cpu_times()
    return (
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "steal", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


# --- the cluster -----------------------------------------------------------------------------------------------

CLUSTER_IDS: list[str] = []  # every cluster this run started, for the final leftover check


@contextlib.contextmanager
def bench_cluster(root: Path, fsync: str, nodes: int = 3) -> Iterator[ClusterDriver]:
    """A serving local cluster in root/cluster-<fsync> (a leader, and one event through the whole path);
    stopped on exit, leaving no process and no shared memory behind."""
    bench = ClusterDriver.create(root / f"cluster-{fsync}", nodes, new_cluster_id("cb"), fsync=fsync)
    CLUSTER_IDS.append(bench.cluster_id)
    with bench:
        bench.start(leader_timeout_s=None)
        wait_for(bench.leader, START_TIMEOUT_S, "a leader", POLL_S)
        with Client(bench.addresses, timeout_s=START_TIMEOUT_S) as c:
            c.produce(b"warm-up")  # the whole path works (ingest, batcher, raft, sender, followers)
        yield bench


def named_pids(bench: ClusterDriver, node_id: int) -> dict[str, int]:
    """supervisor + workers of a node, by name."""
    out = {"supervisor": bench.supervisor_pid(node_id) or 0}
    out.update({w.name.lower(): p for w, p in bench.worker_pids(node_id).items() if p})
    return out


# --- producer processes (spawned) ----------------------------------------------------------------------------


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole foreground process group; the parent stops the children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def throughput_producer(
    addresses: list[str], window: int, batch_events: int, linger_ms: float, t_start: float, t_end: float, ready, results
) -> None:
    """Sends as fast as send() accepts; reports events acknowledged within [t_start, t_end] (monotonic)."""
    _ignore_sigint()
    with Client(addresses, timeout_s=CLIENT_TIMEOUT_S) as client:
        client.produce(EVENT)  # connected, leader found
        producer = client.producer(
            window=window,
            batch_events=batch_events,
            linger_ms=linger_ms,
            buffer_events=max(2 * window * batch_events, 4096),
        )
        ready.put(os.getpid())
        pending: collections.deque = collections.deque()
        acked = errors = 0
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (0.0, 0)
        now = time.monotonic()
        while now < t_start - 0.5:  # wait for the common start (the warm-up begins 0.5 s before t_start)
            time.sleep(min(0.01, t_start - 0.5 - now))
            now = time.monotonic()
        send = producer.send
        append = pending.append
        while True:
            for _ in range(64):
                append(send(EVENT))
            while pending and pending[0].done():
                f = pending.popleft()
                if f.exception() is None:
                    acked += 1
                else:
                    errors += 1
            now = time.monotonic()
            if first is None and now >= t_start:
                first = (now, acked)
            if now >= t_end:
                last = (now, acked)
                break
        producer.close(timeout_s=CLIENT_TIMEOUT_S)
    assert first is not None
    results.put({"pid": os.getpid(), "acked": last[1] - first[1], "t0": first[0], "t1": last[0], "errors": errors})


def paced_producer(
    addresses: list[str],
    rate: float,
    window: int,
    batch_events: int,
    linger_ms: float,
    t_start: float,
    duration_s: float,
    warmup_s: float,
    ready,
    results,
) -> None:
    """Open loop: event i is due at t_start - warmup + i/rate; latency = ack time - due time."""
    _ignore_sigint()
    lat = array("d")
    errors = [0]

    def on_done(f, due: float) -> None:
        t = time.perf_counter()
        if f.exception() is None:
            lat.append(t - due)
        else:
            errors[0] += 1

    with Client(addresses, timeout_s=CLIENT_TIMEOUT_S) as client:
        client.produce(EVENT)
        producer = client.producer(window=window, batch_events=batch_events, linger_ms=linger_ms)
        ready.put(os.getpid())
        now = time.monotonic()
        while now < t_start - warmup_s:
            time.sleep(min(0.01, t_start - warmup_s - now))
            now = time.monotonic()
        # perf_counter and monotonic are the same clock on Linux, but stay within one of them here
        p0 = time.perf_counter()
        total = int((warmup_s + duration_s) * rate)
        skip = int(warmup_s * rate)
        interval = 1.0 / rate
        i = 0
        behind_max = 0.0
        while i < total:
            now = time.perf_counter()
            due_count = min(total, int((now - p0) * rate) + 1)
            while i < due_count:
                due = p0 + i * interval
                if i >= skip:
                    producer.send(EVENT, callback=lambda f, d=due: on_done(f, d))
                else:
                    producer.send(EVENT)
                i += 1
            behind_max = max(behind_max, time.perf_counter() - (p0 + (i - 1) * interval))
            wait = p0 + i * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        elapsed = time.perf_counter() - p0
        producer.close(timeout_s=CLIENT_TIMEOUT_S)
    results.put(
        {
            "pid": os.getpid(),
            "lat": lat.tobytes(),
            "errors": errors[0],
            "sent": total - skip,
            "elapsed": elapsed,
            "behind_max_s": behind_max,
        }
    )


# --- measurements ---------------------------------------------------------------------------------------------


def process_table(bench: ClusterDriver, leader: int) -> dict[str, int]:
    """name -> pid for every process of the cluster: leader/<worker>, f<id>/<worker>."""
    out: dict[str, int] = {}
    for c in bench.configs:
        tag = "leader" if c.node_id == leader else f"follower{c.node_id}"
        for name, pid in named_pids(bench, c.node_id).items():
            out[f"{tag}/{name}"] = pid
    return out


def run_producers(ctx, target, args_for, count: int, timeout_s: float):
    """Start `count` producer processes, wait until each is connected; return (procs, results)."""
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(k), ready, results), daemon=True) for k in range(count)]
    for p in procs:
        p.start()
    pids = []
    deadline = time.monotonic() + timeout_s
    while len(pids) < count:
        try:
            pids.append(ready.get(timeout=max(0.1, deadline - time.monotonic())))
        except Exception:
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("a producer process failed to start (see its traceback above)") from None
    return procs, results


def collect(procs, results, count: int, timeout_s: float) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        try:
            out.append(results.get(timeout=1.0))
        except Exception:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a producer process failed (see its traceback above)") from None
    for p in procs:
        p.join(10)
    return out


def stop_procs(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)


def measure_throughput(
    ctx,
    bench: ClusterDriver,
    producers: int,
    duration_s: float,
    window: int,
    batch_events: int,
    linger_ms: float,
    warmup_s: float = 1.0,
    profile: dict | None = None,
) -> dict:
    leader = bench.leader()
    # The common start time is fixed when the processes are created (spawning one with numpy etc. takes
    # ~0.5-1 s here); each connects, then idles until then.
    spawn_margin_s = 2.0 + 0.6 * producers
    t_start = time.monotonic() + spawn_margin_s + warmup_s
    t_end = t_start + duration_s
    procs: list = []
    try:
        procs, results = run_producers(
            ctx,
            throughput_producer,
            lambda k: (bench.addresses, window, batch_events, linger_ms, t_start, t_end),
            producers,
            timeout_s=60,
        )
        if time.monotonic() > t_start - warmup_s:
            raise RuntimeError("producers took longer to start than the margin; raise spawn_margin_s")
        names = process_table(bench, leader)
        for k, p in enumerate(procs):
            names[f"producer{k + 1}"] = p.pid
        names["bench (this process)"] = os.getpid()
        time.sleep(max(0.0, t_start - time.monotonic()))
        c0 = {n: cpu_seconds(pid) for n, pid in names.items()}
        m0 = machine_busy_seconds()
        w0 = time.monotonic()
        if profile:
            targets = profile_targets(bench, leader, procs)
            for mode in PROFILE_MODES:
                run_profilers(profile, targets, mode)
        time.sleep(max(0.0, t_end - time.monotonic()))
        c1 = {n: cpu_seconds(pid) for n, pid in names.items()}
        m1 = machine_busy_seconds()
        w1 = time.monotonic()
        out = collect(procs, results, producers, timeout_s=CLIENT_TIMEOUT_S + 30)
    finally:
        stop_procs(procs)
    cpu = {n: round(100.0 * (c1[n] - c0[n]) / (w1 - w0), 1) for n in names if c0[n] is not None and c1[n] is not None}
    rate = sum(r["acked"] / (r["t1"] - r["t0"]) for r in out)
    machine = round(100.0 * (m1 - m0) / (w1 - w0), 1)
    return {
        "producers": producers,
        "events_per_s": round(rate),
        "acked": sum(r["acked"] for r in out),
        "errors": sum(r["errors"] for r in out),
        "cpu_percent": cpu,
        "machine_busy_percent": machine,
        "outside_benchmark_percent": round(machine - sum(cpu.values()), 1),
        "window": window,
        "batch_events": batch_events,
        "linger_ms": linger_ms,
    }


def measure_one_in_flight(bench: ClusterDriver, samples: int) -> dict:
    lat = array("d")
    with Client(bench.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
        for _ in range(min(100, samples)):
            c.produce(EVENT)  # warm-up
        for _ in range(samples):
            t = time.perf_counter()
            c.produce(EVENT)
            lat.append(time.perf_counter() - t)
    return percentiles_ms(lat)


def measure_paced(
    ctx,
    bench: ClusterDriver,
    rate: float,
    producers: int,
    duration_s: float,
    window: int,
    batch_events: int,
    linger_ms: float,
    warmup_s: float = 1.0,
) -> dict:
    per = rate / producers
    spawn_margin_s = 2.0 + 0.6 * producers
    t_start = time.monotonic() + spawn_margin_s + warmup_s
    procs: list = []
    try:
        procs, results = run_producers(
            ctx,
            paced_producer,
            lambda k: (bench.addresses, per, window, batch_events, linger_ms, t_start, duration_s, warmup_s),
            producers,
            timeout_s=60,
        )
        out = collect(
            procs, results, producers, timeout_s=duration_s + warmup_s + spawn_margin_s + CLIENT_TIMEOUT_S + 30
        )
    finally:
        stop_procs(procs)
    lat = np.concatenate([np.frombuffer(r["lat"], dtype=np.float64) for r in out])
    res = percentiles_ms(lat)
    sent = sum(r["sent"] for r in out)
    res.update(
        {
            "target_events_per_s": round(rate),
            "producers": producers,
            "sent": sent,
            "errors": sum(r["errors"] for r in out),
            "achieved_events_per_s": round(sum(r["sent"] / (r["elapsed"] - warmup_s) for r in out)),
            "sender_behind_max_ms": round(1000 * max(r["behind_max_s"] for r in out), 2),
        }
    )
    return res


class SteadyLoad(threading.Thread):
    """A blocking client producing one event every 1/rate s; `lock` is held while a produce() is in flight."""

    def __init__(self, addresses: list[str], rate: float, timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        super().__init__(daemon=True, name="steady-load")
        self.timeout_s = timeout_s
        self.addresses = addresses
        self.interval = 1.0 / rate
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.acks = 0
        self.last_ack = 0.0
        self.errors: collections.Counter[str] = collections.Counter()
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.addresses, timeout_s=self.timeout_s) as c:
                next_t = time.monotonic()
                while not self.stop_flag.is_set():
                    with self.lock:
                        try:
                            c.produce(EVENT)
                            self.last_ack = time.monotonic()
                            self.acks += 1
                        except ShmraftError as exc:
                            self.errors[type(exc).__name__] += 1
                    next_t += self.interval
                    wait = next_t - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        next_t = time.monotonic()
        except BaseException as exc:  # reported by the main thread
            self.failed = exc


def _median_max(xs: list[float]) -> dict:
    return {"median": round(float(np.median(xs)), 1), "max": round(max(xs), 1)} if xs else {"median": None, "max": None}


def measure_failover(
    bench: ClusterDriver,
    kills: int,
    rate: float,
    log,
    mode: str = "kill",
    client_timeout_s: float = CLIENT_TIMEOUT_S,
    give_up_s: float = 30.0,
    client_grace_s: float = 3.0,
) -> dict:
    """Leader failure while a blocking client produces at `rate` events/s.

    mode "kill": SIGKILL the leader's process group; its sockets close at once, so the followers and the
    client see the disconnect. Client-side figure: kill -> the next acknowledged event.
    mode "freeze": SIGSTOP the group instead (a host that vanishes without FIN or RST: only the missed
    heartbeats tell); SIGKILL follows once the new leader commits (and the client had `client_grace_s`
    more to get an event acknowledged).
    Server-side figures for both: the new leader visible in the state blocks, and a commit index above
    every node's commit index at the failure (the new leader committing).
    """
    load = SteadyLoad(bench.addresses, rate, client_timeout_s)
    load.start()
    acks_ms: list[float] = []
    no_ack = 0
    elections_ms: list[float] = []
    commits_ms: list[float] = []
    catchups_s: list[float] = []
    try:
        wait_for(lambda: load.acks >= 20, 30, "the steady load to run", POLL_S)
        for k in range(kills):
            leader = bench.leader() or wait_for(bench.leader, 30, "a leader", POLL_S)
            time.sleep(random.uniform(0.2, 0.5))  # a random phase against heartbeats and the load
            bench.seen_pids |= set(bench.node_pids(leader))
            with load.lock:  # no produce() in flight: an answer already on its way cannot count as "next"
                t_kill = time.monotonic()
                bench.signal_node(leader, signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
                commit_at_kill = max(
                    (st["commit_index"] for c in bench.configs if (st := bench.state(c.node_id))), default=0
                )
            new_leader = 0
            t_elected = t_commit = t_ack = None
            while True:
                now = time.monotonic()
                if load.failed is not None:
                    raise load.failed
                if t_ack is None and load.last_ack > t_kill:
                    t_ack = load.last_ack
                if t_elected is None:
                    new_leader = bench.leader(exclude=leader)
                    if new_leader:
                        t_elected = now
                if new_leader and t_commit is None:
                    st = bench.state(new_leader)
                    if st and st["commit_index"] > commit_at_kill:
                        t_commit = now
                if t_commit is not None and (t_ack is not None or now - t_commit > client_grace_s):
                    break
                if now - t_kill > give_up_s:
                    raise TimeoutError(
                        f"no commit within {give_up_s:g} s after the {mode} of leader {leader} "
                        f"(new leader {new_leader or 'not seen'}; client errors {dict(load.errors)})"
                    )
                time.sleep(0.005)
            if mode == "kill":
                if t_ack is None:
                    raise TimeoutError(
                        f"the client had no event acknowledged within {client_grace_s:g} s of "
                        f"the new leader committing (client errors {dict(load.errors)})"
                    )
                bench.local.procs[leader].wait()
            else:
                bench.kill_node(leader)
            if t_ack is not None:
                acks_ms.append(round(1000 * (t_ack - t_kill), 1))
            else:
                no_ack += 1
            elections_ms.append(round(1000 * (t_elected - t_kill), 1))
            commits_ms.append(round(1000 * (t_commit - t_kill), 1))
            # restart the killed node and wait until it has caught up with the commit index
            t_restart = time.monotonic()
            bench.start_node(leader)

            def caught_up(node=leader) -> bool:
                s = bench.state(node)
                cur = bench.leader()
                ls = bench.state(cur) if cur else None
                return bool(
                    s
                    and ls
                    and s["status"] == 1
                    and s["term"] == ls["term"]
                    and s["commit_index"] >= ls["commit_index"] - 2
                )

            wait_for(caught_up, 60, f"node {leader} to catch up after its restart", interval_s=0.05)
            catchups_s.append(round(time.monotonic() - t_restart, 2))
            ack = f"{acks_ms[-1]:.0f} ms" if t_ack is not None else f"none within {client_grace_s:g} s of that"
            log(
                f"  {mode} {k + 1}/{kills}: leader {leader} -> {new_leader}: new leader seen after "
                f"{elections_ms[-1]:.0f} ms, committing after {commits_ms[-1]:.0f} ms; client's next ack: {ack}; "
                f"restarted node caught up in {catchups_s[-1]:.1f} s"
            )
    finally:
        load.stop_flag.set()
        load.join(client_timeout_s + 5)
    if load.failed is not None:
        raise load.failed
    return {
        "mode": mode,
        **_median_max(acks_ms),
        "samples": acks_ms,
        "client_no_ack": no_ack,
        "new_leader_seen_ms": _median_max(elections_ms),
        "new_leader_commit_ms": _median_max(commits_ms),
        "new_leader_commit_samples": commits_ms,
        "restart_catch_up_s": _median_max(catchups_s),
        "client_errors": dict(load.errors),
        "load_events_per_s": rate,
        "client_timeout_s": client_timeout_s,
    }


# --- profiling with py-spy ------------------------------------------------------------------------------------

PROFILE_MODES = ("gil", "active")  # py-spy --gil: the thread holding the GIL; active: every non-idle thread


def profile_targets(bench: ClusterDriver, leader: int, procs) -> dict[str, int]:
    pids = {w.name.lower(): p for w, p in bench.worker_pids(leader).items() if p}
    targets = {f"leader_{w}": pids[w] for w in ("raft", "ingest", "batcher", "sender") if w in pids}
    follower = next((n for n in bench.node_ids if n != leader), None)
    if follower is not None:
        fpids = {w.name.lower(): p for w, p in bench.worker_pids(follower).items() if p}
        targets.update({f"follower_{w}": fpids[w] for w in ("raft", "sender") if w in fpids})
    targets["producer1"] = procs[0].pid
    return targets


def run_profilers(profile: dict, targets: dict[str, int], mode: str) -> None:
    """py-spy record on every target at once for profile["seconds"]; raw stacks to results/."""
    spies = []
    for name, pid in targets.items():
        raw = RESULTS_DIR / f"profile_{mode}_{name}.txt"
        raw.unlink(missing_ok=True)
        cmd = [
            profile["py_spy"],
            "record",
            "-d",
            str(int(profile["seconds"])),
            "-r",
            str(profile["rate"]),
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--pid",
            str(pid),
        ]
        if mode == "gil":
            cmd.append("--gil")
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in spies:
        try:
            p.wait(profile["seconds"] + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def summarise_profile(raw: Path, seconds: float, rate: int, top: int = 8) -> dict:
    """Self time per leaf frame and inclusive time per frame from py-spy's raw (collapsed) output."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    if not raw.exists():
        return {"error": "no output"}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        if frames:
            self_t[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    possible = seconds * rate
    return {
        "samples": total,
        "busy_percent_of_one_thread": round(100 * total / possible, 1),
        "self": [(f, round(100 * c / total, 1)) for f, c in self_t.most_common(top)] if total else [],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 2)] if total else [],
    }


# --- main ------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one run measures, from the command line (the defaults depend on --quick)."""

    duration_s: float
    samples: int
    kills: int
    freezes: int
    policies: list[str]
    counts: list[int]
    profile: dict | None
    settings: dict[str, Any]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: ~1 min, fsync always only, 3 kills")
    ap.add_argument("--duration", type=float, help="seconds per throughput / half-rate run (default 10; quick 3)")
    ap.add_argument("--samples", type=int, help="one-in-flight latency samples (default 2000; quick 300)")
    ap.add_argument("--kills", type=int, help="leader kills (default 10; quick 3)")
    ap.add_argument("--fsync", default=None, help="comma-separated policies (default always,never; quick always)")
    ap.add_argument("--producers", default="1,4", help="producer process counts for throughput")
    ap.add_argument("--event-bytes", type=int, default=100, help="bytes per event (every run of this invocation)")
    ap.add_argument("--window", type=int, default=16, help="requests in flight per producer")
    ap.add_argument("--batch-events", type=int, default=1024, help="events per produce request")
    ap.add_argument("--linger-ms", type=float, default=1.0, help="producer linger (throughput runs)")
    ap.add_argument("--paced-linger-ms", type=float, default=1.0, help="producer linger (half-rate runs)")
    ap.add_argument(
        "--paced-producers",
        type=int,
        default=1,
        help="producer processes of the half-rate run (more processes cost more CPU per event)",
    )
    ap.add_argument("--failover-rate", type=float, default=200.0, help="events/s of the blocking client during kills")
    ap.add_argument("--freezes", type=int, help="leader SIGSTOPs (vanished host; default 3; quick 1)")
    ap.add_argument("--profile", action="store_true", help="extra throughput run under py-spy (results/profile_*)")
    ap.add_argument("--profile-seconds", type=float, default=5.0)
    ap.add_argument("--tmp", default=None, help="parent of the temporary data dir (default: system temp)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/cluster_bench.json")
    args = ap.parse_args(argv)
    if not 1 <= args.event_bytes <= 64 * 1024:
        ap.error(f"--event-bytes: expected 1..65536, got {args.event_bytes}")
    if args.event_bytes != EVENT_BYTES:  # this process and the producers it spawns see the new size
        os.environ[EVENT_BYTES_ENV] = str(args.event_bytes)
        globals().update(EVENT_BYTES=args.event_bytes, EVENT=b"x" * args.event_bytes)
    duration = args.duration or (3.0 if args.quick else 10.0)
    samples = args.samples or (300 if args.quick else 2000)
    kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    freezes = args.freezes if args.freezes is not None else (1 if args.quick else 3)
    policies = (args.fsync or ("always" if args.quick else "always,never")).split(",")
    counts = [int(x) for x in args.producers.split(",")]
    profile = None
    if args.profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            ap.error("--profile needs py-spy (pip install py-spy)")
        profile = {"py_spy": spy, "seconds": args.profile_seconds, "rate": 100}
    settings = {
        "quick": args.quick,
        "duration_s": duration,
        "warmup_s": 1.0,
        "one_in_flight_samples": samples,
        "kills": kills,
        "freezes": freezes,
        "paced_producers": args.paced_producers,
        "fsync": policies,
        "producers": counts,
        "event_bytes": EVENT_BYTES,
        "producer_window": args.window,
        "producer_batch_events": args.batch_events,
        "producer_linger_ms": args.linger_ms,
        "paced_linger_ms": args.paced_linger_ms,
        "failover_load_events_per_s": args.failover_rate,
        "cluster": "3 nodes, 127.0.0.1, default config",
    }
    return args, Plan(duration, samples, kills, freezes, policies, counts, profile, settings)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM and Ctrl-C both raise KeyboardInterrupt, so the run cleans up in its `finally`."""

    def on_term(_s: int, _f: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (nohup, &)


def measure_policy(ctx, bench: ClusterDriver, policy: str, args: argparse.Namespace, plan: Plan, results: dict) -> None:
    """Every measurement on one cluster (one fsync policy): throughput, latency, and on the first policy the
    profile and the failovers; into `results`."""
    first = policy == plan.policies[0]
    tp: dict[str, dict] = {}
    for n in plan.counts:
        log(f"   throughput, {n} producer(s), {plan.duration_s:g} s ...")
        tp[str(n)] = measure_throughput(ctx, bench, n, plan.duration_s, args.window, args.batch_events, args.linger_ms)
        log(f"     {tp[str(n)]['events_per_s']:,} events/s")
    results["throughput"][policy] = tp
    log(f"   latency, one in flight, {plan.samples} samples ...")
    one = measure_one_in_flight(bench, plan.samples)
    best = max(v["events_per_s"] for v in tp.values())
    log(f"   latency, open loop at half of {best:,}/s ({args.paced_producers} producer(s)) ...")
    half = measure_paced(
        ctx,
        bench,
        best / 2,
        args.paced_producers,
        plan.duration_s,
        args.window,
        args.batch_events,
        args.paced_linger_ms,
    )
    results["latency"][policy] = {"one_in_flight": one, "half_rate": half}
    if not first:
        return
    profile = plan.profile
    if profile:
        log(f"   profiling: a separate {max(plan.counts)}-producer run under py-spy ...")
        measure_throughput(
            ctx,
            bench,
            max(plan.counts),
            len(PROFILE_MODES) * (profile["seconds"] + 1.0),
            args.window,
            args.batch_events,
            args.linger_ms,
            warmup_s=1.0,
            profile=profile,
        )
        results["profile"] = {
            mode: {
                name: summarise_profile(RESULTS_DIR / f"profile_{mode}_{name}.txt", profile["seconds"], profile["rate"])
                for name in ("leader_raft", "leader_ingest", "leader_batcher", "leader_sender", "producer1")
            }
            for mode in PROFILE_MODES
        }
    if plan.kills:
        log(f"   failover: {plan.kills} leader kills under a blocking client at {args.failover_rate:g} ev/s")
        results["failover"] = measure_failover(bench, plan.kills, args.failover_rate, log)
    if plan.freezes:
        log(f"   failover: {plan.freezes} leader freezes (SIGSTOP: a vanished host), same load")
        results["freeze"] = measure_failover(
            bench, plan.freezes, args.failover_rate, log, mode="freeze", client_timeout_s=5.0
        )


def run_clusters(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """One cluster per fsync policy in a temp dir, measured; the temp dir and every cluster's shared memory
    are gone afterwards, also on error or Ctrl-C."""
    ctx = mp.get_context("spawn")
    root = Path(tempfile.mkdtemp(prefix="shmraft-cluster-bench-", dir=args.tmp))
    results: dict[str, Any] = {"throughput": {}, "latency": {}, "failover": None, "freeze": None, "profile": None}
    try:
        for policy in plan.policies:
            log(f"== fsync {policy}: starting a 3-node cluster in {root}")
            with bench_cluster(root, policy) as bench:
                measure_policy(ctx, bench, policy, args, plan, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for cid in CLUSTER_IDS:
            leftovers = remove_segments(cid)
            if leftovers:
                log(f"warning: shared memory of cluster {cid} was left behind (now removed): {leftovers}")
    return results


def format_table(args: argparse.Namespace, plan: Plan, results: dict[str, Any], total_s: float) -> str:
    """The human-readable report."""
    policies, counts, profile = plan.policies, plan.counts, plan.profile
    lines = [
        f"shmraft cluster benchmark: 3 local nodes, {EVENT_BYTES}-byte events, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"producers: pipelined Client.producer(window={args.window}, batch_events={args.batch_events}, "
        f"linger_ms={args.linger_ms:g}), one OS process each (Python client, on the same 2 cores)",
        "",
    ]
    lines.append(f"{'fsync':<7} {'producers':>9} {'committed ev/s':>15} {'errors':>7}")
    for policy, tp in results["throughput"].items():
        for n, r in tp.items():
            lines.append(f"{policy:<7} {n:>9} {r['events_per_s']:>15,} {r['errors']:>7}")
    lines.append("")
    lines.append(f"{'fsync':<7} {'latency (ms)':<36} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'n':>7}")
    for policy, lat in results["latency"].items():
        o, h = lat["one_in_flight"], lat["half_rate"]
        lines.append(
            f"{policy:<7} {'one in flight (blocking produce)':<36} {o['p50']:>8.2f} {o['p99']:>8.2f} "
            f"{o['p999']:>8.2f} {o['max']:>8.2f} {o['n']:>7}"
        )
        label = f"open loop {h['target_events_per_s']:,}/s x{h['producers']}p"
        lines.append(
            f"{'':<7} {label:<36} {h['p50']:>8.2f} {h['p99']:>8.2f} {h['p999']:>8.2f} {h['max']:>8.2f} {h['n']:>7}"
        )
        lines.append(
            f"{'':<7}   (achieved {h['achieved_events_per_s']:,}/s, errors {h['errors']}, "
            f"sender at most {h['sender_behind_max_ms']} ms behind schedule)"
        )
    lines.append("")
    cpu_runs = [(policy, n, r["cpu_percent"]) for policy, tp in results["throughput"].items() for n, r in tp.items()]
    names = sorted({k for _, _, c in cpu_runs for k in c})
    lines.append("CPU during the throughput runs, % of one core (psutil user+system)")
    lines.append(f"{'process':<24}" + "".join(f"{p + '/' + n + 'p':>12}" for p, n, _ in cpu_runs))
    for name in names:
        lines.append(f"{name:<24}" + "".join(f"{c.get(name, float('nan')):>12.1f}" for _, _, c in cpu_runs))
    tp_runs = [r for tp in results["throughput"].values() for r in tp.values()]
    lines.append(f"{'total of the above':<24}" + "".join(f"{sum(c.values()):>12.1f}" for _, _, c in cpu_runs))
    lines.append(f"{'machine busy (all)':<24}" + "".join(f"{r['machine_busy_percent']:>12.1f}" for r in tp_runs))
    lines.append(
        f"{'  of which other work':<24}" + "".join(f"{r['outside_benchmark_percent']:>12.1f}" for r in tp_runs)
    )
    lines.append(
        "  (other work = the kernel's own threads and whatever else runs on the machine; "
        f"{os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%)"
    )
    for key, what in (
        ("failover", "SIGKILL of the leader's process group"),
        ("freeze", "SIGSTOP of the leader's process group (a vanished host)"),
    ):
        f = results.get(key)
        if not f:
            continue
        n = len(f["new_leader_commit_samples"])
        lines.append("")
        lines.append(
            f"{what}, {n} times, blocking client at {args.failover_rate:g} ev/s "
            f"(client timeout {f['client_timeout_s']:g} s):"
        )
        if f["samples"]:
            lines.append(
                f"  -> next acknowledged event (client): median {f['median']} ms, max {f['max']} ms, "
                f"samples {f['samples']}"
            )
        if f["client_no_ack"]:
            lines.append(
                f"  -> the client had NO event acknowledged in {f['client_no_ack']} of {n} cases "
                "(within 3 s of the new leader committing)"
            )
        lines.append(
            f"  -> new leader committing (state blocks, 5 ms polls): median "
            f"{f['new_leader_commit_ms']['median']} ms, max {f['new_leader_commit_ms']['max']} ms, "
            f"samples {f['new_leader_commit_samples']}"
        )
        lines.append(
            f"  restarted node caught up: median {f['restart_catch_up_s']['median']} s, max "
            f"{f['restart_catch_up_s']['max']} s; client errors {f['client_errors']}"
        )
    if results["profile"]:
        lines.append("")
        lines.append(
            f"py-spy, a separate {max(counts)}-producer run (fsync {policies[0]}), {profile['seconds']:g} s "
            f"per mode at {profile['rate']} Hz; self time of the leaf frame, share of the samples taken"
        )
        for mode, procs_ in results["profile"].items():
            lines.append(
                f" mode {mode}: "
                + (
                    "samples only from the thread holding the GIL (Python on CPU)"
                    if mode == "gil"
                    else "every thread py-spy thinks is not idle "
                    "(includes threads waiting for the GIL or in blocking calls)"
                )
            )
            for name, p in procs_.items():
                lines.append(
                    f"  {name}: {p.get('samples', 0)} samples = {p.get('busy_percent_of_one_thread')}% "
                    "of one thread's time"
                )
                for fn, share in p.get("self", [])[:6]:
                    lines.append(f"    {share:5.1f}%  {fn}")
    lines.append(f"\ntotal run time {total_s:.0f} s")
    return "\n".join(lines)


def build_doc(plan: Plan, results: dict[str, Any], total_s: float) -> dict[str, Any]:
    """The JSON report (also saved to results/cluster_bench.json)."""
    head, counts, settings = plan.policies[0], plan.counts, plan.settings
    headline_cpu = results["throughput"][head][str(max(counts))]["cpu_percent"]
    return {
        "committed_events_per_s": {
            p: {n: r["events_per_s"] for n, r in tp.items()} for p, tp in results["throughput"].items()
        },
        "latency_ms": {
            p: {
                "one_in_flight": {k: v["one_in_flight"][k] for k in ("p50", "p99", "p999")},
                "half_rate": {k: v["half_rate"][k] for k in ("p50", "p99", "p999")},
            }
            for p, v in results["latency"].items()
        },
        "cpu_percent": headline_cpu,
        "cpu_percent_run": f"fsync {head}, {max(counts)} producers",
        "failover_ms": (
            {k: results["failover"][k] for k in ("median", "max", "samples")} if results["failover"] else None
        ),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "shmraft": _version("shmraft"),
            "rocksdict": _version("rocksdict"),
        },
        "settings": settings,
        "details": {
            "throughput": results["throughput"],
            "latency": results["latency"],
            "failover": results["failover"],
            "freeze": results["freeze"],
            "profile": (
                {
                    m: {n: {"samples": p.get("samples"), "self": p.get("self", [])[:6]} for n, p in procs_.items()}
                    for m, procs_ in results["profile"].items()
                }
                if results["profile"]
                else None
            ),
        },
        "run_time_s": round(total_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args, plan = parse_args(argv)
    stop_on_sigterm()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    try:
        results = run_clusters(args, plan)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    total_s = time.monotonic() - t_all
    print(format_table(args, plan, results, total_s))
    doc = build_doc(plan, results, total_s)
    line = json.dumps(doc, separators=(",", ":"))
    if not args.no_save:
        (RESULTS_DIR / "cluster_bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(line)
    return 0


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
