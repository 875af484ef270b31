"""Members as the node layer sees them: what a member's address bytes hold, and the configuration in effect.

The Raft core keeps each member's address as opaque bytes (raft/membership.py `Member.address`); this module
gives them their meaning: where the member listens (host; client, data, raft, metrics and Kafka ports),
encoded as canonical JSON with a version, so that every node encodes the same member to the same bytes
(the bytes are part of the replicated configuration entry and of snapshots)::

    {"client_port":7101,"data_port":7102,"host":"127.0.0.1","kafka_port":0,"metrics_port":7104,"raft_port":7103,"v":1}

Keys sorted, no spaces, UTF-8; at most ADDRESS_BYTES_MAX bytes. A decoder refuses anything else with
`AddressError` naming the field (unknown keys, a missing port, a port out of range, another version).

The configuration in effect travels from the raft worker (which learns it from the core's
`Ready.membership`) to the other workers of the node through the members file (node_dir/members.json,
written atomically) and the state block's `config_index`, which the raft worker sets after each write:
a worker that sees `config_index` change re-reads the file. A restarted worker reads the file at start.
Pure code except `write_members_file` / `read_members_file`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shmraft.config import FORMER_MEMBER_LINGER_MS, Member
from shmraft.wire.client import MEMBER_ADDRESS_MAX_BYTES

if TYPE_CHECKING:
    from shmraft.config import NodeConfig

ADDRESS_VERSION: Final = 1
ADDRESS_BYTES_MAX: Final = MEMBER_ADDRESS_MAX_BYTES  # one member's address (a host name is at most 253 bytes)
MEMBERS_FILE: Final = "members.json"
MEMBERS_FILE_VERSION: Final = 1
ROLE_VOTER: Final = "voter"
ROLE_LEARNER: Final = "learner"
ROLES: Final = (ROLE_VOTER, ROLE_LEARNER)
_PORT_KEYS: Final = ("client_port", "data_port", "raft_port", "metrics_port")
_KEYS: Final = frozenset({"v", "host", "kafka_port", *_PORT_KEYS})
PORT_MAX: Final = 65535


class AddressError(ValueError):
    """Address bytes that are not a member address of this version; names the field, what was expected and got."""

    def __init__(self, field: str, expected: str, got: object) -> None:
        super().__init__(f"member address: {field}: expected {expected}, got {got!r}")
        self.field = field
        self.expected = expected
        self.got = got


def encode_address(member: Member) -> bytes:
    """The canonical address bytes of `member` (its node id is not part of them: the core holds it)."""
    doc = {"v": ADDRESS_VERSION, "host": member.host, "kafka_port": member.kafka_port}
    doc.update({k: getattr(member, k) for k in _PORT_KEYS})
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > ADDRESS_BYTES_MAX:
        raise AddressError("address", f"at most {ADDRESS_BYTES_MAX} bytes", len(data))
    return data


def decode_address(node_id: int, data: bytes | memoryview) -> Member:
    """The member `node_id` listening where `data` says; AddressError for anything but canonical bytes."""
    raw = bytes(data)
    if not 1 <= len(raw) <= ADDRESS_BYTES_MAX:
        raise AddressError("address", f"1..{ADDRESS_BYTES_MAX} bytes", len(raw))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AddressError("address", "a JSON object in UTF-8", str(exc)) from None
    if not isinstance(doc, dict):
        raise AddressError("address", "a JSON object", type(doc).__name__)
    if doc.get("v") != ADDRESS_VERSION:
        raise AddressError("v", f"{ADDRESS_VERSION} (this release reads version 1 only)", doc.get("v"))
    if set(doc) != _KEYS:
        raise AddressError("keys", str(sorted(_KEYS)), sorted(doc))
    host = doc["host"]
    if not isinstance(host, str) or not 1 <= len(host.encode()) <= 253 or any(c.isspace() for c in host):
        raise AddressError("host", "a host name or IP address of 1..253 bytes", host)
    for key in _PORT_KEYS:
        port = doc[key]
        if type(port) is not int or not 1 <= port <= PORT_MAX:
            raise AddressError(key, f"1..{PORT_MAX}", port)
    kafka = doc["kafka_port"]
    if type(kafka) is not int or not 0 <= kafka <= PORT_MAX:
        raise AddressError("kafka_port", f"0 (off) or 1..{PORT_MAX}", kafka)
    member = Member(node_id, host, *(doc[k] for k in _PORT_KEYS), kafka)
    if encode_address(member) != raw:
        raise AddressError("address", "the canonical encoding (keys sorted, no spaces)", raw[:80])
    return member


def ports_of(member: Member) -> set[int]:
    """Every port the member listens on (the Kafka port only when on)."""
    ports = {getattr(member, k) for k in _PORT_KEYS}
    if member.kafka_port:
        ports.add(member.kafka_port)
    return ports


def address_collision(new: Member, members: list[Member] | tuple[Member, ...]) -> str:
    """Why `new` cannot listen where it says: another member (not `new.node_id`) on the same host with a port in
    common, or `new` using one port twice. Empty when it can."""
    own = [getattr(new, k) for k in _PORT_KEYS] + ([new.kafka_port] if new.kafka_port else [])
    if len(set(own)) != len(own):
        return f"node {new.node_id}: its ports {own} repeat a port"
    for m in members:
        if m.node_id == new.node_id or m.host != new.host:
            continue
        common = ports_of(m) & ports_of(new)
        if common:
            return f"node {new.node_id}: {new.host} port {min(common)} is already used by node {m.node_id}"
    return ""


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member of the configuration in effect, as the node layer uses it."""

    member: Member  # where it listens
    role: str  # ROLE_VOTER or ROLE_LEARNER


