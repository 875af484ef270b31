"""Typed protocol errors, in the manner of h11: each says which side broke the protocol.

`RemoteProtocolError`: bytes that came in are wrong (a peer, a client, a corrupted disk or ring). The
receiver drops the connection / refuses the data and keeps running. `LocalProtocolError`: this process
asked for something the format cannot express (too many events, an oversized event); a bug or a bad
argument on our side, never sent.

Every error names the field, what was expected and what came, so a log line is enough to diagnose it.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: a frame or message that cannot be encoded or decoded."""

    def __init__(self, field: str, expected: str, got: object) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"{field}: expected {expected}, got {got}")


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the format does not allow."""


class RemoteProtocolError(ProtocolError):
    """Received bytes violate the format; the sender (or the medium) is at fault."""


# --- batch frame decoding errors (docs/PROTOCOL.md, "Validation order") ------------------------------


class FrameTruncated(RemoteProtocolError):
    """Fewer bytes than the header or the header's payload length require."""


class BadMagic(RemoteProtocolError):
    """The first four bytes are not 0xDEADBEEF: not a shmraft frame, or the stream lost sync."""


class UnsupportedVersion(RemoteProtocolError):
    """A frame version this code does not understand."""


class BadFlags(RemoteProtocolError):
    """Reserved flag bits are set."""


class EventCountOutOfRange(RemoteProtocolError):
    """event_count outside 1..64."""


class FrameOversized(RemoteProtocolError):
    """payload_len, or the decompressed payload, exceeds the 32 KiB limit."""


class LengthMismatch(RemoteProtocolError):
    """Sizes disagree: trailing bytes after the footer, or event lengths that do not sum to the payload."""


class MissingFooter(RemoteProtocolError):
    """The 8 bytes after the payload are not the end marker 0x01DEADBEEF."""


class CrcMismatch(RemoteProtocolError):
    """The CRC32 over header and payload does not match: corruption in transit or at rest."""


class CorruptCompression(RemoteProtocolError):
    """The payload is flagged zstd but does not decompress."""
