"""The numbers of the brief, defined once.

Every other module imports its limits from here (or from the config, whose defaults come from here),
so that a figure such as the heartbeat interval has exactly one home.
"""

from typing import Final

# --- cluster -----------------------------------------------------------------------------------
CLUSTER_SIZE_DEFAULT: Final = 3
CLUSTER_SIZE_MAX: Final = 7  # quorum arithmetic and tests cover 3 and 5; 7 is the hard upper bound

# --- batching ----------------------------------------------------------------------------------
BATCH_EVENTS_MAX: Final = 64  # a batch holds 1..64 events
BATCH_LINGER_MS: Final = 1.0  # the longest an event waits for company before its batch is cut
BATCH_PAYLOAD_MAX_BYTES: Final = 32 * 1024  # uncompressed event bytes + per-event tables

# --- batch frame (see docs/PROTOCOL.md) ---------------------------------------------------------
FRAME_MAGIC: Final = 0xDEADBEEF
FRAME_VERSION: Final = 1
FRAME_HEADER_BYTES: Final = 48
FRAME_FOOTER_BYTES: Final = 8
FRAME_END_MARKER: Final = 0x01DEADBEEF

# --- Raft timing ---------------------------------------------------------------------------------
HEARTBEAT_INTERVAL_MS: Final = 150
ELECTION_TIMEOUT_HEARTBEATS: Final = 3  # missed heartbeats before a follower suspects the leader
ELECTION_TIMEOUT_MS: Final = HEARTBEAT_INTERVAL_MS * ELECTION_TIMEOUT_HEARTBEATS  # 450 ms
ELECTION_TIMEOUT_SPREAD_MS: Final = 150  # per-node random extra, drawn from [0, spread)
ELECTION_DEADLINE_MS: Final = 150  # an election on a healthy network completes well within this
FAILOVER_TARGET_MS: Final = 600  # leader killed -> new leader committing

# --- Raft log ------------------------------------------------------------------------------------
APPEND_ENTRIES_MAX: Final = 4096  # entries in one AppendEntries, and so in one storage append (one WriteBatch)
FSYNC_POLICIES: Final = ("always", "never")  # "never" is unsafe (benchmarks only): see shmraft/storage/rocks.py

# --- files -----------------------------------------------------------------------------------------
PRIVATE_FILE_MODE: Final = 0o600  # secrets and the hard-state copy: readable by the node's user only
SNAPSHOT_CHUNK_BYTES_MAX: Final = 4 * 1024 * 1024  # one InstallSnapshot chunk (the peer body limit is 8 MiB)
