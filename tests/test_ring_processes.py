"""Shared-memory rings across real processes: throughput with checks, SIGKILLed readers and writers,
idle CPU, stale-segment cleanup and leftovers.

Children are this file run as a script (`python tests/test_ring_processes.py ROLE ...`), so nothing is
pickled and a SIGKILL is a real one. Every test kills and reaps its children in `finally`, and an autouse
fixture fails the test if anything with the test prefix is left in /dev/shm.

Records are `seq u64 | incarnation u8 | pattern`, byte j >= 9 being (seq*131 + j*7 + incarnation) & 0xFF,
generated and verified with numpy for whole blocks, so a torn or stale record cannot pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from shmraft.ipc import ring, segments  # noqa: E402
from shmraft.ipc.owner import SegmentOwner  # noqa: E402

RUN_ID = f"tp{os.getpid()}"
RECORD_MIN_BYTES = 9
RECORD_MAX_BYTES = 120
CHUNK_RECORDS = 4096
_ARANGE8 = np.arange(8)


# -- records -------------------------------------------------------------------------------------
def make_chunk(first_seq: int, count: int, incarnation: int, rng: np.random.Generator) -> list[bytes]:
    """`count` records with consecutive sequence numbers, random sizes, deterministic content."""
    lens = rng.integers(RECORD_MIN_BYTES, RECORD_MAX_BYTES + 1, count)
    ends = np.cumsum(lens)
    starts = ends - lens
    total = int(ends[-1])
    seqs = np.arange(first_seq, first_seq + count, dtype=np.uint64)
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
    buf = np.repeat((seqs * 131).astype(np.uint8), lens) + (pos * 7).astype(np.uint8) + np.uint8(incarnation)
    buf = buf.astype(np.uint8)
    buf[starts[:, None] + _ARANGE8] = seqs.astype("<u8").view(np.uint8).reshape(count, 8)
    buf[starts + 8] = incarnation
    raw = buf.tobytes()
    return [raw[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def check_block(block: ring.RecordBlock) -> tuple[np.ndarray, np.ndarray]:
    """Verify every byte of every record in a block; returns (seqs, incarnations)."""
    lens = block.lengths
    assert lens.min() >= RECORD_MIN_BYTES and lens.max() <= RECORD_MAX_BYTES, (lens.min(), lens.max())
    u8 = np.frombuffer(block.buffer, dtype=np.uint8)
    starts = block.starts
    seqs = u8[starts[:, None] + _ARANGE8].copy().view("<u8").ravel()
    incs = u8[starts + 8]
    pos = np.arange(u8.size, dtype=np.int64) - np.repeat(starts, lens)
    expect = (
        np.repeat((seqs * 131).astype(np.uint8), lens) + (pos * 7).astype(np.uint8) + np.repeat(incs, lens)
    ).astype(np.uint8)
    body = pos >= 9
    bad = np.flatnonzero((u8 != expect) & body)
    assert bad.size == 0, f"corrupt byte at {bad[0]} of a block of {len(block)} records"
    return seqs, incs


# -- child roles -----------------------------------------------------------------------------------
def _append(fd: int, line: str) -> None:
    os.write(fd, line.encode())  # one write on an O_APPEND fd: a SIGKILL leaves whole lines only


def role_writer(name: str, total: int, seed: int, incarnation: int, ckpt_path: str) -> int:
    """Push seq from the last checkpoint to total-1 in random groups; log the end seq after each call."""
    start = 0
    if os.path.exists(ckpt_path):
        lines = Path(ckpt_path).read_text().split()
        start = int(lines[-1]) if lines else 0
    rng = np.random.default_rng(seed + incarnation)
    fd = os.open(ckpt_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    w = ring.RingWriter(name)
    seq = start
    while seq < total:
        chunk = make_chunk(seq, min(CHUNK_RECORDS, total - seq), incarnation, rng)
        i = 0
        while i < len(chunk):
            k = int(rng.integers(1, 129))
            i += w.push_many(chunk[i : i + k], timeout_ms=None)
            _append(fd, f"{seq + i}\n")
        seq += len(chunk)
    w.mark_closed()
    w.close()
    return 0


def role_reader(name: str, total: int, seed: int, log_path: str) -> int:
    """Pop and verify until the ring is closed and drained. Within this process seqs must be consecutive
    per writer incarnation, and a new incarnation may restart at most at last+1 (no gap).
    Logs `P first last` before each release, and `S`/`E last` at start and end."""
    rng = np.random.default_rng(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _append(fd, f"S {os.getpid()}\n")
    r = ring.RingReader(name)
    last_seq, last_inc = -1, -1
    while True:
        try:
            block = r.pop_block(int(rng.integers(1, 2000)), int(rng.integers(200, 200_000)), timeout_ms=5000)
        except ring.RingClosed:
            break
        if not len(block):
            continue
        seqs, incs = check_block(block)
        seqs = seqs.astype(np.int64)
        incs = incs.astype(np.int64)
        prev_seq = np.concatenate(([last_seq], seqs[:-1]))
        prev_inc = np.concatenate(([last_inc], incs[:-1]))
        known = np.ones(seqs.size, dtype=bool)
        known[0] = last_seq >= 0  # the first record of this process has no predecessor to compare with
        same = (incs == prev_inc) & known
        changed = (incs != prev_inc) & known
        assert np.all(seqs[same] == prev_seq[same] + 1), "gap or duplicate within a writer incarnation"
        assert np.all(incs[changed] > prev_inc[changed]), "writer incarnation went backwards"
        assert np.all(seqs[changed] <= prev_seq[changed] + 1), "gap at a writer restart"
        last_seq, last_inc = int(seqs[-1]), int(incs[-1])
        _append(fd, f"P {int(seqs[0])} {last_seq}\n")
        r.release()
    _append(fd, f"E {last_seq}\n")
    r.close()
    return 0 if last_seq == total - 1 else 3


def role_idle_reader(name: str) -> int:
    r = ring.RingReader(name)
    print("attached", flush=True)
    try:
        r.pop_many(timeout_ms=None)
    except ring.RingClosed:
        pass
    r.close()
    return 0


def role_hold(name: str, role: str) -> int:
    """Attach as writer or reader, say so on stdout, and sleep until killed."""
    handle = ring.RingWriter(name) if role == "writer" else ring.RingReader(name)
    if role == "writer":
        handle.push_many([b"before-death-1", b"before-death-2"])
    print("attached", flush=True)
    time.sleep(3600)
    return 0


def role_owner(prefix: str, mode: str) -> int:
    """Create rings as their owner; `sleep`: wait to be killed; `clean`: use them and exit cleanly."""
    with SegmentOwner(prefix) as owner:
        names = [owner.create_ring(r, 1 << 16) for r in ("r1", "r2")]
        if mode == "sleep":
            print("created", flush=True)
            time.sleep(3600)
        for n in names:
            with ring.RingWriter(n) as w, ring.RingReader(n) as r:
                w.push_many([b"x" * 100] * 10)
                assert len(r.pop_many(release=True)) == 10
    return 0


ROLES = {
    "writer": role_writer,
    "reader": role_reader,
    "idle_reader": role_idle_reader,
    "hold": role_hold,
    "owner": role_owner,
}


def _main(argv: list[str]) -> int:
    role, *args = argv
    fn = ROLES[role]
    converted = [int(a) if a.lstrip("-").isdigit() else a for a in args]
    return fn(*converted)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


# -- test harness ------------------------------------------------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fail a test that leaves anything with this file's run id in /dev/shm (and clean it up)."""
    yield
    left = [e for e in os.listdir("/dev/shm") if f"shmraft-{RUN_ID}" in e]
    for e in left:
        if e.startswith("sem."):
            segments.unlink_semaphore("/" + e[4:])
        else:
            segments.unlink_segment("/" + e)
    assert not left, f"left in /dev/shm: {left}"


