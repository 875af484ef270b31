"""The client library against fake nodes: offsets, leader discovery, retries without duplicates, the pipelined
producer through failovers, consuming with and without follow, and typed errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fake_node import FakeCluster, FakeNode

from shmraft.client import (
    BufferFull,
    Client,
    CommitTimeout,
    IntegrityError,
    NodeNotServing,
    NoNodeReachable,
    OffsetOutOfRange,
    Producer,
    Record,
    TooLarge,
)
from shmraft.client.client import (
    ATTEMPT_ANSWER_TIMEOUT_S,
    PROBE_AFTER_S,
    REQUEST_BYTES_MAX,
    REQUEST_EVENT_BYTES_MAX,
    split_requests,
)
from shmraft.wire.client import ErrorCode

TIMEOUT_S = 3.0  # every call in these tests gives up after this; a hang fails fast


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    c = FakeCluster(3)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(cluster: FakeCluster) -> Iterator[Client]:
    cl = Client(cluster.addresses, timeout_s=TIMEOUT_S, connect_timeout_s=0.5)
    try:
        yield cl
    finally:
        cl.close()


def dead_address() -> str:
    """An address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def keys_of(cluster: FakeCluster, producer_id: int) -> list[int]:
    return [seq for pid, seq in cluster.log.event_ids() if pid == producer_id]


# --- produce -------------------------------------------------------------------------------------------


def test_produce_returns_committed_offsets(cluster: FakeCluster, client: Client) -> None:
    first = client.produce(b"a")
    more = client.produce_many([b"b", "c", bytearray(b"d")])
    assert first == 64 and more == [128, 129, 130]  # raft index * 64 + position
    assert cluster.log.values() == [b"a", b"b", b"c", b"d"]
    assert keys_of(cluster, client.producer_id) == [0, 1, 2, 3]
    assert client.produce_many([]) == []


def test_produce_many_splits_into_bounded_requests(cluster: FakeCluster, client: Client) -> None:
    events = [b"%d" % i for i in range(20_000)]
    offsets = client.produce_many(events)
    assert len(offsets) == 20_000 and offsets == sorted(set(offsets))
    assert cluster.log.values() == events
    assert cluster.node(1).produce_requests == 3  # 8192 + 8192 + 3616
    big = [b"x" * (600 * 1024)] * 3
    assert [(s, e) for s, e in split_requests(big)] == [(0, 1), (1, 2), (2, 3)]
    assert all(e - s <= 8192 for s, e in split_requests(events))
    assert list(split_requests([b"x" * (REQUEST_BYTES_MAX - 30)])) == [(0, 1)]
    with pytest.raises(TooLarge):
        client.produce(b"x" * (REQUEST_EVENT_BYTES_MAX + 1))


def test_not_leader_redirects_to_the_named_leader(cluster: FakeCluster) -> None:
    cluster.set_leader(3)
    with Client([cluster.node(1).address], timeout_s=TIMEOUT_S) as cl:  # knows only a follower
        assert cl.produce(b"e") == 64
        assert cl._leader == cluster.node(3).address
    assert cluster.node(1).produce_requests == 1 and cluster.node(3).produce_requests == 1


def test_not_leader_without_address_asks_metadata(cluster: FakeCluster, client: Client) -> None:
    cluster.set_leader(2, hint=False)
    assert client.produce(b"e") == 64
    assert cluster.log.values() == [b"e"]
    cluster.set_leader(3, hint=False)
    client.produce(b"f")
    assert cluster.log.values() == [b"e", b"f"]


@pytest.mark.parametrize("after_append", [True, False])
def test_retry_after_dropped_connection_does_not_duplicate(
    cluster: FakeCluster, client: Client, after_append: bool
) -> None:
    client.produce(b"first")
    cluster.node(1).drop_next(2, after_append=after_append)
    offsets = client.produce_many([b"x", b"y"])
    assert cluster.log.values() == [b"first", b"x", b"y"]  # each event once
    assert offsets == [128, 129] and cluster.node(1).produce_requests == 4
    assert keys_of(cluster, client.producer_id) == [0, 1, 2]


