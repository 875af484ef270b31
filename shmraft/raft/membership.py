"""Cluster membership as the Raft core sees it: who the members are, which of them vote, and the changes an
operator may ask for (thesis chapter 4, single-server changes; see docs/DESIGN.md "Membership changes").

A configuration travels in the log as a control entry of kind MEMBERSHIP (shmraft/wire/control.py, the
envelope: magic, version, kind, length, CRC32) whose body is `encode_membership(config)`, and inside a snapshot
(`Snapshot.config`, the same body bytes). A node uses the latest configuration in its log as soon as it is
appended, committed or not. A member's `address` is opaque here: the node layer stores its host and ports in
it and the core only compares it (two members may not share one).

Body layout, version 1 (little-endian)::

    offset  size  field
         0     2  body version (1)
         2     2  member count M (1..MEMBERS_MAX)
         4        M times, in increasing id order:
                4   member id (>= 1)
                1   role (MemberRole: 1 voter, 2 learner)
                2   address length L (<= MEMBER_ADDRESS_BYTES_MAX)
                L   address bytes

A configuration has 1..CLUSTER_SIZE_MAX voters and at most MEMBERS_MAX members in all.

Pure code: bytes in, bytes out.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from shmraft.constants import CLUSTER_SIZE_MAX
from shmraft.raft.errors import ProposalError
from shmraft.raft.quorum import majority
from shmraft.wire.control import ControlKind, decode_control, encode_control, is_control
from shmraft.wire.errors import RemoteProtocolError

MEMBERSHIP_VERSION: Final = 1
MEMBERS_MAX: Final = 16  # voters (at most CLUSTER_SIZE_MAX) plus learners catching up
MEMBER_ADDRESS_BYTES_MAX: Final = 1024  # the node layer's host and ports, with room for TLS names
MEMBER_ID_MAX: Final = 0xFFFF_FFFF
# in the text of every QuorumNotActiveError: a client tells this refusal (sent as UNAVAILABLE) from the others by it
STRICT_RECONFIG_CHECK: Final = "strict reconfiguration check"

_HEAD: Final = struct.Struct("<HH")  # body version, member count
_MEMBER: Final = struct.Struct("<IBH")  # id, role, address length


class MemberRole(enum.IntEnum):
    """A voter counts for commits and elections; a learner only receives the log (and snapshots). The value
    is in the encoded body."""

    VOTER = 1
    LEARNER = 2


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster: its node id, role, and address (opaque bytes for the node layer)."""

    id: int
    role: MemberRole
    address: bytes = b""


