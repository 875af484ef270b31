"""The trace's waterfall: where the median and the p99 sampled request spent its time, stage by stage.

Pure functions of the state blocks' trace areas (shmraft/ipc/trace.py): per stage its quantiles from the
histograms; the waterfall of the median request and of the p99 request from the ring of recent whole samples
(the requests whose total lies in a band around that quantile, each stage's mean over them: per request the
critical stages tile the total, so these add up, where medians of separate stages do not); each follower's
own stages; the table and its JSON; then the thin parts that read the local nodes' blocks for
`shmraft-supervisor trace` and the Prometheus families for the metrics collector.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np

from shmraft.ipc.trace import (
    BOUNDS_NS,
    BUCKETS_PER_OCTAVE,
    CTL_ALL,
    CTL_EVERY,
    FSTAGE_NAMES,
    FSTAGES,
    JOIN,
    STAGE_NAMES,
    STAGES,
    Point,
    TraceArea,
    recent_rows,
)

QUANTILES: Final = (("p50", 0.50), ("p99", 0.99))
# the typical request of a quantile: the recent samples whose total lies within this band of quantiles around it
REQUEST_BANDS: Final = {"p50": (0.45, 0.55), "p99": (0.98, 1.0)}
REQUEST_SAMPLES_MIN: Final = 20  # fewer recent samples than this: no typical-request waterfall
BAR_WIDTH: Final = 40  # characters of the widest bar in the table
# what each stage is, for the table and the docs
STAGE_DOCS: Final = {
    "ingest": "ingest: PRODUCE decoded -> handed to R1",
    "r1_wake": "R1: push -> batcher pop (wake-up)",
    "batcher_cut": "batcher: pop -> frame cut",
    "batcher_r2_push": "batcher: cut -> handed to R2",
    "r2_wake": "R2: push -> raft pop (wake-up)",
    "raft_propose": "raft: pop -> proposed (dedup, stamp)",
    "raft_r3_push": "raft: proposed -> AppendEntries handed to R3",
    "persist_wait": "  local: R3 push -> log write starts",
    "fsync": "  local: log write + fsync",
    "r3_wake": "  replicate: R3 push -> sender pop",
    "sender_send": "  replicate: sender pop -> socket write",
    "follower_round_trip": "  replicate: socket write -> first ack received",
    "quorum": "R3 push -> majority durable (slower branch)",
    "commit": "majority -> commit index moves",
    "raft_r5_push": "raft: commit -> note handed to R5",
    "r5_wake": "R5: push -> ingest sees the commit",
    "ingest_reply": "ingest: commit seen -> PRODUCED written",
    "total": "ingest receipt -> PRODUCED written",
    "f_r4_push": "sender: received -> handed to R4",
    "f_r4_wake": "R4: push -> raft steps it",
    "f_persist_wait": "raft: stepped -> log write starts",
    "f_fsync": "raft: log write + fsync",
    "f_ack_send": "raft: durable -> ack written",
    "f_total": "follower receipt -> ack written",
}


def quantile_ns(buckets: Sequence[int] | np.ndarray, q: float) -> float | None:
    """The q-quantile (0..1) of a trace histogram in ns, interpolated geometrically inside its log-scale bucket;
    None without samples; the last bound for the overflow bucket."""
    counts = np.asarray(buckets, dtype=np.float64)
    total = float(counts.sum())
    if total <= 0:
        return None
    rank = q * total
    cum = np.cumsum(counts)
    i = min(int(np.searchsorted(cum, rank, side="left")), len(counts) - 1)
    if i >= len(BOUNDS_NS):
        return float(BOUNDS_NS[-1])
    hi = float(BOUNDS_NS[i])
    lo = 0.0 if i == 0 else float(BOUNDS_NS[i - 1])
    below = float(cum[i - 1]) if i else 0.0
    frac = min(max((rank - below) / counts[i], 0.0), 1.0) if counts[i] else 1.0
    if lo <= 0:
        return hi * frac
    return lo * (hi / lo) ** frac


def _stage_rows(names: Sequence[str], hist: np.ndarray, sums: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for i, name in enumerate(names):
        count = int(hist[i].sum())
        row: dict[str, Any] = {"stage": name, "what": STAGE_DOCS.get(name, name), "count": count}
        for label, q in QUANTILES:
            v = quantile_ns(hist[i], q)
            row[f"{label}_us"] = None if v is None else round(v / 1000, 1)
        row["mean_us"] = round(int(sums[i]) / count / 1000, 1) if count else None
        rows.append(row)
    return rows


def typical_requests(samples: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per quantile label, the typical request: each stage's mean (µs) over the samples whose total lies in
    REQUEST_BANDS (a critical stage a sample lacks counts 0 there: its time is in no stage, and the sum falls
    short of the total by it), with how many samples that is; empty when there are too few samples."""
    total_i = STAGE_NAMES.index("total")
    samples = samples[~np.isnan(samples[:, total_i])] if len(samples) else samples
    if len(samples) < REQUEST_SAMPLES_MIN:
        return {}
    totals = samples[:, total_i]
    out: dict[str, dict[str, Any]] = {}
    for label, (lo_q, hi_q) in REQUEST_BANDS.items():
        lo, hi = np.quantile(totals, [lo_q, hi_q])
        band = samples[(totals >= lo) & (totals <= hi)]
        stages: dict[str, float | None] = {}
        for i, (name, _a, _b, crit) in enumerate(STAGES):
            col = band[:, i]
            if crit:
                stages[name] = round(float(np.nan_to_num(col, nan=0.0).mean()) / 1000, 1)
            else:
                have = col[~np.isnan(col)]
                stages[name] = round(float(have.mean()) / 1000, 1) if len(have) else None
        out[label] = {"samples": len(band), "stages": stages}
    return out


