"""A node's durable state on disk: the Raft log on RocksDB (rocks.py), the small files that must survive
its loss (sidecar.py), and how the raft worker opens, checks and quarantines them (nodelog.py).

This is the I/O side of the Raft log; the pure core (shmraft/raft/) never imports it."""
