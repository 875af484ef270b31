"""Committed group offsets through the Kafka door with real clients (kafka-python, confluent-kafka, aiokafka):
FindCoordinator names the leader, OffsetCommit / OffsetFetch are the native consumer-group positions (kept in
the replicated log). A consumer that commits, closes and is restarted resumes at the committed position; the
positions survive a leader SIGKILL and every node's own table agrees; a follower answers NOT_COORDINATOR.

Every test checks each node's own log against what was acknowledged (`clusterkit.verify`)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from clusterkit import Harness, verify, wait_for
from test_groups_live import own_table, wait_tables_agree
from test_kafka_clients import CLIENT_DEADLINE_S, ask, bootstrap, kafka_address

from shmraft.ingest.kafka_door import KAFKA_TOPIC
from shmraft.kafka import messages as m
from shmraft.kafka.codes import ApiKey, ErrorCode

pytestmark = pytest.mark.slow

EVENTS = 200
FIRST_PART = 70  # records the first consumer handles before it commits and closes


def produce(h: Harness) -> dict[bytes, int]:
    with h.client() as c:
        values = [b"k-%d" % i for i in range(EVENTS)]
        return dict(zip(values, c.produce_many(values), strict=True))


def kafka_python_consume(h: Harness, group: str, count: int, commit: bool) -> list[int]:
    """kafka-python with `group` and assign(): from the committed position (earliest without one); reads
    `count` records and commits the position after them."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap(h), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        tp = TopicPartition(KAFKA_TOPIC, 0)
        c.assign([tp])
        got: list[int] = []
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        while len(got) < count and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=count - len(got)).values():
                got += [r.offset for r in recs]
        if commit:
            c.commit()  # the consumer's position: after the last record returned
            assert c.committed(tp) == got[-1] + 1
        return got
    finally:
        c.close()


def confluent_consume(h: Harness, group: str, count: int) -> list[int]:
    """librdkafka with `group.id` and assign() at the stored offset; commits synchronously after `count`."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": ",".join(bootstrap(h)),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign([TopicPartition(KAFKA_TOPIC, 0)])  # OFFSET_STORED: the group's committed offset
        got: list[int] = []
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        while len(got) < count and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got.append(msg.offset())
        c.commit(offsets=[TopicPartition(KAFKA_TOPIC, 0, got[-1] + 1)], asynchronous=False)
        (committed,) = c.committed([TopicPartition(KAFKA_TOPIC, 0)], timeout=30)
        assert committed.offset == got[-1] + 1
        return got
    finally:
        c.close()


def aiokafka_consume(h: Harness, group: str, count: int) -> list[int]:
    """aiokafka with `group_id` and assign(): from the committed position; commits after `count` records."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list[int]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap(h), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await c.start()
        try:
            tp = TopicPartition(KAFKA_TOPIC, 0)
            c.assign([tp])
            got: list[int] = []
            deadline = time.monotonic() + CLIENT_DEADLINE_S
            while len(got) < count and time.monotonic() < deadline:
                batch = await c.getmany(tp, timeout_ms=500, max_records=count - len(got))
                got += [r.offset for recs in batch.values() for r in recs]
            await c.commit()
            assert await c.committed(tp) == got[-1] + 1
            return got
        finally:
            await c.stop()

    return asyncio.run(run())


