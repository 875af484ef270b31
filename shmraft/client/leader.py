"""Which node leads, and when to stop waiting for it: the client's leader discovery and probing in one place.

A `LeaderTracker` (one per Client, shared with its Producers) keeps the known addresses (given, plus the
members METADATA names), the last known leader (a hint), where the next search over the addresses starts
(moved past failed nodes) and the nodes under suspicion (they did not answer in time: tried last for
SUSPECT_S). It connects to the leader (or the first node that accepts), asks METADATA, follows NOT_LEADER,
and surveys the other nodes when the leader is silent.

Timing, the same for the blocking `produce()` and the pipelined Producer (`Silence` says when):

- one attempt (a PRODUCE, or the requests in flight of a Producer) waits ATTEMPT_ANSWER_TIMEOUT_S for an
  answer before the node is suspected to be hung (a stopped process or a vanished host keeps its sockets
  open, so nothing fails): about twice the election timeout, so that by then the others have a new leader;
- meanwhile, once the leader has been silent for an election timeout (PROBE_AFTER_S), the other nodes are
  asked who leads every PROBE_INTERVAL_S (one METADATA each, its adaptive ProbeTimeouts time at most): when they
  name another leader the client goes there at once, so a vanished leader costs about the election
  (~0.5-0.6 s), not the full 1 s. A leader that is only slow is still named by the others, and is waited
  for up to ATTEMPT_ANSWER_TIMEOUT_S.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

from shmraft.client.connection import Connection, parse_address
from shmraft.client.errors import ConnectionFailed, NoNodeReachable, ShmraftError, Unauthorized, error_from_server
from shmraft.constants import CLUSTER_SIZE_MAX, ELECTION_TIMEOUT_MS
from shmraft.wire.client import Error, ErrorCode, Member, MetadataAnswer, encode_metadata

REDIRECTS_BEFORE_BACKOFF: Final = 2  # NOT_LEADER redirects followed at once before pausing (elections)
METADATA_TIMEOUT_S: Final = 1.0  # one METADATA question to one node
FIND_LEADER_TIMEOUT_S: Final = 2.0  # the Producer's METADATA questions after a NOT_LEADER or a hung leader
ATTEMPT_ANSWER_TIMEOUT_S: Final = 1.0
PROBE_AFTER_S: Final = ELECTION_TIMEOUT_MS / 1000
PROBE_INTERVAL_S: Final = 0.05
PROBE_METADATA_TIMEOUT_S: Final = 0.2  # a probe's METADATA to one node while that node answers quickly (floor)
PROBE_METADATA_TIMEOUT_MAX_S: Final = 0.5  # ... and at most this, for a node that answers slowly (ceiling)
PROBE_TIMEOUT_ANSWER_FACTOR: Final = 4.0  # a probe waits this many times the node's smoothed answer time
ANSWER_TIME_WEIGHT: Final = 0.25  # the weight of a new answer time in the smoothed one (an EWMA, as TCP's SRTT)
SUSPECT_S: Final = 5.0  # a node that did not answer in time is tried last for this long (unless named leader)
ADDRESSES_MAX: Final = 2 * CLUSTER_SIZE_MAX  # addresses given plus members learnt from METADATA

assert ATTEMPT_ANSWER_TIMEOUT_S >= 2 * ELECTION_TIMEOUT_MS / 1000
assert PROBE_AFTER_S + PROBE_METADATA_TIMEOUT_MAX_S < ATTEMPT_ANSWER_TIMEOUT_S
assert PROBE_METADATA_TIMEOUT_S <= PROBE_METADATA_TIMEOUT_MAX_S


def member_address(member: Member) -> str:
    return f"{member.host}:{member.port}"


def leader_address(answer: MetadataAnswer) -> str | None:
    """The client address of the leader a METADATA answer names, None when it names none."""
    for m in answer.members:
        if m.node_id == answer.leader_id and answer.leader_id != 0:
            return member_address(m)
    return None


class AskKind(enum.Enum):
    """A question the Producer's state machine has for the LeaderTracker (it does no I/O itself)."""

    NODE_FAILED = "node_failed"  # the connection to `address` broke: forget it as leader (no answer)
    PROBE = "probe"  # `address` is silent: do the others name another leader? (see leader_elsewhere)
    REDISCOVER = "rediscover"  # `address` stayed silent too long: suspect it, who leads now?
    FIND_LEADER = "find_leader"  # `address` answered NOT_LEADER naming `hint` (or no one): who leads?


class Ask(NamedTuple):
    kind: AskKind
    address: str
    hint: str = ""


