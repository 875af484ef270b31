"""Prometheus metrics of one node, served over HTTP by its supervisor (issue 5.2).

Nothing is counted here and workers do nothing per event for metrics: their counters already live in the
shared state block (one writer per field, see shmraft/ipc/state.py). A custom collector reads the block,
the rings' control words and psutil on each scrape. The HTTP server is prometheus_client's, in a daemon
thread of the supervisor process, on `metrics_port` bound to `bind_host`.

`node_figures` is shared with `shmraft-supervisor status`, so both show the same numbers.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shmraft.config import NodeConfig
from shmraft.ipc.ring import RingInspector
from shmraft.ipc.state import LATENCY_BOUNDS_MS, NodeStatus, PeerState, StateBlock, StorageFault, Worker
from shmraft.net.ratelog import RateLimitedLog
from shmraft.node.layout import NodeLayout, Ring
from shmraft.raft.types import Role
from shmraft.supervisor.waterfall import stage_histograms

log = logging.getLogger("shmraft.supervisor")

# state block counter -> (metric name without the shmraft_ prefix, help); all counters
_COUNTERS = (
    ("events_in", "events_in", "Events appended to the log by this node as leader"),
    ("events_committed", "events_committed", "Events committed (applied to the commit index) on this node"),
    ("batches_committed", "batches_committed", "Log entries (batches) committed on this node"),
    ("bytes_committed", "bytes_committed", "Bytes of batch frames committed on this node"),
    ("elections", "elections", "Elections this node started (became candidate)"),
    ("leader_changes", "leader_changes", "Times this node saw a new leader"),
    ("fsyncs", "fsyncs", "RocksDB log writes with fsync (group commits)"),
    ("snapshots_sent", "snapshots_sent", "Snapshots this node sent in full to a follower behind its log start"),
    ("snapshots_installed", "snapshots_installed", "Leader's snapshots this node installed (its log replaced)"),
    (
        "leader_stall_transfers",
        "leader_stall_transfers",
        "Leadership transfers this node started as leader because its ingest or batcher worker was stalled",
    ),
)
# errors by kind: label value -> state block field
ERROR_KINDS = {
    "client_protocol": "errors",  # a client broke the protocol (ingest; the client was disconnected)
    "peer_protocol": "peer_errors",  # a peer message refused as malformed (raft)
    "peer_refused": "peer_refusals",  # a peer refused at the handshake: other cluster, unknown node, wrong
    # secret, failed TLS, garbage (consensus channel)
    "dedup_hit": "dedup_hits",  # events refused as duplicates of events already in the log
    "storage": "storage_errors",  # log writes/reads that failed: disk full, I/O error, corruption (raft)
}
_GAUGES = ("term", "leader_id", "commit_index", "last_index", "first_index")
METRICS_CONNECTIONS_MAX: Final = 16  # scrapes served at once (one thread each); more are closed at once
METRICS_REQUEST_TIMEOUT_S: Final = 5.0  # a client that sends no whole request within this is dropped


def latency_quantile(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) in ms from per-bucket counts, interpolated linearly inside a bucket as
    Prometheus' histogram_quantile does; None without samples; the last finite bound for the +Inf bucket."""
    counts = np.asarray(buckets, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    rank = q * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, len(counts) - 1)
    if i >= len(LATENCY_BOUNDS_MS):
        return LATENCY_BOUNDS_MS[-1]
    lo = 0.0 if i == 0 else LATENCY_BOUNDS_MS[i - 1]
    hi = LATENCY_BOUNDS_MS[i]
    below = cum[i - 1] if i > 0 else 0.0
    inside = counts[i]
    frac = (rank - below) / inside if inside > 0 else 1.0
    return round(lo + (hi - lo) * min(max(frac, 0.0), 1.0), 3)


def trace_metrics(node: str, state: StateBlock) -> list[Metric]:
    """The trace's per-stage histograms (supervisor/waterfall.py), one series per role and stage with samples."""
    h = HistogramMetricFamily(
        "shmraft_trace_stage_seconds",
        "Sampled requests: time in each hand-off stage (docs/DESIGN.md Trace); role leader or follower",
        labels=["node", "role", "stage"],
    )
    for role, stage, buckets, sum_s in stage_histograms(state.trace):
        h.add_metric([node, role, stage], buckets, sum_s)
    return [h]


