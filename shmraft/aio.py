"""`shmraft.aio`: the asyncio client (AsyncClient, AsyncProducer), re-exported from shmraft.client.aio."""

from shmraft.client.aio import AsyncClient, AsyncProducer, Record

__all__ = ["AsyncClient", "AsyncProducer", "Record"]
