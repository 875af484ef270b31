#!/usr/bin/env python3
"""atheris harness: the peer envelope reader and the handshake and RAFT bodies (shmraft/wire/peer.py,
shmraft/wire/raft_codec.py).

The first byte picks a mode: raw bytes as a stream, or a correctly sealed envelope (valid CRC) of the kind
in the second byte around the rest, so that the body decoders get garbage. Properties: tools/fuzz/oracles.py.
Run: python tools/fuzz/fuzz_peer.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SMALL_BODY_MAX = 96


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    import oracles

    if len(data) < 2:
        return
    mode, kind = data[0], data[1]
    sizes, rest = oracles.sizes_from(data[2:], 4)
    if mode & 1:
        oracles.check_peer_stream(oracles.sealed_peer(kind, rest), sizes)
    else:
        oracles.check_peer_stream(rest, sizes)
        oracles.check_peer_stream(rest, sizes, max_body_bytes=SMALL_BODY_MAX)


if __name__ == "__main__":
    import _harness

    _harness.run("fuzz_peer")
