"""`shmraft`: produce and consume events, and show the leader (the client library's command line).

    shmraft produce hello world          # two events; prints one offset per line once committed
    some-command | shmraft produce       # one event per line of stdin (pipelined)
    shmraft consume --from 0 --json      # every committed event, then exit
    shmraft consume --from 0 --follow    # and keep waiting for new ones
    shmraft --addresses HOST:PORT consume --only-node   # that node's own log, or fail naming it
    shmraft consume --group billing -f   # from the group's committed position, committing as it goes
    shmraft consume --no-verify          # plain FETCH: no end-to-end CRC check of the stored frames
    shmraft groups                       # consumer groups: position, lag, when committed (--json)
    shmraft leader                       # leader id and address, term, commit index

Exit status: 0 on success, 1 when the cluster failed the request, 2 for bad arguments, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from typing import Final, TextIO

from shmraft.client import Client, NoNodeReachable, ShmraftError
from shmraft.client.client import leader_address, member_address
from shmraft.client.consumer import RESET_DEFAULT, RESETS
from shmraft.client.futures import BatchFuture

ADDRESSES_ENV: Final = "SHMRAFT_ADDRESSES"  # default for --addresses when set
TOKEN_FILE_ENV: Final = "SHMRAFT_TOKEN_FILE"  # default for --token-file when set
TLS_CA_ENV: Final = "SHMRAFT_TLS_CA"  # default for --tls-ca when set
STDIN_UNPRINTED_MAX: Final = 10_000  # offsets awaited before reading more of stdin (bounds memory)
STDIN_CHUNK_EVENTS: Final = 1000  # lines handed to Producer.send_many at once
STDIN_READ_BYTES: Final = 256 * 1024  # one read of stdin: what is there now, up to this much
PRODUCE_WINDOW: Final = 8  # requests in flight when producing from stdin
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def _parser() -> argparse.ArgumentParser:
    # The global options are accepted before or after the command: the sub-parsers share them with
    # SUPPRESS defaults so that an option given before the command is not reset by the sub-parser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--addresses",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT,...",
        help=f"client addresses of any nodes (default: ${ADDRESSES_ENV} or the local cluster)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="give up on a request after this long (default 10)",
    )
    common.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"client token for nodes with a client_token_file (default: ${TOKEN_FILE_ENV}); mode 0600",
    )
    common.add_argument(
        "--tls-ca",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"connect with TLS, checking the nodes' certificates against this CA (default: ${TLS_CA_ENV})",
    )
    parser = argparse.ArgumentParser(
        prog="shmraft",
        parents=[common],
        description="Produce and consume events of a shmraft cluster.",
        epilog="Run `shmraft-supervisor up` for a local 3-node cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce", parents=[common], help="produce events; print their offsets once committed")
    p.add_argument("events", nargs="*", metavar="EVENT", help="events (default: one per line of stdin)")
    c = sub.add_parser("consume", parents=[common], help="print committed events from an offset")
    c.add_argument(
        "--from",
        dest="from_offset",
        type=int,
        default=0,
        metavar="OFFSET",
        help="first offset to read (default 0, the start of the log)",
    )
    c.add_argument(
        "--reset",
        choices=RESETS,
        default=RESET_DEFAULT,
        help="an offset below the log start (deleted by retention): read from the earliest event held "
        "(default), from the commit offset (latest), or fail (error)",
    )
    c.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events")
    c.add_argument(
        "--group",
        default=None,
        metavar="NAME",
        help="consume as consumer group NAME: start at its committed position (none yet: at the log start, or "
        "with --reset latest at the end) and commit the position as events are printed (ignores --from)",
    )
    c.add_argument(
        "--only-node",
        action="store_true",
        help="read the log of the one node in --addresses and no other: fail, naming it, if it does not serve "
        "(does not answer, lags behind --from, is not in service), instead of reading another node's log",
    )
    c.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="read with the plain FETCH (events re-encoded by the node) instead of the stored batch frames whose "
        "CRC32 the client checks end to end (the default; a frame that fails the check stops with an error "
        "naming its offset)",
    )
    c.add_argument("--json", action="store_true", help="one JSON object per line: offset, value [, encoding]")
    c.add_argument("--max", type=int, default=None, metavar="N", help="stop after N events")
    c.add_argument("--offsets", action="store_true", help="text output: print 'OFFSET<TAB>VALUE'")
    g = sub.add_parser("groups", parents=[common], help="list consumer groups: position, lag, when committed")
    g.add_argument("--json", action="store_true", help="print one JSON object per group")
    ld = sub.add_parser("leader", parents=[common], help="show the leader, term and commit index")
    ld.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def record_json(offset: int, value: bytes) -> str:
    """One event as a JSON line: the value as text when it is UTF-8, else base64 with "encoding"."""
    try:
        return json.dumps({"offset": offset, "value": value.decode("utf-8")}, ensure_ascii=False)
    except UnicodeDecodeError:
        return json.dumps({"offset": offset, "value": base64.b64encode(value).decode("ascii"), "encoding": "base64"})


def _produce_args(client: Client, events: list[str], out: TextIO) -> int:
    for offset in client.produce_many(events):
        print(offset, file=out)
    return EXIT_OK


def stdin_chunks(stdin: object, chunk_events: int = STDIN_CHUNK_EVENTS) -> Iterator[list[bytes]]:
    """Lines of `stdin` (without their line ends: \\n or \\r\\n) in lists of at most `chunk_events`.

    A binary stream is read with read1, so a chunk holds what has arrived so far: a slow writer's line goes
    out at once, a fast one's lines go out a thousand at a time.
    """
    read1 = getattr(stdin, "read1", None)
    if read1 is None:  # a text stream without a binary buffer (tests, embedding)
        chunk: list[bytes] = []
        for line in stdin:  # type: ignore[attr-defined]
            data = line.encode() if isinstance(line, str) else line
            chunk.append(data.removesuffix(b"\n").removesuffix(b"\r"))
            if len(chunk) >= chunk_events:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    partial = b""
    while data := read1(STDIN_READ_BYTES):
        if partial:
            data = partial + data
        lines = data.split(b"\n")
        partial = lines.pop()
        if b"\r" in data:
            lines = [line.removesuffix(b"\r") for line in lines]
        for i in range(0, len(lines), chunk_events):
            yield lines[i : i + chunk_events]
    if partial:
        yield [partial.removesuffix(b"\r")]


def _produce_stdin(client: Client, out: TextIO) -> int:
    """Each line of stdin is an event (without its line end); offsets are printed in input order."""
    unprinted: deque[BatchFuture] = deque()
    awaited = 0  # events in `unprinted`
    failures = 0

    def print_done(block: bool) -> None:
        nonlocal failures, awaited
        while unprinted and (block or unprinted[0].done()):
            future = unprinted.popleft()
            awaited -= len(future)
            try:
                offsets = future.result()
            except ShmraftError as exc:
                if failures == 0:
                    print(f"shmraft: {exc}", file=sys.stderr)
                failures += len(future)
                continue
            print("\n".join(map(str, offsets)), file=out)

    stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    with client.producer(window=PRODUCE_WINDOW) as producer:
        for chunk in stdin_chunks(stdin):
            unprinted.append(producer.send_many(chunk))
            awaited += len(chunk)
            print_done(block=awaited >= STDIN_UNPRINTED_MAX)
            if failures:
                break
        producer.flush()
    print_done(block=True)
    if failures:
        print(f"shmraft: {failures} events not confirmed committed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _consume(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.from_offset < 0 or (args.max is not None and args.max < 0):
        print("shmraft: --from and --max must not be negative", file=sys.stderr)
        return EXIT_USAGE
    if args.max == 0:
        return EXIT_OK
    count = 0
    records = client.consume(
        args.from_offset, follow=args.follow, reset=args.reset, group=args.group, verify=args.verify
    )
    last = None
    try:
        for offset, value in records:
            if args.json:
                line = record_json(offset, value)
            else:
                text = value.decode("utf-8", "backslashreplace")
                line = f"{offset}\t{text}" if args.offsets else text
            print(line, file=out, flush=args.follow)
            last = offset
            count += 1
            if args.max is not None and count >= args.max:
                break
    finally:
        records.close()  # type: ignore[attr-defined]
    if args.group is not None and last is not None:  # the last record printed counts as consumed too
        client.commit(args.group, last + 1)
    return EXIT_OK


def _groups(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    import datetime

    rows = client.groups()
    if args.json:
        for g in rows:
            print(json.dumps({**g._asdict(), "metadata": g.metadata.decode("utf-8", "backslashreplace")}), file=out)
        return EXIT_OK
    if not rows:
        print("no consumer groups", file=out)
        return EXIT_OK
    width = max(5, *(len(g.group) for g in rows))
    print(f"{'GROUP':<{width}}  {'OFFSET':>12}  {'LAG':>10}  COMMITTED (UTC)          INDEX", file=out)
    for g in rows:
        when = datetime.datetime.fromtimestamp(g.commit_unix_ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        print(f"{g.group:<{width}}  {g.offset:>12}  {g.lag:>10}  {when[:-3]}  {g.index}", file=out)
    return EXIT_OK


def _leader(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.metadata()
    leader = leader_address(answer)
    if args.json:
        print(
            json.dumps(
                {
                    "leader_id": answer.leader_id or None,
                    "leader": leader,
                    "term": answer.term,
                    "commit_index": answer.commit_index,
                    "answered_by": answer.node_id,
                    "members": [{"node_id": m.node_id, "address": member_address(m)} for m in answer.members],
                }
            ),
            file=out,
        )
    elif leader is None:
        print(f"no leader (election in progress?), term {answer.term}, commit index {answer.commit_index}", file=out)
    else:
        print(
            f"leader {answer.leader_id} at {leader}, term {answer.term}, commit index {answer.commit_index}", file=out
        )
    return EXIT_OK if leader is not None else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    addresses = getattr(args, "addresses", None) or os.environ.get(ADDRESSES_ENV) or None
    timeout = getattr(args, "timeout", None)
    token_file = getattr(args, "token_file", None) or os.environ.get(TOKEN_FILE_ENV) or None
    tls_ca = getattr(args, "tls_ca", None) or os.environ.get(TLS_CA_ENV) or None
    only_node = args.command == "consume" and args.only_node
    try:
        token = None
        if token_file is not None:
            from shmraft.net.auth import read_token

            token = read_token(token_file, "--token-file").reveal()
        client = Client(
            addresses,
            tls_ca=tls_ca,
            token=token,
            only_node=only_node,
            **({"timeout_s": timeout} if timeout is not None else {}),
        )
    except ValueError as exc:  # includes ConfigError: a bad token or CA file
        print(f"shmraft: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    try:
        with client:
            if args.command == "leader":
                return _leader(client, args, out)
            if args.command == "groups":
                return _groups(client, args, out)
            client.metadata()  # fail fast, with a clear message, when no node is up; learns the leader
            if args.command == "produce":
                return _produce_args(client, args.events, out) if args.events else _produce_stdin(client, out)
            return _consume(client, args, out)
    except NoNodeReachable as exc:
        print(
            f"shmraft: no node reachable at {', '.join(exc.addresses)} (is `shmraft-supervisor up` running?)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except ShmraftError as exc:
        print(f"shmraft: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
