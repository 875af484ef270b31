"""node/members.py: member address bytes (canonical JSON, versioned), collisions, the members file."""

from __future__ import annotations

import json

import pytest

from shmraft.config import Member, local_cluster
from shmraft.node.members import (
    ROLE_LEARNER,
    ROLE_VOTER,
    AddressError,
    MembersView,
    MemberView,
    address_collision,
    current_view,
    decode_address,
    encode_address,
    peer_addresses,
    static_view,
    write_members_file,
)

M = Member(4, "10.0.0.4", 7401, 7402, 7403, 7404, 7405)


def test_address_round_trip_and_canonical_bytes() -> None:
    data = encode_address(M)
    assert data == (
        b'{"client_port":7401,"data_port":7402,"host":"10.0.0.4","kafka_port":7405,'
        b'"metrics_port":7404,"raft_port":7403,"v":1}'
    )
    assert decode_address(4, data) == M
    assert decode_address(9, data).node_id == 9  # the id is the core's, not the address's


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d | {"v": 2}, "v"),
        (lambda d: {k: v for k, v in d.items() if k != "raft_port"}, "keys"),
        (lambda d: d | {"extra": 1}, "keys"),
        (lambda d: d | {"data_port": 0}, "data_port"),
        (lambda d: d | {"client_port": 70000}, "client_port"),
        (lambda d: d | {"client_port": "7401"}, "client_port"),
        (lambda d: d | {"kafka_port": -1}, "kafka_port"),
        (lambda d: d | {"host": ""}, "host"),
        (lambda d: d | {"host": "a b"}, "host"),
    ],
)
def test_bad_addresses_are_refused_by_field(mutate, field: str) -> None:
    doc = mutate(json.loads(encode_address(M)))
    with pytest.raises(AddressError) as err:
        decode_address(4, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    assert err.value.field == field


@pytest.mark.parametrize("raw", [b"", b"[]", b"\xff", b"{", b"x" * 600])
def test_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(AddressError):
        decode_address(1, raw)


def test_non_canonical_bytes_are_refused() -> None:
    spaced = json.dumps(json.loads(encode_address(M)), sort_keys=True).encode()  # ", " and ": "
    with pytest.raises(AddressError, match="canonical"):
        decode_address(4, spaced)


def test_collisions() -> None:
    other = Member(1, "10.0.0.4", 7101, 7102, 7103, 7104)
    assert address_collision(M, [other]) == ""
    clash = Member(1, "10.0.0.4", 7101, 7402, 7103, 7104)
    assert "port 7402 is already used by node 1" in address_collision(M, [clash])
    assert address_collision(M, [Member(1, "10.0.0.5", 7401, 7402, 7403, 7404)]) == ""  # another host
    assert address_collision(M, [M]) == ""  # itself (a re-add at the same address)
    assert "repeat" in address_collision(Member(4, "h", 1, 1, 2, 3), [])


def test_members_file_and_peer_addresses(tmp_path) -> None:
    configs = local_cluster(tmp_path, count=3, port_base=9000, peer_connect_overrides="2:raft=127.0.0.1:1234")
    c1 = configs[0]
    assert current_view(c1) == static_view(c1)
    assert static_view(c1).voters() == [1, 2, 3]
    view = MembersView(
        17, (*static_view(c1).members, MemberView(Member(4, "127.0.0.1", 9401, 9402, 9403, 9404), ROLE_LEARNER))
    )
    write_members_file(c1.node_dir, view)
    assert current_view(c1) == view
    assert view.learners() == [4] and view.get(2).role == ROLE_VOTER
    assert peer_addresses(c1, view, "raft") == {2: ("127.0.0.1", 1234), 3: ("127.0.0.1", 9303), 4: ("127.0.0.1", 9403)}
    assert peer_addresses(c1, view, "data")[4] == ("127.0.0.1", 9402)


def test_the_five_host_example_loads(monkeypatch) -> None:
    from pathlib import Path

    from shmraft.config import load

    config = load(Path(__file__).resolve().parent.parent / "conf" / "five-hosts.toml")
    assert [m.node_id for m in config.members] == [1, 2, 3, 4, 5]
    assert static_view(config).voters() == [1, 2, 3, 4, 5]


def test_former_members_linger_then_go(tmp_path) -> None:
    from shmraft.node.members import FormerMembers

    c1 = local_cluster(tmp_path, count=3, port_base=9000)[0]
    full = static_view(c1)
    without_3 = MembersView(5, tuple(v for v in full.members if v.member.node_id != 3))
    former = FormerMembers(linger_s=30.0)
    former.update(full, without_3, now_s=100.0)
    assert former.view(without_3).ids() == [1, 2, 3] and former.view(without_3).learners() == [3]
    assert not former.expire(100.0 + former.linger_s - 1)
    assert former.expire(100.0 + former.linger_s)
    assert former.view(without_3).ids() == [1, 2]
    former.update(full, without_3, now_s=200.0)
    former.update(without_3, full, now_s=201.0)  # added back: no longer a former member
    assert former.view(full).ids() == [1, 2, 3] and not former.expire(1e9)


def test_status_lists_the_members_added_since_the_config_file(tmp_path) -> None:
    """`shmraft-supervisor status` of a local cluster: the configured nodes plus every member of the newest
    members file (a node added with `members add` or `join`), each with its own ports; a configured node
    removed since stays listed."""
    from shmraft.supervisor.status import with_members_in_effect

    configs = local_cluster(tmp_path, count=3, port_base=22000)
    assert with_members_in_effect(configs) == configs  # no members file yet
    old = MembersView(0, tuple(MemberView(c.me, ROLE_VOTER) for c in configs))
    new = MembersView(
        9, (MemberView(configs[0].me, ROLE_VOTER), MemberView(configs[2].me, ROLE_VOTER), MemberView(M, ROLE_LEARNER))
    )
    write_members_file(configs[0].node_dir, new)  # node 1 saw node 2 removed and node 4 added
    write_members_file(configs[1].node_dir, old)  # node 2 (removed, down) never learnt it
    listed = with_members_in_effect(configs)
    assert [c.node_id for c in listed] == [1, 2, 3, 4]
    four = listed[-1]
    assert four.me == M and four.node_dir == tmp_path / "node4" and four.cluster_id == configs[0].cluster_id
