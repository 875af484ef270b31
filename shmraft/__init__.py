"""shmraft: a Raft-replicated, totally ordered event log built from processes joined by shared-memory rings."""

__version__ = "0.1.0"
