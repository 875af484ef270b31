"""Issue 13's "done when": an operator replaces every node of a running three-node cluster, one at a time, with
loadgen's producers running the whole time, and loadgen's verification finds nothing lost, duplicated or
divergent on the nodes left (none of them an original one), each read from its own log.

Real processes, shared memory, RocksDB and TCP. The load is tools/loadgen.py's own producer processes and its
`verify` (the library entry points tools/chaos.py uses too): the producers are given the three original
addresses only and must follow the members through METADATA as the cluster moves to new ports.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from clusterkit import Harness, verify, wait_for

from shmraft.client import ShmraftError, admin
from shmraft.client.errors import NotCaughtUp
from shmraft.net.auth import cluster_secret
from shmraft.wire import client as cp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import loadgen as lg  # noqa: E402

ORIGINAL_NODES = (1, 2, 3)
REPLACEMENT_OF = {1: 4, 2: 5, 3: 6}  # each original node and the node (new id, new ports, empty disk) replacing it
LOAD_RATE_EVENTS_PER_S = 800.0  # open loop, in all: steady load that leaves CPU for four nodes on two cores
LOAD_PRODUCERS = 2
EVENT_BYTES = 100
CLIENT_TIMEOUT_S = 10.0
LOAD_DURATION_CAP_S = 900.0  # the producers stop when told to; this only bounds a run gone wrong
CHANGE_TIMEOUT_S = 30.0  # one membership change committed
CATCH_UP_WAIT_S = 120.0  # a new learner promoted (it retries NOT_CAUGHT_UP until then)
SETTLE_WAIT_S = 60.0  # a committed configuration seen, a removed node knowing it
ACKED_STEP_EVENTS = 300  # after each replacement the producers get this many more events acknowledged ...
ACKED_STEP_WAIT_S = 90.0  # ... within this long
PRODUCER_DRAIN_S = CLIENT_TIMEOUT_S + 30.0
VERIFY_WAIT_S = 120.0
PROMOTE_RETRY_PAUSE_S = 0.2


def _change(h: Harness, op: cp.ChangeOp, node_id: int, **kw) -> int:
    return admin.change_member(
        h.addresses,
        op,
        node_id,
        secret=cluster_secret(h.configs[0]),
        cluster_id=h.cluster_id,
        timeout_s=CHANGE_TIMEOUT_S,
        **kw,
    )


def _join(h: Harness, node_id: int) -> None:
    """What `shmraft-supervisor join` does: add the node as a learner on its own fresh ports, start it with an
    empty data dir, and promote it once the leader says it has caught up (NOT_CAUGHT_UP until then)."""
    config = h.new_node_config(node_id)
    _change(h, cp.ChangeOp.ADD_LEARNER, node_id, member=config.me)
    h.start_node(node_id)
    deadline = time.monotonic() + CATCH_UP_WAIT_S
    while True:
        try:
            _change(h, cp.ChangeOp.PROMOTE, node_id)
            return
        except NotCaughtUp:
            assert time.monotonic() < deadline, f"node {node_id} never caught up"
            time.sleep(PROMOTE_RETRY_PAUSE_S)


def _wait_voters(h: Harness, voters: list[int]) -> admin.Membership:
    """Until the leader's configuration in effect is committed with exactly these voters and no learner."""

    def settled(view: admin.Membership) -> bool:
        return sorted(m.node_id for m in view.members) == sorted(voters) and not view.change_pending

    return wait_for(
        lambda: admin.list_members(h.addresses),
        SETTLE_WAIT_S,
        f"voters {voters}",
        accept=lambda v: settled(v) and all(m.role == "voter" for m in v.members),
        retry_on=(ShmraftError,),
    )


def _acked(pool: lg.ProducerPool) -> int:
    return int(pool.per_producer[:, lg.ST_ACKED].sum())


def _wait_more_acked(pool: lg.ProducerPool, count: int, what: str) -> None:
    target = _acked(pool) + count
    wait_for(lambda: _acked(pool) >= target, ACKED_STEP_WAIT_S, f"{count} more events acknowledged {what}")
    assert pool.any_alive(), "the producers stopped"


@pytest.mark.slow
def test_replace_every_node_one_at_a_time_under_load(tmp_path: Path) -> None:
    h = Harness(tmp_path, nodes=len(ORIGINAL_NODES)).start()
    pool: lg.ProducerPool | None = None
    try:
        run_id = f"ra{time.monotonic_ns() % 10**6}"
        original_addresses = list(h.addresses)
        lg.warm_up(original_addresses, run_id)
        opts = {
            "run_id": run_id,
            "addresses": original_addresses,  # the producers know only the original nodes
            "size": EVENT_BYTES,
            "batch": 32,
            "window": 8,
            "linger_ms": 1.0,
            "rate": LOAD_RATE_EVENTS_PER_S,
            "producers": LOAD_PRODUCERS,
            "duration": LOAD_DURATION_CAP_S,
            "quota": None,
            "client_timeout": CLIENT_TIMEOUT_S,
        }
        pool = lg.ProducerPool(opts, str(tmp_path), "loadgen-out-").start()
        _wait_more_acked(pool, ACKED_STEP_EVENTS, "before the first change")
        voters = list(ORIGINAL_NODES)
        for old in ORIGINAL_NODES:
            new = REPLACEMENT_OF[old]
            _join(h, new)  # add first: the cluster keeps tolerating a failure while the old node is replaced
            voters.append(new)
            _wait_voters(h, voters)
            _change(h, cp.ChangeOp.REMOVE, old)  # the leader too, when it is `old`: it steps down once committed
            voters.remove(old)
            _wait_voters(h, voters)
            wait_for(lambda o=old: (h.state(o) or {}).get("removed") == 1, SETTLE_WAIT_S, f"node {old} to know")
            h.local.stop_node(old)
            h.forget_node(old)
            _wait_more_acked(pool, ACKED_STEP_EVENTS, f"after node {old} was replaced by node {new}")
        pool.join(PRODUCER_DRAIN_S)
        got = pool.results(run_id, want_values=True)
        view = _wait_voters(h, list(REPLACEMENT_OF.values()))
        assert not {m.node_id for m in view.members} & set(ORIGINAL_NODES), "an original node is still a member"
        assert sorted(h.node_ids) == sorted(REPLACEMENT_OF.values())

        v = lg.verify(run_id, h.addresses, got.values, got.generated, h, print, wait_s=VERIFY_WAIT_S)
        summary = {k: v[k] for k in ("acknowledged", "found", "lost", "duplicated", "divergent", "behind")}
        assert len(got.values) > len(ORIGINAL_NODES) * ACKED_STEP_EVENTS, summary
        assert (v["lost"], v["duplicated"], v["divergent"]) == (0, 0, 0), summary
        assert (v["behind"], v["invented"], v["misplaced"], v["read_errors"]) == (0, 0, 0, {}), v
        assert v["nodes_read"] == len(REPLACEMENT_OF), v
        verify(h, got.values)  # and again: each node's own log (only_node), the same, every ack at its offset
    finally:
        if pool is not None:
            pool.close()
        h.stop()
