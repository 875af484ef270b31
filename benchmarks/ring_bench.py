"""Ring throughput between two processes vs multiprocessing.Queue, idle-reader CPU, frame codec MB/s.

Run: /work/venv/bin/python benchmarks/ring_bench.py [--quick] [--wake-only]

Every figure is measured in the same run on the same machine. Events are 100 bytes. The ring writer
pushes 1, 64 or 1024 events per call (`push_many`), the reader pops up to 4096 per call (`pop_many`,
a list of memoryviews, release=True); the baseline puts and gets one event per call through a
`multiprocessing.Queue`. CPU ns/event is the writer's plus the reader's process CPU time divided by the
events moved. The last line of output is one JSON object (see `main`).

The wake-up section measures one hand-off to a SLEEPING reader, per way of waiting (issue 14): a pinger
pushes one record carrying its `monotonic_ns`, the reader takes it and records now - stamp, answers on a
second ring, and the pinger waits WAKE_GAP_MS before the next ping so that the reader is asleep again
(the one-event-in-flight case of the node's pipeline). Ways: `semaphore` (the batcher's blocking pop on
R1: spin, then the posix semaphore), `pump+eventfd` (the workers' Inbox until issue 14, reproduced here as
the baseline: a thread blocked in the pop, forwarding through a deque and an eventfd to the selector
loop), `wake socket` (the Inbox now: the writer sends a datagram straight to the loop's selector).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import selectors
import sys
import threading
import time
from collections import deque
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shmraft.ipc import ring, segments  # noqa: E402
from shmraft.ipc.owner import SegmentOwner  # noqa: E402

EVENT_BYTES = 100
RING_CAPACITY_BYTES = 4 << 20
POP_RECORDS = 4096
IDLE_MEASURE_S = 2.0
WAKE_PINGS = 2000
WAKE_GAP_MS = 0.5  # between pings: long enough for the reader to go back to sleep
WAKE_KINDS = ("semaphore", "pump+eventfd", "wake socket")


def _events(count: int = 1024) -> list[bytes]:
    return [(i.to_bytes(8, "little") * 13)[:EVENT_BYTES] for i in range(count)]


def _ring_writer(name: str, total: int, per_call: int, go: Any, out: Any) -> None:
    events = _events()
    calls = [events[i : i + per_call] for i in range(0, len(events) - per_call + 1, per_call)] or [events[:per_call]]
    w = ring.RingWriter(name)
    go.wait()
    cpu0 = time.process_time()
    sent = 0
    i = 0
    while sent < total:
        batch = calls[i % len(calls)]
        if sent + len(batch) > total:
            batch = batch[: total - sent]
        sent += w.push_many(batch, timeout_ms=None)
        i += 1
    w.mark_closed()
    out.put(("writer", time.process_time() - cpu0))
    w.close()


def _ring_reader(name: str, go: Any, out: Any) -> None:
    r = ring.RingReader(name)
    go.wait()
    cpu0 = time.process_time()
    got = 0
    while True:
        try:
            recs = r.pop_many(POP_RECORDS, timeout_ms=None, release=True)
        except ring.RingClosed:
            break
        got += len(recs)
    out.put(("reader", time.process_time() - cpu0, got, time.perf_counter()))
    r.close()


def _queue_writer(q: Any, total: int, go: Any, out: Any) -> None:
    events = _events()
    go.wait()
    cpu0 = time.process_time()
    n = len(events)
    for i in range(total):
        q.put(events[i % n])
    q.put(None)
    out.put(("writer", time.process_time() - cpu0))


def _queue_reader(q: Any, go: Any, out: Any) -> None:
    go.wait()
    cpu0 = time.process_time()
    got = 0
    while q.get() is not None:
        got += 1
    out.put(("reader", time.process_time() - cpu0, got, time.perf_counter()))


def _run_pair(ctx: Any, writer: tuple, reader: tuple, total: int) -> dict[str, float]:
    go = ctx.Event()
    out = ctx.Queue()
    pw = ctx.Process(target=writer[0], args=(*writer[1:], go, out))
    pr = ctx.Process(target=reader[0], args=(*reader[1:], go, out))
    pw.start()
    pr.start()
    try:
        time.sleep(0.5)  # both attached and waiting
        t0 = time.perf_counter()
        go.set()
        res = [out.get(timeout=300), out.get(timeout=300)]
        pw.join(30)
        pr.join(30)
    finally:
        for p in (pw, pr):
            if p.is_alive():
                p.kill()
                p.join()
    wcpu = next(r[1] for r in res if r[0] == "writer")
    _, rcpu, got, t_end = next(r for r in res if r[0] == "reader")
    assert got == total, (got, total)
    wall = t_end - t0
    return {
        "events_per_s": total / wall,
        "cpu_ns_per_event": (wcpu + rcpu) * 1e9 / total,
        "wall_s": wall,
        "writer_cpu_s": wcpu,
        "reader_cpu_s": rcpu,
    }


def bench_ring(ctx: Any, prefix: str, per_call: int, total: int) -> dict[str, float]:
    with SegmentOwner(prefix) as owner:
        name = owner.create_ring(f"b{per_call}", RING_CAPACITY_BYTES)
        return _run_pair(ctx, (_ring_writer, name, total, per_call), (_ring_reader, name), total)


def bench_queue(ctx: Any, total: int) -> dict[str, float]:
    q = ctx.Queue()
    return _run_pair(ctx, (_queue_writer, q, total), (_queue_reader, q), total)


def _idle_reader(name: str) -> None:
    r = ring.RingReader(name)
    try:
        r.pop_many(timeout_ms=None)
    except ring.RingClosed:
        pass
    r.close()


def bench_idle(ctx: Any, prefix: str) -> float:
    """CPU % of one core used by a reader blocked on an empty ring, over IDLE_MEASURE_S."""
    with SegmentOwner(prefix) as owner:
        name = owner.create_ring("idle", 1 << 16)
        p = ctx.Process(target=_idle_reader, args=(name,))
        p.start()
        try:
            time.sleep(1.0)  # past start-up and imports
            proc = psutil.Process(p.pid)
            c0 = proc.cpu_times()
            t0 = time.perf_counter()
            time.sleep(IDLE_MEASURE_S)
            c1 = proc.cpu_times()
            pct = 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / (time.perf_counter() - t0)
            with ring.RingWriter(name) as w:
                w.mark_closed()
            p.join(10)
        finally:
            if p.is_alive():
                p.kill()
                p.join()
    return pct


def bench_frames(seconds: float) -> dict[str, Any]:
    """Frame encode/decode MB/s (of event bytes) for 64 x 100-byte JSON-like events, without and with zstd."""
    try:
        from shmraft.wire.frame import decode_batch, encode_batch
    except ImportError as e:  # the codec is another engineer's work in progress
        return {"skipped": f"shmraft.wire.frame not importable: {e}"}
    import random

    rnd = random.Random(7)
    events = [
        json.dumps(
            {"user": rnd.randrange(10**6), "action": rnd.choice(["view", "click", "buy"]), "ts": 1700000000000 + i}
        )
        .encode()
        .ljust(EVENT_BYTES, b" ")[:EVENT_BYTES]
        for i in range(64)
    ]
    payload = sum(map(len, events))
    res: dict[str, Any] = {}
    for compress in (False, True):
        frame = encode_batch(events, batch_id=1, term=1, prev_index=0, prev_term=0, compress=compress)
        assert [bytes(e) for e in decode_batch(frame).events] == events
        for op in ("encode", "decode"):
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for _ in range(100):
                    if op == "encode":
                        encode_batch(events, batch_id=n + 1, term=1, prev_index=n, prev_term=1, compress=compress)
                    else:
                        decode_batch(frame)
                    n += 1
            dt = time.perf_counter() - t0
            res[f"{op}{'_zstd' if compress else ''}_mb_per_s"] = round(payload * n / dt / 1e6, 1)
        res[f"frame_bytes{'_zstd' if compress else ''}"] = len(frame)
    res["payload_bytes"] = payload
    return res


class _PumpInbox:
    """The workers' Inbox before issue 14 (the baseline): a pump thread blocked in the ring's pop hands
    whole pops to the selector loop through a deque and an eventfd."""

    def __init__(self, reader: ring.RingReader) -> None:
        self.reader = reader
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: deque[list[bytes]] = deque()
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._efd

    def _pump(self) -> None:
        while not self._stop:
            try:
                records = self.reader.pop_many(1024, 4 << 20, 100, release=True)
            except ring.RingClosed:
                return
            if records:
                with self._lock:
                    self._queue.append(records)
                os.eventfd_write(self._efd, 1)

    def take(self) -> list[bytes]:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        out: list[bytes] = []
        with self._lock:
            while self._queue:
                out.extend(self._queue.popleft())
        return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(1.0)
        os.close(self._efd)


def _wake_reader(kind: str, ping_name: str, pong_name: str, go: Any, out: Any) -> None:
    """Take pings the way `kind` says, record each one's one-way latency, answer on the pong ring."""
    from shmraft.workers.base import Inbox, LoopSelector

    r = ring.RingReader(ping_name)
    w = ring.RingWriter(pong_name)
    lat_ns: list[int] = []
    if kind == "semaphore":

        def take() -> list[bytes]:
            return r.pop_many(1024, 4 << 20, 100, release=True)

        def close() -> None:
            pass
    elif kind == "pump+eventfd":
        sel: selectors.BaseSelector = selectors.DefaultSelector()
        pump = _PumpInbox(r)
        sel.register(pump, selectors.EVENT_READ)

        def take() -> list[bytes]:
            sel.select(0.1)
            return pump.take()

        close = pump.close
    else:
        sel = LoopSelector()
        inbox = Inbox(r, "ping", sel)

        def take() -> list[bytes]:
            for key, mask in sel.select(0.1):
                key.data(mask)
            return inbox.take()

        def close() -> None:
            pass

    go.wait()
    while len(lat_ns) < WAKE_PINGS:
        for rec in take():
            now = time.monotonic_ns()
            lat_ns.append(now - int.from_bytes(rec[:8], "little"))
            w.push(b"pong", timeout_ms=None)
    close()
    out.put(lat_ns)
    w.close()
    r.close()


