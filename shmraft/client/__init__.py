"""The shmraft client library: `Client` (blocking produce, consume, metadata) and `Producer` (pipelined).

from shmraft.client import Client

with Client() as client:                      # the local cluster; or Client(["host:7101", ...])
    offset = client.produce(b"hello")         # returns once committed on a majority
    for offset, value in client.consume(0):   # committed events, in log order
        ...
    with client.producer(window=8) as producer:
        futures = [producer.send(e) for e in events]   # each resolves with its offset
        batch = producer.send_many(events)             # one future, resolves with the list of offsets

async with AsyncClient() as client:          # the same from asyncio (shmraft.aio)
    offset = await client.produce(b"hello")
"""

from shmraft.client.aio import AsyncClient, AsyncProducer
from shmraft.client.client import Client, GroupInfo, Record
from shmraft.client.errors import (
    BufferFull,
    CommitTimeout,
    ConnectionFailed,
    GroupNameTooLong,
    IntegrityError,
    MalformedRequest,
    NodeNotServing,
    NoNodeReachable,
    NotLeaderError,
    OffsetOutOfRange,
    OutOfOrderSequence,
    ProducerClosed,
    SequenceTooOld,
    ShmraftError,
    ShuttingDown,
    TooLarge,
    TooManyGroups,
    Unauthorized,
    UnavailableError,
    UnknownGroup,
)
from shmraft.client.futures import BatchFuture, EventFuture
from shmraft.client.producer import Producer

__all__ = [
    "AsyncClient",
    "AsyncProducer",
    "BatchFuture",
    "BufferFull",
    "Client",
    "CommitTimeout",
    "ConnectionFailed",
    "EventFuture",
    "GroupInfo",
    "GroupNameTooLong",
    "IntegrityError",
    "MalformedRequest",
    "NoNodeReachable",
    "NodeNotServing",
    "NotLeaderError",
    "OffsetOutOfRange",
    "OutOfOrderSequence",
    "Producer",
    "ProducerClosed",
    "Record",
    "SequenceTooOld",
    "ShmraftError",
    "ShuttingDown",
    "TooLarge",
    "TooManyGroups",
    "Unauthorized",
    "UnavailableError",
    "UnknownGroup",
]
