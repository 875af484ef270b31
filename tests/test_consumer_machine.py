"""The consumer's sans-I/O decisions (shmraft/client/consumer.py), which the blocking and the asyncio client
share: what each FETCH answer means, when to give up, and a group consumer's auto-commit bookkeeping. Pure:
no socket, no clock (every `now` is given)."""

from __future__ import annotations

import numpy as np
import pytest

from shmraft.client.consumer import FetchLoop, GroupCommits, check_consume_options, group_start, latest_offset
from shmraft.client.errors import (
    NodeNotServing,
    NoNodeReachable,
    NotLeaderError,
    OffsetOutOfRange,
    TooLarge,
    UnavailableError,
)
from shmraft.wire.client import Error, ErrorCode, Fetched, MetadataAnswer, encode_fetch, encode_fetch_frames

A = "127.0.0.1:7101"
B = "127.0.0.1:7201"


def loop(**kw: object) -> FetchLoop:
    options: dict[str, object] = {
        "follow": False,
        "max_bytes": 1000,
        "poll_wait_ms": 500,
        "reset": "earliest",
        "verify": True,
        "timeout_s": 10.0,
        "only": None,
        "prefer": A,
        "now": 100.0,
    }
    options.update(kw)
    return FetchLoop(640, **options)  # type: ignore[arg-type]


def fetched(next_offset: int, commit_offset: int, offsets: list[int]) -> Fetched:
    return Fetched(1, next_offset, commit_offset, np.array(offsets, dtype=np.uint64), [b"e"] * len(offsets))


def out_of_range(earliest: int, latest: int) -> Error:
    return Error(1, ErrorCode.OFFSET_OUT_OF_RANGE, "no", earliest_offset=earliest, latest_offset=latest)


def test_the_request_is_fetch_frames_with_verify_and_fetch_without_with_the_long_poll_only_when_following() -> None:
    assert loop().request()(7) == encode_fetch_frames(7, 640, 1000, 0)
    assert loop(verify=False, follow=True).request()(7) == encode_fetch(7, 640, 1000, 500)
    assert loop(follow=True).attempt_timeout_s == pytest.approx(0.5 + 2.0)
    assert loop(timeout_s=1.0).attempt_timeout_s == pytest.approx(1.0)


def test_records_then_stop_at_the_commit_offset_without_follow_and_go_on_with_it() -> None:
    m = loop()
    m.request()
    d = m.answer(fetched(700, 704, [640, 641]), A)
    assert d.error is None and list(d.pairs) == [(640, b"e"), (641, b"e")]
    assert m.after_records(fetched(700, 704, [640, 641]), 2, 100.0, 100.1).stop is False
    assert m.next_offset == 700
    assert m.after_records(fetched(704, 704, [700]), 1, 100.0, 100.1).stop  # reached the commit offset
    f = loop(follow=True)
    f.request()
    after = f.after_records(fetched(704, 704, [640]), 1, 100.0, 100.1)
    assert not after.stop and after.progress and not after.pause
    assert f.last_ok == 100.1


def test_an_empty_answer_stops_without_follow_and_pauses_with_follow_only_if_no_long_poll_waited() -> None:
    assert loop().after_records(fetched(640, 704, []), 0, 100.0, 100.0).stop
    f = loop(follow=True)  # 500 ms long poll: an empty answer after 0.3 s did wait, one after 0.01 s did not
    assert not f.after_records(fetched(640, 704, []), 0, 100.0, 100.3).pause
    assert f.after_records(fetched(640, 704, []), 0, 100.0, 100.01).pause


@pytest.mark.parametrize(("reset", "next_offset"), [("earliest", 1280), ("latest", 6400)], ids=["earliest", "latest"])
def test_an_offset_below_the_log_start_is_reset_and_fetched_again_on_the_same_connection(
    reset: str, next_offset: int
) -> None:
    m = loop(reset=reset)
    m.request()
    d = m.answer(out_of_range(1280, 6400), A)
    assert d.error is None and d.pairs is None and not d.close and not d.pause
    assert m.next_offset == next_offset


def test_an_offset_below_the_log_start_with_reset_error_raises_with_the_bounds() -> None:
    m = loop(reset="error")
    m.request()
    d = m.answer(out_of_range(1280, 6400), A)
    assert isinstance(d.error, OffsetOutOfRange) and (d.error.earliest_offset, d.error.latest_offset) == (1280, 6400)