@pytest.mark.parametrize(
    "code", [ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.SHUTTING_DOWN, ErrorCode.OUT_OF_ORDER_SEQUENCE]
)
def test_retriable_errors_are_retried(cluster: FakeCluster, client: Client, code: ErrorCode) -> None:
    cluster.node(1).fail(code, count=3)
    assert client.produce(b"e") == 64
    assert cluster.node(1).produce_requests == 4
    cluster.node(1).fail(code, seconds=0.2)
    client.produce(b"f")
    assert cluster.log.values() == [b"e", b"f"]


def test_refused_request_raises_typed_error_and_frees_its_sequences(cluster: FakeCluster, client: Client) -> None:
    cluster.node(1).fail(ErrorCode.TOO_LARGE, count=1)
    with pytest.raises(TooLarge) as info:
        client.produce(b"big")
    assert info.value.code is ErrorCode.TOO_LARGE and not info.value.retriable
    client.produce(b"next")
    assert keys_of(cluster, client.producer_id) == [0]  # no gap left behind


def test_commit_timeout_then_retry_is_exactly_once(cluster: FakeCluster) -> None:
    with Client(cluster.addresses, timeout_s=0.4) as cl:
        cluster.node(1).drop_next(1000)  # appends, never answers
        with pytest.raises(CommitTimeout, match="may have been"):
            cl.produce(b"x")
        cluster.node(1).drop_next(0)
        offset = cl.produce(b"x")  # the same call again: same sequence, deduplicated
        assert cluster.log.values() == [b"x"] and offset == 64
        cluster.node(1).drop_next(1000)
        with pytest.raises(CommitTimeout):
            cl.produce(b"y")
        cluster.node(1).drop_next(0)
        cl.produce(b"z")  # another event: y (kept) goes first, with its sequence
        assert cluster.log.values() == [b"x", b"y", b"z"]
        assert keys_of(cluster, cl.producer_id) == [0, 1, 2]


def test_no_node_reachable_is_typed_and_frees_the_sequence() -> None:
    addresses = [dead_address(), dead_address()]
    with Client(addresses, timeout_s=0.3) as cl:
        started = time.monotonic()
        with pytest.raises(NoNodeReachable) as info:
            cl.produce(b"x")
        assert time.monotonic() - started < 2.0
        assert info.value.addresses[0] in addresses and cl.next_sequence == 0
        with pytest.raises(NoNodeReachable):
            cl.metadata()


def test_failover_to_another_node_when_the_leader_dies(cluster: FakeCluster, client: Client) -> None:
    client.produce(b"a")
    cluster.set_leader(2)
    cluster.node(1).stop()
    client.produce(b"b")
    assert cluster.log.values() == [b"a", b"b"]


def test_produce_fails_over_from_a_hung_leader(cluster: FakeCluster) -> None:
    # A stopped leader keeps its sockets open and its listener accepts: nothing fails, nothing answers.
    with Client(cluster.addresses, timeout_s=8) as cl:
        assert cl.produce(b"a") == 64
        cluster.node(1).hang()
        cluster.set_leader(2, among=[2, 3])  # the hung node still believes it leads
        started = time.monotonic()
        cl.produce(b"b")
        took = time.monotonic() - started
        # silent for an election timeout, the others were asked and named node 2: no full attempt timeout
        assert PROBE_AFTER_S <= took < ATTEMPT_ANSWER_TIMEOUT_S
        assert cl._leader == cluster.node(2).address
        started = time.monotonic()
        cl.produce_many([b"c", b"d"])  # goes straight to the new leader
        assert time.monotonic() - started < ATTEMPT_ANSWER_TIMEOUT_S  # no second wait on the hung node
        assert cluster.node(1).produce_requests == 1  # the hung one never read the retry's request
    assert cluster.log.values() == [b"a", b"b", b"c", b"d"]
    assert keys_of(cluster, cl.producer_id) == [0, 1, 2, 3]


