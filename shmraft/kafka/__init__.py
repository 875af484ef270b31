"""Kafka's wire protocol as pure, sans-I/O code (no sockets, no clock, no shared memory), in the manner of h11.

Bytes in, typed requests out (`framing.FrameReader`, `codec.decode_request`); typed responses in, bytes
out (`codec.encode_response`); record batches v2 both ways (`records`); errors that say which side broke
the protocol (`errors`). The APIs and versions served, and why, are in `versions`; the mapping onto
shmraft's log is in docs/KAFKA.md.
"""
