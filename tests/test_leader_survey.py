"""The client's survey of the nodes (`shmraft.client.leader.Survey`): whom it asks, in what order, and which
leader it believes. Pure: the answers are given, no socket is opened."""

from __future__ import annotations

import asyncio
import time

from shmraft.client.aio import _Leaders
from shmraft.client.errors import ConnectionFailed
from shmraft.client.leader import Ask, AskKind, LeaderTracker, Survey, member_address
from shmraft.wire.client import Error, ErrorCode, Member, MetadataAnswer

ORIGINAL = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
REPLACEMENTS = [Member(4, "127.0.0.1", 7004), Member(5, "127.0.0.1", 7005), Member(6, "127.0.0.1", 7006)]


def _tracker(addresses: list[str]) -> LeaderTracker:
    def no_socket(address: str, timeout_s: float):
        raise AssertionError(f"the survey opened a connection to {address}")

    return LeaderTracker(list(addresses), no_socket, 1.0)


def _answer(node_id: int, term: int, leader_id: int, members: list[Member]) -> MetadataAnswer:
    return MetadataAnswer(1, term, leader_id, 0, node_id, members)


def _original_members() -> list[Member]:
    return [Member(i + 1, "127.0.0.1", 7001 + i) for i in range(3)]


def _drain(survey: Survey, tracker: LeaderTracker, answers: dict[str, MetadataAnswer | Error | None]) -> list[str]:
    """Ask every node the survey names, as LeaderTracker._survey does (None: the node did not answer); the
    addresses asked, in order."""
    asked: list[str] = []
    while (address := survey.next_address()) is not None:
        asked.append(address)
        answer = answers.get(address)
        if answer is None:
            continue
        if isinstance(answer, MetadataAnswer):
            for m in answer.members:  # what ask_metadata does with every answer
                tracker.learn_address(member_address(m))
        survey.heard(answer)
    return asked


def test_a_hung_leader_is_never_asked_the_others_are_in_order() -> None:
    tracker = _tracker(ORIGINAL)
    answers = {ORIGINAL[1]: _answer(2, 5, 2, _original_members()), ORIGINAL[2]: _answer(3, 5, 2, _original_members())}
    survey = Survey(tracker, ORIGINAL[0])
    assert _drain(survey, tracker, answers) == ORIGINAL[1:]
    assert survey.leader == ORIGINAL[1]


def test_the_node_that_said_not_leader_is_asked_first_when_asked_for() -> None:
    tracker = _tracker(ORIGINAL)
    survey = Survey(tracker, ORIGINAL[2], ask_doubted=True)
    assert _drain(survey, tracker, {})[0] == ORIGINAL[2]


def test_a_removed_node_teaches_the_new_members_and_they_are_asked_in_the_same_round() -> None:
    """The whole cluster was replaced while the client held one connection: the only original node still up
    was removed (NOT_LEADER, no leader known). Its METADATA names the new members; the round goes on to them
    and finds the new leader, though none of their addresses was known when it began."""
    tracker = _tracker(ORIGINAL)
    removed = ORIGINAL[2]
    new = [member_address(m) for m in REPLACEMENTS]
    answers: dict[str, MetadataAnswer | Error | None] = {
        removed: _answer(3, 1, 0, REPLACEMENTS),  # knows the configuration it left, not who leads it
        new[0]: _answer(4, 2, 4, REPLACEMENTS),
        new[1]: _answer(5, 2, 4, REPLACEMENTS),
    }
    survey = Survey(tracker, removed, ask_doubted=True)
    asked = _drain(survey, tracker, answers)
    assert asked[0] == removed
    assert set(asked) == set(ORIGINAL) | set(new), asked
    assert len(asked) == len(set(asked)), f"a node asked twice: {asked}"
    assert survey.leader == new[0]


def test_without_asking_the_removed_node_the_new_members_stay_unknown() -> None:
    """The counterpart: when the NOT_LEADER node is left out (as before the fix), the dead originals are all
    there is to ask and no leader is found."""
    tracker = _tracker(ORIGINAL)
    survey = Survey(tracker, ORIGINAL[2])
    assert _drain(survey, tracker, {}) == ORIGINAL[:2]
    assert survey.leader is None