def test_three_clients_commit_and_resume_and_a_follower_is_not_coordinator(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, kafka=True).start()
    try:
        acked = produce(h)
        log = sorted(acked.values())
        first = kafka_python_consume(h, "kp", FIRST_PART, commit=True)
        rest = kafka_python_consume(h, "kp", EVENTS - FIRST_PART, commit=True)
        assert first + rest == log  # resumed at the committed position: nothing skipped, nothing repeated
        c1 = confluent_consume(h, "ck", FIRST_PART)
        c2 = confluent_consume(h, "ck", EVENTS - FIRST_PART)
        assert c1 + c2 == log
        a1 = aiokafka_consume(h, "aio", FIRST_PART)
        a2 = aiokafka_consume(h, "aio", EVENTS - FIRST_PART)
        assert a1 + a2 == log
        with h.client() as c:  # the same table the native client reads
            assert c.committed("kp").offset == log[-1] + 1 and c.committed("ck").offset == log[-1] + 1

        leader = h.wait_leader()
        follower = next(n for n in h.node_ids if n != leader)
        with socket.create_connection(kafka_address(h, follower), timeout=30) as s:
            found = ask(s, ApiKey.FIND_COORDINATOR, 1, m.FindCoordinatorRequest("kp", 0))
            assert (found.error_code, found.node_id) == (ErrorCode.NONE, leader)
            fetched = ask(s, ApiKey.OFFSET_FETCH, 3, m.OffsetFetchRequest("kp", None))
            assert fetched.error_code == ErrorCode.NOT_COORDINATOR
            commit = m.OffsetCommitRequest(
                "kp",
                -1,
                "",
                None,
                -1,
                [m.OffsetCommitRequestTopic(KAFKA_TOPIC, [m.OffsetCommitRequestPartition(0, 5)])],
            )
            refused = ask(s, ApiKey.OFFSET_COMMIT, 3, commit)
            assert refused.topics[0].partitions[0].error_code == ErrorCode.NOT_COORDINATOR
        with socket.create_connection(kafka_address(h, leader), timeout=30) as s:
            unknown = ask(s, ApiKey.OFFSET_FETCH, 3, m.OffsetFetchRequest("nobody", None))
            assert unknown.error_code == ErrorCode.NONE and unknown.topics[0].partitions[0].committed_offset == -1
        check_subscribe_is_refused_clearly(h)
        verify(h, acked)
    finally:
        h.stop()


def check_subscribe_is_refused_clearly(h: Harness) -> None:
    """Group membership (JoinGroup, ...) is not served: subscribe() fails with a named error in both clients,
    instead of hanging (docs/KAFKA.md section 8)."""
    from confluent_kafka import Consumer, KafkaError
    from kafka import KafkaConsumer
    from kafka.errors import IncompatibleBrokerVersion

    k = KafkaConsumer(bootstrap_servers=bootstrap(h), group_id="sub", consumer_timeout_ms=5000)
    try:
        k.subscribe([KAFKA_TOPIC])
        with pytest.raises(IncompatibleBrokerVersion, match="JoinGroup"):
            k.poll(timeout_ms=5000)
    finally:
        k.close()
    c = Consumer({"bootstrap.servers": ",".join(bootstrap(h)), "group.id": "sub2"})
    try:
        c.subscribe([KAFKA_TOPIC])
        codes = set()
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        while KafkaError._UNSUPPORTED_FEATURE not in codes and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is not None:
                codes.add(msg.error().code())
        assert KafkaError._UNSUPPORTED_FEATURE in codes  # "JoinGroup failed: ... not supported by broker"
    finally:
        c.close()


def test_kafka_positions_survive_a_leader_sigkill_on_every_node(tmp_path: Path) -> None:
    h = Harness(tmp_path, kafka=True).start()
    try:
        acked = produce(h)
        log = sorted(acked.values())
        first = kafka_python_consume(h, "survivor", FIRST_PART, commit=True)
        leader = h.wait_leader()
        h.kill_node(leader)
        h.wait_leader(exclude=leader)
        rest = confluent_consume(h, "survivor", EVENTS - FIRST_PART)  # another client, the same group
        assert first + rest == log
        want = {"survivor": log[-1] + 1}
        live = [n for n in h.node_ids if n != leader]
        wait_tables_agree(h, want, live)
        h.start_node(leader)
        wait_tables_agree(h, want, h.node_ids)
        wait_for(lambda: own_table(h, leader) == want, 30, "the restarted node's table")
        verify(h, acked)
    finally:
        h.stop()