class Silence:
    """How long a node that owes answers has been silent: when to probe the others, when it counts as hung.

    Pure (times are given): `heard(now)` on every answer (or when a wait starts), `probed(now)` after each
    probe that found no other leader. The first probe is due PROBE_AFTER_S after the last answer, then one
    every PROBE_INTERVAL_S; the node is hung `attempt_s` after the last answer.
    """

    __slots__ = ("heard_at", "probe_at", "attempt_s")

    def __init__(self, now: float = 0.0, attempt_s: float = ATTEMPT_ANSWER_TIMEOUT_S) -> None:
        self.heard_at = now
        self.probe_at = now
        self.attempt_s = attempt_s

    def heard(self, now: float) -> None:
        self.heard_at = now

    def probed(self, now: float) -> None:
        self.probe_at = now + PROBE_INTERVAL_S

    def probe_due(self) -> float:
        """When the other nodes may next be asked who leads."""
        return max(self.heard_at + PROBE_AFTER_S, self.probe_at)

    def hung_at(self) -> float:
        """When the node is taken for hung (suspected, its connection dropped)."""
        return self.heard_at + self.attempt_s


class ProbeTimeouts:
    """How long a probe waits for one node's METADATA answer: adaptive, so that a node that is merely slow (a
    busy machine: its answers take 300 ms instead of 3) is not given up on, while a quick node that stops
    answering is still detected at once.

    Pure (answer times are given). Per node: a smoothed answer time (weight ANSWER_TIME_WEIGHT per answer); the
    timeout is PROBE_TIMEOUT_ANSWER_FACTOR times it, within [floor_s, ceiling_s]. A node that let a probe
    time out gets twice its last timeout next time (still at most ceiling_s); its next answer brings it back
    to the smoothed figure. A node never heard from gets floor_s.
    """

    __slots__ = ("floor_s", "ceiling_s", "_smoothed_s", "_backoff_s")

    def __init__(
        self, floor_s: float = PROBE_METADATA_TIMEOUT_S, ceiling_s: float = PROBE_METADATA_TIMEOUT_MAX_S
    ) -> None:
        if not 0 < floor_s <= ceiling_s:
            raise ValueError(f"floor_s, ceiling_s: expected 0 < floor <= ceiling, got {floor_s}, {ceiling_s}")
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self._smoothed_s: dict[str, float] = {}  # address -> smoothed METADATA answer time
        self._backoff_s: dict[str, float] = {}  # address -> the timeout after probes that timed out

    def answered(self, address: str, seconds: float) -> None:
        """`address` answered a METADATA question in `seconds`."""
        old = self._smoothed_s.get(address)
        self._smoothed_s[address] = seconds if old is None else old + ANSWER_TIME_WEIGHT * (seconds - old)
        self._backoff_s.pop(address, None)

    def timed_out(self, address: str) -> None:
        """`address` let a probe time out (or failed it): wait twice as long next time, up to the ceiling."""
        self._backoff_s[address] = min(2 * self.timeout_s(address), self.ceiling_s)

    def timeout_s(self, address: str) -> float:
        """The time a probe gives `address` now."""
        smoothed = self._smoothed_s.get(address, 0.0)
        adaptive = min(max(PROBE_TIMEOUT_ANSWER_FACTOR * smoothed, self.floor_s), self.ceiling_s)
        return max(adaptive, self._backoff_s.get(address, 0.0))


