"""Health of a node and its workers: read from the shared state block, with psutil figures per process.

Used by `shmraft-supervisor status` (table or JSON) and by the live view of `up`.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from shmraft.config import NodeConfig
from shmraft.ipc.ring import RingInspector
from shmraft.ipc.state import NodeStatus, StateBlockError, Worker
from shmraft.node.layout import RINGS, NodeLayout
from shmraft.raft.types import Role

_cpu_seen: dict[int, psutil.Process] = {}


def _process_figures(pid: int) -> dict[str, Any]:
    if pid <= 0:
        return {"alive": False}
    proc = _cpu_seen.get(pid)
    try:
        if proc is None:
            proc = _cpu_seen[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first call primes the counter
        with proc.oneshot():
            alive = proc.status() != psutil.STATUS_ZOMBIE
            return {"alive": alive, "cpu_percent": round(proc.cpu_percent(None), 1),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        _cpu_seen.pop(pid, None)
        return {"alive": False}


def node_status(config: NodeConfig) -> dict[str, Any]:
    """One node's figures; `healthy` is False when it is down, failed, or a worker is dead."""
    layout = NodeLayout(config)
    out: dict[str, Any] = {"node_id": config.node_id, "address": config.me.client_address}
    try:
        state = layout.attach_state()
    except StateBlockError as exc:
        out.update(healthy=False, status="DOWN", error=str(exc))
        return out
    try:
        node = state.node
        status = NodeStatus(int(node["status"]))
        out.update(status=status.name, role=Role(int(node["role"])).name.lower(), term=int(node["term"]),
                   leader=int(node["leader_id"]), commit_index=int(node["commit_index"]),
                   last_index=int(node["last_index"]), events_committed=int(node["events_committed"]),
                   batches_committed=int(node["batches_committed"]), elections=int(node["elections"]),
                   leader_changes=int(node["leader_changes"]), fsyncs=int(node["fsyncs"]),
                   fsync_ms_total=round(int(node["fsync_ns"]) / 1e6, 1), errors=int(node["errors"]),
                   dedup_hits=int(node["dedup_hits"]), events_in=int(node["events_in"]))
        workers = {}
        healthy = status == NodeStatus.SERVING
        for kind in Worker:
            rec = state.workers[kind]
            fig = _process_figures(int(rec["pid"]))
            fig.update(pid=int(rec["pid"]), heartbeat=int(rec["heartbeat"]), restarts=int(rec["restarts"]))
            workers[kind.name.lower()] = fig
            healthy = healthy and fig["alive"]
        out["workers"] = workers
        rings = {}
        for ring in RINGS:
            try:
                with RingInspector(layout.name(ring)) as insp:
                    rings[ring] = {"fill_bytes": insp.fill_bytes(), "capacity_bytes": insp.capacity_bytes}
            except Exception as exc:  # noqa: BLE001 - status must report, not crash
                rings[ring] = {"error": str(exc)}
        out["rings"] = rings
        out["healthy"] = healthy
    finally:
        state.close()
    return out


def cluster_status(configs: list[NodeConfig]) -> dict[str, Any]:
    nodes = [node_status(c) for c in configs]
    leaders = {n.get("leader") for n in nodes if n.get("status") == "SERVING"} - {0, None}
    return {"time_unix_ms": int(time.time() * 1000), "nodes": nodes,
            "leader": next(iter(leaders)) if len(leaders) == 1 else 0,
            "healthy": all(n["healthy"] for n in nodes) and len(leaders) == 1}


def format_table(report: dict[str, Any], rates: dict[int, float] | None = None) -> str:
    lines = [f"{'node':<5}{'status':<9}{'role':<14}{'term':>6}{'commit':>10}{'events':>12}{'ev/s':>10}  workers "
             "(pid cpu% MB restarts)"]
    for n in report["nodes"]:
        if "role" not in n:
            lines.append(f"{n['node_id']:<5}{n['status']:<9}{n.get('error', '')}")
            continue
        rate = (rates or {}).get(n["node_id"], 0.0)
        ws = "  ".join(
            f"{k}:{w['pid']} {w.get('cpu_percent', '-')} {w.get('rss_mb', '-')} r{w['restarts']}"
            + ("" if w["alive"] else " DEAD")
            for k, w in n["workers"].items())
        lines.append(f"{n['node_id']:<5}{n['status']:<9}{n['role']:<14}{n['term']:>6}{n['commit_index']:>10}"
                     f"{n['events_committed']:>12}{rate:>10.0f}  {ws}")
    lines.append(f"leader: {report['leader'] or 'none'}   healthy: {report['healthy']}")
    return "\n".join(lines)
