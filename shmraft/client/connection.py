"""One blocking TCP connection to a node's client port, speaking the client protocol through the sans-I/O codec.

The codec (shmraft.wire.client) turns values into bytes and bytes into messages; this class only moves
bytes, with a timeout on every wait, and turns socket failures into `ConnectionFailed`. After a
`ConnectionFailed` the connection is closed and must be replaced; after an `AnswerTimeout` it is still
usable (a late answer is recognised by its correlation id and skipped).

With `tls` (an ssl.SSLContext, see shmraft.net.tls.client_context) the connection is TLS, the node's
certificate checked against the CA and the host dialled. With `token`, the connection opens with AUTH and
is usable only once the node answers AUTHED; a refusal raises `Unauthorized`.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Final

from shmraft.client.errors import ConnectionFailed, ShmraftError, error_from_server
from shmraft.wire.client import MESSAGE_BODY_MAX_BYTES, Authed, Error, Message, MessageReader, encode_auth
from shmraft.wire.errors import RemoteProtocolError

RECV_CHUNK_BYTES: Final = 256 * 1024  # one recv() call reads at most this much
SEND_TIMEOUT_MIN_S: Final = 0.05  # a send never gets less time than this, even at a deadline's edge
CONNECT_TIMEOUT_S_DEFAULT: Final = 1.0


class AnswerTimeout(ShmraftError):
    """No answer arrived within the wait; the connection stays open and usable."""


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into host and port; ValueError names the bad address."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def auth_failure(answer: object, address: str) -> ShmraftError | None:
    """What a node's answer to AUTH means: None for AUTHED, else the error to raise (the caller closes first)."""
    if isinstance(answer, Authed):
        return None
    if isinstance(answer, Error):
        return error_from_server(answer.code, answer.message, answer.leader, address)
    return ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to AUTH")


class Connection:
    """A blocking connection to one node, with its own correlation ids and receive buffer."""

    def __init__(
        self,
        address: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        max_answer_bytes: int = MESSAGE_BODY_MAX_BYTES,
        tls: ssl.SSLContext | None = None,
        token: bytes | None = None,
    ) -> None:
        self.address = address
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {address}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)  # the handshake, within connect_timeout_s
            except OSError as exc:
                sock.close()
                from shmraft.net.tls import describe

                raise ConnectionFailed(f"TLS handshake with {address} failed: {describe(exc)}") from exc
        self._sock = sock
        self._reader = MessageReader(max_answer_bytes)
        self._next_cid = 1
        self.closed = False
        if token is not None:
            self._authenticate(token, connect_timeout_s)

    def _authenticate(self, token: bytes, timeout_s: float) -> None:
        """AUTH first; the node answers AUTHED, or ERROR UNAUTHORIZED and closes."""
        try:
            answer = self.request(lambda cid: encode_auth(cid, token), timeout_s)
        except AnswerTimeout:
            self.close()
            raise ConnectionFailed(f"no answer to AUTH from {self.address} within {timeout_s:.3f} s") from None
        failure = auth_failure(answer, self.address)
        if failure is not None:
            self.close()
            raise failure

    def __repr__(self) -> str:
        return f"Connection({self.address!r}{', closed' if self.closed else ''})"

    def fileno(self) -> int:
        return self._sock.fileno()

    def next_correlation_id(self) -> int:
        cid = self._next_cid
        self._next_cid += 1
        return cid

    def _fail(self, what: str, exc: BaseException | None = None) -> ConnectionFailed:
        self.close()
        detail = f": {exc}" if exc is not None else ""
        return ConnectionFailed(f"{what} {self.address}{detail}")

    def send(self, data: bytes, timeout_s: float) -> None:
        """Write one whole encoded message; a partial write breaks the stream, so any failure closes it."""
        if self.closed:
            raise ConnectionFailed(f"connection to {self.address} is closed")
        try:
            self._sock.settimeout(max(timeout_s, SEND_TIMEOUT_MIN_S))
            self._sock.sendall(data)
        except OSError as exc:
            raise self._fail("lost connection to", exc) from exc

    def _pop(self) -> Message | None:
        try:
            return self._reader.next_message()
        except RemoteProtocolError as exc:
            raise self._fail("protocol error from", exc) from exc

    def receive(self, timeout_s: float) -> Message:
        """The next whole message within `timeout_s`: AnswerTimeout if none, ConnectionFailed if the link broke."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._pop()
            if msg is not None:
                return msg
            if self.closed:
                raise ConnectionFailed(f"connection to {self.address} is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AnswerTimeout(f"no answer from {self.address} within {timeout_s:.3f} s")
            try:
                self._sock.settimeout(remaining)
                data = self._sock.recv(RECV_CHUNK_BYTES)
            except TimeoutError:
                raise AnswerTimeout(f"no answer from {self.address} within {timeout_s:.3f} s") from None
            except OSError as exc:
                raise self._fail("lost connection to", exc) from exc
            if not data:
                raise self._fail("connection closed by")
            self._reader.feed(data)

    def receive_available(self) -> list[Message]:
        """Read what has arrived without waiting (call when the socket is readable); every whole message."""
        try:
            self._sock.settimeout(0.0)
            data = self._sock.recv(RECV_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError as exc:
            raise self._fail("lost connection to", exc) from exc
        if data is not None:
            if not data:
                raise self._fail("connection closed by")
            self._reader.feed(data)
        out = []
        while (msg := self._pop()) is not None:
            out.append(msg)
        return out

    def read_available(self) -> bytes:
        """The raw bytes that have arrived, without waiting (b"" if none yet), for a caller that parses them
        itself (the Producer's state machine). ConnectionFailed if the link broke or the node closed it.
        Nothing is left in this connection's own reader: the node sends nothing unasked after AUTHED."""
        try:
            self._sock.settimeout(0.0)
            data = self._sock.recv(RECV_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return b""
        except OSError as exc:
            raise self._fail("lost connection to", exc) from exc
        if not data:
            raise self._fail("connection closed by")
        return data

    def request(self, encode: Callable[[int], bytes], timeout_s: float) -> Message:
        """Send `encode(correlation_id)` and wait for the answer carrying that id; skip stale answers."""
        cid = self.send_request(encode, timeout_s)
        return self.wait_answer(cid, timeout_s)

    def send_request(self, encode: Callable[[int], bytes], timeout_s: float) -> int:
        """Send `encode(correlation_id)` with a new id; returns the id to wait for."""
        cid = self.next_correlation_id()
        self.send(encode(cid), timeout_s)
        return cid

    def wait_answer(self, cid: int, timeout_s: float) -> Message:
        """The answer carrying `cid` within `timeout_s` (AnswerTimeout if none; it may still come later)."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.receive(max(deadline - time.monotonic(), 0.0))
            if msg.correlation_id == cid:
                return msg

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
