"""The asyncio client against a real 3-node cluster: produce and consume back, a pipelined producer through a
leader SIGKILL (every acknowledged event on every node once, in order), consume with follow, and a producer and a
follow consumer through two leader SIGKILLs.

The coroutines run with asyncio.run inside plain tests; the cluster's blocking calls (kill, restart, waits)
run in a worker thread of the test so that the client's event loop keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterkit import Harness, verify
from fake_node import FakeCluster
from test_security import make_ca, make_cert

from shmraft.aio import AsyncClient, AsyncProducer
from shmraft.client import Unauthorized
from shmraft.client.leader import ATTEMPT_ANSWER_TIMEOUT_S, PROBE_AFTER_S

DEADLINE_S = 120.0  # each test's whole asyncio part; generous for a loaded 2-core machine
FAKE_TIMEOUT_S = 8.0  # the client's timeout_s against fake nodes: a hang fails fast


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        h.start()
        yield h
    finally:
        h.stop()


@pytest.fixture
def fakes() -> Iterator[FakeCluster]:
    c = FakeCluster(3)
    try:
        yield c
    finally:
        c.stop()


def _client(harness: Harness) -> AsyncClient:
    return AsyncClient(harness.addresses, timeout_s=20.0, **harness.client_options)


class ChunkedSender:
    """Hands `values` to an AsyncProducer in chunks of CHUNK_EVENTS, a short pause after each (the load spreads
    over a few seconds, so faults land mid-stream), then collects the outcomes: `acked` (value -> offset) and
    `errors` (one per failed send_many)."""

    CHUNK_EVENTS = 50
    CHUNK_PAUSE_S = 0.005

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.acked: dict[bytes, int] = {}
        self.errors: list[BaseException] = []
        self.handed = 0  # events handed to the producer so far

    def resolved(self, producer: AsyncProducer) -> int:
        """Events handed over and resolved (acknowledged or failed) so far."""
        return self.handed - producer._buffered_events

    async def wait_resolved(self, producer: AsyncProducer, count: int) -> None:
        while self.resolved(producer) < count:
            await asyncio.sleep(0.01)  # the caller's deadline (asyncio.wait_for) bounds this

    async def run(self, producer: AsyncProducer) -> None:
        futures = []
        for start in range(0, len(self.values), self.CHUNK_EVENTS):
            chunk = self.values[start : start + self.CHUNK_EVENTS]
            futures.append((chunk, await producer.send_many(chunk)))
            self.handed += len(chunk)
            await asyncio.sleep(self.CHUNK_PAUSE_S)
        for chunk, future in futures:
            try:
                self.acked.update(zip(chunk, await future, strict=True))
            except Exception as exc:  # an outcome to report, not to hide
                self.errors.append(exc)


def test_produce_and_consume_back_10k_events(harness: Harness) -> None:
    values = [b"aio-%05d" % i for i in range(10_000)]

    async def main() -> tuple[list[int], list[tuple[int, bytes]], int]:
        async with _client(harness) as client:
            offsets = [await client.produce(values[0])]
            offsets += await client.produce_many(values[1:5000])
            async with client.producer(window=8) as producer:
                futures = [await producer.send(v) for v in values[5000:]]
                offsets += await asyncio.gather(*futures)
            read = [(o, v) async for o, v in client.consume(0)]
            meta = await client.metadata()
            return offsets, read, meta.leader_id

    offsets, read, leader_id = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    assert offsets == sorted(offsets) and len(set(offsets)) == len(values)
    assert read == list(zip(offsets, values, strict=True))
    assert leader_id == harness.wait_leader()
    verify(harness, dict(zip(values, offsets, strict=True)))


def test_pipelined_producer_through_a_leader_sigkill_keeps_every_acked_event_once_in_order(harness: Harness) -> None:
    total = 30_000
    values = [b"kill-%06d" % i for i in range(total)]
    sending = ChunkedSender(values)

    async def main() -> tuple[int, int, int, int]:
        async with _client(harness) as client, client.producer(window=8, linger_ms=2.0) as producer:
            sender = asyncio.create_task(sending.run(producer))
            await sending.wait_resolved(producer, 3000)  # 3000 events acknowledged before the kill
            old = await asyncio.to_thread(harness.wait_leader)
            await asyncio.to_thread(harness.kill_node, old)
            unresolved_at_kill = total - sending.resolved(producer)
            new = await asyncio.to_thread(harness.wait_leader, 60, old)
            await asyncio.to_thread(harness.restart_node, old)
            await sender
            return old, new, unresolved_at_kill, producer.producer_id

    old, new, unresolved_at_kill, _ = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    assert new != old
    assert unresolved_at_kill > total // 4, "the kill must land while most events are still to be acknowledged"
    assert not sending.errors, f"{len(sending.errors)} send_many calls failed, first: {sending.errors[0]!r}"
    assert len(sending.acked) == total
    log = verify(harness, sending.acked)
    assert [v for _, v in log] == values  # one producer, in order, each once


KILLS = 2  # leader SIGKILLs (each node restarted) while the asyncio producer and consumer run
ACKED_BETWEEN_KILLS = 3000  # events acknowledged before each kill, so each lands mid-stream


def test_asyncio_producer_and_follow_consumer_through_two_leader_sigkills_see_every_acked_event_once_in_order(
    harness: Harness,
) -> None:
    """The asyncio client's fault test (as the blocking client's under loadgen --kill-leader-every --verify): a
    pipelined idempotent producer and a follow consumer, both asyncio, while the leader is SIGKILLed twice and
    restarted. Every acknowledged event is on every node once, at its offset, in order (each node's log read
    from that node only), and the consumer saw exactly that log: every event once, in order."""
    total = 40_000
    values = [b"aiokill-%06d" % i for i in range(total)]
    sending = ChunkedSender(values)
    seen: list[tuple[int, bytes]] = []
    kills: list[tuple[int, int]] = []  # (killed leader, its successor)

    async def follow(client: AsyncClient) -> None:
        # up to the last event, which is produced last: the consumer can read it (committed) before the producer
        # has handled its acknowledgement, so the end is that event, not "the producer is done" (CI with a busy
        # loop per core waited forever for more); what comes after it would be a duplicate, which verify catches
        async with contextlib.aclosing(client.consume(0, follow=True, poll_wait_ms=200)) as records:
            async for record in records:
                seen.append(record)
                if record.value == values[-1]:
                    return

    async def main() -> int:
        leader = await asyncio.to_thread(harness.wait_leader)
        # the consumer reads from the leader first, so the kills take its node away too
        by_id = dict(zip(harness.node_ids, harness.addresses, strict=True))
        consumer_addresses = [by_id[leader]] + [a for n, a in by_id.items() if n != leader]
        reader_client = AsyncClient(consumer_addresses, timeout_s=30.0, **harness.client_options)
        async with _client(harness) as client, reader_client, client.producer(window=8, linger_ms=2.0) as producer:
            reader = asyncio.create_task(follow(reader_client))
            sender = asyncio.create_task(sending.run(producer))
            for k in range(KILLS):
                await sending.wait_resolved(producer, (k + 1) * ACKED_BETWEEN_KILLS)
                old = await asyncio.to_thread(harness.wait_leader)
                await asyncio.to_thread(harness.kill_node, old)
                new = await asyncio.to_thread(harness.wait_leader, 60, old)
                await asyncio.to_thread(harness.restart_node, old)
                kills.append((old, new))
            unresolved_after_kills = total - sending.resolved(producer)
            await sender
            await asyncio.wait_for(reader, 60)
            return unresolved_after_kills

    unresolved_after_kills = asyncio.run(asyncio.wait_for(main(), DEADLINE_S * 2))
    assert len(kills) == KILLS and all(old != new for old, new in kills), kills
    assert unresolved_after_kills > 0, "the second kill must land before every event is acknowledged"
    assert not sending.errors, f"{len(sending.errors)} send_many calls failed, first: {sending.errors[0]!r}"
    assert len(sending.acked) == total
    log = verify(harness, sending.acked)
    assert [v for _, v in log] == values  # one producer, in order, each once
    assert seen == log, (
        f"the consumer saw {len(seen)} records, the log holds {len(log)}; first difference at "
        f"{next((i for i, (a, b) in enumerate(zip(seen, log, strict=False)) if a != b), min(len(seen), len(log)))}"
    )


def test_consume_with_follow_sees_events_produced_after_it_started(harness: Harness) -> None:
    async def main() -> tuple[list[int], list[tuple[int, bytes]]]:
        async with _client(harness) as client:
            before = await client.produce_many([b"before-%d" % i for i in range(10)])
            seen: list[tuple[int, bytes]] = []
            following = asyncio.Event()

            async def follow() -> None:
                async with contextlib.aclosing(client.consume(0, follow=True, poll_wait_ms=200)) as records:
                    async for offset, value in records:
                        seen.append((offset, value))
                        following.set()
                        if value == b"after-99":
                            return

            reader = asyncio.create_task(follow())
            await asyncio.wait_for(following.wait(), 30)
            after: list[int] = []
            for i in range(0, 100, 10):
                after += await client.produce_many([b"after-%d" % j for j in range(i, i + 10)])
            await asyncio.wait_for(reader, 30)
            return before + after, seen

    started = time.monotonic()
    offsets, seen = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    values = [b"before-%d" % i for i in range(10)] + [b"after-%d" % i for i in range(100)]
    assert seen == list(zip(offsets, values, strict=True)), f"after {time.monotonic() - started:.1f} s"


# --- the failover decisions, against fake nodes (real TCP, faults on cue) -------------------------------------


def test_producer_through_lost_answers_redirects_and_a_stopped_leader_keeps_every_event_once_in_order(
    fakes: FakeCluster,
) -> None:
    n = 6000
    events = [b"f%d" % i for i in range(n)]

    async def main() -> tuple[list[int], int]:
        client = AsyncClient(fakes.addresses, timeout_s=FAKE_TIMEOUT_S, connect_timeout_s=0.5)
        async with client, client.producer(window=6, batch_events=50, linger_ms=0.5) as producer:
            futures = []
            for i, e in enumerate(events):
                futures.append(await producer.send(e))
                if i == n // 4:
                    fakes.node(1).drop_next(3)  # answers lost after append
                elif i == n // 2:
                    fakes.set_leader(2)  # the leader moves; in-flight requests get NOT_LEADER
                    fakes.node(1).kill_connections()
                elif i == 3 * n // 4:
                    fakes.set_leader(3, hint=False)
                    fakes.node(2).stop()
                if i % 500 == 0:
                    await asyncio.sleep(0.005)  # let requests be in flight when the faults hit
            offsets = await asyncio.gather(*futures)
            return offsets, producer.producer_id

    offsets, producer_id = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    assert fakes.log.values() == events  # every event exactly once, in send order
    assert [seq for pid, seq in fakes.log.event_ids() if pid == producer_id] == list(range(n))
    assert offsets == sorted(set(offsets))


def test_producer_leaves_a_silent_leader_once_the_others_name_a_new_one(fakes: FakeCluster) -> None:
    async def main() -> float:
        async with AsyncClient(fakes.addresses, timeout_s=FAKE_TIMEOUT_S) as client:
            await client.produce(b"a")
            fakes.node(1).hang()
            fakes.set_leader(2, among=[2, 3])
            started = time.monotonic()
            await client.produce(b"b")
            return time.monotonic() - started

    took = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    assert PROBE_AFTER_S <= took < ATTEMPT_ANSWER_TIMEOUT_S, took
    assert fakes.log.values() == [b"a", b"b"]


def test_tls_and_token_as_the_blocking_client(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make the test CA")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "ca")
    cert, key = make_cert(pki, ca, "node")
    token = b"aio-" + os.urandom(8).hex().encode()
    token_file = pki / "client.token"
    token_file.write_bytes(token + b"\n")
    token_file.chmod(0o600)
    (tmp_path / "data").mkdir(mode=0o700)
    h = Harness(
        tmp_path / "data",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_ca_file=str(ca[0]),
        client_token_file=str(token_file),
    )

    async def main() -> tuple[list[int], list[tuple[int, bytes]]]:
        async with AsyncClient(h.addresses, tls_ca=str(ca[0]), token=token, timeout_s=20.0) as client:
            offsets = await client.produce_many([b"tls-%d" % i for i in range(100)])
            read = [(o, v) async for o, v in client.consume(offsets[0])]
        wrong = AsyncClient(h.addresses, tls_ca=str(ca[0]), token=b"wrong-token", timeout_s=5.0)
        with pytest.raises(Unauthorized):
            await wrong.metadata()
        async with wrong.producer() as producer:
            future = await producer.send(b"never")
            with pytest.raises(Unauthorized):
                await asyncio.wait_for(future, 30)
        return offsets, read

    try:
        h.start()
        offsets, read = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    finally:
        h.stop()
    assert read == [(o, b"tls-%d" % i) for i, o in enumerate(offsets)]
