"""Rebuilding a node whose disk was lost or wiped (`shmraft-supervisor rebuild-node`, README "Replace a dead
disk"): the successor of `recover-node` that finds the term by itself.

A node with an empty data directory knows neither its log nor the terms it voted in. Started as a new node it
could vote a second time in a term it had voted in before the loss, and help elect a leader lacking entries it
had acknowledged (docs/DESIGN.md "Storage faults"). So before it starts, this module

1. checks that the node is a member of the configuration and is not running (its client port does not answer
   as that node, its RocksDB lock is free);
2. refuses, unless `force`, a data directory that still holds a log (a restart recovers that one by itself);
3. asks every other member for its current term over the client port (METADATA, bound to that one node),
   takes the highest, and adds one: no member has ever reached that term, so the lost node cannot have voted
   in it or above. A member that does not answer could be ahead of the others, so then the operator's
   `min_term` (read from that member's status or its logs) is required; the larger of the two is used;
4. moves any old log aside (`log.corrupt-<time>`, like a quarantine) and writes a recovering hard state at that
   term (`storage/nodelog.reset_for_recovery`): the node starts with an empty log, never votes before it holds
   a committed entry of a term >= the recovery term, and catches up from the leader by appends, or through the
   leader's snapshot once the start of the log has been deleted (InstallSnapshot).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shmraft.client import Client, ShmraftError
from shmraft.config import NodeConfig
from shmraft.net.auth import read_token
from shmraft.storage.nodelog import node_log_dir, reset_for_recovery

ASK_TIMEOUT_S: Final = 3.0  # per member: a live member answers METADATA in milliseconds
ASK_RETRY_S: Final = 0.1  # between attempts at a member that refused the connection (it may be starting)
ROCKSDB_LOCK_NAME: Final = "LOCK"  # RocksDB's lock file in the log directory (held while a node runs)


class RebuildError(Exception):
    """The node cannot be rebuilt as asked; the message says why and what to do."""


@dataclass
class RebuildPlan:
    """What `rebuild_node` found and did."""

    node_id: int
    terms: dict[int, int] = field(default_factory=dict)  # member -> the term it reported
    unreachable: dict[int, str] = field(default_factory=dict)  # member -> why it gave no term
    recovery_term: int = 0
    moved_log: Path | None = None  # where an old log went (with force)


def _client_options(config: NodeConfig) -> dict[str, object]:
    opts: dict[str, object] = {}
    if config.tls_ca_file:
        opts["tls_ca"] = config.tls_ca_file
    if config.client_token_file:
        opts["token"] = read_token(config.client_token_file).reveal()
    return opts


def ask_term(config: NodeConfig, member_id: int, timeout_s: float = ASK_TIMEOUT_S, retry: bool = True) -> int:
    """The current term member `member_id` reports over its client port (METADATA, from that node only), asked
    again until `timeout_s` passes when `retry` (a member that is starting refuses connections for a moment).
    Raises ShmraftError when it does not answer, RebuildError when another node answers at its address."""
    member = next(m for m in config.members if m.node_id == member_id)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with Client(
                [member.client_address],
                timeout_s=timeout_s,
                connect_timeout_s=timeout_s,
                only_node=True,
                **_client_options(config),  # type: ignore[arg-type]
            ) as c:
                meta = c.metadata()
            break
        except ShmraftError:
            if not retry or time.monotonic() + ASK_RETRY_S >= deadline:
                raise
            time.sleep(ASK_RETRY_S)
    if meta.node_id != member_id:
        raise RebuildError(
            f"{member.client_address} answered as node {meta.node_id}, expected node {member_id}: "
            "is this the right configuration?"
        )
    return int(meta.term)


def log_is_locked(log_dir: Path) -> bool:
    """Whether a running RocksDB holds the log directory's lock (a node is using it)."""
    path = log_dir / ROCKSDB_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def holds_log(node_dir: Path) -> bool:
    """Whether the node directory still holds a RocksDB log (its CURRENT file is there)."""
    return (node_log_dir(node_dir) / "CURRENT").exists()


def rebuild_node(
    configs: list[NodeConfig], node_id: int, *, min_term: int | None = None, force: bool = False
) -> RebuildPlan:
    """Prepare node `node_id`'s data directory so that it starts recovering at a term above every member's
    (see the module docstring); the node must be stopped. `configs` are the cluster's configs (any one node's
    config names every member; the one for `node_id` says where its data lives). RebuildError says what is
    wrong; nothing is changed then."""
    if min_term is not None and min_term < 1:
        raise RebuildError(f"--min-term: expected >= 1, got {min_term}")
    config = next((c for c in configs if c.node_id == node_id), None)
    if config is None or all(m.node_id != node_id for m in config.members):
        members = sorted(m.node_id for m in configs[0].members) if configs else []
        raise RebuildError(f"node {node_id} is not a member (members: {members})")
    plan = RebuildPlan(node_id)
    log_dir = node_log_dir(config.node_dir)
    if log_is_locked(log_dir):
        raise RebuildError(f"node {node_id} is running (its log {log_dir} is locked): stop it first")
    try:
        ask_term(config, node_id, ASK_TIMEOUT_S, retry=False)
    except ShmraftError:
        pass  # not answering: as expected of a stopped node
    else:
        raise RebuildError(f"node {node_id} answers at {config.me.client_address}: stop it first")
    if holds_log(config.node_dir) and not force:
        raise RebuildError(
            f"{log_dir} still holds a log: a restart recovers it by itself (a corrupt one is quarantined and "
            "re-fetched). To discard it anyway (it is moved aside, not deleted), add --force"
        )
    for m in config.members:
        if m.node_id == node_id:
            continue
        try:
            plan.terms[m.node_id] = ask_term(config, m.node_id)
        except ShmraftError as exc:
            plan.unreachable[m.node_id] = f"{type(exc).__name__}: {exc}"
    if plan.unreachable and min_term is None:
        raise RebuildError(
            f"no term from member(s) {sorted(plan.unreachable)} ({'; '.join(plan.unreachable.values())}); "
            "a member that does not answer may be in a higher term than the others: give --min-term T with T "
            "above every term any member reports (its status or log)"
        )
    from_members = max(plan.terms.values(), default=0) + 1
    plan.recovery_term = max(from_members, min_term or 0)
    config.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan.moved_log = reset_for_recovery(config.node_dir, plan.recovery_term)
    return plan
