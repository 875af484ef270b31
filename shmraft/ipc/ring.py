"""Shared-memory single-producer/single-consumer rings of variable-size records (docs/DESIGN.md, section 5).

One writer process and one reader process share a posix_ipc segment viewed through numpy:

    control block (256 bytes: 4 cache lines of u64 words)
      line 0  header: magic, version, creator pid + start time, signature, capacity, record limit
      line 1  writer's: write_pos, records/bytes pushed, closed, writer_waiting, writer pid + start
      line 2  reader's: read_pos, read_tag, records/bytes released, reader_waiting, reader pid + start
      line 3  reader's: the token of its wake-up socket (selectable readers; 0 if none)
    data area (capacity_bytes, a power of two) of entries, each 8-byte aligned, never straddling the end:
      u64 header = body_bytes | record_count << 32;  u32 lengths[record_count];  the records' bytes; pad
      a header with record_count 0 and body WRAP_BODY is a wrap marker: the next entry starts at offset 0.

`push_many()` writes all the records of one call as ONE entry (a lengths table and the joined bytes):
one `b"".join`, one table store, one header store, one publish, whatever the number of records. That is
the "block" format that makes a batch of small events cost about as much as one event.

Positions are monotonically increasing u64 byte counters (offset = position & (capacity - 1)). The writer
copies an entry and only then publishes it with one aligned 8-byte store of write_pos; the reader loads
write_pos and then the data. On x86-64 (TSO) that is enough; see the design doc for other machines.

The reader releases explicitly: `pop*()` advance a private cursor, `release()` publishes it (read_pos, and
read_tag for a cursor inside an entry). A reader that dies between pop and release gets those records again
after re-attaching: delivery from ring to a crashed reader is at-least-once, to a live one exactly-once.
"""

from __future__ import annotations

import mmap
import os
import platform
import time
import warnings
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from shmraft.ipc import segments
from shmraft.ipc.wakeup import (
    SPIN_ITERATIONS_DEFAULT,
    WAIT_TIMEOUT_MS_DEFAULT,
    WAITING_SOCKET,
    Doorbell,
    WakeSocket,
    deadline_after,
    full_fence,
)

RING_MAGIC: Final = 0x474E_4952_524D_4853  # "SHMRRING" little-endian
RING_VERSION: Final = 1
CAPACITY_MIN_BYTES: Final = 4096
CAPACITY_MAX_BYTES: Final = 1 << 30
CONTROL_WORDS: Final = 32
CONTROL_BYTES: Final = CONTROL_WORDS * 8  # four 64-byte cache lines
ENTRY_HEADER_BYTES: Final = 8
LENGTH_BYTES: Final = 4  # one u32 per record in an entry's lengths table
ENTRY_ALIGN_BYTES: Final = 8
ENTRY_RECORDS_MAX: Final = 65535  # records in one entry (push_many splits longer lists)
ENTRY_OVERHEAD_BYTES: Final = ENTRY_HEADER_BYTES + LENGTH_BYTES + ENTRY_ALIGN_BYTES - 1  # worst case, 1 record
WRAP_BODY: Final = 0xFFFF_FFFF  # body field of a wrap marker (record_count 0)
POP_RECORDS_DEFAULT: Final = 4096
POP_BYTES_UNLIMITED: Final = 1 << 62
_TAG_SUB_BITS: Final = 24  # read_tag = ((read_pos >> 3) & (2**40 - 1)) << 24 | records consumed in that entry
_TAG_POS_MASK: Final = (1 << 40) - 1

# control block words (u64); each cache line has a single writing process
C_MAGIC, C_VERSION, C_CREATOR_PID, C_CREATOR_START_MS, C_SIGNATURE = 0, 1, 2, 3, 4  # segments' header
C_CAPACITY, C_RECORD_MAX, C_CREATED_UNIX_MS = 5, 6, 7
C_WRITE_POS, C_RECORDS_PUSHED, C_BYTES_PUSHED, C_CLOSED = 8, 9, 10, 11  # line 1: the writer's
C_WRITER_WAITING, C_WRITER_PID, C_WRITER_ATTACHES, C_WRITER_START_MS = 12, 13, 14, 15
C_READ_POS, C_READ_TAG, C_RECORDS_RELEASED, C_BYTES_RELEASED = 16, 17, 18, 19  # line 2: the reader's
C_READER_WAITING, C_READER_PID, C_READER_ATTACHES, C_READER_START_MS = 20, 21, 22, 23
C_READER_WAKE_TOKEN = 24  # line 3, the reader's too: its WakeSocket's token (0: none; see wakeup.py)
assert array("I").itemsize == LENGTH_BYTES
assert C_WRITE_POS * 8 % 64 == 0 and C_READ_POS * 8 % 64 == 0 and segments.HEADER_WORDS == 8

_ORDERED_MACHINES: Final = frozenset({"x86_64", "amd64"})


class RingError(RuntimeError):
    """Base of every ring error."""


