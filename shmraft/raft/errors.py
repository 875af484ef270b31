"""Errors the core raises to its driver: refused proposals and broken invariants."""

from __future__ import annotations


class ProposalError(Exception):
    """A proposal (or transfer request) was refused; nothing was appended."""


class NotLeaderError(ProposalError):
    """This node is not the leader; `leader` is the known leader's id (0 = unknown) for redirecting."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader is {leader or 'unknown'})")
        self.leader = leader


class TransferInProgressError(ProposalError):
    """The leader is handing leadership over and takes no proposals until that completes or times out."""


class BackpressureError(ProposalError):
    """Too many uncommitted entries/bytes on the leader; retry after commits catch up."""


class EntryTooLargeError(ProposalError):
    """The entry data exceeds RaftConfig.max_entry_bytes."""


class InvariantError(AssertionError):
    """A Raft safety invariant was about to be broken: a bug (or a test-only mutation). Never caught by the
    core; the process should die loudly rather than continue with a damaged log."""
