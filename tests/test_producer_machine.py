"""The producer's sans-I/O state machine alone: no socket, no thread, time given by the test.

Every test drives `ProducerMachine` with events (submit, connected, bytes received, connection lost, answers
to its questions about the leader) at chosen times and checks its Steps: what it sends (decoded here, so
producer ids and sequences are checked on the wire), what it asks, when it wants to be polled again."""

from __future__ import annotations

import itertools

import pytest

from shmraft.client.errors import CommitTimeout, TooLarge
from shmraft.client.leader import PROBE_AFTER_S, PROBE_INTERVAL_S, REDIRECTS_BEFORE_BACKOFF, Ask, AskKind
from shmraft.client.machine import IDLE_WAKE_S, ProducerMachine, Request, Step
from shmraft.wire.client import ErrorCode, MessageReader, Produce, encode_error, encode_produced

ATTEMPT_S = 1.0
TIMEOUT_S = 10.0  # each request's deadline: submitted at + this


def machine(window: int = 4, attempt_s: float = ATTEMPT_S) -> ProducerMachine:
    ids = itertools.count(1000)
    return ProducerMachine(window=window, producer_id=7, attempt_timeout_s=attempt_s, new_producer_id=lambda: next(ids))


def submit(m: ProducerMachine, n: int, now: float = 0.0, size: int = 2) -> list[Request]:
    """`n` requests of `size` events each; the parts are just a label."""
    return [m.submit([b"e"] * size, f"r{i}", size, now, TIMEOUT_S) for i in range(n)]


def sent(step: Step) -> list[Produce]:
    """The PRODUCE requests a step writes, decoded."""
    reader = MessageReader()
    for data in step.send:
        reader.feed(data)
    out = []
    while (msg := reader.next_message()) is not None:
        assert isinstance(msg, Produce)
        out.append(msg)
    return out


def keys(step: Step) -> list[tuple[int, int]]:
    return [(p.producer_id, p.first_sequence) for p in sent(step)]


def connect(m: ProducerMachine, address: str, now: float) -> Step:
    """Poll until the machine asks for a connection, connect it to `address`, poll again (the sends)."""
    step = m.poll(now)
    assert step.connect and step.ask is None, "expected a connect"
    m.connected(address, now)
    return m.poll(now)


def answer(m: ProducerMachine, req: Request, now: float, first_offset: int = 64) -> None:
    m.receive(encode_produced(req.cid, list(range(first_offset, first_offset + len(req.events)))), now)


def test_window_full_holds_requests_back_until_an_answer_frees_a_slot() -> None:
    m = machine(window=2)
    reqs = submit(m, 5)
    assert m.window_full and m.in_window == 5
    step = connect(m, "a", 0.0)
    assert keys(step) == [(7, 0), (7, 2)]  # two in flight, three queued
    assert m.poll(0.01).send == []
    answer(m, reqs[1], 0.02)  # answers may come out of order
    step = m.poll(0.02)
    assert [(r, offsets) for r, offsets in step.outcomes] == [(reqs[1], [64, 65])]
    assert keys(step) == [(7, 4)]  # the freed slot takes the next request
    assert m.poll(0.03).send == []


def test_an_answer_resolves_its_request_by_correlation_id() -> None:
    m = machine()
    reqs = submit(m, 3)
    connect(m, "a", 0.0)
    for r, first in zip(reversed(reqs), (300, 200, 100), strict=True):
        answer(m, r, 0.1, first)
    step = m.poll(0.1)
    assert {r.parts: offsets for r, offsets in step.outcomes} == {"r0": [100, 101], "r1": [200, 201], "r2": [300, 301]}
    assert m.in_window == 0


