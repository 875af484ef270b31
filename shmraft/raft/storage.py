"""TRANSITIONAL re-export, not part of the pure core: the RocksDB log moved to shmraft/storage/rocks.py.

Only shmraft/workers/ingest.py still imports this path (it is being split on another branch). Once it
imports `shmraft.storage.rocks`, delete this file and its entry in tests/test_raft_purity.py.
"""

from shmraft.storage.rocks import LogCompactedError, RocksLogReader, StorageError

__all__ = ["LogCompactedError", "RocksLogReader", "StorageError"]
