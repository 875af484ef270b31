"""Membership for operators: list the members, and add, promote or remove one, each returning once committed.

`list_members` asks any reachable node, then the leader it names (only the leader knows how far behind each
member is). `change_member` signs the MEMBER_CHANGE with the cluster secret (docs/PROTOCOL.md 2.8), sends it
to the leader (following NOT_LEADER), and returns the log index at which the change is committed; a refusal
raises the typed error of its code (client/errors.py: MemberUnknown, ChangeInProgress, NoQuorum,
AddressInUse, NotCaughtUp, Unauthorized), and TIMEOUT raises CommitTimeout (the change may still commit).
A change of the voters that the leader's strict reconfiguration check refuses (QuorumNotActive: the voters it
hears would not be a majority of the new configuration, e.g. removing a follower while the other is down) is
asked again, with a backoff, until it passes or the timeout runs out (then QuorumNotActive, naming the voters);
`wait_quorum=False` raises it at once.
`add_member` adds a learner and, unless told not to, promotes it once the leader sees it caught up.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Final

from shmraft.client.connection import AnswerTimeout, Connection, parse_address
from shmraft.client.errors import (
    ConnectionFailed,
    NoNodeReachable,
    NotCaughtUp,
    NotLeaderError,
    QuorumNotActive,
    ShmraftError,
    UnavailableError,
    error_from_server,
)
from shmraft.config import Member
from shmraft.net.auth import Secret, member_change_mac
from shmraft.node import members as mb
from shmraft.wire import client as cp

ANSWER_TIMEOUT_S: Final = 2.0  # one MEMBERS question
CHANGE_TIMEOUT_S_DEFAULT: Final = 15.0  # a whole change, redirects and retries included
RETRY_PAUSE_S: Final = 0.1  # between attempts while there is no leader or a change is in progress
QUORUM_RETRY_PAUSE_MAX_S: Final = 1.0  # the backoff's bound while the strict check refuses (doubles from RETRY_PAUSE_S)
PROMOTE_WAIT_S_DEFAULT: Final = 120.0  # how long `add_member` waits for the learner to catch up


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as the operator sees it."""

    node_id: int
    role: str  # "voter" or "learner"
    member: Member | None  # where it listens (None: an address this release cannot read)
    match_index: int
    entries_behind: int | None  # None: unknown (the answer did not come from the leader)

    def to_dict(self) -> dict:
        m = self.member
        return {
            "id": self.node_id,
            "role": self.role,
            "host": m.host if m else None,
            "client_port": m.client_port if m else None,
            "data_port": m.data_port if m else None,
            "raft_port": m.raft_port if m else None,
            "metrics_port": m.metrics_port if m else None,
            "kafka_port": m.kafka_port if m else None,
            "match_index": self.match_index,
            "entries_behind": self.entries_behind,
        }


@dataclass(frozen=True, slots=True)
class Membership:
    config_index: int
    leader_id: int
    last_index: int
    change_pending: bool
    answered_by: str  # the address that answered
    members: list[MemberStatus]

    def to_dict(self) -> dict:
        return {
            "config_index": self.config_index,
            "leader_id": self.leader_id,
            "last_index": self.last_index,
            "change_pending": self.change_pending,
            "answered_by": self.answered_by,
            "members": [m.to_dict() for m in self.members],
        }

    def get(self, node_id: int) -> MemberStatus | None:
        return next((m for m in self.members if m.node_id == node_id), None)


def _open(address: str, tls: ssl.SSLContext | None, token: bytes | None, timeout_s: float) -> Connection:
    return Connection(address, connect_timeout_s=timeout_s, tls=tls, token=token)


def _ask(address: str, tls: ssl.SSLContext | None, token: bytes | None) -> cp.MembersAnswer:
    with _open(address, tls, token, ANSWER_TIMEOUT_S) as conn:
        answer = conn.request(cp.encode_members, ANSWER_TIMEOUT_S)
    if isinstance(answer, cp.Error):
        raise error_from_server(answer.code, answer.message, answer.leader, address)
    if not isinstance(answer, cp.MembersAnswer):
        raise ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to MEMBERS")
    return answer


