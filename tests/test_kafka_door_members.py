"""The Kafka door answers Metadata and FindCoordinator from the configuration in effect (the members file the
raft worker keeps), not from the config file: Kafka clients follow membership changes as native ones do."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from shmraft.config import local_cluster
from shmraft.ingest.kafka_door import KAFKA_TOPIC, KafkaDoor
from shmraft.ipc.state import NodeStatus
from shmraft.kafka import messages as m
from shmraft.kafka.codes import ErrorCode
from shmraft.node.members import ROLE_LEARNER, ROLE_VOTER, MembersView, MemberView
from shmraft.raft.types import Role

COORDINATOR_KEY_GROUP = m.COORDINATOR_KEY_GROUP


class _State:
    """The state block fields the door reads."""

    def __init__(self, leader_id: int) -> None:
        self.values = {"leader_id": leader_id, "term": 7, "role": Role.FOLLOWER, "status": NodeStatus.SERVING}

    def get(self, name: str) -> int:
        return self.values[name]


def _door(tmp_path: Path, leader_id: int) -> tuple[KafkaDoor, MembersView]:
    """A door of node 1 of a 3-node config, whose configuration in effect is nodes 1, 3, 4 (4 a learner) and
    5 (a voter): node 2 removed, 4 and 5 added."""
    configs = local_cluster(tmp_path, count=5, port_base=21000, kafka=True)
    config = replace(configs[0], members=tuple(c.me for c in configs[:3]))
    by_id = {c.node_id: c.me for c in configs}
    view = MembersView(
        12,
        (
            MemberView(by_id[1], ROLE_VOTER),
            MemberView(by_id[3], ROLE_VOTER),
            MemberView(by_id[4], ROLE_LEARNER),
            MemberView(by_id[5], ROLE_VOTER),
        ),
    )
    fetches = SimpleNamespace(fetch=None, offsets=lambda: None)
    door = KafkaDoor(config, _State(leader_id), logging.getLogger("t"), fetches, None, None, None)  # type: ignore[arg-type]
    return door, view


def test_metadata_lists_the_configuration_in_effect(tmp_path: Path) -> None:
    door, view = _door(tmp_path, leader_id=5)
    before = door._metadata(m.MetadataRequest(topics=None), 1)
    assert sorted(b.node_id for b in before.brokers) == [1, 2, 3]  # no view given: the config file's members
    door.members_view = lambda: view
    meta = door._metadata(m.MetadataRequest(topics=None), 1)
    assert sorted((b.node_id, b.port) for b in meta.brokers) == sorted(
        (v.member.node_id, v.member.kafka_port) for v in view.members
    )
    (topic,) = meta.topics
    assert topic.name == KAFKA_TOPIC
    (part,) = topic.partitions
    assert part.leader_id == 5 and meta.controller_id == 5
    assert sorted(part.replica_nodes) == [1, 3, 4, 5]
    assert sorted(part.isr_nodes) == [1, 3, 5]  # a learner is a replica, not in sync (its acks do not count)


def test_find_coordinator_names_a_leader_added_by_a_membership_change(tmp_path: Path) -> None:
    door, view = _door(tmp_path, leader_id=5)
    refused = door._find_coordinator(m.FindCoordinatorRequest("g", COORDINATOR_KEY_GROUP))
    assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE  # node 5 is not in the config file
    door.members_view = lambda: view
    door.submit_group = lambda *a: None  # type: ignore[assignment]
    found = door._find_coordinator(m.FindCoordinatorRequest("g", COORDINATOR_KEY_GROUP))
    five = view.get(5)
    assert five is not None
    assert found.error_code == ErrorCode.NONE
    assert (found.node_id, found.host, found.port) == (5, five.member.host, five.member.kafka_port)
