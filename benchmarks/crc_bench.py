"""Which CRC for the batch frame: zlib.crc32 against hardware CRC32C (google-crc32c), if installed.

    python benchmarks/crc_bench.py

Prints a table and, last, one JSON line. The choice and its reasoning are in docs/PROTOCOL.md section 1.1.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import timeit
import zlib
from collections.abc import Callable


def _rate(fn: Callable[[bytes], int], data: bytes, seconds: float = 0.3) -> tuple[float, float]:
    """Return (GB/s, ns per call) for fn over data, timed for about `seconds`."""
    number = 1
    while True:
        elapsed = timeit.timeit(lambda: fn(data), number=number)
        if elapsed >= seconds:
            return len(data) * number / elapsed / 1e9, elapsed / number * 1e9
        number *= 4


def main() -> None:
    impls: dict[str, Callable[[bytes], int]] = {"zlib.crc32": zlib.crc32}
    try:
        import google_crc32c

        impls["google_crc32c"] = google_crc32c.value
    except ImportError:
        print("google-crc32c not installed: pip install google-crc32c to compare", file=sys.stderr)
    sizes = {"200B": os.urandom(200), "6KiB": os.urandom(6 * 1024), "32KiB": os.urandom(32 * 1024)}
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'implementation':<16}{'size':>8}{'GB/s':>10}{'ns/call':>12}")
    for name, fn in impls.items():
        results[name] = {}
        for label, data in sizes.items():
            gbps, ns = _rate(fn, data)
            results[name][label] = {"gb_per_s": round(gbps, 2), "ns_per_call": round(ns, 1)}
            print(f"{name:<16}{label:>8}{gbps:>10.2f}{ns:>12.1f}")
    machine = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    print(json.dumps({"crc": results, "machine": machine}))


if __name__ == "__main__":
    main()
