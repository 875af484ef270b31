"""Prometheus metrics (issue 5.2): the histogram arithmetic, and a real cluster scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from clusterkit import Harness, wait_for
from prometheus_client.parser import text_string_to_metric_families

from shmraft.ipc.state import LATENCY_BOUNDS_MS, LATENCY_BUCKETS, NODE_DTYPE, Worker, latency_bucket
from shmraft.node.layout import Ring
from shmraft.supervisor.metrics import latency_quantile
from shmraft.supervisor.status import cluster_status, follower_lines, format_table

# --- units -------------------------------------------------------------------------------------------------


def test_status_lines_show_a_follower_catching_up_through_a_snapshot() -> None:
    base = {"match": 0, "snapshot_index": 0, "snapshot_sent_bytes": 0, "snapshot_acked_bytes": 0}
    followers = [
        {**base, "node_id": 2, "state": "REPLICATE", "entries_behind": 0, "snapshot_total_bytes": 0},
        {
            **base,
            "node_id": 3,
            "state": "SNAPSHOT",
            "entries_behind": 150_000,
            "snapshot_index": 140_000,
            "snapshot_sent_bytes": 3000,
            "snapshot_acked_bytes": 2000,
            "snapshot_total_bytes": 8000,
        },
        {**base, "node_id": 4, "state": "RESEED", "entries_behind": 9, "snapshot_total_bytes": 0},
    ]
    assert follower_lines(followers) == [
        "follower 3: SNAPSHOT, 150000 entries behind, snapshot at 140000: 3000 bytes sent, 2000 of 8000 "
        "acknowledged (25%)",
        "follower 4: RESEED, 9 entries behind, waiting for the leader's next snapshot",
    ]


def test_latency_buckets_are_log_spaced_from_a_quarter_ms_to_4096_ms() -> None:
    assert LATENCY_BUCKETS == 16 and NODE_DTYPE["commit_latency_buckets"].shape == (16,)
    assert LATENCY_BOUNDS_MS[0] == 0.25 and LATENCY_BOUNDS_MS[-1] == 4096
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        ns = int(bound * 1_000_000)
        assert latency_bucket(ns) == i  # a bound belongs to its bucket (le)
        assert latency_bucket(ns + 1) == i + 1
    assert latency_bucket(0) == 0
    assert latency_bucket(10**13) == LATENCY_BUCKETS - 1  # +Inf


def test_latency_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = [0] * LATENCY_BUCKETS
    assert latency_quantile(buckets, 0.5) is None
    buckets[3] = 100  # (1, 2] ms
    assert latency_quantile(buckets, 0.5) == pytest.approx(1.5)
    assert latency_quantile(buckets, 0.99) == pytest.approx(1.99)
    buckets[-1] = 1  # one beyond 4096 ms: reported as the last finite bound
    assert latency_quantile(buckets, 1.0) == 4096


# --- a real cluster ----------------------------------------------------------------------------------------


def scrape(h: Harness, node_id: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one node's /metrics."""
    url = f"http://127.0.0.1:{h.config(node_id).me.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.get("node") == str(node_id), s
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict[str, dict[tuple, float]], name: str, node_id: int, **labels: str) -> float:
    return m[name][tuple(sorted({"node": str(node_id), **labels}.items()))]


