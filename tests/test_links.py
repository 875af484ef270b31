"""Peer links over real TCP on 127.0.0.1: messages flow both ways once authenticated; strangers, wrong secrets,
replayed proofs and garbage are refused by name on both sides."""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable

import pytest

from shmraft.net.auth import ROLE_ACCEPTOR, ROLE_CONNECTOR, Secret, handshake_mac
from shmraft.net.links import PeerLinks, PeerSecurity
from shmraft.raft.messages import Channel
from shmraft.supervisor.cluster import free_port
from shmraft.wire.peer import (
    Hello,
    PeerKind,
    PeerReader,
    decode_challenge,
    decode_refused,
    encode_hello,
    encode_peer,
    encode_proof,
)

SECRET = Secret(b"s" * 32, "test")
NONCE = bytes(range(32))


def run_until(
    sel: selectors.BaseSelector,
    links: list[PeerLinks],
    cond: Callable[[], bool],
    timeout_s: float = 5.0,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        for link in links:
            link.maintain()
        for key, mask in sel.select(0.01):
            key.data(mask)


class Raw:
    """A hand-driven peer connection: send frames, read answers while the links' loop runs."""

    def __init__(self, sel: selectors.BaseSelector, links: list[PeerLinks], port: int) -> None:
        self.sel, self.links = sel, links
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.reader = PeerReader()
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def _poll(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
        self.reader.feed(data)

    def answer(self, timeout_s: float = 5.0) -> tuple[PeerKind, memoryview]:
        got: list = []

        def ready() -> bool:
            self._poll()
            if not got:
                item = self.reader.next()
                if item is not None:
                    got.append(item)
            return bool(got) or self.eof

        run_until(self.sel, self.links, ready, timeout_s, "an answer")
        assert got, "connection closed without an answer"
        return got[0]

    def closed(self, timeout_s: float = 5.0) -> None:
        def gone() -> bool:
            self._poll()
            return self.eof

        run_until(self.sel, self.links, gone, timeout_s, "the connection to close")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pair():
    sel = selectors.DefaultSelector()
    p1, p2 = free_port(), free_port()
    got: dict[int, list] = {1: [], 2: []}
    gone: dict[int, list] = {1: [], 2: []}
    made: list[PeerLinks] = []

    def make(
        me: int, port: int, other: int, other_port: int, cluster: str = "c", secret: Secret = SECRET, **kw
    ) -> PeerLinks:
        link = PeerLinks(
            sel,
            cluster_id=cluster,
            node_id=me,
            channel=Channel.CONSENSUS,
            bind=("127.0.0.1", port),
            peers={other: ("127.0.0.1", other_port)},
            on_message=lambda peer, body: got.setdefault(me, []).append((peer, bytes(body))),
            on_disconnect=lambda peer: gone.setdefault(me, []).append(peer),
            security=PeerSecurity(secret),
            **kw,
        )
        made.append(link)
        return link

    a = make(1, p1, 2, p2)
    b = make(2, p2, 1, p1)
    try:
        yield sel, a, b, got, gone, p1, make
    finally:
        for link in made:
            link.close()
        sel.close()


def test_messages_flow_both_ways_in_order(pair) -> None:
    sel, a, b, got, _, _, _ = pair
    for i in range(100):  # queued before the handshake: held until it is done, then sent in order
        assert a.send(2, b"a%d" % i)
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    for i in range(100, 200):
        assert a.send(2, b"a%d" % i)
        assert b.send(1, b"b%d" % i)
    run_until(sel, [a, b], lambda: len(got[1]) == 100 and len(got[2]) == 200)
    assert got[2] == [(1, b"a%d" % i) for i in range(200)]
    assert got[1] == [(2, b"b%d" % i) for i in range(100, 200)]
    assert a.refusals == b.refusals == 0
    assert a.authenticated_inbound() == [2] and b.authenticated_inbound() == [1]


def test_disconnect_is_reported_and_the_link_reconnects(pair) -> None:
    sel, a, b, got, gone, _, _ = pair
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    a.send(2, b"x")
    run_until(sel, [a, b], lambda: got[2] == [(1, b"x")])
    b._close(b._out[1])  # b drops its outgoing connection: a sees its inbound one close
    run_until(sel, [a, b], lambda: 2 in gone[1])
    run_until(sel, [a, b], lambda: b.connected(1))
    b.send(1, b"again")
    run_until(sel, [a, b], lambda: (2, b"again") in got[1])


def test_a_peer_that_comes_back_is_connected_at_once_not_after_the_back_off(pair) -> None:
    """While a peer was down the back-off grew; once the peer proves itself on an inbound connection (it restarted),
    our outbound connection to it is made at once (a restarted follower hears its leader sooner)."""
    sel, a, b, _, _, _, _ = pair
    a._retry_at_ms[2] = float("inf")  # a back-off that would never end by itself
    a._backoff_ms[2] = 1000.0
    run_until(sel, [a, b], lambda: b.connected(1), what="b's connection to a")
    run_until(sel, [a, b], lambda: a.connected(2), what="a's connection to b, once b came in")
    assert 2 not in a._backoff_ms


@pytest.mark.parametrize(
    "hello, reason",
    [
        (Hello("other_cluster", 2, 1, Channel.CONSENSUS, NONCE), "cluster id: expected 'c', got 'other_cluster'"),
        (Hello("c", 9, 1, Channel.CONSENSUS, NONCE), "node id: expected one of [2], got 9"),
        (Hello("c", 2, 3, Channel.CONSENSUS, NONCE), "meant for node 3"),
        (Hello("c", 2, 1, Channel.DATA, NONCE), "channel: expected CONSENSUS, got DATA"),
    ],
)
def test_stranger_is_refused_with_a_reason(pair, hello: Hello, reason: str, caplog) -> None:
    sel, a, b, got, _, port, _ = pair
    caplog.set_level(logging.INFO, "shmraft.net")
    raw = Raw(sel, [a, b], port)
    raw.send(encode_hello(hello))
    kind, body = raw.answer()
    raw.closed()
    raw.close()
    assert kind is PeerKind.REFUSED and reason in decode_refused(body)
    assert a.refusals == 1 and got[1] == []
    assert "refused connection from 127.0.0.1:" in caplog.text and reason in caplog.text


def test_wrong_secret_is_refused_on_both_sides_and_never_delivers(pair, caplog) -> None:
    sel, a, _b, got, _, p1, make = pair
    caplog.set_level(logging.INFO, "shmraft.net")
    # a second "node 2" with another secret, on its own port, that node 1 does not dial
    intruder = make(2, free_port(), 1, p1, secret=Secret(b"x" * 32, "wrong"))
    intruder.send(1, b"let me in")
    run_until(
        sel,
        [a, intruder],
        lambda: intruder.refusals >= 1 and "refused us" in caplog.text,
        what="the intruder's refusal of node 1's challenge, and node 1 logging it",
    )
    assert not intruder.connected(1)
    assert all(body != b"let me in" for _, body in got[1])
    text = caplog.text
    assert "authentication failed: node 1's challenge does not match the cluster secret of node 2" in text
    assert "refused us: authentication failed" in text  # node 1 logged the reason it was given
    assert (b"x" * 32).decode() not in text and SECRET.reveal().decode() not in text


def test_wrong_secret_proof_is_refused_by_the_acceptor(pair, caplog) -> None:
    sel, a, b, got, _, port, _ = pair
    caplog.set_level(logging.INFO, "shmraft.net")
    raw = Raw(sel, [a, b], port)
    raw.send(encode_hello(Hello("c", 2, 1, Channel.CONSENSUS, NONCE)))
    kind, body = raw.answer()
    assert kind is PeerKind.CHALLENGE
    ch = decode_challenge(body)
    assert ch.node_id == 1 and ch.mac == handshake_mac(SECRET, ROLE_ACCEPTOR, "c", 2, 1, 2, NONCE, ch.nonce)
    bad = handshake_mac(Secret(b"y" * 32, "wrong"), ROLE_CONNECTOR, "c", 2, 1, 2, NONCE, ch.nonce)
    raw.send(encode_proof(bad) + encode_peer(PeerKind.RAFT, b"sneaky"))
    kind, body = raw.answer()
    raw.close()
    assert kind is PeerKind.REFUSED and "authentication failed" in decode_refused(body)
    assert a.refusals == 1 and all(m != b"sneaky" for _, m in got[1])


def test_raft_before_authentication_is_refused(pair) -> None:
    sel, a, b, got, _, port, _ = pair
    raw = Raw(sel, [a, b], port)
    raw.send(encode_hello(Hello("c", 2, 1, Channel.CONSENSUS, NONCE)) + encode_peer(PeerKind.RAFT, b"early"))
    kinds = [raw.answer()[0], raw.answer()[0]]
    raw.close()
    assert kinds == [PeerKind.CHALLENGE, PeerKind.REFUSED]
    assert got[1] == [] or all(m != b"early" for _, m in got[1])


def test_a_recorded_proof_is_worthless_on_another_connection(pair) -> None:
    sel, a, b, got, _, port, _ = pair
    hello = encode_hello(Hello("c", 2, 1, Channel.CONSENSUS, NONCE))
    first = Raw(sel, [a, b], port)
    first.send(hello)
    ch = decode_challenge(first.answer()[1])
    proof = encode_proof(handshake_mac(SECRET, ROLE_CONNECTOR, "c", 2, 1, 2, NONCE, ch.nonce))
    first.send(proof)
    assert first.answer()[0] is PeerKind.WELCOME  # the genuine proof is accepted
    first.close()
    second = Raw(sel, [a, b], port)  # an eavesdropper replays the same HELLO and PROOF
    second.send(hello)
    ch2 = decode_challenge(second.answer()[1])
    assert ch2.nonce != ch.nonce
    second.send(proof)
    kind, body = second.answer()
    second.close()
    assert kind is PeerKind.REFUSED and "authentication failed" in decode_refused(body)


def test_garbage_is_refused_and_drops_only_that_connection(pair, caplog) -> None:
    sel, a, b, got, _, port, _ = pair
    caplog.set_level(logging.INFO, "shmraft.net")
    raw = Raw(sel, [a, b], port)
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    kind, body = raw.answer()
    assert kind is PeerKind.REFUSED and "peer magic" in decode_refused(body)
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    b.send(1, b"still fine")
    run_until(sel, [a, b], lambda: got[1] == [(2, b"still fine")])
    raw.close()
    assert "refused connection from 127.0.0.1" in caplog.text and "peer magic" in caplog.text


def test_silent_connections_time_out(pair) -> None:
    sel, _a, _b, _, _, _, make = pair
    port = free_port()
    c = make(3, port, 1, free_port(), handshake_timeout_ms=300)
    silent = Raw(sel, [c], port)
    run_until(sel, [c], lambda: len(c._inbound) == 1, what="the connection accepted")
    silent.closed(timeout_s=5.0)  # dropped after handshake_timeout_ms without a HELLO
    assert len(c._inbound) == 0
    silent.close()


def test_inbound_connections_are_bounded_and_strangers_cannot_lock_members_out(pair) -> None:
    sel, a, _b, got, _, p1, make = pair
    a.inbound_max = 2
    silent = [Raw(sel, [a], p1) for _ in range(3)]  # the third evicts the oldest unauthenticated one
    run_until(sel, [a], lambda: silent[0]._poll() is None and silent[0].eof, what="the oldest stranger evicted")
    assert len(a._inbound) == 2
    member = make(2, free_port(), 1, p1)  # a member still gets in: it evicts another stranger
    member.send(1, b"member")
    run_until(sel, [a, member], lambda: (2, b"member") in got[1], what="the member's message")
    assert len(a._inbound) <= 2
    for s in silent:
        s.close()


def test_members_added_and_removed_at_run_time(pair) -> None:
    """set_peers: a member added at run time is connected and may connect to us; a removed one's connections
    close both ways without a disconnect notice, its sends are refused, and its new HELLOs are refused."""
    sel, a, b, got, gone, p1, make = pair
    run_until(sel, [a, b], lambda: a.connected(2) and b.connected(1))
    p3 = free_port()
    c = make(3, p3, 1, p1)
    a.set_peers({2: ("127.0.0.1", b.listener.getsockname()[1]), 3: ("127.0.0.1", p3)})
    assert a.send(3, b"hello 3")
    run_until(sel, [a, b, c], lambda: (1, b"hello 3") in got.get(3, []) and c.connected(1), what="node 3 joined")
    assert c.send(1, b"from 3")
    run_until(sel, [a, b, c], lambda: (3, b"from 3") in got[1])
    a.set_peers({3: ("127.0.0.1", p3)})  # node 2 removed
    run_until(sel, [a, b, c], lambda: not a.connected(2) and 2 not in a.authenticated_inbound(), what="2 dropped")
    assert not a.send(2, b"to a removed node")
    assert 2 not in gone[1], "a removed member is not reported as a failed one"
    refusals = a.refusals
    run_until(sel, [a, b, c], lambda: a.refusals > refusals, timeout_s=10.0, what="node 2's reconnect refused")
    assert not b.connected(1)
    assert c.connected(1), "the other member is unaffected"


def test_a_non_member_with_the_secret_is_admitted_and_answered_on_its_own_connection(pair) -> None:
    """admit_non_members (the raft and sender workers): a node that is no member (removed while it was down)
    but proves the cluster secret gets in, its messages are delivered, and an answer to it goes back on its
    own connection; without the secret it is refused; a member-only link still refuses it."""
    sel, a, b, got, _, p1, make = pair
    a.close()
    keen = make(1, free_port(), 2, b.listener.getsockname()[1], admit_non_members=True)
    removed = make(5, free_port(), 1, keen.listener.getsockname()[1])  # thinks it still is a member
    assert removed.send(1, b"pre-vote")
    run_until(sel, [keen, b, removed], lambda: (5, b"pre-vote") in got[1], what="the non-member's message")
    assert 5 not in keen.peers and 5 in keen.authenticated_inbound()
    assert keen.send(5, b"you were removed")  # no outbound link to it: its own connection carries the answer
    run_until(sel, [keen, b, removed], lambda: (1, b"you were removed") in got.get(5, []), what="the answer")
    stranger = make(6, free_port(), 1, keen.listener.getsockname()[1], secret=Secret(b"w" * 32, "wrong"))
    stranger.send(1, b"let me in")
    run_until(sel, [keen, stranger], lambda: stranger.refusals > 0, timeout_s=10.0, what="the wrong secret found")
    assert (6, b"let me in") not in got[1] and 6 not in keen.authenticated_inbound()
    assert not b.send(5, b"member-only link"), "a link without admit_non_members has no way to a non-member"