def test_a_silent_node_past_the_attempt_timeout_is_left_and_the_retry_keeps_producer_id_and_sequences() -> None:
    m = machine()
    submit(m, 2)
    first = sent(connect(m, "a", 0.0))
    # probes found no other leader meanwhile; the attempt timeout ends the wait
    now = PROBE_AFTER_S
    while now < ATTEMPT_S:
        step = m.poll(now)
        assert step.ask == Ask(AskKind.PROBE, "a") and not step.close
        m.leader_answer(None, now)
        now += PROBE_INTERVAL_S
    step = m.poll(ATTEMPT_S)
    assert step.close and step.ask == Ask(AskKind.REDISCOVER, "a")
    m.leader_answer("b", ATTEMPT_S)
    again = sent(connect(m, "b", ATTEMPT_S))
    assert [(p.producer_id, p.first_sequence, len(p.lengths)) for p in again] == [
        (p.producer_id, p.first_sequence, len(p.lengths)) for p in first
    ]
    assert [p.correlation_id for p in again] != [p.correlation_id for p in first]  # new ids, same requests


def test_no_leader_found_after_a_silent_node_waits_the_backoff_before_connecting() -> None:
    m = machine()
    submit(m, 1)
    connect(m, "a", 0.0)
    step = m.poll(ATTEMPT_S)
    assert step.ask == Ask(AskKind.REDISCOVER, "a")
    m.leader_answer(None, ATTEMPT_S)  # an election is still going on
    step = m.poll(ATTEMPT_S)
    assert not step.connect and ATTEMPT_S < step.wake_at < ATTEMPT_S + 0.1
    assert m.poll(step.wake_at).connect


def test_probe_timing_first_after_an_election_timeout_of_silence_then_every_interval() -> None:
    m = machine()
    reqs = submit(m, 1)
    step = connect(m, "a", 0.0)
    assert step.wake_at == pytest.approx(PROBE_AFTER_S)
    assert m.poll(PROBE_AFTER_S - 0.001).ask is None
    step = m.poll(PROBE_AFTER_S)
    assert step.ask == Ask(AskKind.PROBE, "a")
    m.leader_answer(None, PROBE_AFTER_S)  # the others still name "a": keep waiting for it
    step = m.poll(PROBE_AFTER_S + 0.001)
    assert step.ask is None and step.wake_at == pytest.approx(PROBE_AFTER_S + PROBE_INTERVAL_S)
    # an answer resets the silence: the next probe is an election timeout after it
    heard = PROBE_AFTER_S + 0.01
    submit(m, 1, now=heard)
    answer(m, reqs[0], heard)
    step = m.poll(heard)
    assert keys(step) == [(7, 2)] and step.ask is None
    assert step.wake_at == pytest.approx(heard + PROBE_AFTER_S)
    # no probe at all while nothing is in flight
    m2 = machine()
    assert m2.poll(5.0).ask is None and m2.poll(5.0).wake_at == 5.0 + IDLE_WAKE_S


def test_a_probe_naming_another_leader_moves_the_requests_there_at_once() -> None:
    m = machine()
    submit(m, 2)
    first = keys(connect(m, "a", 0.0))
    assert m.poll(PROBE_AFTER_S).ask == Ask(AskKind.PROBE, "a")
    m.leader_answer("b", PROBE_AFTER_S)
    step = m.poll(PROBE_AFTER_S)
    assert step.close and step.connect  # no pause: the leader is known
    m.connected("b", PROBE_AFTER_S)
    assert keys(m.poll(PROBE_AFTER_S)) == first


def test_not_leader_redirects_to_the_named_leader_and_pauses_after_repeated_redirects() -> None:
    m = machine()
    reqs = submit(m, 2)
    first = keys(connect(m, "a", 0.0))
    address, now = "a", 0.1
    for redirect in range(1, REDIRECTS_BEFORE_BACKOFF + 2):
        leader = f"n{redirect}:1"
        m.receive(encode_error(reqs[0].cid, ErrorCode.NOT_LEADER, "not the leader", leader=leader), now)
        step = m.poll(now)
        assert step.close and step.ask == Ask(AskKind.FIND_LEADER, address, leader)
        m.leader_answer(leader, now)
        step = m.poll(now)
        if redirect <= REDIRECTS_BEFORE_BACKOFF:
            assert step.connect  # followed at once
        else:
            assert not step.connect and step.wake_at > now  # an election, probably: pause first
            now = step.wake_at
            assert m.poll(now).connect
        m.connected(leader, now)
        address = leader
        assert keys(m.poll(now)) == first  # every in-flight request resent, in order, same sequences
        now += 0.1