class RingAttachError(RingError):
    """A segment is missing, or is not a ring of the expected shape. Says which field and what came."""

    def __init__(self, name: str, field: str, expected: object, got: object) -> None:
        super().__init__(f"ring {name}: {field}: expected {expected}, got {got}")
        self.name, self.field, self.expected, self.got = name, field, expected, got


class RingConfigError(RingError, ValueError):
    """An invalid capacity, limit or argument."""

    def __init__(self, field: str, expected: str, got: object) -> None:
        super().__init__(f"{field}: expected {expected}, got {got}")
        self.field, self.expected, self.got = field, expected, got


class RecordTooLarge(RingError, ValueError):
    """A record is longer than the ring's record_max_bytes; nothing of that call was pushed."""

    def __init__(self, size: int, limit: int, index: int = 0) -> None:
        super().__init__(f"record {index}: size {size} bytes exceeds record_max_bytes {limit}")
        self.size, self.limit, self.index = size, limit, index


class RingFull(RingError):
    """No space for the record within the timeout (back-pressure: the reader is behind)."""

    def __init__(self, name: str, needed: int, free: int, timeout_ms: float | None) -> None:
        super().__init__(f"ring {name}: full: needed {needed} bytes, {free} free after {timeout_ms} ms")
        self.name, self.needed, self.free, self.timeout_ms = name, needed, free, timeout_ms


class RingClosed(RingError):
    """The writer marked the ring closed: no more pushes; the reader has drained everything."""


class RingBusy(RingError):
    """Another live process is attached as this ring's writer (or reader): single-writer principle."""


class RingCorrupt(RingError):
    """An entry header or the read cursor is inconsistent with the ring (a bug or a foreign writer)."""


def _check_machine(allow_weak_memory_order: bool) -> None:
    machine = platform.machine().lower()
    if machine in _ORDERED_MACHINES:
        return
    if not allow_weak_memory_order:
        raise RingError(f"machine: expected x86-64 (TSO ordering; see docs/DESIGN.md section 5), got {machine!r}")
    warnings.warn(
        f"shmraft ring on {machine}: publication without release/acquire barriers is unsafe",
        RuntimeWarning,
        stacklevel=3,
    )


def _align(n: int) -> int:
    return (n + ENTRY_ALIGN_BYTES - 1) & ~(ENTRY_ALIGN_BYTES - 1)


def record_max_for(capacity_bytes: int) -> int:
    """The default and largest record limit: an entry of one record takes at most a quarter of the ring.

    Why a quarter: at any offset where an entry does not fit before the end, it fits after the wrap as
    soon as the reader catches up, and several such entries are in flight at once.
    """
    return capacity_bytes // 4 - ENTRY_OVERHEAD_BYTES


def check_capacity(capacity_bytes: int) -> None:
    c = capacity_bytes
    if not (CAPACITY_MIN_BYTES <= c <= CAPACITY_MAX_BYTES and c & (c - 1) == 0):
        raise RingConfigError(
            "capacity_bytes", f"a power of two in [{CAPACITY_MIN_BYTES}, {CAPACITY_MAX_BYTES}]", capacity_bytes
        )


def create_ring(name: str, capacity_bytes: int, record_max_bytes: int | None = None) -> None:
    """Create a ring's segment (O_CREX, 0600) and its two semaphores. The caller owns them
    (`destroy_ring`, or `owner.SegmentOwner`). Raises segments.SegmentExists if the name is taken."""
    check_capacity(capacity_bytes)
    limit = record_max_for(capacity_bytes)
    if record_max_bytes is None:
        record_max_bytes = limit
    if not 1 <= record_max_bytes <= limit:
        raise RingConfigError("record_max_bytes", f"1..{limit} for capacity {capacity_bytes}", record_max_bytes)
    mem = segments.create_segment(name, CONTROL_BYTES + capacity_bytes)
    try:
        ctl = np.ndarray((CONTROL_WORDS,), dtype=np.uint64, buffer=mem)
        ctl[C_CAPACITY] = capacity_bytes
        ctl[C_RECORD_MAX] = record_max_bytes
        ctl[C_CREATED_UNIX_MS] = int(time.time() * 1000)
        del ctl
        created: list[str] = []
        try:
            for sem_name in segments.sem_names(name):
                segments.create_semaphore(sem_name).close()
                created.append(sem_name)
        except BaseException:
            for sem_name in created:
                segments.unlink_semaphore(sem_name)
            segments.unlink_segment(name)
            raise
        segments.seal(mem, RING_MAGIC, RING_VERSION)
    finally:
        mem.close()


def destroy_ring(name: str) -> list[str]:
    """Unlink a ring's semaphores and segment (owner only). Attached processes keep their mappings."""
    return segments.unlink_ring(name)


@dataclass(frozen=True, slots=True)
class RingStats:
    """A snapshot of a ring's counters for status and metrics (read without any lock: advisory)."""

    name: str
    capacity_bytes: int
    record_max_bytes: int
    write_pos: int
    read_pos: int
    fill_bytes: int
    records_pushed: int
    bytes_pushed: int
    records_released: int
    bytes_released: int
    closed: bool
    writer_pid: int
    reader_pid: int
    writer_attaches: int
    reader_attaches: int
    creator_pid: int


