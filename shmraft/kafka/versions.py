"""Which Kafka APIs and versions shmraft serves, and what each version's headers look like.

The ranges were chosen so that kafka-python 2.x/3.x, librdkafka 2.x (confluent-kafka, kcat) and aiokafka
all find a common version for every API they need (each takes the highest version both sides support,
from our ApiVersions answer). They start at the first version with record batches v2 and idempotent
producers (Produce 3, Fetch 4) or the oldest a current client still sends (Metadata 0, kafka-python 2.0's
ListOffsets 1, OffsetCommit 2, OffsetFetch 1), and end at the last version before Kafka's "flexible"
encoding, so every body here uses the classic encoding. The only flexible version served is ApiVersions
v3, which librdkafka sends first. aiokafka 0.14's own highest versions (Produce 7, Fetch 11, Metadata 5,
ListOffsets 3, OffsetCommit 3, OffsetFetch 3, FindCoordinator 1, InitProducerId 0) are all inside.

| API             | key | versions | first flexible (not served) |
| --------------- | --: | -------- | --------------------------- |
| Produce         |   0 | 3-8      | 9                           |
| Fetch           |   1 | 4-11     | 12                          |
| ListOffsets     |   2 | 1-5      | 6                           |
| Metadata        |   3 | 0-8      | 9                           |
| OffsetCommit    |   8 | 2-7      | 8                           |
| OffsetFetch     |   9 | 1-5      | 6                           |
| FindCoordinator |  10 | 0-2      | 3                           |
| ApiVersions     |  18 | 0-3      | 3 (served)                  |
| InitProducerId  |  22 | 0-1      | 2                           |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shmraft.kafka import messages as m
from shmraft.kafka.codes import ApiKey


@dataclass(frozen=True, slots=True)
class Api:
    """One API: its request and response bodies, the versions served, and its first flexible version."""

    key: ApiKey
    request: type
    response: type
    min_version: int
    max_version: int
    flexible_from: int

    def supports(self, version: int) -> bool:
        return self.min_version <= version <= self.max_version

    def flexible(self, version: int) -> bool:
        return version >= self.flexible_from

    def request_header_version(self, version: int) -> int:
        """2 (tagged fields after client_id) for flexible versions, else 1."""
        return 2 if self.flexible(version) else 1

    def response_header_version(self, version: int) -> int:
        """1 (tagged fields after correlation_id) for flexible versions, else 0; ApiVersions always 0 (Kafka's
        rule, so that a client can read the answer before it knows which versions the broker speaks)."""
        return 1 if self.flexible(version) and self.key != ApiKey.API_VERSIONS else 0


APIS: Final[dict[int, Api]] = {
    a.key: a
    for a in (
        Api(ApiKey.PRODUCE, m.ProduceRequest, m.ProduceResponse, 3, 8, 9),
        Api(ApiKey.FETCH, m.FetchRequest, m.FetchResponse, 4, 11, 12),
        Api(ApiKey.LIST_OFFSETS, m.ListOffsetsRequest, m.ListOffsetsResponse, 1, 5, 6),
        Api(ApiKey.METADATA, m.MetadataRequest, m.MetadataResponse, 0, 8, 9),
        Api(ApiKey.OFFSET_COMMIT, m.OffsetCommitRequest, m.OffsetCommitResponse, 2, 7, 8),
        Api(ApiKey.OFFSET_FETCH, m.OffsetFetchRequest, m.OffsetFetchResponse, 1, 5, 6),
        Api(ApiKey.FIND_COORDINATOR, m.FindCoordinatorRequest, m.FindCoordinatorResponse, 0, 2, 3),
        Api(ApiKey.API_VERSIONS, m.ApiVersionsRequest, m.ApiVersionsResponse, 0, 3, 3),
        Api(ApiKey.INIT_PRODUCER_ID, m.InitProducerIdRequest, m.InitProducerIdResponse, 0, 1, 2),
    )
}

API_VERSIONS_ERROR_VERSION: Final = 0  # an ApiVersions request of a version not served is answered in v0


def supported_ranges() -> list[m.ApiVersionRange]:
    """The ApiVersions answer's list: every API served, with its range, in key order."""
    return [m.ApiVersionRange(a.key, a.min_version, a.max_version) for a in sorted(APIS.values(), key=lambda a: a.key)]
