"""What "a decoder handles bad input correctly" means, as checks shared by the hypothesis tests
(tests/test_fuzz_*.py) and the atheris harnesses beside this file.

For every decoder of bytes that come from outside a process (the client protocol, the peer envelope and
its handshake bodies, RAFT bodies, batch frames):

- any bytes, fed in any chunking, either decode to messages that re-encode to exactly the bytes consumed,
  or raise a `RemoteProtocolError` (any other exception is a bug: it propagates out of these checks);
- a stream reader never holds more than one header plus one maximal body: a huge declared length is
  refused from the header alone, before its body is buffered;
- the outcome does not depend on how the bytes were chunked.

Each check raises `OracleFailure` (an AssertionError) when a property is broken.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from shmraft.wire import client as cp
from shmraft.wire import peer as wp
from shmraft.wire.errors import RemoteProtocolError
from shmraft.wire.frame import FLAG_PRODUCER_IDS, FLAG_ZSTD, decode_batch, encode_batch
from shmraft.wire.raft_codec import decode_raft, encode_raft

CHUNK_BYTES_MAX: Final = 4096  # the largest chunk a fuzzer may ask for (a recv() in a node reads up to 256 KiB)


class OracleFailure(AssertionError):
    """A decoder broke one of the properties above."""


def chunked(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    """`data` cut into pieces of the given sizes, cycled (sizes below 1 count as 1); one piece if none."""
    if not sizes:
        yield data
        return
    pos, i = 0, 0
    while pos < len(data):
        n = max(1, min(sizes[i % len(sizes)], CHUNK_BYTES_MAX))
        yield data[pos : pos + n]
        pos += n
        i += 1


def sizes_from(data: bytes, count: int = 8) -> tuple[list[int], bytes]:
    """Chunk sizes taken from the first `count` bytes of a fuzzer's input (1..256 each) and the rest."""
    head, rest = data[:count], data[count:]
    return [b + 1 for b in head], rest


# --- the client protocol ------------------------------------------------------------------------------------


def encode_client(m: cp.Message, version: int = cp.CLIENT_VERSION) -> bytes:
    """The one encoding of a decoded client message in `version` (the codec's encoders are the specification)."""
    try:
        return cp.encode_message(m, version)
    except (AttributeError, TypeError, ValueError) as exc:
        raise OracleFailure(f"decoder returned a {type(m).__name__} the codec cannot encode: {exc}") from exc


Outcome = tuple[bytes, str | None, int]  # re-encoded messages back to back, error field or None, bytes left


def _stream(
    feed: Callable[[bytes], None],
    drain: Callable[[list[bytes]], None],
    buffered: Callable[[], int],
    data: bytes,
    sizes: Sequence[int],
    held_max: int,
) -> Outcome:
    """Feed pieces, calling drain(out) after each (it appends every whole message, re-encoded, to out)."""
    out: list[bytes] = []
    error: str | None = None
    for piece in chunked(data, sizes):
        feed(piece)
        try:
            drain(out)
        except RemoteProtocolError as exc:
            error = exc.field
            break
        if buffered() > held_max:
            raise OracleFailure(f"reader holds {buffered()} bytes after draining; at most {held_max} allowed")
    encoded = b"".join(out)
    if data[: len(encoded)] != encoded:
        raise OracleFailure(
            f"decoded messages re-encode to {encoded[:64]!r}..., not the bytes received {data[:64]!r}..."
        )
    if error is None and len(encoded) + buffered() != len(data):
        raise OracleFailure(f"{len(data)} bytes in, {len(encoded)} decoded and {buffered()} buffered")
    return encoded, error, (buffered() if error is None else -1)


def check_client_stream(
    data: bytes, sizes: Sequence[int] = (), max_body_bytes: int = cp.MESSAGE_BODY_MAX_BYTES
) -> Outcome:
    """Feed `data` to a MessageReader in pieces, draining after each, and check every property."""
    reader = cp.MessageReader(max_body_bytes)

    def drain(out: list[bytes]) -> None:
        while (msg := reader.next_message()) is not None:
            out.append(encode_client(msg, reader.version))

    outcome = _stream(
        reader.feed, drain, lambda: reader.buffered_bytes, data, sizes, cp.HEADER_BYTES + max_body_bytes - 1
    )
    if sizes:  # the chunking must not change anything
        whole = check_client_stream(data, (), max_body_bytes)
        if whole != outcome:
            raise OracleFailure(f"chunked {list(sizes)} gave {outcome[1:]}, whole gave {whole[1:]}")
    return outcome


def check_client_body(kind: int, body: bytes) -> None:
    """One body behind a valid header: decodes to a message that re-encodes to it, or a typed error."""
    data = cp.HEADER.pack(cp.CLIENT_MAGIC, cp.CLIENT_VERSION, kind & 0xFF, len(body), 7) + body
    check_client_stream(data)


# --- the peer envelope and the handshake bodies -----------------------------------------------------------------


def _peer_body_codecs() -> dict[wp.PeerKind, tuple[Callable[[Any], Any], Callable[[Any], bytes]]]:
    """Per kind: (decode the body, encode the decoded value as a whole envelope)."""
    codecs: dict[wp.PeerKind, tuple[Callable[[Any], Any], Callable[[Any], bytes]]] = {
        wp.PeerKind.HELLO: (wp.decode_hello, wp.encode_hello),
        wp.PeerKind.RAFT: (decode_raft, lambda m: wp.encode_peer(wp.PeerKind.RAFT, encode_raft(m))),
    }
    for name in ("CHALLENGE", "PROOF", "WELCOME"):  # the authenticated handshake (peer protocol version 2)
        kind = getattr(wp.PeerKind, name, None)
        dec = getattr(wp, f"decode_{name.lower()}", None)
        enc = getattr(wp, f"encode_{name.lower()}", None)
        if kind is not None and dec is not None and enc is not None:
            codecs[kind] = (dec, (lambda _v, enc=enc: enc()) if name == "WELCOME" else enc)
    return codecs


