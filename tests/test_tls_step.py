"""The one TLS handshake step of the client port and the peer links (`tls.handshake_step`), on real sockets with
a throw-away CA: it waits, completes, and on failure says why and whether TLS refused or the connection broke."""

from __future__ import annotations

import selectors
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_security import make_ca, make_cert

from shmraft.net import tls

DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make the test CA")
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    other_ca = make_ca(d, "other")
    cert, key = make_cert(d, ca, "node")
    return {"ca": ca[0], "other_ca": other_ca[0], "cert": cert, "key": key}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1, both non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for s in (client, server):
        s.setblocking(False)
    yield client, server
    client.close()
    server.close()


def drive(*socks: ssl.SSLSocket) -> list[tls.HandshakeStep]:
    """Step every side until each is done or failed (within DEADLINE_S); the last step of each."""
    steps = [tls.handshake_step(s) for s in socks]
    deadline = time.monotonic() + DEADLINE_S
    while any(st.want for st in steps):
        assert time.monotonic() < deadline, f"handshake stuck: {steps}"
        for i, s in enumerate(socks):
            if steps[i].want:
                assert steps[i].want in (selectors.EVENT_READ, selectors.EVENT_WRITE)
                steps[i] = tls.handshake_step(s)
        time.sleep(0.001)
    return steps


def test_handshake_steps_until_done_on_both_sides(pki, pair) -> None:
    client, server = pair
    c = tls.wrap(tls.client_context(pki["ca"]), client, server_side=False, server_hostname="127.0.0.1")
    s = tls.wrap(tls.server_context(pki["cert"], pki["key"]), server, server_side=True)
    assert all(st.done and not st.failure for st in drive(c, s))


def test_untrusted_certificate_is_a_refusal_saying_why(pki, pair) -> None:
    client, server = pair
    c = tls.wrap(tls.client_context(pki["other_ca"]), client, server_side=False, server_hostname="127.0.0.1")
    s = tls.wrap(tls.server_context(pki["cert"], pki["key"]), server, server_side=True)
    client_step, _ = drive(c, s)
    assert client_step.refused and not client_step.done
    assert client_step.failure.startswith("certificate not accepted")


def test_plain_bytes_instead_of_tls_are_a_refusal(pki, pair) -> None:
    client, server = pair
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s = tls.wrap(tls.server_context(pki["cert"], pki["key"]), server, server_side=True)
    [step] = drive(s)
    assert step.refused and step.failure.startswith("TLS error")


def test_connection_closed_mid_handshake_is_a_failure_but_not_a_refusal(pki, pair) -> None:
    client, server = pair
    client.close()
    s = tls.wrap(tls.server_context(pki["cert"], pki["key"]), server, server_side=True)
    [step] = drive(s)
    assert step.failure and not step.refused and not step.done