class LeaderTracker:
    """The known addresses, the leader hint and the suspects of one Client; safe to share between threads
    as far as the hints go (they are hints: a stale one costs a redirect, never a wrong answer)."""

    def __init__(
        self,
        addresses: list[str],
        open_connection: Callable[[str, float], Connection],
        connect_timeout_s: float,
        *,
        only_node: bool = False,
    ) -> None:
        if only_node and len(addresses) != 1:
            raise ValueError(f"only_node: expected exactly one address, got {len(addresses)}")
        self.addresses = addresses
        # bound to addresses[0]: no address is ever learnt, and every search (connect, METADATA, FETCH, a leader
        # named in NOT_LEADER) ends at that node, so no answer ever comes from another node
        self.only_node = only_node
        self.connect_timeout_s = connect_timeout_s
        self._open = open_connection
        self.leader: str | None = None  # last known leader address
        self._rotation = 0  # where the next search over addresses starts, moved past failed nodes
        self._suspects: dict[str, float] = {}  # address -> until when it is tried last (it did not answer)
        self._suspects_lock = threading.Lock()  # produce() and producers' I/O threads share the hints
        self.probe_timeouts = ProbeTimeouts()  # per node, how long a probe waits for its METADATA answer
        # what the failover did, for reports (probe, probe_moved, probe_no_answer, rediscover, find_leader)
        self.counts: Counter[str] = Counter()

    # --- hints ------------------------------------------------------------------------------------------

    def learn_address(self, address: str) -> None:
        if self.only_node:
            return
        if address not in self.addresses and len(self.addresses) < ADDRESSES_MAX:
            try:
                parse_address(address)
            except ValueError:
                return
            self.addresses.append(address)

    def candidates(self, prefer: str | None) -> list[str]:
        """Every known address: `prefer` first, then from the rotation point on, nodes under suspicion last
        (the one node, whatever `prefer` says, when bound to it)."""
        if self.only_node:
            return [self.addresses[0]]
        addrs = list(self.addresses)
        k = self._rotation % len(addrs)
        ordered = addrs[k:] + addrs[:k]
        suspects = self.current_suspects()
        if suspects:
            ordered = [a for a in ordered if a not in suspects] + [a for a in ordered if a in suspects]
        if prefer:
            ordered = [prefer] + [a for a in ordered if a != prefer]
        return ordered

    def current_suspects(self) -> set[str]:
        now = time.monotonic()
        with self._suspects_lock:
            for address in [a for a, until in self._suspects.items() if until <= now]:
                del self._suspects[address]
            return set(self._suspects)

    def suspect(self, address: str) -> None:
        """`address` did not answer in time (hung or vanished): forget it as leader, try it last for a while."""
        with self._suspects_lock:
            self._suspects[address] = time.monotonic() + SUSPECT_S
        self.node_failed(address)

    def answered(self, address: str) -> None:
        """`address` answered: it is not under suspicion any more."""
        if self._suspects:
            with self._suspects_lock:
                self._suspects.pop(address, None)

    def node_failed(self, address: str) -> None:
        """Forget `address` as leader and start the next search after it."""
        if self.leader == address:
            self.leader = None
        if address in self.addresses:
            self._rotation = self.addresses.index(address) + 1

    def answer(self, ask: Ask, deadline: float) -> str | None:
        """Answer the Producer's question (blocking, METADATA to the other nodes until `deadline`): the
        leader found, or None (no leader named yet; for PROBE, none other than the silent one)."""
        if ask.kind is AskKind.NODE_FAILED:
            self.node_failed(ask.address)
            return None
        if ask.kind is AskKind.PROBE:
            return self.leader_elsewhere(ask.address)
        if ask.kind is AskKind.REDISCOVER:
            self.counts["rediscover"] += 1
            self.suspect(ask.address)
            return self.rediscover(ask.address, deadline)
        self.counts["find_leader"] += 1
        return self.find_leader(ask.address, ask.hint, deadline)

    # --- asking the nodes ---------------------------------------------------------------------------------

    def connect(self, deadline: float, prefer: str | None = None) -> Connection:
        """A connection to the first node that accepts one, `prefer` first; NoNodeReachable if none does."""
        tried: list[str] = []
        last = ""
        for address in self.candidates(prefer):
            remaining = deadline - time.monotonic()
            if remaining <= 0 and tried:
                break
            tried.append(address)
            try:
                return self._open(address, max(min(self.connect_timeout_s, remaining), 0.01))
            except ConnectionFailed as exc:
                last = str(exc)
                self.node_failed(address)
        raise NoNodeReachable(tried, last)

    def ask_metadata(self, address: str, timeout_s: float) -> MetadataAnswer | Error:
        """One METADATA question on a connection of its own; learns the members' addresses."""
        with self._open(address, min(self.connect_timeout_s, timeout_s)) as conn:
            answer = conn.request(encode_metadata, timeout_s)
        if not isinstance(answer, MetadataAnswer | Error):
            raise ConnectionFailed(f"unexpected {type(answer).__name__} from {address} to METADATA")
        if isinstance(answer, Error) and answer.code is ErrorCode.UNAUTHORIZED:
            raise error_from_server(answer.code, answer.message, answer.leader, address)
        if isinstance(answer, MetadataAnswer):
            for m in answer.members:
                self.learn_address(member_address(m))
        return answer

    def find_leader(self, not_leader: str, hint: str, deadline: float) -> str | None:
        """After NOT_LEADER from `not_leader`: the leader named in the error, else the one METADATA names."""
        if hint and hint != not_leader:
            self.learn_address(hint)
            self.leader = hint
            return hint
        self.node_failed(not_leader)
        self.leader = self._survey(not_leader, deadline, METADATA_TIMEOUT_S, ask_excluded=True)
        return self.leader

    def rediscover(self, excluded: str, deadline: float) -> str | None:
        """Ask every node but `excluded` (a follower, or a leader that stopped answering) for METADATA.

        The leader named with the highest term wins; at equal terms one other than `excluded` is preferred
        (a hung leader's own view is stale, and it is not asked at all). Sets and returns the leader hint;
        None when no node names a leader by `deadline` (an election is still going on).
        """
        self.leader = self._survey(excluded, deadline, METADATA_TIMEOUT_S)
        return self.leader

    def leader_elsewhere(self, silent: str) -> str | None:
        """`silent` leads but has left a request unanswered for PROBE_AFTER_S: if the other nodes now name
        another leader, make it the leader hint and return it; else None (keep waiting for `silent`)."""
        self.counts["probe"] += 1
        survey_s = self.probe_survey_s(silent)
        leader = self._survey(silent, time.monotonic() + survey_s, None)
        if leader is None or leader == silent:
            return None
        self.counts["probe_moved"] += 1
        self.suspect(silent)
        self.leader = leader
        return leader

    def probe_survey_s(self, silent: str) -> float:
        """The most a probe of every node but `silent` may take: the sum of their probe timeouts."""
        return sum(self.probe_timeouts.timeout_s(a) for a in self.addresses if a != silent)

    def probe_answered(self, address: str, seconds: float | None) -> None:
        """A probe's METADATA to `address` was answered in `seconds` (None: it failed or timed out)."""
        if seconds is None:
            self.counts["probe_no_answer"] += 1
            self.probe_timeouts.timed_out(address)
        else:
            self.probe_timeouts.answered(address, seconds)

    def _survey(
        self, excluded: str, deadline: float, per_node_s: float | None, *, ask_excluded: bool = False
    ) -> str | None:
        """The leader the nodes name (see Survey; `excluded` is asked first with `ask_excluded`, else never).
        Each node is given `per_node_s`, or with None (a probe) its adaptive probe timeout, whose answer times it
        feeds."""
        survey = Survey(self, excluded, ask_doubted=ask_excluded)
        probe = per_node_s is None
        while (address := survey.next_address()) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            asked_at = time.monotonic()
            try:
                timeout_s = self.probe_timeouts.timeout_s(address) if probe else per_node_s
                answer = self.ask_metadata(address, min(timeout_s, remaining))
            except Unauthorized:
                raise
            except ShmraftError:
                if probe:
                    self.probe_answered(address, None)
                continue
            if probe:
                self.probe_answered(address, time.monotonic() - asked_at)
            self.answered(address)
            survey.heard(answer)
        return survey.leader