def test_connection_lost_mid_window_resends_the_unacked_in_order_after_a_pause() -> None:
    m = machine(window=4)
    reqs = submit(m, 4)
    first = keys(connect(m, "a", 0.0))
    answer(m, reqs[1], 0.1)
    m.connection_lost(0.2)
    step = m.poll(0.2)
    assert [r for r, _ in step.outcomes] == [reqs[1]]
    assert step.ask == Ask(AskKind.NODE_FAILED, "a")
    m.leader_answer(None, 0.2)
    step = m.poll(0.2)
    assert not step.connect and step.wake_at > 0.2  # the back-off
    step = m.poll(step.wake_at)
    assert step.connect
    m.connected("b", step.wake_at)
    again = m.poll(step.wake_at)
    assert keys(again) == [first[0], first[2], first[3]]


def test_bytes_that_break_the_protocol_drop_the_connection() -> None:
    m = machine()
    submit(m, 1)
    connect(m, "a", 0.0)
    m.receive(b"\xff" * 64, 0.1)
    step = m.poll(0.1)
    assert step.close and step.ask == Ask(AskKind.NODE_FAILED, "a") and m.address is None


def test_a_request_past_its_deadline_fails_and_the_rest_continue_under_a_fresh_producer_id() -> None:
    m = machine(window=2, attempt_s=60.0)  # only the deadline ends the wait here
    reqs = submit(m, 2)
    assert keys(connect(m, "a", 0.0)) == [(7, 0), (7, 2)]
    reqs.append(m.submit([b"e"], "r2", 1, 5.0, TIMEOUT_S))  # waits for room in the window
    step = m.poll(TIMEOUT_S)
    outcomes = {r.parts: result for r, result in step.outcomes}
    assert isinstance(outcomes["r0"], CommitTimeout) and "not confirmed" in str(outcomes["r0"])
    assert isinstance(outcomes["r1"], CommitTimeout) and "abandoned" in str(outcomes["r1"])  # sent: may be in
    assert "r2" not in outcomes and reqs[2].producer_id == 1000
    assert step.close and step.ask == Ask(AskKind.REDISCOVER, "a")
    assert m.producer_id == 1000
    m.leader_answer("a", TIMEOUT_S)
    assert keys(connect(m, "a", TIMEOUT_S)) == [(1000, 0)]  # never sent: resequenced, nothing waits on a gap


def test_a_refused_request_fails_alone_and_sent_requests_after_it_keep_going() -> None:
    m = machine()
    reqs = submit(m, 3)
    connect(m, "a", 0.0)
    m.receive(encode_error(reqs[1].cid, ErrorCode.TOO_LARGE, "too big"), 0.1)
    step = m.poll(0.1)
    assert [(r.parts, type(e)) for r, e in step.outcomes] == [("r1", TooLarge)]
    assert step.close  # a reset; the others are resent (the one after the gap under a fresh producer id)
    step = m.poll(step.wake_at)
    assert step.connect
    m.connected("a", step.wake_at)
    assert keys(m.poll(step.wake_at)) == [(7, 0), (1000, 0)]


def test_close_finishes_once_every_request_is_resolved() -> None:
    m = machine()
    reqs = submit(m, 1)
    connect(m, "a", 0.0)
    m.close()
    assert not m.poll(0.1).finished
    answer(m, reqs[0], 0.2)
    step = m.poll(0.2)
    assert step.finished and [r for r, _ in step.outcomes] == reqs


def test_fail_all_fails_queued_and_in_flight_requests_in_order() -> None:
    m = machine(window=1)
    reqs = submit(m, 3)
    connect(m, "a", 0.0)
    error = RuntimeError("bug")
    assert m.fail_all(error) == [(r, error) for r in reqs]
