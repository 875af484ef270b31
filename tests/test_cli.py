"""The `shmraft` command line against fake nodes: produce (arguments and stdin), consume (text, JSON with base64
for non-UTF-8 values, --max), leader, errors; once through the installed console script."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_node import FakeCluster

from shmraft.cli.client import main, stdin_chunks
from shmraft.client import Client

SCRIPT = Path(sys.executable).with_name("shmraft")  # the console script installed beside this interpreter
SUBPROCESS_TIMEOUT_S = 20


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    c = FakeCluster(3)
    try:
        yield c
    finally:
        c.stop()


def args(cluster: FakeCluster, *rest: str) -> list[str]:
    return ["--addresses", ",".join(cluster.addresses), "--timeout", "3", *rest]


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_produce_arguments_then_consume_json(cluster: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(cluster, "produce", "hello", "wörld")) == 0
    assert capsys.readouterr().out.split() == ["64", "65"]
    with Client(cluster.addresses, timeout_s=3) as cl:
        cl.produce(b"\xff\x00binary")
    assert main(args(cluster, "consume", "--from", "0", "--json")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[:2] == [{"offset": 64, "value": "hello"}, {"offset": 65, "value": "wörld"}]
    assert rows[2]["encoding"] == "base64" and base64.b64decode(rows[2]["value"]) == b"\xff\x00binary"


def test_produce_stdin_lines_in_order(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"line {i}" for i in range(300)]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
    assert main(args(cluster, "produce")) == 0
    offsets = [int(x) for x in capsys.readouterr().out.split()]
    assert len(offsets) == 300 and offsets == sorted(set(offsets))
    assert cluster.log.values() == [line.encode() for line in lines]


def test_produce_stdin_in_chunks_with_crlf_and_no_final_newline(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"event {i}" for i in range(5000)]
    raw = ("\r\n".join(lines[:2500]) + "\r\n" + "\n".join(lines[2500:])).encode()  # no newline at the end
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(args(cluster, "produce")) == 0
    offsets = [int(x) for x in capsys.readouterr().out.split()]
    assert len(offsets) == 5000 and offsets == sorted(set(offsets))
    assert cluster.log.values() == [line.encode() for line in lines]
    assert cluster.node(1).produce_requests <= 12  # batches of up to 1024 events, not one per line


def test_stdin_chunks_follow_what_has_arrived() -> None:
    class Pipe:  # read1 returns what a writer has written so far
        def __init__(self, pieces: list[bytes]) -> None:
            self.pieces = pieces

        def read1(self, size: int) -> bytes:
            return self.pieces.pop(0) if self.pieces else b""

    pieces = [b"a\nb", b"c\r\n", b"\n", b"d\n" * 2500, b"e\r", b"\nlast"]
    chunks = list(stdin_chunks(Pipe(pieces), chunk_events=1000))
    assert chunks[:3] == [[b"a"], [b"bc"], [b""]]  # an empty line is an (empty) event, as before
    assert [len(c) for c in chunks[3:]] == [1000, 1000, 500, 1, 1] and chunks[-2:] == [[b"e"], [b"last"]]
    assert list(stdin_chunks(io.StringIO("x\ny\n"), chunk_events=1)) == [[b"x"], [b"y"]]


def test_consume_text_max_and_from(cluster: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(cluster.addresses, timeout_s=3) as cl:
        offsets = cl.produce_many([b"a", b"b", b"c"])
    assert main(args(cluster, "consume", "--max", "2")) == 0
    assert capsys.readouterr().out == "a\nb\n"
    assert main(args(cluster, "consume", "--from", str(offsets[1]), "--offsets")) == 0
    assert capsys.readouterr().out == f"{offsets[1]}\tb\n{offsets[2]}\tc\n"


def test_consume_checks_frames_by_default_and_no_verify_uses_the_plain_fetch(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(cluster.addresses, timeout_s=3) as cl:
        offsets = cl.produce_many([b"a", b"b", b"c"])
    for n in cluster.nodes:
        n.corrupt_frame_index = offsets[0] // 64  # a stored frame whose last payload byte flipped: only its CRC tells
    assert main(args(cluster, "consume")) == 1  # FETCH_FRAMES, checked end to end
    captured = capsys.readouterr()
    assert captured.out == "" and f"offset {offsets[0] // 64 * 64}" in captured.err, captured.err
    assert main(args(cluster, "consume", "--no-verify", "--offsets")) == 0  # FETCH: the node re-encodes events
    assert capsys.readouterr().out == "".join(f"{o}\t{v}\n" for o, v in zip(offsets, "abc", strict=True))
    helped = subprocess.run(
        [str(SCRIPT), "consume", "--help"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=True
    )
    assert "--no-verify" in helped.stdout


def test_consume_only_node_fails_naming_a_hung_node_instead_of_reading_another(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(cluster.addresses, timeout_s=3) as cl:
        cl.produce_many([b"a", b"b"])
    node = cluster.node(3)
    only = ["--addresses", node.address, "--timeout", "1"]
    assert main([*only, "consume", "--only-node"]) == 0
    assert capsys.readouterr().out == "a\nb\n"
    node.hang()  # like SIGSTOP: connections are accepted, nothing answers
    try:
        assert main([*only, "consume", "--only-node"]) == 1
        captured = capsys.readouterr()
    finally:
        node.resume()
    assert captured.out == ""
    assert captured.err.startswith(f"shmraft: node {node.address} did not serve") and captured.err.count("\n") == 1
    assert main(["--addresses", ",".join(cluster.addresses), "consume", "--only-node"]) == 2
    assert "exactly one address" in capsys.readouterr().err


def test_leader_text_and_json(cluster: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.set_leader(2)
    assert main(args(cluster, "leader")) == 0
    assert capsys.readouterr().out.startswith(f"leader 2 at {cluster.node(2).address}, term ")
    assert main(args(cluster, "leader", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["leader_id"] == 2 and doc["leader"] == cluster.node(2).address and len(doc["members"]) == 3
    cluster.set_leader(0)
    assert main(args(cluster, "leader")) == 1
    assert capsys.readouterr().out.startswith("no leader")


def test_error_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    dead = [dead_address(), dead_address()]
    for command in (["produce", "x"], ["consume"], ["leader"]):
        assert main(["--addresses", ",".join(dead), "--timeout", "0.5", *command]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"shmraft: no node reachable at {dead[0]}, {dead[1]}") and err.count("\n") == 1
        assert "shmraft-supervisor up" in err
    assert main(["--addresses", "nonsense", "leader"]) == 2


def test_console_script(cluster: FakeCluster) -> None:
    run = [str(SCRIPT), "--addresses", ",".join(cluster.addresses), "--timeout", "3"]
    done = subprocess.run(
        [*run, "produce"], input=b"one\ntwo\n", capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"64", b"65"]
    done = subprocess.run([*run, "consume", "--json"], capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == ["one", "two"]
    done = subprocess.run(
        [str(SCRIPT), "--addresses", dead_address(), "leader"],
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1 and done.stderr.startswith(b"shmraft: no node reachable at ")
