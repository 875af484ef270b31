"""`shmraft-supervisor rebuild-node` (issue 12 item 3): a follower whose data directory is wiped rejoins a real
3-node cluster under load. The command asks the live members for their term, refuses what it must (the node
running, a log still there without --force, a node that is not a member, no member answering and no
--min-term), and the rebuilt node never votes before it holds a committed entry of its recovery term.

Here the cluster has not compacted, so the rebuilt node catches up by appends; catching up through a snapshot
after compaction needs InstallSnapshot (tests of the snapshot branches and tools/chaos.py
follower-past-retention)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clusterkit import Harness, Load, verify, wait_for

from shmraft.cli.supervisor import main as supervisor_main
from shmraft.config import local_cluster
from shmraft.storage.sidecar import HardStateFile
from shmraft.supervisor.cluster import free_port_base
from shmraft.supervisor.rebuild import RebuildError, log_is_locked, rebuild_node
from shmraft.supervisor.status import node_status

WAIT_S = 60.0


def cli_args(h: Harness, data_dir: Path, node: int, *rest: str) -> list[str]:
    """rebuild-node arguments naming the harness's local cluster the way `up` would."""
    me = h.config(1).me
    port_base = me.client_port - 100 * 1 - 1
    assert h.config(1).members[0].client_port == port_base + 101
    return [
        "rebuild-node",
        "--node",
        str(node),
        "--data-dir",
        str(data_dir),
        "--port-base",
        str(port_base),
        "--cluster-id",
        h.cluster_id,
        *rest,
    ]


def test_refusals_without_a_cluster(tmp_path: Path) -> None:
    """No processes: a node that is not a member; no member answering and no --min-term (nothing written);
    with --min-term the node is prepared to recover at that term."""
    configs = local_cluster(tmp_path, port_base=free_port_base(3), cluster_id="rb")
    with pytest.raises(RebuildError, match="node 7 is not a member"):
        rebuild_node(configs, 7)
    with pytest.raises(RebuildError, match="--min-term"):
        rebuild_node(configs, 3)
    assert not HardStateFile(configs[2].node_dir).exists()
    with pytest.raises(RebuildError, match="expected >= 1"):
        rebuild_node(configs, 3, min_term=0)
    plan = rebuild_node(configs, 3, min_term=5)
    assert plan.recovery_term == 5 and sorted(plan.unreachable) == [1, 2] and plan.moved_log is None
    saved = HardStateFile(configs[2].node_dir).read()
    assert saved is not None and (saved.term, saved.vote, saved.recovering, saved.recovery_term) == (5, 0, True, 5)


def test_wiped_follower_is_rebuilt_and_catches_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = Harness(tmp_path).start()
    try:
        with Load(h, tag="rebuild") as load:
            load.wait_acked(300, WAIT_S)
            node = h.followers()[0]
            node_dir = h.config(node).node_dir
            assert supervisor_main(cli_args(h, tmp_path, node)) == 2
            assert "is running" in capsys.readouterr().err
            h.kill_node(node)
            log_dir = node_dir / "log"  # a killed worker's lock goes with its process, a moment after the signal
            wait_for(lambda: not log_is_locked(log_dir), WAIT_S, f"node {node}'s log lock released")
            assert supervisor_main(cli_args(h, tmp_path, node)) == 2
            assert "still holds a log" in capsys.readouterr().err
            assert supervisor_main(cli_args(h, tmp_path, 9)) == 2
            assert "not a member" in capsys.readouterr().err

            shutil.rmtree(node_dir)  # the dead disk
            before = len(load.acked)
            wait_for(lambda: len(load.acked) >= before + 300, WAIT_S, "acks while the node is gone")
            terms = {n: h.state(n)["term"] for n in h.node_ids if n != node}
            assert supervisor_main(cli_args(h, tmp_path, node)) == 0
            out = capsys.readouterr().out
            assert "recovering mode" in out, out
            saved = HardStateFile(node_dir).read()
            assert saved is not None and saved.recovering
            assert saved.recovery_term > max(terms.values()), (saved, terms)

            h.restart_node(node)
            target = h.state(h.wait_leader())["commit_index"]

            def caught_up() -> bool:
                st = node_status(h.config(node))
                return st.get("recovering") is False and (st.get("commit_index") or 0) >= target

            wait_for(caught_up, WAIT_S, f"node {node} to leave recovering mode and reach commit {target}")
            assert "recovery complete" in h.node_log(node)
            before = len(load.acked)
            wait_for(lambda: len(load.acked) >= before + 300, WAIT_S, f"acks after node {node} rejoined")
        verify(h, load.acked)
        # the rebuilt node's own log, read from it alone, holds everything acknowledged
        assert len(h.read_log(node)) >= len(load.acked)
    finally:
        h.stop()