class MembershipFormatError(RemoteProtocolError):
    """A membership body (from the log, a snapshot or a peer) that is not exactly the layout above, or a
    configuration that breaks a rule (no voter, too many, duplicate ids or addresses); names the field."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A cluster configuration: members sorted by id, ids unique, addresses unique (empty ones excepted, the
    simulator's and the tests' members have none), 1..CLUSTER_SIZE_MAX voters, at most MEMBERS_MAX members.
    Construct with `ClusterConfig.of(members)`, which sorts and checks (MembershipFormatError)."""

    members: tuple[Member, ...]

    @classmethod
    def of(cls, members: Iterable[Member]) -> ClusterConfig:
        """Sorted by id and checked."""
        config = cls(tuple(sorted(members, key=lambda m: m.id)))
        config.check()
        return config

    @classmethod
    def voters_of(cls, ids: Iterable[int]) -> ClusterConfig:
        """All voters, no addresses: the bootstrap configuration of a fixed cluster (tests, simulator, and a node
        whose log and snapshot hold no configuration)."""
        return cls.of(Member(i, MemberRole.VOTER) for i in set(ids))

    def check(self) -> None:
        """Raise MembershipFormatError unless this configuration follows the rules of the class docstring."""
        ms = self.members
        if not 1 <= len(ms) <= MEMBERS_MAX:
            raise MembershipFormatError("member count", f"1..{MEMBERS_MAX}", len(ms))
        seen_addresses: dict[bytes, int] = {}
        previous = 0
        for m in ms:
            if not 1 <= m.id <= MEMBER_ID_MAX:
                raise MembershipFormatError("member id", f"1..{MEMBER_ID_MAX}", m.id)
            if m.id <= previous:
                raise MembershipFormatError("member id", f"increasing ids, above {previous}", m.id)
            previous = m.id
            if not isinstance(m.role, MemberRole):
                raise MembershipFormatError(f"member {m.id} role", "VOTER or LEARNER", m.role)
            if len(m.address) > MEMBER_ADDRESS_BYTES_MAX:
                raise MembershipFormatError(
                    f"member {m.id} address length", f"at most {MEMBER_ADDRESS_BYTES_MAX} bytes", len(m.address)
                )
            if m.address:
                other = seen_addresses.setdefault(m.address, m.id)
                if other != m.id:
                    raise MembershipFormatError(f"member {m.id} address", f"unique (member {other} has it)", m.address)
        voters = sum(1 for m in ms if m.role == MemberRole.VOTER)
        if not 1 <= voters <= CLUSTER_SIZE_MAX:
            raise MembershipFormatError("voter count", f"1..{CLUSTER_SIZE_MAX} (CLUSTER_SIZE_MAX)", voters)

    def ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members)

    def voters(self) -> tuple[int, ...]:
        """Ids of the voting members, increasing."""
        return tuple(m.id for m in self.members if m.role == MemberRole.VOTER)

    def learners(self) -> tuple[int, ...]:
        """Ids of the learners, increasing."""
        return tuple(m.id for m in self.members if m.role == MemberRole.LEARNER)

    @property
    def quorum(self) -> int:
        """Voters that form a majority of this configuration."""
        return majority(len(self.voters()))

    def member(self, node_id: int) -> Member | None:
        for m in self.members:
            if m.id == node_id:
                return m
        return None

    def is_voter(self, node_id: int) -> bool:
        m = self.member(node_id)
        return m is not None and m.role == MemberRole.VOTER

    def __contains__(self, node_id: object) -> bool:
        return any(m.id == node_id for m in self.members)

    def to_dict(self) -> list[dict[str, object]]:
        """For status and JSON: [{"id", "role", "address" (hex)}] by id."""
        return [{"id": m.id, "role": m.role.name.lower(), "address": m.address.hex()} for m in self.members]


def encode_membership(config: ClusterConfig) -> bytes:
    """The body bytes of `config` (layout in the module docstring); checks the configuration first."""
    config.check()
    parts = [_HEAD.pack(MEMBERSHIP_VERSION, len(config.members))]
    for m in config.members:
        parts.append(_MEMBER.pack(m.id, int(m.role), len(m.address)))
        parts.append(m.address)
    return b"".join(parts)


def decode_membership(body: bytes | memoryview) -> ClusterConfig:
    """The configuration in `body`; MembershipFormatError naming the field when it is not a valid one."""
    size = len(body)
    if size < _HEAD.size:
        raise MembershipFormatError("membership body", f"at least {_HEAD.size} bytes", size)
    version, count = _HEAD.unpack_from(body, 0)
    if version != MEMBERSHIP_VERSION:
        raise MembershipFormatError("membership version", f"{MEMBERSHIP_VERSION}", version)
    if not 1 <= count <= MEMBERS_MAX:
        raise MembershipFormatError("member count", f"1..{MEMBERS_MAX}", count)
    pos = _HEAD.size
    members = []
    for k in range(count):
        if pos + _MEMBER.size > size:
            raise MembershipFormatError(f"member {k}", f"{_MEMBER.size} header bytes at offset {pos}", size - pos)
        node_id, role, length = _MEMBER.unpack_from(body, pos)
        pos += _MEMBER.size
        try:
            member_role = MemberRole(role)
        except ValueError:
            raise MembershipFormatError(f"member {node_id} role", "1 (voter) or 2 (learner)", role) from None
        if length > MEMBER_ADDRESS_BYTES_MAX:
            raise MembershipFormatError(
                f"member {node_id} address length", f"at most {MEMBER_ADDRESS_BYTES_MAX} bytes", length
            )
        if pos + length > size:
            raise MembershipFormatError(f"member {node_id} address", f"{length} bytes", size - pos)
        members.append(Member(node_id, member_role, bytes(body[pos : pos + length])))
        pos += length
    if pos != size:
        raise MembershipFormatError("membership body size", f"{pos} bytes", size)
    config = ClusterConfig(tuple(members))
    config.check()  # ids increasing and unique, addresses unique, voter count
    return config


