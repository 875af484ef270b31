"""A real local cluster for tests: real processes, shared memory, RocksDB and TCP on 127.0.0.1.

`Harness` is the pytest-facing face of `shmraft.testing.cluster.ClusterDriver` (the one driver the tools and
benchmarks use too): a unique cluster id and free ports, and on stop the check that no process and no
shared-memory segment is left. `Load` produces unique events from a thread and records what was
acknowledged, and `verify` checks every node's log against it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shmraft.client import Client, NodeNotServing, ShmraftError
from shmraft.config import local_cluster
from shmraft.supervisor.cluster import LocalCluster, free_port_base
from shmraft.testing.cluster import ClusterDriver
from shmraft.testing.wait import WAIT_INTERVAL_S, wait_for

__all__ = ["Harness", "Load", "free_port_base", "verify", "wait_for"]


class Harness(ClusterDriver):
    """A `nodes`-node cluster in `data_dir` (logs in data_dir/logs) with `overrides` of every node's config."""

    def __init__(self, data_dir: Path, nodes: int = 3, **overrides: Any) -> None:
        cluster_id = f"t{os.getpid()}{random.randrange(10**6)}"
        configs = local_cluster(
            data_dir, count=nodes, port_base=free_port_base(nodes), cluster_id=cluster_id, **overrides
        )
        self.log_dir = data_dir / "logs"
        super().__init__(configs, cluster_id, LocalCluster(configs, log_dir=self.log_dir))
        self.client_options: dict[str, Any] = {}  # e.g. tls_ca, token: for clusters with TLS or a client token

    @property
    def cluster(self) -> LocalCluster:
        """The node supervisors (tests stop or restart them one by one)."""
        return self.local

    def start(self, leader_timeout_s: float | None = 30.0) -> Harness:
        super().start(leader_timeout_s)
        return self

    def stop(self) -> None:  # type: ignore[override]
        """Stop everything; then nothing of this cluster may remain (processes, segments)."""
        left = super().stop()
        assert not left.pids, f"processes left behind: {left.pids}"
        assert not left.segments, f"shared memory left behind: {left.segments}"

    def client(self, **kw: Any) -> Client:
        kw.setdefault("timeout_s", 20.0)
        return Client(self.addresses, **{**self.client_options, **kw})

    def followers(self) -> list[int]:
        self.wait_leader()  # during an election every node would count as a follower
        return super().followers()

    def restart_node(self, node_id: int) -> None:
        self.start_node(node_id)

    def read_log(self, node_id: int, timeout_s: float = 30.0, **client_options: Any) -> list[tuple[int, bytes]]:
        """Every committed event that `node_id` serves, in order, from that node only (NodeNotServing if not)."""
        return super().read_log(node_id, timeout_s, **{**self.client_options, **client_options})


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


VERIFY_TIMEOUT_S = 120.0  # how long verify() re-reads while nodes catch up
READ_ATTEMPT_MIN_S = 1.0  # one node's read gets at least this long, even close to verify's deadline


def verify(
    harness: Harness,
    acked: dict[bytes, int],
    node_ids: list[int] | None = None,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> list[tuple[int, bytes]]:
    """Every acknowledged event is on every node exactly once, at its acknowledged offset, and all nodes hold
    the same log, each read from that node and no other. Returns the log.

    The logs are read again until every node reports the same commit index, serves its own log, and no commit
    lands while they are read (a node catching up after a restart); a node that is still behind, stuck or not
    serving at `timeout_s` fails the check with its name and what it said.
    """
    nodes = node_ids or [c.node_id for c in harness.configs]
    deadline = time.monotonic() + timeout_s
    while True:
        logs, problems = _read_logs(harness, nodes, deadline)
        if not problems:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"the nodes' logs did not settle within {timeout_s:g} s: " + "; ".join(problems))
        time.sleep(WAIT_INTERVAL_S)
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


def _read_logs(
    harness: Harness, nodes: list[int], deadline: float
) -> tuple[dict[int, list[tuple[int, bytes]]], list[str]]:
    """Each node's log, read from that node only, and what keeps them from being settled (empty if nothing):
    nodes at different commit indexes, a node that does not serve its own log, a commit landing meanwhile."""
    commits = {n: harness.commit_indexes()[n] for n in nodes}
    logs: dict[int, list[tuple[int, bytes]]] = {}
    problems: list[str] = []
    for n in nodes:
        try:
            logs[n] = harness.read_log(n, max(deadline - time.monotonic(), READ_ATTEMPT_MIN_S))
        except NodeNotServing as exc:
            problems.append(f"node {n}: {exc}")
    if len(set(commits.values())) != 1 or None in commits.values():
        top = max((c for c in commits.values() if c is not None), default=None)
        behind = [n for n, c in commits.items() if c != top]
        problems.append(f"node(s) {behind} behind: commit indexes {commits}")
    elif {n: harness.commit_indexes()[n] for n in nodes} != commits:
        problems.append("a commit landed while the logs were read")
    if problems and logs:
        problems.append("events served " + ", ".join(f"node {n}: {len(entries)}" for n, entries in logs.items()))
    return logs, problems
