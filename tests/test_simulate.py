"""The deterministic simulator: 300 seeds and every directed scenario hold every invariant while every
interesting situation occurs, replays are exact, the checks catch deliberately broken rules (test-only
mutations, source-patch mutations through tools/mutate.py) and an unsafe fsync policy, and an exception
in a seed or scenario is reported as that seed's or scenario's violation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmraft.sim import scenarios, simulator
from shmraft.sim.faults import FAULT_KINDS
from shmraft.sim.scenarios import SCENARIOS, run_scenario
from shmraft.sim.simulator import COVERAGE_KEYS, SimOptions, run_seed, run_seeds

ROOT = Path(__file__).resolve().parent.parent
SIMULATE = ROOT / "tools" / "simulate.py"
MUTATE = ROOT / "tools" / "mutate.py"


def test_300_seeds_hold_every_invariant_and_exercise_every_fault():
    started = time.perf_counter()
    summary = run_seeds(range(300))
    elapsed = time.perf_counter() - started
    assert summary["violations"] == 0, summary["failed_seeds"]
    assert summary["seeds"] == 300
    faults = summary["faults"]
    for kind in (
        *FAULT_KINDS,
        "drop",
        "duplicate",
        "reorder_delay",
        "power_loss",
        "restart",
        "clock_drift",
        "log_loss",
    ):
        assert faults.get(kind, 0) > 0, kind
    assert summary["elections"] > 300 and summary["committed_entries"] > 10_000
    assert summary["truncations"] > 0  # conflicting suffixes were really replaced somewhere
    assert summary["coverage_gaps"] == [], summary["coverage"]  # every interesting situation occurred
    assert set(summary["coverage"]) == set(COVERAGE_KEYS)
    print(f"\n300 seeds in {elapsed:.1f} s")  # reported, not asserted: speed is measured by the benchmarks


def test_same_seed_replays_the_identical_trace():
    a = run_seed(11, SimOptions(trace=True))
    b = run_seed(11, SimOptions(trace=True))
    c = run_seed(12, SimOptions(trace=True))
    assert a.trace and a.trace == b.trace
    assert a.trace != c.trace
    untraced = run_seed(11)  # tracing must not change the run
    assert (untraced.steps, untraced.committed_entries) == (a.steps, a.committed_entries)


def first_failing_seed(options: SimOptions, limit: int) -> int | None:
    for seed in range(limit):
        if run_seed(seed, options).violations:
            return seed
    return None


@pytest.mark.parametrize(
    ("mutation", "limit"), [("vote_ignores_log", 30), ("append_ignores_prev_term", 60), ("recovering_votes", 30)]
)
def test_simulator_catches_a_broken_safety_rule(mutation, limit):
    assert first_failing_seed(SimOptions(mutation=mutation), limit) is not None


def test_simulator_catches_lost_commits_under_fsync_never_with_power_loss():
    assert first_failing_seed(SimOptions(fsync="never"), 30) is not None


def test_cli_prints_a_json_summary_last_and_exits_zero():
    out = subprocess.run(
        [sys.executable, str(SIMULATE), "--seeds", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("seeds", "violations", "steps", "elections", "faults", "committed_entries"):
        assert key in summary
    assert summary["seeds"] == 3 and summary["violations"] == 0


def test_cli_reports_a_failing_seed_with_its_replay_command_and_exits_nonzero():
    seed = first_failing_seed(SimOptions(mutation="vote_ignores_log"), 30)
    out = subprocess.run(
        [sys.executable, str(SIMULATE), "--seed", str(seed), "--mutate", "vote_ignores_log", "--trace"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    assert f"FAILED seed {seed}" in out.stdout
    assert f"--seed {seed} --mutate vote_ignores_log --trace" in out.stdout
    assert "RequestVote" in out.stdout  # the trace


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_directed_scenario_holds_its_rule_on_the_unmutated_core(name):
    result = run_scenario(name)
    assert result.violations == []


@pytest.mark.parametrize(
    ("mutation", "scenario"),
    [
        ("follower_commit_past_append", "stale_suffix_append"),
        ("pre_vote_grants_count_in_election", "late_vote_grants"),
        ("recovery_ends_on_older_term", "recovery_on_older_terms"),
        ("timeout_now_to_lagging_target", "transfer_to_lagging"),
        ("heartbeat_commit_unclamped", "heartbeat_past_match"),
        ("timeout_now_while_recovering", "transfer_to_recovering"),
        ("match_from_reject_hint", "rejection_hint_is_not_a_match"),
        ("snapshot_older_than_commit", "snapshot_stale_chunk_late"),
        ("snapshot_without_state", "snapshot_in_partition"),
        ("snapshot_truncates_matching", "snapshot_matching_log"),
        ("two_changes_in_flight", "membership_one_change_at_a_time"),
        ("removed_leader_keeps_leading", "membership_removed_leader_steps_down"),
        ("learner_vote_counts", "membership_learner_vote_does_not_count"),
        ("conf_on_commit", "membership_new_config_on_append"),
    ],
)
def test_mutation_harness_patches_a_copy_and_the_scenario_catches_it(mutation, scenario):
    out = subprocess.run(
        [sys.executable, str(MUTATE), "--only", mutation, "--seeds", "0", "--no-unit-tests", "--target", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["caught_by_simulator"] == 1
    assert scenario in summary["results"][0]["scenarios"]
    assert "test_only_mutation" not in (ROOT / "shmraft" / "raft" / "driver.py").read_text()


def test_a_scenario_that_raises_is_reported_as_its_violation(monkeypatch):
    def broken(mutation: str = "") -> scenarios.ScenarioResult:
        raise RuntimeError("boom")

    monkeypatch.setitem(SCENARIOS, "broken", broken)
    result = run_scenario("broken")
    assert result.violations and "RuntimeError: boom" in result.violations[0]


def test_a_seed_that_raises_is_reported_with_its_seed_in_the_json_line(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("simulate_cli", SIMULATE)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def explode(self):
        raise KeyError("kaboom")

    monkeypatch.setattr(simulator.Simulation, "run", explode)
    monkeypatch.setitem(SCENARIOS, "broken", lambda mutation="": 1 / 0)
    code = cli.main(["--seeds", "2", "--first-seed", "7", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert code == 1
    assert summary["failed_seeds"] == [7, 8]
    assert summary["scenarios"]["broken"] == 1
    assert any("FAILED seed 7" in line and "KeyError" in line for line in out)