class Children:
    """Started child processes; `kill_all()` SIGKILLs and reaps whatever still runs."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: object, stdout: int | None = None) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env, stdout=stdout)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def children():
    c = Children()
    try:
        yield c
    finally:
        c.kill_all()


@pytest.fixture
def owner():
    with SegmentOwner(segments.prefix_for(RUN_ID, 0)) as o:
        yield o


def _wait(p: subprocess.Popen, timeout_s: float) -> int:
    try:
        return p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"child {p.args[2:]} did not finish in {timeout_s} s") from None


def _log_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _wait_progress(path: Path, min_lines: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= min_lines:
            return
        time.sleep(0.01)
    raise AssertionError(f"no progress in {path}")


def test_two_million_records_between_processes(owner, children, tmp_path):
    total = 2_000_000
    name = owner.create_ring("big", 1 << 20)
    t0 = time.monotonic()
    w = children.start("writer", name, total, 11, 0, tmp_path / "ckpt")
    r = children.start("reader", name, total, 12, tmp_path / "log")
    assert _wait(w, 60) == 0
    assert _wait(r, 60) == 0
    lines = _log_lines(tmp_path / "log")
    assert lines[-1] == ["E", str(total - 1)]
    stats = ring.RingInspector(name)
    try:
        assert stats.stats().records_pushed == total and stats.stats().records_released == total
        assert stats.fill_bytes() == 0 and stats.closed
    finally:
        stats.close()
    assert time.monotonic() - t0 < 60


def test_reader_sigkilled_and_restarted_sees_everything_in_order(owner, children, tmp_path):
    """Delivery to a crashed reader is at-least-once: after a restart the first record is either the
    first of the last popped-but-maybe-unreleased block (redelivery) or the one after it, never later."""
    total = 300_000
    name = owner.create_ring("rk", 1 << 16)
    log = tmp_path / "log"
    w = children.start("writer", name, total, 21, 0, tmp_path / "ckpt")
    rng = np.random.default_rng(5)
    for kill in range(3):
        r = children.start("reader", name, total, 100 + kill, log)
        _wait_progress(log, len(_log_lines(log)) + int(rng.integers(20, 200)), 30)
        r.send_signal(signal.SIGKILL)
        r.wait()
    r = children.start("reader", name, total, 200, log)
    assert _wait(r, 60) == 0 and _wait(w, 60) == 0
    lines = _log_lines(log)
    lives: list[list[tuple[int, int]]] = []
    for line in lines:
        if line[0] == "S":
            lives.append([])
        elif line[0] == "P":
            lives[-1].append((int(line[1]), int(line[2])))
    assert len(lives) == 4 and lines[-1] == ["E", str(total - 1)]
    for before, after in zip(lives, lives[1:], strict=False):
        a, b = before[-1]
        assert after[0][0] in (a, b + 1), (before[-1], after[0])
    assert lives[0][0][0] == 0
    for life in lives:  # within one life: contiguous blocks
        assert all(y[0] == x[1] + 1 for x, y in zip(life, life[1:], strict=False))


def test_writer_sigkilled_and_restarted_leaves_no_partial_record(owner, children, tmp_path):
    """The reader verifies every byte; at a writer restart the sequence may repeat the last unlogged
    batch (the application's checkpoint lags) but never skips, and nothing half-written appears."""
    total = 300_000
    name = owner.create_ring("wk", 1 << 16)
    ckpt = tmp_path / "ckpt"
    r = children.start("reader", name, total, 31, tmp_path / "log")
    rng = np.random.default_rng(6)
    for inc in range(3):
        w = children.start("writer", name, total, 40, inc, ckpt)
        _wait_progress(ckpt, len(_log_lines(ckpt)) + int(rng.integers(50, 500)), 30)
        w.send_signal(signal.SIGKILL)
        w.wait()
    w = children.start("writer", name, total, 40, 3, ckpt)
    assert _wait(w, 60) == 0
    assert _wait(r, 60) == 0
    assert _log_lines(tmp_path / "log")[-1] == ["E", str(total - 1)]
    with ring.RingInspector(name) as insp:
        assert insp.stats().writer_attaches == 4


def test_idle_blocked_reader_uses_under_5_percent_cpu(owner, children):
    import psutil

    name = owner.create_ring("idle", 1 << 16)
    p = children.start("idle_reader", name, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"attached"  # imports and attach done
    time.sleep(0.2)  # let it reach the blocking wait (its bounded spin lasts microseconds)
    proc = psutil.Process(p.pid)
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(2.0)
    c1 = proc.cpu_times()
    pct = 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (time.monotonic() - t0)
    assert pct < 5.0, pct
    with ring.RingWriter(name) as w:  # and it wakes up promptly when closed
        w.mark_closed()
    assert _wait(p, 10) == 0


def test_live_writer_is_exclusive_and_a_dead_one_is_replaced(owner, children):
    name = owner.create_ring("busy", 1 << 16)
    p = children.start("hold", name, "writer", stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"attached"
    with pytest.raises(ring.RingBusy, match="writer"):
        ring.RingWriter(name)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with ring.RingWriter(name) as w, ring.RingReader(name) as r:
        assert r.pop_many(release=True) == [b"before-death-1", b"before-death-2"]
        assert w.push_many([b"after"]) == 1
        assert r.pop(release=True) == b"after"
        assert r.pop() is None


def test_stale_segments_of_a_sigkilled_owner_are_cleaned(children):
    prefix = segments.prefix_for(RUN_ID, "stale")
    p = children.start("owner", prefix, "sleep", stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"created"
    with SegmentOwner(prefix, clean_stale=False) as live:  # a live owner's rings survive cleanup
        live_name = live.create_ring("live", 1 << 16)
        assert segments.cleanup_stale(prefix) == []
        p.send_signal(signal.SIGKILL)
        p.wait()
        segs, sems = segments.list_names(prefix)
        assert len(segs) == 3 and len(sems) == 6
        removed = segments.cleanup_stale(prefix)
        assert sorted(removed) == sorted(n for r in ("r1", "r2") for n in (prefix + r, *segments.sem_names(prefix + r)))
        assert segments.list_names(prefix) == ([live_name], sorted(segments.sem_names(live_name)))
    assert segments.list_names(prefix) == ([], [])


def test_clean_shutdown_leaves_nothing(children):
    prefix = segments.prefix_for(RUN_ID, "clean")
    p = children.start("owner", prefix, "clean")
    assert _wait(p, 30) == 0
    assert segments.list_names(prefix) == ([], [])
