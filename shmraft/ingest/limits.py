"""The limits a node states in METADATA_ANSWER (docs/PROTOCOL.md section 2.4), taken from where each is enforced."""

from __future__ import annotations

from shmraft.config import NodeConfig
from shmraft.node.batching import EVENT_BYTES_MAX
from shmraft.node.dedup import DEDUP_HORIZON_ENTRIES_DEFAULT, DEDUP_SPANS_MAX_DEFAULT
from shmraft.node.groups import GROUP_NAME_BYTES_MAX, GROUPS_MAX
from shmraft.wire import client as cp


def node_limits(config: NodeConfig) -> cp.Limits:
    """This node's limits: the batch frame's largest event, the config's request, in-flight and fetch caps,
    the dedup window the raft worker keeps, and the consumer groups' bounds."""
    return cp.Limits(
        event_bytes_max=EVENT_BYTES_MAX,
        request_bytes_max=config.client_request_bytes_max,
        produce_events_max=cp.PRODUCE_EVENTS_MAX,
        inflight_bytes_max=config.client_inflight_bytes_max,
        fetch_bytes_max=config.fetch_bytes_max,
        dedup_horizon_entries=DEDUP_HORIZON_ENTRIES_DEFAULT,
        dedup_spans_max=DEDUP_SPANS_MAX_DEFAULT,
        dedup_producers_max=config.dedup_producers_max,
        groups_max=GROUPS_MAX,
        group_name_bytes_max=GROUP_NAME_BYTES_MAX,
    )