def _membership(answer: cp.MembersAnswer, address: str) -> Membership:
    out = []
    for info in answer.members:
        try:
            member: Member | None = mb.decode_address(info.node_id, info.address)
        except mb.AddressError:
            member = None
        role = mb.ROLE_VOTER if info.role is cp.MemberRole.VOTER else mb.ROLE_LEARNER
        behind = None if info.entries_behind == cp.BEHIND_UNKNOWN else info.entries_behind
        out.append(MemberStatus(info.node_id, role, member, info.match_index, behind))
    pending = bool(answer.flags & cp.MembersFlag.CHANGE_PENDING)
    return Membership(answer.config_index, answer.leader_id, answer.last_index, pending, address, out)


def list_members(
    addresses: list[str], *, tls: ssl.SSLContext | None = None, token: bytes | None = None, from_leader: bool = True
) -> Membership:
    """The configuration in effect as the leader sees it (its view has how far behind each member is): the
    nodes are asked in turn until one names a leader, which is then asked. A node that knows no leader (an
    election, or a removed node that never heard of its removal) is passed over; when no node names one, the
    answer with the newest configuration is returned. NoNodeReachable when none answers."""
    last = ""
    views: list[Membership] = []
    for address in addresses:
        try:
            answer = _ask(address, tls, token)
        except (ConnectionFailed, AnswerTimeout) as exc:
            last = str(exc)
            continue
        view = _membership(answer, address)
        views.append(view)
        if not answer.leader_id or not from_leader:
            continue
        if answer.leader_id == answer_node(view, address):
            return view
        leader = view.get(answer.leader_id)
        if leader is not None and leader.member is not None:
            try:
                return _membership(_ask(leader.member.client_address, tls, token), leader.member.client_address)
            except (ConnectionFailed, AnswerTimeout):
                pass
    if views:
        return max(views, key=lambda v: v.config_index)
    raise NoNodeReachable(addresses, last)


def answer_node(view: Membership, address: str) -> int:
    """The id of the member listening at `address` (0 when none does)."""
    for m in view.members:
        if m.member is not None and m.member.client_address == address:
            return m.node_id
    return 0


def signed_change(
    secret: Secret, cluster_id: str, op: cp.ChangeOp, node_id: int, address: bytes, timeout_ms: int
) -> cp.MemberChange:
    """A MEMBER_CHANGE signed now with the cluster secret (correlation id 0: the connection sets its own)."""
    unsigned = cp.MemberChange(0, op, node_id, timeout_ms, int(time.time() * 1000), address)
    return cp.MemberChange(
        0,
        op,
        node_id,
        timeout_ms,
        unsigned.unix_ms,
        address,
        member_change_mac(secret, cluster_id, unsigned.signed_bytes),
    )


