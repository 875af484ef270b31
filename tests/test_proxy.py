"""The fault proxy over real sockets on 127.0.0.1: clean forwarding, delay, slow link, blackhole, reset, loss."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shmraft.faults.proxy import FaultProxy, LinkFaults


class EchoServer:
    """Echoes every byte back, one thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def setup() -> Iterator[tuple[FaultProxy, int]]:
    echo = EchoServer()
    proxy = FaultProxy(seed=1).start()
    port = proxy.add_link("a", ("127.0.0.1", 0), echo.address)
    try:
        yield proxy, port
    finally:
        proxy.close()
        echo.close()


def round_trip_s(sock: socket.socket, payload: bytes) -> float:
    t = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(got)} of {len(payload)} bytes"
        got += chunk
    assert got == payload
    return time.monotonic() - t


def test_clean_link_forwards_both_ways(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        payload = bytes(range(256)) * 4000  # 1 MB: more than one buffer's worth, in order
        assert round_trip_s(s, payload) < 5
    # The proxy's thread counts a send after it returns, so the echo may reach us first: poll the count.
    deadline = time.monotonic() + 5
    while proxy.stats("a").bytes_forwarded < 2 * len(payload) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats("a").bytes_forwarded == 2 * len(payload)


def test_delay_is_added_each_way(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        base = round_trip_s(s, b"x")
        proxy.set_faults("a", LinkFaults(delay_ms=150))
        delayed = min(round_trip_s(s, b"y") for _ in range(3))
        proxy.clear()
        after = min(round_trip_s(s, b"z") for _ in range(3))
    assert 0.28 <= delayed <= 1.5, f"round trip with 150 ms each way: {delayed:.3f} s (base {base:.4f} s)"
    # relative, so a loaded machine slows both alike; a delay left in place would make them about equal
    assert after < delayed / 2, f"round trip after clearing the delay: {after:.3f} s (delayed {delayed:.3f} s)"


def test_bandwidth_limit_slows_a_bulk_transfer(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    proxy.set_faults("a", LinkFaults(bandwidth_bytes_per_s=200_000))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        elapsed = round_trip_s(s, b"b" * 100_000)  # 100 KB each way at 200 KB/s: about 0.5 s
    assert 0.35 <= elapsed <= 3.0, f"100 KB echoed through a 200 KB/s link in {elapsed:.3f} s"


def test_blackhole_stops_traffic_and_lifting_it_resumes(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        round_trip_s(s, b"before")
        proxy.set_faults("a", LinkFaults(blackhole=True))
        s.sendall(b"lost?")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(10)
        # a new connection is accepted but nothing reaches the target
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s2:
            s2.sendall(b"new")
            s2.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s2.recv(10)
            proxy.clear()
            s2.settimeout(5)
            assert s2.recv(10) == b"new"
        s.settimeout(5)
        assert s.recv(10) == b"lost?"  # held, not dropped: TCP does not lose bytes


def test_reset_link_resets_open_connections(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        round_trip_s(s, b"hello")
        proxy.reset_link("a")
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            s.recv(10)  # RST, not a clean EOF
    assert proxy.stats("a").resets == 1
    deadline = time.monotonic() + 5
    while proxy.open_connections("a") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.open_connections("a") == 0


def test_loss_stalls_and_resets_but_never_corrupts(setup: tuple[FaultProxy, int]) -> None:
    proxy, port = setup
    proxy.set_faults("a", LinkFaults(loss_rate=0.3))
    ok = resets = 0
    t_end = time.monotonic() + 20
    while ok < 20 and time.monotonic() < t_end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for i in range(5):
                    round_trip_s(s, f"message {i} ".encode() * 50)  # exact bytes back, or an error
                    ok += 1
        except (ConnectionResetError, BrokenPipeError, AssertionError):
            resets += 1
    st = proxy.stats("a")
    assert ok >= 20, f"only {ok} clean round trips ({resets} resets, stats {st})"
    assert st.stalls > 0


def test_bad_settings_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="loss_rate"):
        LinkFaults(loss_rate=2.0)
    with pytest.raises(ValueError, match="delay_ms"):
        LinkFaults(delay_ms=-1)
