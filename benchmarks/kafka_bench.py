"""The cost of the Kafka door: Kafka clients against shmraft's Kafka port beside shmraft's native client, in the
same run on the same local 3-node cluster (all processes on this machine).

For each client (native `Client`, kafka-python, confluent-kafka/librdkafka), with `--event-bytes` events:

1. produce throughput: `--events` events pipelined as fast as the client takes them (native: a `Producer`
   window; Kafka: `send()`/`produce()` then one flush, acks=all, idempotence on), events/s acknowledged;
2. one-in-flight latency: `--samples` events, each sent and waited for before the next (p50, p99);
3. consume throughput: everything the cluster holds from offset 0 (native: `Client.consume`; Kafka: assign +
   seek(0), poll until the count is reached), events/s from the first record's arrival on.

Ratios are Kafka client / native client. The machine (cores, CPU model, Python, client versions) is printed
first. Prints a table, then one JSON line (also saved to benchmarks/results/kafka_bench.json).

    python benchmarks/kafka_bench.py           # default size
    python benchmarks/kafka_bench.py --quick   # a short run (about a minute)

Everything started is stopped and every /dev/shm segment of the run removed (ClusterDriver), also on error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmraft.client import Client  # noqa: E402
from shmraft.ingest.kafka_door import KAFKA_TOPIC  # noqa: E402
from shmraft.testing.cluster import ClusterDriver  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLIENT_TIMEOUT_S = 60.0
NATIVE_WINDOW = 16  # native requests in flight
NATIVE_BATCH_EVENTS = 256  # native events per request
KAFKA_LINGER_MS = 5
KAFKA_BATCH_BYTES = 32_000  # exact delivery-report offsets for every record size (docs/KAFKA.md section 2)
QUICK = {"events": 5_000, "samples": 100}
DEFAULT = {"events": 30_000, "samples": 300}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            "",
        )
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    for pkg in ("kafka-python", "confluent-kafka", "crc32c"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    return info


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def latency_ms(samples_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * percentile(samples_s, 0.50), 2),
        "p99_ms": round(1000 * percentile(samples_s, 0.99), 2),
        "mean_ms": round(1000 * statistics.fmean(samples_s), 2),
    }


def timed(fn: Callable[[], int]) -> float:
    """events/s of fn (which returns how many events it handled)."""
    t0 = time.perf_counter()
    n = fn()
    return round(n / (time.perf_counter() - t0), 1)


class Stream:
    """Consume throughput from the first record on (connecting and the first metadata are not the door's cost)."""

    def __init__(self) -> None:
        self.first_s = 0.0
        self.count = 0

    def add(self, n: int) -> None:
        if n and not self.first_s:
            self.first_s = time.perf_counter()
            n -= 1  # the rate counts the records after the first one's arrival
        self.count += n

    def rate(self) -> float:
        return round(self.count / max(time.perf_counter() - self.first_s, 1e-9), 1)


# --- native ----------------------------------------------------------------------------------------------------


def native(addresses: list[str], events: int, samples: int, event: bytes) -> dict[str, Any]:
    with Client(addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
        c.produce(event)  # connected, leader found

        def produce() -> int:
            p = c.producer(window=NATIVE_WINDOW, batch_events=NATIVE_BATCH_EVENTS, linger_ms=KAFKA_LINGER_MS)
            futures = collections.deque(p.send(event) for _ in range(events))
            p.close(timeout_s=CLIENT_TIMEOUT_S)
            assert all(f.exception() is None for f in futures)
            return events

        rate = timed(produce)
        lat = []
        for _ in range(samples):
            t0 = time.perf_counter()
            c.produce(event)
            lat.append(time.perf_counter() - t0)
        stream = Stream()
        for _ in c.consume(0):
            stream.add(1)
        return {"produce_eps": rate, **latency_ms(lat), "consume_eps": stream.rate()}


# --- kafka-python ----------------------------------------------------------------------------------------------


def kafka_python(bootstrap: list[str], events: int, samples: int, event: bytes, total: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=KAFKA_LINGER_MS,
        batch_size=KAFKA_BATCH_BYTES,
    )
    try:
        p.send(KAFKA_TOPIC, event).get(CLIENT_TIMEOUT_S)

        def produce() -> int:
            futures = [p.send(KAFKA_TOPIC, event) for _ in range(events)]
            p.flush(CLIENT_TIMEOUT_S)
            assert all(f.succeeded() for f in futures)
            return events

        rate = timed(produce)
        lat = []
        for _ in range(samples):
            t0 = time.perf_counter()
            p.send(KAFKA_TOPIC, event).get(CLIENT_TIMEOUT_S)
            lat.append(time.perf_counter() - t0)
    finally:
        p.close()

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    stream = Stream()
    try:
        tp = TopicPartition(KAFKA_TOPIC, 0)
        c.assign([tp])
        c.seek(tp, 0)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while stream.count + 1 < total and time.monotonic() < deadline:
            stream.add(sum(len(r) for r in c.poll(timeout_ms=500).values()))
    finally:
        c.close()
    return {"produce_eps": rate, **latency_ms(lat), "consume_eps": stream.rate()}


# --- confluent-kafka -------------------------------------------------------------------------------------------


def confluent(bootstrap: list[str], events: int, samples: int, event: bytes, total: int) -> dict[str, Any]:
    import confluent_kafka as ck

    boots = ",".join(bootstrap)
    p = ck.Producer(
        {
            "bootstrap.servers": boots,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": KAFKA_LINGER_MS,
            "batch.size": KAFKA_BATCH_BYTES,
        }
    )
    failed: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    p.produce(KAFKA_TOPIC, value=event, on_delivery=report)
    p.flush(CLIENT_TIMEOUT_S)

    def produce() -> int:
        for _ in range(events):
            while True:
                try:
                    p.produce(KAFKA_TOPIC, value=event, on_delivery=report)
                    break
                except BufferError:  # librdkafka's queue is full: serve delivery reports, then retry
                    p.poll(0.01)
            p.poll(0)
        assert p.flush(CLIENT_TIMEOUT_S) == 0 and not failed, failed[:3]
        return events

    rate = timed(produce)
    lat = []
    for _ in range(samples):
        t0 = time.perf_counter()
        p.produce(KAFKA_TOPIC, value=event, on_delivery=report)
        p.flush(CLIENT_TIMEOUT_S)
        lat.append(time.perf_counter() - t0)
    assert not failed, failed[:3]

    c = ck.Consumer({"bootstrap.servers": boots, "group.id": "bench", "enable.auto.commit": False})
    stream = Stream()
    try:
        c.assign([ck.TopicPartition(KAFKA_TOPIC, 0, 0)])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while stream.count + 1 < total and time.monotonic() < deadline:
            stream.add(sum(1 for m in c.consume(num_messages=10_000, timeout=0.5) if m.error() is None))
    finally:
        c.close()
    return {"produce_eps": rate, **latency_ms(lat), "consume_eps": stream.rate()}


# --- the run ---------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    event = b"e" * args.event_bytes
    out: dict[str, Any] = {"machine": machine(), "events": args.events, "samples": args.samples}
    out["event_bytes"] = args.event_bytes
    print("machine:", json.dumps(out["machine"]))
    with ClusterDriver.in_temp_dir("kafka-bench-", kafka=True) as cluster:
        cluster.start()
        bootstrap = [f"{c.me.host}:{c.me.kafka_port}" for c in cluster.configs]
        results: dict[str, Any] = {}
        results["native"] = native(cluster.addresses, args.events, args.samples, event)
        with Client(cluster.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:  # what a consumer from 0 reads
            total = sum(1 for _ in c.consume(0))
        results["kafka-python"] = kafka_python(bootstrap, args.events, args.samples, event, total)
        with Client(cluster.addresses, timeout_s=CLIENT_TIMEOUT_S) as c:
            total = sum(1 for _ in c.consume(0))
        results["confluent-kafka"] = confluent(bootstrap, args.events, args.samples, event, total)
    base = results["native"]
    for name, r in results.items():
        r["ratio_produce"] = round(r["produce_eps"] / base["produce_eps"], 3)
        r["ratio_p50"] = round(r["p50_ms"] / base["p50_ms"], 3)
        r["ratio_consume"] = round(r["consume_eps"] / base["consume_eps"], 3)
        results[name] = r
    out["results"] = results
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run")
    ap.add_argument("--events", type=int, help="events per produce-throughput run")
    ap.add_argument("--samples", type=int, help="one-in-flight latency samples")
    ap.add_argument("--event-bytes", type=int, default=100)
    args = ap.parse_args(argv)
    size = QUICK if args.quick else DEFAULT
    args.events = args.events or size["events"]
    args.samples = args.samples or size["samples"]
    out = run(args)
    print(f"\n{args.event_bytes}-byte events; ratio = client / native (produce, p50 latency, consume)")
    print(f"{'client':<16} {'produce ev/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'consume ev/s':>13}   ratios")
    for name, r in out["results"].items():
        print(
            f"{name:<16} {r['produce_eps']:>12,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['consume_eps']:>13,.0f}"
            f"   {r['ratio_produce']:.2f} / {r['ratio_p50']:.2f} / {r['ratio_consume']:.2f}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    line = json.dumps(out)
    (RESULTS_DIR / "kafka_bench.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