def _wake_pinger(ping_name: str, pong_name: str, go: Any, out: Any) -> None:
    w = ring.RingWriter(ping_name)
    r = ring.RingReader(pong_name)
    go.wait()
    for _ in range(WAKE_PINGS):
        time.sleep(WAKE_GAP_MS / 1000)
        w.push(time.monotonic_ns().to_bytes(8, "little") + bytes(EVENT_BYTES - 8), timeout_ms=None)
        while r.pop(timeout_ms=1000, release=True) is None:
            pass
    out.put("done")
    r.close()
    w.close()


def bench_wake(ctx: Any, prefix: str) -> dict[str, dict[str, float]]:
    """One-way hand-off latency to a sleeping reader (µs p50/p90/p99) per way of waiting, interleaved:
    the kinds take turns in rounds so that a change in the machine's load hits all of them alike."""
    lat: dict[str, list[int]] = {k: [] for k in WAKE_KINDS}
    rounds = 3
    with SegmentOwner(prefix) as owner:
        for rnd in range(rounds):
            for i, kind in enumerate(WAKE_KINDS):
                ping = owner.create_ring(f"wping{rnd}{i}", 1 << 16)
                pong = owner.create_ring(f"wpong{rnd}{i}", 1 << 16)
                go, out = ctx.Event(), ctx.Queue()
                pr = ctx.Process(target=_wake_reader, args=(kind, ping, pong, go, out))
                pp = ctx.Process(target=_wake_pinger, args=(ping, pong, go, out))
                pr.start()
                pp.start()
                try:
                    time.sleep(0.5)  # both attached
                    go.set()
                    res = [out.get(timeout=300), out.get(timeout=300)]
                    lat[kind] += next(x for x in res if isinstance(x, list))[WAKE_PINGS // 10 :]  # past warm-up
                    pr.join(30)
                    pp.join(30)
                finally:
                    for p in (pr, pp):
                        if p.is_alive():
                            p.kill()
                            p.join()
    result = {}
    for kind, xs in lat.items():
        xs.sort()
        result[kind] = {
            q: round(xs[int(f * (len(xs) - 1))] / 1000, 1) for q, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
    return result


def print_wake(wake: dict[str, dict[str, float]]) -> None:
    base = wake["semaphore"]["p50"]
    print(f"{'one hand-off to a sleeping reader':<36}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}{'p50 / semaphore':>17}")
    for kind, q in wake.items():
        print(f"{kind:<36}{q['p50']:>9}{q['p90']:>9}{q['p99']:>9}{q['p50'] / base:>17.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the events (a smoke test)")
    ap.add_argument("--wake-only", action="store_true", help="only the wake-up latency section")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    ctx = mp.get_context("spawn")
    prefix = segments.prefix_for(f"bench{os.getpid()}", 0)
    wake = bench_wake(ctx, prefix)
    if args.wake_only:
        print_wake(wake)
        print(json.dumps({"wake_us": wake, "machine": {"cores": os.cpu_count(), "load_avg": os.getloadavg()}}))
        return
    totals = {1: int(300_000 * scale), 64: int(8_000_000 * scale), 1024: int(8_000_000 * scale)}
    ring_res = {k: bench_ring(ctx, prefix, k, n) for k, n in totals.items()}
    queue_res = bench_queue(ctx, int(500_000 * scale))
    idle = bench_idle(ctx, prefix)
    frames = bench_frames(0.5 * scale + 0.2)

    print(f"{'path':<28}{'events/s':>14}{'CPU ns/event':>14}{'wall s':>9}")
    for k, r in ring_res.items():
        print(
            f"{'ring, ' + str(k) + ' per call':<28}{r['events_per_s']:>14,.0f}{r['cpu_ns_per_event']:>14,.0f}"
            f"{r['wall_s']:>9.2f}"
        )
    q = queue_res
    print(
        f"{'mp.Queue, 1 per put/get':<28}{q['events_per_s']:>14,.0f}{q['cpu_ns_per_event']:>14,.0f}{q['wall_s']:>9.2f}"
    )
    ratio = ring_res[64]["events_per_s"] / q["events_per_s"]
    print(f"ring 64/call vs mp.Queue: {ratio:.1f}x;  idle blocked reader: {idle:.2f}% of a core")
    for key, val in frames.items():
        print(f"frame {key}: {val}")
    print_wake(wake)
    summary = {
        "wake_us": wake,
        "ring_events_per_s": {str(k): round(r["events_per_s"]) for k, r in ring_res.items()},
        "ring_cpu_ns_per_event": {str(k): round(r["cpu_ns_per_event"]) for k, r in ring_res.items()},
        "queue_events_per_s": round(q["events_per_s"]),
        "queue_cpu_ns_per_event": round(q["cpu_ns_per_event"]),
        "ratio_64_vs_queue": round(ratio, 1),
        "idle_reader_cpu_percent": round(idle, 2),
        "frames": frames,
        "event_bytes": EVENT_BYTES,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
