"""Secrets and peer authentication: reading secret files safely, and the HMAC of the peer handshake.

A node proves to another that it knows the cluster secret without sending it: each side sends a fresh
random nonce, and each answers with HMAC-SHA256(secret, role || cluster id || connector id || acceptor id ||
channel || connector nonce || acceptor nonce) (docs/PROTOCOL.md section 3.1). The role label differs for
the two proofs, so one side's proof cannot be reflected back as the other's; both nonces and both node ids
are inside, so a proof recorded on one connection is worth nothing on another.

Secrets are held in `Secret`, whose repr and str never show the bytes, and which refuses to be pickled,
so a secret cannot slip into a log line, a status report or a config dump by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from shmraft.config import LOCAL_SECRET_NAME, SECRET_HINT, ConfigError
from shmraft.constants import PRIVATE_FILE_MODE
from shmraft.wire.client import AUTH_TOKEN_MAX_BYTES
from shmraft.wire.peer import NONCE_BYTES

if TYPE_CHECKING:
    from shmraft.config import NodeConfig

SECRET_MIN_BYTES: Final = 16  # shorter is guessable; `head -c 32 /dev/urandom` gives 32
SECRET_MAX_BYTES: Final = 4096
GENERATED_SECRET_BYTES: Final = 32
MAKE_ONE_HINT: Final = SECRET_HINT

ROLE_ACCEPTOR: Final = 1  # the proof in CHALLENGE: the accepting node knows the secret
ROLE_CONNECTOR: Final = 2  # the proof in PROOF: the connecting node knows the secret
_MAC_LABEL: Final = b"shmraft-peer-auth-v2\x00"
_IDS: Final = struct.Struct("<BIIB")  # role, connector id, acceptor id, channel


class Secret:
    """Secret bytes that never show themselves: repr/str give only the length and where they came from."""

    __slots__ = ("_value", "source")

    def __init__(self, value: bytes, source: str) -> None:
        self._value = bytes(value)
        self.source = source

    def reveal(self) -> bytes:
        """The bytes, for the one place that needs them (an HMAC key, a comparison)."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes from {self.source}>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled: pass the path of its file instead")

    def equals(self, candidate: bytes | bytearray | memoryview) -> bool:
        """Constant-time comparison with what a client sent."""
        return hmac.compare_digest(self._value, bytes(candidate))


def _read_private_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file that only its owner can read; ConfigError names the file and its fault."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r}: cannot read it ({exc.strerror}); {MAKE_ONE_HINT}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {str(path)!r}: expected a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {str(path)!r}: mode 0{mode:03o} lets others read it; expected 0600 or stricter (chmod 600 {path})"
        )
    if st.st_size > max_bytes:
        raise ConfigError(f"{what} {str(path)!r}: expected at most {max_bytes} bytes, got {st.st_size}")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r}: cannot read it ({exc.strerror})") from None


def read_cluster_secret(path: Path | str) -> Secret:
    """The cluster secret: the whole file, as bytes (mode 0600 or stricter, 16..4096 bytes)."""
    path = Path(path)
    value = _read_private_file(path, "cluster_secret_file", SECRET_MAX_BYTES)
    if len(value) < SECRET_MIN_BYTES:
        raise ConfigError(
            f"cluster_secret_file {str(path)!r}: expected at least {SECRET_MIN_BYTES} bytes, "
            f"got {len(value)}; {MAKE_ONE_HINT}"
        )
    return Secret(value, str(path))


def read_token(path: Path | str, what: str = "client_token_file") -> Secret:
    """A client token: the file's content without surrounding whitespace (1..1024 bytes, mode 0600 or stricter)."""
    path = Path(path)
    value = _read_private_file(path, what, AUTH_TOKEN_MAX_BYTES + 64).strip()
    if not 1 <= len(value) <= AUTH_TOKEN_MAX_BYTES:
        raise ConfigError(
            f"{what} {str(path)!r}: expected a token of 1..{AUTH_TOKEN_MAX_BYTES} bytes, got {len(value)}"
        )
    return Secret(value, str(path))


