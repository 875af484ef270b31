"""Mutation check of the simulator: does it notice realistic slips in the Raft core?

For each mutation of the catalogue (tools/mutations.py) this copies the package to a temporary directory,
applies the mutation there as a source patch (exact text, asserted to occur once), and runs, against that
copy only, the simulator (the CI seed budget, stopping at the first failing seed, plus every directed
scenario; the seeds are skipped when a scenario already caught it, unless --all-seeds) and the core's
unit tests (tests/test_raft_*.py). The worktree is never modified.

    python tools/mutate.py                       # whole catalogue, 2 processes, 300 seeds
    python tools/mutate.py --only ack_whole_log  # some mutations (comma separated)
    python tools/mutate.py --list                # the catalogue

Prints a table (mutation, caught by the simulator?, first failing seed or scenario, caught by the unit
tests?) and, last, one JSON line. Exit status 1 when fewer than --target of the mutations are caught.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from mutations import CATALOGUE, Mutation  # noqa: E402

JOBS_MAX = 2  # this machine has 2 cores shared with others
SEEDS_DEFAULT = 300  # the CI budget (tests/test_simulate.py)
SIM_TIMEOUT_S = 900
UNIT_TIMEOUT_S = 300
TARGET_DEFAULT = 0.95
UNIT_TESTS = "tests/test_raft_*.py"


@dataclass
class Outcome:
    name: str
    area: str
    rule: str
    sim_caught: bool = False
    first_seed: int | None = None  # first failing random seed (None: no seed failed)
    scenarios: list[str] = field(default_factory=list)  # directed scenarios that failed
    sim_detail: str = ""  # first violation, or why the run did not complete
    unit_caught: bool = False
    unit_detail: str = ""
    seconds: float = 0.0


class PatchError(RuntimeError):
    """A mutation's text does not occur exactly once: the catalogue is out of date with the code."""


def apply(mutation: Mutation, root: Path) -> None:
    """Apply `mutation` to the copy of the repository at `root`."""
    path = root / mutation.path
    text = path.read_text()
    for old, new in ((mutation.old, mutation.new), *mutation.also):
        count = text.count(old)
        if count != 1:
            raise PatchError(f"{mutation.name}: expected the text once in {mutation.path}, found it {count} times")
        text = text.replace(old, new)
    path.write_text(text)