def membership_entry(config: ClusterConfig) -> bytes:
    """The log entry data of a configuration: a control entry of kind MEMBERSHIP."""
    return encode_control(ControlKind.MEMBERSHIP, encode_membership(config))


def membership_of_entry(data: bytes | memoryview) -> ClusterConfig | None:
    """The configuration in a log entry's data, None if it is not a MEMBERSHIP control entry (a batch frame,
    a no-op, another kind of control entry). Raises (ControlFormatError, MembershipFormatError) for a control
    entry that is damaged: the core never appends one it builds itself, so that is a peer's or a disk's fault."""
    if not is_control(data):
        return None
    ctrl = decode_control(data)
    if ctrl.kind != ControlKind.MEMBERSHIP:
        return None
    return decode_membership(ctrl.body)


# --- changes ------------------------------------------------------------------------------------------


class ConfChangeKind(enum.IntEnum):
    ADD_LEARNER = 1  # a new member, not voting, that starts receiving the log (or a snapshot)
    PROMOTE = 2  # a learner that caught up becomes a voter
    REMOVE = 3  # a member (voter or learner, the leader included) leaves


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server change. Build with the class methods; `address` only for ADD_LEARNER."""

    kind: ConfChangeKind
    node_id: int
    address: bytes = b""

    @classmethod
    def add_learner(cls, node_id: int, address: bytes) -> ConfChange:
        return cls(ConfChangeKind.ADD_LEARNER, node_id, address)

    @classmethod
    def promote(cls, node_id: int) -> ConfChange:
        return cls(ConfChangeKind.PROMOTE, node_id)

    @classmethod
    def remove(cls, node_id: int) -> ConfChange:
        return cls(ConfChangeKind.REMOVE, node_id)


class ConfChangeError(ProposalError):
    """A membership change was refused; nothing was appended. Subclasses say why."""


class ChangeInProgressError(ConfChangeError):
    """The latest configuration entry is not committed yet, or this leader has not yet committed an entry of
    its own term (thesis 4.1 and the fix of its 2015 erratum): one change at a time."""


class UnknownMemberError(ConfChangeError):
    """PROMOTE or REMOVE of an id that is not a member (PROMOTE: not a learner)."""


class AlreadyMemberError(ConfChangeError):
    """ADD_LEARNER of an id that is already a member (PROMOTE of a voter)."""


class WouldLoseQuorumError(ConfChangeError):
    """REMOVE of the last voter: the configuration would have no voter."""


class QuorumNotActiveError(WouldLoseQuorumError):
    """The strict reconfiguration check (etcd's `--strict-reconfig-check`): a change of the voters (REMOVE of a
    voter, PROMOTE) refused because the voters of the resulting configuration that the leader knows are active
    are not a majority of it; appended, it would stop every commit until enough of them are back. Retriable:
    the same change may pass once the silent voters are heard from again. `voters` are the resulting
    configuration's, `active` those of them known active, `needed` its majority."""

    def __init__(self, what: str, voters: tuple[int, ...], active: tuple[int, ...], needed: int) -> None:
        super().__init__(
            f"{what} would leave voters {_ids(voters)}; active {_ids(active)}; a majority needs {needed} "
            f"({STRICT_RECONFIG_CHECK}: retry once the silent voters are back)"
        )
        self.voters = voters
        self.active = active
        self.needed = needed


class TooManyVotersError(ConfChangeError):
    """PROMOTE beyond CLUSTER_SIZE_MAX voters, or ADD_LEARNER beyond MEMBERS_MAX members."""


