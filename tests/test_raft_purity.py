"""The core is a pure state machine: no clocks, sockets, threads or hidden randomness in its modules."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from shmraft.raft.config import RaftConfig
from shmraft.sim.harness import Cluster

RAFT = Path(__file__).resolve().parent.parent / "shmraft" / "raft"
CORE_MODULES = (
    "core.py",
    "log.py",
    "progress.py",
    "quorum.py",
    "messages.py",
    "ready.py",
    "config.py",
    "errors.py",
    "types.py",
    "memstorage.py",
)
FORBIDDEN = {
    "socket",
    "time",
    "random",
    "threading",
    "multiprocessing",
    "asyncio",
    "selectors",
    "os",
    "subprocess",
    "datetime",
    "secrets",
    "uuid",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_clock_socket_thread_or_randomness(module):
    bad = imported_modules(RAFT / module) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_import_check_would_notice_a_forbidden_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import os.path\nfrom time import monotonic\n")
    assert imported_modules(sneaky) & FORBIDDEN == {"os", "time"}


def _history(seed: int) -> list[tuple]:
    c = Cluster(3, config=RaftConfig(), seed=seed)
    c.run(1000)
    leader = c.leader()
    for k in range(10):
        c.propose(leader, b"%d" % k)
    c.deliver_all()
    c.run(300)
    return [(type(m).__name__, m.src, m.dst, m.term) for m in c.sent]


def test_same_inputs_and_seed_give_the_same_outputs():
    assert _history(7) == _history(7)
    random.seed(12345)  # the global random state must not matter
    assert _history(7) == _history(7)
