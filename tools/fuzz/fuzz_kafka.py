#!/usr/bin/env python3
"""atheris harness: the Kafka port past the decoder, the listener's reader and the Kafka door
(shmraft/ingest/kafka_listener.py, shmraft/ingest/kafka_door.py), with the tracker and the fetch server faked.

The first byte picks the node's state (leader or not, serving or not) and the mode: raw bytes as a stream, or
the rest behind a size prefix and a valid request header of an API and version picked by the next two bytes (so
the fuzzer reaches the body decoders and the door at once); the next four give chunk sizes.
Properties: tools/fuzz/kafka_oracle.py. Run: python tools/fuzz/fuzz_kafka.py -max_total_time=60
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ != "__main__":  # imported by _harness.run inside atheris' instrumentation, with shmraft's door
    import kafka_oracle

    from shmraft.kafka.versions import APIS

HEADER = struct.Struct(">hhi")  # api_key, api_version, correlation_id (then client_id: null)
NULL_STRING = b"\xff\xff"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if len(data) < 3:
        return
    mode, key_pick, version_pick = data[0], data[1], data[2]
    sizes, rest = kafka_oracle.sizes_from(data[3:], 4)
    world = kafka_oracle.World(kafka_oracle.node_state(bool(mode & 2), bool(mode & 4), 1, 3), None, (0, 64))
    if mode & 1:
        keys = sorted(APIS)
        api = APIS[keys[key_pick % len(keys)]]
        version = api.min_version + version_pick % (api.max_version - api.min_version + 1)
        body = HEADER.pack(api.key, version, 1) + NULL_STRING + rest
        frame = struct.pack(">i", len(body)) + body
        kafka_oracle.check_door([frame], world, [(64, None)], [], sizes)
    else:
        kafka_oracle.check_door([rest], world, [(64, None)], [], sizes)


if __name__ == "__main__":
    import _harness

    _harness.run("fuzz_kafka")