class AddressInUseError(ConfChangeError):
    """ADD_LEARNER with the same address bytes as another member."""


class NotCaughtUpError(ConfChangeError):
    """PROMOTE of a learner more than RaftConfig.promote_max_lag_entries entries behind the leader's last
    index (or not yet replicating): it would stall commits while it catches up."""

    def __init__(self, node_id: int, behind_entries: int, bound_entries: int) -> None:
        super().__init__(f"learner {node_id} is {behind_entries} entries behind (bound {bound_entries})")
        self.node_id = node_id
        self.behind_entries = behind_entries


class InvalidChangeError(ConfChangeError):
    """A change whose arguments break a rule of ClusterConfig (an id out of range, an address too long)."""


def apply_change(config: ClusterConfig, change: ConfChange) -> ClusterConfig:
    """The configuration after `change`, or a ConfChangeError (leader-state checks such as ChangeInProgress and
    NotCaughtUp are the core's). Pure: the same inputs give the same configuration on every node."""
    nid = change.node_id
    current = config.member(nid)
    if change.kind == ConfChangeKind.ADD_LEARNER:
        if current is not None:
            raise AlreadyMemberError(f"node {nid} is already a {current.role.name.lower()}")
        if change.address:
            for m in config.members:
                if m.address == change.address:
                    raise AddressInUseError(f"address {change.address!r} is member {m.id}'s")
        if len(config.members) >= MEMBERS_MAX:
            raise TooManyVotersError(f"at most {MEMBERS_MAX} members (MEMBERS_MAX)")
        members = [*config.members, Member(nid, MemberRole.LEARNER, change.address)]
    elif change.kind == ConfChangeKind.PROMOTE:
        if current is None:
            raise UnknownMemberError(f"node {nid} is not a member")
        if current.role == MemberRole.VOTER:
            raise AlreadyMemberError(f"node {nid} is already a voter")
        if len(config.voters()) >= CLUSTER_SIZE_MAX:
            raise TooManyVotersError(f"at most {CLUSTER_SIZE_MAX} voters (CLUSTER_SIZE_MAX)")
        members = [m if m.id != nid else Member(nid, MemberRole.VOTER, m.address) for m in config.members]
    elif change.kind == ConfChangeKind.REMOVE:
        if current is None:
            raise UnknownMemberError(f"node {nid} is not a member")
        if current.role == MemberRole.VOTER and len(config.voters()) == 1:
            raise WouldLoseQuorumError(f"node {nid} is the last voter")
        members = [m for m in config.members if m.id != nid]
    else:
        raise InvalidChangeError(f"change kind: expected one of {[k.name for k in ConfChangeKind]}, got {change.kind}")
    try:
        return ClusterConfig.of(members)
    except MembershipFormatError as exc:
        raise InvalidChangeError(str(exc)) from None


def _ids(ids: Iterable[int]) -> str:
    return "{" + ",".join(str(i) for i in sorted(ids)) + "}"


def check_active_quorum(current: ClusterConfig, new: ClusterConfig, change: ConfChange, active: Iterable[int]) -> None:
    """The strict reconfiguration check (etcd's `--strict-reconfig-check`, on by default there too: "reject
    reconfiguration requests that would cause quorum loss"). Raise QuorumNotActiveError when `change` takes
    `current` to `new` with a different set of voters and the voters of `new` in `active` (the ids the leader
    knows are active: itself and the followers it heard from within the check-quorum window) are not a
    majority of `new`. A change that leaves the voters as they are (ADD_LEARNER, REMOVE of a learner) is never
    refused: it cannot change whether a quorum is live. Pure: the caller decides who is active."""
    voters = new.voters()
    if voters == current.voters():
        return
    live = tuple(sorted(set(active) & set(voters)))
    if len(live) >= new.quorum:
        return
    verb = {ConfChangeKind.REMOVE: "removing", ConfChangeKind.PROMOTE: "promoting"}.get(change.kind, "changing")
    raise QuorumNotActiveError(f"{verb} node {change.node_id}", voters, live, new.quorum)
