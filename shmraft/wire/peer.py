"""The peer envelope: how nodes frame messages to each other on the data and consensus channels.

docs/PROTOCOL.md section 3. Sans-I/O: `encode_*` build bytes, `PeerReader` turns received bytes into
(kind, body) pairs, `decode_*` turn handshake bodies into values. What a RAFT body holds is
shmraft/wire/raft_codec.py's business; the MACs of the handshake are shmraft/net/auth.py's.

Every connection opens with a mutual challenge-response before any RAFT message may pass:

    connector                                   acceptor
    HELLO (cluster, my id, your id, channel, nonce_c) ->
                                                checks cluster, ids, channel (else REFUSED + close)
                <- CHALLENGE (my id, nonce_a, mac_a = HMAC(secret, acceptor role, ..., nonce_c, nonce_a))
    checks mac_a (else REFUSED + close)
    PROOF (mac_c = HMAC(secret, connector role, ..., nonce_c, nonce_a)) ->
                                                checks mac_c (else REFUSED + close)
                <- WELCOME
    RAFT ... (both ways)

REFUSED carries a reason (UTF-8, never a secret or a MAC), so both sides can log why. Before the handshake
completes a reader accepts bodies of at most HANDSHAKE_BODY_MAX_BYTES, so a stranger cannot make a node
buffer megabytes.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from shmraft.raft.messages import Channel
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

PEER_MAGIC: Final = 0x5052  # bytes 52 50, "RP"
# 5: InstallSnapshot carries the snapshot's configuration; 4: InstallSnapshot/SnapshotResponse;
# 3: the CRC covers the header too; 2: authentication; 1: unauthenticated
PEER_VERSION: Final = 5
PEER_HEADER: Final = struct.Struct("<HBBII")  # magic, version, kind, body_len, crc32 of header bytes 0..7 + body
_CRC_COVERED: Final = struct.Struct("<HBBI")  # the header bytes the CRC covers: all but the CRC itself
PEER_HEADER_BYTES: Final = PEER_HEADER.size
PEER_BODY_MAX_BYTES: Final = 8 * 1024 * 1024  # one append message: many frames, bounded by the sender
HANDSHAKE_BODY_MAX_BYTES: Final = 512  # any body before the handshake completes (HELLO is at most 106)
CLUSTER_ID_MAX_BYTES: Final = 64
REFUSED_REASON_MAX_BYTES: Final = 480
NONCE_BYTES: Final = 32
MAC_BYTES: Final = 32  # HMAC-SHA256
_HELLO_TAIL: Final = struct.Struct("<IIB")  # from node_id, to node_id, channel; then the nonce
_CHALLENGE: Final = struct.Struct(f"<I{NONCE_BYTES}s{MAC_BYTES}s")  # node_id, nonce, mac


class PeerKind(enum.IntEnum):
    HELLO = 1
    REFUSED = 2
    RAFT = 3
    CHALLENGE = 4
    PROOF = 5
    WELCOME = 6


@dataclass(frozen=True, slots=True)
class Hello:
    """The connector's greeting: who it is, whom it meant to reach, on which channel, and its nonce."""

    cluster_id: str
    node_id: int
    to_node_id: int
    channel: Channel
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    """The acceptor's answer to HELLO: its id, its nonce, and its proof of the secret."""

    node_id: int
    nonce: bytes
    mac: bytes

    def __repr__(self) -> str:  # a MAC is not secret, but it has no business in a log line
        return f"Challenge(node_id={self.node_id})"


def encode_peer(kind: PeerKind, body: bytes | bytearray | memoryview) -> bytes:
    if len(body) > PEER_BODY_MAX_BYTES:
        raise LocalProtocolError("peer body", f"at most {PEER_BODY_MAX_BYTES} bytes", len(body))
    return PEER_HEADER.pack(PEER_MAGIC, PEER_VERSION, kind, len(body), peer_crc32(kind, body)) + bytes(body)


def peer_crc32(kind: int, body: bytes | bytearray | memoryview, version: int = PEER_VERSION) -> int:
    """The envelope's CRC-32: over header bytes 0..7 (magic, version, kind, body_len), then the body, so a
    flipped kind or length byte is caught as surely as a flipped body byte."""
    return zlib.crc32(body, zlib.crc32(_CRC_COVERED.pack(PEER_MAGIC, version, kind, len(body))))


def encode_hello(hello: Hello) -> bytes:
    cid = hello.cluster_id.encode()
    if len(cid) > CLUSTER_ID_MAX_BYTES:
        raise LocalProtocolError("cluster_id", f"at most {CLUSTER_ID_MAX_BYTES} bytes", len(cid))
    if len(hello.nonce) != NONCE_BYTES:
        raise LocalProtocolError("HELLO.nonce", f"{NONCE_BYTES} bytes", len(hello.nonce))
    tail = _HELLO_TAIL.pack(hello.node_id, hello.to_node_id, hello.channel)
    return encode_peer(PeerKind.HELLO, bytes([len(cid)]) + cid + tail + hello.nonce)


