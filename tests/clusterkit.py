"""A real local cluster for tests: real processes, shared memory, RocksDB and TCP on 127.0.0.1.

`Harness` starts the node supervisors of `shmraft.supervisor.cluster.LocalCluster` with a unique cluster
id and free ports, finds processes by reading the shared state blocks, and on stop checks that no process
and no shared-memory segment is left. `Load` produces unique events from a thread and records what was
acknowledged, and `verify` checks every node's log against it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from shmraft.client import Client, ShmraftError
from shmraft.config import NodeConfig, local_cluster
from shmraft.ipc import segments
from shmraft.ipc.state import StateBlockError, Worker
from shmraft.node.layout import NodeLayout
from shmraft.raft.types import Role
from shmraft.supervisor.cluster import LocalCluster, free_port_base


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll until cond() is truthy; fail with `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last seen: {last!r}")


class Harness:
    def __init__(self, data_dir: Path, nodes: int = 3, **overrides: Any) -> None:
        self.cluster_id = f"t{os.getpid()}{random.randrange(10**6)}"
        self.configs: list[NodeConfig] = local_cluster(
            data_dir, count=nodes, port_base=free_port_base(nodes), cluster_id=self.cluster_id, **overrides
        )
        self.cluster = LocalCluster(self.configs, log_dir=data_dir / "logs")
        self.log_dir = data_dir / "logs"
        self.addresses = [c.me.client_address for c in self.configs]
        self.seen_pids: set[int] = set()
        self.client_options: dict[str, Any] = {}  # e.g. tls_ca, token: for clusters with TLS or a client token

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Harness:
        """Start every node and wait for a leader; on failure stop what was started, then re-raise."""
        try:
            self.cluster.start()
            self.wait_leader()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything; then nothing of this cluster may remain (processes, segments)."""
        for proc in self.cluster.procs.values():
            self.seen_pids.add(proc.pid)
        for c in self.configs:
            self.seen_pids |= set(self.worker_pids(c.node_id).values())
        self.cluster.stop()
        alive = [p for p in self.seen_pids if _alive(p)]
        for p in alive:  # never leave anything behind, even when the check below fails
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = segments.list_names(segments.prefix_for(self.cluster_id))
        for name in left[0]:
            segments.unlink_ring(name)
        for name in left[1]:
            segments.unlink_semaphore(name)
        assert not alive, f"processes left behind: {alive}"
        assert left == ([], []), f"shared memory left behind: {left}"

    def client(self, **kw: Any) -> Client:
        kw.setdefault("timeout_s", 20.0)
        return Client(self.addresses, **{**self.client_options, **kw})

    def config(self, node_id: int) -> NodeConfig:
        return next(c for c in self.configs if c.node_id == node_id)

    # --- what the state blocks say -------------------------------------------------------------------------

    def state(self, node_id: int) -> dict[str, Any] | None:
        try:
            block = NodeLayout(self.config(node_id)).attach_state()
        except StateBlockError:
            return None
        try:
            n = block.node
            out = {k: int(n[k]) for k in ("role", "term", "leader_id", "commit_index", "last_index", "status")}
            out["workers"] = {w: (int(block.workers[w]["pid"]), int(block.workers[w]["restarts"])) for w in Worker}
            return out
        finally:
            block.close()

    def leader(self) -> int:
        """The node that is leader in the highest term, per the nodes themselves; 0 if none."""
        best = (0, 0)
        for c in self.configs:
            s = self.state(c.node_id)
            if s and s["role"] == Role.LEADER and s["term"] >= best[1]:
                best = (c.node_id, s["term"])
        return best[0]

    def wait_leader(self, timeout_s: float = 30.0, exclude: int = 0) -> int:
        def other_leader() -> int:
            leader = self.leader()
            return leader if leader != exclude else 0

        return wait_for(other_leader, timeout_s, f"a leader other than {exclude}" if exclude else "a leader")

    def followers(self) -> list[int]:
        leader = self.wait_leader()  # during an election every node would count as a follower
        return [c.node_id for c in self.configs if c.node_id != leader]

    def worker_pids(self, node_id: int) -> dict[Worker, int]:
        s = self.state(node_id)
        return {w: pid for w, (pid, _) in s["workers"].items()} if s else {}

    def restarts(self, node_id: int, worker: Worker) -> int:
        s = self.state(node_id)
        return s["workers"][worker][1] if s else 0

    def kill_worker(self, node_id: int, worker: Worker) -> int:
        pid = self.worker_pids(node_id)[worker]
        self.seen_pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def node_pids(self, node_id: int) -> list[int]:
        proc = self.cluster.procs[node_id]
        return [proc.pid, *self.worker_pids(node_id).values()]

    def signal_node(self, node_id: int, sig: int) -> None:
        """A signal to every process of a node (SIGSTOP/SIGCONT a whole node)."""
        for pid in self.node_pids(node_id):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill_node(self, node_id: int) -> None:
        self.seen_pids |= set(self.node_pids(node_id))
        self.cluster.kill_node(node_id)

    def restart_node(self, node_id: int) -> None:
        self.cluster.start_node(node_id)

    # --- reading the logs ----------------------------------------------------------------------------------

    def read_log(self, node_id: int, timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
        """Every committed event that `node_id` serves, in order (consumed from that node only)."""
        with Client([self.config(node_id).me.client_address], timeout_s=timeout_s, **self.client_options) as c:
            return [(r.offset, bytes(r.value)) for r in c.consume(0)]

    def wait_commit_equal(self, timeout_s: float = 30.0) -> int:
        """Until every node reports the same commit index; returns it."""

        def same() -> int:
            states = [self.state(c.node_id) for c in self.configs]
            commits = {s["commit_index"] for s in states if s}
            return commits.pop() if len(commits) == 1 and all(states) else 0

        return wait_for(same, timeout_s, "every node at the same commit index")


class Load:
    """Produces unique events (`<tag>-<n>`) from a thread with the blocking client, recording acks."""

    def __init__(self, harness: Harness, tag: str = "ev", events_per_call: int = 20, pause_s: float = 0.0) -> None:
        self.harness = harness
        self.tag = tag
        self.events_per_call = events_per_call
        self.pause_s = pause_s
        self.acked: dict[bytes, int] = {}
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        with self.harness.client(timeout_s=15.0) as client:
            n = 0
            while not self._stop.is_set():
                values = [f"{self.tag}-{n + i}".encode() for i in range(self.events_per_call)]
                try:
                    offsets = client.produce_many(values)
                    n += len(values)
                    for v, o in zip(values, offsets, strict=True):
                        self.acked[v] = o
                except ShmraftError as exc:
                    # not acknowledged: the client keeps these events and their sequences, and the next call
                    # (same values) resends them; dedup keeps each one in the log once
                    self.errors[type(exc).__name__] += 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    def wait_acked(self, count: int, timeout_s: float) -> None:
        wait_for(lambda: len(self.acked) >= count, timeout_s, f"{count} acknowledged events (errors {self.errors})")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def verify(harness: Harness, acked: dict[bytes, int], node_ids: list[int] | None = None) -> list[tuple[int, bytes]]:
    """Every acknowledged event is on every node exactly once, at its acknowledged offset, and all nodes hold
    the same log. Returns the log."""
    nodes = node_ids or [c.node_id for c in harness.configs]

    def settled_logs() -> dict[int, list[tuple[int, bytes]]] | None:
        # The logs are read one node after another: a commit landing meanwhile (say an unacknowledged event
        # committed by a new leader) would make them differ for no fault of the cluster, so read again.
        commit = harness.wait_commit_equal()
        logs = {n: harness.read_log(n) for n in nodes}
        return logs if harness.wait_commit_equal() == commit else None

    logs = wait_for(settled_logs, 120, "the logs read while no commit lands")
    reference = max(logs.values(), key=len)
    for node, entries in logs.items():
        assert entries == reference, f"node {node}'s log differs from the longest ({len(entries)} vs {len(reference)})"
    counts = Counter(v for _, v in reference)
    dups = [v for v, n in counts.items() if n > 1]
    assert not dups, f"duplicated events: {dups[:10]} ({len(dups)} in all)"
    where = {v: o for o, v in reference}
    lost = [v for v in acked if v not in where]
    assert not lost, f"acknowledged events missing: {lost[:10]} ({len(lost)} of {len(acked)})"
    moved = [v for v, o in acked.items() if where[v] != o]
    assert not moved, f"events at another offset than acknowledged: {moved[:10]}"
    offsets = [o for o, _ in reference]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    return reference


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
