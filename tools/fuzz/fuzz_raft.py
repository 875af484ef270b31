#!/usr/bin/env python3
"""atheris harness: RAFT bodies alone (shmraft/wire/raft_codec.py decode_raft): what a member could send once
the handshake is done. The first byte is folded onto the known kinds (and a few unknown ones) so the fuzzer
spends its time inside the decoders. Properties: tools/fuzz/oracles.py.
Run: python tools/fuzz/fuzz_raft.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    import oracles

    if not data:
        return
    oracles.check_raft_body(bytes([data[0] % 9]) + data[1:])


if __name__ == "__main__":
    import _harness

    _harness.run("fuzz_raft")
