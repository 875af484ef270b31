"""The fault campaign: a 3-node cluster under steady load while faults of every kind come and go, then a check
that nothing acknowledged was lost, duplicated, invented or put out of order.

    python tools/chaos.py --duration 120 --json               # the CI run (about 2 minutes)
    python tools/chaos.py --duration 1800 --seed 42           # a long run; the same seed, the same schedule

Topology (when this runs as root and `ip netns add` works; see shmraft/faults/netns.py): each node in its own
network namespace on a bridge, node-to-node traffic DNAT-ed through the fault proxy (shmraft/faults/proxy.py)
in the root namespace, producers in the root namespace talking to the nodes over the bridge. Otherwise
everything runs on 127.0.0.1 (stderr says why), nodes reach each other through the proxy by
`peer_connect_overrides`, and the partition kinds are left out.

Fault kinds (the JSON's `faults` counts them): kill-leader, kill-follower (SIGKILL of the node's whole
process group, restarted after the hold time); kill-worker:ingest|batcher|sender|raft (SIGKILL of one worker;
its supervisor restarts it); pause-node, pause-worker (SIGSTOP, then SIGCONT after the hold time);
partition-isolate (a node cut off from peers and clients), partition-leader-minority (the leader alone on
one side, clients still reach everyone), partition-leader-majority (a follower alone), partition-one-way
(A's connections to B dead, B's to A fine; A and B are the leader and a follower, either way round);
proxy-delay, proxy-loss (stalls and resets, see proxy.py), proxy-slow (bandwidth limit), proxy-blackhole
(both ways between two nodes) on the links of one node or pair; disk-full (the node on the small disk:
its free space filled, then freed) and corrupt-minority (a follower killed, its RocksDB files damaged,
restarted) from shmraft/faults/disk.py; wipe-follower (a follower killed, everything in its data directory
deleted, `rebuild-node` (shmraft/supervisor/rebuild.py), restarted) and follower-past-retention (a follower
killed while filler events make the leader compact past its log end, then restarted; the run's retention is
then RETAIN_BYTES_SMALL). These two also wait, up to CATCH_UP_WAIT_S, until the restarted node has caught up
with the leader's commit index at its restart (and left recovering mode): `caught_up_after_ms`, or a reported
failure (`not_caught_up`) when it does not; a follower past retention catches up through InstallSnapshot.
membership-change is a membership change while another fault is in force: a follower removed (`members
remove`) while the other follower is SIGSTOPped or the leader SIGKILLed (`with`), then killed, its data
directory emptied, added back as a learner with the same id and address, restarted to join, promoted once
caught up, and waited for like wipe-follower (`caught_up_after_ms`). The removal is asked once the other fault
is older than the leader's check-quorum window (as an operator removes a member after seeing another one down):
the leader's strict reconfiguration check (docs/DESIGN.md "Membership changes", etcd's --strict-reconfig-check)
then refuses it, the new configuration's other voter being silent, and the cluster keeps committing; it is asked
again with a backoff (CHANGE_RETRY_PAUSE_S doubling up to CHANGE_REFUSED_PAUSE_MAX_S) until it passes once that
fault is healed, and commits. The fault's record counts the refusals (`strict_refusals`).

Schedule rules (the plan is a pure function of --seed and --duration; targets named by role, "the leader",
"a follower", are resolved when the fault starts, with a seeded pick among the candidates):
1. Faults are planned in rounds; each round is every available kind once, in a seeded order, so a run
   long enough for one round (SLOT_S = 6.5 s per kind) injects every kind. The first round is always
   completed, even past --duration; later rounds only while they fit.
2. One fault at a time: each holds for a bounded, seeded time (at most FAULT_HOLD_MAX_S), is healed, and
   the next starts no sooner than FAULT_GAP_S later.
3. A fault starts only when the cluster is whole again: every node's supervisor and four workers alive, a
   leader, and every node following it (waiting at most HEALTH_WAIT_S; if that runs out the fault starts
   anyway and `unhealthy_starts` counts it). So at most one node is impaired at a time, and a majority
   is lost only for the duration of a fault that takes the leader's side away.
4. At the end everything is healed; `recovery_ms` is the time from then to the first acknowledged probe
   event (at most RECOVERY_TIMEOUT_S, else `recovered` is false).

Then every node's log is read and checked as loadgen --verify does (tools/loadgen.py: every acknowledged
event exactly once at its acknowledged offset, the same order on every node, nothing invented). Exit 1
on loss, duplicate, divergence, an unreadable node or no recovery; the last stdout line is the JSON with
--json. Everything made is removed at the end, on error and on Ctrl-C: processes, namespaces (with their
iptables rules), mounts, /dev/shm segments and the temp dir; a crashed run's leftovers are removed at the
next start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))
sys.path.insert(0, str(ROOT_DIR / "tools"))

import loadgen as lg  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from shmraft.client import Client, ShmraftError  # noqa: E402
from shmraft.config import (  # noqa: E402
    Member,
    NodeConfig,
    config_to_json,  # noqa: E402
)
from shmraft.faults import netns  # noqa: E402
from shmraft.faults.proxy import FaultProxy, LinkFaults  # noqa: E402
from shmraft.ipc import segments  # noqa: E402
from shmraft.ipc.state import Worker  # noqa: E402
from shmraft.supervisor.cluster import LocalCluster, free_port_base  # noqa: E402
from shmraft.testing.cluster import ClusterDriver, alive  # noqa: E402
from shmraft.testing.hogs import CpuHogs  # noqa: E402

NODES: Final = 3
PORT_BASE_NETNS: Final = 7000  # every namespace has its own address, so the usual ports do
CHANNELS: Final = ("data", "raft")
TEMP_PREFIX: Final = "shmraft-chaos-"  # + pid + "-": a crashed run's dir (and mount) is found by its dead pid
CLUSTER_ID_PREFIX: Final = "chaos"
RATE_DEFAULT: Final = 1500.0  # events/s in all: steady, and leaves CPU for 3 nodes on 2 cores
EVENT_BYTES_DEFAULT: Final = 100
CLIENT_TIMEOUT_S: Final = 10.0
SMALL_DISK_BYTES: Final = 256 * 1024 * 1024  # the disk-full node's data dir (tmpfs or loop device)
FIRST_FAULT_S: Final = 3.0  # after the load starts
SLOT_S: Final = 6.5  # planned spacing of fault starts (a first round of every kind always completes)
FAULT_GAP_S: Final = 1.0  # between one fault's heal and the next fault
FAULT_HOLD_MAX_S: Final = 4.0
HEALTH_WAIT_S: Final = 15.0
RESTART_WAIT_S: Final = 20.0  # a killed worker or node back up
CATCH_UP_WAIT_S: Final = 30.0  # a wiped or past-retention follower back at the leader's commit index
MEMBERSHIP_WAIT_S: Final = 60.0  # one membership change of membership-change committed (retried until then)
CHANGE_ATTEMPT_S: Final = 10.0  # one attempt of it (the admin client's own wait for the commit)
CHANGE_RETRY_PAUSE_S: Final = 0.2
CHANGE_REFUSED_PAUSE_MAX_S: Final = 1.0  # the backoff's bound while the strict reconfiguration check refuses
RETAIN_BYTES_SMALL: Final = 4 * 1024 * 1024  # the run's retention with follower-past-retention: ~25 s of the
# default load, so the other kinds (a few seconds down) stay within it
FILL_EVENT_BYTES: Final = 1000  # follower-past-retention's filler events ...
FILL_EVENTS_PER_CALL: Final = 256  # ... produced this many at a time ...
FILL_WAIT_S: Final = 60.0  # ... until the leader's log starts past the follower's end, at most this long
RECOVERY_TIMEOUT_S: Final = 60.0
START_TIMEOUT_S: Final = 60.0
PRODUCER_DRAIN_S: Final = CLIENT_TIMEOUT_S + 30.0
LONGEST_GAPS_REPORTED: Final = 5  # the report's longest gaps between acknowledgements, each with its context


@dataclass(frozen=True)
class Kind:
    name: str
    hold_s: tuple[float, float]  # seeded uniform hold time
    needs: str = ""  # "netns", "disk" or "proxy": left out when that is unavailable
    default: bool = True  # among the kinds of a run without --kinds


KINDS: Final = (
    Kind("kill-leader", (1.0, 3.0)),
    Kind("kill-follower", (1.0, 3.0)),
    Kind("kill-worker:ingest", (0.0, 0.0)),
    Kind("kill-worker:batcher", (0.0, 0.0)),
    Kind("kill-worker:sender", (0.0, 0.0)),
    Kind("kill-worker:raft", (0.0, 0.0)),
    Kind("pause-node", (1.0, 3.0)),
    # below worker_stall_timeout_ms: a pause, not a stall kill; past leader_stall_transfer_ms on the leader's
    # ingest or batcher, the leader hands leadership over (supervisor/stepaside.py)
    Kind("pause-worker", (0.5, 3.0)),
    Kind("partition-isolate", (2.0, FAULT_HOLD_MAX_S), "netns"),
    Kind("partition-leader-minority", (2.0, FAULT_HOLD_MAX_S), "netns"),
    Kind("partition-leader-majority", (2.0, FAULT_HOLD_MAX_S), "netns"),
    Kind("partition-one-way", (2.0, FAULT_HOLD_MAX_S), "netns"),
    Kind("proxy-delay", (2.0, FAULT_HOLD_MAX_S), "proxy"),
    Kind("proxy-loss", (2.0, FAULT_HOLD_MAX_S), "proxy"),
    Kind("proxy-slow", (2.0, FAULT_HOLD_MAX_S), "proxy"),
    Kind("proxy-blackhole", (2.0, FAULT_HOLD_MAX_S), "proxy"),
    Kind("disk-full", (2.0, FAULT_HOLD_MAX_S), "disk"),
    Kind("corrupt-minority", (0.5, 1.5), "disk"),
    Kind("wipe-follower", (0.5, 1.5)),
    Kind("follower-past-retention", (0.0, 0.0)),  # caught up through InstallSnapshot
    Kind("membership-change", (1.0, 3.0)),  # a follower removed while another fault holds, re-added empty
)
MEMBERSHIP_WITH: Final = ("pause-follower", "kill-leader")  # the fault in force while membership-change removes


@dataclass
class Planned:
    index: int
    at_s: float  # planned start, from the start of the load
    kind: str
    hold_s: float
    pick: float  # chooses among the candidate targets when the fault starts
    params: dict[str, Any] = field(default_factory=dict)


def plan(seed: int, duration_s: float, kinds: list[Kind], hold_s: float | None = None) -> list[Planned]:
    """The fault schedule: a pure function of its arguments (rule 1 of the module docstring).

    `hold_s` replaces every seeded hold time (kinds that hold at all) and widens the slots to match: for
    long faults, e.g. a partition of a minute, which the default 2-minute schedule never holds."""
    rng = random.Random(seed)
    slot = SLOT_S if hold_s is None else max(SLOT_S, hold_s + SLOT_S - FAULT_HOLD_MAX_S)
    out: list[Planned] = []
    t = FIRST_FAULT_S
    rounds = 0
    while True:
        order = list(kinds)
        rng.shuffle(order)
        for k in order:
            if rounds and t + slot > duration_s:
                return out
            hold = round(rng.uniform(*k.hold_s), 2)
            if hold_s is not None and k.hold_s[1] > 0:
                hold = hold_s
            params: dict[str, Any] = {}
            if k.name == "proxy-delay":
                params["delay_ms"] = round(rng.uniform(50, 300))
            elif k.name == "proxy-loss":
                params["loss_rate"] = round(rng.uniform(0.02, 0.15), 3)
            elif k.name == "proxy-slow":
                params["bandwidth_bytes_per_s"] = round(rng.uniform(30_000, 200_000))
            elif k.name == "pause-worker":
                params["worker"] = rng.choice([w.name.lower() for w in Worker])
            elif k.name == "partition-one-way":
                params["from"] = rng.choice(["leader", "follower"])
            elif k.name == "membership-change":
                params["with"] = rng.choice(MEMBERSHIP_WITH)
            out.append(Planned(len(out), round(t, 2), k.name, hold, rng.random(), params))
            t += slot
        rounds += 1


def _load_disk_module() -> Any | None:
    """shmraft/faults/disk.py when it is there (written separately); None otherwise."""
    try:
        mod = importlib.import_module("shmraft.faults.disk")
    except ImportError:
        return None
    needed = ("mount_small_disk", "unmount_small_disk", "fill_disk", "free_disk", "corrupt_rocksdb", "node_log_dir")
    return mod if all(hasattr(mod, n) for n in needed) else None


def cleanup_stale_runs(log) -> None:
    """A crashed run's mounts, temp dirs and shared memory (its pid is dead); namespaces go in TestNetwork."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and TEMP_PREFIX in parts[1]:
                mounts.append(parts[1].replace("\\040", " "))
    pattern = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")
    for mnt in sorted(mounts, key=len, reverse=True):
        m = pattern.search(mnt)
        if m and not psutil.pid_exists(int(m.group(1))):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
            log(f"chaos: removed a stale mount {mnt}")
    for d in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        m = pattern.match(d.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    removed = segments.cleanup_stale(segments.NAME_ROOT + CLUSTER_ID_PREFIX)
    if removed:
        log(f"chaos: removed stale shared memory of a crashed run: {len(removed)} names")


class NetnsCluster(LocalCluster):
    """LocalCluster whose node supervisors start inside their network namespaces (when there is a network)."""

    def __init__(self, configs: list[NodeConfig], log_dir: Path, net: netns.TestNetwork | None) -> None:
        super().__init__(configs, log_dir=log_dir)
        self.net = net

    def start_node(self, node_id: int) -> subprocess.Popen:
        if self.net is None:
            return super().start_node(node_id)
        config = next(c for c in self.configs if c.node_id == node_id)
        if config.cluster_secret_file:
            with contextlib.suppress(ImportError):
                from shmraft.net.auth import ensure_local_secret

                ensure_local_secret(config.cluster_secret_file)
        config.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = config.node_dir / "node.json"
        path.write_text(config_to_json(config))
        assert self.log_dir is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"node{node_id}.log", "ab") as out:
            proc = subprocess.Popen(
                [
                    *self.net.exec_prefix(node_id),
                    sys.executable,
                    "-m",
                    "shmraft.cli.supervisor",
                    "node",
                    "--config-json",
                    str(path),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[node_id] = proc
        return proc


class Campaign:
    """The cluster, the network, the proxy and the disk of one run, and the faults acting on them."""

    def __init__(self, args: argparse.Namespace, log) -> None:
        self.args = args
        self.log = log
        self.rng = random.Random(args.seed ^ 0x5EED)  # for what disk.corrupt_rocksdb chooses
        self.net: netns.TestNetwork | None = None
        self.netns_reason = ""
        self.proxy = FaultProxy(seed=args.seed)
        self.routed_via_proxy = not args.no_proxy  # else nodes connect to each other directly: no proxy faults
        self.disk = None if args.no_disk else _load_disk_module()
        self.disk_reason = "--no-disk" if args.no_disk else ("" if self.disk else "shmraft/faults/disk.py not found")
        self.disk_node = 0
        self.mounted: list[Path] = []
        self.filler: Path | None = None
        self.root: Path | None = None
        self.nodes: ClusterDriver | None = None
        self.configs: list[NodeConfig] = []
        self.cluster_id = f"{CLUSTER_ID_PREFIX}{os.getpid()}"
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.records: list[dict[str, Any]] = []
        self.fault_errors: list[str] = []
        self.unhealthy_starts = 0
        self.operator_repairs = 0
        self.run_id = ""  # set by main: the filler events of follower-past-retention carry it
        # the run's retention is small when follower-past-retention is among its kinds (named, or a default one)
        self.small_retention = any(k.name == "follower-past-retention" for k in select_kinds(list(KINDS), args.kinds))

    # --- setup ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cleanup_stale_runs(self.log)
        if self.args.no_netns:
            self.netns_reason = "--no-netns"
        else:
            self.netns_reason = netns.unavailable_reason()
        if not self.netns_reason:
            self.net = netns.TestNetwork(list(range(1, NODES + 1)))
            try:
                self.net.create()
            except netns.NetnsError as exc:
                self.net.destroy()
                self.net = None
                self.netns_reason = str(exc)
        if self.net is None:
            self.log(
                f"chaos: NO NETWORK NAMESPACES ({self.netns_reason}): running on 127.0.0.1 without the "
                "partition faults (proxy, process and disk faults still run)"
            )
        else:
            self.log(
                f"chaos: network namespaces {[self.net.netns(n) for n in range(1, NODES + 1)]} on bridge "
                f"{self.net.bridge}, subnet {self.net.subnet} (proxy at {self.net.root_ip})"
            )
        self.root = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=self.args.tmp))
        os.chmod(self.root, 0o700)
        if self.net is not None:
            members = tuple(
                Member(n, self.net.ip(n), *(PORT_BASE_NETNS + 100 * n + k for k in range(1, 5)))
                for n in range(1, NODES + 1)
            )
        else:
            base = free_port_base(NODES)
            members = tuple(
                Member(n, "127.0.0.1", *(base + 100 * n + k for k in range(1, 5))) for n in range(1, NODES + 1)
            )
        overrides = self._proxy_routes(members)
        from shmraft.config import CLUSTER_SECRET_FILE_ENV, LOCAL_SECRET_NAME

        secret = os.environ.get(CLUSTER_SECRET_FILE_ENV) or str(self.root / LOCAL_SECRET_NAME)
        self.configs = [
            NodeConfig(
                node_id=m.node_id,
                members=members,
                data_dir=self.root,
                cluster_id=self.cluster_id,
                bind_host=m.host,
                peer_connect_overrides=overrides[m.node_id],
                cluster_secret_file=secret,
                **({"retain_bytes_max": RETAIN_BYTES_SMALL} if self.small_retention else {}),
            )
            for m in members
        ]
        if self.small_retention:
            self.log(f"chaos: retention {RETAIN_BYTES_SMALL >> 20} MiB of entries per node (follower-past-retention)")
        if self.disk is not None:
            self.disk_node = random.Random(self.args.seed).randint(1, NODES)
            node_dir = self.configs[self.disk_node - 1].node_dir
            try:
                self.disk.mount_small_disk(node_dir, SMALL_DISK_BYTES)
                self.mounted.append(node_dir)
                self.log(
                    f"chaos: node {self.disk_node}'s data dir {node_dir} is on a {SMALL_DISK_BYTES >> 20} MiB disk"
                )
            except Exception as exc:
                self.disk_reason = f"mount_small_disk failed: {type(exc).__name__}: {exc}"
                self.disk = None
        if self.disk is None:
            self.log(f"chaos: no disk faults ({self.disk_reason})")
        self.proxy.start()
        cluster = NetnsCluster(self.configs, self.root / "logs", self.net)
        self.nodes = ClusterDriver(self.configs, self.cluster_id, cluster)
        self.nodes.start(leader_timeout_s=None)  # the warm-up waits for the whole path

    def _proxy_routes(self, members: tuple[Member, ...]) -> dict[int, str]:
        """One proxy link per (source, destination, channel); the source's traffic is routed into it."""
        overrides: dict[int, list[str]] = {m.node_id: [] for m in members}
        if not self.routed_via_proxy:
            return {n: "" for n in overrides}
        host = self.net.root_ip if self.net is not None else "127.0.0.1"
        for src in members:
            for dst in members:
                if src.node_id == dst.node_id:
                    continue
                for ch in CHANNELS:
                    port = dst.data_port if ch == "data" else dst.raft_port
                    pport = self.proxy.add_link(self.link(src.node_id, dst.node_id, ch), (host, 0), (dst.host, port))
                    if self.net is not None:
                        self.net.route_via_proxy(src.node_id, dst.host, port, pport)
                    else:
                        overrides[src.node_id].append(f"{dst.node_id}:{ch}={host}:{pport}")
        return {n: ",".join(v) for n, v in overrides.items()}

    @staticmethod
    def link(src: int, dst: int, channel: str) -> str:
        return f"{src}>{dst}:{channel}"

    @property
    def addresses(self) -> list[str]:
        return [c.me.client_address for c in self.configs]

    # --- the cluster's state ----------------------------------------------------------------------------------

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def state(self, node_id: int) -> dict[str, Any] | None:
        assert self.nodes is not None
        return self.nodes.state(node_id)

    def leader(self) -> int:
        assert self.nodes is not None
        return self.nodes.leader()

    def wait_health(self, timeout_s: float) -> str:
        """Until the cluster is whole (rule 3), `timeout_s` passes or the run stops; empty when whole, else
        what is missing."""
        assert self.nodes is not None
        return self.nodes.wait_whole(timeout_s, self.stop)

    def pick(self, candidates: list[int], pick: float) -> int:
        return sorted(candidates)[int(pick * len(candidates))] if candidates else 0

    def followers(self) -> list[int]:
        assert self.nodes is not None
        return self.nodes.followers()

    # --- faults -----------------------------------------------------------------------------------------------

    def hold(self, seconds: float, rec: dict) -> None:
        """The fault is in force from now (its unavailability counts from here); keep it for `seconds`."""
        rec["t_in_force"] = time.monotonic()
        self.stop.wait(seconds)

    def run_fault(self, p: Planned, monitor: lg.Monitor) -> dict[str, Any]:
        why = self.wait_health(HEALTH_WAIT_S)
        if why:
            self.unhealthy_starts += 1
            self.log(f"chaos: cluster not whole after {HEALTH_WAIT_S:.0f} s ({why}); starting {p.kind} anyway")
        t = time.monotonic()
        rec: dict[str, Any] = {
            "kind": p.kind,
            "planned_s": p.at_s,
            "start_s": round(self.now_s(), 2),
            "hold_s": p.hold_s,
            **p.params,
        }
        handler = getattr(self, "f_" + p.kind.split(":")[0].replace("-", "_"))
        detail = handler(p, rec)
        rec["detail"] = detail
        rec["end_s"] = round(self.now_s(), 2)
        t_healed = time.monotonic()
        # how long after the heal every node is back and following one leader (None: not within the wait); the
        # end of the run does not cut this wait short (a fault healed near the end was reported as never whole)
        assert self.nodes is not None
        rec["whole_after_ms"] = (
            None if self.nodes.wait_whole(HEALTH_WAIT_S) else round((time.monotonic() - t_healed) * 1000.0, 1)
        )
        t_restart = rec.pop("t_restart", None)
        if t_restart is not None:  # a node was restarted: whole again counted from its supervisor's start
            rec["whole_after_restart_ms"] = (
                None if rec["whole_after_ms"] is None else round((time.monotonic() - t_restart) * 1000.0, 1)
            )
        f = monitor.add_fault(p.kind, int(rec.get("node", 0)), rec.pop("t_in_force", t))
        rec["monitor"] = f
        self.log(f"[{rec['start_s']:7.2f} s] {p.kind}: {detail} (healed at {rec['end_s']:.2f} s)")
        return rec

    def _restart_node(self, node: int, rec: dict | None = None) -> None:
        """Start the node's supervisor (noting when in `rec`) and wait until it is up (RESTART_WAIT_S at most)."""
        assert self.nodes is not None
        if rec is not None:
            rec["t_restart"] = time.monotonic()
        self.nodes.start_node(node)
        deadline = time.monotonic() + RESTART_WAIT_S
        while not self.nodes.node_up(node) and time.monotonic() < deadline:
            time.sleep(0.05)

    def f_kill_leader(self, p: Planned, rec: dict) -> str:
        return self._kill_node(self.leader(), "leader", p, rec)

    def f_kill_follower(self, p: Planned, rec: dict) -> str:
        return self._kill_node(self.pick(self.followers(), p.pick), "follower", p, rec)

    def _kill_node(self, node: int, role: str, p: Planned, rec: dict) -> str:
        assert self.nodes is not None
        if not node:
            return f"no {role} to kill"
        rec["node"] = node
        self.nodes.kill_node(node)
        self.hold(p.hold_s, rec)
        self._restart_node(node, rec)
        return f"SIGKILL node {node} ({role}), restarted after {p.hold_s:.2f} s"

    def f_kill_worker(self, p: Planned, rec: dict) -> str:
        assert self.nodes is not None
        worker = Worker[p.kind.split(":")[1].upper()]
        node = self.pick(list(range(1, NODES + 1)), p.pick)
        rec["node"] = node
        role = "leader" if node == self.leader() else "follower"
        old = self.nodes.kill_worker(node, worker)
        self.hold(0.0, rec)
        deadline = time.monotonic() + RESTART_WAIT_S
        new = old
        while time.monotonic() < deadline and not self.stop.is_set():
            s = self.state(node)
            new = s["pids"][worker] if s else 0
            if new and new != old and alive(new):
                break
            time.sleep(0.05)
        back = f"restarted as pid {new}" if new != old else "NOT restarted in time"
        return f"SIGKILL {worker.name.lower()} worker pid {old} of node {node} ({role}); {back}"

    def f_pause_node(self, p: Planned, rec: dict) -> str:
        assert self.nodes is not None
        node = self.pick(list(range(1, NODES + 1)), p.pick)
        role = "leader" if node == self.leader() else "follower"
        rec["node"] = node
        self.nodes.pause_node(node)
        self.hold(p.hold_s, rec)
        self.nodes.resume_node(node)
        return f"SIGSTOP node {node} ({role}) for {p.hold_s:.2f} s"

    def f_pause_worker(self, p: Planned, rec: dict) -> str:
        assert self.nodes is not None
        worker = Worker[p.params["worker"].upper()]
        node = self.pick(list(range(1, NODES + 1)), p.pick)
        rec["node"] = node
        pid = self.nodes.pause_worker(node, worker)
        if not pid:
            return f"no {worker.name.lower()} worker on node {node}"
        self.hold(p.hold_s, rec)
        self.nodes.resume_worker(pid)
        return f"SIGSTOP {worker.name.lower()} worker pid {pid} of node {node} for {p.hold_s:.2f} s"

    def f_partition_isolate(self, p: Planned, rec: dict) -> str:
        assert self.net is not None
        node = self.pick(list(range(1, NODES + 1)), p.pick)
        role = "leader" if node == self.leader() else "follower"
        rec["node"] = node
        self.net.isolate(node)
        self.hold(p.hold_s, rec)
        self.net.heal()
        return f"node {node} ({role}) cut off from peers and clients for {p.hold_s:.2f} s"

    def f_partition_leader_minority(self, p: Planned, rec: dict) -> str:
        assert self.net is not None
        leader = self.leader()
        if not leader:
            return "no leader to cut off"
        rec["node"] = leader
        self.net.split([leader])
        self.hold(p.hold_s, rec)
        self.net.heal()
        others = [n for n in range(1, NODES + 1) if n != leader]
        return f"split {{{leader}}} | {set(others)}: the leader in the minority for {p.hold_s:.2f} s"

    def f_partition_leader_majority(self, p: Planned, rec: dict) -> str:
        assert self.net is not None
        node = self.pick(self.followers(), p.pick)
        rec["node"] = node
        self.net.split([node])
        self.hold(p.hold_s, rec)
        self.net.heal()
        others = [n for n in range(1, NODES + 1) if n != node]
        return f"split {{{node}}} | {set(others)}: the leader ({self.leader()}) in the majority for {p.hold_s:.2f} s"

    def f_partition_one_way(self, p: Planned, rec: dict) -> str:
        assert self.net is not None
        leader = self.leader()
        follower = self.pick(self.followers(), p.pick)
        a, b = (leader, follower) if p.params["from"] == "leader" else (follower, leader)
        rec["node"], rec["to"] = a, b
        self.net.block(a, b)
        self.hold(p.hold_s, rec)
        self.net.heal()
        return (
            f"node {a} ({'leader' if a == leader else 'follower'}) -> node {b} dropped, {b} -> {a} fine, "
            f"for {p.hold_s:.2f} s"
        )

    def _node_links(self, node: int) -> list[str]:
        return [n for n in self.proxy.links() if n.startswith(f"{node}>") or n.split(":")[0].endswith(f">{node}")]

    def _proxy_fault(self, p: Planned, rec: dict, faults: LinkFaults, what: str) -> str:
        node = self.pick(list(range(1, NODES + 1)), p.pick)
        role = "leader" if node == self.leader() else "follower"
        rec["node"] = node
        names = self._node_links(node)
        for name in names:
            self.proxy.set_faults(name, faults)
        self.hold(p.hold_s, rec)
        self.proxy.clear()
        return f"{what} on the {len(names)} proxy links of node {node} ({role}) for {p.hold_s:.2f} s"

    def f_proxy_delay(self, p: Planned, rec: dict) -> str:
        return self._proxy_fault(p, rec, LinkFaults(delay_ms=p.params["delay_ms"]), f"+{p.params['delay_ms']} ms")

    def f_proxy_loss(self, p: Planned, rec: dict) -> str:
        lf = LinkFaults(loss_rate=p.params["loss_rate"])
        return self._proxy_fault(p, rec, lf, f"loss {p.params['loss_rate']:.1%} (stalls and resets)")

    def f_proxy_slow(self, p: Planned, rec: dict) -> str:
        bw = p.params["bandwidth_bytes_per_s"]
        return self._proxy_fault(p, rec, LinkFaults(bandwidth_bytes_per_s=bw), f"{bw / 1000:.0f} KB/s")

    def f_proxy_blackhole(self, p: Planned, rec: dict) -> str:
        pairs = [(a, b) for a in range(1, NODES + 1) for b in range(a + 1, NODES + 1)]
        a, b = pairs[int(p.pick * len(pairs))]
        rec["node"], rec["to"] = a, b
        names = [self.link(x, y, ch) for x, y in ((a, b), (b, a)) for ch in CHANNELS]
        for name in names:
            self.proxy.set_faults(name, LinkFaults(blackhole=True))
        self.hold(p.hold_s, rec)
        self.proxy.clear()
        return f"proxy blackhole between nodes {a} and {b} for {p.hold_s:.2f} s"

    def f_disk_full(self, p: Planned, rec: dict) -> str:
        assert self.disk is not None
        node = self.disk_node
        rec["node"] = node
        role = "leader" if node == self.leader() else "follower"
        self.filler = self.disk.fill_disk(self.configs[node - 1].node_dir)
        self.hold(p.hold_s, rec)
        self.disk.free_disk(self.filler)
        self.filler = None
        return f"node {node} ({role}): data disk full for {p.hold_s:.2f} s"

    def f_corrupt_minority(self, p: Planned, rec: dict) -> str:
        assert self.disk is not None and self.nodes is not None
        node = self.pick(self.followers(), p.pick)
        rec["node"] = node
        self.nodes.kill_node(node)
        log_dir = self.disk.node_log_dir(self.configs[node - 1].node_dir)
        what = self.disk.corrupt_rocksdb(log_dir, self.rng)
        self.hold(p.hold_s, rec)
        self._restart_node(node)
        why = self.wait_health(HEALTH_WAIT_S)
        outcome = "rejoined" if not why else f"not back in {HEALTH_WAIT_S:.0f} s ({why})"
        rec["corruption"] = str(what)
        rec["rejoined"] = not why
        return f"node {node} (follower) killed, {what}, restarted: {outcome}"

    def f_wipe_follower(self, p: Planned, rec: dict) -> str:
        """A follower's disk replaced by an empty one: killed, its data directory emptied (the directory stays: it
        may be a mount point), `rebuild-node`, restarted; then caught up (`_catch_up`)."""
        from shmraft.supervisor.rebuild import rebuild_node

        assert self.nodes is not None
        node = self.pick(self.followers(), p.pick)
        if not node:
            return "no follower to wipe"
        rec["node"] = node
        self.nodes.kill_node(node)
        self._empty_node_dir(node)
        plan = rebuild_node(self.configs, node)
        rec["recovery_term"] = plan.recovery_term
        self.hold(p.hold_s, rec)
        target = self._leader_commit()
        self._restart_node(node, rec)
        outcome = self._catch_up(node, target, rec)
        return f"node {node} (follower) wiped, rebuilt at term {plan.recovery_term}, restarted: {outcome}"

    def _empty_node_dir(self, node: int) -> None:
        """Everything in a killed node's data directory deleted (the directory stays: it may be a mount point),
        once its log's lock is gone (a killed worker's lock goes with its process, a moment after the signal)."""
        from shmraft.storage.nodelog import node_log_dir
        from shmraft.supervisor.rebuild import log_is_locked

        node_dir = self.configs[node - 1].node_dir
        log_dir = node_log_dir(node_dir)
        deadline = time.monotonic() + RESTART_WAIT_S
        while log_is_locked(log_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in list(node_dir.iterdir()) if node_dir.exists() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def f_membership_change(self, p: Planned, rec: dict) -> str:
        """A membership change while another fault is in force, then the node back as a new one.

        A follower is removed while the other fault holds (`with`: the other follower SIGSTOPped, or the leader
        SIGKILLed, the removal then going to a new leader), asked once that fault is older than the leader's
        check-quorum window: the new configuration's majority being both nodes left, one of them silent, the
        leader's strict reconfiguration check refuses it (`strict_refusals` counts the refusals) and the
        cluster keeps committing; the fault is healed after the hold time and the removal, asked again with a
        backoff, passes and commits. Then the
        removed node is killed, its data directory emptied, added back as a learner with the same id and
        address, restarted to join (empty log: snapshot and log from the leader), promoted once caught up
        (NOT_CAUGHT_UP until then), and waited for at the leader's commit index (`_catch_up`)."""
        assert self.nodes is not None
        leader = self.leader()
        followers = self.followers()
        node = self.pick(followers, p.pick)
        if not leader or not node:
            return "no leader or no follower to remove"
        rec["node"] = node
        other = next((n for n in range(1, NODES + 1) if n not in (leader, node)), 0)
        with_what = p.params["with"]
        if with_what == "pause-follower":
            self.nodes.pause_node(other)
            heal = lambda: self.nodes.resume_node(other)  # noqa: E731
            fault = f"node {other} (the other follower) SIGSTOPped"
        else:
            self.nodes.kill_node(leader)
            heal = lambda: self._restart_node(leader, rec)  # noqa: E731
            fault = f"node {leader} (the leader) SIGKILLed"
        from shmraft.wire import client as cp

        outcome: list[str] = []
        rec["strict_refusals"] = 0
        conf = self.configs[0]
        known_down_s = (conf.election_timeout_ms + conf.heartbeat_interval_ms) / 1000  # the check-quorum window

        def remove() -> None:
            self.stop.wait(known_down_s)
            outcome.append(self._change_until(cp.ChangeOp.REMOVE, node, None, lambda view: view.get(node) is None, rec))

        removal = threading.Thread(target=remove, name="membership-change", daemon=True)
        try:
            removal.start()
            self.hold(p.hold_s, rec)
        finally:
            rec["healing_s"] = round(self.now_s(), 2)
            heal()
        removal.join(MEMBERSHIP_WAIT_S + CHANGE_ATTEMPT_S)
        if outcome != [""]:
            raise RuntimeError(f"node {node} not removed ({fault}): {outcome[0] if outcome else 'still asking'}")
        self.nodes.kill_node(node)
        self._empty_node_dir(node)
        config = self.configs[node - 1]
        self._set_config(replace(config, join=True))  # an empty log: it boots as a learner, never a candidate
        try:
            why = self._change_until(cp.ChangeOp.ADD_LEARNER, node, config.me, lambda view: view.get(node) is not None)
            if why:
                raise RuntimeError(f"node {node} not added back as a learner: {why}")
            target = self._leader_commit()
            self._restart_node(node)
            why = self._change_until(cp.ChangeOp.PROMOTE, node, None, lambda view: _is_voter(view, node))
            if why:
                raise RuntimeError(f"node {node} added back but not promoted: {why}")
        finally:
            self._set_config(config)  # for later restarts: its log holds the configuration now
        caught_up = self._catch_up(node, target, rec)
        return (
            f"node {node} (follower) removed while {fault} for {p.hold_s:.2f} s (refused "
            f"{rec['strict_refusals']} times by the strict reconfiguration check until healed), then emptied, "
            f"added back as a learner and promoted: {caught_up}"
        )

    def _change_until(self, op: Any, node: int, member: Member | None, done: Any, rec: dict | None = None) -> str:
        """Ask for one membership change until the leader's configuration satisfies `done` with no change
        pending (a change interrupted by a fault may have committed or not: the members are asked first),
        at most MEMBERSHIP_WAIT_S; returns "" when it does, else the last error. A refusal of the strict
        reconfiguration check is counted in `rec["strict_refusals"]` and asked again after a pause that doubles
        from CHANGE_RETRY_PAUSE_S up to CHANGE_REFUSED_PAUSE_MAX_S."""
        from shmraft.client import admin
        from shmraft.client.errors import QuorumNotActive
        from shmraft.net.auth import cluster_secret

        secret = cluster_secret(self.configs[0])
        deadline = time.monotonic() + MEMBERSHIP_WAIT_S
        last = "no answer"
        pause_s = CHANGE_RETRY_PAUSE_S
        while time.monotonic() < deadline and not self.stop.is_set():
            refused = False
            try:
                view = admin.list_members(self.addresses)
                if done(view) and not view.change_pending:
                    return ""
            except ShmraftError as exc:
                last = f"members: {type(exc).__name__}: {exc}"
            else:
                # the leader first: a SIGSTOPped node asked first would hold the request until it is resumed
                known = view.get(view.leader_id)
                first = known.member.client_address if known is not None and known.member is not None else ""
                try:
                    asked_s = round(self.now_s(), 2)
                    admin.change_member(
                        sorted(self.addresses, key=lambda a: a != first),
                        op,
                        node,
                        secret=secret,
                        cluster_id=self.cluster_id,
                        member=member,
                        timeout_s=min(CHANGE_ATTEMPT_S, max(deadline - time.monotonic(), 0.1)),
                        wait_quorum=False,
                    )
                    if rec is not None:  # when the change that committed was asked (campaign time, s)
                        rec["change_accepted_s"] = asked_s
                except QuorumNotActive as exc:  # the strict reconfiguration check: asked again, backing off
                    last = f"{op.name}: {type(exc).__name__}: {exc}"
                    refused = True
                    if rec is not None:
                        rec["strict_refusals"] = rec.get("strict_refusals", 0) + 1
                except ShmraftError as exc:  # NOT_CAUGHT_UP, CHANGE_IN_PROGRESS, TIMEOUT, ...: asked again
                    last = f"{op.name}: {type(exc).__name__}: {exc}"
            if refused:
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, CHANGE_REFUSED_PAUSE_MAX_S)
            else:
                pause_s = CHANGE_RETRY_PAUSE_S
                time.sleep(CHANGE_RETRY_PAUSE_S)
        return last

    def _set_config(self, config: NodeConfig) -> None:
        """Replace a node's config everywhere it is held (written to its node.json at its next start)."""
        self.configs[config.node_id - 1] = config
        assert self.nodes is not None
        for held in (self.nodes.configs, self.nodes.local.configs):
            if held is not self.configs:
                held[:] = [config if c.node_id == config.node_id else c for c in held]

    def f_follower_past_retention(self, p: Planned, rec: dict) -> str:
        """A follower down while the leader compacts past its log end (filler events speed that up); restarted,
        it needs the leader's snapshot (InstallSnapshot) to catch up."""
        assert self.nodes is not None
        node = self.pick(self.followers(), p.pick)
        if not node:
            return "no follower to stop"
        rec["node"] = node
        end = (self.state(node) or {}).get("last_index", 0)
        self.nodes.kill_node(node)
        rec["t_in_force"] = time.monotonic()
        filled, leader_start = self._fill_past(end)
        rec["filler_events"] = filled
        if leader_start <= end + 1:
            raise RuntimeError(
                f"the leader did not compact past node {node}'s log end {end} in {FILL_WAIT_S:.0f} s "
                f"(its log starts at {leader_start}; {filled} filler events)"
            )
        target = self._leader_commit()
        self._restart_node(node)
        outcome = self._catch_up(node, target, rec)
        return (
            f"node {node} (follower, log end {end}) down until the leader's log started at {leader_start} "
            f"({filled} filler events), restarted: {outcome}"
        )

    def _leader_commit(self) -> int:
        leader = self.leader()
        return int((self.state(leader) or {}).get("commit_index", 0)) if leader else 0

    def _fill_past(self, end: int) -> tuple[int, int]:
        """Filler events (`<run>:w:fill...`, which verification accepts like the warm-up) until the leader's log
        starts after `end`, or FILL_WAIT_S; returns (events produced, the leader's first index then)."""
        deadline = time.monotonic() + FILL_WAIT_S
        filled = 0
        pad = b"x" * FILL_EVENT_BYTES
        first = 0
        with Client(self.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
            while time.monotonic() < deadline and not self.stop.is_set():
                leader = self.leader()
                first = int((self.state(leader) or {}).get("first_index", 0)) if leader else 0
                if first > end + 1:
                    break
                batch = [f"{self.run_id}:w:fill{filled + i}:".encode() + pad for i in range(FILL_EVENTS_PER_CALL)]
                try:
                    c.produce_many(batch)
                except ShmraftError:
                    time.sleep(0.1)
                    continue
                filled += len(batch)
        return filled, first

    def _catch_up(self, node: int, target: int, rec: dict) -> str:
        """Until the restarted `node` is out of recovering mode with its commit index at `target` (the leader's
        when it was restarted), at most CATCH_UP_WAIT_S: `caught_up_after_ms`, else a failure in `fault_errors`."""
        from shmraft.supervisor.status import node_status

        t = time.monotonic()
        deadline = t + CATCH_UP_WAIT_S
        st: dict[str, Any] = {}
        while time.monotonic() < deadline and not self.stop.is_set():
            st = node_status(self.configs[node - 1])
            if st.get("recovering") is False and (st.get("commit_index") or 0) >= target:
                rec["caught_up_after_ms"] = round((time.monotonic() - t) * 1000.0, 1)
                return f"caught up to {target} in {rec['caught_up_after_ms']:.0f} ms"
            time.sleep(0.1)
        rec["caught_up_after_ms"] = None
        seen = {k: st.get(k) for k in ("commit_index", "recovering", "status")}
        msg = f"node {node} not caught up to commit {target} within {CATCH_UP_WAIT_S:.0f} s ({seen})"
        self.fault_errors.append(f"{rec['kind']}: {msg}")
        return msg

    # --- healing and cleanup ----------------------------------------------------------------------------------

    def heal_all(self) -> None:
        """Undo every fault that may be in force (each is healed by its own handler too; this is for errors)."""
        if self.net is not None:
            self.net.heal()
        self.proxy.clear()
        if self.filler is not None and self.disk is not None:
            with contextlib.suppress(Exception):
                self.disk.free_disk(self.filler)
            self.filler = None
        if self.nodes is not None:
            self.nodes.resume_all()
            for n in range(1, NODES + 1):
                proc = self.nodes.local.procs.get(n)
                if proc is None or proc.poll() is not None:
                    self.log(f"chaos: node {n} is down at the final heal: restarting it")
                    self.nodes.start_node(n)

    def teardown(self) -> None:
        """Remove everything this run made, whatever state it is in; every step runs even if one fails."""
        steps = [self._stop_cluster, self.proxy.close, self._unmount, self._destroy_net, self._remove_root]
        for step in steps:
            try:
                step()
            except Exception as exc:
                self.log(f"chaos: cleanup step {step.__name__} failed: {type(exc).__name__}: {exc}")

    def _stop_cluster(self) -> None:
        self.stop.set()
        if self.nodes is None:
            return
        left = self.nodes.stop()
        if left.segments:
            self.log(f"chaos: removed leftover shared memory: {len(left.segments)} names")

    def _unmount(self) -> None:
        if self.disk is None:
            return
        if self.filler is not None:
            with contextlib.suppress(Exception):
                self.disk.free_disk(self.filler)
        for path in self.mounted:
            self.disk.unmount_small_disk(path)
        self.mounted.clear()

    def _destroy_net(self) -> None:
        if self.net is not None:
            self.net.destroy()
            left = self.net.leftovers()
            if left:
                self.log(f"chaos: namespaces/links left behind: {left}")

    def _remove_root(self) -> None:
        if self.root is not None and not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root is not None:
            self.log(f"chaos: kept {self.root} (--keep)")


def _is_voter(view: Any, node: int) -> bool:
    """Whether `node` is a voter in a members view (shmraft.client.admin.Membership)."""
    m = view.get(node)
    return m is not None and m.role == "voter"


# --- the run, phase by phase ------------------------------------------------------------------------------------


def probe_until_committed(addresses: list[str], run_id: str, timeout_s: float) -> float | None:
    """Seconds until a fresh probe event is acknowledged, or None."""
    t = time.monotonic()
    deadline = t + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            with Client(addresses, timeout_s=min(5.0, max(0.5, deadline - time.monotonic()))) as c:
                c.produce(f"{run_id}:w:probe{n}:".encode())
            return time.monotonic() - t
        except ShmraftError:
            time.sleep(0.2)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults (default 120)")
    ap.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default random, printed)")
    ap.add_argument("--json", action="store_true", help="the report as one JSON line, last")
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=RATE_DEFAULT, help="events/s in all, open loop")
    ap.add_argument("--size", type=int, default=EVENT_BYTES_DEFAULT, help="event bytes")
    ap.add_argument("--no-netns", action="store_true", help="run on 127.0.0.1 even when namespaces work")
    ap.add_argument("--no-disk", action="store_true", help="leave out the disk faults")
    ap.add_argument(
        "--no-proxy",
        action="store_true",
        help="nodes connect to each other directly, not through the fault proxy (no proxy faults): "
        "for partitions that only the nodes' own sockets see",
    )
    ap.add_argument("--tmp", default=None, help="parent of the run's temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (node logs) afterwards")
    ap.add_argument("--kinds", default=None, help="comma-separated fault kinds to use (default: every available)")
    ap.add_argument(
        "--hold-s",
        type=float,
        default=None,
        help="hold every fault this long instead of the seeded 0.5-4 s (long partitions, pauses)",
    )
    ap.add_argument(
        "--cpu-hogs",
        type=int,
        default=0,
        help="run N busy-loop processes at normal priority beside the cluster for the whole run (CPU contention)",
    )
    ap.add_argument("--plan", action="store_true", help="print the schedule for --seed/--duration and exit")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    if args.duration <= 0 or args.producers < 1 or args.rate <= 0:
        ap.error("--duration, --producers and --rate must be positive")
    if args.cpu_hogs < 0:
        ap.error("--cpu-hogs must be 0 or more")
    return args