@dataclass(frozen=True, slots=True)
class MembersView:
    """The configuration in effect on this node: its log index (0: the static configuration of the config
    file, before any membership entry) and its members in node-id order."""

    index: int
    members: tuple[MemberView, ...]

    def ids(self) -> list[int]:
        return [v.member.node_id for v in self.members]

    def get(self, node_id: int) -> MemberView | None:
        for v in self.members:
            if v.member.node_id == node_id:
                return v
        return None

    def voters(self) -> list[int]:
        return [v.member.node_id for v in self.members if v.role == ROLE_VOTER]

    def learners(self) -> list[int]:
        return [v.member.node_id for v in self.members if v.role == ROLE_LEARNER]


def static_view(config: NodeConfig) -> MembersView:
    """The configuration of the config file: every member a voter, at index 0. A node started to join an
    existing cluster (`config.join`) starts as a learner of it."""
    me = config.node_id
    joining = getattr(config, "join", False)
    return MembersView(
        0,
        tuple(
            MemberView(m, ROLE_LEARNER if joining and m.node_id == me else ROLE_VOTER)
            for m in sorted(config.members, key=lambda m: m.node_id)
        ),
    )


def peer_addresses(config: NodeConfig, view: MembersView, channel: str) -> dict[int, tuple[str, int]]:
    """Where this node connects to reach every other member of `view` on `channel` ("data" or "raft"):
    the config's `peer_connect_overrides` first (a test proxy), else the member's own address."""
    from shmraft.config import _parse_peer_overrides

    routes = _parse_peer_overrides(config.peer_connect_overrides)
    out: dict[int, tuple[str, int]] = {}
    for v in view.members:
        m = v.member
        if m.node_id == config.node_id:
            continue
        out[m.node_id] = routes.get((m.node_id, channel)) or (m.host, m.data_port if channel == "data" else m.raft_port)
    return out


def encode_members_file(view: MembersView) -> bytes:
    doc = {
        "v": MEMBERS_FILE_VERSION,
        "index": view.index,
        "members": [
            {"id": v.member.node_id, "role": v.role, "address": json.loads(encode_address(v.member))}
            for v in view.members
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_members_file(data: bytes) -> MembersView:
    try:
        doc = json.loads(data)
        if doc.get("v") != MEMBERS_FILE_VERSION:
            raise AddressError("members file v", str(MEMBERS_FILE_VERSION), doc.get("v"))
        members = []
        for item in doc["members"]:
            if item["role"] not in ROLES:
                raise AddressError("members file role", str(ROLES), item["role"])
            raw = json.dumps(item["address"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            members.append(MemberView(decode_address(int(item["id"]), raw), item["role"]))
        return MembersView(int(doc["index"]), tuple(members))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, AddressError):
            raise
        raise AddressError("members file", "the members file layout", str(exc)) from None


def write_members_file(node_dir: Path, view: MembersView) -> None:
    """Replace node_dir/members.json atomically (write, fsync, rename): readers see the old or the new."""
    node_dir.mkdir(parents=True, exist_ok=True)
    tmp = node_dir / f".{MEMBERS_FILE}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode_members_file(view))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, node_dir / MEMBERS_FILE)


def read_members_file(node_dir: Path) -> MembersView | None:
    """The configuration last written by the raft worker; None when there is none yet."""
    try:
        data = (node_dir / MEMBERS_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return decode_members_file(data)


def current_view(config: NodeConfig) -> MembersView:
    """The configuration in effect as the other workers see it: the members file, else the config file's."""
    return read_members_file(config.node_dir) or static_view(config)


class FormerMembers:
    """Members removed from the configuration, kept as link peers for `linger_s` (the config's
    `former_member_linger_ms`): the leader keeps
    replicating to a removed member until it holds the entry that removed it, and answers its pre-votes with
    what it missed (raft/core.py), so that it learns it was removed and goes quiet; without a link it would
    never hear it. Its messages cannot disrupt: the core counts no vote of a non-member."""

    def __init__(self, linger_s: float = FORMER_MEMBER_LINGER_MS / 1000) -> None:
        self.linger_s = linger_s
        self._until: dict[int, tuple[Member, float]] = {}

    def update(self, old: MembersView, new: MembersView, now_s: float) -> None:
        """Note the members `old` had and `new` has not; forget those that came back."""
        kept = set(new.ids())
        for v in old.members:
            if v.member.node_id not in kept:
                self._until[v.member.node_id] = (v.member, now_s + self.linger_s)
        for node_id in kept:
            self._until.pop(node_id, None)

    def expire(self, now_s: float) -> bool:
        """Drop those whose time is up; True when any was dropped (the links must be set again)."""
        gone = [i for i, (_, until) in self._until.items() if until <= now_s]
        for i in gone:
            del self._until[i]
        return bool(gone)

    def view(self, current: MembersView) -> MembersView:
        """`current` plus the lingering former members (as learners), for `peer_addresses`."""
        extra = tuple(MemberView(m, ROLE_LEARNER) for m, _ in self._until.values())
        return MembersView(current.index, current.members + extra)