def change_member(
    addresses: list[str],
    op: cp.ChangeOp,
    node_id: int,
    *,
    secret: Secret,
    cluster_id: str,
    member: Member | None = None,
    timeout_s: float = CHANGE_TIMEOUT_S_DEFAULT,
    tls: ssl.SSLContext | None = None,
    token: bytes | None = None,
    wait_quorum: bool = True,
) -> int:
    """Ask the leader for one change and wait until it is committed; returns its log index. Follows NOT_LEADER,
    waits out elections (UNAVAILABLE) and, with `wait_quorum`, refusals of the strict reconfiguration check
    (QuorumNotActive, asked again with a backoff up to QUORUM_RETRY_PAUSE_MAX_S) until `timeout_s`; every other
    refusal raises its typed error at once."""
    address_bytes = mb.encode_address(member) if member is not None else b""
    deadline = time.monotonic() + timeout_s
    candidates = list(addresses)
    last: ShmraftError | None = None
    pause_s = RETRY_PAUSE_S
    while time.monotonic() < deadline:
        for address in list(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # a node that is stopped (SIGSTOP) still accepts the connection and would hold the change, which
            # waits for its commit, until the deadline: ask it MEMBERS first (ANSWER_TIMEOUT_S), and go to the
            # leader it names
            try:
                probe = _ask(address, tls, token)
            except (ConnectionFailed, AnswerTimeout) as exc:
                last = exc if isinstance(exc, ShmraftError) else ConnectionFailed(str(exc))
                continue
            except ShmraftError as exc:  # it answered with an error: it is alive; the change tells more
                probe = None
                last = exc
            if probe is not None and probe.leader_id:
                view = _membership(probe, address)
                named = view.get(probe.leader_id)
                leader_at = named.member.client_address if named is not None and named.member is not None else None
                if leader_at is not None and leader_at != address:
                    if leader_at in candidates:
                        candidates.remove(leader_at)
                    candidates.insert(0, leader_at)
                    break  # ask the leader it named (probed in turn)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            req = signed_change(secret, cluster_id, op, node_id, address_bytes, int(remaining * 1000))
            try:
                with _open(address, tls, token, min(ANSWER_TIMEOUT_S, remaining)) as conn:
                    answer = conn.request(
                        lambda cid, r=req: cp.encode_member_change(
                            cp.MemberChange(cid, r.op, r.node_id, r.timeout_ms, r.unix_ms, r.address, r.mac)
                        ),
                        remaining + ANSWER_TIMEOUT_S,
                    )
            except (ConnectionFailed, AnswerTimeout) as exc:
                last = exc if isinstance(exc, ShmraftError) else ConnectionFailed(str(exc))
                continue
            if isinstance(answer, cp.MemberChanged):
                return answer.index
            if not isinstance(answer, cp.Error):
                raise ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to MEMBER_CHANGE")
            err = error_from_server(answer.code, answer.message, answer.leader, address)
            if isinstance(err, NotLeaderError):
                if answer.leader and answer.leader not in candidates:
                    candidates.insert(0, answer.leader)
                elif answer.leader:
                    candidates.remove(answer.leader)
                    candidates.insert(0, answer.leader)
                last = err
                if answer.leader and answer.leader != address:
                    break  # try the leader it named first
                continue
            if isinstance(err, QuorumNotActive):
                if not wait_quorum:
                    raise err
                last = err
                break  # the leader answered: ask it again after the backoff
            if isinstance(err, UnavailableError):
                last = err
                continue
            raise err
        if isinstance(last, QuorumNotActive):
            time.sleep(min(pause_s, max(deadline - time.monotonic(), 0.0)))
            pause_s = min(pause_s * 2, QUORUM_RETRY_PAUSE_MAX_S)
        else:
            pause_s = RETRY_PAUSE_S
            time.sleep(RETRY_PAUSE_S)
    raise last or NoNodeReachable(addresses)


def add_member(
    addresses: list[str],
    member: Member,
    *,
    secret: Secret,
    cluster_id: str,
    promote: bool = True,
    promote_wait_s: float = PROMOTE_WAIT_S_DEFAULT,
    timeout_s: float = CHANGE_TIMEOUT_S_DEFAULT,
    tls: ssl.SSLContext | None = None,
    token: bytes | None = None,
) -> int:
    """Add `member` as a learner; with `promote`, then promote it once caught up (retrying NOT_CAUGHT_UP until
    `promote_wait_s`). Returns the log index of the last committed change."""
    kw = {"secret": secret, "cluster_id": cluster_id, "timeout_s": timeout_s, "tls": tls, "token": token}
    index = change_member(addresses, cp.ChangeOp.ADD_LEARNER, member.node_id, member=member, **kw)
    if not promote:
        return index
    deadline = time.monotonic() + promote_wait_s
    while True:
        try:
            return change_member(addresses, cp.ChangeOp.PROMOTE, member.node_id, **kw)
        except NotCaughtUp:
            if time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_PAUSE_S * 5)


def member_from_args(node_id: int, host: str, ports: str) -> Member:
    """A Member from `--host H --ports C,D,R,M[,K]` (client, data, raft, metrics[, kafka]); ValueError says which."""
    try:
        nums = [int(p) for p in ports.split(",")]
    except ValueError:
        raise ValueError(f"--ports: expected CLIENT,DATA,RAFT,METRICS[,KAFKA] numbers, got {ports!r}") from None
    if len(nums) not in (4, 5):
        raise ValueError(f"--ports: expected 4 or 5 ports (client, data, raft, metrics[, kafka]), got {len(nums)}")
    member = Member(node_id, host, *nums[:4], nums[4] if len(nums) == 5 else 0)
    mb.decode_address(node_id, mb.encode_address(member))  # the same checks as every node's
    parse_address(member.client_address)
    return member


def dumps(view: Membership) -> str:
    return json.dumps(view.to_dict())
