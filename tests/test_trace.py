"""The trace's pure parts: buckets, per-sample stage durations, quantiles, the waterfall, the Prometheus
buckets; and the workers' hooks driven in one process over one trace area, in the order the pipeline calls them."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from shmraft.cli.supervisor import main as supervisor_main
from shmraft.ipc.trace import (
    BOUNDS_NS,
    BUCKETS,
    FSTAGE_NAMES,
    RECENT_SAMPLES,
    STAGE_NAMES,
    STAGES,
    TRACE_BYTES,
    BatcherTrace,
    FPoint,
    IngestTrace,
    Point,
    RaftTrace,
    SenderTrace,
    TraceArea,
    add_durations,
    bucket_of,
    follower_durations,
    leader_durations,
    recent_rows,
    record_recent,
)
from shmraft.node.batching import BLOCK_HEAD, BatchCutter
from shmraft.raft.messages import AppendEntries, AppendResponse
from shmraft.raft.types import Entry
from shmraft.supervisor.waterfall import (
    diff_histograms,
    format_waterfall,
    leader_waterfall,
    merge_diffs,
    prometheus_buckets,
    quantile_ns,
    trace_report,
)

CRITICAL = [name for name, _a, _b, crit in STAGES if crit]


def area() -> TraceArea:
    return TraceArea(bytearray(TRACE_BYTES), 0)


# --- buckets and quantiles --------------------------------------------------------------------------------------


def test_buckets_are_log_spaced_four_per_octave_from_one_microsecond() -> None:
    assert BOUNDS_NS[0] == 1000 and all(b > a for a, b in zip(BOUNDS_NS, BOUNDS_NS[1:], strict=False))
    assert BOUNDS_NS[4] == 2000 and BOUNDS_NS[8] == 4000
    for i, bound in enumerate(BOUNDS_NS):
        assert bucket_of(bound) == i  # a bound belongs to its own bucket (le)
        assert bucket_of(bound + 1) == i + 1
    assert bucket_of(0) == 0
    assert bucket_of(10**12) == BUCKETS - 1


def test_quantile_lies_in_the_bucket_of_its_samples_and_grows_with_q() -> None:
    hist = np.zeros(BUCKETS, np.int64)
    assert quantile_ns(hist, 0.5) is None
    rng = random.Random(3)
    samples = [rng.randrange(20_000, 3_000_000) for _ in range(2000)]
    for s in samples:
        hist[bucket_of(s)] += 1
    qs = [quantile_ns(hist, q) for q in (0.1, 0.5, 0.9, 0.99)]
    assert qs == sorted(qs)
    exact = sorted(samples)[len(samples) // 2]
    b = bucket_of(exact)
    assert BOUNDS_NS[b - 1] <= qs[1] <= BOUNDS_NS[b]  # within the median sample's bucket


# --- stage durations ---------------------------------------------------------------------------------------------


def _path_points(rng: random.Random) -> dict[int, int]:
    """A plausible sample: points in path order with random gaps; the two branches after R3_PUSH race."""
    t = 1_000_000
    p: dict[int, int] = {}
    for pt in (Point.RECV, Point.R1_PUSH, Point.BATCH_POP, Point.CUT, Point.R2_PUSH, Point.RAFT_POP):
        t += rng.randrange(1_000, 300_000)
        p[pt] = t
    t += rng.randrange(1_000, 100_000)
    p[Point.PROPOSE] = t
    t += rng.randrange(1_000, 100_000)
    p[Point.R3_PUSH] = t
    p[Point.PERSIST_START] = t + rng.randrange(1_000, 100_000)
    p[Point.PERSIST_END] = p[Point.PERSIST_START] + rng.randrange(50_000, 3_000_000)
    p[Point.SENDER_POP] = t + rng.randrange(1_000, 300_000)
    p[Point.SEND] = p[Point.SENDER_POP] + rng.randrange(1_000, 100_000)
    p[Point.ACK_RECV] = p[Point.SEND] + rng.randrange(100_000, 3_000_000)
    t = max(p[Point.PERSIST_END], p[Point.ACK_RECV]) + rng.randrange(1_000, 100_000)
    p[Point.COMMIT] = t
    for pt in (Point.R5_PUSH, Point.R5_POP, Point.REPLY):
        t += rng.randrange(1_000, 300_000)
        p[pt] = t
    return p


def test_critical_stages_tile_the_total_exactly_and_branches_are_differences() -> None:
    rng = random.Random(7)
    for _ in range(300):
        p = _path_points(rng)
        d = leader_durations(p)
        assert set(d) == set(STAGE_NAMES)
        assert sum(d[n] for n in CRITICAL) == d["total"] == p[Point.REPLY] - p[Point.RECV]
        assert d["fsync"] == p[Point.PERSIST_END] - p[Point.PERSIST_START]
        assert d["follower_round_trip"] == p[Point.ACK_RECV] - p[Point.SEND]
        assert d["quorum"] == max(p[Point.ACK_RECV], p[Point.PERSIST_END]) - p[Point.R3_PUSH]


def test_a_point_stamped_late_by_a_racing_worker_is_capped_and_the_tiling_holds() -> None:
    p = _path_points(random.Random(1))
    p[Point.R5_PUSH] = p[Point.REPLY] + 5_000  # raft stamped after ingest had already answered
    d = leader_durations(p)
    assert min(d.values()) >= 0
    assert sum(d[n] for n in CRITICAL) == d["total"]


def test_missing_points_leave_their_stages_out() -> None:
    p = _path_points(random.Random(2))
    for pt in (Point.SENDER_POP, Point.SEND, Point.ACK_RECV):  # a lone node: no replication
        del p[pt]
    d = leader_durations(p)
    assert "r3_wake" not in d and "follower_round_trip" not in d
    assert d["quorum"] == p[Point.PERSIST_END] - p[Point.R3_PUSH]
    assert sum(d[n] for n in CRITICAL) == d["total"]


def test_a_commit_on_the_followers_before_the_leaders_own_fsync_still_tiles() -> None:
    """Both followers acknowledged before the leader's persist thread synced: the sample is answered with no
    PERSIST_END; the quorum stage then ends at the commit, and the critical stages still tile the total."""
    p = _path_points(random.Random(3))
    del p[Point.PERSIST_END]
    d = leader_durations(p)
    assert "fsync" not in d
    assert d["quorum"] == p[Point.COMMIT] - p[Point.R3_PUSH] and d["commit"] == 0
    assert sum(d[n] for n in CRITICAL) == d["total"]


def test_follower_durations() -> None:
    p = {FPoint.RECV: 10, FPoint.R4_PUSH: 30, FPoint.RAFT_POP: 80, FPoint.PERSIST_START: 90}
    p |= {FPoint.PERSIST_END: 500, FPoint.ACK_SENT: 520}
    d = follower_durations(p)
    assert d == {
        "f_r4_push": 20,
        "f_r4_wake": 50,
        "f_persist_wait": 10,
        "f_fsync": 410,
        "f_ack_send": 20,
        "f_total": 510,
    }


# --- the waterfall -----------------------------------------------------------------------------------------------


def test_waterfall_places_each_stage_after_the_ones_before_it_and_the_means_add_up() -> None:
    a = area()
    rng = random.Random(11)
    for _ in range(500):
        add_durations(a.hist, a.hist_sum_ns, STAGE_NAMES, leader_durations(_path_points(rng)))
    w = leader_waterfall(np.array(a.hist), np.array(a.hist_sum_ns))
    rows = {r["stage"]: r for r in w["stages"]}
    assert all(r["count"] == 500 for r in rows.values())
    at = 0.0
    for name in CRITICAL:
        assert rows[name]["p50_start_us"] == pytest.approx(at, abs=0.2)
        at += rows[name]["p50_us"]
    # branches start where the quorum stage starts, and run one after the other
    assert rows["persist_wait"]["p50_start_us"] == rows["quorum"]["p50_start_us"]
    assert rows["fsync"]["p50_start_us"] == pytest.approx(
        rows["persist_wait"]["p50_start_us"] + rows["persist_wait"]["p50_us"], abs=0.2
    )
    s = w["summary"]
    assert s["critical_mean_sum_us"] == pytest.approx(s["total_mean_us"], abs=0.1 * len(CRITICAL))
    assert s["critical_p50_sum_us"] == pytest.approx(at, abs=0.2)


def test_the_median_request_adds_up_where_per_stage_medians_do_not() -> None:
    """Skewed stages: the per-stage p50s fall short of the median total, the typical median request (whole
    samples around the median total) adds up to it, and the bars are placed along it."""
    a = area()
    rng = random.Random(3)
    for _ in range(800):
        d = leader_durations(_path_points(rng))
        add_durations(a.hist, a.hist_sum_ns, STAGE_NAMES, d)
        record_recent(a.recent, a.recent_n, d)
    samples = recent_rows(a.recent, int(a.recent_n[0]), 800)
    assert samples.shape == (800, len(STAGES))
    w = leader_waterfall(np.array(a.hist), np.array(a.hist_sum_ns), samples)
    s = w["summary"]
    med = s["p50_request"]
    assert med["samples"] >= 60
    assert med["critical_sum_us"] == pytest.approx(med["total_us"], abs=0.1 * len(CRITICAL))
    assert med["total_us"] == pytest.approx(s["total_p50_us"], rel=0.1)
    assert s["p99_request"]["total_us"] > med["total_us"]
    rows = {r["stage"]: r for r in w["stages"]}
    at = 0.0
    for name in CRITICAL:
        assert rows[name]["p50_start_us"] == pytest.approx(at, abs=0.2)
        at += rows[name]["p50_req_us"]
    assert "the median request" in format_waterfall(trace_report(1, {1: a.snapshot()}))


def test_the_recent_ring_keeps_the_last_samples_and_a_diff_takes_those_in_between() -> None:
    a = area()
    for i in range(RECENT_SAMPLES + 10):
        record_recent(a.recent, a.recent_n, {"total": 1000 + i, "ingest": 7})
    rows = recent_rows(a.recent, int(a.recent_n[0]), 5)
    assert list(rows[:, STAGE_NAMES.index("total")]) == [1000 + RECENT_SAMPLES + k for k in range(5, 10)]
    assert np.isnan(rows[:, STAGE_NAMES.index("commit")]).all()  # a stage the samples lacked
    before = a.snapshot()
    for i in range(3):
        record_recent(a.recent, a.recent_n, {"total": 5 + i})
    d1 = diff_histograms(a.snapshot(), before)
    assert list(d1["samples"][:, STAGE_NAMES.index("total")]) == [5, 6, 7]
    both = merge_diffs(d1, d1)
    assert len(both["samples"]) == 6 and both["hist"].shape == d1["hist"].shape


def test_report_and_table_name_the_leader_and_each_follower() -> None:
    lead, fol = area(), area()
    rng = random.Random(5)
    for _ in range(50):
        add_durations(lead.hist, lead.hist_sum_ns, STAGE_NAMES, leader_durations(_path_points(rng)))
        add_durations(fol.fhist, fol.fhist_sum_ns, FSTAGE_NAMES, {n: rng.randrange(1000, 10**6) for n in FSTAGE_NAMES})
    report = trace_report(None, {1: fol.snapshot(), 2: lead.snapshot()})  # leader unknown: the one with samples
    assert report["leader"] == 2 and list(report["followers"]) == ["1"]
    text = format_waterfall(report)
    assert "leader: node 2" in text and "follower: node 1" in text
    for name in STAGE_NAMES + FSTAGE_NAMES:
        assert name in text
    assert "no trace samples" in format_waterfall(trace_report(None, {}))


def test_prometheus_buckets_are_cumulative_at_octaves_and_end_with_every_sample() -> None:
    hist = np.zeros(BUCKETS, np.int64)
    for ns in (500, 1000, 1500, 3_000_000, 10**12):
        hist[bucket_of(ns)] += 1
    b = prometheus_buckets(hist)
    assert b[0] == (repr(1e-6), 2) and b[1] == (repr(2e-6), 3)
    assert b[-1] == ("+Inf", 5)
    counts = [c for _le, c in b]
    assert counts == sorted(counts)


# --- the hooks, in pipeline order ------------------------------------------------------------------------------


def _produce_body(producer_id: int, first_sequence: int, events: list[bytes]) -> bytes:
    lengths = struct.pack(f"<{len(events)}I", *map(len, events))
    return BLOCK_HEAD.pack(producer_id, first_sequence, 1000, len(events)) + lengths + b"".join(events)


def _leader_path(a: TraceArea, ingest: IngestTrace, cid: int, seq: int, index: int) -> None:
    batcher, raft, sender = BatcherTrace(a, 1), RaftTrace(a, 1), SenderTrace(a, 1)
    cutter = BatchCutter(first_batch_id=100 + index)
    other = _produce_body(9, 0, [b"before"] * 3)  # a block ahead of the sample in the same frame
    body = _produce_body(7, seq, [b"x" * 10, b"y" * 5])
    if ingest.sample():
        ingest.admitted(7, seq, 1, cid, queued=False)
    batcher.popped([other, body], cutter.pending_events)
    cutter.add(other)
    cutter.add(body)
    frames = cutter.cut(flush=True)
    batcher.cut(frames)
    raft.frames_taken()
    raft.proposed(100 + index, index)
    entry = Entry(index, 1, frames[0])
    raft.before_r3([AppendEntries(1, 2, 1, index - 1, 1, (entry,), 0)])
    sender.popped()
    sender.sent()
    raft.persisting([entry])
    raft.persisted([entry])
    raft.stepped(AppendResponse(2, 1, 1, index, True))
    raft.committed(index)
    raft.before_r5()
    ingest.commit_seen(index)
    ingest.answered(1, cid + 1000, True)  # another request's answer: not the sample
    ingest.answered(1, cid, True)


def test_one_sample_through_every_hook_counts_every_leader_stage_once() -> None:
    a = area()
    ingest = IngestTrace(a, 1)
    _leader_path(a, ingest, cid=5, seq=0, index=1)
    counts = {n: int(a.hist[i].sum()) for i, n in enumerate(STAGE_NAMES)}
    assert counts == {n: 1 for n in STAGE_NAMES}
    crit = sum(int(a.hist_sum_ns[STAGE_NAMES.index(n)]) for n in CRITICAL)
    assert crit == int(a.hist_sum_ns[STAGE_NAMES.index("total")]) > 0
    _leader_path(a, ingest, cid=6, seq=2, index=2)  # the next sample goes through too
    assert int(a.hist[STAGE_NAMES.index("r2_wake")].sum()) == 2


def test_one_in_n_is_sampled_and_all_when_asked() -> None:
    a = area()
    ingest = IngestTrace(a, 4)
    picked = []
    for _ in range(12):
        picked.append(ingest.sample())  # none admitted, so none in flight
    assert picked == [False, False, False, True] * 3
    a.ctl[0] = 1  # ALL
    assert all(ingest.sample() for _ in range(5))
    off = IngestTrace(area(), 0)
    assert not any(off.sample() for _ in range(100))


def test_a_sample_in_flight_blocks_the_next_until_answered() -> None:
    a = area()
    ingest = IngestTrace(a, 1)
    assert ingest.sample()
    ingest.admitted(7, 0, 1, 5, queued=False)
    assert not ingest.sample()  # one sample at a time
    ingest.answered(1, 5, False)  # an error answer abandons it
    assert int(a.hist.sum()) == 0
    assert ingest.sample()


def test_a_follower_sample_counts_every_follower_stage_once() -> None:
    a = area()
    sender, raft = SenderTrace(a, 1), RaftTrace(a, 1)
    sender.received()
    sender.before_r4()
    entry = Entry(5, 1, b"frame")
    raft.stepped(AppendEntries(1, 2, 1, 4, 1, (entry,), 0))
    raft.persisting([entry])
    raft.persisted([entry])
    raft.sent([AppendResponse(2, 1, 1, 4, True)])  # an older index: not yet
    assert int(a.fhist.sum()) == 0
    raft.sent([AppendResponse(2, 1, 1, 5, True)])
    assert {n: int(a.fhist[i].sum()) for i, n in enumerate(FSTAGE_NAMES)} == {n: 1 for n in FSTAGE_NAMES}


def test_a_direct_append_counts_every_leader_stage_with_no_sender_hop() -> None:
    """A small append sent by the raft worker on the consensus link (no R3, no sender): the sender's points
    come from the raft row, r3_wake is zero, and the critical stages still tile the total."""
    a = area()
    ingest = IngestTrace(a, 1)
    batcher, raft = BatcherTrace(a, 1), RaftTrace(a, 1)
    cutter = BatchCutter(first_batch_id=200)
    body = _produce_body(7, 0, [b"x" * 10])
    assert ingest.sample()
    ingest.admitted(7, 0, 1, 9, queued=False)
    batcher.popped([body], cutter.pending_events)
    cutter.add(body)
    frames = cutter.cut(flush=True)
    batcher.cut(frames)
    raft.frames_taken()
    raft.proposed(200, 3)
    entry = Entry(3, 1, frames[0])
    m = AppendEntries(1, 2, 1, 2, 1, (entry,), 0)
    raft.before_r3([m])
    raft.sent_direct(m)
    raft.persisting([entry])
    raft.persisted([entry])
    raft.stepped(AppendResponse(2, 1, 1, 3, True))
    raft.committed(3)
    raft.before_r5()
    ingest.commit_seen(3)
    ingest.answered(1, 9, True)
    counts = {n: int(a.hist[i].sum()) for i, n in enumerate(STAGE_NAMES)}
    assert counts == {n: 1 for n in STAGE_NAMES}
    assert int(a.hist_sum_ns[STAGE_NAMES.index("r3_wake")]) == 0
    crit = sum(int(a.hist_sum_ns[STAGE_NAMES.index(n)]) for n in CRITICAL)
    assert crit == int(a.hist_sum_ns[STAGE_NAMES.index("total")]) > 0


def test_a_direct_append_starts_a_follower_sample_without_the_sender() -> None:
    a = area()
    raft = RaftTrace(a, 2)  # one direct append in two
    entries = [Entry(i, 1, b"frame") for i in (5, 6, 7)]
    raft.stepped(AppendEntries(1, 2, 1, 4, 1, (entries[0],), 0), direct=True)  # count 1: not sampled
    raft.persisting([entries[0]])
    raft.persisted([entries[0]])
    raft.sent([AppendResponse(2, 1, 1, 5, True)])
    assert int(a.fhist.sum()) == 0
    raft.stepped(AppendEntries(1, 2, 1, 5, 1, (entries[1],), 0), direct=True)  # count 2: sampled
    raft.stepped(AppendEntries(1, 2, 1, 6, 1, (entries[2],), 0), direct=True)  # in flight: not a new one
    raft.persisting(entries[1:])
    raft.persisted(entries[1:])
    raft.sent([AppendResponse(2, 1, 1, 7, True)])
    counts = {n: int(a.fhist[i].sum()) for i, n in enumerate(FSTAGE_NAMES)}
    assert counts == {n: 1 for n in FSTAGE_NAMES}
    assert int(a.fhist_sum_ns[FSTAGE_NAMES.index("f_r4_wake")]) == 0


def test_trace_command_without_a_running_cluster_says_so(tmp_path, capsys) -> None:
    assert supervisor_main(["trace", "--data-dir", str(tmp_path), "--cluster-id", "nothingheretrace"]) == 1
    assert "no trace samples" in capsys.readouterr().out
