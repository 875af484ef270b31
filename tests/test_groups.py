"""Consumer groups' positions: the table (node/groups.py), the GROUP_OFFSETS body, the raft worker's side
(workers/raft_groups.py: proposals, apply, reads, rebuild from a real log) and ingest's waiting requests
(ingest/groups.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmraft.ingest.groups import GroupRequests
from shmraft.node import groups as gr
from shmraft.node.dedup import DedupTable
from shmraft.node.records import (
    GroupRequest,
    GroupRequestKind,
    NoteKind,
    decode_group_request,
    decode_note,
    decode_result,
    encode_group_request,
)
from shmraft.node.snapshot import decode_snapshot, encode_snapshot, snapshot_of
from shmraft.raft.types import Entry, HardState
from shmraft.storage.nodelog import open_node_log
from shmraft.storage.rocks import SavedSnapshot
from shmraft.wire.client import GROUP_FETCH_LEADER_ONLY, ErrorCode
from shmraft.wire.control import ControlKind, decode_control, encode_control, is_control
from shmraft.wire.frame import decode_batch, encode_batch
from shmraft.workers.raft_groups import GroupService, rebuild_groups

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
commits = st.builds(
    gr.GroupCommit,
    group=names,
    offset=st.integers(0, 2**63 - 1),
    commit_unix_ms=st.integers(0, 2**64 - 1),
    metadata=st.binary(max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(c=commits)
def test_body_round_trip(c: gr.GroupCommit) -> None:
    assert gr.decode_commit(gr.encode_commit(c)) == c


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(commits, max_size=30))
def test_table_section_round_trip_is_deterministic(ops: list[gr.GroupCommit]) -> None:
    a, b = gr.GroupTable(), gr.GroupTable()
    for i, c in enumerate(ops, start=1):
        a.apply(i, c)
    for c in reversed(ops):  # another order of the same final rows
        if b.get(c.group) is None:
            b._rows[c.group] = a.get(c.group)  # noqa: SLF001 (the same rows inserted in another order)
    b.index = a.index
    assert a.encode() == b.encode()
    assert gr.GroupTable.decode(a.encode(), a.index) == a


def test_later_commit_wins_and_a_full_table_refuses_only_new_groups() -> None:
    t = gr.GroupTable(groups_max=2)
    assert t.apply(1, gr.GroupCommit("a", 64, 1)) is gr.ApplyResult.APPLIED
    assert t.apply(2, gr.GroupCommit("b", 128, 2)) is gr.ApplyResult.APPLIED
    assert t.apply(3, gr.GroupCommit("c", 5, 3)) is gr.ApplyResult.TOO_MANY_GROUPS
    assert t.apply(4, gr.GroupCommit("a", 10, 4)) is gr.ApplyResult.APPLIED  # rewinding is allowed
    assert t.get("a") == gr.GroupPosition(10, 4, 4) and t.get("c") is None and t.index == 4
    with pytest.raises(ValueError, match="cannot go back"):
        t.advance(3)


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda b: b[:1], "group body"),
        (lambda b: b"\x02\x00" + b[2:], "group body version"),
        (lambda b: b[:2] + b"\x09" + b[3:], "group op"),
        (lambda b: b[:3] + b"\x00" + b[4:], "group name length"),
        (lambda b: b + b"x", "group body size"),
        (lambda b: b[:4] + b"\xff" + b[5:], "group name"),
    ],
)
def test_bad_bodies_name_the_field(damage, field: str) -> None:
    body = gr.encode_commit(gr.GroupCommit("orders", 1, 2, b"m"))
    with pytest.raises(gr.GroupFormatError) as info:
        gr.decode_commit(damage(body))
    assert info.value.field == field


def test_names_are_bounded() -> None:
    gr.check_group_name("x" * gr.GROUP_NAME_BYTES_MAX)
    for bad in ("", "x" * (gr.GROUP_NAME_BYTES_MAX + 1), "é" * (gr.GROUP_NAME_BYTES_MAX // 2 + 1)):
        with pytest.raises(gr.GroupNameError, match="group name"):
            gr.check_group_name(bad)


# --- the raft worker's side ---------------------------------------------------------------------------------


def _commit_entry(index: int, group: str, offset: int) -> Entry:
    body = gr.encode_commit(gr.GroupCommit(group, offset, 1000 + index))
    return Entry(index, 1, encode_control(ControlKind.GROUP_OFFSETS, body))


def _results(notes: list[bytes]) -> list[tuple[int, int]]:
    out = []
    for n in notes:
        note = decode_note(n)
        assert note.kind is NoteKind.GROUP_RESULT
        out.append((note.a, note.b))
    return out


def test_service_proposes_on_the_leader_and_answers_once_applied() -> None:
    svc = GroupService(None)
    proposed: list[bytes] = []

    def propose(data: bytes) -> int:
        proposed.append(data)
        return 10 + len(proposed)

    body = gr.encode_commit(gr.GroupCommit("g", 640, 5))
    rec = lambda tok, kind=GroupRequestKind.COMMIT, b=body, f=0: _req(tok, kind, b, f)  # noqa: E731
    notes: list[bytes] = []
    svc.on_requests([rec(1)], None, False, notes)  # not the leader
    assert _results(notes) == [(1, ErrorCode.NOT_LEADER)]
    notes.clear()
    svc.on_requests([rec(2)], propose, True, notes)
    assert notes == [] and len(proposed) == 1
    svc.on_committed([Entry(11, 1, proposed[0])], notes)
    assert _results(notes) == [(2, 0)] and decode_result(decode_note(notes[0]).payload).entry_index == 11
    notes.clear()
    svc.on_requests([rec(3, GroupRequestKind.FETCH, b"g", GROUP_FETCH_LEADER_ONLY)], propose, True, notes)
    r = decode_result(decode_note(notes[0]).payload)
    assert _results(notes) == [(3, 0)] and r.table.get("g").offset == 640 and r.applied_index == 11
    notes.clear()
    svc.on_requests([rec(4, GroupRequestKind.FETCH, b"g", GROUP_FETCH_LEADER_ONLY)], None, False, notes)
    svc.on_requests([rec(5, GroupRequestKind.FETCH, b"g", 0)], None, False, notes)  # a follower's own table
    svc.on_requests([rec(6, GroupRequestKind.FETCH, b"nope", 0)], None, False, notes)
    assert _results(notes) == [(4, ErrorCode.NOT_LEADER), (5, 0), (6, ErrorCode.UNKNOWN_GROUP)]
    notes.clear()
    svc.on_requests([rec(7)], propose, True, notes)  # a leadership change forgets what is pending
    svc.leadership_changed()
    svc.on_committed([Entry(12, 1, proposed[1])], notes)
    assert notes == [] and svc.table.get("g").index == 12  # applied all the same: it is in the log


def _req(token: int, kind: GroupRequestKind, body: bytes, flags: int) -> bytes:
    return encode_group_request(GroupRequest(kind, token, flags, body))


def test_ingest_requests_get_exactly_one_reply() -> None:
    reqs = GroupRequests()
    got: list[tuple[str, int]] = []
    commit = reqs.submit(GroupRequestKind.COMMIT, 0, b"c", lambda s, p: got.append(("c", s)), 100, 0)
    fetch = reqs.submit(GroupRequestKind.FETCH, 1, b"g", lambda s, p: got.append(("f", s)), 100, 0)
    late = reqs.submit(GroupRequestKind.LIST, 1, b"", lambda s, p: got.append(("l", s)), 50, 0)
    reqs.on_leadership_lost()  # only the commit waits on leadership
    assert got == [("c", ErrorCode.NOT_LEADER)]
    reqs.on_result(decode_group_request(commit).token, 0, b"")  # too late: ignored
    reqs.on_result(decode_group_request(fetch).token, 0, b"")
    reqs.expire(60 * 1_000_000, is_leader=True)
    reqs.expire(200 * 1_000_000, is_leader=True)
    assert got[1:] == [("f", 0), ("l", ErrorCode.TIMEOUT)] and len(reqs) == 0
    assert late is not None


def test_rebuild_from_snapshot_and_tail_equals_the_table_applied_live(tmp_path: Path) -> None:
    """A real log: events, group commits, a snapshot midway; the table rebuilt at start is the table the
    entries gave when applied one by one, and the end offset is that of the last committed event."""
    entries: list[Entry] = []
    live = gr.GroupTable()
    for i in range(1, 31):
        if i % 3 == 0:
            e = _commit_entry(i, f"g{i % 4}", i * 64)
            live.apply(i, gr.decode_commit(gr.encode_commit(gr.GroupCommit(f"g{i % 4}", i * 64, 1000 + i))))
        else:
            e = Entry(i, 1, encode_batch([b"e", b"f"], batch_id=i, producer_ids=[1, 1], sequences=[2 * i, 2 * i + 1]))
        entries.append(e)
    commit = 28
    nl = open_node_log(tmp_path / "n", fsync="never")
    try:
        nl.append(entries, HardState(1, 1, commit))
        mid = gr.GroupTable()
        for e in entries[:15]:
            if e.index % 3 == 0:
                mid.apply(e.index, gr.decode_commit(_body(e)))
        mid.advance(15)
        data = encode_snapshot(snapshot_of(_dedup_at(entries[:15]), 1, mid))
        nl.save_snapshot(SavedSnapshot(15, 1, data))
        nl.snapshot_record = decode_snapshot(data)
        table, end = rebuild_groups(nl)
        expect = gr.GroupTable()
        for e in entries[:commit]:
            if e.index % 3 == 0:
                expect.apply(e.index, gr.decode_commit(_body(e)))
        expect.advance(commit)
        assert table == expect and end == 28 * 64 + 2  # entry 28 is a frame of two events
    finally:
        nl.close()


def _body(e: Entry) -> bytes:
    return decode_control(e.data).body


def _dedup_at(entries: list[Entry]) -> DedupTable:
    t = DedupTable()
    empty = np.zeros(0, np.uint64)
    for e in entries:
        if is_control(e.data):
            t.record(e.index, empty, empty, e.index)
        else:
            b = decode_batch(e.data)
            t.record(e.index, b.producer_ids, b.sequences, e.index)
    t.committed(entries[-1].index)
    return t
