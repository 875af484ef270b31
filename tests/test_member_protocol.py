"""The membership kinds of the client protocol: round trips, bad bodies refused by field, the change's MAC."""

from __future__ import annotations

import pytest

from shmraft.net.auth import MEMBER_CHANGE_WINDOW_MS, Secret, member_change_mac, member_change_refusal
from shmraft.wire import client as cp
from shmraft.wire.errors import RemoteProtocolError

SECRET = Secret(b"k" * 32, "test")
ADDRESS = (
    b'{"client_port":7401,"data_port":7402,"host":"127.0.0.1","kafka_port":0,'
    b'"metrics_port":7404,"raft_port":7403,"v":1}'
)


def _decode(data: bytes) -> cp.Message:
    r = cp.MessageReader()
    r.feed(data)
    msg = r.next_message()
    assert r.buffered_bytes == 0
    return msg


def _signed(op: cp.ChangeOp, node_id: int, address: bytes = b"", unix_ms: int = 1_700_000_000_000) -> cp.MemberChange:
    m = cp.MemberChange(7, op, node_id, 5000, unix_ms, address)
    return cp.MemberChange(7, op, node_id, 5000, unix_ms, address, member_change_mac(SECRET, "c", m.signed_bytes))


def test_round_trips() -> None:
    answer = cp.MembersAnswer(
        3,
        12,
        2,
        40,
        cp.MembersFlag.CHANGE_PENDING,
        [
            cp.MemberInfo(1, cp.MemberRole.VOTER, 40, 0, ADDRESS),
            cp.MemberInfo(4, cp.MemberRole.LEARNER, 10, 30, ADDRESS.replace(b"74", b"75")),
        ],
    )
    for msg in (cp.Members(1), answer, _signed(cp.ChangeOp.ADD_LEARNER, 4, ADDRESS), cp.MemberChanged(7, 13)):
        assert _decode(cp.encode_message(msg)) == msg
    for op in (cp.ChangeOp.PROMOTE, cp.ChangeOp.REMOVE):
        assert _decode(cp.encode_message(_signed(op, 4))) == _signed(op, 4)


def _body(msg: cp.Message) -> bytearray:
    return bytearray(cp.encode_message(msg)[cp.HEADER_BYTES :])


def _frame(kind: cp.Kind, body: bytes) -> bytes:
    return cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, kind, len(body), 9) + body


@pytest.mark.parametrize(
    "kind, mutate, field",
    [
        (cp.Kind.MEMBER_CHANGE, lambda b: b.__setitem__(0, 9), "MEMBER_CHANGE.op"),
        (cp.Kind.MEMBER_CHANGE, lambda b: b.__setitem__(slice(1, 5), b"\0\0\0\0"), "MEMBER_CHANGE.node_id"),
        (cp.Kind.MEMBER_CHANGE, lambda b: b.__delitem__(slice(-1, None)), "MEMBER_CHANGE.mac"),
        (cp.Kind.MEMBER_CHANGE, lambda b: b.__setitem__(0, 2), "MEMBER_CHANGE.address"),  # PROMOTE with an address
        (cp.Kind.MEMBER_CHANGE, lambda b: b.__setitem__(slice(17, 19), b"\xff\xff"), "MEMBER_CHANGE.address length"),
    ],
)
def test_bad_change_bodies_are_refused_by_field(kind, mutate, field) -> None:
    body = _body(_signed(cp.ChangeOp.ADD_LEARNER, 4, ADDRESS))
    mutate(body)
    with pytest.raises(RemoteProtocolError) as err:
        _decode(_frame(kind, bytes(body)))
    assert err.value.field == field


def test_bad_members_answers_are_refused() -> None:
    good = _body(cp.MembersAnswer(3, 1, 1, 1, cp.MembersFlag(0), [cp.MemberInfo(1, cp.MemberRole.VOTER, 1, 0, b"x")]))
    bad_role = bytearray(good)
    bad_role[23 + 4] = 0
    bad_flags = bytearray(good)
    bad_flags[20] = 4
    for body, field in ((bad_role, "MEMBERS_ANSWER.role"), (bad_flags, "MEMBERS_ANSWER.flags")):
        with pytest.raises(RemoteProtocolError) as err:
            _decode(_frame(cp.Kind.MEMBERS_ANSWER, bytes(body)))
        assert err.value.field == field


def test_the_mac_binds_secret_cluster_and_every_field() -> None:
    m = _signed(cp.ChangeOp.REMOVE, 3)
    now = m.unix_ms
    assert member_change_refusal(SECRET, "c", m.signed_bytes, m.mac, m.unix_ms, now) == ""
    assert "not signed" in member_change_refusal(Secret(b"x" * 32, "t"), "c", m.signed_bytes, m.mac, m.unix_ms, now)
    assert "not signed" in member_change_refusal(SECRET, "other", m.signed_bytes, m.mac, m.unix_ms, now)
    other = cp.MemberChange(7, cp.ChangeOp.REMOVE, 2, 5000, m.unix_ms, b"", m.mac)  # node 3's MAC on node 2
    assert "not signed" in member_change_refusal(SECRET, "c", other.signed_bytes, other.mac, m.unix_ms, now)
    late = now + MEMBER_CHANGE_WINDOW_MS + 1
    assert "replay" in member_change_refusal(SECRET, "c", m.signed_bytes, m.mac, m.unix_ms, late)
    assert "mac" not in repr(m).lower() or m.mac.hex() not in repr(m)


def test_a_strict_check_refusal_reaches_the_client_as_a_retriable_quorum_not_active() -> None:
    """The core's QuorumNotActiveError goes out as UNAVAILABLE (a code every version-3 client reads) with its
    text, and the library raises QuorumNotActive for it; the last-voter refusal stays NO_QUORUM."""
    from shmraft.client.errors import NoQuorum, QuorumNotActive, UnavailableError, error_from_server
    from shmraft.raft.membership import QuorumNotActiveError, WouldLoseQuorumError
    from shmraft.workers.raft import _change_error_code

    exc = QuorumNotActiveError("removing node 2", (1, 3), (1,), 2)
    code = _change_error_code(exc, cp.ChangeOp.REMOVE)
    assert code is cp.ErrorCode.UNAVAILABLE and code.retriable
    err = error_from_server(code, str(exc), "", "127.0.0.1:7101")
    assert isinstance(err, QuorumNotActive) and isinstance(err, UnavailableError) and err.retriable
    assert "removing node 2 would leave voters {1,3}; active {1}; a majority needs 2" in str(err)
    last = _change_error_code(WouldLoseQuorumError("node 1 is the last voter"), cp.ChangeOp.REMOVE)
    assert last is cp.ErrorCode.NO_QUORUM and isinstance(error_from_server(last, "x"), NoQuorum)
    assert type(error_from_server(cp.ErrorCode.UNAVAILABLE, "no leader")) is UnavailableError
