"""Storage faults on a real 3-node cluster under load (issue 6): a full disk on a follower and then on the
leader (each node's data directory on its own small tmpfs; root only), and corruption of a stopped follower's
RocksDB files in several ways. The node must say why it stopped, never crash-loop, recover by itself (space
back / re-fetch from the others), and every acknowledged event must end up on every node exactly once."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from clusterkit import Harness, Load, verify, wait_for

from shmraft.client import Client
from shmraft.faults.disk import (
    can_mount,
    corrupt_rocksdb_as,
    corruption_kinds,
    fill_disk,
    free_disk,
    mount_small_disk,
    node_log_dir,
    unmount_small_disk,
)
from shmraft.ipc.state import Worker
from shmraft.storage.rocks import RocksLogStorage
from shmraft.supervisor.status import node_status
from shmraft.wire.frame import decode_batch

DISK_BYTES = 48 * 1024 * 1024
FAULT_WAIT_S = 30.0
RECOVER_WAIT_S = 60.0


def storage_of(h: Harness, node_id: int) -> dict:
    st = node_status(h.config(node_id))
    return {k: st.get(k) for k in ("status", "storage", "recovering", "quarantines", "commit_index", "role")}


def commit_of(h: Harness, node_id: int) -> int:
    s = h.state(node_id)
    return s["commit_index"] if s else -1


def check_logs_on_disk(h: Harness) -> None:
    """Reopen every node's log (stopped cluster): every entry's checksum and index continuity (verify), and
    every frame's own CRC (decode_batch)."""
    for c in h.configs:
        with RocksLogStorage(node_log_dir(c.node_dir)) as s:
            assert s.verify() == s.last_index() - s.first_index() + 1
            lo = s.first_index()
            while lo <= s.last_index():
                entries = s.entries(lo, s.last_index() + 1, 8 * 1024 * 1024)
                for e in entries:
                    if e.data:
                        decode_batch(e.data)
                lo = entries[-1].index + 1


def wait_committing(h: Harness, load: Load, what: str, more: int = 200) -> None:
    """The cluster acknowledges `more` new events."""
    target = len(load.acked) + more
    wait_for(
        lambda: len(load.acked) >= target,
        FAULT_WAIT_S,
        f"{more} more acknowledged events {what} (errors {load.errors})",
    )


def fill_and_recover(h: Harness, load: Load, node: int, was_leader: bool) -> None:
    restarts = h.restarts(node, Worker.RAFT)
    filler = fill_disk(h.config(node).node_dir)
    try:
        wait_for(
            lambda: storage_of(h, node)["storage"] == "disk_full", FAULT_WAIT_S, f"node {node} to report disk_full"
        )
        if was_leader:
            h.wait_leader(timeout_s=FAULT_WAIT_S, exclude=node)
        assert storage_of(h, node)["role"] != "leader"
        wait_committing(h, load, f"while node {node}'s disk is full")
        time.sleep(1.5)  # a few retry intervals while still full: the worker must stay up and keep retrying
        assert storage_of(h, node)["storage"] == "disk_full"
    finally:
        free_disk(filler)
    wait_for(lambda: storage_of(h, node)["storage"] == "ok", FAULT_WAIT_S, f"node {node} to recover its disk")
    target = commit_of(h, h.wait_leader())
    wait_for(lambda: commit_of(h, node) >= target, RECOVER_WAIT_S, f"node {node} to catch up to {target}")
    assert h.restarts(node, Worker.RAFT) == restarts, "the raft worker was restarted (crash) on a full disk"
    assert storage_of(h, node)["quarantines"] == 0  # a full disk is not corruption


def test_full_disk_on_a_follower_then_on_the_leader(tmp_path: Path) -> None:
    reason = can_mount()
    if reason:
        pytest.skip(reason)
    h = Harness(tmp_path, storage_retry_interval_ms=200)
    mounted = []
    try:
        for c in h.configs:
            mount_small_disk(c.node_dir, DISK_BYTES)
            mounted.append(c.node_dir)
        h.start()
        with Load(h, tag="full") as load:
            load.wait_acked(500, FAULT_WAIT_S)
            follower = h.followers()[0]
            fill_and_recover(h, load, follower, was_leader=False)
            leader = h.wait_leader()
            fill_and_recover(h, load, leader, was_leader=True)
            wait_committing(h, load, "after both recoveries")
        verify(h, load.acked)
        log_text = (h.log_dir / f"node{follower}.log").read_text(errors="replace")
        assert "DISK FULL" in log_text and "storage usable again" in log_text
        h.stop()
        check_logs_on_disk(h)
    finally:
        try:
            h.stop()
        finally:
            for path in mounted:
                unmount_small_disk(path)


# (stop how, corruption kind): SIGKILL leaves the newest entries in the WAL; a clean stop flushes them to an SST
ROUNDS = (("kill", "wal_flip"), ("stop", "sst_flip"), ("kill", "manifest_garble"), ("kill", "wal_truncate"))


def test_corrupt_follower_detects_quarantines_and_refetches(tmp_path: Path) -> None:
    h = Harness(tmp_path).start()
    rng = random.Random(6)
    try:
        with Load(h, tag="corrupt") as load:
            load.wait_acked(300, FAULT_WAIT_S)
            for how, kind in ROUNDS:
                node = h.followers()[0]
                node_dir = h.config(node).node_dir
                if how == "kill":
                    h.kill_node(node)
                else:
                    h.cluster.stop_node(node)
                log_dir = node_log_dir(node_dir)
                assert kind in corruption_kinds(log_dir), (kind, corruption_kinds(log_dir))
                what = corrupt_rocksdb_as(log_dir, kind, rng)
                before = set(node_dir.glob("log.corrupt-*"))
                wait_committing(h, load, f"while node {node} is down", more=100)
                h.restart_node(node)
                # the new quarantined copy is the evidence (a SIGKILLed node's old state block may still be read)
                wait_for(
                    lambda d=node_dir, b=before: set(d.glob("log.corrupt-*")) - b,
                    FAULT_WAIT_S,
                    f"node {node} to detect and quarantine {what}",
                )
                wait_for(
                    lambda n=node: (storage_of(h, n)["quarantines"] or 0) >= 1,
                    FAULT_WAIT_S,
                    f"node {node} to report the quarantine",
                )
                target = commit_of(h, h.wait_leader())
                wait_for(
                    lambda n=node, t=target: not storage_of(h, n)["recovering"] and commit_of(h, n) >= t,
                    RECOVER_WAIT_S,
                    f"node {node} to re-fetch the log up to {target} after {what}",
                )
                assert storage_of(h, node)["storage"] == "ok"
                wait_committing(h, load, f"after node {node} recovered from {kind}", more=100)
        reference = verify(h, load.acked)
        # consumers reading from the recovered node see the same log as on disk everywhere
        with Client([h.config(node).me.client_address], timeout_s=20.0, **h.client_options) as c:
            fetched = [(r.offset, r.value) for r in c.consume(0)]
        assert fetched == reference, "a fetch from the recovered node differs from the log on disk"
        logs = "".join((h.log_dir / f"node{c.node_id}.log").read_text(errors="replace") for c in h.configs)
        assert logs.count("CORRUPT LOG detected") >= len(ROUNDS) and "recovery complete" in logs
        h.stop()
        check_logs_on_disk(h)
    finally:
        h.stop()