def node_figures(state: StateBlock) -> dict[str, Any]:
    """A snapshot of the node's counters from its state block (each field read once)."""
    node = state.node
    buckets = [int(x) for x in node["commit_latency_buckets"]]
    count = sum(buckets)  # consistent with the buckets (commit_latency_count may be one ahead or behind)
    out: dict[str, Any] = {
        "status": NodeStatus(int(node["status"])).name,
        "role": Role(int(node["role"])).name.lower(),
        "leader": int(node["leader_id"]),
        **{f: int(node[f]) for f in _GAUGES},
        **{f: int(node[f]) for f, _, _ in _COUNTERS},
        "fsync_ns": int(node["fsync_ns"]),
        "errors_by_kind": {k: int(node[f]) for k, f in ERROR_KINDS.items()},
        "storage": _storage_fault_name(int(node["storage_fault"])),
        "storage_fault_since_unix_ms": int(node["storage_fault_since_unix_ms"]),
        "recovering": bool(node["recovering"]),
        "quarantines": int(node["quarantines"]),
        "followers": follower_figures(state),
        "commit_latency": {
            "count": count,
            "sum_us": int(node["commit_latency_us_sum"]),
            "buckets": buckets,
            "p50_ms": latency_quantile(buckets, 0.50),
            "p99_ms": latency_quantile(buckets, 0.99),
        },
    }
    return out


def follower_figures(state: StateBlock) -> list[dict[str, Any]]:
    """The leader's view of its followers (empty on a follower): replication state, entries behind, and
    the snapshot transfer in progress (bytes sent, acknowledged, total) for one in SNAPSHOT/RESEED."""
    out = []
    for rec in state.peers:
        node_id = int(rec["node_id"])
        if node_id == 0:
            continue
        out.append(
            {
                "node_id": node_id,
                "state": _peer_state_name(int(rec["state"])),
                "match": int(rec["match"]),
                "entries_behind": int(rec["entries_behind"]),
                "snapshot_index": int(rec["snapshot_index"]),
                "snapshot_sent_bytes": int(rec["snapshot_sent_bytes"]),
                "snapshot_acked_bytes": int(rec["snapshot_acked_bytes"]),
                "snapshot_total_bytes": int(rec["snapshot_total_bytes"]),
            }
        )
    return out


def _peer_state_name(value: int) -> str:
    try:
        return PeerState(value).name
    except ValueError:
        return f"UNKNOWN_{value}"


def _storage_fault_name(value: int) -> str:
    try:
        return StorageFault(value).name.lower()
    except ValueError:
        return f"unknown_{value}"


def ring_figures(layout: NodeLayout) -> dict[str, dict[str, Any]]:
    rings: dict[str, dict[str, Any]] = {}
    for ring in Ring:
        try:
            with RingInspector(layout.name(ring)) as insp:
                st = insp.stats()
            rings[ring] = {
                "fill_bytes": st.fill_bytes,
                "capacity_bytes": st.capacity_bytes,
                "records_pushed": st.records_pushed,
                "bytes_pushed": st.bytes_pushed,
            }
        except Exception as exc:  # noqa: BLE001 - a missing ring is reported, not fatal
            rings[ring] = {"error": str(exc)}
    return rings