@pytest.mark.slow
def test_every_node_serves_metrics_that_match_what_was_produced(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.start()
        nodes = [c.node_id for c in h.configs]
        requests, per_request = 12, 7
        with h.client() as client:
            for r in range(requests):
                client.produce_many([b"m%03d-%d" % (r, i) for i in range(per_request)])
        events = requests * per_request
        leader = h.wait_leader()

        m = scrape(h, leader)
        assert value(m, "shmraft_events_committed_total", leader) == events
        assert value(m, "shmraft_events_in_total", leader) == events
        assert value(m, "shmraft_batches_committed_total", leader) >= 1
        assert value(m, "shmraft_bytes_committed_total", leader) > events * 6
        assert value(m, "shmraft_commit_latency_seconds_count", leader) == requests
        assert value(m, "shmraft_commit_latency_seconds_bucket", leader, le="+Inf") == requests
        assert value(m, "shmraft_commit_latency_seconds_sum", leader) > 0
        les = [dict(k)["le"] for k in m["shmraft_commit_latency_seconds_bucket"]]
        assert len(les) == 16
        assert value(m, "shmraft_leader_id", leader) == leader
        assert value(m, "shmraft_commit_index", leader) >= 1
        assert value(m, "shmraft_fsyncs_total", leader) >= 1
        assert value(m, "shmraft_fsync_seconds_total", leader) > 0
        for kind in ("client_protocol", "peer_protocol", "peer_refused", "dedup_hit"):
            assert value(m, "shmraft_errors_total", leader, kind=kind) == 0
        assert value(m, "shmraft_snapshots_sent_total", leader) == 0  # nobody was behind the log start
        assert value(m, "shmraft_snapshots_installed_total", leader) == 0

        def follower_view(n: int) -> float | None:
            """The leader's entries_behind for follower n in REPLICATE (None until published)."""
            samples = scrape(h, leader).get("shmraft_follower_entries_behind", {})
            key = tuple(sorted({"node": str(leader), "follower": str(n), "state": "replicate"}.items()))
            return samples.get(key)

        for n in nodes:
            if n != leader:  # the leader's view of each follower, published every 200 ms
                wait_for(lambda n=n: follower_view(n) == 0, 20, f"the leader to see follower {n} caught up")

        for n in nodes:  # followers catch up; every node has the full set of families
            wait_for(
                lambda n=n: value(scrape(h, n), "shmraft_events_committed_total", n) == events,
                20,
                f"node {n} to count {events} committed events",
            )
            m = scrape(h, n)
            for ring in Ring:
                assert value(m, "shmraft_ring_fill_bytes", n, ring=ring) >= 0
                assert value(m, "shmraft_ring_capacity_bytes", n, ring=ring) > 0
            for w in ("raft", "sender", "batcher", "ingest"):
                assert value(m, "shmraft_worker_up", n, worker=w) == 1
                assert value(m, "shmraft_worker_heartbeats_total", n, worker=w) > 0
                assert value(m, "shmraft_worker_restarts_total", n, worker=w) == 0
                assert value(m, "shmraft_worker_rss_bytes", n, worker=w) > 0
                assert value(m, "shmraft_worker_cpu_seconds_total", n, worker=w) >= 0
            assert value(m, "shmraft_term", n) >= 1
        roles = {n: {dict(k)["role"] for k, v in scrape(h, n)["shmraft_role"].items() if v == 1} for n in nodes}
        assert all(len(r) == 1 for r in roles.values()), roles
        assert [n for n, r in roles.items() if r == {"leader"}] == [leader]

        # status shows the same figures, with commit latency quantiles from the histogram
        report = cluster_status(h.configs)
        st = next(x for x in report["nodes"] if x["node_id"] == leader)
        assert st["events_committed"] == events
        assert st["commit_latency_ms"]["count"] == requests
        assert 0 < st["commit_latency_ms"]["p50"] <= st["commit_latency_ms"]["p99"] <= 4096
        assert st["errors_by_kind"]["client_protocol"] == 0
        assert set(st["rings"]) == {str(r) for r in Ring}
        assert "p99 ms" in format_table(report)

        # a killed worker shows up in the restart counter
        follower = next(n for n in nodes if n != leader)
        h.kill_worker(follower, Worker.BATCHER)
        wait_for(
            lambda: value(scrape(h, follower), "shmraft_worker_restarts_total", follower, worker="batcher") == 1,
            20,
            "the batcher's restart counted",
        )
        wait_for(
            lambda: value(scrape(h, follower), "shmraft_worker_up", follower, worker="batcher") == 1,
            20,
            "the batcher back up",
        )
    finally:
        h.stop()
