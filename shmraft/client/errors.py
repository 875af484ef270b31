"""Typed client errors: one class per server error code, plus the failures a client meets on its own.

Every error carries the server's `code` (None when the client itself gave up), the server's `message`
and, for NOT_LEADER, the `leader` address it named, so that callers can branch on the class and a log
line still says what the server said.
"""

from __future__ import annotations

from shmraft.raft.membership import STRICT_RECONFIG_CHECK
from shmraft.wire.client import ErrorCode


class ShmraftError(Exception):
    """Base class of every error the shmraft client raises."""

    def __init__(self, message: str, *, code: ErrorCode | None = None, leader: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.leader = leader

    @property
    def retriable(self) -> bool:
        """Whether resending the same request (same producer id and sequences) may succeed."""
        return self.code is not None and self.code.retriable


class ConnectionFailed(ShmraftError):
    """A node could not be reached, closed the connection, or sent bytes that break the protocol."""


class NoNodeReachable(ConnectionFailed):
    """No address of the cluster accepted a connection: nothing was sent."""

    def __init__(self, addresses: list[str], cause: str = "") -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(f"no node reachable at {', '.join(addresses)}{detail}")
        self.addresses = list(addresses)


class NotLeaderError(ShmraftError):
    """The node is not the leader; `leader` is the leader's "host:port" when the node knows it."""


class UnavailableError(ShmraftError):
    """The cluster has no quorum or no leader right now (UNAVAILABLE, or no node knows a leader)."""


class ShuttingDown(UnavailableError):
    """The node is stopping."""


class CommitTimeout(ShmraftError, TimeoutError):
    """The events were not known to be committed before the deadline.

    They MAY have been committed. Retry with the same client (the same producer id): the client keeps the
    unacknowledged events with their sequences and resends them, with those sequences, before anything
    else, so the server's deduplication keeps each event in the log once. `committed` holds the offsets
    of the leading events that were acknowledged before the deadline (a prefix of the call's events).
    """

    def __init__(self, message: str, *, code: ErrorCode | None = None, committed: list[int] | None = None) -> None:
        super().__init__(message, code=code)
        self.committed = list(committed or [])


class OutOfOrderSequence(ShmraftError):
    """An earlier sequence of this producer has not reached the log (a gap); resend the missing ones first."""


class MalformedRequest(ShmraftError):
    """The server refused the request as malformed (a client bug or a version mismatch)."""


class TooLarge(ShmraftError):
    """An event or a request exceeds a size limit of the protocol or of the server."""


class OffsetOutOfRange(ShmraftError):
    """A fetch asked for an offset the node does not hold: below `earliest_offset` (deleted by retention) or
    past the node's log end. `latest_offset` is the node's commit offset (where "latest" starts)."""

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, earliest_offset: int = 0, latest_offset: int = 0
    ) -> None:
        super().__init__(message, code=code)
        self.earliest_offset = earliest_offset
        self.latest_offset = latest_offset