def leader_waterfall(hist: np.ndarray, sums: np.ndarray, samples: np.ndarray | None = None) -> dict[str, Any]:
    """Leader rows with, per quantile, each stage's start along the critical path (the sum of the critical
    stages before it; branch stages start where the quorum stage starts) and the check that the critical
    stages' means add up to the mean total (exactly, per sample; see ipc/trace.leader_durations). With the
    recent whole samples (`samples`, ipc/trace.recent_rows), the rows also carry the typical median and p99
    request (`p50_req_us`, `p99_req_us`), and the waterfall is placed along those: they add up."""
    rows = _stage_rows(STAGE_NAMES, hist, sums)
    by_name = {r["stage"]: r for r in rows}
    typical = typical_requests(samples) if samples is not None else {}
    for label, _q in QUANTILES:
        req = typical.get(label)
        for name, row in zip(STAGE_NAMES, rows, strict=True):
            row[f"{label}_req_us"] = req["stages"][name] if req else None
        at_point: dict[int, float] = {Point.RECV: 0.0}  # where each point falls along this quantile's waterfall
        critical = 0.0  # the per-stage quantiles' sum (they need not add up to the total's quantile)
        for (name, a, b, crit), row in zip(STAGES, rows, strict=True):
            v = (row[f"{label}_req_us"] if req else row[f"{label}_us"]) or 0.0
            start = at_point.get(a, 0.0) if name != "total" else 0.0
            row[f"{label}_start_us"] = round(start, 1)
            if name != "total":
                at_point.setdefault(b, start + v)
            if crit:
                critical += row[f"{label}_us"] or 0.0
        by_name["total"][f"{label}_critical_sum_us"] = round(critical, 1)
        if req:
            by_name["total"][f"{label}_placed_sum_us"] = round(
                sum(req["stages"][n] or 0.0 for n, _a, _b, c in STAGES if c), 1
            )
    crit_means = [r["mean_us"] for (_n, _a, _b, crit), r in zip(STAGES, rows, strict=True) if crit]
    total = by_name["total"]
    summary = {
        "samples": total["count"],
        "critical_mean_sum_us": round(sum(m for m in crit_means if m is not None), 1),
        "total_mean_us": total["mean_us"],
        "critical_p50_sum_us": total["p50_critical_sum_us"],
        "total_p50_us": total["p50_us"],
        "placed_along": "typical requests" if typical else "per-stage quantiles",
    }
    for label, req in typical.items():
        crit_sum = sum(req["stages"][n] or 0.0 for n, _a, _b, crit in STAGES if crit)
        summary[f"{label}_request"] = {
            "samples": req["samples"],
            "critical_sum_us": round(crit_sum, 1),
            "total_us": req["stages"]["total"],
        }
    return {"stages": rows, "summary": summary}


