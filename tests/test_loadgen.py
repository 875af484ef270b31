"""tools/loadgen.py end to end: its own local cluster, load, leader kills, and the verification of every log.

Each run is a subprocess in its own session; on timeout the test kills that process group, then any node
process of the run's cluster (found by its data dir under tmp_path) and removes the cluster's shared memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shmraft.ipc import segments
from shmraft.supervisor.cluster import free_port
from shmraft.testing.hogs import HOG_MARK, CpuHogs
from shmraft.testing.wait import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "tools" / "loadgen.py"


def run_loadgen(tmp_path: Path, name: str, *extra: str, timeout_s: float) -> tuple[int, dict, str]:
    cluster_id = f"tlg{os.getpid()}{name}"
    cmd = [
        sys.executable,
        str(LOADGEN),
        "--start-cluster",
        "--tmp",
        str(tmp_path),
        "--cluster-id",
        cluster_id,
        "--verify",
        "--json",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # loadgen stops its cluster on SIGTERM
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"loadgen timed out after {timeout_s} s\n{err.decode()[-3000:]}")
    finally:
        cleanup(tmp_path, cluster_id)
    text = out.decode()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines, f"no output; stderr:\n{err.decode()[-3000:]}"
    return proc.returncode, json.loads(lines[-1]), err.decode() + text


def cleanup(tmp_path: Path, cluster_id: str) -> None:
    """Whatever a failed run left: node processes of this test's data dirs, then shared memory."""
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(tmp_path) in cmdline and "shmraft" in cmdline:
            left.append(p.pid)
            try:
                p.kill()
            except psutil.Error:
                pass
    psutil.wait_procs([psutil.Process(pid) for pid in left if psutil.pid_exists(pid)], timeout=5)
    segs, sems = segments.list_names(segments.prefix_for(cluster_id))
    for s in sems:
        segments.unlink_semaphore(s)
    for s in segs:
        segments.unlink_ring(s)
    assert not left, f"processes left behind by loadgen: {left}"
    assert (segs, sems) == ([], []), f"shared memory left behind by loadgen: {segs + sems}"


def test_events_verified(tmp_path: Path) -> None:
    rc, report, output = run_loadgen(tmp_path, "ev", "--events", "20000", "--size", "100", timeout_s=180)
    assert rc == 0, output[-3000:]
    assert report["acknowledged"] == 20000
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["divergent"] == 0
    assert report["invented"] == 0
    assert report["verify"]["found"] == 20000
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert report["committed_events_per_s"] > 0
    assert report["faults"] == []


def test_leader_kills_lose_nothing(tmp_path: Path) -> None:
    # an open-loop rate keeps the verification (3 logs read back) short; the faults are the same
    rc, report, output = run_loadgen(
        tmp_path, "kill", "--duration", "20", "--kill-leader-every", "5", "--rate", "20000", timeout_s=240
    )
    assert rc == 0, output[-3000:]
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["divergent"] == 0
    assert report["acknowledged"] > 0
    kills = [f for f in report["faults"] if f["kind"] == "kill-leader"]
    assert len(kills) >= 2, report["faults"]
    for f in kills:
        assert f["unavailability_ms"] is not None and f["unavailability_ms"] >= 0, f
        assert f["node"] in (1, 2, 3)
    assert report["leader_changes"] >= 2


# --- --cpu-hogs: busy loops beside the cluster (shmraft/testing/hogs.py) -------------------------------------------


def hog_children(pid: int) -> list[psutil.Process]:
    """The CPU hogs among `pid`'s children."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in children:
        with contextlib.suppress(psutil.Error):
            if HOG_MARK in " ".join(c.cmdline()):
                out.append(c)
    return out


def gone(procs: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)


def test_cpu_hogs_burn_cpu_at_normal_priority_and_are_gone_after_a_failure() -> None:
    with pytest.raises(RuntimeError, match="the run failed"), CpuHogs(2) as hogs:
        procs = [psutil.Process(pid) for pid in hogs.pids]
        assert len(procs) == 2 and all(p.is_running() for p in procs)
        assert all(p.nice() == os.getpriority(os.PRIO_PROCESS, 0) for p in procs)  # not niced down
        wait_for(lambda: all(sum(p.cpu_times()[:2]) > 0.05 for p in procs), 20, "the hogs to use CPU")
        raise RuntimeError("the run failed")
    assert gone(procs)
    assert hogs.pids == []


def test_cpu_hogs_do_not_outlive_a_killed_run() -> None:
    code = "import sys, time\nfrom shmraft.testing.hogs import CpuHogs\nCpuHogs(1).start()\nprint('up', flush=True)\n"
    code += "time.sleep(120)\n"
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert run.stdout is not None and run.stdout.readline().strip() == b"up"
        hogs = hog_children(run.pid)
        assert len(hogs) == 1
        run.kill()  # no cleanup code runs: the hog notices that its parent is gone
        run.wait()
        wait_for(lambda: gone(hogs), 20, "the orphaned hog to exit")
    finally:
        run.kill()
        run.wait()
        for h in hog_children(run.pid):
            h.kill()


def test_loadgen_cpu_hogs_run_beside_the_load_and_stop_when_interrupted(tmp_path: Path) -> None:
    # Nothing listens at this address, so the warm-up waits for its 60 s timeout: the hogs are up by then,
    # and SIGTERM (what Ctrl-C does too) must stop them with the run.
    cmd = [sys.executable, str(LOADGEN), "--addresses", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)]
    cmd += ["--cpu-hogs", "2", "--duration", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
    try:
        hogs = wait_for(lambda: hog_children(proc.pid), 30, "two hogs", accept=lambda h: len(h) == 2)
        assert all(h.nice() == os.getpriority(os.PRIO_PROCESS, 0) for h in hogs)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()[-2000:]
        assert b"interrupted" in err
        # killed and reaped by the run's stop; a hog also ends by itself once its parent is gone
        wait_for(lambda: gone(hogs), 30, "the hogs gone", accept=bool)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