def encode_challenge(challenge: Challenge) -> bytes:
    if len(challenge.nonce) != NONCE_BYTES or len(challenge.mac) != MAC_BYTES:
        raise LocalProtocolError(
            "CHALLENGE",
            f"a {NONCE_BYTES}-byte nonce and a {MAC_BYTES}-byte mac",
            (len(challenge.nonce), len(challenge.mac)),
        )
    return encode_peer(PeerKind.CHALLENGE, _CHALLENGE.pack(challenge.node_id, challenge.nonce, challenge.mac))


def encode_proof(mac: bytes) -> bytes:
    if len(mac) != MAC_BYTES:
        raise LocalProtocolError("PROOF.mac", f"{MAC_BYTES} bytes", len(mac))
    return encode_peer(PeerKind.PROOF, mac)


def encode_welcome() -> bytes:
    return encode_peer(PeerKind.WELCOME, b"")


def encode_refused(reason: str) -> bytes:
    """REFUSED with a reason, cut to REFUSED_REASON_MAX_BYTES at a character boundary."""
    data = reason.encode()[:REFUSED_REASON_MAX_BYTES].decode("utf-8", "ignore").encode()
    return encode_peer(PeerKind.REFUSED, data)


def _channel(value: int, field: str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        raise RemoteProtocolError(field, "1 (data) or 2 (consensus)", value) from None


def decode_hello(body: memoryview | bytes) -> Hello:
    if len(body) < 1:
        raise RemoteProtocolError("HELLO.cluster_id", "a length byte", "empty body")
    n = body[0]
    if n > CLUSTER_ID_MAX_BYTES:
        raise RemoteProtocolError("HELLO.cluster_id", f"at most {CLUSTER_ID_MAX_BYTES} bytes", n)
    want = 1 + n + _HELLO_TAIL.size + NONCE_BYTES
    if len(body) != want:
        raise RemoteProtocolError("HELLO.body", f"{want} bytes", len(body))
    try:  # strictly: an accepted HELLO has one meaning (and a cluster id is [A-Za-z0-9_] anyway)
        cid = bytes(body[1 : 1 + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("HELLO.cluster_id", "UTF-8 text", bytes(body[1 : 1 + n])[:16]) from None
    node_id, to_node_id, channel = _HELLO_TAIL.unpack_from(body, 1 + n)
    nonce = bytes(body[1 + n + _HELLO_TAIL.size :])
    return Hello(cid, node_id, to_node_id, _channel(channel, "HELLO.channel"), nonce)


def decode_challenge(body: memoryview | bytes) -> Challenge:
    if len(body) != _CHALLENGE.size:
        raise RemoteProtocolError("CHALLENGE.body", f"{_CHALLENGE.size} bytes", len(body))
    node_id, nonce, mac = _CHALLENGE.unpack(bytes(body))
    return Challenge(node_id, nonce, mac)


def decode_proof(body: memoryview | bytes) -> bytes:
    if len(body) != MAC_BYTES:
        raise RemoteProtocolError("PROOF.body", f"{MAC_BYTES} bytes", len(body))
    return bytes(body)


def decode_welcome(body: memoryview | bytes) -> None:
    if len(body) != 0:
        raise RemoteProtocolError("WELCOME.body", "0 bytes", len(body))


def decode_refused(body: memoryview | bytes) -> str:
    """The reason; printable text only, so a hostile peer cannot forge log lines with control characters."""
    text = bytes(body[:REFUSED_REASON_MAX_BYTES]).decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class PeerReader:
    """Accumulates bytes from one peer connection and yields (kind, body) once each is whole and intact.

    `max_body_bytes` may be raised once the handshake is done (see `allow_body_bytes`).
    """

    def __init__(self, max_body_bytes: int = PEER_BODY_MAX_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_body_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def allow_body_bytes(self, max_body_bytes: int) -> None:
        """Change the largest body accepted from now on (small during the handshake, large after)."""
        self._max = max_body_bytes

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def next(self) -> tuple[PeerKind, memoryview] | None:
        if len(self._buf) < PEER_HEADER_BYTES:
            return None
        magic, version, kind, body_len, crc = PEER_HEADER.unpack_from(self._buf, 0)
        if magic != PEER_MAGIC:
            raise RemoteProtocolError("peer magic", f"0x{PEER_MAGIC:04X}", f"0x{magic:04X}")
        if version != PEER_VERSION:
            raise RemoteProtocolError("peer version", str(PEER_VERSION), version)
        try:
            pkind = PeerKind(kind)
        except ValueError:
            raise RemoteProtocolError("peer kind", f"1..{max(PeerKind)}", kind) from None
        if body_len > self._max:
            raise RemoteProtocolError("peer body_len", f"at most {self._max}", body_len)
        end = PEER_HEADER_BYTES + body_len
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[PEER_HEADER_BYTES:end])
        del self._buf[:end]
        want = peer_crc32(kind, body)
        if want != crc:
            raise RemoteProtocolError("peer crc32", f"0x{want:08X}", f"0x{crc:08X}")
        return pkind, memoryview(body)
