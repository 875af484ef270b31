"""Each atheris harness (tools/fuzz/fuzz_*.py) runs briefly in its own process and must not crash.

A fixed budget (FUZZ_RUNS inputs, at most FUZZ_SECONDS) keeps CI short; run a harness by hand for longer
(`python tools/fuzz/fuzz_peer.py -max_total_time=600`). Skipped, with the reason, where atheris cannot be
imported (it is in the `test` extra; it builds wheels for CPython on Linux and macOS).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESSES = sorted(p.stem for p in (ROOT / "tools" / "fuzz").glob("fuzz_*.py"))
FUZZ_RUNS = 20_000
FUZZ_SECONDS = 8
PROCESS_TIMEOUT_S = 120  # far above FUZZ_SECONDS: start-up and instrumentation on a loaded machine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install 'shmraft[test]' or pip install atheris)",
)


def test_there_is_a_harness_per_decoder() -> None:
    assert set(HARNESSES) >= {"fuzz_client", "fuzz_peer", "fuzz_raft", "fuzz_frame"}


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_runs_its_budget_without_a_crash(harness: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "fuzz" / f"{harness}.py"),
        f"-runs={FUZZ_RUNS}",
        f"-max_total_time={FUZZ_SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        "-rss_limit_mb=2048",
    ]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PROCESS_TIMEOUT_S, cwd=tmp_path
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0 and not crashes, f"{harness} exited {proc.returncode}, artifacts {crashes}:\n{tail}"
    assert "Done" in proc.stdout, f"{harness} did not finish its runs:\n{tail}"
    cov = [line for line in proc.stdout.splitlines() if "DONE" in line and "cov: " in line]
    assert cov, f"{harness}: no coverage reported (instrumentation missing?):\n{tail}"
