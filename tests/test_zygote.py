"""The workers' fork server (supervisor/zygote.py): workers are forked with their modules imported, yet stay the
supervisor's own children, which it restarts as before; a bad request is refused, not obeyed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from shmraft.ipc.state import Worker
from shmraft.testing.cluster import ClusterDriver
from shmraft.testing.wait import wait_for

WAIT_S = 60.0


def _forked(pid: int) -> bool:
    """A worker the zygote forked: its command line is the zygote's, and its name says its kind."""
    proc = psutil.Process(pid)
    return "shmraft.supervisor.zygote" in " ".join(proc.cmdline()) and proc.name().startswith("shmraft-")


@pytest.mark.slow
def test_workers_are_forked_children_of_the_supervisor_and_a_killed_one_is_forked_again(tmp_path: Path) -> None:
    d = ClusterDriver.create(tmp_path, nodes=1, id_prefix="zy")
    try:
        d.start(leader_timeout_s=WAIT_S)
        wait_for(lambda: len(d.worker_pids(1)) == len(Worker), WAIT_S, "every worker's pid")
        supervisor = d.supervisor_pid(1)
        pids = d.worker_pids(1)
        for kind, pid in pids.items():
            assert psutil.Process(pid).ppid() == supervisor, kind
            assert _forked(pid), kind
        before = d.restarts(1, Worker.RAFT)
        d.kill_worker(1, Worker.RAFT)
        wait_for(lambda: d.restarts(1, Worker.RAFT) > before, WAIT_S, "the raft worker restarted")
        wait_for(lambda: d.worker_pids(1).get(Worker.RAFT, 0) not in (0, pids[Worker.RAFT]), WAIT_S, "a new pid")
        new = d.worker_pids(1)[Worker.RAFT]
        assert psutil.Process(new).ppid() == supervisor
        assert _forked(new)
        wait_for(lambda: d.leader() == 1, WAIT_S, "the node leads again")
    finally:
        d.stop()


def test_zygote_refuses_bad_requests_and_reports_a_failed_worker(tmp_path: Path) -> None:
    """In a child interpreter (the client makes its process a subreaper, which pytest's should not be)."""
    script = textwrap.dedent(
        f"""
        import os, psutil
        from shmraft.supervisor.zygote import Zygote
        z = Zygote()
        assert z.start({str(tmp_path / "node.json")!r})
        assert z.spawn("nonsense", "x") is None and "bad request" in z.error, z.error
        p = z.spawn("raft", {str(tmp_path / "missing.json")!r})
        assert p is not None, z.error
        assert psutil.Process(p.pid).ppid() == os.getpid()
        assert p.wait(30) == 1  # no config file: the worker fails, and we, its adopter, read its status
        z.close()
        assert z.spawn("raft", "x") is None  # closed: the caller starts the worker fresh
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)
    assert out.stdout.strip() == "ok", out.stderr[-3000:]
