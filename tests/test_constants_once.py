"""Constants are defined once: a module-level UPPER_CASE name of the shmraft package is assigned in one module
only (others import it), so a limit cannot drift apart from its copy. Private names (`_CRC`) are the
module's own business and are not compared."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "shmraft"
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")

# name -> (the modules that define it, why that is right or must wait). Only true exceptions.
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "LOOP_WAIT_MS": (
        frozenset({"workers/ingest.py", "workers/sender.py"}),
        "each worker's own selector timeout, equal by chance; tuned per worker",
    ),
    "RING_PUSH_TIMEOUT_MS": (
        frozenset({"workers/raft.py", "workers/sender.py"}),
        "each worker's own push timeout (50 and 100 ms); tuned per worker",
    ),
}


def defined_constants(root: Path) -> dict[str, set[str]]:
    """UPPER_CASE name -> the modules (relative to root) that assign it at module level."""
    where: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets = [t for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
                targets = [node.target]
            else:
                continue
            for target in targets:
                if CONSTANT.fullmatch(target.id):
                    where[target.id].add(path.relative_to(root).as_posix())
    return where


def test_no_constant_of_the_package_is_defined_in_two_modules():
    twice = {name: mods for name, mods in defined_constants(PACKAGE).items() if len(mods) > 1}
    unexplained = {name: sorted(mods) for name, mods in twice.items() if ALLOWED.get(name, (None,))[0] != mods}
    assert not unexplained, f"defined in more than one module (give each one home and import it): {unexplained}"


def test_every_allowed_exception_still_exists():
    where = defined_constants(PACKAGE)
    stale = sorted(name for name, (mods, _why) in ALLOWED.items() if where.get(name) != mods)
    assert not stale, f"no longer defined twice as allowed: remove from ALLOWED: {stale}"


def test_the_check_notices_a_copy(tmp_path):
    (tmp_path / "a.py").write_text("LIMIT_BYTES: int = 4\n_PRIVATE = 1\nfrom x import Y\n")
    (tmp_path / "b.py").write_text("LIMIT_BYTES = 4\n_PRIVATE = 1\nY = 2\n\ndef f():\n    LOCAL_MAX = 3\n")
    where = defined_constants(tmp_path)
    assert where == {"LIMIT_BYTES": {"a.py", "b.py"}, "Y": {"b.py"}}
