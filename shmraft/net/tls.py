"""Optional TLS (standard library `ssl`) for client and peer connections, on non-blocking sockets.

Contexts:
- `server_context(cert, key)`: the ingest worker's client port (clients check the node; the node does
  not ask clients for certificates: a client token does that job, see shmraft/net/auth.py);
- `peer_context(cert, key, ca)`: mutual TLS between nodes: each side presents its certificate and
  requires the other's to be signed by the cluster CA. Peers are named by address in the config, not by
  certificate name, so host names are not checked; who a peer is, the HMAC handshake proves on top;
- `client_context(ca)`: the client library and CLI: the node's certificate must chain to `ca` and name
  the host dialled.

Selector loops use `handshake_step`, `recv` and `send`, which turn SSLWantReadError/SSLWantWriteError into
"not now" answers instead of exceptions, and `recv` also drains what OpenSSL has already decrypted
(`pending()`), which a selector cannot see. Plain sockets go through `recv` and `send` unchanged.
`handshake_step` is the one TLS handshake step of every server and peer loop (the ingest worker's client
connections, shmraft/net/links.py): it also says why a handshake failed, and whether the other side refused
(a certificate, a protocol) or the connection merely broke.
"""

from __future__ import annotations

import selectors
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from shmraft.config import ConfigError

TLS_MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _load_chain(ctx: ssl.SSLContext, cert_file: Path | str, key_file: Path | str) -> None:
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert_file {str(cert_file)!r} / tls_key_file {str(key_file)!r}: "
            f"cannot load the certificate and key ({exc})"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca_file: Path | str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_ca_file {str(ca_file)!r}: cannot load the CA certificate ({exc})") from None


def server_context(cert_file: Path | str, key_file: Path | str) -> ssl.SSLContext:
    """For the client port: present the node's certificate; clients are not asked for one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MIN_VERSION
    _load_chain(ctx, cert_file, key_file)
    return ctx


def peer_context(cert_file: Path | str, key_file: Path | str, ca_file: Path | str, server_side: bool) -> ssl.SSLContext:
    """Mutual TLS between nodes: present ours, require theirs signed by the CA (no host name check)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = TLS_MIN_VERSION
    _load_chain(ctx, cert_file, key_file)
    _load_ca(ctx, ca_file)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca_file: Path | str) -> ssl.SSLContext:
    """For clients: the node's certificate must chain to `ca_file` and name the host dialled."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = TLS_MIN_VERSION
    _load_ca(ctx, ca_file)
    return ctx


def wrap(
    ctx: ssl.SSLContext, sock: socket.socket, server_side: bool, server_hostname: str | None = None
) -> ssl.SSLSocket:
    """Wrap a connected non-blocking socket; the handshake is left to `handshake()` calls."""
    return ctx.wrap_socket(
        sock, server_side=server_side, do_handshake_on_connect=False, server_hostname=server_hostname
    )


@dataclass(frozen=True, slots=True)
class HandshakeStep:
    """Where a TLS handshake stands after one step: waiting (`want`), done, or failed (`failure`)."""

    want: int = 0  # the selector event the handshake waits for; 0 when done or failed
    failure: str = ""  # why it failed, for a log line ("" = not failed)
    refused: bool = False  # failed because TLS said no (a certificate, not TLS at all), not a broken connection

    @property
    def done(self) -> bool:
        return not self.want and not self.failure


_DONE = HandshakeStep()
_WANT_READ = HandshakeStep(want=selectors.EVENT_READ)
_WANT_WRITE = HandshakeStep(want=selectors.EVENT_WRITE)


def handshake_step(sock: ssl.SSLSocket) -> HandshakeStep:
    """One step of the TLS handshake on a non-blocking socket. Never raises: a failure is in the answer."""
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return _WANT_READ
    except ssl.SSLWantWriteError:
        return _WANT_WRITE
    except OSError as exc:
        refused = isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
        return HandshakeStep(failure=describe(exc), refused=refused)
    return _DONE


def recv(sock: socket.socket, max_bytes: int) -> bytes | None:
    """Up to `max_bytes` (plus what TLS has already decrypted); None when nothing is there yet, b"" at EOF.

    Raises OSError (including ssl.SSLError) when the connection broke.
    """
    try:
        data = sock.recv(max_bytes)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return b""
    if not data or not isinstance(sock, ssl.SSLSocket):
        return data
    parts = [data]
    while (pending := sock.pending()) > 0:  # decrypted already: the selector will not say it is there
        try:
            more = sock.recv(pending)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        if not more:
            break
        parts.append(more)
    return b"".join(parts) if len(parts) > 1 else data


def send(sock: socket.socket, data: bytes | bytearray | memoryview) -> int:
    """Bytes of `data` written (0 when the socket cannot take any now). Raises OSError when it broke.

    With TLS a retry after "not now" must offer at least the same bytes again; callers keep unsent bytes
    at the front of their buffer and only append, which satisfies that.
    """
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return 0


def describe(exc: BaseException) -> str:
    """A short reason for a failed TLS connection, for a log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc}"
