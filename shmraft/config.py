"""Node and cluster configuration: one dataclass, loaded from TOML (conf/*.toml) or built for the local cluster.

Every limit a worker honours lives here with its unit in its name; the defaults come from
shmraft.constants (the brief's numbers) or are named here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from shmraft.constants import (
    BATCH_EVENTS_MAX,
    BATCH_LINGER_MS,
    BATCH_PAYLOAD_MAX_BYTES,
    CLUSTER_SIZE_DEFAULT,
    CLUSTER_SIZE_MAX,
    ELECTION_TIMEOUT_MS,
    ELECTION_TIMEOUT_SPREAD_MS,
    HEARTBEAT_INTERVAL_MS,
)

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT_BASE = 7000  # node N of the local cluster uses ports 7000 + 100*N + 1..4
FSYNC_POLICIES = ("always", "never")


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names the key."""


@dataclass(frozen=True, slots=True)
class Member:
    """Where one node of the cluster listens."""

    node_id: int
    host: str
    client_port: int  # producers and consumers (ingest worker)
    data_port: int  # the data channel: batches to followers, acks back (sender worker)
    raft_port: int  # the consensus channel: votes and heartbeats (raft worker)
    metrics_port: int  # Prometheus text metrics and status (supervisor)

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node needs. `members` includes this node."""

    node_id: int
    members: tuple[Member, ...]
    data_dir: Path
    cluster_id: str = "local"
    bind_host: str = LOCAL_HOST
    fsync: str = "always"  # "never" is unsafe: acknowledged events may be lost when a machine crashes
    # log retention (raft worker): the oldest committed entries beyond either bound are deleted
    retain_entries_max: int = 1_000_000
    retain_bytes_max: int = 4 * 1024**3
    # batching (batcher worker)
    batch_events_max: int = BATCH_EVENTS_MAX
    batch_linger_ms: float = BATCH_LINGER_MS
    batch_payload_max_bytes: int = BATCH_PAYLOAD_MAX_BYTES
    batch_compress: bool = False
    # Raft timing (raft worker)
    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS
    election_timeout_ms: int = ELECTION_TIMEOUT_MS
    election_timeout_spread_ms: int = ELECTION_TIMEOUT_SPREAD_MS
    # rings between workers
    ring_capacity_bytes: int = 8 * 1024 * 1024
    # client-facing limits (ingest worker)
    client_connections_max: int = 1024
    client_request_bytes_max: int = 4 * 1024 * 1024
    client_inflight_bytes_max: int = 16 * 1024 * 1024  # per connection, produced but not yet answered
    produce_timeout_ms_default: int = 5000
    fetch_bytes_max: int = 1024 * 1024
    # peer-facing limits (sender and raft workers)
    peer_message_bytes_max: int = 8 * 1024 * 1024
    peer_connect_timeout_ms: int = 200
    # supervision
    worker_restart_budget: int = 10  # restarts allowed per worker within the window below
    worker_restart_window_s: float = 60.0
    worker_restart_backoff_ms: int = 50  # first back-off; doubles per restart within the window
    worker_stall_timeout_ms: int = 5000  # a worker whose heartbeat counter stops this long is restarted
    # dedup (raft worker)
    dedup_producers_max: int = 100_000

    def __post_init__(self) -> None:
        ids = [m.node_id for m in self.members]
        if not 1 <= len(ids) <= CLUSTER_SIZE_MAX:
            raise ConfigError(f"members: expected 1..{CLUSTER_SIZE_MAX} nodes, got {len(ids)}")
        if len(set(ids)) != len(ids) or min(ids) < 1:
            raise ConfigError(f"members: node ids must be distinct and >= 1, got {ids}")
        if self.node_id not in ids:
            raise ConfigError(f"node_id: expected one of {ids}, got {self.node_id}")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", self.cluster_id):
            raise ConfigError(f"cluster_id: expected 1..64 of [A-Za-z0-9_], got {self.cluster_id!r}")
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync: expected one of {FSYNC_POLICIES}, got {self.fsync!r}")
        if not 1 <= self.batch_events_max <= BATCH_EVENTS_MAX:
            raise ConfigError(f"batch_events_max: expected 1..{BATCH_EVENTS_MAX}, got {self.batch_events_max}")
        if not 0 < self.batch_payload_max_bytes <= BATCH_PAYLOAD_MAX_BYTES:
            raise ConfigError(f"batch_payload_max_bytes: expected 1..{BATCH_PAYLOAD_MAX_BYTES}, "
                              f"got {self.batch_payload_max_bytes}")
        if self.election_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError("election_timeout_ms: expected more than heartbeat_interval_ms, "
                              f"got {self.election_timeout_ms} <= {self.heartbeat_interval_ms}")

    @property
    def me(self) -> Member:
        return self.member(self.node_id)

    def member(self, node_id: int) -> Member:
        for m in self.members:
            if m.node_id == node_id:
                return m
        raise KeyError(node_id)

    @property
    def peers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.node_id != self.node_id)

    @property
    def node_dir(self) -> Path:
        return self.data_dir / f"node{self.node_id}"


def local_members(count: int = CLUSTER_SIZE_DEFAULT, port_base: int = LOCAL_PORT_BASE) -> tuple[Member, ...]:
    """The members of the local cluster: node N listens on port_base + 100*N + 1..4 on 127.0.0.1."""
    return tuple(
        Member(n, LOCAL_HOST, port_base + 100 * n + 1, port_base + 100 * n + 2, port_base + 100 * n + 3,
               port_base + 100 * n + 4)
        for n in range(1, count + 1)
    )


def local_cluster(data_dir: Path, count: int = CLUSTER_SIZE_DEFAULT, port_base: int = LOCAL_PORT_BASE,
                  **overrides: Any) -> list[NodeConfig]:
    """One NodeConfig per node of a local cluster sharing `data_dir` (each node in data_dir/nodeN)."""
    members = local_members(count, port_base)
    return [NodeConfig(node_id=m.node_id, members=members, data_dir=Path(data_dir), **overrides) for m in members]


_TUNABLES = {f.name for f in fields(NodeConfig)} - {"node_id", "members", "data_dir", "cluster_id"}


def load(path: Path, data_dir: Path | None = None, node_id: int | None = None) -> NodeConfig:
    """Read one node's configuration from a TOML file (see conf/three-hosts.toml)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cluster = doc.get("cluster", {})
    node = doc.get("node", {})
    members_doc = cluster.get("members")
    if not isinstance(members_doc, list) or not members_doc:
        raise ConfigError(f"{path}: cluster.members: expected a list of tables, got {members_doc!r}")
    members = []
    for i, m in enumerate(members_doc):
        try:
            members.append(Member(int(m["id"]), str(m["host"]), int(m["client_port"]), int(m["data_port"]),
                                  int(m["raft_port"]), int(m["metrics_port"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: cluster.members[{i}]: missing or invalid {exc}") from None
    unknown = set(node) - _TUNABLES - {"id", "data_dir"}
    if unknown:
        raise ConfigError(f"{path}: node: unknown keys {sorted(unknown)}")
    tunables = {k: v for k, v in node.items() if k in _TUNABLES}
    return NodeConfig(
        node_id=int(node_id if node_id is not None else node.get("id", 0)),
        members=tuple(members),
        data_dir=Path(data_dir if data_dir is not None else node.get("data_dir", "shmraft-data")),
        cluster_id=str(cluster.get("id", "local")),
        **tunables,
    )


def with_overrides(config: NodeConfig, **overrides: Any) -> NodeConfig:
    return replace(config, **overrides)


__all__ = ["ConfigError", "Member", "NodeConfig", "load", "local_cluster", "local_members", "with_overrides"]
