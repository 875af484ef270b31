"""The peer envelope: how nodes frame messages to each other on the data and consensus channels.

docs/PROTOCOL.md section 3. Sans-I/O: `encode_*` build bytes, `PeerReader` turns received bytes into
(kind, body) pairs. What a RAFT body holds is shmraft/wire/raft_codec.py's business.

Every connection opens with HELLO from the connecting side: the cluster id and the sender's node id; the
accepting side answers HELLO (accepted) or REFUSED with a reason, then closes. A node of another cluster
is thus refused with a clear message on both sides.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

PEER_MAGIC: Final = 0x5052  # bytes 52 50, "RP"
PEER_VERSION: Final = 1
PEER_HEADER: Final = struct.Struct("<HBBII")  # magic, version, kind, body_len, crc32 of body
PEER_HEADER_BYTES: Final = PEER_HEADER.size
PEER_BODY_MAX_BYTES: Final = 8 * 1024 * 1024  # one append message: many frames, bounded by the sender
CLUSTER_ID_MAX_BYTES: Final = 64
_HELLO: Final = struct.Struct("<IB")  # node_id, channel


class PeerKind(enum.IntEnum):
    HELLO = 1
    REFUSED = 2
    RAFT = 3


class Channel(enum.IntEnum):
    DATA = 1
    CONSENSUS = 2


@dataclass(frozen=True, slots=True)
class Hello:
    cluster_id: str
    node_id: int
    channel: Channel


def encode_peer(kind: PeerKind, body: bytes | bytearray | memoryview) -> bytes:
    if len(body) > PEER_BODY_MAX_BYTES:
        raise LocalProtocolError("peer body", f"at most {PEER_BODY_MAX_BYTES} bytes", len(body))
    return PEER_HEADER.pack(PEER_MAGIC, PEER_VERSION, kind, len(body), zlib.crc32(body)) + bytes(body)


def encode_hello(hello: Hello) -> bytes:
    cid = hello.cluster_id.encode()
    if len(cid) > CLUSTER_ID_MAX_BYTES:
        raise LocalProtocolError("cluster_id", f"at most {CLUSTER_ID_MAX_BYTES} bytes", len(cid))
    return encode_peer(PeerKind.HELLO, bytes([len(cid)]) + cid + _HELLO.pack(hello.node_id, hello.channel))


def encode_refused(reason: str) -> bytes:
    return encode_peer(PeerKind.REFUSED, reason.encode()[:512])


def decode_hello(body: memoryview) -> Hello:
    if len(body) < 1:
        raise RemoteProtocolError("HELLO.cluster_id", "a length byte", "empty body")
    n = body[0]
    if len(body) != 1 + n + _HELLO.size:
        raise RemoteProtocolError("HELLO.body", f"{1 + n + _HELLO.size} bytes", len(body))
    cid = bytes(body[1 : 1 + n]).decode("utf-8", "replace")
    node_id, channel = _HELLO.unpack_from(body, 1 + n)
    try:
        ch = Channel(channel)
    except ValueError:
        raise RemoteProtocolError("HELLO.channel", "1 (data) or 2 (consensus)", channel) from None
    return Hello(cid, node_id, ch)


class PeerReader:
    """Accumulates bytes from one peer connection and yields (kind, body) once each is whole and intact."""

    def __init__(self, max_body_bytes: int = PEER_BODY_MAX_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_body_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

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
            raise RemoteProtocolError("peer kind", "1..3", kind) from None
        if body_len > self._max:
            raise RemoteProtocolError("peer body_len", f"at most {self._max}", body_len)
        end = PEER_HEADER_BYTES + body_len
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[PEER_HEADER_BYTES:end])
        del self._buf[:end]
        if zlib.crc32(body) != crc:
            raise RemoteProtocolError("peer crc32", f"0x{zlib.crc32(body):08X}", f"0x{crc:08X}")
        return pkind, memoryview(body)