def ensure_local_secret(path: Path | str) -> bool:
    """Create a cluster secret of random bytes at `path` (mode 0600) unless one is there. True if created.

    For the local cluster only: every node on this machine reads the same file. O_EXCL makes two
    concurrent starters agree on one file.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, secrets.token_bytes(GENERATED_SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def is_local_secret(config: NodeConfig) -> bool:
    """Whether the config's secret is the local cluster's generated one (data_dir/cluster.secret)."""
    return (
        config.cluster_secret_file is not None
        and Path(config.cluster_secret_file) == Path(config.data_dir) / LOCAL_SECRET_NAME
    )


def cluster_secret(config: NodeConfig) -> Secret:
    """The node's cluster secret; ConfigError when none is configured or its file is unfit."""
    if not config.cluster_secret_file:
        raise ConfigError(f"cluster_secret_file: expected the path of the cluster secret, got none; {MAKE_ONE_HINT}")
    return read_cluster_secret(config.cluster_secret_file)


def client_token(config: NodeConfig) -> Secret | None:
    """The token clients must present, None when the node does not ask for one."""
    return read_token(config.client_token_file) if config.client_token_file else None


def check_node_files(config: NodeConfig) -> None:
    """Read every secret and TLS file the node's workers will read, so a bad one stops the node at once
    with a ConfigError naming it, instead of failing worker start-ups one after another."""
    from shmraft.net import tls

    cluster_secret(config)
    client_token(config)
    if config.tls_enabled:
        tls.server_context(config.tls_cert_file, config.tls_key_file)
        tls.peer_context(config.tls_cert_file, config.tls_key_file, config.tls_ca_file, server_side=True)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def handshake_mac(
    secret: Secret,
    role: int,
    cluster_id: str,
    connector_id: int,
    acceptor_id: int,
    channel: int,
    connector_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """HMAC-SHA256 binding the secret to one connection: its cluster, both node ids, channel and both nonces."""
    cid = cluster_id.encode()
    msg = b"".join(
        [
            _MAC_LABEL,
            bytes([len(cid)]),
            cid,
            _IDS.pack(role, connector_id, acceptor_id, channel),
            connector_nonce,
            acceptor_nonce,
        ]
    )
    return hmac.new(secret.reveal(), msg, hashlib.sha256).digest()


def mac_matches(expected: bytes, got: bytes | memoryview) -> bool:
    return hmac.compare_digest(expected, bytes(got))


_CHANGE_LABEL: Final = b"shmraft-member-change-v1\x00"
MEMBER_CHANGE_WINDOW_MS: Final = 300_000  # a MEMBER_CHANGE signed further than this from the node's clock is refused


def member_change_mac(secret: Secret, cluster_id: str, signed: bytes) -> bytes:
    """HMAC-SHA256 proving that a MEMBER_CHANGE comes from someone holding the cluster secret: over a label, the
    cluster id and the request body without its MAC (op, node id, timeout, signing time, address)."""
    cid = cluster_id.encode()
    return hmac.new(secret.reveal(), _CHANGE_LABEL + bytes([len(cid)]) + cid + signed, hashlib.sha256).digest()


def member_change_refusal(secret: Secret, cluster_id: str, signed: bytes, mac: bytes, unix_ms: int, now_ms: int) -> str:
    """Why a MEMBER_CHANGE is refused as unauthorized (empty when it is not): a MAC that does not match the cluster
    secret, or a signing time outside MEMBER_CHANGE_WINDOW_MS of this node's clock (a replay of an old one)."""
    if not mac_matches(member_change_mac(secret, cluster_id, signed), mac):
        return "the request is not signed with this cluster's secret (cluster_secret_file)"
    if abs(now_ms - unix_ms) > MEMBER_CHANGE_WINDOW_MS:
        return (
            f"signed at unix ms {unix_ms}, {abs(now_ms - unix_ms)} ms from this node's clock "
            f"(at most {MEMBER_CHANGE_WINDOW_MS}): a replay, or clocks out of step"
        )
    return ""
