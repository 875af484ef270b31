"""Typed Kafka protocol errors, in the house style of shmraft/wire/errors.py (h11-like).

`RemoteProtocolError` subclasses: the bytes a client sent are wrong; the listener logs the error and either
answers with `kafka_code` (a bad record batch inside a well-formed Produce: the partition gets that code) or
drops the connection (a frame it cannot parse, as Kafka does). `LocalProtocolError`: this process asked to
encode something Kafka's format cannot carry (a bug on our side, never sent).
"""

from __future__ import annotations

from shmraft.kafka.codes import ErrorCode
from shmraft.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CorruptCompression",
    "KafkaEncodeError",
    "KafkaRemoteError",
    "MalformedField",
    "RecordBatchCrcMismatch",
    "RequestOversized",
    "Truncated",
    "UnsupportedCompression",
    "UnsupportedMagic",
    "UnsupportedRequest",
]


class KafkaRemoteError(RemoteProtocolError):
    """Received Kafka bytes violate the protocol. `kafka_code` is the error a partition answer would carry."""

    kafka_code: ErrorCode = ErrorCode.CORRUPT_MESSAGE


class Truncated(KafkaRemoteError):
    """The bytes end before the field they must hold (a frame, a header, a record batch)."""


class RequestOversized(KafkaRemoteError):
    """A frame's size prefix is above the listener's limit: refused before its body is buffered."""

    kafka_code = ErrorCode.MESSAGE_TOO_LARGE


class MalformedField(KafkaRemoteError):
    """A field holds a value its type forbids: a negative length, bad UTF-8, a varint too long, trailing bytes."""


class UnsupportedRequest(KafkaRemoteError):
    """An API key or version this door does not serve (other than ApiVersions, which is answered; see codec.py).

    Clients negotiate from the ApiVersions answer and never send these; Kafka closes the connection when one
    comes, and so does the listener."""

    kafka_code = ErrorCode.UNSUPPORTED_VERSION

    def __init__(self, api_key: int, api_version: int, correlation_id: int) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        super().__init__("request_api_key/request_api_version", "an API and version served", (api_key, api_version))


class UnsupportedMagic(KafkaRemoteError):
    """A record batch of magic 0 or 1 (Kafka's legacy message sets): only RecordBatch v2 is accepted."""

    kafka_code = ErrorCode.UNSUPPORTED_VERSION


class RecordBatchCrcMismatch(KafkaRemoteError):
    """A record batch's CRC32C does not match its bytes: corrupted in transit or by the client."""


class UnsupportedCompression(KafkaRemoteError):
    """A record batch compressed with a codec shmraft does not decode (snappy, lz4)."""

    kafka_code = ErrorCode.UNSUPPORTED_COMPRESSION_TYPE


class CorruptCompression(KafkaRemoteError):
    """A compressed record batch that does not decompress, or decompresses past the size limit."""


class KafkaEncodeError(LocalProtocolError):
    """A value that Kafka's format cannot carry (a string too long, an int out of its type's range)."""
