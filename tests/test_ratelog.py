"""shmraft/net/ratelog.py: at most N lines per kind per interval, then one summary of what was suppressed."""

from __future__ import annotations

import logging

import pytest

from shmraft.net.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(caplog: pytest.LogCaptureFixture) -> tuple[RateLimitedLog, Clock, pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="ratelog-test")
    clock = Clock()
    return (
        RateLimitedLog(logging.getLogger("ratelog-test"), lines_per_interval=3, interval_s=10.0, clock=clock),
        clock,
        caplog,
    )


def test_lines_past_the_budget_are_counted_and_summarised(setup) -> None:
    rl, clock, caplog = setup
    written = [rl.warning("bad", "peer %d broke it", i) for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert [r.getMessage() for r in caplog.records] == [f"peer {i} broke it" for i in range(3)]
    clock.now = 10.0
    rl.flush()
    assert caplog.records[-1].getMessage() == "bad: 7 more lines suppressed in the last 10.0 s"
    assert rl.suppressed_total == 7


def test_kinds_have_separate_budgets_and_a_new_window_starts_with_the_summary(setup) -> None:
    rl, clock, caplog = setup
    for _ in range(5):
        rl.warning("a", "a-line")
        rl.error("b", "b-line")
    clock.now = 11.0
    assert rl.warning("a", "a again")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("a-line") == 3 and msgs.count("b-line") == 3
    assert msgs[-2:] == ["a: 2 more lines suppressed in the last 11.0 s", "a again"]


def test_nothing_suppressed_means_no_summary_and_forced_flush_reports_early(setup) -> None:
    rl, clock, caplog = setup
    rl.warning("a", "one")
    clock.now = 20.0
    rl.flush()
    assert [r.getMessage() for r in caplog.records] == ["one"]
    for _ in range(4):
        rl.warning("c", "c-line")
    rl.flush(force=True)
    assert caplog.records[-1].getMessage().startswith("c: 1 more lines suppressed")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), lines_per_interval=0)
