"""The raft worker's consumer-group part: requests from R6, the applied positions table, its rebuild at start.

Kept apart from workers/raft.py, which calls it at five points: requests taken from R6 (`on_requests`),
committed entries (`on_committed`), a leader's snapshot installed (`install`), the snapshot saved
(`table` at the snapshot's index), and the start (`GroupRebuild`, fed by the worker's one read of the log).

- COMMIT: on the leader, proposed as a GROUP_OFFSETS control entry (the one commit path: the same core, log,
  fsync and majority as events); the proposing ingest hears GROUP_RESULT once the entry is applied (committed
  on a majority with fsync, then applied here), with the log index. A leadership change drops what is
  pending here: ingest fails those requests NOT_LEADER on the LEADER note, and the client resends.
- FETCH / LIST: answered at once from this node's applied table, with its applied index. With the flag
  GROUP_FETCH_LEADER_ONLY (wire/client.py; the same bit on R6) they are answered only by a leader that has
  committed an entry of its own term (so its table holds every commit any earlier leader acknowledged:
  read-your-commit), else NOT_LEADER.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from shmraft.constants import BATCH_EVENTS_MAX
from shmraft.node import groups as gr
from shmraft.node.records import (
    GroupRequest,
    GroupRequestKind,
    Note,
    NoteKind,
    decode_group_request,
    encode_note,
    encode_result,
)
from shmraft.raft.errors import ProposalError
from shmraft.raft.types import Entry
from shmraft.wire.client import GROUP_FETCH_LEADER_ONLY, ErrorCode
from shmraft.wire.control import ControlKind, decode_control, encode_control, is_control
from shmraft.wire.frame import frame_event_count
from shmraft.workers.replay import REPLAY_READ_BYTES, replay_log

GROUP_PENDING_MAX: Final = 4096  # commits proposed and not yet applied; more are refused UNAVAILABLE


class GroupService:
    """The applied table and the leader's pending commits (see the module docstring)."""

    def __init__(self, log) -> None:
        self.log = log
        self.table = gr.GroupTable()
        self.end_offset = 0  # just past the last committed event applied (for lag)
        self._pending: dict[int, int] = {}  # log index of a proposed commit -> request token

    def leadership_changed(self) -> None:
        """Pending commits are failed by ingest on the LEADER note; forget them here."""
        self._pending.clear()

    def on_requests(
        self,
        records: list[bytes],
        propose: Callable[[bytes], int] | None,
        leader_ready: bool,
        notes: list[bytes],
    ) -> None:
        """R6 records: `propose` is the core's (None unless this node leads); results go into `notes`."""
        for rec in records:
            req = decode_group_request(rec)
            if req.kind is GroupRequestKind.COMMIT:
                self._commit(req, propose, notes)
            else:
                self._read(req, leader_ready, notes)

    def _commit(self, req: GroupRequest, propose: Callable[[bytes], int] | None, notes: list[bytes]) -> None:
        def answer(code: ErrorCode) -> None:
            payload = encode_result(0, 0, 0, False)
            notes.append(encode_note(Note(NoteKind.GROUP_RESULT, req.token, code, payload=payload)))

        if propose is None:
            answer(ErrorCode.NOT_LEADER)
            return
        if len(self._pending) >= GROUP_PENDING_MAX:
            answer(ErrorCode.UNAVAILABLE)
            return
        commit = gr.decode_commit(req.body)  # ingest encoded it: a failure here is a bug, not bad input
        if self.table.would_refuse(commit.group):
            answer(ErrorCode.TOO_MANY_GROUPS)
            return
        try:
            index = propose(encode_control(ControlKind.GROUP_OFFSETS, req.body))
        except ProposalError:
            answer(ErrorCode.NOT_LEADER)
            return
        self._pending[index] = req.token

    def _read(self, req: GroupRequest, leader_ready: bool, notes: list[bytes]) -> None:
        t = self.table
        code = 0
        section = b""
        if req.flags & GROUP_FETCH_LEADER_ONLY and not leader_ready:
            code = ErrorCode.NOT_LEADER
        elif req.kind is GroupRequestKind.FETCH:
            name = req.body.decode("utf-8", "replace")
            row = t.get(name)
            if row is None:
                code = ErrorCode.UNKNOWN_GROUP
            else:
                section = gr.GroupTable.of_rows(t.index, {name: row}).encode()
        else:
            section = t.encode()
        payload = encode_result(t.index, 0, self.end_offset, leader_ready, section)
        notes.append(encode_note(Note(NoteKind.GROUP_RESULT, req.token, int(code), payload=payload)))

    def on_committed(self, entries: list[Entry], notes: list[bytes]) -> None:
        """Apply committed entries in log order; answer this node's pending commits."""
        for e in entries:
            if e.index <= self.table.index or not e.data:
                continue
            if not is_control(e.data):
                self.end_offset = end_offset_of(e)
                continue
            result = apply_entry(self.table, e)
            token = self._pending.pop(e.index, None)
            if token is not None:
                code = ErrorCode.TOO_MANY_GROUPS if result is gr.ApplyResult.TOO_MANY_GROUPS else 0
                payload = encode_result(e.index, e.index, self.end_offset, True)
                notes.append(encode_note(Note(NoteKind.GROUP_RESULT, token, int(code), payload=payload)))
        if entries and entries[-1].index > self.table.index:
            self.table.advance(entries[-1].index)

    def install(self, table: gr.GroupTable | None, index: int, end_offset: int) -> None:
        """A table replaces ours: rebuilt at start, or a leader's snapshot at `index` (None: no groups)."""
        if table is None:
            table = gr.GroupTable()
            table.advance(index)
        self.table = table
        self.end_offset = end_offset
        self._pending.clear()


