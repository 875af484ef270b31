"""A local cluster: one node-supervisor process per node, and the live view of `shmraft-supervisor up`.

Each node runs as `python -m shmraft.cli.supervisor node --config-json PATH` in its own process group, so
that killing "every process of a node" is one signal to the group, as it would be for a node on its own
host.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from shmraft.config import NodeConfig, config_to_json, local_members
from shmraft.net.auth import ensure_local_secret, is_local_secret
from shmraft.supervisor.status import cluster_status, format_table

NODE_STOP_GRACE_S: Final = 10.0
PORT_BASE_LOW: Final = 10_000  # lowest port base free_port_base picks
PORT_BASE_TRIES: Final = 200  # random port bases tried by free_port_base before giving up


def free_port_base(count: int) -> int:
    """A `port_base` for `local_cluster(count=...)` whose every port is free on 127.0.0.1 right now (tests,
    benchmarks and tools that start throw-away clusters beside each other)."""
    low, high = _port_base_range()
    for _ in range(PORT_BASE_TRIES):
        base = random.randrange(low, high, 1000)
        ports = [
            p
            for m in local_members(count, base, kafka=True)
            for p in (m.client_port, m.data_port, m.raft_port, m.metrics_port, m.kafka_port)
        ]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no free port range for {count} local nodes in {PORT_BASE_TRIES} tries")


def free_port() -> int:
    """One port free on 127.0.0.1 right now, below the ephemeral range like free_port_base's."""
    low, high = _port_base_range()
    for _ in range(PORT_BASE_TRIES):
        port = random.randrange(low, high)
        if _port_free(port):
            return port
    raise RuntimeError(f"no free port in {low}-{high} in {PORT_BASE_TRIES} tries")


def _port_base_range() -> tuple[int, int]:
    """Port bases below the kernel's ephemeral range: there, a peer redialling a stopped node could be given
    that node's listening port as its own source port, and the node could not listen again on restart."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32_768  # Linux's default
    if ephemeral_low - PORT_BASE_LOW >= 8 * 1000:
        return PORT_BASE_LOW, ephemeral_low - 1000
    return PORT_BASE_LOW, 60_000  # an unusual range: any base, the bind check below still applies


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """Starts, watches and stops the node supervisors of a cluster on this machine."""

    def __init__(self, configs: list[NodeConfig], log_dir: Path | None = None) -> None:
        self.configs = configs
        self.procs: dict[int, subprocess.Popen] = {}
        self.log_dir = log_dir

    def config_path(self, config: NodeConfig) -> Path:
        node_dir = config.node_dir
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(node_dir, 0o700)
        path = node_dir / "node.json"
        path.write_text(config_to_json(config))
        return path

    def start_node(self, node_id: int) -> subprocess.Popen:
        config = next(c for c in self.configs if c.node_id == node_id)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(config.data_dir, 0o700)  # mkdir's mode is masked by umask and leaves an existing dir alone
        if is_local_secret(config):  # the local cluster's own secret: made once, shared by its nodes
            ensure_local_secret(config.cluster_secret_file)
        path = self.config_path(config)
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"node{node_id}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmraft.cli.supervisor", "node", "--config-json", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out is not None:
            out.close()
        self.procs[node_id] = proc
        return proc

    def start(self) -> None:
        for c in self.configs:
            self.start_node(c.node_id)

    def stop_node(self, node_id: int, sig: int = signal.SIGTERM, timeout_s: float = NODE_STOP_GRACE_S) -> None:
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_node(self, node_id: int) -> None:
        """SIGKILL every process of a node (its supervisor's process group)."""
        proc = self.procs.get(node_id)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self) -> None:
        for node_id in list(self.procs):
            proc = self.procs[node_id]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NODE_STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def live_view(self, interval_s: float = 1.0) -> int:
        """Redraw the cluster table until interrupted or every node has exited."""
        stop = {"now": False}

        def on_signal(_signum: int, _frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        tty = sys.stdout.isatty()
        last_events: dict[int, tuple[float, int]] = {}
        last_print = 0.0
        while not stop["now"]:
            if all(p.poll() is not None for p in self.procs.values()):
                print("every node has exited", file=sys.stderr)
                return 1
            report = cluster_status(self.configs)
            now = time.monotonic()
            rates = {}
            for n in report["nodes"]:
                ev = n.get("events_committed", 0)
                t0, e0 = last_events.get(n["node_id"], (now, ev))
                rates[n["node_id"]] = (ev - e0) / (now - t0) if now > t0 else 0.0
                last_events[n["node_id"]] = (now, ev)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + format_table(report, rates) + "\n(Ctrl-C stops the cluster)\n")
                sys.stdout.flush()
            elif now - last_print >= 5 * interval_s:
                print(format_table(report, rates), flush=True)
                last_print = now
            time.sleep(interval_s)
        return 0