def make_copy(dest: Path) -> None:
    """The parts of the repository the runs need: the package, the simulator CLI, the core's tests."""
    shutil.copytree(ROOT / "shmraft", dest / "shmraft", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "simulate.py", dest / "tools" / "simulate.py")
    (dest / "tests").mkdir()
    for test in ROOT.glob(UNIT_TESTS):
        shutil.copy2(test, dest / "tests" / test.name)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)  # ahead of the editable install of the worktree
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_copy_is_imported(root: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import shmraft.raft.core as c; print(c.__file__)"],
        env=_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    if not out.stdout.strip().startswith(str(root)):
        raise RuntimeError(f"the mutated copy is not the one imported: {out.stdout.strip()}")


def run_simulator(root: Path, seeds: int, outcome: Outcome, all_seeds: bool) -> None:
    """The directed scenarios first (seconds); then, unless one caught the mutation (or `all_seeds`), the
    seeds up to the first failing one."""
    _simulate(root, ["--seeds", "0"], outcome)
    if outcome.sim_caught and not all_seeds:
        return
    scenarios, detail = outcome.scenarios, outcome.sim_detail
    _simulate(root, ["--seeds", str(seeds), "--no-scenarios", "--stop-on-failure"], outcome)
    outcome.scenarios = scenarios
    outcome.sim_caught = outcome.sim_caught or bool(scenarios)
    outcome.sim_detail = outcome.sim_detail or detail


def _simulate(root: Path, args: list[str], outcome: Outcome) -> None:
    cmd = [sys.executable, str(root / "tools" / "simulate.py"), "--json", *args]
    try:
        out = subprocess.run(
            cmd, env=_env(root), cwd=root, capture_output=True, text=True, timeout=SIM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        outcome.sim_detail = f"timed out after {SIM_TIMEOUT_S} s (not counted as caught)"
        return
    lines = out.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        outcome.sim_caught = True  # the simulator crashed: CI fails, but say so
        outcome.sim_detail = (
            "simulator crashed without its JSON line: " + (out.stderr.strip().splitlines() or ["?"])[-1]
        )
        return
    failed = summary.get("failed_seeds") or []
    outcome.first_seed = failed[0] if failed else None
    outcome.scenarios = list(summary.get("failed_scenarios") or [])
    outcome.sim_caught = bool(summary.get("violations"))
    first = next((ln for ln in lines if ln.startswith("FAILED")), "")
    outcome.sim_detail = first[:200]


def run_unit_tests(root: Path, outcome: Outcome) -> None:
    tests = sorted(str(p) for p in (root / "tests").glob("test_raft_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        out = subprocess.run(
            cmd, env=_env(root), cwd=root, capture_output=True, text=True, timeout=UNIT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        outcome.unit_caught = True
        outcome.unit_detail = f"timed out after {UNIT_TIMEOUT_S} s"
        return
    outcome.unit_caught = out.returncode != 0
    failed = [ln for ln in out.stdout.splitlines() if ln.startswith("FAILED")]
    outcome.unit_detail = failed[0][:160] if failed else ""


def run_one(mutation: Mutation | None, seeds: int, unit: bool, all_seeds: bool = False) -> Outcome:
    """Copy, patch, run. `mutation` None checks the unmutated copy (it must pass everything)."""
    started = time.perf_counter()
    name = mutation.name if mutation else "(none)"
    outcome = Outcome(name, mutation.area if mutation else "-", mutation.rule if mutation else "baseline")
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name.strip('()')}-") as tmp:
        root = Path(tmp)
        make_copy(root)
        if mutation is not None:
            apply(mutation, root)
        check_copy_is_imported(root)
        run_simulator(root, seeds, outcome, all_seeds or mutation is None)
        if unit:
            run_unit_tests(root, outcome)
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


def _where(o: Outcome) -> str:
    parts = []
    if o.first_seed is not None:
        parts.append(f"seed {o.first_seed}")
    parts += [f"scenario {s}" for s in o.scenarios]
    return ", ".join(parts) or ("-" if not o.sim_caught else o.sim_detail[:40])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=SEEDS_DEFAULT, help="simulator seeds per mutation (CI budget)")
    ap.add_argument("--jobs", type=int, default=JOBS_MAX, help=f"mutations run in parallel (at most {JOBS_MAX})")
    ap.add_argument("--only", help="comma-separated mutation names")
    ap.add_argument("--no-unit-tests", action="store_true", help="run the simulator only")
    ap.add_argument("--all-seeds", action="store_true", help="run the seeds even when a scenario caught it")
    ap.add_argument("--baseline", action="store_true", help="first check that the unmutated copy passes")
    ap.add_argument("--target", type=float, default=TARGET_DEFAULT, help="fraction the simulator must catch")
    ap.add_argument("--list", action="store_true", help="print the catalogue and exit")
    args = ap.parse_args(argv)

    catalogue = list(CATALOGUE)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in catalogue}
        if unknown:
            ap.error(f"unknown mutations: {sorted(unknown)}")
        catalogue = [m for m in catalogue if m.name in wanted]
    if args.list:
        for m in catalogue:
            print(f"{m.name:36} {m.area:12} {m.path:24} {m.rule}")
        return 0
    for m in catalogue:  # fail fast on a stale catalogue, before any long run
        text = (ROOT / m.path).read_text()
        for old, _ in ((m.old, m.new), *m.also):
            if text.count(old) != 1:
                raise PatchError(f"{m.name}: expected the text once in {m.path}, found it {text.count(old)} times")
    jobs = max(1, min(args.jobs, JOBS_MAX))
    started = time.perf_counter()
    if args.baseline:
        base = run_one(None, args.seeds, not args.no_unit_tests)
        print(
            f"baseline (no mutation): simulator {'FAILED ' + base.sim_detail if base.sim_caught else 'clean'}, "
            f"unit tests {'FAILED ' + base.unit_detail if base.unit_caught else 'pass'}",
            flush=True,
        )
        if base.sim_caught or base.unit_caught:
            return 2
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_one, m, args.seeds, not args.no_unit_tests, args.all_seeds) for m in catalogue]
        outcomes = []
        for f in futures:
            o = f.result()
            outcomes.append(o)
            print(
                f"  {o.name}: simulator {'caught' if o.sim_caught else 'MISSED'} ({_where(o)}) in {o.seconds} s",
                flush=True,
            )

    unit = not args.no_unit_tests
    print()
    print(f"| {'mutation':36} | {'area':11} | simulator | {'first seed / scenario':32} | unit tests |")
    print(f"|{'-' * 38}|{'-' * 13}|-----------|{'-' * 34}|------------|")
    for o in outcomes:
        print(
            f"| {o.name:36} | {o.area:11} | {'caught' if o.sim_caught else 'MISSED':9} | {_where(o)[:32]:32} | "
            f"{('caught' if o.unit_caught else 'missed') if unit else 'n/a':10} |"
        )
    caught = sum(o.sim_caught for o in outcomes)
    ratio = caught / len(outcomes) if outcomes else 1.0
    summary = {
        "mutations": len(outcomes),
        "caught_by_simulator": caught,
        "simulator_ratio": round(ratio, 3),
        "caught_by_unit_tests": sum(o.unit_caught for o in outcomes) if unit else None,
        "missed_by_simulator": [o.name for o in outcomes if not o.sim_caught],
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "results": [asdict(o) for o in outcomes],
    }
    print(json.dumps(summary))
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
