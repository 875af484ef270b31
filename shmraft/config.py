"""Node and cluster configuration: one dataclass, loaded from TOML (conf/*.toml) or built for the local cluster.

Every limit a worker honours lives here with its unit in its name; the defaults come from
shmraft.constants (the brief's numbers) or are named here.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, fields, replace
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
    FSYNC_POLICIES,
    HEARTBEAT_INTERVAL_MS,
    SNAPSHOT_CHUNK_BYTES_MAX,
)

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT_BASE = 7000  # node N of the local cluster uses ports 7000 + 100*N + 1..4 (+ 5: the Kafka door, if on)
LOCAL_SECRET_NAME = "cluster.secret"  # a local cluster's secret, generated in its data dir when missing
CLUSTER_SECRET_FILE_ENV = "SHMRAFT_CLUSTER_SECRET_FILE"  # the secret's path when the config names none
SECRET_HINT = "make one with: head -c 32 /dev/urandom > FILE && chmod 600 FILE (the same file on every node)"
PEER_INBOUND_CONNECTIONS_MAX = 64  # inbound peer connections held at once (members, plus strangers refused)
PEER_HANDSHAKE_TIMEOUT_MS = 2000  # a peer connection not authenticated within this is dropped
FORMER_MEMBER_LINGER_MS = 30_000  # links to a removed member are kept this long (node/members.py FormerMembers)
# a leader whose ingest or batcher is stalled this long hands leadership over (supervisor/stepaside.py); a
# stalled request path on a leader with healthy Raft is never ended by an election, only by this
LEADER_STALL_TRANSFER_MS_DEFAULT = 1000
LEADER_STALL_TRANSFER_MS_MIN = 250  # lower values (other than 0: off) would judge one slow loop iteration


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
    kafka_port: int = 0  # the Kafka door (ingest worker, docs/KAFKA.md); 0 = off. No authentication: opt in

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
    # per-stage trace (ipc/trace.py): one PRODUCE in N (and one AppendEntries in N on a follower); 0 = off
    trace_sample_every: int = 100
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
    # a connection holding part of a request this long is dropped (slow-loris); 0 = never
    client_request_timeout_ms: int = 10_000
    # a connection with nothing sent, pending or owed this long is dropped (Kafka's connections.max.idle.ms
    # habit, same 10 min default; clients reconnect on demand); 0 = never
    client_idle_timeout_ms: int = 600_000
    produce_timeout_ms_default: int = 5000
    fetch_bytes_max: int = 1024 * 1024
    # peer-facing limits (sender and raft workers)
    peer_message_bytes_max: int = 8 * 1024 * 1024
    peer_connect_timeout_ms: int = 200
    peer_inbound_connections_max: int = PEER_INBOUND_CONNECTIONS_MAX  # per channel (data, consensus)
    peer_handshake_timeout_ms: int = PEER_HANDSHAKE_TIMEOUT_MS  # TCP connect + TLS + HMAC handshake
    # where this node connects to reach a peer, when not the peer's own address (a test proxy in between):
    # "ID:CHANNEL=HOST:PORT,..." with CHANNEL data or raft; empty = every peer at its members entry
    peer_connect_overrides: str = ""
    # security: paths only; the bytes are read by the workers that need them (shmraft/net/auth.py), so
    # that no config dump, repr or status report can show a secret
    cluster_secret_file: str | None = None  # required to run a node: peers prove they know its bytes
    client_token_file: str | None = None  # when set, clients must send AUTH with this token first
    tls_cert_file: str | None = None  # TLS on client and peer ports when these three are set
    tls_key_file: str | None = None
    tls_ca_file: str | None = None  # the CA that signed every node's certificate (mutual TLS between nodes)
    # supervision
    worker_restart_budget: int = 10  # restarts allowed per worker within the window below
    worker_restart_window_s: float = 60.0
    worker_restart_backoff_ms: int = 50  # first back-off; doubles per restart within the window
    worker_stall_timeout_ms: int = 5000  # a worker whose heartbeat stops this long while it could run is restarted
    # a leader whose ingest or batcher worker has not beaten this long while it could run (the same
    # starvation-proof clock; e.g. SIGSTOPped) hands leadership to a follower, at most once per
    # LEADER_STALL_TRANSFER_GAP_S (supervisor/stepaside.py); 0 = never. Below worker_stall_timeout_ms
    leader_stall_transfer_ms: int = LEADER_STALL_TRANSFER_MS_DEFAULT
    # storage faults (raft worker): a log that failed (disk full, I/O error) is reopened this often
    storage_retry_interval_ms: int = 1000
    # dedup (raft worker)
    dedup_producers_max: int = 100_000
    # InstallSnapshot chunk size (raft worker as leader); None = the Raft default (1 MiB). Either way it is
    # lowered to what fits a data-channel ring record and a peer message (workers/raft.py)
    snapshot_chunk_bytes: int | None = None
    # membership: True on a node started to join a running cluster (`shmraft-supervisor join`): it starts as a
    # learner with an empty log and never campaigns until a committed configuration makes it a voter
    join: bool = False
    # a removed member stays a link peer this long (it learns its removal from the leader's replication); later
    # it is still admitted when it proves the cluster secret, and answered on its own connection (net/links.py)
    former_member_linger_ms: int = FORMER_MEMBER_LINGER_MS

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
            raise ConfigError(
                f"batch_payload_max_bytes: expected 1..{BATCH_PAYLOAD_MAX_BYTES}, got {self.batch_payload_max_bytes}"
            )
        tls = {"tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file, "tls_ca_file": self.tls_ca_file}
        if any(tls.values()) and not all(tls.values()):
            missing = sorted(k for k, v in tls.items() if not v)
            raise ConfigError(
                f"{', '.join(missing)}: expected with the other tls_* keys (TLS needs a certificate, "
                "its key and the CA), got none"
            )
        for key in (
            "peer_inbound_connections_max",
            "peer_handshake_timeout_ms",
            "former_member_linger_ms",
            "client_connections_max",
            "client_request_bytes_max",
            "client_inflight_bytes_max",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected at least 1, got {getattr(self, key)}")
        _parse_peer_overrides(self.peer_connect_overrides)
        if self.snapshot_chunk_bytes is not None and not 1 <= self.snapshot_chunk_bytes <= SNAPSHOT_CHUNK_BYTES_MAX:
            raise ConfigError(
                f"snapshot_chunk_bytes: expected 1..{SNAPSHOT_CHUNK_BYTES_MAX}, got {self.snapshot_chunk_bytes}"
            )
        if self.trace_sample_every < 0:
            raise ConfigError(f"trace_sample_every: expected >= 0 (0 = off), got {self.trace_sample_every}")
        if self.storage_retry_interval_ms < 1:
            raise ConfigError(f"storage_retry_interval_ms: expected >= 1, got {self.storage_retry_interval_ms}")
        if self.me.kafka_port and self.client_token_file:
            raise ConfigError(
                "kafka_port: expected 0 (off) on a node with a client_token_file: the Kafka door has no "
                f"authentication and would bypass the token, got {self.me.kafka_port}"
            )
        if self.leader_stall_transfer_ms != 0 and not (
            LEADER_STALL_TRANSFER_MS_MIN <= self.leader_stall_transfer_ms < self.worker_stall_timeout_ms
        ):
            raise ConfigError(
                f"leader_stall_transfer_ms: expected 0 (off) or {LEADER_STALL_TRANSFER_MS_MIN}.."
                f"{self.worker_stall_timeout_ms - 1} (below worker_stall_timeout_ms), "
                f"got {self.leader_stall_transfer_ms}"
            )
        if self.election_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError(
                "election_timeout_ms: expected more than heartbeat_interval_ms, "
                f"got {self.election_timeout_ms} <= {self.heartbeat_interval_ms}"
            )

    def peer_address(self, node_id: int, channel: str) -> tuple[str, int]:
        """Where to connect to reach peer `node_id` on `channel` ("data" or "raft")."""
        routes = _parse_peer_overrides(self.peer_connect_overrides)
        if (node_id, channel) in routes:
            return routes[(node_id, channel)]
        m = self.member(node_id)
        return m.host, m.data_port if channel == "data" else m.raft_port

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

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


def _parse_peer_overrides(text: str) -> dict[tuple[int, str], tuple[str, int]]:
    out: dict[tuple[int, str], tuple[str, int]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(\d+):(data|raft)=([^:\s]+):(\d{1,5})", item)
        if not m or not 0 < int(m.group(4)) < 65536:
            raise ConfigError(f"peer_connect_overrides: expected ID:data|raft=HOST:PORT, got {item!r}")
        out[(int(m.group(1)), m.group(2))] = (m.group(3), int(m.group(4)))
    return out


def local_members(
    count: int = CLUSTER_SIZE_DEFAULT, port_base: int = LOCAL_PORT_BASE, kafka: bool = False
) -> tuple[Member, ...]:
    """The members of the local cluster: node N listens on port_base + 100*N + 1..4 on 127.0.0.1, and on + 5
    for Kafka clients when `kafka`."""
    return tuple(
        Member(
            n,
            LOCAL_HOST,
            port_base + 100 * n + 1,
            port_base + 100 * n + 2,
            port_base + 100 * n + 3,
            port_base + 100 * n + 4,
            port_base + 100 * n + 5 if kafka else 0,
        )
        for n in range(1, count + 1)
    )


def local_cluster(
    data_dir: Path,
    count: int = CLUSTER_SIZE_DEFAULT,
    port_base: int = LOCAL_PORT_BASE,
    kafka: bool = False,
    **overrides: Any,
) -> list[NodeConfig]:
    """One NodeConfig per node of a local cluster sharing `data_dir` (each node in data_dir/nodeN), with the
    Kafka door on (port_base + 100*N + 5) when `kafka`.

    The cluster secret is $SHMRAFT_CLUSTER_SECRET_FILE when set, else data_dir/cluster.secret, which
    LocalCluster generates when it starts the first node.
    """
    members = local_members(count, port_base, kafka)
    if overrides.get("cluster_secret_file") is None:
        overrides["cluster_secret_file"] = os.environ.get(CLUSTER_SECRET_FILE_ENV) or str(
            Path(data_dir) / LOCAL_SECRET_NAME
        )
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
            members.append(
                Member(
                    int(m["id"]),
                    str(m["host"]),
                    int(m["client_port"]),
                    int(m["data_port"]),
                    int(m["raft_port"]),
                    int(m["metrics_port"]),
                    int(m.get("kafka_port", 0)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: cluster.members[{i}]: missing or invalid {exc}") from None
    unknown = set(node) - _TUNABLES - {"id", "data_dir"}
    if unknown:
        raise ConfigError(f"{path}: node: unknown keys {sorted(unknown)}")
    tunables = {k: v for k, v in node.items() if k in _TUNABLES}
    if not tunables.get("cluster_secret_file"):
        tunables["cluster_secret_file"] = os.environ.get(CLUSTER_SECRET_FILE_ENV) or None
    for key in ("cluster_secret_file", "client_token_file", "tls_cert_file", "tls_key_file", "tls_ca_file"):
        if tunables.get(key) is not None and not isinstance(tunables[key], str):
            raise ConfigError(f"{path}: node.{key}: expected a path (string), got {tunables[key]!r}")
    config = NodeConfig(
        node_id=int(node_id if node_id is not None else node.get("id", 0)),
        members=tuple(members),
        data_dir=Path(data_dir if data_dir is not None else node.get("data_dir", "shmraft-data")),
        cluster_id=str(cluster.get("id", "local")),
        **tunables,
    )
    if not config.cluster_secret_file:  # checked last, so that other mistakes are named first
        raise ConfigError(
            f"{path}: node.cluster_secret_file: expected the path of the cluster secret (or "
            f"${CLUSTER_SECRET_FILE_ENV}), got none; {SECRET_HINT}"
        )
    return config


def with_overrides(config: NodeConfig, **overrides: Any) -> NodeConfig:
    return replace(config, **overrides)


__all__ = [
    "CLUSTER_SECRET_FILE_ENV",
    "LOCAL_SECRET_NAME",
    "ConfigError",
    "Member",
    "NodeConfig",
    "load",
    "local_cluster",
    "local_members",
    "with_overrides",
]


def config_to_json(config: NodeConfig) -> str:
    """The config as JSON: how the supervisor hands it to its workers (node.json) and tools to nodes."""
    doc = asdict(config)
    doc["data_dir"] = str(config.data_dir)
    return json.dumps(doc)


def config_from_json(text: str) -> NodeConfig:
    """The inverse of `config_to_json`."""
    doc = json.loads(text)
    doc["members"] = tuple(Member(**m) for m in doc["members"])
    doc["data_dir"] = Path(doc["data_dir"])
    return NodeConfig(**doc)