def select_kinds(kinds: list[Kind], wanted_csv: str | None) -> list[Kind]:
    """`kinds` narrowed to the comma-separated names of --kinds (all of them without it)."""
    if not wanted_csv:
        return [k for k in kinds if k.default]
    wanted = set(wanted_csv.split(","))
    unknown = wanted - {k.name for k in KINDS}
    if unknown:
        raise SystemExit(f"chaos: --kinds: expected names from {[k.name for k in KINDS]}, got {sorted(unknown)}")
    return [k for k in kinds if k.name in wanted]


def available_kinds(net: bool, disk: bool, proxy: bool = True) -> list[Kind]:
    have = {"": True, "netns": net, "disk": disk, "proxy": proxy}
    return [k for k in KINDS if have[k.needs]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_plan(args: argparse.Namespace) -> None:
    """--plan: the schedule as if every kind were available (root, namespaces, the proxy); a run without
    them plans fewer kinds."""
    for p in plan(args.seed, args.duration, select_kinds(list(KINDS), args.kinds), args.hold_s):
        print(f"  {p.at_s:7.2f} s  {p.kind:26} hold {p.hold_s:.2f} s  pick {p.pick:.3f}  {p.params}")


def plan_faults(args: argparse.Namespace, camp: Campaign) -> list[Planned]:
    """The schedule over the kinds this run can inject."""
    kinds = select_kinds(
        available_kinds(camp.net is not None, camp.disk is not None, camp.routed_via_proxy), args.kinds
    )
    schedule = plan(args.seed, args.duration, kinds, args.hold_s)
    log(
        f"chaos: {len(schedule)} faults planned over {args.duration:g} s: {len(kinds)} kinds "
        f"({', '.join(k.name for k in kinds)})"
    )
    return schedule


def load_options(args: argparse.Namespace, run_id: str, addresses: list[str]) -> dict[str, Any]:
    """The steady open-loop load (loadgen's producers), running until it is stopped."""
    return {
        "run_id": run_id,
        "addresses": addresses,
        "size": args.size,
        "batch": 32,
        "window": 8,
        "linger_ms": 1.0,
        "rate": args.rate,
        "producers": args.producers,
        "duration": 10 * args.duration + 3600,
        "quota": None,
        "client_timeout": CLIENT_TIMEOUT_S,
    }


def run_schedule(camp: Campaign, schedule: list[Planned], pool: lg.ProducerPool, monitor: lg.Monitor) -> None:
    """Every planned fault in turn (rule 2), then the rest of --duration."""
    t_start = pool.t_start
    while time.monotonic() < t_start:
        time.sleep(0.05)
    last_end = 0.0
    for p in schedule:
        start = max(t_start + p.at_s, last_end + FAULT_GAP_S)
        while time.monotonic() < start:
            time.sleep(min(0.1, start - time.monotonic()))
            if not pool.any_alive():
                raise RuntimeError("every producer process has exited (tracebacks above)")
        try:
            camp.records.append(camp.run_fault(p, monitor))
        except Exception as exc:  # a fault that could not be injected is reported; the run goes on
            camp.fault_errors.append(f"{p.kind}: {type(exc).__name__}: {exc}")
            log(f"chaos: fault {p.kind} failed: {type(exc).__name__}: {exc}")
            camp.heal_all()
        last_end = time.monotonic()
    while time.monotonic() < t_start + camp.args.duration:
        time.sleep(0.1)


def heal_and_recover(camp: Campaign, run_id: str, t_start: float) -> float | None:
    """Rule 4: heal everything, then seconds until a probe event is acknowledged (None: not recovered)."""
    camp.heal_all()
    t_heal = time.monotonic()
    log(f"chaos: everything healed at {t_heal - t_start:.1f} s; waiting for a commit")
    rec_s = probe_until_committed(camp.addresses, run_id, RECOVERY_TIMEOUT_S)
    log(
        f"chaos: committing again {rec_s * 1000:.0f} ms after the heal"
        if rec_s is not None
        else f"chaos: NOT RECOVERED: no commit in {RECOVERY_TIMEOUT_S:.0f} s after the heal"
    )
    return rec_s


def verify_logs(camp: Campaign, run_id: str, got: lg.Acked) -> tuple[dict[str, Any], str]:
    """Every node's log checked as loadgen --verify does, once the cluster is whole; returns the verdict and
    what kept the cluster from being whole (empty if it was)."""
    why = camp.wait_health(RECOVERY_TIMEOUT_S)
    if why:
        log(f"chaos: the cluster is not whole after healing: {why}")
    log(f"chaos: verifying {len(camp.addresses)} node logs ({len(got.values):,} acknowledged events) ...")
    v = lg.verify(
        run_id,
        camp.addresses,
        got.values,
        got.generated,
        camp.nodes,
        log,
        wait_s=RECOVERY_TIMEOUT_S,
        retention=camp.small_retention,
    )
    return v, why


def failed(v: dict[str, Any], recovered: bool, fault_errors: list[str] | None = None) -> bool:
    """Loss, a duplicate, divergence, a node behind, an invented or misplaced event, an unreadable node, no
    recovery, or a fault that failed (e.g. a rebuilt follower that never caught up)."""
    return bool(
        fault_errors
        or v["lost"]
        or v["duplicated"]
        or v["divergent"]
        or v["behind"]
        or v["invented"]
        or v["misplaced"]
        or v["read_errors"]
        or not recovered
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_begin = time.monotonic()
    print(f"chaos: seed {args.seed} (rerun the same schedule with --seed {args.seed})", flush=True)
    if args.plan:
        print_plan(args)
        return 0
    lg.stop_on_sigterm()
    camp = Campaign(args, log)
    hogs = CpuHogs(args.cpu_hogs)
    run_id = secrets.token_hex(4)
    camp.run_id = run_id
    pool: lg.ProducerPool | None = None
    monitor: lg.Monitor | None = None
    try:
        camp.setup()
        schedule = plan_faults(args, camp)
        hogs.start()
        took_s = lg.warm_up(camp.addresses, run_id)
        log(f"chaos: cluster {camp.cluster_id} serving ({took_s:.1f} s); run {run_id}")
        pool = lg.ProducerPool(load_options(args, run_id, camp.addresses), args.tmp, f"{TEMP_PREFIX}{os.getpid()}-out-")
        pool.start()
        camp.t0 = pool.t_start
        monitor = lg.Monitor(camp.nodes, camp.addresses, pool.t_start)
        monitor.start()
        run_schedule(camp, schedule, pool, monitor)
        rec_s = heal_and_recover(camp, run_id, pool.t_start)
        pool.join(PRODUCER_DRAIN_S)
        monitor.finish()
        got = pool.results(run_id, want_values=True)
        v, why = verify_logs(camp, run_id, got)
        report = build_report(args, camp, monitor, v, got, pool.t_start, rec_s, time.monotonic() - t_begin, bool(why))
        print_report(report, camp)
        if args.json:
            print(json.dumps(report, separators=(",", ":")), flush=True)
        return 1 if failed(v, rec_s is not None, camp.fault_errors) else 0
    except KeyboardInterrupt:
        log("chaos: interrupted; cleaning up")
        return 130
    finally:
        camp.stop.set()
        if monitor is not None:
            monitor.stop_flag.set()
        if pool is not None:
            pool.close()
        hogs.stop()
        camp.teardown()


def _median_max(xs: list[float]) -> dict[str, float | None]:
    return {"median": round(float(np.median(xs)), 1), "max": round(max(xs), 1)} if xs else {"median": None, "max": None}


def longest_gaps(
    acks_s: np.ndarray, fault_log: list[dict[str, Any]], leaders_seen: list[tuple[float, int, int]], n: int
) -> list[dict[str, Any]]:
    """The `n` longest gaps between acknowledgements (times in seconds from the load's start, sorted), each
    with what was going on: the fault in force when it began (or the last one healed before it, and how long
    before), and the leaders the monitor saw take over during it. So a gap no fault explains stands out."""
    if acks_s.size < 2:
        return []
    gaps = np.diff(acks_s)
    out = []
    for i in np.argsort(gaps)[::-1][:n].tolist():
        start, end = float(acks_s[i]), float(acks_s[i + 1])
        g: dict[str, Any] = {"start_s": round(start, 3), "gap_ms": round((end - start) * 1000.0, 1)}
        before = [f for f in fault_log if f["start_s"] <= end]
        if before:
            f = max(before, key=lambda f: f["start_s"])
            g["fault"] = f"{f['kind']} node {f.get('node', 0)}"
            g["fault_start_s"] = f["start_s"]
            healed = f.get("end_s")
            g["after_heal_ms"] = None if healed is None or healed >= start else round((start - healed) * 1000.0, 1)
        g["leaders"] = [[t, leader, term] for t, leader, term in leaders_seen if start <= t <= end]
        out.append(g)
    return out


def by_kind(fault_log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fault kind: how many, the client-seen unavailability and the time until the cluster was whole
    again after the heal (median and max over the faults of that kind that have the figure; a fault with no
    later acknowledgement or not whole within the wait is counted in `no_ack` / `not_whole`)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({f["kind"] for f in fault_log}):
        fs = [f for f in fault_log if f["kind"] == kind]
        unavail = [f["unavailability_ms"] for f in fs if f["unavailability_ms"] is not None]
        whole = [f["whole_after_ms"] for f in fs if f.get("whole_after_ms") is not None]
        caught = [f for f in fs if "caught_up_after_ms" in f]
        extra: dict[str, Any] = {}
        restarted = [f["whole_after_restart_ms"] for f in fs if f.get("whole_after_restart_ms") is not None]
        if restarted:  # kinds that restart a node: whole again counted from its supervisor's start
            extra["whole_after_restart_ms"] = _median_max(restarted)
        if caught:  # wipe-follower, follower-past-retention: the restarted node back at the leader's commit
            ms = [f["caught_up_after_ms"] for f in caught if f["caught_up_after_ms"] is not None]
            extra = {"caught_up_after_ms": _median_max(ms), "not_caught_up": len(caught) - len(ms)}
        out[kind] = {
            "count": len(fs),
            "unavailability_ms": _median_max(unavail),
            "whole_after_ms": _median_max(whole),
            "no_ack": len(fs) - len(unavail),
            "not_whole": len(fs) - len(whole),
            **extra,
        }
    return out


def build_report(
    args: argparse.Namespace,
    camp: Campaign,
    monitor: lg.Monitor,
    v: dict[str, Any],
    got: lg.Acked,
    t_start: float,
    rec_s: float | None,
    elapsed_s: float,
    not_whole: bool,
) -> dict[str, Any]:
    lg.fill_unavailability(monitor.faults, monitor.fault_times, got.due, got.ack)
    acks = np.sort(got.ack[got.ack >= t_start])
    gaps = np.diff(acks) if acks.size > 1 else np.zeros(0)
    faults = Counter(r["kind"] for r in camp.records)
    fault_log = []
    for r in camp.records:
        m = r.pop("monitor")
        fault_log.append({k: r[k] for k in r if k != "monitor"} | {"unavailability_ms": m["unavailability_ms"]})
    return {
        "seed": args.seed,
        "netns": camp.net is not None,
        "netns_reason": camp.netns_reason or None,
        "disk_faults": camp.disk is not None,
        "disk_reason": camp.disk_reason or None,
        "faults": dict(sorted(faults.items())),
        "fault_errors": camp.fault_errors,
        "unhealthy_starts": camp.unhealthy_starts,
        "acknowledged": len(got.values),
        "lost": v["lost"],
        "duplicates": v["duplicated"],
        "divergent": v["divergent"],
        "invented": v["invented"],
        "misplaced": v["misplaced"],
        "read_errors": v["read_errors"],
        "recovered": rec_s is not None,
        "recovery_ms": round(rec_s * 1000.0, 1) if rec_s is not None else None,
        "whole_after_heal": not not_whole,
        "unavailability": {
            "longest_ack_gap_ms": round(float(gaps.max()) * 1000.0, 1) if gaps.size else None,
            "time_in_gaps_over_1s_s": round(float(gaps[gaps > 1.0].sum()), 2),
            "longest_gaps": longest_gaps(acks - t_start, fault_log, monitor.leaders_seen, LONGEST_GAPS_REPORTED),
        },
        "by_kind": by_kind(fault_log),
        "client_errors": dict(got.errors),
        "leader_changes": monitor.leader_changes,
        "elections": monitor.elections,
        "leaders_seen": monitor.leaders_seen,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed_s, 1),
        "settings": {"producers": args.producers, "rate": args.rate, "size": args.size, "cpu_hogs": args.cpu_hogs},
        "fault_log": fault_log,
    }


def print_report(report: dict[str, Any], camp: Campaign) -> None:
    hogs = report["settings"]["cpu_hogs"]
    lines = [
        f"chaos run, seed {report['seed']}: network namespaces {'yes' if report['netns'] else 'NO'}, "
        f"disk faults {'yes' if report['disk_faults'] else 'no'}"
        + (f", {hogs} CPU hog(s) beside the cluster" if hogs else "")
    ]
    by_kind_starts: dict[str, list[str]] = {}
    for f in report["fault_log"]:
        u = f["unavailability_ms"]
        w = f.get("whole_after_ms")
        by_kind_starts.setdefault(f["kind"], []).append(
            f"{f['start_s']:.1f}s"
            + (f" ({u:.0f} ms" if u is not None else " (-")
            + (f", whole {w:.0f} ms after the heal" if w is not None else ", NOT whole after the heal")
            + (
                ""
                if "caught_up_after_ms" not in f
                else f", caught up {f['caught_up_after_ms']:.0f} ms after its restart)"
                if f["caught_up_after_ms"] is not None
                else ", NOT caught up)"
            )
            + ("" if "caught_up_after_ms" in f else ")")
        )
    lines.append("  faults by kind (start time, client-seen unavailability: fault to first ack of a later event;")
    lines.append("  the cluster whole again: every node up and following one leader):")
    for kind in sorted(by_kind_starts):
        lines.append(f"    {kind:26} {len(by_kind_starts[kind]):3}  " + ", ".join(by_kind_starts[kind]))
    lines.append(f"  {'per kind':26}   n  {'unavailability ms median / max':>32}  {'whole after ms median / max':>29}")
    for kind, k in report["by_kind"].items():
        u, w = k["unavailability_ms"], k["whole_after_ms"]
        lines.append(
            f"    {kind:26} {k['count']:3}  {_fmt(u['median']):>15} / {_fmt(u['max']):>14}  "
            f"{_fmt(w['median']):>13} / {_fmt(w['max']):>13}"
            + (
                f"  (from the restart: {_fmt(k['whole_after_restart_ms']['median'])} / "
                f"{_fmt(k['whole_after_restart_ms']['max'])})"
                if "whole_after_restart_ms" in k
                else ""
            )
        )
    if report["fault_errors"]:
        lines.append(f"  faults that failed: {report['fault_errors']}")
    u = report["unavailability"]
    lines.append(
        f"  longest gap between acknowledgements {u['longest_ack_gap_ms']} ms; time in gaps over 1 s "
        f"{u['time_in_gaps_over_1s_s']} s; leader changes {report['leader_changes']}, elections {report['elections']}"
    )
    for g in u.get("longest_gaps", []):
        ctx = "no fault before it" if "fault" not in g else f"{g['fault']} from {g['fault_start_s']:.2f} s"
        if g.get("after_heal_ms") is not None:
            ctx += f", healed {g['after_heal_ms']:.0f} ms before the gap"
        elif "fault" in g:
            ctx += ", in force"
        took = "; ".join(f"node {n} leads term {t} at {s:.2f} s" for s, n, t in g["leaders"])
        took = f"; {took}" if took else ""
        lines.append(f"    gap {g['gap_ms']:7,.0f} ms from {g['start_s']:7.2f} s: {ctx}{took}")
    lines.append(
        f"  acknowledged {report['acknowledged']:,}  lost {report['lost']}  "
        f"duplicates {report['duplicates']}  "
        f"divergent {report['divergent']}  invented {report['invented']}  misplaced {report['misplaced']}"
    )
    lines.append(
        f"  recovered {report['recovered']} ({report['recovery_ms']} ms after the final heal); "
        f"elapsed {report['elapsed_s']} s"
    )
    print("\n".join(lines), flush=True)


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
