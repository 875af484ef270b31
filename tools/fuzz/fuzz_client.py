#!/usr/bin/env python3
"""atheris harness: the client protocol reader, requests and answers (shmraft/wire/client.py).

The first byte picks a mode: raw bytes as a stream, or a valid header around the rest (so the fuzzer reaches
the body decoders at once); the next four give chunk sizes. Properties: tools/fuzz/oracles.py.
Run: python tools/fuzz/fuzz_client.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SMALL_BODY_MAX = 64  # a second reader with a small limit, so "too large" is reached often


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    import oracles

    if len(data) < 2:
        return
    mode, kind = data[0], data[1]
    sizes, rest = oracles.sizes_from(data[2:], 4)
    if mode & 1:
        oracles.check_client_body(kind, rest)
    else:
        oracles.check_client_stream(rest, sizes)
        oracles.check_client_stream(rest, sizes, max_body_bytes=SMALL_BODY_MAX)


if __name__ == "__main__":
    import _harness

    _harness.run("fuzz_client")