class RecordBlock:
    """Records popped in one call: one buffer plus `starts` and `lengths` (int64 arrays).

    With `copy=True` (the default) the buffer is a private bytes copy, valid forever, and records come
    out as bytes. With `copy=False` it is a memoryview of the ring, valid only until the next `release()`
    of the reader that popped it, and records come out as memoryviews.
    """

    __slots__ = ("buffer", "starts", "lengths")

    def __init__(self, buffer: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.buffer = buffer
        self.starts = starts
        self.lengths = lengths

    def __len__(self) -> int:
        return int(self.lengths.size)

    @property
    def nbytes(self) -> int:
        """Record bytes (without ring headers)."""
        return int(self.lengths.sum())

    def __getitem__(self, i: int) -> bytes | memoryview:
        s = int(self.starts[i])
        return self.buffer[s : s + int(self.lengths[i])]

    def tolist(self) -> list[bytes] | list[memoryview]:
        """One bytes (or, for copy=False, memoryview) per record: one slice per record, no other work."""
        buf = self.buffer
        ends = self.starts + self.lengths
        return [buf[a:b] for a, b in zip(self.starts.tolist(), ends.tolist(), strict=True)]

    def to_bytes_list(self) -> list[bytes]:
        return [bytes(m) for m in self.tolist()]


_EMPTY_I64: Final = np.zeros(0, dtype=np.int64)
_EMPTY_BLOCK_BUF: Final = b""


class _RingHandle:
    """The mapping of one ring and the read-only parts shared by writer, reader and inspector."""

    def __init__(self, name: str, capacity_bytes: int | None, allow_weak_memory_order: bool) -> None:
        _check_machine(allow_weak_memory_order)
        self.name = name
        try:
            mem, size = segments.open_segment(name)
        except segments.SegmentMissing:
            raise RingAttachError(name, "segment", "an existing shared-memory segment", "none") from None
        except segments.SegmentError as e:
            raise RingAttachError(name, "segment", "a shmraft ring", str(e)) from None
        self._mem: mmap.mmap | None = mem
        ctl = np.ndarray((CONTROL_WORDS,), dtype=np.uint64, buffer=mem) if size >= CONTROL_BYTES else None
        try:
            if ctl is None:
                raise RingAttachError(name, "segment size", f">= {CONTROL_BYTES} bytes", size)
            magic = ctl.item(C_MAGIC)
            if magic != RING_MAGIC:
                raise RingAttachError(
                    name,
                    "magic",
                    hex(RING_MAGIC),
                    f"{magic:#x}" + (" (not initialised: creator died?)" if magic == 0 else ""),
                )
            if ctl.item(C_VERSION) != RING_VERSION:
                raise RingAttachError(name, "version", RING_VERSION, ctl.item(C_VERSION))
            cap = ctl.item(C_CAPACITY)
            if cap < CAPACITY_MIN_BYTES or cap > CAPACITY_MAX_BYTES or cap & (cap - 1):
                raise RingAttachError(name, "capacity_bytes", "a power of two in range", cap)
            if capacity_bytes is not None and cap != capacity_bytes:
                raise RingAttachError(name, "capacity_bytes", capacity_bytes, cap)
            if size != CONTROL_BYTES + cap:
                raise RingAttachError(name, "segment size", CONTROL_BYTES + cap, size)
            rmax = ctl.item(C_RECORD_MAX)
            if not 1 <= rmax <= record_max_for(cap):
                raise RingAttachError(name, "record_max_bytes", f"1..{record_max_for(cap)}", rmax)
            if not 0 <= ctl.item(C_WRITE_POS) - ctl.item(C_READ_POS) <= cap:
                raise RingAttachError(
                    name, "write_pos - read_pos", f"0..{cap}", ctl.item(C_WRITE_POS) - ctl.item(C_READ_POS)
                )
        except BaseException:
            del ctl
            mem.close()
            self._mem = None
            raise
        self.capacity_bytes: int = cap
        self.record_max_bytes: int = rmax
        self._mask = cap - 1
        self._ctl = ctl
        self._data_mv = memoryview(mem)[CONTROL_BYTES : CONTROL_BYTES + cap]
        self._data64 = np.ndarray((cap // 8,), dtype=np.uint64, buffer=mem, offset=CONTROL_BYTES)
        self._data32 = np.ndarray((cap // 4,), dtype=np.uint32, buffer=mem, offset=CONTROL_BYTES)

    # -- status -----------------------------------------------------------------------------------
    def fill_bytes(self) -> int:
        """Bytes published and not yet released (entry headers, tables and padding included)."""
        ctl = self._ctl
        return ctl.item(C_WRITE_POS) - ctl.item(C_READ_POS)

    @property
    def closed(self) -> bool:
        return bool(self._ctl.item(C_CLOSED))

    def stats(self) -> RingStats:
        c = self._ctl.tolist()
        return RingStats(
            name=self.name,
            capacity_bytes=c[C_CAPACITY],
            record_max_bytes=c[C_RECORD_MAX],
            write_pos=c[C_WRITE_POS],
            read_pos=c[C_READ_POS],
            fill_bytes=c[C_WRITE_POS] - c[C_READ_POS],
            records_pushed=c[C_RECORDS_PUSHED],
            bytes_pushed=c[C_BYTES_PUSHED],
            records_released=c[C_RECORDS_RELEASED],
            bytes_released=c[C_BYTES_RELEASED],
            closed=bool(c[C_CLOSED]),
            writer_pid=c[C_WRITER_PID],
            reader_pid=c[C_READER_PID],
            writer_attaches=c[C_WRITER_ATTACHES],
            reader_attaches=c[C_READER_ATTACHES],
            creator_pid=c[C_CREATOR_PID],
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def _claim(self, pid_word: int, start_word: int, attaches_word: int, role: str) -> None:
        """Record our pid as the ring's writer/reader; refuse if another live process holds the role."""
        ctl = self._ctl
        pid, start = ctl.item(pid_word), ctl.item(start_word)
        me = os.getpid()
        if pid not in (0, me) and segments.process_alive(pid, start):
            raise RingBusy(f"ring {self.name}: {role}: expected no live {role}, got pid {pid}")
        ctl[start_word] = segments.start_time_ms(me)
        ctl[pid_word] = me
        ctl[attaches_word] += 1

    def _unclaim(self, pid_word: int) -> None:
        if self._ctl.item(pid_word) == os.getpid():
            self._ctl[pid_word] = 0

    def _close_mapping(self) -> None:
        mem = self._mem
        if mem is None:
            return
        self._mem = None
        self._data_mv.release()
        del self._ctl, self._data64, self._data32
        try:
            mem.close()
        except BufferError:
            pass  # a caller still holds a zero-copy view; the mapping goes when that view does

    def __enter__(self) -> _RingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._close_mapping()


class RingInspector(_RingHandle):
    """Read-only access to a ring's counters (status tool); claims no role and opens no semaphore."""

    def __init__(self, name: str, capacity_bytes: int | None = None, allow_weak_memory_order: bool = False) -> None:
        super().__init__(name, capacity_bytes, allow_weak_memory_order)


class RingWriter(_RingHandle):
    """The single writer of a ring. Re-attaching after a crash continues from the published write_pos.
    A handle is used by one thread (the ring is single-producer by design)."""

    def __init__(
        self,
        name: str,
        capacity_bytes: int | None = None,
        *,
        spin_iterations: int = SPIN_ITERATIONS_DEFAULT,
        wait_timeout_ms: float = WAIT_TIMEOUT_MS_DEFAULT,
        allow_weak_memory_order: bool = False,
    ) -> None:
        super().__init__(name, capacity_bytes, allow_weak_memory_order)
        try:
            data_name, space_name = segments.sem_names(name)
            self._data_sem = segments.open_semaphore(data_name)
            self._space_sem = segments.open_semaphore(space_name)
            self._claim(C_WRITER_PID, C_WRITER_START_MS, C_WRITER_ATTACHES, "writer")
        except segments.SegmentMissing as e:
            self._close_mapping()
            raise RingAttachError(name, "semaphore", "existing", f"missing ({e})") from None
        except BaseException:
            self._close_mapping()
            raise
        self._w: int = self._ctl.item(C_WRITE_POS)
        self._r: int = self._ctl.item(C_READ_POS)  # cached; refreshed when space looks short
        self._entry_max = record_max_for(self.capacity_bytes) + ENTRY_OVERHEAD_BYTES  # = capacity // 4
        self._reader_bell = Doorbell(  # we notify it
            self._ctl, C_READER_WAITING, self._data_sem, token_index=C_READER_WAKE_TOKEN
        )
        self._space_wait = Doorbell(self._ctl, C_WRITER_WAITING, self._space_sem, spin_iterations, wait_timeout_ms)

    def free_bytes(self) -> int:
        self._r = self._ctl.item(C_READ_POS)
        return self.capacity_bytes - (self._w - self._r)

    def push(self, record: bytes | bytearray | memoryview, timeout_ms: float | None = 0) -> None:
        """Push one record; raises RingFull if there is no space within `timeout_ms` (None: wait forever)."""
        if self.push_many((record,), timeout_ms) != 1:
            raise RingFull(
                self.name, _align(ENTRY_HEADER_BYTES + LENGTH_BYTES + len(record)), self.free_bytes(), timeout_ms
            )

    def push_many(self, records: Sequence[bytes | bytearray | memoryview], timeout_ms: float | None = 0) -> int:
        """Push records in order; returns how many were pushed (a prefix of `records`).

        Back-pressure: with `timeout_ms=0` it pushes what fits now; otherwise it waits for space up to
        `timeout_ms` (None: forever) and returns fewer than len(records) only if the time ran out.
        Raises RecordTooLarge before pushing anything if any record exceeds record_max_bytes, and
        RingClosed after `mark_closed()`.
        """
        n = len(records)
        if n == 0:
            return 0
        if self._ctl.item(C_CLOSED):
            raise RingClosed(f"ring {self.name}: closed by its writer; push refused")
        lens_list = list(map(len, records))
        if max(lens_list) > self.record_max_bytes:
            i = next(i for i, x in enumerate(lens_list) if x > self.record_max_bytes)
            raise RecordTooLarge(lens_list[i], self.record_max_bytes, i)
        nd = sum(lens_list)
        body = nd + LENGTH_BYTES * n
        size = ENTRY_HEADER_BYTES + _align(body)
        o = self._w & self._mask
        if (
            n <= ENTRY_RECORDS_MAX
            and size <= self._entry_max
            and o + size <= self.capacity_bytes
            and (
                self._w + size - self._r <= self.capacity_bytes
                or self._w + size - self._refresh_r() <= self.capacity_bytes
            )
        ):
            # the common case: the whole call is one entry at the current offset, no numpy needed
            joined = b"".join([array("I", lens_list), *records])
            if len(joined) != body:
                raise RingConfigError(
                    "records",
                    "contiguous byte buffers (len() == nbytes)",
                    f"{len(joined)} bytes joined for {body} expected",
                )
            self._data_mv[o + ENTRY_HEADER_BYTES : o + ENTRY_HEADER_BYTES + body] = joined
            self._data64[o >> 3] = body | (n << 32)
            self._w += size
            ctl = self._ctl
            ctl[C_WRITE_POS] = self._w  # publish: one aligned 8-byte store
            ctl[C_RECORDS_PUSHED] += n
            ctl[C_BYTES_PUSHED] += nd
            self._reader_bell.notify()
            return n
        return self._push_slow(records, np.array(lens_list, dtype=np.int64), timeout_ms)

    def _refresh_r(self) -> int:
        self._r = self._ctl.item(C_READ_POS)
        return self._r

    def _push_slow(
        self, records: Sequence[bytes | bytearray | memoryview], lens: np.ndarray, timeout_ms: float | None
    ) -> int:
        """push_many when the records need several entries, a wrap, or waiting for space."""
        n = len(records)
        cum = np.cumsum(lens + LENGTH_BYTES)  # cum[k-1]: table + data bytes of records [0, k)
        cap, mask, ctl = self.capacity_bytes, self._mask, self._ctl
        deadline: float | None = None
        deadline_set = False
        done = 0
        published = 0  # records of this call already made visible
        while done < n:
            base = int(cum[done - 1]) if done else 0
            o = self._w & mask
            to_end = cap - o
            free = cap - (self._w - self._r)
            k = self._fit(cum, done, base, min(to_end, free))
            if k < n - done:
                self._r = ctl.item(C_READ_POS)  # the cached read position may be stale: refresh
                free = cap - (self._w - self._r)
                k = self._fit(cum, done, base, min(to_end, free))
            if k == 0 and free > to_end:
                k = self._fit(cum, done, base, free - to_end)
                if k:
                    self._data64[o >> 3] = WRAP_BODY  # record_count 0: the next entry is at offset 0
                    self._w += to_end
                    o = 0
            if k == 0:  # no space even after a wrap: publish what we have, then wait or give up
                if done > published:
                    self._publish(cum, published, done)
                    published = done
                if timeout_ms == 0:
                    break
                if not deadline_set:
                    deadline, deadline_set = deadline_after(timeout_ms), True
                if not self._wait_space(deadline):
                    break
                continue
            self._write_entry(o, records, lens, done, k, int(cum[done + k - 1]) - base)
            done += k
        if done > published:
            self._publish(cum, published, done)
        return done

    def _fit(self, cum: np.ndarray, done: int, base: int, limit: int) -> int:
        """How many records from `done` fit in one entry of at most `limit` bytes."""
        limit = min(limit, self._entry_max)
        body_max = (limit - ENTRY_HEADER_BYTES) & ~(ENTRY_ALIGN_BYTES - 1)
        if body_max < LENGTH_BYTES:
            return 0
        k = int(np.searchsorted(cum[done:], base + body_max, side="right"))
        return min(k, ENTRY_RECORDS_MAX)

    def _write_entry(
        self, o: int, records: Sequence[bytes | bytearray | memoryview], lens: np.ndarray, first: int, k: int, body: int
    ) -> None:
        """Copy one entry (table, bytes, then header) at offset o; not visible until published."""
        cap = self.capacity_bytes
        size = ENTRY_HEADER_BYTES + _align(body)
        assert o & 7 == 0 and o + size <= cap and size <= self._entry_max, (o, size)
        t = (o + ENTRY_HEADER_BYTES) >> 2
        self._data32[t : t + k] = lens[first : first + k]
        d = o + ENTRY_HEADER_BYTES + LENGTH_BYTES * k
        nd = body - LENGTH_BYTES * k
        if k == 1 and type(records[first]) is bytes:
            joined: bytes = records[first]  # type: ignore[assignment]
        else:
            joined = b"".join(records[first : first + k])
        if len(joined) != nd:
            raise RingConfigError(
                "records",
                "contiguous byte buffers (len() == nbytes)",
                f"{len(joined)} bytes joined for lengths summing to {nd}",
            )
        self._data_mv[d : d + nd] = joined
        self._data64[o >> 3] = body | (k << 32)
        self._w += size

    def _publish(self, cum: np.ndarray, first: int, end: int) -> None:
        """One aligned 8-byte store makes every entry written so far visible; then wake the reader."""
        ctl = self._ctl
        assert 0 < self._w - ctl.item(C_READ_POS) <= self.capacity_bytes
        ctl[C_WRITE_POS] = self._w
        ctl[C_RECORDS_PUSHED] += end - first
        ctl[C_BYTES_PUSHED] += int(cum[end - 1]) - (int(cum[first - 1]) if first else 0) - LENGTH_BYTES * (end - first)
        self._reader_bell.notify()

    def _wait_space(self, deadline: float | None) -> bool:
        """Sleep until the reader releases something or the deadline passes; True if it released."""
        r = self._r
        ctl = self._ctl
        ok = self._space_wait.wait(lambda: ctl.item(C_READ_POS) != r, deadline)
        self._r = ctl.item(C_READ_POS)
        return ok

    def mark_closed(self) -> None:
        """Say "no more records": pushes now raise RingClosed; the reader drains, then gets RingClosed."""
        self._ctl[C_CLOSED] = 1  # after the last write_pos store: a reader that sees it sees all data
        self._reader_bell.poke()

    def close(self) -> None:
        """Detach (does not mark the ring closed, and does not unlink it)."""
        if self._mem is None:
            return
        self._unclaim(C_WRITER_PID)
        self._reader_bell.close()
        del self._reader_bell, self._space_wait
        self._data_sem.close()
        self._space_sem.close()
        self._close_mapping()


class RingReader(_RingHandle):
    """The single reader of a ring. Pops advance a private cursor; `release()` frees the space.
    A handle is used by one thread (the ring is single-consumer by design)."""

    def __init__(
        self,
        name: str,
        capacity_bytes: int | None = None,
        *,
        spin_iterations: int = SPIN_ITERATIONS_DEFAULT,
        wait_timeout_ms: float = WAIT_TIMEOUT_MS_DEFAULT,
        allow_weak_memory_order: bool = False,
    ) -> None:
        super().__init__(name, capacity_bytes, allow_weak_memory_order)
        try:
            data_name, space_name = segments.sem_names(name)
            self._data_sem = segments.open_semaphore(data_name)
            self._space_sem = segments.open_semaphore(space_name)
            self._claim(C_READER_PID, C_READER_START_MS, C_READER_ATTACHES, "reader")
            self._r, self._sub = self._released_cursor()
        except segments.SegmentMissing as e:
            self._close_mapping()
            raise RingAttachError(name, "semaphore", "existing", f"missing ({e})") from None
        except BaseException:
            self._close_mapping()
            raise
        self._pos, self._cur_sub = self._r, self._sub  # the private cursor: what pops have consumed
        self._pending_records = 0
        self._pending_bytes = 0
        self._data_wait = Doorbell(self._ctl, C_READER_WAITING, self._data_sem, spin_iterations, wait_timeout_ms)
        self._writer_bell = Doorbell(self._ctl, C_WRITER_WAITING, self._space_sem)
        self._wake: WakeSocket | None = None  # made by wake_fileno(), for a reader in a selector loop

    # -- waiting in a selector loop (wakeup.py: the same flag and fences, a socket instead of the semaphore)
    def wake_fileno(self) -> int:
        """A descriptor that becomes readable when the writer publishes while this reader is `arm()`ed.
        The first call binds the reader's WakeSocket and publishes its token in the control block."""
        if self._wake is None:
            self._wake = WakeSocket()
            self._ctl[C_READER_WAKE_TOKEN] = self._wake.token
        return self._wake.fileno()

    def arm(self) -> bool:
        """Announce a wait on `wake_fileno()` (call just before `select`). Returns True if records are
        waiting already: then do not block (the flag is set either way; `disarm()` after the select)."""
        assert self._wake is not None, "arm() before wake_fileno()"
        ctl = self._ctl
        ctl[C_READER_WAITING] = WAITING_SOCKET
        full_fence()  # the flag store must be visible before we load the position (Dekker)
        return ctl.item(C_WRITE_POS) != self._pos

    def disarm(self) -> None:
        """The select returned: the writer need not wake us until the next `arm()`."""
        self._ctl[C_READER_WAITING] = 0

    def drain_wake(self) -> int:
        """Consume the wake-up datagrams that made `wake_fileno()` readable. Returns how many."""
        return self._wake.drain() if self._wake is not None else 0

    def _released_cursor(self) -> tuple[int, int]:
        """(read_pos, records consumed of the entry there) as published by the last release()."""
        ctl = self._ctl
        r = ctl.item(C_READ_POS)
        tag = ctl.item(C_READ_TAG)
        sub = 0
        if tag and tag >> _TAG_SUB_BITS == (r >> 3) & _TAG_POS_MASK:
            sub = tag & ((1 << _TAG_SUB_BITS) - 1)
            if r == ctl.item(C_WRITE_POS):
                raise RingCorrupt(f"ring {self.name}: read_tag: expected none at the write position, got {sub}")
            hdr = self._data64.item((r & self._mask) >> 3)
            if not 0 < sub < hdr >> 32:
                raise RingCorrupt(f"ring {self.name}: read_tag: expected 1..{(hdr >> 32) - 1} records, got {sub}")
        return r, sub

    @property
    def pending_records(self) -> int:
        """Records popped and not yet released."""
        return self._pending_records

    def available(self) -> bool:
        """True if a pop would return a record now."""
        return self._ctl.item(C_WRITE_POS) != self._pos

    def pop_block(
        self,
        max_records: int = POP_RECORDS_DEFAULT,
        max_bytes: int = POP_BYTES_UNLIMITED,
        timeout_ms: float | None = 0,
        *,
        copy: bool = True,
        release: bool = False,
    ) -> RecordBlock:
        """Pop up to `max_records` records and `max_bytes` record bytes (at least one record if any is
        available, even a larger one). Waits up to `timeout_ms` (None: forever) for the first record;
        an empty block means the time ran out. Raises RingClosed once the ring is closed and drained.

        `release=True` releases at once (needs `copy=True`); otherwise call `release()` after handing
        the records on: a reader that dies before that sees them again (at-least-once).
        """
        if max_records < 1 or max_bytes < 1:
            raise RingConfigError("max_records/max_bytes", ">= 1", (max_records, max_bytes))
        if release and not copy:
            raise RingConfigError("release", "False with copy=False (views die at release)", release)
        block = self._pop(max_records, max_bytes, timeout_ms, copy)
        if release:
            self.release()  # everything popped so far, also when this call returned nothing
        return block

    def _pop(self, max_records: int, max_bytes: int, timeout_ms: float | None, copy: bool) -> RecordBlock:
        ctl = self._ctl
        w = ctl.item(C_WRITE_POS)
        if w == self._pos:
            if ctl.item(C_CLOSED) and ctl.item(C_WRITE_POS) == self._pos:
                raise RingClosed(f"ring {self.name}: closed by its writer and drained")
            if timeout_ms == 0:
                return RecordBlock(_EMPTY_BLOCK_BUF, _EMPTY_I64, _EMPTY_I64)
            pos = self._pos
            self._data_wait.wait(
                lambda: ctl.item(C_WRITE_POS) != pos or ctl.item(C_CLOSED) != 0, deadline_after(timeout_ms)
            )
            w = ctl.item(C_WRITE_POS)
            if w == pos:
                if ctl.item(C_CLOSED):
                    raise RingClosed(f"ring {self.name}: closed by its writer and drained")
                return RecordBlock(_EMPTY_BLOCK_BUF, _EMPTY_I64, _EMPTY_I64)
        return self._take(w, max_records, max_bytes, copy)

    def _take(self, w: int, max_records: int, max_bytes: int, copy: bool) -> RecordBlock:
        """Walk entries from the private cursor up to w: Python work per entry, numpy per record."""
        cap, mask = self.capacity_bytes, self._mask
        data64, data32 = self._data64, self._data32
        pos, sub = self._pos, self._cur_sub
        pieces: list[tuple[int, int]] = []  # (data offset in the ring, bytes) per entry taken from
        tables: list[np.ndarray] = []
        taken = 0
        nbytes = 0
        while pos != w and taken < max_records:
            o = pos & mask
            hdr = data64.item(o >> 3)
            count = hdr >> 32
            body = hdr & 0xFFFF_FFFF
            if count == 0:
                if body != WRAP_BODY or sub:
                    raise RingCorrupt(f"ring {self.name}: entry at {pos}: expected a wrap marker, got {hdr:#x}")
                pos += cap - o
                continue
            size = ENTRY_HEADER_BYTES + _align(body)
            if body < LENGTH_BYTES * count or o + size > cap or pos + size > w or sub >= count:
                raise RingCorrupt(f"ring {self.name}: entry at {pos}: header {hdr:#x} (sub {sub}) does not fit")
            t = (o + ENTRY_HEADER_BYTES) >> 2
            d = o + ENTRY_HEADER_BYTES + LENGTH_BYTES * count
            m = count - sub
            if sub == 0 and m <= max_records - taken and nbytes + body - LENGTH_BYTES * count <= max_bytes:
                seg = body - LENGTH_BYTES * count  # the whole entry: no per-record arithmetic at all
                lens = data32[t : t + count]
            else:
                if sub:
                    d += int(data32[t : t + sub].sum(dtype=np.int64))
                m = min(m, max_records - taken)
                lens = data32[t + sub : t + sub + m]
                cum = np.cumsum(lens, dtype=np.int64)
                if int(cum[-1]) + nbytes > max_bytes:
                    m = int(np.searchsorted(cum, max_bytes - nbytes, side="right"))
                    if m == 0 and taken == 0:
                        m = 1  # always make progress: one record even if larger than max_bytes
                    if m == 0:
                        break
                    lens = lens[:m]
                seg = int(cum[m - 1])
            pieces.append((d, seg))
            tables.append(lens)
            taken += m
            nbytes += seg
            if sub + m == count:
                pos += size
                sub = 0
            else:
                sub += m
                break
        self._pos, self._cur_sub = pos, sub
        self._pending_records += taken
        self._pending_bytes += nbytes
        if not taken:
            return RecordBlock(_EMPTY_BLOCK_BUF, _EMPTY_I64, _EMPTY_I64)
        lengths = tables[0].astype(np.int64) if len(tables) == 1 else np.concatenate(tables).astype(np.int64)
        mv = self._data_mv
        if copy:
            if len(pieces) == 1:
                d, seg = pieces[0]
                buf: bytes | memoryview = mv[d : d + seg].tobytes()
            else:
                buf = b"".join([mv[d : d + seg] for d, seg in pieces])
            starts = np.cumsum(lengths) - lengths
            assert int(starts[-1] + lengths[-1]) == len(buf)
        else:
            buf = mv
            if len(pieces) == 1:
                starts = pieces[0][0] + np.cumsum(lengths) - lengths
            else:
                bases = np.repeat(np.array([d for d, _ in pieces], dtype=np.int64), [t.size for t in tables])
                firsts = np.cumsum([0] + [t.size for t in tables[:-1]])
                excl = np.cumsum(lengths) - lengths
                excl -= np.repeat(excl[firsts], [t.size for t in tables])
                starts = bases + excl
        return RecordBlock(buf, starts, lengths)

    def pop_many(
        self,
        max_records: int = POP_RECORDS_DEFAULT,
        max_bytes: int = POP_BYTES_UNLIMITED,
        timeout_ms: float | None = 0,
        *,
        release: bool = False,
    ) -> list[bytes]:
        """`pop_block(...)` as a list of bytes (an empty list if none arrived within `timeout_ms`)."""
        return self.pop_block(max_records, max_bytes, timeout_ms, release=release).tolist()  # type: ignore[return-value]

    def pop(self, timeout_ms: float | None = 0, *, release: bool = False) -> bytes | None:
        """Pop one record as bytes; None if none arrived within `timeout_ms`."""
        block = self.pop_block(1, POP_BYTES_UNLIMITED, timeout_ms, release=release)
        return block.buffer if len(block) else None  # type: ignore[return-value]  # one record: the copy

    def release(self) -> int:
        """Publish the private cursor: the writer may reuse the space, a restarted reader starts there.
        Returns the number of records released."""
        n = self._pending_records
        pos, sub = self._pos, self._cur_sub
        if pos == self._r and sub == self._sub:
            return n
        ctl = self._ctl
        assert self._r <= pos <= ctl.item(C_WRITE_POS)
        if pos != self._r:
            ctl[C_READ_POS] = pos  # single 8-byte store; a stale read_tag no longer matches it
        if sub:
            ctl[C_READ_TAG] = (((pos >> 3) & _TAG_POS_MASK) << _TAG_SUB_BITS) | sub
        elif self._sub or pos != self._r:
            ctl[C_READ_TAG] = 0
        ctl[C_RECORDS_RELEASED] += n
        ctl[C_BYTES_RELEASED] += self._pending_bytes
        moved = pos != self._r
        self._r, self._sub = pos, sub
        self._pending_records = 0
        self._pending_bytes = 0
        if moved:
            self._writer_bell.notify()
        return n

    def rewind(self) -> int:
        """Forget unreleased pops: the next pop delivers them again. Returns how many."""
        n = self._pending_records
        self._pos, self._cur_sub = self._r, self._sub
        self._pending_records = 0
        self._pending_bytes = 0
        return n

    def close(self) -> None:
        """Detach without releasing: unreleased records stay for the next reader."""
        if self._mem is None:
            return
        self._unclaim(C_READER_PID)
        if self._wake is not None:
            if self._ctl.item(C_READER_WAKE_TOKEN) == self._wake.token:
                self._ctl[C_READER_WAKE_TOKEN] = 0
            self._wake.close()
            self._wake = None
        del self._data_wait, self._writer_bell
        self._data_sem.close()
        self._space_sem.close()
        self._close_mapping()


__all__ = [
    "CAPACITY_MAX_BYTES",
    "CAPACITY_MIN_BYTES",
    "ENTRY_RECORDS_MAX",
    "RecordBlock",
    "RecordTooLarge",
    "RingAttachError",
    "RingBusy",
    "RingClosed",
    "RingConfigError",
    "RingCorrupt",
    "RingError",
    "RingFull",
    "RingInspector",
    "RingReader",
    "RingStats",
    "RingWriter",
    "create_ring",
    "destroy_ring",
    "record_max_for",
]
