"""One driver for a real local cluster: the node supervisors of `shmraft.supervisor.cluster.LocalCluster` on
free ports, what their shared state blocks say, faults with real signals, and a cleanup that leaves nothing.

The tests (`tests/clusterkit.py`), the tools (`tools/loadgen.py`, `tools/chaos.py`) and the benchmarks all
drive clusters through this class, so "the leader", "a node is up" and "the cluster is whole" mean the
same thing everywhere. A node's processes are its supervisor's process group (the workers stay in it), so
a signal to a node is one `killpg`. Every worker pid ever read from a state block is remembered, and
`stop()` SIGKILLs whatever of them is still alive and unlinks the cluster's shared memory, whatever state
the run ended in.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import psutil

from shmraft.client import Client
from shmraft.client.errors import OffsetOutOfRange
from shmraft.config import NodeConfig, config_from_json, local_cluster, local_members
from shmraft.ipc import segments
from shmraft.ipc.state import NodeStatus, StateBlockError, Worker
from shmraft.node.layout import NodeLayout
from shmraft.raft.types import Role
from shmraft.supervisor.cluster import LocalCluster, free_port_base
from shmraft.testing.wait import WAIT_INTERVAL_S, WaitTimeout, wait_for

LEADER_WAIT_S: Final = 30.0
READ_LOG_TIMEOUT_S: Final = 30.0
KILL_WAIT_S: Final = 5.0  # a detached node's processes gone after SIGKILL
STATE_FIELDS: Final = (
    "role",
    "term",
    "leader_id",
    "commit_index",
    "last_index",
    "first_index",
    "status",
    "removed",
    "config_index",
    "snapshots_installed",
)


def new_cluster_id(prefix: str) -> str:
    """A cluster id no other run on this machine uses: `prefix`, this pid, a random number."""
    return f"{prefix}{os.getpid()}x{random.randrange(10**6)}"


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def remove_segments(cluster_id: str) -> list[str]:
    """Unlink every shared-memory segment and semaphore of `cluster_id`; returns their names."""
    segs, sems = segments.list_names(segments.prefix_for(cluster_id))
    for name in sems:
        segments.unlink_semaphore(name)
    for name in segs:
        segments.unlink_ring(name)  # also plain segments (the state block): unlink_ring unlinks the name
    return segs + sems


def load_local_configs(data_dir: Path) -> list[NodeConfig]:
    """The configs of the cluster `shmraft-supervisor up` runs in `data_dir` (its node*/node.json)."""
    paths = sorted(data_dir.glob("node*/node.json"))
    if not paths:
        raise FileNotFoundError(f"no node*/node.json in {data_dir}: is `shmraft-supervisor up` running there?")
    return [config_from_json(p.read_text()) for p in paths]


@dataclass
class Leftovers:
    """What `stop()` found still there (and then removed): nonempty means the cluster did not clean up."""

    pids: list[int] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pids or self.segments)


class ClusterDriver:
    """Starts, reads, faults and stops the nodes of one local cluster (see the module docstring).

    `owned` is False for a cluster someone else runs (`attach`): its nodes can be read and faulted, a node
    this driver killed is restarted detached, and `stop()` leaves the cluster running."""

    def __init__(
        self,
        configs: list[NodeConfig],
        cluster_id: str,
        local: LocalCluster,
        *,
        owned: bool = True,
        root: Path | None = None,
    ) -> None:
        self.configs = configs
        self.cluster_id = cluster_id
        self.local = local
        self.owned = owned
        self.root = root  # a temp dir this driver made and removes on stop()
        self.seen_pids: set[int] = set()
        self.down: set[int] = set()  # killed and not restarted: their state blocks are stale
        self.paused_nodes: set[int] = set()
        self.paused_pids: set[int] = set()

    # --- making one -------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, data_dir: Path, nodes: int = 3, cluster_id: str | None = None, id_prefix: str = "t", **overrides: Any
    ) -> ClusterDriver:
        """A new `nodes`-node cluster in `data_dir` (logs in data_dir/logs) on free ports, not started yet."""
        cluster_id = cluster_id or new_cluster_id(id_prefix)
        configs = local_cluster(
            data_dir, count=nodes, port_base=free_port_base(nodes), cluster_id=cluster_id, **overrides
        )
        return cls(configs, cluster_id, LocalCluster(configs, log_dir=data_dir / "logs"))

    @classmethod
    def in_temp_dir(
        cls, prefix: str, parent: str | Path | None = None, nodes: int = 3, cluster_id: str | None = None, **kw: Any
    ) -> ClusterDriver:
        """`create` in a new temp dir (under `parent`) that `stop()` removes."""
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            driver = cls.create(root, nodes, cluster_id, **kw)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        driver.root = root
        return driver

    @classmethod
    def attach(cls, data_dir: Path) -> ClusterDriver:
        """The cluster `shmraft-supervisor up` runs in `data_dir`, not owned by this driver."""
        configs = load_local_configs(data_dir)
        return cls(configs, configs[0].cluster_id, LocalCluster(configs, log_dir=data_dir / "logs"), owned=False)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self, leader_timeout_s: float | None = LEADER_WAIT_S) -> ClusterDriver:
        """Start every node and (unless `leader_timeout_s` is None) wait for a leader; on failure stop what
        was started, then re-raise."""
        try:
            self.local.start()
            if leader_timeout_s is not None:
                self.wait_leader(leader_timeout_s)
                self.wait_listening(leader_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> Leftovers:
        """Stop every node (SIGTERM, then SIGKILL after the grace time), SIGKILL any process of the cluster
        still alive, unlink its shared memory, remove the temp dir. Returns what had been left behind.
        Nothing happens to a cluster this driver does not own, beyond resuming what it paused."""
        self.resume_all()
        if not self.owned:
            return Leftovers()
        for c in self.configs:
            with contextlib.suppress(Exception):
                self.state(c.node_id)  # remember the current workers' pids
        for proc in self.local.procs.values():
            self.seen_pids.add(proc.pid)
        try:
            self.local.stop()
        finally:
            left = [p for p in self.seen_pids if alive(p)]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.local.procs.values():
                with contextlib.suppress(Exception):
                    proc.wait(KILL_WAIT_S)
            segs = remove_segments(self.cluster_id)
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
        return Leftovers(left, segs)

    def __enter__(self) -> ClusterDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the nodes say -----------------------------------------------------------------------------------

    # --- membership -----------------------------------------------------------------------------------------

    def new_node_config(self, node_id: int) -> NodeConfig:
        """The config of a node to join this cluster: its own free ports (the local layout: client, data, raft,
        metrics, Kafka), the same data dir, secret and tunables, `join` set (it starts as a learner with an
        empty log); it knows the current members from the configs this driver holds. Added to the driver (and
        its LocalCluster), not started: add it as a learner (shmraft.client.admin), then `start_node`."""
        base = free_port_base(1)
        new = local_members(1, base, kafka=True)[0]
        member = replace(new, node_id=node_id)
        template = self.configs[0]
        members = tuple(c.me for c in self.configs if c.node_id != node_id) + (member,)
        config = replace(template, node_id=node_id, members=members, join=True)
        self.configs = [c for c in self.configs if c.node_id != node_id] + [config]
        self.local.configs = self.configs
        return config

    def forget_node(self, node_id: int) -> None:
        """Stop tracking a node removed from the cluster (after stopping it): reads, health and `addresses` leave
        it out. Its processes, if any, are still killed by `stop()` (their pids are remembered); a node that is
        not running (killed) has its shared memory removed now."""
        config = next((c for c in self.configs if c.node_id == node_id), None)
        proc = self.local.procs.get(node_id)
        if config is not None and (proc is None or proc.poll() is not None):
            with contextlib.suppress(Exception):
                NodeLayout(config).destroy_all()
        self.configs = [c for c in self.configs if c.node_id != node_id]
        self.local.configs = self.configs
        self.down.discard(node_id)

    def config(self, node_id: int) -> NodeConfig:
        return next(c for c in self.configs if c.node_id == node_id)

    @property
    def node_ids(self) -> list[int]:
        return [c.node_id for c in self.configs]

    @property
    def addresses(self) -> list[str]:
        """Every node's client address, in node order."""
        return [c.me.client_address for c in self.configs]

    def state(self, node_id: int) -> dict[str, Any] | None:
        """The node's state block: role, term, leader_id, commit_index, first_index, last_index, status, `pids`
        (worker -> pid) and `workers` (worker -> (pid, restarts)); None when there is no block (yet)."""
        try:
            block = NodeLayout(self.config(node_id)).attach_state()
        except (StateBlockError, OSError, ValueError):
            return None
        try:
            n = block.node
            out: dict[str, Any] = {k: int(n[k]) for k in STATE_FIELDS}
            out["workers"] = {w: (int(block.workers[w]["pid"]), int(block.workers[w]["restarts"])) for w in Worker}
        finally:
            block.close()
        out["pids"] = {w: pid for w, (pid, _) in out["workers"].items()}
        self.seen_pids |= {p for p in out["pids"].values() if p}
        return out

    def leader_and_term(self, exclude: int = 0) -> tuple[int, int]:
        """(node, term) of the node that says it leads in the highest term, killed nodes and `exclude` left
        out (their blocks may be stale); (0, 0) if none."""
        best = (0, 0)
        for node_id in self.node_ids:
            if node_id == exclude or node_id in self.down:
                continue
            s = self.state(node_id)
            if s and s["role"] == Role.LEADER and s["term"] >= best[1]:
                best = (node_id, s["term"])
        return best

    def leader(self, exclude: int = 0) -> int:
        """The leader per `leader_and_term`; 0 if none."""
        return self.leader_and_term(exclude)[0]

    def wait_listening(self, timeout_s: float = LEADER_WAIT_S) -> None:
        """Until every running node's ingest worker accepts connections on its client port (a node's supervisor
        starts ingest after its raft and sender workers, so a leader may exist before its port is open)."""

        def listening(address: str) -> bool:
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=1.0):
                    return True
            except OSError:
                return False

        for c in self.configs:
            if c.node_id not in self.down:
                wait_for(lambda a=c.me.client_address: listening(a), timeout_s, f"node {c.node_id}'s client port")

    def wait_leader(self, timeout_s: float = LEADER_WAIT_S, exclude: int = 0) -> int:
        what = f"a leader other than {exclude}" if exclude else "a leader"
        return wait_for(lambda: self.leader(exclude), timeout_s, what)

    def followers(self) -> list[int]:
        """Every node not the leader and not killed (all of them while there is no leader)."""
        leader = self.leader()
        return [n for n in self.node_ids if n != leader and n not in self.down]

    def worker_pids(self, node_id: int) -> dict[Worker, int]:
        s = self.state(node_id)
        return dict(s["pids"]) if s else {}

    def restarts(self, node_id: int, worker: Worker) -> int:
        s = self.state(node_id)
        return s["workers"][worker][1] if s else 0

    def supervisor_pid(self, node_id: int) -> int | None:
        """The node supervisor this driver started (None for a node it did not start)."""
        proc = self.local.procs.get(node_id)
        return proc.pid if proc is not None else None

    def node_pids(self, node_id: int) -> list[int]:
        """The node's supervisor (if started here) and its workers."""
        sup = self.supervisor_pid(node_id)
        return [*([sup] if sup else []), *(p for p in self.worker_pids(node_id).values() if p)]

    def node_up(self, node_id: int) -> bool:
        """The supervisor runs, the node is SERVING and all of its workers are alive."""
        proc = self.local.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return False
        s = self.state(node_id)
        return bool(s) and s["status"] == NodeStatus.SERVING and all(p and alive(p) for p in s["pids"].values())

    def health(self) -> str:
        """Empty when the cluster is whole (every node up, a leader, every node following it); else what is
        missing."""
        down = [n for n in self.node_ids if not self.node_up(n)]
        if down:
            return f"nodes not up: {down}"
        leader = self.leader()
        if not leader:
            return "no leader"
        lost = [n for n in self.node_ids if (self.state(n) or {}).get("leader_id") != leader]
        return f"nodes not following leader {leader}: {lost}" if lost else ""

    def wait_whole(self, timeout_s: float, stop: threading.Event | None = None) -> str:
        """Until the cluster is whole, `timeout_s` passes or `stop` is set; returns `health()` then."""
        deadline = time.monotonic() + timeout_s
        why = self.health()
        while why and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            time.sleep(0.1)
            why = self.health()
        return why

    def commit_indexes(self) -> dict[int, int | None]:
        """node -> commit index (None without a state block)."""
        return {n: (s["commit_index"] if (s := self.state(n)) else None) for n in self.node_ids}

    def wait_commit_equal(self, timeout_s: float = LEADER_WAIT_S, interval_s: float = WAIT_INTERVAL_S) -> int:
        """Until every node reports the same commit index; returns it."""

        def same() -> int:
            commits = set(self.commit_indexes().values())
            return commits.pop() if len(commits) == 1 and None not in commits else 0

        return wait_for(same, timeout_s, "every node at the same commit index", interval_s)

    def commits_equal_within(self, timeout_s: float, interval_s: float = 0.1) -> bool:
        """`wait_commit_equal` that answers False instead of raising."""
        try:
            self.wait_commit_equal(timeout_s, interval_s)
        except WaitTimeout:
            return False
        return True

    def read_log(
        self, node_id: int, timeout_s: float = READ_LOG_TIMEOUT_S, **client_options: Any
    ) -> list[tuple[int, bytes]]:
        """Every committed event that `node_id` serves, in order, read from that node and no other; raises
        NodeNotServing (naming it) when it does not serve its own log within `timeout_s`."""
        return read_log_at(self.config(node_id).me.client_address, timeout_s, **client_options)

    def node_log(self, node_id: int) -> str:
        """The text the node's supervisor and workers wrote (its log file; empty if none)."""
        if self.local.log_dir is None:
            return ""
        path = self.local.log_dir / f"node{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- faults with real signals -----------------------------------------------------------------------------

    def pgid(self, node_id: int) -> int | None:
        """The node's process group: its supervisor's, or found from its raft worker when not started here."""
        sup = self.supervisor_pid(node_id)
        if sup is not None:
            return sup
        pid = self.worker_pids(node_id).get(Worker.RAFT, 0)
        try:
            return os.getpgid(pid) if pid else None
        except ProcessLookupError:
            return None

    def signal_node(self, node_id: int, sig: int) -> None:
        """`sig` to every process of the node (its process group)."""
        pgid = self.pgid(node_id)
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)

    def pause_node(self, node_id: int) -> None:
        """SIGSTOP the whole node (resumed by `resume_node`, `resume_all` or `stop`)."""
        self.paused_nodes.add(node_id)
        self.signal_node(node_id, signal.SIGSTOP)

    def resume_node(self, node_id: int) -> None:
        self.signal_node(node_id, signal.SIGCONT)
        self.paused_nodes.discard(node_id)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL every process of the node and wait until they are gone; the node counts as down (not a
        leader, not a follower) until `start_node`."""
        self.seen_pids |= set(self.node_pids(node_id))
        self.down.add(node_id)
        self.paused_nodes.discard(node_id)
        if node_id in self.local.procs:
            self.local.kill_node(node_id)
            return
        pgid = self.pgid(node_id)
        if pgid is None:
            return
        pids = [*self.worker_pids(node_id).values(), pgid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and any(alive(p) for p in pids if p):
            time.sleep(0.01)

    def start_node(self, node_id: int) -> subprocess.Popen:
        """(Re)start the node's supervisor."""
        proc = self.local.start_node(node_id)
        self.down.discard(node_id)
        return proc

    def kill_worker(self, node_id: int, worker: Worker) -> int:
        """SIGKILL one worker (its supervisor restarts it); returns its pid (0 if there was none)."""
        pid = self.worker_pids(node_id).get(worker, 0)
        if pid:
            self.seen_pids.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pid

    def pause_worker(self, node_id: int, worker: Worker) -> int:
        """SIGSTOP one worker; returns its pid (0 if there was none) for `resume_worker`."""
        pid = self.worker_pids(node_id).get(worker, 0)
        if pid:
            self.paused_pids.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pid

    def resume_worker(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.paused_pids.discard(pid)

    def resume_all(self) -> None:
        """SIGCONT every node and worker this driver paused."""
        for pid in list(self.paused_pids):
            self.resume_worker(pid)
        for node_id in list(self.paused_nodes):
            self.resume_node(node_id)


def read_log_at(address: str, timeout_s: float = READ_LOG_TIMEOUT_S, **client_options: Any) -> list[tuple[int, bytes]]:
    """Every committed event the node at `address` serves, in order, read from that node and no other (a client
    with `only_node`); raises NodeNotServing (naming it) when it does not serve its own log within `timeout_s`:
    it does not answer, or answers that it is behind or out of service."""
    with Client([address], timeout_s=timeout_s, only_node=True, **client_options) as c:
        return [(r.offset, bytes(r.value)) for r in c.consume(0)]


def log_start_at(address: str, timeout_s: float = READ_LOG_TIMEOUT_S, **client_options: Any) -> int:
    """The first offset the node at `address` still holds (retention deletes below it; after a snapshot install
    it can lie past every event it serves), read from that node and no other; 0 when nothing was deleted."""
    with Client([address], timeout_s=timeout_s, only_node=True, **client_options) as c:
        try:
            for _ in c.consume(0, reset="error"):
                break
        except OffsetOutOfRange as exc:
            return exc.earliest_offset
    return 0
