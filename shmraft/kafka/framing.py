"""Kafka framing: a 4-byte big-endian size before every request and response, and the request header.

`FrameReader` takes received bytes and yields whole frames (without their size prefix); a size above
`KAFKA_REQUEST_BYTES_MAX` is refused as soon as its 4 bytes are in, before the body is buffered, and a size too
small for a request header is refused too. Request header versions: v0 (api_key, api_version,
correlation_id), v1 (+ client_id, a nullable classic string), v2 (+ tagged fields); response header v0
(correlation_id) and v1 (+ tagged fields).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from shmraft.kafka.errors import MalformedField, RequestOversized
from shmraft.kafka.primitives import Reader, Writer
from shmraft.wire.client import MESSAGE_BODY_MAX_BYTES

SIZE_PREFIX: Final = struct.Struct(">i")
SIZE_PREFIX_BYTES: Final = SIZE_PREFIX.size
# The largest request accepted: the native port's limit. Clients' own defaults are below it (kafka-python's
# max_request_size and librdkafka's message.max.bytes are 1 MB); Kafka's socket.request.max.bytes is 100 MiB.
KAFKA_REQUEST_BYTES_MAX: Final = MESSAGE_BODY_MAX_BYTES
REQUEST_HEADER_FIXED: Final = struct.Struct(">hhi")  # api_key, api_version, correlation_id
REQUEST_HEADER_BYTES_MIN: Final = REQUEST_HEADER_FIXED.size


@dataclass(slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None = None


def peek_request_header(frame: bytes | memoryview) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): the fixed start every request header version shares."""
    if len(frame) < REQUEST_HEADER_BYTES_MIN:
        raise MalformedField("request_header", f"at least {REQUEST_HEADER_BYTES_MIN} bytes", len(frame))
    return REQUEST_HEADER_FIXED.unpack_from(frame, 0)


def decode_request_header(r: Reader, header_version: int) -> RequestHeader:
    api_key = r.int16("request_api_key")
    api_version = r.int16("request_api_version")
    correlation_id = r.int32("correlation_id")
    client_id = r.string("client_id", nullable=True) if header_version >= 1 else None
    if header_version >= 2:
        r.skip_tagged_fields("request_header._tagged_fields")
    return RequestHeader(api_key, api_version, correlation_id, client_id)


def encode_request_header(w: Writer, header: RequestHeader, header_version: int) -> None:
    w.int16(header.api_key, "request_api_key")
    w.int16(header.api_version, "request_api_version")
    w.int32(header.correlation_id, "correlation_id")
    if header_version >= 1:
        w.string(header.client_id, "client_id")
    if header_version >= 2:
        w.empty_tagged_fields()


def encode_response_header(w: Writer, correlation_id: int, header_version: int) -> None:
    w.int32(correlation_id, "correlation_id")
    if header_version >= 1:
        w.empty_tagged_fields()


def decode_response_header(r: Reader, header_version: int) -> int:
    correlation_id = r.int32("correlation_id")
    if header_version >= 1:
        r.skip_tagged_fields("response_header._tagged_fields")
    return correlation_id


def frame(parts: bytes) -> bytes:
    """`parts` with its size prefix."""
    return SIZE_PREFIX.pack(len(parts)) + parts


class FrameReader:
    """Received bytes in, whole request frames out (sans-I/O: the caller reads the socket)."""

    def __init__(self, frame_bytes_max: int = KAFKA_REQUEST_BYTES_MAX) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame (a partial frame at a connection's end)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next whole frame, or None until more bytes come; a bad size prefix raises at once."""
        buf = self._buf
        if len(buf) < SIZE_PREFIX_BYTES:
            return None
        (size,) = SIZE_PREFIX.unpack_from(buf, 0)
        if size > self.frame_bytes_max:
            raise RequestOversized("size", f"at most {self.frame_bytes_max} bytes", size)
        if size < REQUEST_HEADER_BYTES_MIN:
            raise MalformedField("size", f"at least {REQUEST_HEADER_BYTES_MIN} bytes (a request header)", size)
        end = SIZE_PREFIX_BYTES + size
        if len(buf) < end:
            return None
        out = bytes(buf[SIZE_PREFIX_BYTES:end])
        del buf[:end]
        return out
