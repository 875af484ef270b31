"""Crash consistency of RocksLogStorage with real processes killed by SIGKILL at random moments.

A child process opens the log (fsync ALWAYS) and writes continuously, reporting on its stdout pipe each
operation it starts ("B ...") and each one whose call returned ("D ..."). The parent kills it at a random
moment, reopens the directory and checks: every reported write is present with the right data, the log has
no holes and valid checksums (verify()), and the hard state written in the same batch matches the log.
Several rounds run on the same directory, so each child also recovers what the previous one left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clusterkit import wait_for

from shmraft.raft.types import HardState
from shmraft.storage.rocks import CorruptLogError, RocksLogStorage

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_BYTES = 6 * 1024
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0
OPS_BEFORE_KILL = 5  # completed appends each child reports before the random kill point starts counting
OPS_TIMEOUT_S = 30.0

# The child: `python -c CHILD <path> <mode> <seed>`. data_for() must match the parent's.
CHILD = r"""
import random, sys
from shmraft.storage.rocks import CorruptLogError, RocksLogStorage
from shmraft.raft.types import Entry, HardState

ENTRY_BYTES = 6 * 1024

def data_for(index, term):
    seed = f"{index}:{term}:".encode()
    return (seed * (ENTRY_BYTES // len(seed) + 1))[:ENTRY_BYTES]

path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
out = sys.stdout
retain = 300 if mode == "append" else None
s = RocksLogStorage(path, retain_entries_max=retain, retain_bytes_max=None)
out.write(f"R {s.last_index()}\n"); out.flush()
while True:
    hs, last = s.hard_state(), s.last_index()
    if mode == "append":
        term = hs.term + (1 if rng.random() < 0.1 or hs.term == 0 else 0)
        start, n = last + 1, rng.choice([1, 1, 3, 16, 64])
        commit = max(hs.commit, start + n - 1 - 5)
    else:  # truncate: replace a random uncommitted suffix with entries of a new term
        term = hs.term + 1
        start = rng.randint(max(hs.commit + 1, last - 30), last + 1)
        n = rng.randint(1, 40)
        commit = max(hs.commit, start - 1)
    out.write(f"B {start} {n} {term} {commit}\n"); out.flush()
    s.append([Entry(i, term, data_for(i, term)) for i in range(start, start + n)],
             HardState(term=term, vote=1, commit=commit))
    out.write(f"D {start} {n} {term} {commit}\n"); out.flush()
"""


def data_for(index: int, term: int) -> bytes:
    seed = f"{index}:{term}:".encode()
    return (seed * (ENTRY_BYTES // len(seed) + 1))[:ENTRY_BYTES]


@dataclass(frozen=True)
class Op:
    start: int
    n: int
    term: int
    commit: int

    @property
    def end(self) -> int:
        return self.start + self.n - 1


class Child:
    """A writer process and a thread draining its stdout (so the pipe never blocks it)."""

    def __init__(self, path: Path, mode: str, seed: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), mode, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.endswith(b"\n"):  # a line cut by the kill is ignored
                self.lines.append(raw.decode().strip())
                if raw.startswith(b"R "):
                    self.ready.set()
        self.ready.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(EXIT_TIMEOUT_S)
        self._reader.join(EXIT_TIMEOUT_S)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def ops(self) -> tuple[list[Op], Op | None]:
        """(operations whose append returned, the operation started but not reported done)."""
        done: list[Op] = []
        pending: Op | None = None
        for line in self.lines:
            kind, *fields = line.split()
            if kind == "B":
                pending = Op(*map(int, fields))
            elif kind == "D":
                op = Op(*map(int, fields))
                assert op == pending
                done.append(op)
                pending = None
        return done, pending


@pytest.fixture
def spawn() -> Iterator:
    """Start children; whatever happens in the test, kill and reap them all."""
    children: list[Child] = []

    def start(path: Path, mode: str, seed: int) -> Child:
        child = Child(path, mode, seed)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def run_round(
    spawn, path: Path, mode: str, seed: int, rng: random.Random, ops_before_kill: int = OPS_BEFORE_KILL
) -> Child:
    child = spawn(path, mode, seed)
    assert child.ready.wait(READY_TIMEOUT_S), "child never became ready"
    if child.proc.poll() is not None:
        pytest.fail(f"child exited early: {child.stderr()}")
    # a few appends done first (however slow fsync is on this machine), then the kill at a seeded random moment
    wait_for(
        lambda: len(child.ops()[0]) >= ops_before_kill or child.proc.poll() is not None,
        OPS_TIMEOUT_S,
        f"{ops_before_kill} completed appends",
    )
    if child.proc.poll() is not None:
        pytest.fail(f"child exited early: {child.stderr()}")
    time.sleep(rng.uniform(0.0, 0.35))  # the kill point, not a synchronisation
    child.kill()
    assert child.proc.returncode == -signal.SIGKILL, child.stderr()
    return child


def check_log_matches_data(s: RocksLogStorage) -> None:
    """No holes, valid checksums, non-decreasing terms; every entry's data is data_for(index, term)."""
    assert s.verify() == s.last_index() - s.snapshot_index()
    index = s.first_index()
    while index <= s.last_index():
        batch = s.entries(index, s.last_index() + 1, 1 << 20)
        for e in batch:
            assert e.data == data_for(e.index, e.term), f"wrong data at {e.index}"
        index = batch[-1].index + 1
    hs = s.hard_state()
    assert hs.term >= (s.term_at(s.last_index()) or 0)
    assert s.snapshot_index() <= hs.commit <= s.last_index()


def test_sigkill_during_appends_loses_nothing_acknowledged(tmp_path: Path, spawn) -> None:
    path = tmp_path / "log"
    rng = random.Random(20240601)
    acked_end, acked_term = 0, 0
    total_ops = 0
    for round_no in range(6):
        child = run_round(spawn, path, "append", seed=round_no, rng=rng)
        done, pending = child.ops()
        assert child.lines[0] == f"R {acked_end}"  # the child recovered exactly what we verified
        total_ops += len(done)
        if done:
            acked_end, acked_term = done[-1].end, done[-1].term
        with RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None) as s:
            check_log_matches_data(s)
            last = s.last_index()
            # everything acknowledged is there; at most the one pending append beyond it
            assert last >= acked_end
            if pending is not None:
                assert last in (acked_end, pending.end)
            else:
                assert last == acked_end
            if done:
                assert s.term_at(acked_end) == acked_term or s.first_index() > acked_end
            # the hard state was written in the same batch as the last entries
            op = pending if pending is not None and last == pending.end else (done[-1] if done else None)
            if op is not None:
                assert s.hard_state() == HardState(term=op.term, vote=1, commit=op.commit)
                assert s.term_at(last) == op.term
            # retention only ever removed committed entries
            assert s.first_index() <= s.hard_state().commit + 1
            acked_end, acked_term = last, s.term_at(last) or 0  # the durable state is the new baseline
    assert total_ops >= 6 * OPS_BEFORE_KILL, f"{total_ops} appends reported done: the kills were not after them"


def test_sigkill_during_suffix_truncation_is_atomic(tmp_path: Path, spawn) -> None:
    path = tmp_path / "log"
    rng = random.Random(77)
    before: Op | None = None  # the last op known to be durable, across rounds
    for round_no in range(5):
        # round 0 may be killed before its first write is done (the empty-log case), later rounds after a few
        child = run_round(
            spawn,
            path,
            "truncate",
            seed=1000 + round_no,
            rng=rng,
            ops_before_kill=0 if round_no == 0 else OPS_BEFORE_KILL,
        )
        done, pending = child.ops()
        assert child.lines[0] == f"R {before.end if before else 0}"
        if done:
            before = done[-1]
        with RocksLogStorage(path, retain_entries_max=None, retain_bytes_max=None) as s:
            check_log_matches_data(s)
            hs = s.hard_state()
            if pending is not None and s.term_at(pending.start) == pending.term:
                after = pending  # the pending truncate+append happened, entirely
            else:
                after = before  # it did not happen at all
            if after is None:
                assert s.last_index() == 0
                continue
            assert s.last_index() == after.end
            assert all(s.term_at(i) == after.term for i in range(after.start, after.end + 1))
            assert hs == HardState(term=after.term, vote=1, commit=after.commit)
            before = after


# A child that appends 40 synced entries and kills itself: the data then lives only in the WAL.
WAL_CHILD = r"""
import os, signal, sys
from shmraft.storage.rocks import CorruptLogError, RocksLogStorage
from shmraft.raft.types import Entry, HardState
s = RocksLogStorage(sys.argv[1])
for i in range(1, 41):
    s.append([Entry(i, 1, bytes([i]) * 6000)], HardState(term=1, vote=1, commit=max(0, i - 2)))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_wal_damage_torn_tail_tolerated_middle_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", WAL_CHILD, str(base)], env=env, timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    wals = list(base.glob("*.log"))
    assert len(wals) == 1 and wals[0].stat().st_size > 40 * 6000
    name, size = wals[0].name, wals[0].stat().st_size

    # a record cut short at the end (a write interrupted by the crash) is dropped: 39 entries remain
    torn = tmp_path / "torn"
    shutil.copytree(base, torn)
    os.truncate(torn / name, size - 100)
    with RocksLogStorage(torn) as s:
        assert s.last_index() == 39 and s.verify() == 39
        assert s.hard_state() == HardState(term=1, vote=1, commit=37)

    # damage in the middle must not silently drop the later, acknowledged records
    for frac in (0.3, 0.6, 0.95):
        bad = tmp_path / f"bad{frac}"
        shutil.copytree(base, bad)
        with open(bad / name, "r+b") as fh:
            fh.seek(int(size * frac))
            b = fh.read(1)
            fh.seek(int(size * frac))
            fh.write(bytes([b[0] ^ 0xFF]))
        with pytest.raises(CorruptLogError, match="Corruption"):
            RocksLogStorage(bad)
