"""A simulated network: per-message loss, duplication, delay and reordering; cut links; connection resets.

All times are integer microseconds of virtual time. The network only decides *when* (if ever) a message
arrives; the simulator's event queue does the delivering. Each (src, dst, channel) pair is one connection
that delivers in order, as TCP does; a "reorder" fault holds a message back so that later ones overtake it,
and duplicates model a resend after a reconnect. A connection reset bumps the link's epoch: a
message sent under an older epoch is dropped on arrival, as TCP loses what was in flight on a dead socket.

Two faults keep messages alive across rounds, since elections come at least an election timeout apart:
a *held* link (a stalled switch or proxy) keeps everything sent on it for seconds and then delivers it all
at once, shuffled and partly duplicated, whatever happened to the connection meanwhile; and a *replay*
re-delivers a sample of old messages from the recent history (`recent`), typically from earlier terms.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass

# held and replayed messages carry these instead of a connection epoch: they arrive whatever happened to it
HELD_EPOCH = -1
REPLAY_EPOCH = -2
RECENT_MESSAGES = 1024  # history kept for replays
HELD_SPREAD_US = 3000  # held messages arrive shuffled within this window after the release
HELD_DUPLICATE_PROBABILITY = 0.2


@dataclass(slots=True)
class NetworkParams:
    """Fault rates of one seed. Probabilities are per message."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_min_us: int = 100
    delay_max_us: int = 1000
    long_delay_probability: float = 0.0  # such a message overtakes nothing and is overtaken: reordering
    long_delay_max_us: int = 50_000


class SimNetwork:
    """Decides the fate of each message; `blocked` holds cut directed links (src, dst)."""

    def __init__(self, params: NetworkParams, rng: random.Random, faults: Counter[str]) -> None:
        self.params = params
        self.rng = rng
        self.faults = faults
        self.blocked: set[tuple[int, int]] = set()
        self.epochs: dict[tuple[int, int], int] = {}
        self.fifo_until: dict[tuple[int, int, int], int] = {}  # (src, dst, channel) -> last in-order arrival
        self.held_until: dict[tuple[int, int], int] = {}  # directed link -> release time of what it holds
        self.recent: deque[object] = deque(maxlen=RECENT_MESSAGES)

    def hold(self, links: list[tuple[int, int]], until_us: int) -> None:
        """From now until `until_us`, messages sent on `links` are held, then all delivered together."""
        for link in links:
            self.held_until[link] = max(until_us, self.held_until.get(link, 0))

    def held_times(self, src: int, dst: int, now_us: int) -> list[int] | None:
        """Arrival times for a message sent now on a held link (None: the link is not held)."""
        until = self.held_until.get((src, dst))
        if until is None or until <= now_us:
            return None
        self.faults["held"] += 1
        rng = self.rng
        times = [until + rng.randint(0, HELD_SPREAD_US)]
        if rng.random() < HELD_DUPLICATE_PROBABILITY:
            times.append(until + rng.randint(0, HELD_SPREAD_US))
        return times

    def delivery_times(self, src: int, dst: int, channel: int, now_us: int) -> list[int]:
        """Arrival times for one message sent now: [] if lost, two if duplicated."""
        if (src, dst) in self.blocked:
            self.faults["partition_drop"] += 1
            return []
        p = self.params
        rng = self.rng
        if p.drop_probability and rng.random() < p.drop_probability:
            self.faults["drop"] += 1
            return []
        copies = 1
        if p.duplicate_probability and rng.random() < p.duplicate_probability:
            self.faults["duplicate"] += 1
            copies = 2
        out = []
        fifo = self.fifo_until
        key = (src, dst, channel)
        for _ in range(copies):
            at = now_us + rng.randint(p.delay_min_us, p.delay_max_us)
            if p.long_delay_probability and rng.random() < p.long_delay_probability:
                # out of order: held back while later messages on the same connection overtake it
                self.faults["reorder_delay"] += 1
                at += rng.randint(0, p.long_delay_max_us)
            else:
                at = max(at, fifo.get(key, 0))  # a connection (TCP) delivers in order
                fifo[key] = at
            out.append(at)
        return out

    def epoch(self, src: int, dst: int) -> int:
        return self.epochs.get((src, dst), 0)

    def reset_connection(self, a: int, b: int) -> None:
        """Both directions of the a-b connection drop what is in flight."""
        for link in ((a, b), (b, a)):
            self.epochs[link] = self.epochs.get(link, 0) + 1

    def heal(self) -> None:
        """Faults stop: links restored and delivery becomes reliable (loss-free, short delays). What held
        links still hold arrives at their release, as scheduled."""
        self.blocked.clear()
        self.held_until.clear()
        self.params = NetworkParams(
            delay_min_us=self.params.delay_min_us, delay_max_us=min(self.params.delay_max_us, 2000)
        )
