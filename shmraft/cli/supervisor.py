"""`shmraft-supervisor`: run a local cluster or one node, and report health.

shmraft-supervisor up                          a local 3-node cluster on 127.0.0.1, data in ./shmraft-data
shmraft-supervisor up --config conf/X.toml     one node of a cluster spread over hosts
shmraft-supervisor status [--json]             health of every node and worker (exit 1 if unhealthy)
shmraft-supervisor trace [--all on|off] [--json]   where sampled requests spent their time, stage by stage
shmraft-supervisor rebuild-node --node N [--min-term T] [--force]   a node whose disk was lost or wiped
shmraft-supervisor recover-node --node N --min-term T   operator step after a lost log AND term/vote copy
shmraft-supervisor members [--json]            the members (voters, learners, how far behind)
shmraft-supervisor members add --node N --host H --ports C,D,R,M[,K] [--no-promote]
shmraft-supervisor members promote --node N | members remove --node N
shmraft-supervisor join --node N --seed HOST:PORT [--host H --ports ...]   start a new node that joins
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from shmraft.config import ConfigError, NodeConfig, load, local_cluster
from shmraft.constants import CLUSTER_SIZE_DEFAULT
from shmraft.net.auth import check_node_files, ensure_local_secret, is_local_secret

DEFAULT_DATA_DIR = "shmraft-data"


def _configs(args: argparse.Namespace) -> list[NodeConfig]:
    overrides = {}
    if getattr(args, "fsync", None):
        overrides["fsync"] = args.fsync
    if args.config:
        one = load(Path(args.config), data_dir=Path(args.data_dir) if args.data_dir else None, node_id=args.node)
        if overrides:
            from shmraft.config import with_overrides

            one = with_overrides(one, **overrides)
        return [one]
    data_dir = Path(args.data_dir or DEFAULT_DATA_DIR).resolve()
    return local_cluster(
        data_dir, count=args.nodes, port_base=args.port_base, cluster_id=args.cluster_id, kafka=True, **overrides
    )


def _up(args: argparse.Namespace) -> int:
    from shmraft.supervisor.cluster import LocalCluster
    from shmraft.supervisor.node import NodeSupervisor

    configs = _configs(args)
    if args.config:  # one node of a multi-host cluster, in this process
        c = configs[0]
        print(
            f"shmraft node {c.node_id} of cluster {c.cluster_id!r}: data in {c.node_dir}, clients on "
            f"{c.me.client_address}, data channel :{c.me.data_port}, consensus :{c.me.raft_port}",
            flush=True,
        )
        return NodeSupervisor(c).run()
    data_dir = configs[0].data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    if is_local_secret(configs[0]) and ensure_local_secret(configs[0].cluster_secret_file):
        print(f"shmraft: generated the cluster secret {configs[0].cluster_secret_file} (mode 0600)", flush=True)
    check_node_files(configs[0])  # a missing or unsafe secret or TLS file: say so before starting anything
    print(f"shmraft: local cluster of {len(configs)} nodes, data in {data_dir}", flush=True)
    for c in configs:
        print(
            f"  node {c.node_id}: clients {c.me.client_address}  kafka :{c.me.kafka_port}  data :{c.me.data_port}  "
            f"consensus :{c.me.raft_port}",
            flush=True,
        )
    print(f"  logs in {data_dir / 'logs'}; try: shmraft produce hello && shmraft consume --from 0", flush=True)
    cluster = LocalCluster(configs, log_dir=data_dir / "logs")
    cluster.start()
    try:
        return cluster.live_view(interval_s=1.0 if not args.no_view else 5.0)
    finally:
        print("stopping the cluster...", file=sys.stderr, flush=True)
        cluster.stop()
        print("stopped; shared memory removed", file=sys.stderr, flush=True)


def _node(args: argparse.Namespace) -> int:
    from shmraft.config import config_from_json
    from shmraft.supervisor.node import NodeSupervisor

    config = config_from_json(Path(args.config_json).read_text())
    return NodeSupervisor(config).run()


def _recover_node(args: argparse.Namespace) -> int:
    """The operator step of docs/DESIGN.md "Storage faults" (the node must be stopped)."""
    from shmraft.storage.nodelog import reset_for_recovery

    if args.node is None:
        print("shmraft-supervisor: recover-node: --node is required", file=sys.stderr)
        return 2
    configs = [c for c in _configs(args) if c.node_id == args.node]
    if not configs:
        print(f"shmraft-supervisor: recover-node: node {args.node} is not a member", file=sys.stderr)
        return 2
    moved = reset_for_recovery(configs[0].node_dir, args.min_term)
    print(
        f"node {args.node}: log moved to {moved}; it will start recovering at term {args.min_term} "
        "(no votes until it has caught up with a leader elected without it)"
    )
    return 0


def _rebuild_node(args: argparse.Namespace) -> int:
    """README "Replace a dead disk": prepare a stopped node's empty (or, with --force, discarded) data
    directory so that it starts recovering above every member's term (shmraft/supervisor/rebuild.py)."""
    from shmraft.supervisor.rebuild import RebuildError, rebuild_node

    if args.node is None:
        print("shmraft-supervisor: rebuild-node: --node is required", file=sys.stderr)
        return 2
    configs = _configs(args)
    if args.config:  # the one config names every member; the node rebuilt is --node
        configs = [configs[0]]
    try:
        plan = rebuild_node(configs, args.node, min_term=args.min_term, force=args.force)
    except RebuildError as exc:
        print(f"shmraft-supervisor: rebuild-node: {exc}", file=sys.stderr)
        return 2
    asked = ", ".join(f"node {n}: term {t}" for n, t in sorted(plan.terms.items())) or "no member answered"
    print(f"node {args.node}: terms reported ({asked})", flush=True)
    for n, why in sorted(plan.unreachable.items()):
        print(f"node {args.node}: node {n} gave no term ({why}); --min-term {args.min_term} used", flush=True)
    if plan.moved_log is not None:
        print(f"node {args.node}: the old log was moved to {plan.moved_log}", flush=True)
    print(
        f"node {args.node}: ready to start in recovering mode at term {plan.recovery_term}: it re-fetches the log "
        "from the leader and votes only once it holds a committed entry of that term or later",
        flush=True,
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from shmraft.supervisor.status import cluster_status, format_table, with_members_in_effect

    configs = _configs(args)
    if args.config:  # every member of the configured cluster that runs on this machine
        base = configs[0]
        from shmraft.config import with_overrides

        configs = [with_overrides(base, node_id=m.node_id) for m in base.members]
    report = cluster_status(with_members_in_effect(configs))  # and the members added since (members add, join)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0 if report["healthy"] else 1


def _contact(args: argparse.Namespace) -> tuple[list[str], NodeConfig]:
    """The client addresses to ask (--seed first, then the configured members) and a config for the secret."""
    if args.config:  # --node names the node to change or start, which the file may not list: load it as it is
        base = load(Path(args.config), data_dir=Path(args.data_dir) if args.data_dir else None)
    else:
        base = _configs(args)[0]
    addresses = [m.client_address for m in base.members]
    if getattr(args, "seed", None):
        addresses.insert(0, args.seed)
    return addresses, base


def _new_member(args: argparse.Namespace, base: NodeConfig):
    """The member to add: --host/--ports, or node N of the local layout (port-base + 100 N + 1..5)."""
    from shmraft.client.admin import member_from_args
    from shmraft.config import local_members

    if args.ports:
        return member_from_args(args.node, args.host or base.me.host, args.ports)
    if args.config:
        raise ConfigError("--ports: expected CLIENT,DATA,RAFT,METRICS[,KAFKA] for a node of a multi-host cluster")
    return local_members(args.node, args.port_base, kafka=True)[args.node - 1]


def _members(args: argparse.Namespace) -> int:
    """List, add, promote or remove members; each change returns once committed (exit 1 with the reason)."""
    from shmraft.client import admin
    from shmraft.client.errors import ShmraftError
    from shmraft.net.auth import cluster_secret
    from shmraft.wire import client as cp

    addresses, base = _contact(args)
    try:
        if args.action in (None, "list"):
            view = admin.list_members(addresses)
            if args.json:
                print(admin.dumps(view))
                return 0
            print(
                f"configuration at log index {view.config_index}, leader {view.leader_id or 'unknown'}"
                f"{'  (a change is in progress)' if view.change_pending else ''}"
            )
            print(f"{'node':<6}{'role':<9}{'address':<24}{'data raft metrics kafka':<34}{'match':>10}{'behind':>10}")
            for m in view.members:
                addr = m.member.client_address if m.member else "?"
                ports = (
                    f"{m.member.data_port} {m.member.raft_port} {m.member.metrics_port} {m.member.kafka_port}"
                    if m.member
                    else ""
                )
                behind = "-" if m.entries_behind is None else str(m.entries_behind)
                print(f"{m.node_id:<6}{m.role:<9}{addr:<24}{ports:<34}{m.match_index:>10}{behind:>10}")
            return 0
        if args.node is None:
            print(f"shmraft-supervisor: members {args.action}: --node is required", file=sys.stderr)
            return 2
        secret = cluster_secret(base)
        kw = {"secret": secret, "cluster_id": base.cluster_id, "timeout_s": args.timeout}
        if args.action == "add":
            member = _new_member(args, base)
            index = admin.add_member(addresses, member, promote=not args.no_promote, **kw)
            what = "added as a learner" if args.no_promote else "added and promoted to voter"
        elif args.action == "promote":
            index = admin.change_member(addresses, cp.ChangeOp.PROMOTE, args.node, **kw)
            what = "promoted to voter"
        else:
            index = admin.change_member(addresses, cp.ChangeOp.REMOVE, args.node, **kw)
            what = "removed"
    except (ShmraftError, ValueError) as exc:
        print(f"shmraft-supervisor: members {args.action or 'list'}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"node {args.node} {what} (committed at log index {index})")
    return 0


def _join(args: argparse.Namespace) -> int:
    """Start a new node that joins a running cluster: learn the members from --seed, add this node as a
    learner, run it (empty log: it catches up through a snapshot and the log), promote it once caught up."""
    import threading
    from dataclasses import replace

    from shmraft.client import admin
    from shmraft.client.errors import ShmraftError
    from shmraft.net.auth import cluster_secret
    from shmraft.supervisor.node import NodeSupervisor
    from shmraft.wire import client as cp

    if args.node is None:
        print("shmraft-supervisor: join: --node is required", file=sys.stderr)
        return 2
    addresses, base = _contact(args)
    try:
        me = _new_member(args, base)
        view = admin.list_members(addresses)
    except (ShmraftError, ValueError) as exc:
        print(f"shmraft-supervisor: join: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    members = tuple(m.member for m in view.members if m.member is not None and m.node_id != me.node_id) + (me,)
    config = replace(base, node_id=me.node_id, members=members, join=True)
    secret = cluster_secret(config)
    kw = {"secret": secret, "cluster_id": config.cluster_id, "timeout_s": args.timeout}
    if view.get(me.node_id) is None:
        try:
            admin.change_member(addresses, cp.ChangeOp.ADD_LEARNER, me.node_id, member=me, **kw)
        except ShmraftError as exc:
            print(f"shmraft-supervisor: join: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(
        f"node {me.node_id} joins cluster {config.cluster_id!r} as a learner; clients on {me.client_address}",
        flush=True,
    )

    def promote() -> None:
        try:
            _promote_when_caught_up(addresses, me.node_id, kw)
            print(f"node {me.node_id} promoted to voter", flush=True)
        except ShmraftError as exc:
            print(f"shmraft-supervisor: join: not promoted: {exc}", file=sys.stderr, flush=True)

    if not args.no_promote:
        threading.Thread(target=promote, daemon=True).start()
    return NodeSupervisor(config).run()


def _promote_when_caught_up(addresses: list[str], node_id: int, kw: dict) -> int:
    import time

    from shmraft.client import admin
    from shmraft.client.errors import NotCaughtUp
    from shmraft.wire import client as cp

    deadline = time.monotonic() + admin.PROMOTE_WAIT_S_DEFAULT
    while True:
        try:
            return admin.change_member(addresses, cp.ChangeOp.PROMOTE, node_id, **kw)
        except NotCaughtUp:
            if time.monotonic() >= deadline:
                raise
            time.sleep(admin.RETRY_PAUSE_S * 5)


def _trace(args: argparse.Namespace) -> int:
    """The per-stage waterfall of the local nodes (shmraft/supervisor/waterfall.py, docs/DESIGN.md "Trace")."""
    from shmraft.supervisor.waterfall import collect_report, format_waterfall

    configs = _configs(args)
    if args.config:
        from shmraft.config import with_overrides

        configs = [with_overrides(configs[0], node_id=m.node_id) for m in configs[0].members]
    sample_all = None if args.all is None else args.all == "on"
    report = collect_report(configs, sample_all=sample_all, every=args.every)
    print(json.dumps(report) if args.json else format_waterfall(report))
    return 0 if report.get("nodes_read") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shmraft-supervisor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML file of a cluster (conf/); default: the local cluster")
        p.add_argument("--node", type=int, help="this node's id (overrides [node] id of --config)")
        p.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")
        p.add_argument("--nodes", type=int, default=CLUSTER_SIZE_DEFAULT, help="local cluster size")
        p.add_argument("--port-base", type=int, default=7000, help="local node N uses port-base + 100*N + 1..4")
        p.add_argument("--cluster-id", default="local", help="local cluster id ([A-Za-z0-9_])")

    up = sub.add_parser("up", help="run a local cluster, or one node with --config")
    common(up)
    up.add_argument("--fsync", choices=["always", "never"], help="'never' is unsafe (benchmarks only)")
    up.add_argument("--no-view", action="store_true", help="print the status table every 5 s instead of a live view")
    node = sub.add_parser("node", help="(internal) run one node from a JSON config")
    node.add_argument("--config-json", required=True)
    status = sub.add_parser("status", help="health of every node and worker")
    common(status)
    status.add_argument("--json", action="store_true")
    trace = sub.add_parser("trace", help="where sampled requests spent their time: a per-stage waterfall")
    common(trace)
    trace.add_argument("--json", action="store_true")
    trace.add_argument("--all", choices=["on", "off"], help="sample every request (on) or one in N again (off)")
    trace.add_argument("--every", type=int, help="sample one request in N (0: back to the config's value)")
    recover = sub.add_parser(
        "recover-node",
        help="(operator) restart a node whose log AND term/vote copy are "
        "lost: quarantine its log, re-fetch it from the others (docs/DESIGN.md)",
    )
    common(recover)
    recover.add_argument(
        "--min-term",
        type=int,
        required=True,
        help="a term above every term the other nodes report (shmraft-supervisor status)",
    )
    rebuild = sub.add_parser(
        "rebuild-node",
        help="(operator) prepare a stopped node whose data directory was lost or wiped to rejoin: asks the "
        "other members for their term, then the node starts recovering above it (README: Replace a dead disk)",
    )
    common(rebuild)
    rebuild.add_argument(
        "--min-term",
        type=int,
        default=None,
        help="required when a member does not answer: a term above every term any member reports",
    )
    rebuild.add_argument(
        "--force", action="store_true", help="discard a log still in the data directory (it is moved aside)"
    )
    members = sub.add_parser("members", help="list, add, promote or remove members (each returns once committed)")
    common(members)
    members.add_argument("action", nargs="?", choices=["list", "add", "promote", "remove"], default="list")
    members.add_argument("--json", action="store_true")
    members.add_argument("--seed", help="a node's client address to ask first (host:port)")
    members.add_argument("--host", help="add: the new node's host (default: the first member's)")
    members.add_argument("--ports", help="add: CLIENT,DATA,RAFT,METRICS[,KAFKA] (default: the local layout of --node)")
    members.add_argument("--no-promote", action="store_true", help="add: leave the node a learner")
    members.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each change to commit")
    join = sub.add_parser("join", help="start a new node that joins a running cluster (as a learner, then promoted)")
    common(join)
    join.add_argument("--seed", help="any member's client address (host:port)")
    join.add_argument("--host", help="this node's host (default: the first member's)")
    join.add_argument("--ports", help="CLIENT,DATA,RAFT,METRICS[,KAFKA] (default: the local layout of --node)")
    join.add_argument("--no-promote", action="store_true", help="stay a learner")
    join.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the add to commit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s supervisor %(levelname)s %(message)s"
    )
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "recover-node":
            return _recover_node(args)
        if args.command == "rebuild-node":
            return _rebuild_node(args)
        if args.command == "node":
            return _node(args)
        if args.command == "members":
            return _members(args)
        if args.command == "join":
            return _join(args)
        if args.command == "trace":
            return _trace(args)
        return _status(args)
    except ConfigError as exc:
        print(f"shmraft-supervisor: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