def follower_waterfall(hist: np.ndarray, sums: np.ndarray) -> dict[str, Any]:
    rows = _stage_rows(FSTAGE_NAMES, hist, sums)
    for label, _q in QUANTILES:
        at = 0.0
        for (_name, _a, _b, crit), row in zip(FSTAGES, rows, strict=True):
            row[f"{label}_start_us"] = round(at, 1) if crit else 0.0
            if crit:
                at += row[f"{label}_us"] or 0.0
    return {"stages": rows, "samples": rows[-1]["count"]}


def diff_histograms(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What was counted between two `TraceArea.snapshot()`s (benchmarks and `trace --since`): histogram counts
    and sums, and the whole samples finished in between as `samples` (rows of ipc/trace.recent_rows)."""
    out = {
        k: np.asarray(after[k], dtype=np.int64) - np.asarray(before[k], dtype=np.int64)
        for k in after
        if k not in ("recent", "recent_n", "samples")
    }
    if "recent" in after:
        end = int(after["recent_n"][0])
        out["samples"] = recent_rows(after["recent"], end, end - int(before["recent_n"][0]))
    return out


def merge_diffs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two `diff_histograms` results as one (counts added, samples concatenated)."""
    return {k: np.concatenate([a[k], v]) if k == "samples" else a[k] + v for k, v in b.items()}


def _samples_of(snap: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The whole samples of a snapshot (every one the ring holds) or of a diff (those in between)."""
    if "samples" in snap:
        return np.asarray(snap["samples"])
    if "recent" in snap:
        end = int(snap["recent_n"][0])
        return recent_rows(snap["recent"], end, end)
    return None


def trace_report(
    leader_id: int | None, snaps: Mapping[int, Mapping[str, np.ndarray]], sample_all: bool = False
) -> dict[str, Any]:
    """The waterfall of a cluster from each node's histograms: the leader's stages from the leader's block (or
    the node with the most leader samples), each other node's follower stages from its own block."""
    if leader_id is None or leader_id not in snaps:
        counts = {n: int(np.asarray(s["hist"])[STAGE_NAMES.index("total")].sum()) for n, s in snaps.items()}
        leader_id = max(counts, key=lambda n: counts[n]) if counts else None
    out: dict[str, Any] = {"leader": leader_id, "sample_all": sample_all, "followers": {}}
    if leader_id is not None:
        s = snaps[leader_id]
        out["leader_stages"] = leader_waterfall(np.asarray(s["hist"]), np.asarray(s["hist_sum_ns"]), _samples_of(s))
    for node_id, s in sorted(snaps.items()):
        if node_id != leader_id:
            out["followers"][str(node_id)] = follower_waterfall(np.asarray(s["fhist"]), np.asarray(s["fhist_sum_ns"]))
    return out


def _bar(start: float, length: float, scale: float) -> str:
    lead = int(round(start * scale))
    width = max(1, int(round(length * scale))) if length > 0 else 0
    return " " * lead + "#" * width


def format_waterfall(report: Mapping[str, Any], label: str = "p50") -> str:
    """The table: per stage its p50 and p99 (µs), mean, samples, and a bar placed along the `label` waterfall."""
    lines = []
    leader = report.get("leader_stages")
    if leader is None or not leader["summary"]["samples"]:
        return "no trace samples yet (shmraft-supervisor trace --all on, or wait for one request in N)"
    rows = leader["stages"]
    total = next(r for r in rows if r["stage"] == "total")
    s = leader["summary"]
    typical = f"{label}_request" in s  # the bars follow the typical request (they add up), else the quantiles
    value_key = f"{label}_req_us" if typical else f"{label}_us"
    span = total.get(f"{label}_placed_sum_us") or total.get(f"{label}_critical_sum_us") or total.get(value_key) or 1.0
    scale = BAR_WIDTH / span if span else 0.0
    along = f"{label} request" if typical else f"{label}s"
    head = f"{'stage':<20} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8} {'n':>6}"
    lhead = head + f" {'med req':>8} {'p99 req':>8}  waterfall of the {along}"
    lines.append(f"leader: node {report['leader']}" + ("  (sampling every request)" if report["sample_all"] else ""))
    lines.append(lhead)
    for r in rows:
        bar = "" if r["stage"] == "total" else _bar(r[f"{label}_start_us"], r[value_key] or 0.0, scale)
        lines.append(
            f"{r['stage']:<20} {_num(r['p50_us']):>8} {_num(r['p99_us']):>8} {_num(r['mean_us']):>8} "
            f"{r['count']:>6} {_num(r.get('p50_req_us')):>8} {_num(r.get('p99_req_us')):>8}  {bar}"
        )
    for lab, name in (("p50", "median"), ("p99", "p99")):
        req = s.get(f"{lab}_request")
        if req:
            lines.append(
                f"the {name} request ({req['samples']} recent samples around the {lab} total): critical stages "
                f"add up to {_num(req['critical_sum_us'])} µs of its {_num(req['total_us'])} µs"
            )
    lines.append(
        f"per-stage p50s add up to {_num(s['critical_p50_sum_us'])} µs (median total {_num(s['total_p50_us'])} µs; "
        f"medians of separate stages need not add up); means add up to {_num(s['critical_mean_sum_us'])} µs "
        f"(mean total {_num(s['total_mean_us'])} µs)"
    )
    head += f"  {label} waterfall"
    for node_id, f in report["followers"].items():
        lines.append("")
        lines.append(f"follower: node {node_id} (its own clock, from its receipt of an AppendEntries)")
        lines.append(head)
        fspan = next(r for r in f["stages"] if r["stage"] == "f_total")[f"{label}_us"] or 1.0
        fscale = BAR_WIDTH / fspan
        for r in f["stages"]:
            bar = "" if r["stage"] == "f_total" else _bar(r[f"{label}_start_us"], r[f"{label}_us"] or 0.0, fscale)
            lines.append(
                f"{r['stage']:<20} {_num(r['p50_us']):>8} {_num(r['p99_us']):>8} {_num(r['mean_us']):>8} "
                f"{r['count']:>6}  {bar}"
            )
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# --- reading live blocks --------------------------------------------------------------------------------------------


def set_sampling(area: TraceArea, sample_all: bool | None = None, every: int | None = None) -> None:
    """The trace command's control words (it is their single writer)."""
    if sample_all is not None:
        area.ctl[CTL_ALL] = 1 if sample_all else 0
    if every is not None:
        area.ctl[CTL_EVERY] = every


def sampling_all(area: TraceArea) -> bool:
    return bool(area.ctl[CTL_ALL])


def collect_report(configs: Sequence[Any], sample_all: bool | None = None, every: int | None = None) -> dict[str, Any]:
    """Read (and, when asked, set the sampling of) every node of `configs` running on this machine."""
    from shmraft.ipc.state import StateBlockError
    from shmraft.node.layout import NodeLayout
    from shmraft.raft.types import Role

    snaps: dict[int, dict[str, np.ndarray]] = {}
    leader_id = None
    flag = False
    for c in configs:
        try:
            state = NodeLayout(c).attach_state()
        except StateBlockError:
            continue
        try:
            set_sampling(state.trace, sample_all, every)
            flag = flag or sampling_all(state.trace)
            snaps[c.node_id] = state.trace.snapshot()
            if state.get("role") == Role.LEADER:
                leader_id = c.node_id
        finally:
            state.close()
    report = trace_report(leader_id, snaps, flag)
    report["nodes_read"] = sorted(snaps)
    return report


# --- Prometheus -----------------------------------------------------------------------------------------------------

EXPORT_BOUNDS_NS: Final = BOUNDS_NS[::BUCKETS_PER_OCTAVE]  # one bucket per octave (1 µs .. 4.2 s) is exported


def prometheus_buckets(hist_row: np.ndarray) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs at octave bounds (exact: they are bucket bounds) and +Inf."""
    cum = np.cumsum(np.asarray(hist_row, dtype=np.int64))
    out = [(repr(BOUNDS_NS[i] / 1e9), int(cum[i])) for i in range(0, len(BOUNDS_NS), BUCKETS_PER_OCTAVE)]
    out.append(("+Inf", int(cum[-1])))
    return out


def stage_histograms(area: TraceArea) -> Iterator[tuple[str, str, list[tuple[str, int]], float]]:
    """(role, stage, buckets, sum in seconds) for every stage with samples; role "leader" or "follower"."""
    for role, names, hist, sums in (
        ("leader", STAGE_NAMES, area.hist, area.hist_sum_ns),
        ("follower", FSTAGE_NAMES, area.fhist, area.fhist_sum_ns),
    ):
        for i, name in enumerate(names):
            row = np.array(hist[i])
            if row.sum():
                yield role, name, prometheus_buckets(row), int(sums[i]) / 1e9


assert math.isclose(EXPORT_BOUNDS_NS[1] / EXPORT_BOUNDS_NS[0], 2.0)
assert JOIN not in tuple(Point)