def test_the_highest_term_wins_and_at_equal_terms_not_the_doubted_node() -> None:
    tracker = _tracker(ORIGINAL)
    members = _original_members()
    stale = _answer(2, 3, 1, members)  # still names the hung leader 1 at term 3
    newer = _answer(3, 4, 3, members)
    survey = Survey(tracker, ORIGINAL[0])
    _drain(survey, tracker, {ORIGINAL[1]: stale, ORIGINAL[2]: newer})
    assert survey.leader == ORIGINAL[2]

    survey = Survey(tracker, ORIGINAL[0])
    same_term = {ORIGINAL[1]: _answer(2, 3, 1, members), ORIGINAL[2]: _answer(3, 3, 3, members)}
    _drain(survey, tracker, same_term)
    assert survey.leader == ORIGINAL[2]


def test_an_error_names_no_leader() -> None:
    tracker = _tracker(ORIGINAL)
    survey = Survey(tracker, ORIGINAL[0])
    busy = Error(1, ErrorCode.UNAVAILABLE, "starting")
    _drain(survey, tracker, {ORIGINAL[1]: busy, ORIGINAL[2]: busy})
    assert survey.leader is None


class _CannedConnection:
    """A connection whose METADATA answer is given (unit tests of the tracker's search only)."""

    def __init__(self, answer: MetadataAnswer | Error) -> None:
        self._answer = answer

    def __enter__(self) -> _CannedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, encode, timeout_s: float) -> MetadataAnswer | Error:
        return self._answer


def _replaced_cluster_answers() -> tuple[str, list[str], dict[str, MetadataAnswer]]:
    removed = ORIGINAL[2]
    new = [member_address(m) for m in REPLACEMENTS]
    answers = {
        removed: _answer(3, 1, 0, REPLACEMENTS),
        new[0]: _answer(4, 2, 5, REPLACEMENTS),
        new[1]: _answer(5, 2, 5, REPLACEMENTS),
        new[2]: _answer(6, 2, 5, REPLACEMENTS),
    }
    return removed, new, answers


def test_find_leader_after_not_leader_from_a_removed_node_reaches_the_new_members() -> None:
    """LeaderTracker.find_leader itself (the path a Producer's FIND_LEADER takes), the dead originals refusing
    connections: it learns the new members from the removed node and returns the leader they name."""
    removed, new, answers = _replaced_cluster_answers()
    opened: list[str] = []

    def open_connection(address: str, timeout_s: float) -> _CannedConnection:
        opened.append(address)
        if address not in answers:
            raise ConnectionFailed(f"{address}: connection refused")
        return _CannedConnection(answers[address])

    tracker = LeaderTracker(list(ORIGINAL), open_connection, 1.0)
    assert tracker.find_leader(removed, "", time.monotonic() + 5.0) == new[1]
    assert tracker.leader == new[1]
    assert opened[0] == removed
    assert set(new) <= set(tracker.addresses)


def test_the_asyncio_client_finds_the_new_members_the_same_way() -> None:
    """aio._Leaders.answer(FIND_LEADER without a hint), METADATA answered from the same table."""
    removed, new, answers = _replaced_cluster_answers()

    class CannedLeaders(_Leaders):
        async def ask_metadata(self, address: str, timeout_s: float) -> MetadataAnswer | Error:
            if address not in answers:
                raise ConnectionFailed(f"{address}: connection refused")
            for m in answers[address].members:
                self.hints.learn_address(member_address(m))
            return answers[address]

    def no_socket(address: str, timeout_s: float):
        raise AssertionError(f"the asyncio survey used the blocking opener for {address}")

    leaders = CannedLeaders(LeaderTracker(list(ORIGINAL), no_socket, 1.0), None, None)
    ask = Ask(AskKind.FIND_LEADER, removed, "")
    assert asyncio.run(leaders.answer(ask, time.monotonic() + 5.0)) == new[1]
