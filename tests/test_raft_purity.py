"""The core is a pure state machine: no clocks, sockets, threads or hidden randomness in its modules."""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest

from shmraft.raft.config import RaftConfig
from shmraft.sim.harness import Cluster

RAFT = Path(__file__).resolve().parent.parent / "shmraft" / "raft"
# Every module of shmraft/raft/ is checked, found by listing the folder: a new file is covered without
# being named here. The rule is what a module may import, not which modules are pure.
CORE_MODULES = sorted(p.relative_to(RAFT).as_posix() for p in RAFT.rglob("*.py"))
# Standard-library modules that give a clock, randomness, I/O, threads or processes.
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
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "signal",
    "mmap",
    "fcntl",
    "ssl",
    "select",
    "logging",
    "importlib",
    "concurrent",
    "ctypes",
}
# Of the project, the core may import only itself and the brief's numbers (shmraft/constants.py, pure).
# shmraft.wire.control and .errors: the pure byte codec of control entries (configuration entries are control
# entries the core must recognise and build) and its typed errors
SHMRAFT_ALLOWED = ("shmraft.raft", "shmraft.constants", "shmraft.wire.control", "shmraft.wire.errors")
# Builtins that do I/O or import by name at run time.
FORBIDDEN_CALLS = {"open", "print", "input", "__import__", "exec", "eval", "breakpoint"}
# Files in shmraft/raft/ that are not pure, each with the reason; the test fails if one no longer exists.
TRANSITIONAL: dict[str, str] = {}


def imported_modules(path: Path, package: str = "shmraft.raft") -> set[str]:
    """Every module `path` imports, as absolute dotted names (relative imports resolved against `package`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
    return names


def impurities(path: Path) -> list[str]:
    """What makes a module impure: forbidden or third-party imports, imports of shmraft outside the core,
    and calls of builtins that do I/O."""
    bad = []
    for module in sorted(imported_modules(path)):
        top = module.split(".")[0]
        if top == "shmraft":
            if not any(module == ok or module.startswith(ok + ".") for ok in SHMRAFT_ALLOWED):
                bad.append(f"imports {module} (outside the pure core)")
        elif top == "__future__":
            continue
        elif top not in sys.stdlib_module_names:
            bad.append(f"imports {module} (not the standard library: no rocksdict, numpy, ...)")
        elif top in FORBIDDEN:
            bad.append(f"imports {module} (clock, randomness, I/O, threads or processes)")
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            bad.append(f"calls {node.func.id}() on line {node.lineno}")
    return bad


def test_every_file_of_the_raft_folder_is_checked():
    assert "core.py" in CORE_MODULES and "quorum.py" in CORE_MODULES and len(CORE_MODULES) >= 10
    for name in TRANSITIONAL:
        assert (RAFT / name).exists(), f"{name} is gone: remove its TRANSITIONAL entry"


@pytest.mark.parametrize("module", [m for m in CORE_MODULES if m not in TRANSITIONAL])
def test_core_module_imports_no_clock_socket_thread_randomness_or_storage(module):
    bad = impurities(RAFT / module)
    assert not bad, f"shmraft/raft/{module}: {bad}"


def test_the_import_check_would_notice_a_forbidden_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "import os.path\nfrom time import monotonic\nimport rocksdict\nfrom shmraft.storage.rocks import X\n"
        "from ..wire import peer\nfrom . import quorum\nfrom shmraft.raft.types import Entry\n"
        "from shmraft.constants import BATCH_EVENTS_MAX\nimport dataclasses\nopen('f')\n"
    )
    bad = impurities(sneaky)
    assert [b.split(" (")[0] for b in bad] == [
        "imports os.path",
        "imports rocksdict",
        "imports shmraft.storage.rocks",
        "imports shmraft.wire",
        "imports time",
        "calls open() on line 10",
    ]


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