class _ProcessCache:
    """psutil.Process objects by pid, so CPU times are cheap and pids reused by others are not confused."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def figures(self, pid: int) -> tuple[float, int] | None:
        """(CPU seconds user+system, RSS bytes) of a live process; None if it is gone."""
        if pid <= 0:
            return None
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                t = proc.cpu_times()
                return t.user + t.system, proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._procs.pop(pid, None)
            return None

    def keep_only(self, pids: set[int]) -> None:
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]


class NodeCollector(Collector):
    """Reads the state block, rings and processes of one node on each scrape."""

    def __init__(self, config: NodeConfig, state: StateBlock, layout: NodeLayout | None = None) -> None:
        self.config = config
        self.state = state
        self.layout = layout or NodeLayout(config)
        self.node = str(config.node_id)
        self._lock = threading.Lock()
        self._closed = False
        self._procs = _ProcessCache()

    def close(self) -> None:
        """No scrape reads the block after this returns (called before the segments are removed)."""
        with self._lock:
            self._closed = True

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._closed:
                return iter(())
            return iter(self._collect())

    def _collect(self) -> list[Metric]:
        node = self.node
        f = node_figures(self.state)
        out: list[Metric] = []

        for field, name, doc in _COUNTERS:
            c = CounterMetricFamily(f"shmraft_{name}", doc, labels=["node"])
            c.add_metric([node], f[field])
            out.append(c)
        c = CounterMetricFamily("shmraft_fsync_seconds", "Time spent in log writes with fsync", labels=["node"])
        c.add_metric([node], f["fsync_ns"] / 1e9)
        out.append(c)
        c = CounterMetricFamily("shmraft_errors", "Errors by kind", labels=["node", "kind"])
        for kind, value in f["errors_by_kind"].items():
            c.add_metric([node, kind], value)
        out.append(c)

        for field in _GAUGES:
            g = GaugeMetricFamily(f"shmraft_{field}", f"The node's {field.replace('_', ' ')}", labels=["node"])
            g.add_metric([node], f[field])
            out.append(g)
        g = GaugeMetricFamily(
            "shmraft_role", "1 for the node's current Raft role, 0 for the others", labels=["node", "role"]
        )
        for role in Role:
            g.add_metric([node, role.name.lower()], 1.0 if role.name.lower() == f["role"] else 0.0)
        out.append(g)
        g = GaugeMetricFamily(
            "shmraft_node_status", "1 for the node's current status, 0 for the others", labels=["node", "status"]
        )
        for st in NodeStatus:
            g.add_metric([node, st.name.lower()], 1.0 if st.name == f["status"] else 0.0)
        out.append(g)
        g = GaugeMetricFamily(
            "shmraft_storage_fault",
            "1 for the log storage's current state (ok, disk_full, "
            "io_error, corrupt, hard_state_lost), 0 for the others",
            labels=["node", "fault"],
        )
        for sf in StorageFault:
            g.add_metric([node, sf.name.lower()], 1.0 if sf.name.lower() == f["storage"] else 0.0)
        out.append(g)
        g = GaugeMetricFamily(
            "shmraft_recovering", "1 while the node re-fetches a quarantined log (no votes)", labels=["node"]
        )
        g.add_metric([node], 1.0 if f["recovering"] else 0.0)
        out.append(g)
        c = CounterMetricFamily("shmraft_quarantines", "Corrupt logs moved aside (log.corrupt-<time>)", labels=["node"])
        c.add_metric([node], f["quarantines"])
        out.append(c)
        behind = GaugeMetricFamily(
            "shmraft_follower_entries_behind",
            "Leader only: entries a follower lacks (last index - its match)",
            labels=["node", "follower", "state"],
        )
        snap = GaugeMetricFamily(
            "shmraft_follower_snapshot_bytes",
            "Leader only: the snapshot transfer to a follower (bytes sent, acknowledged, total)",
            labels=["node", "follower", "what"],
        )
        for fol in f["followers"]:
            who = str(fol["node_id"])
            behind.add_metric([node, who, fol["state"].lower()], fol["entries_behind"])
            for what in ("sent", "acked", "total"):
                snap.add_metric([node, who, what], fol[f"snapshot_{what}_bytes"])
        out += [behind, snap]

        lat = f["commit_latency"]
        h = HistogramMetricFamily(
            "shmraft_commit_latency_seconds",
            "PRODUCE requests: receipt to PRODUCED answer (leader's ingest worker)",
            labels=["node"],
        )
        cum = 0
        buckets = []
        for bound_ms, n in zip((*LATENCY_BOUNDS_MS, float("inf")), lat["buckets"], strict=True):
            cum += n
            buckets.append(("+Inf" if bound_ms == float("inf") else repr(bound_ms / 1000), cum))
        h.add_metric([node], buckets, lat["sum_us"] / 1e6)
        out.append(h)
        out += trace_metrics(node, self.state)

        fill = GaugeMetricFamily(
            "shmraft_ring_fill_bytes", "Bytes published and not yet released in a ring", labels=["node", "ring"]
        )
        cap = GaugeMetricFamily("shmraft_ring_capacity_bytes", "A ring's capacity", labels=["node", "ring"])
        pushed = CounterMetricFamily(
            "shmraft_ring_records_pushed", "Records pushed into a ring", labels=["node", "ring"]
        )
        for ring, r in ring_figures(self.layout).items():
            if "error" in r:
                continue
            fill.add_metric([node, ring], r["fill_bytes"])
            cap.add_metric([node, ring], r["capacity_bytes"])
            pushed.add_metric([node, ring], r["records_pushed"])
        out += [fill, cap, pushed]

        restarts = CounterMetricFamily(
            "shmraft_worker_restarts", "Worker restarts by the supervisor", labels=["node", "worker"]
        )
        beats = CounterMetricFamily(
            "shmraft_worker_heartbeats", "Worker heartbeat counter (loop iterations)", labels=["node", "worker"]
        )
        werr = CounterMetricFamily("shmraft_worker_errors", "Errors counted by a worker", labels=["node", "worker"])
        up = GaugeMetricFamily("shmraft_worker_up", "1 if the worker process is alive", labels=["node", "worker"])
        cpu = CounterMetricFamily(
            "shmraft_worker_cpu_seconds", "CPU time (user+system) of the worker process", labels=["node", "worker"]
        )
        rss = GaugeMetricFamily(
            "shmraft_worker_rss_bytes", "Resident memory of the worker process", labels=["node", "worker"]
        )
        pids = {kind.name.lower(): int(self.state.workers[kind]["pid"]) for kind in Worker}
        for kind in Worker:
            name = kind.name.lower()
            rec = self.state.workers[kind]
            restarts.add_metric([node, name], int(rec["restarts"]))
            beats.add_metric([node, name], int(rec["heartbeat"]))
            werr.add_metric([node, name], int(rec["errors"]))
        pids["supervisor"] = os.getpid()
        for name, pid in pids.items():
            fig = self._procs.figures(pid)
            up.add_metric([node, name], 0.0 if fig is None else 1.0)
            if fig is not None:
                cpu.add_metric([node, name], fig[0])
                rss.add_metric([node, name], fig[1])
        self._procs.keep_only(set(pids.values()))
        out += [restarts, beats, werr, up, cpu, rss]
        return out


class MetricsServer:
    """The node's /metrics endpoint: prometheus_client's HTTP server in a daemon thread."""

    def __init__(self, config: NodeConfig, state: StateBlock, layout: NodeLayout | None = None) -> None:
        self.collector = NodeCollector(config, state, layout)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        host, port = config.bind_host, config.me.metrics_port
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        _bound_http_server(self._server)
        self.url = f"http://{host}:{self._server.server_port}/metrics"

    def close(self) -> None:
        self.collector.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


class _DeadlineHandler:
    """Mixed into the request handler: the whole connection gets METRICS_REQUEST_TIMEOUT_S, not each socket
    operation (a client sending a byte every second would defeat a per-operation timeout)."""

    connection: Any

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self._deadline = threading.Timer(METRICS_REQUEST_TIMEOUT_S, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # the handler's read or write fails, the thread ends
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()  # type: ignore[misc]


def _bound_http_server(server: Any) -> None:
    """Bound prometheus_client's thread-per-connection server: at most METRICS_CONNECTIONS_MAX connections
    (more are closed on accept), METRICS_REQUEST_TIMEOUT_S per socket operation (a slow-loris or idle
    connection cannot hold a thread for ever), and handler errors logged rate-limited in one line instead of
    a traceback per connection. Patched on the instance so that however the server was made (TLS or not),
    it is bounded the same way."""
    slots = threading.BoundedSemaphore(METRICS_CONNECTIONS_MAX)
    badlog = RateLimitedLog(log)
    lock = threading.Lock()
    base_handler = server.RequestHandlerClass
    server.RequestHandlerClass = type(
        "TimedHandler", (_DeadlineHandler, base_handler), {"timeout": METRICS_REQUEST_TIMEOUT_S}
    )
    process_request = server.process_request
    process_request_thread = server.process_request_thread

    def bounded_process_request(request: Any, client_address: Any) -> None:
        if not slots.acquire(blocking=False):
            with lock:
                badlog.warning(
                    "metrics limit",
                    "metrics: connection from %s refused: %d open (METRICS_CONNECTIONS_MAX)",
                    client_address[0],
                    METRICS_CONNECTIONS_MAX,
                )
            server.shutdown_request(request)
            return
        try:
            process_request(request, client_address)
        except BaseException:
            slots.release()
            raise

    def releasing_process_request_thread(request: Any, client_address: Any) -> None:
        try:
            process_request_thread(request, client_address)
        finally:
            slots.release()

    def handle_error(_request: Any, client_address: Any) -> None:
        with lock:
            badlog.warning(
                "metrics client", "metrics: request from %s failed: %s", client_address[0], sys.exc_info()[1]
            )

    server.process_request = bounded_process_request
    server.process_request_thread = releasing_process_request_thread
    server.handle_error = handle_error
