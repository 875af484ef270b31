"""Consumer groups on a real 3-node cluster: positions committed through the native client survive a leader
SIGKILL (read from the new leader, and every node's own table agrees), a group consumer resumes where it left
off and reads every event exactly once across the two runs, and a follower restarted after the others
compacted past it (it installs a snapshot) still has every position; the CLI's `consume --group` and `groups`.

Every test also checks each node's own log against what was acknowledged (`clusterkit.verify`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from clusterkit import Harness, Load, verify, wait_for
from test_snapshot_live import CATCH_UP_S, check_held_logs, log_start, node_field

from shmraft.cli.client import main as cli_main
from shmraft.client import Client, GroupInfo, NodeNotServing, ShmraftError

pytestmark = pytest.mark.slow

EVENTS = 300
FIRST_RUN = 120  # events the first group consumer handles before it stops
GROUPS = {"orders": 64, "billing-é": 6400, "audit": 0}
TINY_RETAIN_ENTRIES = 300


def own_table(h: Harness, node_id: int) -> dict[str, int] | None:
    """The node's own applied groups table (None while it does not answer)."""
    try:
        with Client([h.config(node_id).me.client_address], only_node=True, timeout_s=2.0) as c:
            return {g.group: g.offset for g in c.groups(leader_only=False)}
    except (NodeNotServing, ShmraftError, OSError):
        return None


def wait_tables_agree(h: Harness, want: dict[str, int], nodes: list[int]) -> None:
    for n in nodes:
        wait_for(lambda n=n: own_table(h, n) == want, CATCH_UP_S, f"node {n}'s own table is {want}")


def test_positions_survive_a_leader_kill_and_a_group_consumer_resumes_exactly(tmp_path: Path) -> None:
    h = Harness(tmp_path).start()
    try:
        with h.client() as c:
            offsets = c.produce_many([b"ev-%d" % i for i in range(EVENTS)])
            acked = {b"ev-%d" % i: o for i, o in enumerate(offsets)}
            for group, offset in GROUPS.items():
                assert c.commit(group, offset) > 0
            first: list[int] = []
            records = c.consume(group="reader", auto_commit_events=50)
            for r in records:
                first.append(r.offset)
                if len(first) == FIRST_RUN:
                    break
            records.close()
            c.commit("reader", first[-1] + 1)  # the last record handled counts too (as the CLI does)
            want = {**GROUPS, "reader": first[-1] + 1}
            assert {g.group: g.offset for g in c.groups()} == want
            assert c.committed("nobody") is None

        leader = h.wait_leader()
        h.kill_node(leader)
        new_leader = h.wait_leader(exclude=leader)
        with h.client() as c:
            info = c.committed("reader")
            assert isinstance(info, GroupInfo) and info.offset == first[-1] + 1
            assert info.lag > 0  # events are left for it
            second = [r.offset for r in c.consume(group="reader")]  # resumes where it left off, to the end
            assert c.committed("reader").offset == second[-1] + 1 and c.committed("reader").lag == 0
        assert first + second == offsets  # every event exactly once, in order, across the two runs
        want["reader"] = second[-1] + 1
        live = [n for n in h.node_ids if n != leader]
        wait_tables_agree(h, want, live)
        assert new_leader in live

        h.start_node(leader)  # the old leader's table, rebuilt from its own log at start, agrees too
        wait_tables_agree(h, want, h.node_ids)
        verify(h, acked)
    finally:
        h.stop()


def test_a_follower_restarted_after_compaction_still_has_the_positions(tmp_path: Path, capsys) -> None:
    h = Harness(tmp_path, retain_entries_max=TINY_RETAIN_ENTRIES).start()
    try:
        leader = h.wait_leader()
        follower = next(n for n in h.node_ids if n != leader)
        with h.client() as c:
            for group, offset in GROUPS.items():
                c.commit(group, offset)
        h.wait_commit_equal(CATCH_UP_S)
        h.kill_node(follower)
        held_by_follower = h.commit_indexes()[leader]
        with h.client() as c:
            c.commit("while-down", 128)  # a position the follower never saw as an entry
        with Load(h, tag="down", events_per_call=200) as load:
            wait_for(
                lambda: all(log_start(h, n) > held_by_follower + 1 for n in h.node_ids if n != follower),
                CATCH_UP_S * 2,
                "the live nodes compacted past the follower's log end",
            )
        h.start_node(follower)
        wait_for(lambda: node_field(h, follower, "snapshots_installed") >= 1, CATCH_UP_S, "the follower installed")
        want = {**GROUPS, "while-down": 128}
        wait_tables_agree(h, want, h.node_ids)

        # the follower restarted once more: its table comes from its own saved snapshot plus its tail
        h.kill_node(follower)
        h.start_node(follower)
        wait_tables_agree(h, want, [follower])

        # the command line: consume as a group, then list the groups
        addresses = ",".join(h.addresses)
        assert cli_main(["--addresses", addresses, "consume", "--group", "cli", "--max", "5", "--offsets"]) == 0
        printed = [int(line.split("\t")[0]) for line in capsys.readouterr().out.splitlines()]
        assert len(printed) == 5
        assert cli_main(["--addresses", addresses, "groups", "--json"]) == 0
        rows = {r["group"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        assert rows["cli"]["offset"] == printed[-1] + 1 and rows["orders"]["offset"] == GROUPS["orders"]
        assert cli_main(["--addresses", addresses, "consume", "--group", "cli", "--max", "1", "--offsets"]) == 0
        (again,) = capsys.readouterr().out.splitlines()
        assert int(again.split("\t")[0]) > printed[-1]  # resumed after what was printed, nothing repeated
        assert cli_main(["--addresses", addresses, "groups"]) == 0
        table = capsys.readouterr().out
        assert table.startswith("GROUP") and "while-down" in table
        check_held_logs(h, load.acked)
    finally:
        h.stop()


def test_the_asyncio_client_commits_resumes_and_follows_a_leader_kill(tmp_path: Path) -> None:
    from shmraft.aio import AsyncClient

    h = Harness(tmp_path).start()
    try:
        with h.client() as c:
            offsets = c.produce_many([b"a-%d" % i for i in range(EVENTS)])

        async def first_run() -> list[int]:
            async with AsyncClient(h.addresses, timeout_s=20) as ac:
                got: list[int] = []
                records = ac.consume(group="aio", auto_commit_events=25)
                async for r in records:
                    got.append(r.offset)
                    if len(got) == FIRST_RUN:
                        break
                await records.aclose()
                await ac.commit("aio", got[-1] + 1)
                assert (await ac.committed("aio")).offset == got[-1] + 1
                assert await ac.committed("nobody") is None
                return got

        first = asyncio.run(first_run())
        leader = h.wait_leader()
        h.kill_node(leader)

        async def second_run() -> tuple[list[int], list[str]]:
            async with AsyncClient(h.addresses, timeout_s=20) as ac:
                got = [r.offset async for r in ac.consume(group="aio")]
                return got, [g.group for g in await ac.groups()]

        second, names = asyncio.run(second_run())
        assert first + second == offsets and names == ["aio"]
        wait_tables_agree(h, {"aio": offsets[-1] + 1}, [n for n in h.node_ids if n != leader])
        h.start_node(leader)
        wait_tables_agree(h, {"aio": offsets[-1] + 1}, h.node_ids)
    finally:
        h.stop()
