"""Health of a node and its workers: read from the shared state block, with psutil figures per process.

Used by `shmraft-supervisor status` (table or JSON) and by the live view of `up`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import psutil

from shmraft.config import NodeConfig
from shmraft.ipc.state import NodeStatus, StateBlockError, Worker
from shmraft.node import members as mb
from shmraft.node.layout import NodeLayout
from shmraft.supervisor.metrics import node_figures, ring_figures

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
            return {
                "alive": alive,
                "cpu_percent": round(proc.cpu_percent(None), 1),
                "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            }
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
        f = node_figures(state)
        status = NodeStatus[f["status"]]
        lat = f["commit_latency"]
        out.update(
            status=f["status"],
            role=f["role"],
            term=f["term"],
            leader=f["leader"],
            commit_index=f["commit_index"],
            last_index=f["last_index"],
            events_committed=f["events_committed"],
            batches_committed=f["batches_committed"],
            bytes_committed=f["bytes_committed"],
            elections=f["elections"],
            leader_changes=f["leader_changes"],
            fsyncs=f["fsyncs"],
            fsync_ms_total=round(f["fsync_ns"] / 1e6, 1),
            errors=sum(v for k, v in f["errors_by_kind"].items() if k != "dedup_hit"),
            errors_by_kind=f["errors_by_kind"],
            dedup_hits=f["errors_by_kind"]["dedup_hit"],
            events_in=f["events_in"],
            storage=f["storage"],
            recovering=f["recovering"],
            storage_fault_since_unix_ms=f["storage_fault_since_unix_ms"],
            quarantines=f["quarantines"],
            snapshots_sent=f["snapshots_sent"],
            snapshots_installed=f["snapshots_installed"],
            leader_stall_transfers=f["leader_stall_transfers"],
            followers=f["followers"],
            membership=_membership(config, state),
            commit_latency_ms={
                "count": lat["count"],
                "p50": lat["p50_ms"],
                "p99": lat["p99_ms"],
                "mean": round(lat["sum_us"] / lat["count"] / 1000, 3) if lat["count"] else None,
            },
            metrics_url=f"http://{config.me.host}:{config.me.metrics_port}/metrics",
        )
        workers = {}
        # a node whose log is unusable or still being re-fetched is up but not healthy
        healthy = status == NodeStatus.SERVING and f["storage"] == "ok" and not f["recovering"]
        for kind in Worker:
            rec = state.workers[kind]
            fig = _process_figures(int(rec["pid"]))
            fig.update(pid=int(rec["pid"]), heartbeat=int(rec["heartbeat"]), restarts=int(rec["restarts"]))
            workers[kind.name.lower()] = fig
            healthy = healthy and fig["alive"]
        out["workers"] = workers
        rings = ring_figures(layout)
        out["rings"] = rings
        out["healthy"] = healthy
    finally:
        state.close()
    return out


def with_members_in_effect(configs: list[NodeConfig]) -> list[NodeConfig]:
    """`configs` plus a config for every member of the configuration in effect that they do not name (a node
    added with `members add` or `join`): the newest members file among the configured nodes (highest log
    index) says who they are and where they listen. A configured node that was removed stays listed (its
    status says REMOVED or DOWN). Without any members file, `configs` as they are."""
    newest: mb.MembersView | None = None
    for c in configs:
        try:
            view = mb.read_members_file(c.node_dir)
        except (OSError, mb.AddressError):
            continue  # unreadable: its own status line says so
        if view is not None and (newest is None or view.index > newest.index):
            newest = view
    if newest is None or not configs:
        return configs
    known = {c.node_id for c in configs}
    base = configs[0]
    added = [v.member for v in newest.members if v.member.node_id not in known]
    members = tuple(m for m in base.members if m.node_id not in {a.node_id for a in added}) + tuple(added)
    return configs + [replace(base, node_id=m.node_id, members=members) for m in added]


def cluster_status(configs: list[NodeConfig]) -> dict[str, Any]:
    nodes = [node_status(c) for c in configs]
    leaders = {n.get("leader") for n in nodes if n.get("status") == "SERVING"} - {0, None}
    return {
        "time_unix_ms": int(time.time() * 1000),
        "nodes": nodes,
        "leader": next(iter(leaders)) if len(leaders) == 1 else 0,
        "healthy": all(n["healthy"] for n in nodes) and len(leaders) == 1,
    }


def format_table(report: dict[str, Any], rates: dict[int, float] | None = None) -> str:
    lines = [
        f"{'node':<5}{'status':<9}{'role':<14}{'term':>6}{'commit':>10}{'events':>12}{'ev/s':>10}{'p99 ms':>9}"
        "  workers (pid cpu% MB restarts)"
    ]
    for n in report["nodes"]:
        if "role" not in n:
            lines.append(f"{n['node_id']:<5}{n['status']:<9}{n.get('error', '')}")
            continue
        rate = (rates or {}).get(n["node_id"], 0.0)
        ws = "  ".join(
            f"{k}:{w['pid']} {w.get('cpu_percent', '-')} {w.get('rss_mb', '-')} r{w['restarts']}"
            + ("" if w["alive"] else " DEAD")
            for k, w in n["workers"].items()
        )
        lines.append(
            f"{n['node_id']:<5}{_shown_status(n):<9}{n['role']:<14}{n['term']:>6}{n['commit_index']:>10}"
            f"{n['events_committed']:>12}{rate:>10.0f}{_ms(n['commit_latency_ms']['p99']):>9}  {ws}"
        )
        lines.append(f"     {membership_line(n)}")
        lines += [f"     {line}" for line in follower_lines(n.get("followers", []))]
        if n.get("leader_stall_transfers"):
            lines.append(
                f"     leadership handed over {n['leader_stall_transfers']} time(s): its ingest or batcher was stalled"
            )
    lines.append(f"leader: {report['leader'] or 'none'}   healthy: {report['healthy']}")
    return "\n".join(lines)


def _membership(config: NodeConfig, state: Any) -> dict[str, Any]:
    """The configuration in effect on the node (its members file) and whether it was removed from it."""
    try:
        view = mb.current_view(config)
    except (OSError, mb.AddressError) as exc:
        return {"error": str(exc)}
    return {
        "config_index": int(state.get("config_index")),
        "voters": view.voters(),
        "learners": view.learners(),
        "removed": bool(state.get("removed")),
    }


def membership_line(n: dict[str, Any]) -> str:
    """One line: the members as the node sees them, and REMOVED when it is not one of them any more."""
    m = n.get("membership") or {}
    if "voters" not in m:
        return f"membership: {m.get('error', 'unknown')}"
    removed = "  REMOVED: this node is not a member (it stays quiet; stop it)" if m["removed"] else ""
    behind = {f["node_id"]: f["entries_behind"] for f in n.get("followers", [])}  # the leader's view only
    learners = [f"{i} ({behind[i]} behind)" if i in behind else str(i) for i in m["learners"]]
    return f"members at {m['config_index']}: voters {m['voters']}  learners [{', '.join(learners)}]{removed}"


def follower_lines(followers: list[dict[str, Any]]) -> list[str]:
    """One line per follower the leader is not simply replicating to: catching up through a snapshot
    (bytes sent and acknowledged of the total), waiting for one (RESEED), or being probed; with entries behind."""
    out = []
    for fol in followers:
        state = fol["state"]
        if state == "REPLICATE":
            continue
        line = f"follower {fol['node_id']}: {state}, {fol['entries_behind']} entries behind"
        if state == "SNAPSHOT":
            total = fol["snapshot_total_bytes"]
            pct = 100 * fol["snapshot_acked_bytes"] / total if total else 0.0
            line += (
                f", snapshot at {fol['snapshot_index']}: {fol['snapshot_sent_bytes']} bytes sent, "
                f"{fol['snapshot_acked_bytes']} of {total} acknowledged ({pct:.0f}%)"
            )
        elif state == "RESEED":
            line += ", waiting for the leader's next snapshot"
        out.append(line)
    return out


def _shown_status(n: dict[str, Any]) -> str:
    """SERVING unless the log storage says otherwise (DISK_FULL, IO_ERROR, CORRUPT...) or it re-fetches."""
    if n["status"] == "SERVING" and n.get("storage", "ok") != "ok":
        return n["storage"].upper()
    if n["status"] == "SERVING" and n.get("recovering"):
        return "RECOVER"
    return n["status"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