def test_produce_hangs_then_leader_is_kept_when_the_others_still_name_it(cluster: FakeCluster) -> None:
    # The leader is slow, not gone: the others still name it, so the retry goes back to it (deduplicated).
    with Client(cluster.addresses, timeout_s=8) as cl:
        cl.produce(b"a")
        cluster.node(1).hang()
        threading.Timer(ATTEMPT_ANSWER_TIMEOUT_S + 0.3, cluster.node(1).resume).start()
        cl.produce(b"b")
    assert cluster.log.values() == [b"a", b"b"]
    assert keys_of(cluster, cl.producer_id) == [0, 1]
    assert cluster.node(2).produce_requests == cluster.node(3).produce_requests == 0  # probing did not move it


# --- metadata -------------------------------------------------------------------------------------------


def test_metadata_and_leader(cluster: FakeCluster, client: Client) -> None:
    cluster.set_leader(2)
    md = client.metadata()
    assert md.leader_id == 2 and [m.node_id for m in md.members] == [1, 2, 3]
    leader = client.leader()
    assert leader is not None and (leader.node_id, leader.port) == (2, cluster.node(2).port)
    cluster.set_leader(0)
    assert client.leader() is None


# --- pipelined producer ---------------------------------------------------------------------------------


def test_producer_pipelines_and_resolves_offsets(cluster: FakeCluster, client: Client) -> None:
    events = [b"e%d" % i for i in range(5000)]
    with client.producer(window=4, batch_events=100, linger_ms=1) as producer:
        futures = [producer.send(e) for e in events]
        producer.flush()
        offsets = [f.result(0) for f in futures]
    assert offsets == sorted(set(offsets))
    assert cluster.log.values() == events
    assert keys_of(cluster, producer.producer_id) == list(range(5000))
    assert cluster.node(1).produce_requests >= 50


def test_producer_failover_mid_pipeline_keeps_every_event_once_in_order(cluster: FakeCluster, client: Client) -> None:
    n = 6000
    events = [b"f%d" % i for i in range(n)]
    producer = Producer(client, window=6, batch_events=50, linger_ms=0.5)
    try:
        futures = []
        for i, e in enumerate(events):
            futures.append(producer.send(e))
            if i == n // 4:
                cluster.node(1).drop_next(3)  # answers lost after append
            elif i == n // 2:
                cluster.set_leader(2)  # the leader moves; in-flight requests get NOT_LEADER
                cluster.node(1).kill_connections()
            elif i == 3 * n // 4:
                cluster.set_leader(3, hint=False)
                cluster.node(2).stop()
            if i % 500 == 0:
                time.sleep(0.005)  # let requests be in flight when the faults hit
        producer.flush(timeout_s=TIMEOUT_S * 2)
        offsets = [f.result(0) for f in futures]
    finally:
        producer.close()
    assert cluster.log.values() == events  # every event exactly once, in send order
    assert keys_of(cluster, producer.producer_id) == list(range(n))
    assert offsets == sorted(set(offsets))


def test_producer_moves_once_the_others_name_a_new_leader(cluster: FakeCluster) -> None:
    # A silent leader is left as soon as the other nodes name another one, before the full attempt timeout.
    with Client(cluster.addresses, timeout_s=8) as cl, cl.producer(window=4, linger_ms=0) as producer:
        producer.send(b"a").result(TIMEOUT_S)
        cluster.node(1).hang()
        cluster.set_leader(2, among=[2, 3])
        started = time.monotonic()
        producer.send(b"b").result(TIMEOUT_S)
        took = time.monotonic() - started
    assert PROBE_AFTER_S <= took < ATTEMPT_ANSWER_TIMEOUT_S, took
    assert cluster.log.values() == [b"a", b"b"]