def check_peer_body(kind: wp.PeerKind, body: bytes) -> None:
    """A body of a known kind decodes to a value that re-encodes to it, or raises RemoteProtocolError."""
    codecs = _peer_body_codecs()
    envelope = wp.encode_peer(kind, body)
    if kind is wp.PeerKind.REFUSED:  # a reason for a log line: sanitised on purpose, so only "never crashes"
        reason = wp.decode_refused(body) if hasattr(wp, "decode_refused") else bytes(body).decode("utf-8", "replace")
        if not isinstance(reason, str) or any(not ch.isprintable() for ch in reason):
            raise OracleFailure(f"REFUSED reason {reason!r} is not printable text")
        return
    if kind not in codecs:
        raise OracleFailure(f"no decoder known for peer kind {kind!r}")
    decode, encode = codecs[kind]
    try:
        value = decode(memoryview(body))
    except RemoteProtocolError:
        return
    again = encode(value)
    if again != envelope:
        raise OracleFailure(f"{kind.name} body {body[:80]!r} decoded to {value!r}, which re-encodes differently")


def check_peer_stream(
    data: bytes, sizes: Sequence[int] = (), max_body_bytes: int = wp.PEER_BODY_MAX_BYTES, bodies: bool = True
) -> Outcome:
    """Feed `data` to a PeerReader in pieces; envelopes must re-encode to the bytes, bodies must decode."""
    reader = wp.PeerReader(max_body_bytes)
    items: list[tuple[wp.PeerKind, bytes]] = []

    def drain(out: list[bytes]) -> None:
        while (item := reader.next()) is not None:
            kind, body = item
            items.append((kind, bytes(body)))
            out.append(wp.encode_peer(kind, body))

    outcome = _stream(
        reader.feed, drain, lambda: reader.buffered_bytes, data, sizes, wp.PEER_HEADER_BYTES + max_body_bytes - 1
    )
    if bodies:
        for kind, body in items:
            check_peer_body(kind, body)
    if sizes:
        whole = check_peer_stream(data, (), max_body_bytes, bodies=False)
        if whole != outcome:
            raise OracleFailure(f"chunked {list(sizes)} gave {outcome[1:]}, whole gave {whole[1:]}")
    return outcome


def sealed_peer(kind: int, body: bytes) -> bytes:
    """An envelope with a correct CRC around any body, so a fuzzer reaches the body decoders."""
    return (
        wp.PEER_HEADER.pack(wp.PEER_MAGIC, wp.PEER_VERSION, kind & 0xFF, len(body), wp.peer_crc32(kind & 0xFF, body))
        + body
    )


# --- RAFT bodies ---------------------------------------------------------------------------------------------


def check_raft_body(body: bytes) -> None:
    """A RAFT body decodes to a message that re-encodes to exactly it, or raises RemoteProtocolError."""
    try:
        msg = decode_raft(body)
    except RemoteProtocolError:
        return
    again = encode_raft(msg)
    if again != body:
        raise OracleFailure(f"RAFT body {body[:80]!r} decoded to {msg!r}, which re-encodes to {again[:80]!r}")


# --- batch frames --------------------------------------------------------------------------------------------


def seal_frame(frame: bytes) -> bytes:
    """Recompute the CRC of anything frame-shaped (at least a header), so that decoding gets past the CRC."""
    buf = bytearray(frame)
    if len(buf) < 48:
        return bytes(buf)
    (plen,) = struct.unpack_from("<I", buf, 8)
    payload = buf[48 : 48 + plen]
    struct.pack_into("<I", buf, 12, zlib.crc32(payload, zlib.crc32(buf[16:48], zlib.crc32(buf[0:12]))))
    return bytes(buf)


def check_frame(data: bytes) -> None:
    """A frame decodes (and, uncompressed, re-encodes to exactly itself; compressed, to the same events) or
    raises RemoteProtocolError."""
    try:
        batch = decode_batch(data)
    except RemoteProtocolError:
        return
    h = batch.header
    ids = batch.producer_ids.tolist() if batch.producer_ids is not None else None
    seqs = batch.sequences.tolist() if batch.sequences is not None else None
    events = [bytes(e) for e in batch.events]
    if len(events) != h.event_count or sum(map(len, events)) != len(batch.data):
        raise OracleFailure(f"frame decoded to {len(events)} events, header says {h.event_count}")
    if h.flags & FLAG_ZSTD:
        return  # another zstd encoder may make other bytes for the same payload; the events were checked above
    again = encode_batch(
        events,
        batch_id=h.batch_id,
        term=h.term,
        prev_index=h.prev_index,
        prev_term=h.prev_term,
        timestamp_us=h.timestamp_us,
        producer_ids=ids,
        sequences=seqs,
    )
    if bool(h.flags & FLAG_PRODUCER_IDS) != (ids is not None) or again != bytes(data):
        raise OracleFailure(f"frame {bytes(data)[:64]!r}... decoded to a batch that re-encodes differently")
