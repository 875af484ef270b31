"""The Kafka port's connections: the native listener's accept, limits, timeouts and back-pressure, with Kafka
framing (docs/KAFKA.md section 1).

`KafkaConnections` is `ClientConnections` with its protocol hooks overridden: it listens on the member's
`kafka_port`, frames bytes with `kafka.framing.FrameReader` and decodes them with `kafka.codec` into typed
requests, which go to the Kafka door (shmraft/ingest/kafka_door.py). Kafka has no error answer outside a
request's own response, so a frame over the size limit, garbage, or an API or version not served is logged
(rate-limited), counted, and the connection is closed without an answer, as Kafka does; the node goes on.
No TLS and no client token on this port (docs/KAFKA.md section 10): a node refuses a `kafka_port` together
with a `client_token_file` (shmraft/config.py).
"""

from __future__ import annotations

from shmraft.ingest.connections import ClientConnections, Connection
from shmraft.kafka import codec
from shmraft.kafka.framing import FrameReader
from shmraft.wire import client as cp
from shmraft.wire.errors import RemoteProtocolError


class KafkaRequestReader:
    """Received bytes in, decoded Kafka requests out; the face of `cp.MessageReader` the listener uses."""

    def __init__(self, frame_bytes_max: int) -> None:
        self.frames = FrameReader(frame_bytes_max)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.frames.feed(data)

    def next_message(self) -> codec.Request | None:
        """The next whole request, or None until more bytes come; bad input raises a KafkaRemoteError."""
        frame = self.frames.next_frame()
        return None if frame is None else codec.decode_request(frame)

    @property
    def buffered_bytes(self) -> int:
        return self.frames.buffered

    @property
    def pending_correlation_id(self) -> int:
        return 0  # never answered: Kafka closes the connection without an answer


class KafkaConnections(ClientConnections):
    """Connections on the Kafka port (the protocol hooks of ClientConnections, for Kafka)."""

    protocol = "kafka"
    speaks_tls = False
    asks_token = False

    def listen_port(self) -> int:
        return self.config.me.kafka_port

    def new_reader(self) -> KafkaRequestReader:  # type: ignore[override]
        return KafkaRequestReader(self.config.client_request_bytes_max)

    def error_answer(self, cid: int, code: cp.ErrorCode, message: str) -> bytes | None:
        return None  # Kafka has no connection-level error answer: the connection is closed

    def refuse_bad_input(self, conn: Connection, exc: RemoteProtocolError) -> None:
        self.close(conn)