def test_an_offset_past_a_lagging_node_goes_to_another_node_or_fails_naming_the_only_node() -> None:
    m = loop()
    m.request()
    d = m.answer(out_of_range(0, 64), A)
    assert d.close and d.pause and d.error is None and m.prefer is None
    assert isinstance(m.last_error, OffsetOutOfRange)
    o = loop(only=A)
    o.request()
    d = o.answer(out_of_range(0, 64), A)
    assert isinstance(d.error, NodeNotServing) and isinstance(d.error.__cause__, OffsetOutOfRange)


def test_retriable_errors_retry_at_the_named_leader_and_others_raise() -> None:
    m = loop()
    m.request()
    d = m.answer(Error(1, ErrorCode.NOT_LEADER, "no", leader=B), A)
    assert d.close and d.pause and m.prefer == B and isinstance(m.last_error, NotLeaderError)
    d = m.answer(Error(1, ErrorCode.UNAVAILABLE, "busy"), A)
    assert d.close and m.prefer is None
    assert isinstance(m.answer(Error(1, ErrorCode.TOO_LARGE, "big"), A).error, TooLarge)
    assert isinstance(loop(only=A).answer(Error(1, ErrorCode.UNAVAILABLE, "busy"), A).error, NodeNotServing)


def test_an_answer_of_another_kind_closes_without_a_pause() -> None:
    d = loop().answer(MetadataAnswer(1, 1, 1, 1, 1, []), A)
    assert d.close and not d.pause and d.error is None


def test_stale_names_what_kept_the_consumer_from_reading() -> None:
    m = loop()
    assert m.stale(110.0, lambda: [A]) is None  # timeout_s not passed yet
    assert isinstance(m.stale(110.5, lambda: [A, B]), NoNodeReachable)
    m.request_failed(UnavailableError("busy", code=ErrorCode.UNAVAILABLE))
    assert isinstance(m.stale(110.5, lambda: [A]), UnavailableError)
    m.last_error = OffsetOutOfRange("x", code=ErrorCode.OFFSET_OUT_OF_RANGE, earliest_offset=0, latest_offset=0)
    assert m.stale(110.5, lambda: [A]) is m.last_error
    assert isinstance(loop(only=A).stale(110.5, lambda: [A]), NodeNotServing)
    unreachable = NoNodeReachable([A], "refused")
    assert m.connect_failed(unreachable, 105.0) is None and m.last_error is unreachable
    assert m.connect_failed(unreachable, 110.0) is unreachable
    assert isinstance(loop(only=A).connect_failed(unreachable, 110.0), NodeNotServing)


def test_group_commits_every_n_events_or_interval_and_the_rest_at_the_end() -> None:
    g = GroupCommits(64, auto_commit_events=3, auto_commit_interval_ms=1000, now=0.0)
    assert [g.consumed(o, 0.1) for o in (64, 65)] == [None, None]
    assert g.consumed(66, 0.2) == 67  # the third record
    g.committed(67, 0.2)
    assert g.consumed(128, 1.3) == 129  # the interval passed since the last commit
    g.committed(129, 1.3)
    assert g.final() is None  # nothing new since
    g.consumed(129, 1.4)
    assert g.final() == 130
    never = GroupCommits(0, auto_commit_events=0, auto_commit_interval_ms=0, now=0.0)
    assert never.consumed(5, 10.0) is None and never.final() is None


def test_group_start_and_consume_options() -> None:
    assert group_start(4096, "latest") == 4096
    assert group_start(None, "earliest") == 0 and group_start(None, "error") == 0
    assert group_start(None, "latest") is None
    assert latest_offset(9) == 640
    check_consume_options(0, 1, 0, "earliest", "g", 0, 0)
    for bad, field in [
        ((0, 1, 0, "newest", None, 0, 0), "reset"),
        ((-1, 1, 0, "earliest", None, 0, 0), "from_offset"),
        ((0, 0, 0, "earliest", None, 0, 0), "max_bytes"),
        ((0, 1, -1, "earliest", None, 0, 0), "poll_wait_ms"),
        ((0, 1, 0, "earliest", "g", -1, 0), "auto_commit_events"),
    ]:
        with pytest.raises(ValueError, match=field):
            check_consume_options(*bad)  # type: ignore[arg-type]
