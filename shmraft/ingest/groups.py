"""Consumer-group requests in ingest, from receipt to answer (pure: requests and notes in, callbacks out).

A request (native GROUP_COMMIT / GROUP_FETCH / GROUPS, or the Kafka door's OffsetCommit / OffsetFetch) gets a
token and travels to the raft worker on R6 (node/records.py `GroupRequest`); the raft worker's GROUP_RESULT
note (R5) carries the token back with a status and the answer's data, and the request's `reply` is called
with them. Every request gets exactly one reply: the result, or NOT_LEADER when leadership changes while a
commit waits (the raft worker forgets it then), or TIMEOUT past its deadline (UNAVAILABLE off the leader).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shmraft.ingest.tracker import NS_PER_MS
from shmraft.node.records import GroupRequest, GroupRequestKind, decode_group_request, encode_group_request
from shmraft.wire.client import ErrorCode

GROUP_TIMEOUT_MS_DEFAULT: Final = 5_000  # a group request not answered by then fails TIMEOUT
GROUP_TIMEOUT_MS_MAX: Final = 120_000
GROUP_REQUESTS_MAX: Final = 10_000  # requests waiting at once in one ingest; more are refused UNAVAILABLE

Reply = Callable[[int, bytes], None]  # (status: 0 or an ErrorCode, GROUP_RESULT payload)


@dataclass(slots=True)
class _Waiting:
    kind: GroupRequestKind
    reply: Reply
    deadline_ns: int


class GroupRequests:
    """Waiting group requests by token."""

    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def submit(
        self, kind: GroupRequestKind, flags: int, body: bytes, reply: Reply, timeout_ms: int, now_ns: int
    ) -> bytes | None:
        """The R6 record for a new request, or None when too many wait (the caller answers UNAVAILABLE)."""
        if len(self._waiting) >= GROUP_REQUESTS_MAX:
            return None
        token = next(self._tokens)
        timeout_ms = min(timeout_ms or GROUP_TIMEOUT_MS_DEFAULT, GROUP_TIMEOUT_MS_MAX)
        self._waiting[token] = _Waiting(kind, reply, now_ns + timeout_ms * NS_PER_MS)
        return encode_group_request(GroupRequest(kind, token, flags, body))

    def withdraw(self, record: bytes) -> None:
        """A request whose record could not be sent (R6 full): forget it, the caller answers."""
        self._waiting.pop(decode_group_request(record).token, None)

    def on_result(self, token: int, status: int, payload: bytes) -> None:
        """A GROUP_RESULT note: the request's one reply (a token no longer waiting is ignored)."""
        w = self._waiting.pop(token, None)
        if w is not None:
            w.reply(status, payload)

    def on_leadership_lost(self) -> None:
        """Leadership changed: commits waiting will get no result (the raft worker forgot them)."""
        for token, w in list(self._waiting.items()):
            if w.kind is GroupRequestKind.COMMIT:
                del self._waiting[token]
                w.reply(ErrorCode.NOT_LEADER, b"")

    def expire(self, now_ns: int, is_leader: bool) -> None:
        code = ErrorCode.TIMEOUT if is_leader else ErrorCode.UNAVAILABLE
        for token, w in list(self._waiting.items()):
            if now_ns >= w.deadline_ns:
                del self._waiting[token]
                w.reply(code, b"")
