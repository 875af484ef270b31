"""shmraft: a Raft-replicated, totally ordered event log built from processes joined by shared-memory rings."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`shmraft.Client` and `shmraft.Producer`, imported on first use so that `import shmraft` stays cheap."""
    if name in ("Client", "Producer"):
        import shmraft.client

        return getattr(shmraft.client, name)
    raise AttributeError(f"module 'shmraft' has no attribute {name!r}")
