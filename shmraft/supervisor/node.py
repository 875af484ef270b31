"""The node supervisor: owns the node's shared memory, starts its four workers, restarts the failed.

One process per node. It creates the state block and the rings (removing stale ones of a crashed run
first), starts the raft and sender workers, then, once they have beaten once (at most FIRST_WAIT_S later), the
batcher and ingest, and then watches them:

- a worker that exits is restarted after a back-off that doubles with each restart in the window;
- a worker whose heartbeat counter in the state block has not moved while it could have run for
  `worker_stall_timeout_ms` is killed (SIGKILL) and restarted; time it spent waiting for a CPU, and gaps
  the supervisor itself did not see, do not count (supervisor/stall.py), so a busy machine is not a stall;
- on the leader, an ingest or batcher worker stalled by the same clock for `leader_stall_transfer_ms` (well
  below the restart) makes the supervisor ask the raft worker to hand leadership over (supervisor/stepaside.py),
  since a leader whose request path is stopped commits nothing while its healthy Raft keeps the others from
  electing; at most once per LEADER_STALL_TRANSFER_GAP_S. The ask goes through the state block
  (`stall_transfer_*`), which the raft worker reads every loop: the rings to it each have one writer already;
- a worker restarted more than `worker_restart_budget` times within `worker_restart_window_s` exhausts
  the budget: the node stops serving (status FAILED, every worker stopped) and says why.

SIGTERM/SIGINT stop the node: the raft worker is asked to hand leadership over first, then every worker
gets SIGTERM, then SIGKILL after a grace period, and every shared-memory segment is unlinked.

The supervisor also serves Prometheus metrics (supervisor/metrics.py) on `metrics_port`, from a thread.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Final

from shmraft.config import NodeConfig, config_to_json
from shmraft.ipc.state import NodeStatus, Worker
from shmraft.net.auth import check_node_files
from shmraft.node.layout import NodeLayout
from shmraft.raft.types import Role
from shmraft.supervisor.metrics import MetricsServer
from shmraft.supervisor.stall import StallClock, sample_process
from shmraft.supervisor.stepaside import step_aside
from shmraft.supervisor.zygote import ForkedProcess, Zygote

log = logging.getLogger("shmraft.supervisor")

STOP_GRACE_S: Final = 3.0  # SIGTERM to SIGKILL
MONITOR_INTERVAL_S: Final = 0.05
STARTUP_GRACE_S: Final = 10.0  # a new worker is not judged stalled before this
FIRST_WORKERS: Final = (Worker.RAFT, Worker.SENDER)  # the replication path: started first, the others once
# these have beaten once (at most FIRST_WAIT_S later)
FIRST_WAIT_S: Final = 1.5  # bounds what the batcher and ingest can lose when the machine is swamped


@dataclass
class _Child:
    kind: Worker
    proc: subprocess.Popen | ForkedProcess | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    next_start: float = 0.0
    started: float = 0.0
    start_beat: int = 0  # the heartbeat counter when the process was started: it is judged once that moved
    stall: StallClock = field(default_factory=StallClock)


class NodeSupervisor:
    """Runs one node until stopped. `run()` returns the exit status."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.layout = NodeLayout(config)
        self.children = {kind: _Child(kind) for kind in Worker}
        self._stopping = False
        self.failed_reason = ""
        self.zygote = Zygote()
        self._stall_ask_s: float | None = None  # when a leadership transfer for a stalled worker was last asked

    def run(self) -> int:
        check_node_files(self.config)  # a missing or unsafe secret/TLS file stops the node here, named
        node_dir = self.config.node_dir
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.config.data_dir, 0o700)
        os.chmod(node_dir, 0o700)
        config_path = node_dir / "node.json"
        config_path.write_text(config_to_json(self.config))
        self.config_path = config_path
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.layout.cleanup_stale()
        self.zygote.start(str(config_path))  # imports the workers' modules while the shared memory is made
        self.state = self.layout.create_all()
        metrics = None
        try:
            self.state.set("status", NodeStatus.STARTING)
            metrics = self._start_metrics()
            for kind in FIRST_WORKERS:
                self._start(self.children[kind])
            self._wait_first_beats()
            for kind in Worker:
                if kind not in FIRST_WORKERS:
                    self._start(self.children[kind])
            self.state.set("status", NodeStatus.SERVING)
            while not self._stopping:
                self._monitor()
                time.sleep(MONITOR_INTERVAL_S)
        finally:
            if metrics is not None:
                metrics.close()  # before the segments go: no scrape reads them after this
            self.zygote.close()
            self._stop_all()
            self.layout.destroy_all()
        if self.failed_reason:
            print(f"shmraft node {self.config.node_id}: stopped: {self.failed_reason}", file=sys.stderr)
            return 1
        return 0

    def _start_metrics(self) -> MetricsServer | None:
        """Prometheus /metrics on metrics_port; a node without it still serves (the error is logged)."""
        try:
            server = MetricsServer(self.config, self.state, self.layout)
        except OSError as exc:
            log.error(
                "node %d: metrics endpoint on %s:%d not started: %s",
                self.config.node_id,
                self.config.bind_host,
                self.config.me.metrics_port,
                exc,
            )
            return None
        log.info("node %d: metrics at %s", self.config.node_id, server.url)
        return server

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _start(self, child: _Child) -> None:
        kind = child.kind.name.lower()
        child.proc = self.zygote.spawn(kind, str(self.config_path))
        if child.proc is None:  # no fork server: a fresh interpreter, as slow as the imports
            if self.zygote.error:
                log.warning(
                    "node %d: %s worker not forked (%s): starting it fresh",
                    self.config.node_id,
                    kind,
                    self.zygote.error,
                )
                self.zygote.error = ""
            cmd = [sys.executable, "-m", "shmraft.workers.main", kind, str(self.config_path)]
            child.proc = subprocess.Popen(cmd, start_new_session=False)
        now = time.monotonic()
        child.started = now
        child.stall.reset()
        record = self.state.workers[child.kind]
        child.start_beat = int(record["heartbeat"])
        record["pid"] = child.proc.pid
        record["started_unix_ms"] = int(time.time() * 1000)
        log.info("node %d: started %s worker, pid %d", self.config.node_id, child.kind.name.lower(), child.proc.pid)

    def _wait_first_beats(self) -> None:
        """Until each of FIRST_WORKERS has beaten once (imported its modules; the raft worker opened its log) or
        exited, or FIRST_WAIT_S passes. On a busy machine the workers' start-ups share what CPU there is; the
        raft worker and the sender are what put the node back among the voters and acknowledgers, so they go
        first and the batcher and ingest right after (benchmarks/follower_restart_bench.py)."""
        beats = {kind: int(self.state.workers[kind]["heartbeat"]) for kind in FIRST_WORKERS}
        deadline = time.monotonic() + FIRST_WAIT_S
        while time.monotonic() < deadline and not self._stopping:
            waiting = [
                kind
                for kind in FIRST_WORKERS
                if int(self.state.workers[kind]["heartbeat"]) == beats[kind]
                and (proc := self.children[kind].proc) is not None
                and proc.poll() is None
            ]
            if not waiting:
                return
            time.sleep(MONITOR_INTERVAL_S / 5)

    def _monitor(self) -> None:
        now = time.monotonic()
        stalled_s: dict[Worker, float] = {}  # alive workers that have beaten since their start
        for child in self.children.values():
            proc = child.proc
            if proc is None:
                if now >= child.next_start and not self._stopping:
                    self._start(child)
                continue
            code = proc.poll()
            beat = int(self.state.workers[child.kind]["heartbeat"])
            could_run_s = child.stall.observe(now, beat, sample_process(proc.pid))
            stalled = now - child.started > STARTUP_GRACE_S and could_run_s * 1000 > self.config.worker_stall_timeout_ms
            if code is None and beat != child.start_beat:
                stalled_s[child.kind] = could_run_s
            if code is None and not stalled:
                continue
            if stalled and code is None:
                log.error(
                    "node %d: %s worker (pid %d) made no progress for %d ms while it could run: killing it",
                    self.config.node_id,
                    child.kind.name.lower(),
                    proc.pid,
                    self.config.worker_stall_timeout_ms,
                )
                proc.kill()
                proc.wait()
                code = proc.returncode
            log.error(
                "node %d: %s worker (pid %d) exited with %s",
                self.config.node_id,
                child.kind.name.lower(),
                proc.pid,
                code,
            )
            child.proc = None
            window = self.config.worker_restart_window_s
            child.restarts = [t for t in child.restarts if now - t < window] + [now]
            self.state.workers[child.kind]["restarts"] += 1
            if len(child.restarts) > self.config.worker_restart_budget:
                self.failed_reason = (
                    f"{child.kind.name.lower()} worker restarted {len(child.restarts) - 1} times "
                    f"in {window:.0f} s (budget {self.config.worker_restart_budget})"
                )
                self.state.set("status", NodeStatus.FAILED)
                self._stopping = True
                return
            backoff_ms = self.config.worker_restart_backoff_ms * 2 ** (len(child.restarts) - 1)
            child.next_start = now + min(backoff_ms, 5000) / 1000
        self._step_aside_if_stalled(now, stalled_s)

    def _step_aside_if_stalled(self, now: float, stalled_s: dict[Worker, float]) -> None:
        """As leader, ask the raft worker to hand leadership over when the request path is stalled (stepaside.py).
        The fields are written before the asks counter that the raft worker watches (one writer: this process)."""
        leader = self.state.get("role") == Role.LEADER and not self._stopping
        ask = step_aside(now, leader, stalled_s, self.config.leader_stall_transfer_ms, self._stall_ask_s)
        if ask is None:
            return
        self._stall_ask_s = now
        term = self.state.get("term")
        self.state.set("stall_transfer_term", term)
        self.state.set("stall_transfer_worker", int(ask.worker))
        self.state.set("stall_transfer_stalled_ms", ask.stalled_ms)
        self.state.add("stall_transfer_asks")
        log.info(
            "node %d: %s worker stalled %d ms while leader of term %d: asking the raft worker to hand leadership over",
            self.config.node_id,
            ask.worker.name.lower(),
            ask.stalled_ms,
            term,
        )

    def _stop_all(self) -> None:
        if self.state.get("status") != NodeStatus.FAILED:
            self.state.set("status", NodeStatus.STOPPING)
        # Stop the client side first, then let the raft worker hand leadership over as it exits.
        order = [Worker.INGEST, Worker.BATCHER, Worker.SENDER, Worker.RAFT]
        for kind in order:
            proc = self.children[kind].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for kind in order:
            proc = self.children[kind].proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "node %d: %s worker did not stop in %.0f s: SIGKILL",
                    self.config.node_id,
                    kind.name.lower(),
                    STOP_GRACE_S,
                )
                proc.kill()
                proc.wait()
