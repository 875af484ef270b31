"""The sender worker: the data channel. Carries the raft worker's bulk messages (AppendEntries with
entries) to the other nodes' senders, and hands what they send us to the raft worker.

R3 (raft -> sender) holds outgoing messages tagged with their destination; R4 (sender -> raft) holds
received messages tagged with their source, and "peer disconnected" notices that let the raft worker
react to a dead leader at once. Each peer has its own connection and bounded queue, so a slow follower
never holds up the others; when a queue overflows the connection is re-made and Raft resends.
"""

from __future__ import annotations

import time
from typing import Final

from shmraft.ipc.state import Worker
from shmraft.ipc.trace import SenderTrace
from shmraft.net.links import PeerLinks, PeerSecurity
from shmraft.node import members as mb
from shmraft.node.layout import Ring
from shmraft.node.records import PeerRecordKind, decode_peer_record, encode_peer_record
from shmraft.raft.messages import Channel
from shmraft.workers.base import Inbox, LoopSelector, WorkerBase, selector_loop_once

LOOP_WAIT_MS: Final = 50
RING_PUSH_TIMEOUT_MS: Final = 100
PEER_QUEUE_MAX_BYTES: Final = 32 * 1024 * 1024


class SenderWorker(WorkerBase):
    kind = Worker.SENDER

    def __init__(self, config) -> None:
        super().__init__(config)
        c = config
        self.sel = LoopSelector()
        self.to_raft = self.layout.writer(Ring.R4)
        self.pending: list[bytes] = []
        self._epoch = self.state.get("members_epoch")
        self._view = mb.current_view(c)
        self._former = mb.FormerMembers(
            config.former_member_linger_ms / 1000
        )  # removed members still linked for a while (they learn their removal)
        self.trace = SenderTrace(self.state.trace, config.trace_sample_every)
        self.links = PeerLinks(
            self.sel,
            cluster_id=c.cluster_id,
            node_id=c.node_id,
            channel=Channel.DATA,
            bind=(c.bind_host, c.me.data_port),
            peers=mb.peer_addresses(c, self._view, "data"),
            on_message=self._on_message,
            on_disconnect=self._on_disconnect,
            outbuf_max_bytes=PEER_QUEUE_MAX_BYTES,
            body_max_bytes=c.peer_message_bytes_max,
            security=PeerSecurity.from_config(c),
            inbound_max=c.peer_inbound_connections_max,
            handshake_timeout_ms=c.peer_handshake_timeout_ms,
            admit_non_members=True,  # the leader's catch-up appends reach a removed node (net/links.py)
        )
        self.outbox = Inbox(self.layout.reader(Ring.R3), Ring.R3, self.sel)

    def _on_message(self, peer_id: int, body: memoryview) -> None:
        self.pending.append(encode_peer_record(peer_id, PeerRecordKind.MESSAGE, body))
        self.trace.received()

    def _on_disconnect(self, peer_id: int) -> None:
        self.pending.append(encode_peer_record(peer_id, PeerRecordKind.DISCONNECTED))

    def _follow_members(self) -> None:
        """The raft worker published another configuration: connect to new members, drop removed ones."""
        epoch = self.state.get("members_epoch")
        now = time.monotonic()
        changed = self._former.expire(now)
        if epoch != self._epoch:
            self._epoch = epoch
            try:
                view = mb.current_view(self.config)
            except (OSError, mb.AddressError) as exc:
                self.log.error("members file unreadable (%s); keeping the previous configuration", exc)
                return
            self._former.update(self._view, view, now)
            self._view = view
            changed = True
        if changed:
            self.links.set_peers(mb.peer_addresses(self.config, self._former.view(self._view), "data"))

    def run(self) -> None:
        try:
            while not self.stopping:
                self.beat()
                selector_loop_once(self.sel, LOOP_WAIT_MS / 1000)
                self._follow_members()
                self.links.maintain()
                for rec in self.outbox.take():
                    peer_id, _kind, body = decode_peer_record(rec)
                    self.trace.popped()
                    self.links.send(peer_id, body)
                    self.trace.sent()
                    self.record["records_out"] += 1
                if self.pending:
                    recs, self.pending = self.pending, []
                    self.trace.before_r4()
                    pushed = self.to_raft.push_many(recs, RING_PUSH_TIMEOUT_MS)
                    self.record["records_in"] += pushed
                    if pushed < len(recs):
                        self.log.warning("ring to raft full: %d peer messages dropped", len(recs) - pushed)
        finally:
            self.outbox.close()
            self.links.close()