def end_offset_of(e: Entry) -> int:
    """Just past the last event of a batch-frame entry."""
    return e.index * BATCH_EVENTS_MAX + frame_event_count(e.data)


def apply_entry(table: gr.GroupTable, e: Entry) -> gr.ApplyResult | None:
    """Apply one committed entry's group commit, if it is one (other entries only advance the index)."""
    entry = decode_control(e.data)
    if entry.kind is not ControlKind.GROUP_OFFSETS:
        table.advance(e.index)
        return None
    return table.apply(e.index, gr.decode_commit(entry.body))


class GroupRebuild:
    """The applied table of a log and the end offset of its committed events: the saved snapshot's groups,
    then the committed entries after it (only control entries are decoded). A log without a snapshot replays
    its whole committed part. The entries lo..hi (hi: the commit index) are fed in order (workers/replay.py:
    one read at start shared with the core and the dedup table); `result` finishes."""

    def __init__(self, nl) -> None:
        self._nl = nl
        snap = nl.snapshot_record
        self._commit = min(nl.hard_state().commit, nl.last_index())
        if snap is not None and snap.groups is not None:
            self._table = snap.groups.copy()
        else:
            self._table = gr.GroupTable()
            if snap is not None:
                self._table.advance(snap.index)
        self.lo = max(self._table.index + 1, nl.first_index())
        self.hi = self._commit
        self._end = 0  # just past the last event fed
        self._next = self.lo  # the next entry to feed

    def feed(self, entries: Sequence[Entry]) -> None:
        """Apply the next committed entries (group commits) and note where the events end."""
        table = self._table
        end = self._end
        for e in entries:
            if e.data and is_control(e.data):
                apply_entry(table, e)
            elif e.data:
                end = end_offset_of(e)
        self._end = end
        if entries:
            self._next = entries[-1].index + 1

    def result(self, progress: Callable[[], None] | None = None) -> tuple[gr.GroupTable, int]:
        """(table, end offset), once every entry was fed. With no event since the snapshot, the end offset is
        the last event's before it (read backwards, one entry at a time)."""
        nl, table, end, commit = self._nl, self._table, self._end, self._commit
        if commit > table.index:
            table.advance(commit)
        at = min(self._next, commit + 1) - 1
        while not end and at >= nl.first_index():  # no event since the snapshot: the last one before it
            if progress is not None:
                progress()
            (e,) = nl.entries(at, at + 1, REPLAY_READ_BYTES)
            if e.data and not is_control(e.data):
                end = end_offset_of(e)
            at -= 1
        return table, end


def rebuild_groups(nl, progress: Callable[[], None] | None = None) -> tuple[gr.GroupTable, int]:
    """The applied table and end offset of a log read on its own (`GroupRebuild`; the worker shares the read,
    `replay_log`). `progress` is called between reads."""
    rebuild = GroupRebuild(nl)
    replay_log(nl, (rebuild,), progress)
    return rebuild.result(progress)
