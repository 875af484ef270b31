"""`shmraft`: produce and consume events (the client library's command line)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("produce", help="produce events")
    sub.add_parser("consume", help="consume committed events from an offset")
    sub.add_parser("leader", help="show the current leader")
    args = parser.parse_args(argv)
    print(f"shmraft {args.command}: the client protocol is not built yet (see README.md).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
