"""Peer links over real TCP on 127.0.0.1: messages flow both ways, strangers are refused by name."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

import pytest

from shmraft.net.links import PeerLinks
from shmraft.wire.peer import Channel, Hello, PeerKind, PeerReader, encode_hello


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_until(sel: selectors.BaseSelector, links: list[PeerLinks], cond: Callable[[], bool], timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        for link in links:
            link.maintain()
        for key, mask in sel.select(0.01):
            key.data(mask)


@pytest.fixture
def pair():
    sel = selectors.DefaultSelector()
    p1, p2 = free_port(), free_port()
    got: dict[int, list] = {1: [], 2: []}
    gone: dict[int, list] = {1: [], 2: []}

    def make(me: int, port: int, other: int, other_port: int, cluster: str = "c") -> PeerLinks:
        return PeerLinks(sel, cluster_id=cluster, node_id=me, channel=Channel.CONSENSUS, bind=("127.0.0.1", port),
                         peers={other: ("127.0.0.1", other_port)},
                         on_message=lambda peer, body: got[me].append((peer, bytes(body))),
                         on_disconnect=lambda peer: gone[me].append(peer))

    a = make(1, p1, 2, p2)
    b = make(2, p2, 1, p1)
    try:
        yield sel, a, b, got, gone, p1
    finally:
        a.close()
        b.close()
        sel.close()


def test_messages_flow_both_ways_in_order(pair) -> None:
    sel, a, b, got, _, _ = pair
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    for i in range(100):
        assert a.send(2, b"a%d" % i)
        assert b.send(1, b"b%d" % i)
    run_until(sel, [a, b], lambda: len(got[1]) == 100 and len(got[2]) == 100)
    assert got[2] == [(1, b"a%d" % i) for i in range(100)]
    assert got[1] == [(2, b"b%d" % i) for i in range(100)]


def test_disconnect_is_reported_and_the_link_reconnects(pair) -> None:
    sel, a, b, got, gone, _ = pair
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    a.send(2, b"x")
    run_until(sel, [a, b], lambda: got[2] == [(1, b"x")])
    b._close(b._out[1])  # b drops its outgoing connection: a sees its inbound one close
    run_until(sel, [a, b], lambda: 2 in gone[1])
    run_until(sel, [a, b], lambda: b.connected(1))
    b.send(1, b"again")
    run_until(sel, [a, b], lambda: (2, b"again") in got[1])


@pytest.mark.parametrize("hello, reason", [
    (Hello("other-cluster", 2, Channel.CONSENSUS), "cluster id"),
    (Hello("c", 9, Channel.CONSENSUS), "node id"),
    (Hello("c", 2, Channel.DATA), "channel"),
])
def test_stranger_is_refused_with_a_reason(pair, hello: Hello, reason: str) -> None:
    sel, a, b, got, _, port = pair
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(encode_hello(hello) + b"\x00" * 8)
    reader = PeerReader()
    deadline = time.monotonic() + 5
    answer = None
    s.setblocking(False)
    while answer is None and time.monotonic() < deadline:
        for key, mask in sel.select(0.01):
            key.data(mask)
        try:
            data = s.recv(4096)
            if data:
                reader.feed(data)
                answer = reader.next()
        except BlockingIOError:
            pass
    s.close()
    assert answer is not None and answer[0] is PeerKind.REFUSED
    assert reason in bytes(answer[1]).decode()
    assert a.refusals == 1 and got[1] == []


def test_garbage_drops_only_that_connection(pair) -> None:
    sel, a, b, got, _, port = pair
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    b.send(1, b"still fine")
    run_until(sel, [a, b], lambda: got[1] == [(2, b"still fine")])
    s.close()
