"""Entry point of a worker process: `python -m shmraft.workers.main KIND CONFIG_JSON` (the supervisor runs it)."""

from __future__ import annotations

import sys

from shmraft.workers.base import load_config, setup_logging


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m shmraft.workers.main {raft,sender,batcher,ingest} CONFIG_JSON", file=sys.stderr)
        return 2
    kind, path = args
    config = load_config(path)
    setup_logging(config.node_id, kind)
    if kind == "raft":
        from shmraft.workers.raft import RaftWorker as cls
    elif kind == "sender":
        from shmraft.workers.sender import SenderWorker as cls
    elif kind == "batcher":
        from shmraft.workers.batcher import BatcherWorker as cls
    elif kind == "ingest":
        from shmraft.workers.ingest import IngestWorker as cls
    else:
        print(f"unknown worker kind {kind!r}", file=sys.stderr)
        return 2
    cls(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
