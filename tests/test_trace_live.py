"""The trace on a real 3-node cluster: with every request sampled, one producer waiting for each answer, every
stage of the leader and of both followers gets samples, the Prometheus histograms carry them, and the stages
on the critical path add up to no more than what the client saw (a sanity relation, not a timing assertion)."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from clusterkit import Harness, verify, wait_for
from prometheus_client.parser import text_string_to_metric_families

from shmraft.cli.supervisor import main as supervisor_main
from shmraft.ipc.trace import FSTAGE_NAMES, STAGE_NAMES, STAGES
from shmraft.supervisor.waterfall import collect_report

REQUESTS = 60
CRITICAL = [name for name, _a, _b, crit in STAGES if crit]


@pytest.mark.slow
def test_every_stage_gets_samples_and_the_critical_stages_fit_in_the_client_latency(tmp_path: Path, capsys) -> None:
    h = Harness(tmp_path, trace_sample_every=0)  # off by config: the command turns it on
    try:
        h.start()
        leader = h.wait_leader()
        assert supervisor_main(["trace", "--all", "on", "--data-dir", str(tmp_path), "--cluster-id", h.cluster_id]) == 0
        assert "no trace samples yet" in capsys.readouterr().out
        report = collect_report(h.configs)
        assert report["sample_all"] and report["nodes_read"] == sorted(c.node_id for c in h.configs)
        acked: dict[bytes, int] = {}
        client_ns = []
        with h.client() as client:
            for r in range(REQUESTS):
                event = b"trace-%03d" % r
                t0 = time.monotonic_ns()
                acked[event] = client.produce(event)
                client_ns.append(time.monotonic_ns() - t0)
        followers = [c.node_id for c in h.configs if c.node_id != leader]

        def settled() -> dict | None:  # followers acknowledge after the leader answered: wait for their counts
            rep = collect_report(h.configs)
            f_ok = all(rep["followers"][str(n)]["samples"] >= REQUESTS // 2 for n in followers)
            return rep if rep["leader"] == leader and f_ok else None

        report = wait_for(settled, 30.0, "follower trace samples")
        rows = {r["stage"]: r for r in report["leader_stages"]["stages"]}
        assert set(rows) == set(STAGE_NAMES)
        for name, row in rows.items():
            assert row["count"] >= REQUESTS * 9 // 10, (name, row)  # a leader change could lose a few
        for n in followers:
            frows = {r["stage"]: r for r in report["followers"][str(n)]["stages"]}
            assert set(frows) == set(FSTAGE_NAMES)
            assert all(r["count"] > 0 for r in frows.values()), frows
        s = report["leader_stages"]["summary"]
        # per sample the critical stages tile ingest's receipt..answer, which lies inside the client's round trip
        assert s["critical_mean_sum_us"] <= s["total_mean_us"] + 0.1 * len(CRITICAL)
        assert s["total_mean_us"] <= np.mean(client_ns) / 1000
        assert s["critical_p50_sum_us"] > 0

        url = f"http://127.0.0.1:{h.config(leader).me.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        counts = {
            (sm.labels["role"], sm.labels["stage"]): sm.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "shmraft_trace_stage_seconds"
            for sm in fam.samples
            if sm.name.endswith("_count")
        }
        assert {stage for role, stage in counts if role == "leader"} == set(STAGE_NAMES)
        assert counts[("leader", "total")] >= rows["total"]["count"]  # read after the report: never fewer

        verify(h, acked)
    finally:
        h.stop()
