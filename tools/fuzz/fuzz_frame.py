#!/usr/bin/env python3
"""atheris harness: batch frames (shmraft/wire/frame.py decode_batch): what a log entry holds, from a peer
or from disk. The first byte picks a mode: raw bytes, or re-sealed (a correct CRC recomputed, with the
magic and version set) so the fuzzer reaches the tables and the zstd path. Properties: tools/fuzz/oracles.py.
Run: python tools/fuzz/fuzz_frame.py -max_total_time=60
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    import oracles

    from shmraft.constants import FRAME_MAGIC, FRAME_VERSION

    if not data:
        return
    mode, rest = data[0], bytearray(data[1:])
    if mode & 1 and len(rest) >= 48:
        struct.pack_into("<IB", rest, 0, FRAME_MAGIC, FRAME_VERSION)
        oracles.check_frame(oracles.seal_frame(bytes(rest)))
    else:
        oracles.check_frame(bytes(rest))


if __name__ == "__main__":
    import _harness

    _harness.run("fuzz_frame")
