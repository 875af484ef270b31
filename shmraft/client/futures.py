"""Light futures for the Producer: no lock or Condition per instance.

`concurrent.futures.Future` builds a Condition (and its RLock) per instance; at tens of thousands of events
per second that was about half of a producer's CPU. Here every future of a Producer shares the Producer's
one Condition, and the I/O thread resolves a whole answered request under one acquisition of it:

- `BatchFuture` (from `Producer.send_many`) resolves to the list of the events' offsets, in call order;
- `EventFuture` (from `Producer.send`) is a view of one position in a BatchFuture shared by the consecutive
  send() calls that went into the same request, so a send() costs one small object and no lock of its own.

Both offer what callers use of concurrent.futures.Future: `result(timeout)`, `exception(timeout)`, `done()`,
`add_done_callback(fn)` (fn gets the future; it runs in the I/O thread, or at once if already done;
an exception it raises is logged and ignored), and `cancel()` (always False: sent events cannot be
withdrawn). They are not accepted by `concurrent.futures.wait()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_Callback = tuple[Callable[[Any], object], Any]  # (fn, the future handed to fn)


class _Base(Generic[T]):
    """result/exception/done/add_done_callback over `_batch()`, the BatchFuture that holds the outcome."""

    __slots__ = ()

    def _batch(self) -> BatchFuture:
        raise NotImplementedError

    def _value(self, offsets: list[int]) -> T:
        raise NotImplementedError

    def done(self) -> bool:
        return self._batch()._done

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return not self._batch()._done

    def result(self, timeout: float | None = None) -> T:
        """The outcome, waiting up to `timeout` seconds (None: no limit); TimeoutError if still pending."""
        batch = self._batch()
        if not batch._done:
            batch._wait(timeout)
        if batch._error is not None:
            raise batch._error
        return self._value(batch._offsets)  # type: ignore[arg-type]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error the future failed with (None on success), waiting up to `timeout` seconds."""
        batch = self._batch()
        if not batch._done:
            batch._wait(timeout)
        return batch._error

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """Call `fn(self)` once resolved: in the producer's I/O thread, or now if already resolved."""
        batch = self._batch()
        with batch._cv:
            if not batch._done:
                if batch._callbacks is None:
                    batch._callbacks = []
                batch._callbacks.append((fn, self))
                return
        _call(fn, self)


class BatchFuture(_Base[list[int]]):
    """The offsets of the events of one `send_many` call (or of consecutive `send` calls), in order."""

    __slots__ = ("_cv", "_n", "_filled", "_offsets", "_error", "_done", "_callbacks")

    def __init__(self, cv: threading.Condition, n: int) -> None:
        self._cv = cv
        self._n = n  # events covered (grows while send() calls join it, fixed before any answer)
        self._filled = 0
        self._offsets: list[int] | None = None
        self._error: BaseException | None = None
        self._done = False
        self._callbacks: list[_Callback] | None = None

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("failed" if self._error is not None else "done")
        return f"<BatchFuture {self._n} events {state}>"

    def __len__(self) -> int:
        return self._n

    def _batch(self) -> BatchFuture:
        return self

    def _value(self, offsets: list[int]) -> list[int]:
        return offsets

    def _wait(self, timeout: float | None) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"{self._n} events not resolved within {timeout} s")

    # --- called by the Producer with the shared Condition's lock held --------------------------------------

    def _fill(self, start: int, offsets: list[int], out: list[list[_Callback]]) -> None:
        """Offsets of events start.. of this future; resolves it when every event has one."""
        if self._done:
            return
        count = len(offsets)
        if self._offsets is None and count == self._n:
            self._offsets = offsets
        else:
            if self._offsets is None:
                self._offsets = [0] * self._n
            self._offsets[start : start + count] = offsets
        self._filled += count
        if self._filled >= self._n:
            self._resolve(out)

    def _fail(self, error: BaseException, out: list[list[_Callback]]) -> None:
        if not self._done:
            self._error = error
            self._resolve(out)

    def _resolve(self, out: list[list[_Callback]]) -> None:
        self._done = True
        if self._callbacks is not None:
            out.append(self._callbacks)
            self._callbacks = None


class EventFuture(_Base[int]):
    """The offset of one event given to `Producer.send`."""

    __slots__ = ("_of", "_index")

    def __init__(self, of: BatchFuture, index: int) -> None:
        self._of = of
        self._index = index

    def __repr__(self) -> str:
        b = self._of
        state = "pending" if not b._done else ("failed" if b._error is not None else "done")
        return f"<EventFuture {state}>"

    def _batch(self) -> BatchFuture:
        return self._of

    def _value(self, offsets: list[int]) -> int:
        return offsets[self._index]


def completed(offsets: list[int], cv: threading.Condition) -> BatchFuture:
    """A BatchFuture that is already resolved (send_many of nothing)."""
    f = BatchFuture(cv, len(offsets))
    f._offsets, f._filled, f._done = list(offsets), len(offsets), True
    return f


def run_callbacks(groups: list[list[_Callback]]) -> None:
    """Run the callbacks collected by _fill/_fail (outside the lock)."""
    for callbacks in groups:
        for fn, future in callbacks:
            _call(fn, future)


def _call(fn: Callable[[Any], object], future: object) -> None:
    try:
        fn(future)
    except Exception:
        log.exception("exception in a producer future's callback %r", fn)
