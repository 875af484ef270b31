"""The Kafka requests and responses shmraft serves, field by field, in wire order (schema.py declares how).

Names follow Kafka's message definitions in snake_case; version ranges cover the versions in versions.py
(fields that appear only in later versions are left out). Each `*Request`/`*Response` is a whole body; the
classes without that suffix are the structures nested inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shmraft.kafka.schema import Kind, kfield

I8, I16, I32, I64, BOOL, STR, BYTES = Kind.INT8, Kind.INT16, Kind.INT32, Kind.INT64, Kind.BOOL, Kind.STRING, Kind.BYTES
NO_LEADER_EPOCH = -1
NO_AUTHORIZED_OPERATIONS = -(2**31)  # Kafka's "not requested" value for authorized-operations bit fields


# --- ApiVersions (key 18) ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ApiVersionsRequest:
    client_software_name: str = kfield(STR, "3+")
    client_software_version: str = kfield(STR, "3+")


@dataclass(slots=True)
class ApiVersionRange:
    api_key: int = kfield(I16)
    min_version: int = kfield(I16)
    max_version: int = kfield(I16)


@dataclass(slots=True)
class ApiVersionsResponse:
    error_code: int = kfield(I16)
    api_keys: list[ApiVersionRange] = kfield(ApiVersionRange, array=True)
    throttle_time_ms: int = kfield(I32, "1+")


# --- Metadata (key 3) -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MetadataRequestTopic:
    name: str = kfield(STR)


@dataclass(slots=True)
class MetadataRequest:
    topics: list[MetadataRequestTopic] | None = kfield(MetadataRequestTopic, array=True, nullable="1+")  # None: all
    allow_auto_topic_creation: bool = kfield(BOOL, "4+", default=True)
    include_cluster_authorized_operations: bool = kfield(BOOL, "8-10")
    include_topic_authorized_operations: bool = kfield(BOOL, "8+")


@dataclass(slots=True)
class MetadataBroker:
    node_id: int = kfield(I32)
    host: str = kfield(STR)
    port: int = kfield(I32)
    rack: str | None = kfield(STR, "1+", nullable="1+")


@dataclass(slots=True)
class MetadataPartition:
    error_code: int = kfield(I16)
    partition_index: int = kfield(I32)
    leader_id: int = kfield(I32)
    leader_epoch: int = kfield(I32, "7+", default=NO_LEADER_EPOCH)
    replica_nodes: list[int] = kfield(I32, array=True)
    isr_nodes: list[int] = kfield(I32, array=True)
    offline_replicas: list[int] = kfield(I32, "5+", array=True)


@dataclass(slots=True)
class MetadataTopic:
    error_code: int = kfield(I16)
    name: str = kfield(STR)
    is_internal: bool = kfield(BOOL, "1+")
    partitions: list[MetadataPartition] = kfield(MetadataPartition, array=True)
    topic_authorized_operations: int = kfield(I32, "8+", default=NO_AUTHORIZED_OPERATIONS)


@dataclass(slots=True)
class MetadataResponse:
    throttle_time_ms: int = kfield(I32, "3+")
    brokers: list[MetadataBroker] = kfield(MetadataBroker, array=True)
    cluster_id: str | None = kfield(STR, "2+", nullable="2+")
    controller_id: int = kfield(I32, "1+", default=-1)
    topics: list[MetadataTopic] = kfield(MetadataTopic, array=True)
    cluster_authorized_operations: int = kfield(I32, "8-10", default=NO_AUTHORIZED_OPERATIONS)


# --- Produce (key 0) --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ProducePartitionData:
    index: int = kfield(I32)
    records: bytes | None = kfield(BYTES, nullable="0+")  # record batches v2; see records.py


@dataclass(slots=True)
class ProduceTopicData:
    name: str = kfield(STR)
    partition_data: list[ProducePartitionData] = kfield(ProducePartitionData, array=True)


@dataclass(slots=True)
class ProduceRequest:
    transactional_id: str | None = kfield(STR, "3+", nullable="3+")
    acks: int = kfield(I16)
    timeout_ms: int = kfield(I32)
    topic_data: list[ProduceTopicData] = kfield(ProduceTopicData, array=True)


@dataclass(slots=True)
class BatchIndexAndErrorMessage:
    batch_index: int = kfield(I32)
    batch_index_error_message: str | None = kfield(STR, nullable="0+")


@dataclass(slots=True)
class ProducePartitionResponse:
    index: int = kfield(I32)
    error_code: int = kfield(I16)
    base_offset: int = kfield(I64)
    log_append_time_ms: int = kfield(I64, "2+", default=-1)
    log_start_offset: int = kfield(I64, "5+", default=-1)
    record_errors: list[BatchIndexAndErrorMessage] = kfield(BatchIndexAndErrorMessage, "8+", array=True)
    error_message: str | None = kfield(STR, "8+", nullable="0+")


@dataclass(slots=True)
class ProduceTopicResponse:
    name: str = kfield(STR)
    partition_responses: list[ProducePartitionResponse] = kfield(ProducePartitionResponse, array=True)


@dataclass(slots=True)
class ProduceResponse:
    responses: list[ProduceTopicResponse] = kfield(ProduceTopicResponse, array=True)
    throttle_time_ms: int = kfield(I32, "1+")


# --- Fetch (key 1) ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FetchPartition:
    partition: int = kfield(I32)
    current_leader_epoch: int = kfield(I32, "9+", default=NO_LEADER_EPOCH)
    fetch_offset: int = kfield(I64)
    log_start_offset: int = kfield(I64, "5+", default=-1)
    partition_max_bytes: int = kfield(I32)


@dataclass(slots=True)
class FetchTopic:
    topic: str = kfield(STR)
    partitions: list[FetchPartition] = kfield(FetchPartition, array=True)


@dataclass(slots=True)
class ForgottenTopic:
    topic: str = kfield(STR)
    partitions: list[int] = kfield(I32, array=True)


@dataclass(slots=True)
class FetchRequest:
    replica_id: int = kfield(I32, default=-1)
    max_wait_ms: int = kfield(I32)
    min_bytes: int = kfield(I32)
    max_bytes: int = kfield(I32, "3+", default=0x7FFFFFFF)
    isolation_level: int = kfield(I8, "4+")
    session_id: int = kfield(I32, "7+")
    session_epoch: int = kfield(I32, "7+", default=-1)
    topics: list[FetchTopic] = kfield(FetchTopic, array=True)
    forgotten_topics_data: list[ForgottenTopic] = kfield(ForgottenTopic, "7+", array=True)
    rack_id: str = kfield(STR, "11+")


@dataclass(slots=True)
class AbortedTransaction:
    producer_id: int = kfield(I64)
    first_offset: int = kfield(I64)


@dataclass(slots=True)
class FetchPartitionData:
    partition_index: int = kfield(I32)
    error_code: int = kfield(I16)
    high_watermark: int = kfield(I64)
    last_stable_offset: int = kfield(I64, "4+", default=-1)
    log_start_offset: int = kfield(I64, "5+", default=-1)
    aborted_transactions: list[AbortedTransaction] | None = kfield(
        AbortedTransaction, "4+", array=True, nullable="4+", default=None
    )
    preferred_read_replica: int = kfield(I32, "11+", default=-1)
    records: bytes | None = kfield(BYTES, nullable="0+")


@dataclass(slots=True)
class FetchTopicResponse:
    topic: str = kfield(STR)
    partitions: list[FetchPartitionData] = kfield(FetchPartitionData, array=True)


@dataclass(slots=True)
class FetchResponse:
    throttle_time_ms: int = kfield(I32, "1+")
    error_code: int = kfield(I16, "7+")
    session_id: int = kfield(I32, "7+")
    responses: list[FetchTopicResponse] = kfield(FetchTopicResponse, array=True)


# --- ListOffsets (key 2) ----------------------------------------------------------------------------------------

EARLIEST_TIMESTAMP = -2  # ListOffsets: the log start
LATEST_TIMESTAMP = -1  # ListOffsets: the high watermark


@dataclass(slots=True)
class ListOffsetsPartition:
    partition_index: int = kfield(I32)
    current_leader_epoch: int = kfield(I32, "4+", default=NO_LEADER_EPOCH)
    timestamp: int = kfield(I64)


@dataclass(slots=True)
class ListOffsetsTopic:
    name: str = kfield(STR)
    partitions: list[ListOffsetsPartition] = kfield(ListOffsetsPartition, array=True)


@dataclass(slots=True)
class ListOffsetsRequest:
    replica_id: int = kfield(I32, default=-1)
    isolation_level: int = kfield(I8, "2+")
    topics: list[ListOffsetsTopic] = kfield(ListOffsetsTopic, array=True)


@dataclass(slots=True)
class ListOffsetsPartitionResponse:
    partition_index: int = kfield(I32)
    error_code: int = kfield(I16)
    timestamp: int = kfield(I64, "1+", default=-1)
    offset: int = kfield(I64, "1+", default=-1)
    leader_epoch: int = kfield(I32, "4+", default=NO_LEADER_EPOCH)


@dataclass(slots=True)
class ListOffsetsTopicResponse:
    name: str = kfield(STR)
    partitions: list[ListOffsetsPartitionResponse] = kfield(ListOffsetsPartitionResponse, array=True)


@dataclass(slots=True)
class ListOffsetsResponse:
    throttle_time_ms: int = kfield(I32, "2+")
    topics: list[ListOffsetsTopicResponse] = kfield(ListOffsetsTopicResponse, array=True)


# --- InitProducerId (key 22) ------------------------------------------------------------------------------------


@dataclass(slots=True)
class InitProducerIdRequest:
    transactional_id: str | None = kfield(STR, nullable="0+")
    transaction_timeout_ms: int = kfield(I32)


@dataclass(slots=True)
class InitProducerIdResponse:
    throttle_time_ms: int = kfield(I32)
    error_code: int = kfield(I16)
    producer_id: int = kfield(I64, default=-1)
    producer_epoch: int = kfield(I16, default=-1)


# --- FindCoordinator (key 10) -----------------------------------------------------------------------------------

COORDINATOR_KEY_GROUP = 0
COORDINATOR_KEY_TRANSACTION = 1


@dataclass(slots=True)
class FindCoordinatorRequest:
    key: str = kfield(STR)
    key_type: int = kfield(I8, "1+")


@dataclass(slots=True)
class FindCoordinatorResponse:
    throttle_time_ms: int = kfield(I32, "1+")
    error_code: int = kfield(I16)
    error_message: str | None = kfield(STR, "1+", nullable="1+")
    node_id: int = kfield(I32)
    host: str = kfield(STR)
    port: int = kfield(I32)


# --- OffsetCommit (key 8) ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class OffsetCommitRequestPartition:
    partition_index: int = kfield(I32)
    committed_offset: int = kfield(I64)
    committed_leader_epoch: int = kfield(I32, "6+", default=NO_LEADER_EPOCH)
    committed_metadata: str | None = kfield(STR, nullable="0+")


@dataclass(slots=True)
class OffsetCommitRequestTopic:
    name: str = kfield(STR)
    partitions: list[OffsetCommitRequestPartition] = kfield(OffsetCommitRequestPartition, array=True)


@dataclass(slots=True)
class OffsetCommitRequest:
    group_id: str = kfield(STR)
    generation_id: int = kfield(I32, "1+", default=-1)
    member_id: str = kfield(STR, "1+")
    group_instance_id: str | None = kfield(STR, "7+", nullable="7+")
    retention_time_ms: int = kfield(I64, "2-4", default=-1)
    topics: list[OffsetCommitRequestTopic] = kfield(OffsetCommitRequestTopic, array=True)


@dataclass(slots=True)
class OffsetCommitResponsePartition:
    partition_index: int = kfield(I32)
    error_code: int = kfield(I16)


@dataclass(slots=True)
class OffsetCommitResponseTopic:
    name: str = kfield(STR)
    partitions: list[OffsetCommitResponsePartition] = kfield(OffsetCommitResponsePartition, array=True)


@dataclass(slots=True)
class OffsetCommitResponse:
    throttle_time_ms: int = kfield(I32, "3+")
    topics: list[OffsetCommitResponseTopic] = kfield(OffsetCommitResponseTopic, array=True)


# --- OffsetFetch (key 9) ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class OffsetFetchRequestTopic:
    name: str = kfield(STR)
    partition_indexes: list[int] = kfield(I32, array=True)


@dataclass(slots=True)
class OffsetFetchRequest:
    group_id: str = kfield(STR)
    topics: list[OffsetFetchRequestTopic] | None = kfield(OffsetFetchRequestTopic, array=True, nullable="2+")


@dataclass(slots=True)
class OffsetFetchResponsePartition:
    partition_index: int = kfield(I32)
    committed_offset: int = kfield(I64, default=-1)
    committed_leader_epoch: int = kfield(I32, "5+", default=NO_LEADER_EPOCH)
    metadata: str | None = kfield(STR, nullable="0+")
    error_code: int = kfield(I16)


@dataclass(slots=True)
class OffsetFetchResponseTopic:
    name: str = kfield(STR)
    partitions: list[OffsetFetchResponsePartition] = kfield(OffsetFetchResponsePartition, array=True)


@dataclass(slots=True)
class OffsetFetchResponse:
    throttle_time_ms: int = kfield(I32, "3+")
    topics: list[OffsetFetchResponseTopic] = kfield(OffsetFetchResponseTopic, array=True)
    error_code: int = kfield(I16, "2+")