class IntegrityError(ShmraftError):
    """A fetched batch frame failed its end-to-end check (its CRC32, footer or tables, or a log index that is
    not the one its header was stamped with): the bytes received are not what the log holds. `offset` is the
    first offset of the frame (its log index times 64), `index` its log index, `address` the node that sent it;
    no event of that frame was yielded. Not retriable on the same node; the caller may read from another."""

    def __init__(self, message: str, *, offset: int, index: int, address: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.index = index
        self.address = address


class SequenceTooOld(ShmraftError):
    """A retry of events the log holds already, older than the dedup window remembers: they are committed,
    once, but their offsets are forgotten. Do not resend them."""


class NodeNotServing(ShmraftError):
    """A client bound to one node (`Client(address, only_node=True)`) got no usable answer from it: it did not
    answer within the timeout, or answered with what would have sent an ordinary client to another node
    (NOT_LEADER, OFFSET_OUT_OF_RANGE past its log end, a retriable error). `address` is the node, `code` what
    it answered (None when it did not answer); the server's typed error, if any, is the `__cause__`."""

    def __init__(self, address: str, said: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(f"node {address} did not serve the request (no other node may): {said}", code=code)
        self.address = address
        self.said = said


class Unauthorized(ShmraftError):
    """The server refused the request."""


class UnknownGroup(ShmraftError):
    """The consumer group has no committed position."""


class TooManyGroups(ShmraftError):
    """The cluster holds the most consumer groups it may (METADATA's groups_max): no new group is accepted."""


class GroupNameTooLong(ShmraftError):
    """A group name longer than the node accepts (METADATA's group_name_bytes_max)."""


class BufferFull(ShmraftError):
    """A Producer's buffer stayed full until the timeout: the cluster is not keeping up or not reachable."""


class ProducerClosed(ShmraftError):
    """The Producer was closed; no more events are accepted."""


class MembershipError(ShmraftError):
    """A membership change was refused (nothing changed); the subclass says why."""


class MemberUnknown(MembershipError):
    """PROMOTE or REMOVE of a node that is not a member (or PROMOTE of a voter)."""


class ChangeInProgress(MembershipError):
    """Another membership change is not committed yet: one at a time. Retry once it is."""


class NoQuorum(MembershipError):
    """The change would leave no voter, or more voters or members than a cluster may hold."""


class AddressInUse(MembershipError):
    """ADD of a node id that is a member already, or at an address a member listens on."""


class NotCaughtUp(MembershipError):
    """PROMOTE of a learner still too far behind the leader; retry once it has caught up."""


class QuorumNotActive(UnavailableError, MembershipError):
    """A change of the voters (REMOVE of a voter, PROMOTE) refused by the strict reconfiguration check: the
    voters of the resulting configuration that the leader hears are not a majority of it (the text names the
    voters, the active ones and the majority). Sent as UNAVAILABLE (retriable; docs/PROTOCOL.md 2.2) with
    STRICT_RECONFIG_CHECK in its message; retry once the silent voters are back."""


_BY_CODE: dict[ErrorCode, type[ShmraftError]] = {
    ErrorCode.NOT_LEADER: NotLeaderError,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.MALFORMED: MalformedRequest,
    ErrorCode.TIMEOUT: CommitTimeout,
    ErrorCode.UNAVAILABLE: UnavailableError,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.OUT_OF_ORDER_SEQUENCE: OutOfOrderSequence,
    ErrorCode.OFFSET_OUT_OF_RANGE: OffsetOutOfRange,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.SEQUENCE_TOO_OLD: SequenceTooOld,
    ErrorCode.MEMBER_UNKNOWN: MemberUnknown,
    ErrorCode.CHANGE_IN_PROGRESS: ChangeInProgress,
    ErrorCode.NO_QUORUM: NoQuorum,
    ErrorCode.ADDRESS_IN_USE: AddressInUse,
    ErrorCode.NOT_CAUGHT_UP: NotCaughtUp,
    ErrorCode.UNKNOWN_GROUP: UnknownGroup,
    ErrorCode.TOO_MANY_GROUPS: TooManyGroups,
    ErrorCode.GROUP_NAME_TOO_LONG: GroupNameTooLong,
}


def error_from_server(code: ErrorCode, message: str, leader: str = "", address: str = "") -> ShmraftError:
    """The typed exception for an ERROR answer; `address` (the node that answered) goes into the text."""
    where = f" from {address}" if address else ""
    text = f"{code.name}{where}: {message}" if message else f"{code.name}{where}"
    cls = _BY_CODE.get(code, ShmraftError)
    if code is ErrorCode.UNAVAILABLE and STRICT_RECONFIG_CHECK in message:
        cls = QuorumNotActive
    if cls is CommitTimeout:
        return CommitTimeout(text, code=code)
    if cls is OffsetOutOfRange:
        return OffsetOutOfRange(text, code=code)
    return cls(text, code=code, leader=leader)
