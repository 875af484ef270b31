"""Run the deterministic Raft simulator over seeds (a thin CLI over shmraft.sim.simulator).

    python tools/simulate.py --seeds 300 --json       # CI: last line is one JSON summary; exit 1 on violation
    python tools/simulate.py --seeds 10000 --json     # the long run (see docs/raft-mutations.md for figures)
    python tools/simulate.py --seeds 0                # the directed scenarios only
    python tools/simulate.py --seed 1234 --trace      # replay one seed exactly, printing its trace

Every seed also runs the directed scenarios (shmraft/sim/scenarios.py) unless --no-scenarios. A failing
seed prints itself and the command that replays it; a seed or scenario that raises is reported the same
way, as a violation, and the JSON line is always printed. The JSON line counts how often each interesting
situation occurred (`coverage`) and names those that never did (`coverage_gaps`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.raft.config import TEST_ONLY_MUTATIONS  # noqa: E402
from shmraft.sim.scenarios import run_scenarios  # noqa: E402
from shmraft.sim.simulator import FAULT_MS_DEFAULT, SeedResult, SimOptions, run_seed, run_seeds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100, help="run seeds first..first+N-1 (default 100)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, help="run this one seed only")
    ap.add_argument("--nodes", type=int, choices=(3, 4, 5), help="cluster size (default: 3, 4 or 5 per seed)")
    ap.add_argument(
        "--fsync",
        choices=("always", "never"),
        default="always",
        help="storage policy; 'never' with power-loss crashes is expected to lose commits",
    )
    ap.add_argument("--fault-ms", type=int, default=FAULT_MS_DEFAULT, help="virtual length of the fault phase")
    ap.add_argument("--no-faults", action="store_true", help="healthy network, no crashes")
    ap.add_argument("--trace", action="store_true", help="print every event of the (single) seed")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    ap.add_argument("--stop-on-failure", action="store_true")
    ap.add_argument("--no-scenarios", action="store_true", help="skip the directed scenarios (figure 8)")
    ap.add_argument(
        "--mutate",
        choices=sorted(TEST_ONLY_MUTATIONS),
        help="TEST ONLY: run with a deliberately broken core to check the checker catches it",
    )
    args = ap.parse_args(argv)

    options = SimOptions(
        nodes=args.nodes,
        fsync=args.fsync,
        fault_ms=args.fault_ms,
        faults=not args.no_faults,
        mutation=args.mutate or "",
        trace=args.trace,
    )
    replay = (
        "python tools/simulate.py --seed {seed}"
        + (f" --nodes {args.nodes}" if args.nodes else "")
        + (f" --fsync {args.fsync}" if args.fsync != "always" else "")
        + (f" --mutate {args.mutate}" if args.mutate else "")
        + (" --no-faults" if args.no_faults else "")
        + (f" --fault-ms {args.fault_ms}" if args.fault_ms != FAULT_MS_DEFAULT else "")
        + " --trace"
    )

    if args.seed is not None:
        result = run_seed(args.seed, options)
        if result.trace is not None:
            for line in result.trace:
                print(line)
        _report(result, replay)
        print(
            f"seed {result.seed}: {result.nodes} nodes, {result.steps} steps, {result.elections} elections, "
            f"{result.committed_entries} committed, recovery {result.recovery_ms} ms, "
            f"{len(result.violations)} violations"
        )
        return 1 if result.violations else 0
    if args.trace:
        ap.error("--trace needs --seed")

    started = time.perf_counter()
    summary = run_seeds(
        range(args.first_seed, args.first_seed + args.seeds),
        options,
        stop_on_failure=args.stop_on_failure,
        on_result=lambda r: _report(r, replay),
    )
    if not args.no_scenarios:
        scenario_results = run_scenarios(args.mutate or "")
        summary["scenarios"] = {r.name: len(r.violations) for r in scenario_results}
        for r in scenario_results:
            for v in r.violations:
                print(f"FAILED scenario {r.name}: {v}", flush=True)
            summary["violations"] += len(r.violations)  # type: ignore[operator]
        summary["failed_scenarios"] = [r.name for r in scenario_results if r.violations]
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["mutation"] = args.mutate or None
    summary["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value}")
    return 1 if summary["violations"] else 0


def _report(result: SeedResult, replay: str) -> None:
    if result.violations:
        print(f"FAILED seed {result.seed} ({result.nodes} nodes): {result.violations[0]}", flush=True)
        for v in result.violations[1:5]:
            print(f"    also: {v}")
        print(f"    replay: {replay.format(seed=result.seed)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