def test_producer_keeps_a_slow_leader_the_others_still_name(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probing goes on past PROBE_AFTER_S while the others name node 1; the attempt timeout is set far away so
    # only the probes could move the producer (and a slow machine's late timer cannot).
    monkeypatch.setattr("shmraft.client.producer.ATTEMPT_ANSWER_TIMEOUT_S", 30.0)
    with Client(cluster.addresses, timeout_s=8) as cl, cl.producer(window=4, linger_ms=0) as producer:
        producer.send(b"a").result(TIMEOUT_S)
        cluster.node(1).hang()
        threading.Timer(PROBE_AFTER_S + 1.0, cluster.node(1).resume).start()
        producer.send(b"b").result(TIMEOUT_S)
    assert cluster.log.values() == [b"a", b"b"]
    assert cluster.node(1).produce_requests == 2  # answered where it was sent: no move, no resend
    assert cluster.node(2).produce_requests == cluster.node(3).produce_requests == 0


def test_producer_fails_over_from_a_hung_leader_and_resends_in_order(cluster: FakeCluster) -> None:
    n = 3000
    events = [b"h%d" % i for i in range(n)]
    with Client(cluster.addresses, timeout_s=8) as cl:
        producer = cl.producer(window=4, batch_events=50, linger_ms=1)
        try:
            futures = []
            for i, e in enumerate(events):
                futures.append(producer.send(e))
                if i == n // 3:
                    time.sleep(0.01)  # requests in flight when the leader hangs
                    cluster.node(1).hang()
                    cluster.set_leader(2, among=[2, 3])
                    hung_at = time.monotonic()
            producer.flush(timeout_s=6)
            took = time.monotonic() - hung_at
            offsets = [f.result(0) for f in futures]
        finally:
            producer.close()
    assert took < ATTEMPT_ANSWER_TIMEOUT_S + 5
    assert cluster.log.values() == events  # every event once, in send order
    assert keys_of(cluster, producer.producer_id) == list(range(n))
    assert offsets == sorted(set(offsets))
    assert cluster.node(2).produce_requests > 0


def test_send_many_resolves_offsets_across_request_boundaries(cluster: FakeCluster, client: Client) -> None:
    done: list[object] = []
    with client.producer(window=3, batch_events=100, batch_bytes=2000, linger_ms=5) as producer:
        single = producer.send(b"first")
        many = producer.send_many([b"m%d" % i for i in range(250)])  # splits at 100 events
        many.add_done_callback(done.append)
        mixed = producer.send_many(["text", bytearray(b"ba"), memoryview(b"mv"), b"x" * 900, b"y" * 900])
        after = [producer.send(b"a%d" % i) for i in range(10)]
        empty = producer.send_many([])
        assert empty.done() and empty.result() == []
        with pytest.raises(TooLarge):
            producer.send_many([b"ok", b"x" * (REQUEST_EVENT_BYTES_MAX + 1)])
    offsets = [single.result(0), *many.result(0), *mixed.result(0), *(f.result(0) for f in after)]
    assert done == [many] and len(many) == 250 and many.exception(0) is None
    assert offsets == sorted(set(offsets)) and len(offsets) == 266
    assert cluster.log.values() == [
        b"first",
        *(b"m%d" % i for i in range(250)),
        b"text",
        b"ba",
        b"mv",
        b"x" * 900,
        b"y" * 900,
        *(b"a%d" % i for i in range(10)),
    ]
    assert keys_of(cluster, producer.producer_id) == list(range(266))


def test_send_many_larger_than_the_buffer_and_callbacks_on_done_futures(cluster: FakeCluster, client: Client) -> None:
    with client.producer(buffer_events=100) as producer:
        big = producer.send_many([b"%d" % i for i in range(500)])  # admitted whole into an empty buffer
        assert len(big.result(TIMEOUT_S)) == 500
        f = producer.send(b"late")
        assert f.result(TIMEOUT_S) > big.result()[-1]
        seen: list[object] = []
        f.add_done_callback(seen.append)  # already resolved: runs at once
        assert seen == [f] and f.done() and not f.cancel()


def test_futures_time_out_while_pending(cluster: FakeCluster, client: Client) -> None:
    with client.producer(linger_ms=0) as producer:
        cluster.node(1).hang()
        f = producer.send(b"x")
        g = producer.send_many([b"y", b"z"])
        with pytest.raises(TimeoutError):
            f.result(0.05)
        with pytest.raises(TimeoutError):
            g.exception(0.01)
        assert not f.done() and not g.done()
        cluster.node(1).resume()
        assert f.result(TIMEOUT_S) < g.result(TIMEOUT_S)[0]


def test_producer_linger_lets_the_open_batch_grow_while_the_window_is_full(
    cluster: FakeCluster, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hang below must not be taken for a hung leader on a slow machine, or a resend adds a request.
    monkeypatch.setattr("shmraft.client.producer.ATTEMPT_ANSWER_TIMEOUT_S", 30.0)
    leader = cluster.node(1)
    with client.producer(window=1, linger_ms=0) as producer:
        leader.hang()
        first = producer.send(b"0")  # the one request in flight stays unanswered: the window is full
        futures = [producer.send(b"%d" % i) for i in range(1, 100) if not time.sleep(0.001)]
        time.sleep(0.05)
        leader.resume()  # well before the node is suspected (ATTEMPT_ANSWER_TIMEOUT_S)
        producer.flush(TIMEOUT_S)
    assert first.result(0) < futures[0].result(0)
    assert cluster.log.values() == [b"%d" % i for i in range(100)]
    assert leader.produce_requests == 2  # the 99 events paced in meanwhile went out as one request


def test_producer_matches_answers_out_of_request_order(cluster: FakeCluster, client: Client) -> None:
    cluster.node(1).reverse_answers = True
    events = [b"r%d" % i for i in range(3000)]
    with client.producer(window=16, batch_events=10, linger_ms=0) as producer:
        futures = [producer.send(e) for e in events]
    offsets = [f.result(0) for f in futures]
    assert offsets == sorted(set(offsets)) and cluster.log.values() == events
    assert cluster.node(1).reversed_batches > 0


def test_producer_resends_out_of_order_rejections(cluster: FakeCluster, client: Client) -> None:
    cluster.node(1).drop_next(1, after_append=False)  # request 1 lost before append; 2.. see a gap
    with client.producer(window=8, batch_events=10, linger_ms=5) as producer:
        futures = [producer.send(b"%d" % i) for i in range(200)]
    assert [f.result(0) for f in futures] == sorted(f.result(0) for f in futures)
    assert cluster.log.values() == [b"%d" % i for i in range(200)]


def test_producer_gives_up_when_nothing_answers() -> None:
    # The queued requests' deadline (10 s) is far beyond the wait for room (0.3 s), so that even a test process
    # starved of CPU for seconds on a busy machine still finds the buffer full when it asks for room.
    with Client([dead_address()], timeout_s=10) as cl:
        producer = cl.producer(buffer_events=3, linger_ms=0)
        futures = [producer.send(b"x"), producer.send(b"y"), producer.send(b"z")]
        cl.timeout_s = 0.3
        with pytest.raises(BufferFull):
            producer.send(b"w")  # blocks up to the timeout: the buffer stays full meanwhile
        producer.close(timeout_s=30)
        for f in futures:
            assert isinstance(f.exception(0), CommitTimeout)
        assert not producer._thread.is_alive()


def test_producer_callbacks_and_str_events(cluster: FakeCluster, client: Client) -> None:
    got: list[int] = []
    done = threading.Event()
    with client.producer() as producer:
        producer.send("héllo", callback=lambda f: (got.append(f.result()), done.set()))
    assert done.wait(1) and got == [64]
    assert cluster.log.values() == ["héllo".encode()]


# --- consume --------------------------------------------------------------------------------------------


def test_consume_without_follow_stops_at_the_commit_offset(cluster: FakeCluster, client: Client) -> None:
    assert list(client.consume(0)) == []
    offsets = client.produce_many([b"%d" % i for i in range(100)])
    records = list(client.consume(0, max_bytes=64))  # many small fetches
    assert records == [Record(o, b"%d" % i) for i, o in enumerate(offsets)]
    assert [v for _, v in client.consume(offsets[50])] == [b"%d" % i for i in range(50, 100)]
    assert list(client.consume(offsets[-1] + 1)) == []


@pytest.mark.parametrize("verify", [True, False])
def test_consume_reads_the_same_records_from_checked_frames_or_plain_fetches(
    cluster: FakeCluster, client: Client, verify: bool
) -> None:
    offsets = client.produce_many([b"%d" % i for i in range(150)])  # more than one 64-offset entry
    want = [Record(o, b"%d" % i) for i, o in enumerate(offsets)]
    assert list(client.consume(0, max_bytes=50, verify=verify)) == want
    assert list(client.consume(offsets[70], verify=verify)) == want[70:]  # from inside an entry: first_skip


def test_consume_raises_integrity_error_naming_the_corrupted_frame_after_the_good_ones(
    cluster: FakeCluster, client: Client
) -> None:
    offsets = client.produce_many([b"%d" % i for i in range(150)])
    bad_index = offsets[100] // 64
    for n in cluster.nodes:
        n.corrupt_frame_index = bad_index
    got = []
    with pytest.raises(IntegrityError) as info:
        got.extend(client.consume(0))
    assert info.value.offset == bad_index * 64 and info.value.index == bad_index
    assert [r.offset for r in got] == [o for o in offsets if o < bad_index * 64]
    assert [v for _, v in client.consume(0, verify=False)][-1] == b"149"  # the plain FETCH cannot tell


def test_consume_follow_sees_events_produced_meanwhile(cluster: FakeCluster, client: Client) -> None:
    def produce_later() -> None:
        with Client(cluster.addresses, timeout_s=TIMEOUT_S) as other:
            for i in range(20):
                other.produce(b"%d" % i)
                time.sleep(0.005)

    thread = threading.Thread(target=produce_later)
    thread.start()
    got = []
    records = client.consume(0, follow=True, poll_wait_ms=100)
    try:
        for _, value in records:
            got.append(value)
            if len(got) == 20:
                break
    finally:
        records.close()  # type: ignore[attr-defined]
        thread.join(TIMEOUT_S)
    assert got == [b"%d" % i for i in range(20)]


def test_consume_fails_over_to_another_node(cluster: FakeCluster, client: Client) -> None:
    client.produce_many([b"a", b"b"])
    client.close()
    cluster.node(1).stop()
    assert [v for _, v in client.consume(0)] == [b"a", b"b"]


def test_consume_fails_over_from_a_hung_node(cluster: FakeCluster) -> None:
    # A stopped node keeps its sockets open: nothing fails, nothing answers; the fetch goes elsewhere after
    # FETCH_ATTEMPT_TIMEOUT_S instead of holding the consumer for the whole timeout_s.
    with Client(cluster.addresses, timeout_s=60) as cl:
        cl.produce_many([b"a", b"b"])
        cluster.node(1).hang()
        started = time.monotonic()
        assert [v for _, v in cl.consume(0)] == [b"a", b"b"]
        assert time.monotonic() - started < 30  # not the 60 s timeout_s
    cluster.node(1).resume()


def test_consume_offset_out_of_range(cluster: FakeCluster, client: Client) -> None:
    for node in cluster.nodes:
        node.min_offset = 1000
    with pytest.raises(OffsetOutOfRange) as info:
        list(client.consume(0, reset="error"))
    assert info.value.code is ErrorCode.OFFSET_OUT_OF_RANGE
    assert info.value.earliest_offset == 1000


def test_consume_below_the_log_start_resets_to_earliest_by_default_or_latest(
    cluster: FakeCluster, client: Client
) -> None:
    offsets = client.produce_many([f"e{i}".encode() for i in range(40)])
    for node in cluster.nodes:
        node.min_offset = offsets[20]
    assert [r.offset for r in client.consume(0)] == offsets[20:]
    assert list(client.consume(0, reset="latest")) == []
    with pytest.raises(ValueError, match="reset"):
        client.consume(0, reset="nearest")


def test_single_fake_node_and_default_addresses() -> None:
    node = FakeNode()
    try:
        with Client(node.address, timeout_s=TIMEOUT_S) as cl:  # one "host:port" string is accepted
            assert cl.produce(b"solo") == 64
        assert Client().addresses == ["127.0.0.1:7101", "127.0.0.1:7201", "127.0.0.1:7301"]
    finally:
        node.stop()


# --- a client bound to one node (only_node) ---------------------------------------------------------------


def test_only_node_takes_exactly_one_address(cluster: FakeCluster) -> None:
    with pytest.raises(ValueError, match="exactly one address"):
        Client(cluster.addresses, only_node=True)


def test_only_node_learns_no_member_and_reads_that_node_even_after_metadata(cluster: FakeCluster) -> None:
    with Client(cluster.addresses, timeout_s=TIMEOUT_S) as cl:
        offsets = cl.produce_many([b"a", b"b"])
    cluster.node(2).min_offset = offsets[1]  # node 2's log starts later (retention): its answers are its own
    follower = cluster.node(2).address
    with Client([follower], timeout_s=TIMEOUT_S) as cl:
        cl.metadata()  # learns the members and the leader (node 1), which consume() then prefers
        assert [v for _, v in cl.consume(0)] == [b"a", b"b"]
    with Client([follower], timeout_s=TIMEOUT_S, only_node=True) as cl:
        answer = cl.metadata()
        assert len(answer.members) == 3 and cl.addresses == [follower]
        assert [v for _, v in cl.consume(0)] == [b"b"]
        with pytest.raises(OffsetOutOfRange, match=follower):
            list(cl.consume(0, reset="error"))


def test_only_node_consume_from_a_hung_node_raises_naming_it_instead_of_moving(cluster: FakeCluster) -> None:
    # An ordinary client reads the same events from another node (test_consume_fails_over_from_a_hung_node);
    # one bound to the node must not, even though METADATA told it the other members.
    address = cluster.node(1).address
    with Client([address], timeout_s=TIMEOUT_S, only_node=True) as cl:
        cl.produce_many([b"a", b"b"])
        cl.metadata()
        cluster.node(1).hang()
        try:
            with pytest.raises(NodeNotServing, match=f"node {address} ") as info:
                list(cl.consume(0))
        finally:
            cluster.node(1).resume()
    assert info.value.address == address and "no FETCH answered" in str(info.value)


def test_only_node_consume_from_a_stopped_node_raises_naming_it(cluster: FakeCluster) -> None:
    address = cluster.node(3).address
    cluster.node(3).stop()
    with Client([address], timeout_s=1.0, connect_timeout_s=0.2, only_node=True) as cl:
        with pytest.raises(NodeNotServing, match=f"node {address} "):
            list(cl.consume(0))
        with pytest.raises(NodeNotServing, match=f"node {address} "):
            cl.metadata()


def test_only_node_produce_to_a_follower_raises_not_leader_without_moving(cluster: FakeCluster) -> None:
    follower = cluster.node(2).address
    with (
        Client([follower], timeout_s=TIMEOUT_S, only_node=True) as cl,
        pytest.raises(NodeNotServing, match="NOT_LEADER") as info,
    ):
        cl.produce(b"x")
    assert info.value.code is ErrorCode.NOT_LEADER and info.value.address == follower
    assert cluster.log.values() == []


def test_log_start_at_reads_where_one_node_log_starts(cluster: FakeCluster, client: Client) -> None:
    """The testing helper loadgen's verify uses for a node that serves no event (shmraft.testing.cluster)."""
    from shmraft.testing.cluster import log_start_at

    offsets = client.produce_many([b"a", b"b", b"c"])
    assert log_start_at(cluster.node(2).address, TIMEOUT_S) == 0  # nothing deleted
    cluster.node(2).min_offset = offsets[2]
    assert log_start_at(cluster.node(2).address, TIMEOUT_S) == offsets[2]
    cluster.node(2).min_offset = offsets[2] + 64  # past every event: an empty log that starts there
    assert log_start_at(cluster.node(2).address, TIMEOUT_S) == offsets[2] + 64
    assert log_start_at(cluster.node(1).address, TIMEOUT_S) == 0
