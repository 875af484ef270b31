"""Reading one node's log really reads that node, on a real cluster: a follower stuck behind (its raft worker
or its whole node stopped while the others commit more) is reported by the verifiers (the driver's read_log,
clusterkit's verify, `shmraft consume --only-node`) with its name, instead of passing with another node's log;
once resumed it catches up and verify passes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterkit import Harness, verify

from shmraft.cli.client import main
from shmraft.client import Client, NodeNotServing
from shmraft.ipc.state import Worker
from shmraft.wire.client import ErrorCode

pytestmark = pytest.mark.slow

STUCK_READ_TIMEOUT_S = 3.0  # the short deadline a read of a stuck node gets
STALL_TIMEOUT_MS = 120_000  # the stopped raft worker must stay stuck, not be restarted by its supervisor
LATER_REQUESTS = 5  # separate produce calls while a follower is stuck: its log end falls several entries behind


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(Path(tmp_path_factory.mktemp("only-node")), worker_stall_timeout_ms=STALL_TIMEOUT_MS)
    try:
        h.start()
        yield h
    finally:
        h.stop()


def produce(harness: Harness, tag: str, calls: int) -> dict[bytes, int]:
    acked: dict[bytes, int] = {}
    with harness.client() as client:
        for i in range(calls):
            values = [f"{tag}-{i}-{j}".encode() for j in range(10)]
            acked.update(zip(values, client.produce_many(values), strict=True))
    return acked


def test_a_follower_whose_raft_worker_is_stuck_serves_its_own_short_log_and_fails_verify(harness: Harness) -> None:
    acked = produce(harness, "before", 1)
    harness.wait_commit_equal()
    follower = harness.followers()[0]
    address = harness.config(follower).me.client_address
    pid = harness.pause_worker(follower, Worker.RAFT)
    try:
        acked |= produce(harness, "while-stuck", LATER_REQUESTS)
        full = harness.read_log(harness.wait_leader())
        stuck = harness.read_log(follower, STUCK_READ_TIMEOUT_S)  # what the follower serves: its own log
        assert len(stuck) < len(full) and stuck == full[: len(stuck)]
        last_offset = full[-1][0]
        with Client([address], timeout_s=STUCK_READ_TIMEOUT_S, only_node=True) as client:
            client.metadata()  # it names the leader: a client bound to the follower must still not go there
            with pytest.raises(NodeNotServing, match=re.escape(address)) as info:
                list(client.consume(last_offset))
            assert info.value.code is ErrorCode.OFFSET_OUT_OF_RANGE and "past this node's log end" in str(info.value)
        with pytest.raises(AssertionError, match=rf"node\(s\) \[{follower}\] behind") as failed:
            verify(harness, acked, timeout_s=STUCK_READ_TIMEOUT_S)
        assert f"node {follower}: {len(stuck)}" in str(failed.value)
    finally:
        harness.resume_worker(pid)
    verify(harness, acked)


def test_a_stopped_follower_is_named_by_read_log_verify_and_the_cli(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    acked = produce(harness, "before-stop", 1)
    harness.wait_commit_equal()
    follower = harness.followers()[0]
    address = harness.config(follower).me.client_address
    harness.pause_node(follower)
    try:
        acked |= produce(harness, "while-stopped", LATER_REQUESTS)
        with pytest.raises(NodeNotServing, match=re.escape(f"node {address} ")) as info:
            harness.read_log(follower, STUCK_READ_TIMEOUT_S)
        assert info.value.address == address
        with pytest.raises(AssertionError, match=re.escape(f"node {follower}: node {address} did not serve")):
            verify(harness, acked, timeout_s=STUCK_READ_TIMEOUT_S)
        cli = ["--addresses", address, "--timeout", str(STUCK_READ_TIMEOUT_S), "consume", "--only-node"]
        capsys.readouterr()
        assert main(cli) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"shmraft: node {address} did not serve")
    finally:
        harness.resume_node(follower)
    verify(harness, acked)
