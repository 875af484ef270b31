"""`shmraft-supervisor`: run a node (or a local 3-node cluster) and report its health."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmraft-supervisor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run a local 3-node cluster, or one node with --config")
    sub.add_parser("status", help="health of every node and worker")
    args = parser.parse_args(argv)
    print(
        f"shmraft-supervisor {args.command}: the node pipeline (ingest, batcher, sender, raft workers under a "
        "supervisor) is not built yet. When it is, `up` starts a local 3-node cluster on 127.0.0.1 with its "
        "data in ./shmraft-data and a live view; today the frame codec, the shared-memory rings and the Raft "
        "core are available as libraries (see README.md).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