class Survey:
    """One round of asking the nodes who leads: which node to ask next, and the leader their answers name.

    Pure (the caller asks and reports each answer). The order is every known address from the tracker's rotation
    point, suspects last; `doubted` (a hung leader, or the node that just answered NOT_LEADER) is never asked, or
    asked first with `ask_doubted` (it answered, so it is alive, and a node removed from the cluster knows the new
    configuration's members when the client knows none of them). Addresses the answers teach are asked in the
    same round, each node at most once (so a round is bounded by ADDRESSES_MAX). The leader named with the
    highest term wins; at equal terms one other than `doubted` is preferred (a hung leader's view is stale).
    """

    __slots__ = ("_tracker", "_doubted", "_queue", "_seen", "_best")

    def __init__(self, tracker: LeaderTracker, doubted: str, *, ask_doubted: bool = False) -> None:
        self._tracker = tracker
        self._doubted = doubted
        self._queue = tracker.candidates(doubted if ask_doubted else None)
        if not ask_doubted:
            self._queue = [a for a in self._queue if a != doubted]
        self._seen = set(self._queue) | {doubted}
        self._best: tuple[tuple[int, bool], str] | None = None

    def next_address(self) -> str | None:
        """The next node to ask, None when every known one has been asked."""
        for address in self._tracker.candidates(None):
            if address not in self._seen:
                self._seen.add(address)
                self._queue.append(address)
        return self._queue.pop(0) if self._queue else None

    def heard(self, answer: MetadataAnswer | Error) -> None:
        """A node's answer to METADATA (an Error names no leader)."""
        if isinstance(answer, MetadataAnswer) and (leader := leader_address(answer)) is not None:
            key = (answer.term, leader != self._doubted)
            if self._best is None or key > self._best[0]:
                self._best = (key, leader)

    @property
    def leader(self) -> str | None:
        """The leader named with the highest term so far, None when no answer named one."""
        return self._best[1] if self._best is not None else None
