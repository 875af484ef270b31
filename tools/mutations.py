"""The catalogue of Raft-core mutations that tools/mutate.py applies: realistic implementer slips, each a source
patch (an exact text, asserted to occur once in its file, and its replacement).

Kept apart from the harness so that the catalogue reads as a list. The core carries no flag for any of these:
they exist only as text here. (The four older `RaftConfig.test_only_mutation` switches stay in the core for the
tests that use them; their patch equivalents are in this catalogue, named `patch_*`.)
"""

from __future__ import annotations

from dataclasses import dataclass

CORE = "shmraft/raft/core.py"
LOG = "shmraft/raft/log.py"
PROGRESS = "shmraft/raft/progress.py"
QUORUM = "shmraft/raft/quorum.py"
DRIVER = "shmraft/raft/driver.py"


@dataclass(frozen=True, slots=True)
class Mutation:
    """One slip: `old` in `path` becomes `new` (and each pair of `also`). `rule` names the rule it breaks."""

    name: str
    area: str  # election, replication, commit, persistence, recovery, snapshot, transfer, dedup
    path: str
    old: str
    new: str
    rule: str
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits in the same file, each also matched once


CATALOGUE: tuple[Mutation, ...] = (
    # --- election --------------------------------------------------------------------------------------------
    Mutation(
        "patch_vote_ignores_log",
        "election",
        CORE,
        'up_to_date = self._mutation == "vote_ignores_log" or self._log.is_up_to_date(m.last_index, m.last_term)',
        "up_to_date = True",
        "a voter grants without the candidate-log-up-to-date check (5.4.1)",
    ),
    Mutation(
        "up_to_date_ignores_term",
        "election",
        LOG,
        "return last_term > my_term or (last_term == my_term and last_index >= self.last_index())",
        "return last_index >= self.last_index()",
        "up-to-date compares log lengths only, not last terms (5.4.1)",
    ),
    Mutation(
        "up_to_date_term_ge",
        "election",
        LOG,
        "return last_term > my_term or (last_term == my_term and last_index >= self.last_index())",
        "return last_term >= my_term",
        "`>=` for `>` on the last term: a shorter log of the same last term wins (5.4.1)",
    ),
    Mutation(
        "vote_twice_in_term",
        "election",
        CORE,
        "            self._vote == m.src or (self._vote == 0 and self._leader == 0)"
        " or (m.pre_vote and m.term > self._term)",
        "            True",
        "a voter forgets it already voted in this term (5.2: one vote per term)",
        also=(
            (
                "                if self._vote not in (0, m.src):\n"
                '                    raise InvariantError(f"second vote in term {self._term}")\n',
                "",
            ),
        ),
    ),
    Mutation(
        "candidate_no_self_vote",
        "election",
        CORE,
        "        self._term += 1\n        self._vote = self.id\n",
        "        self._term += 1\n",
        "a candidate counts itself but does not record (persist) its vote for itself",
    ),
    Mutation(
        "votes_counted_per_message",
        "dedup",
        CORE,
        "self._votes.setdefault(m.src, m.granted)",
        "self._votes[len(self._votes) + 1000] = m.granted",
        "a candidate counts vote messages, not voters: a duplicated grant counts twice",
    ),
    Mutation(
        "refusals_counted_as_votes",
        "election",
        QUORUM,
        "granted = sum(1 for v in votes.values() if v)",
        "granted = len(votes)",
        "a candidate counts answers, refusals included",
    ),
    Mutation(
        "majority_off_by_one",
        "election",
        QUORUM,
        "return voters // 2 + 1",
        "return (voters + 1) // 2",
        "quorum of n is ceil(n/2), not floor(n/2)+1: two halves of 4 (or 2 of 3 with 1) decide",
    ),
    Mutation(
        "higher_term_no_step_down",
        "election",
        CORE,
        "                leader = m.src if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else 0\n"
        "                self._become_follower(m.term, leader)",
        "                self._term, self._vote = m.term, 0",
        "a node adopts a higher term but keeps its role (a leader does not step down, 5.1)",
    ),
    Mutation(
        "stale_term_messages_accepted",
        "election",
        CORE,
        "                self._send(VoteResponse(self.id, m.src, self._term, False, True))\n            return\n",
        "                self._send(VoteResponse(self.id, m.src, self._term, False, True))\n",
        "messages of an older term are processed instead of dropped (5.1)",
    ),
    Mutation(
        "pre_vote_grants_count_in_election",
        "election",
        CORE,
        "            if m.pre_vote != pre:\n                return\n",
        "",
        "a candidate counts (late) pre-vote grants as votes of its real election",
    ),
    # --- replication -----------------------------------------------------------------------------------------
    Mutation(
        "patch_append_ignores_prev_term",
        "replication",
        LOG,
        "        elif self.term(prev_index) != prev_term:\n            return None",
        "        elif prev_index > self.last_index():\n            return None",
        "a follower checks that the prev entry exists, not its term (5.3 log matching)",
    ),
    Mutation(
        "ack_whole_log",
        "replication",
        CORE,
        "self._send(AppendResponse(self.id, m.src, self._term, last_new, True))",
        "self._send(AppendResponse(self.id, m.src, self._term, self._log.last_index(), True))",
        "a follower acknowledges its whole log, not the last entry the append covered",
    ),
    Mutation(
        "last_new_off_by_one",
        "replication",
        LOG,
        "last_new = prev_index + len(entries)",
        "last_new = prev_index + len(entries) + 1",
        "off by one in the index an append covers (acknowledges one entry too many)",
    ),
    Mutation(
        "truncate_matching_entries",
        "dedup",
        LOG,
        "            if e.index > last or self.term(e.index) != e.term:\n                return e.index",
        "            return e.index",
        "a follower rewrites from the first entry of every append, cutting the suffix a duplicate or stale "
        "append does not carry (5.3: truncate only on conflict)",
    ),
    Mutation(
        "skip_committed_off_by_one",
        "replication",
        CORE,
        "skip = self._commit - prev_index",
        "skip = self._commit - prev_index + 1",
        "off by one when skipping the already-committed head of an append",
    ),
    Mutation(
        "next_not_lowered_on_reject",
        "replication",
        PROGRESS,
        "        self.next = max(min(rejected_index, next_hint), self.match + 1)\n        self.probe_sent = False",
        "        self.probe_sent = False",
        "a leader retries the rejected append instead of backing nextIndex off (5.3)",
    ),
    Mutation(
        "match_from_reject_hint",
        "replication",
        CORE,
        "            pr.rejected(m.index, next_hint)\n",
        "            pr.match = max(pr.match, next_hint - 1)\n            pr.rejected(m.index, next_hint)\n",
        "a rejection's hint is taken as a match (matchIndex moves to an index the follower may not hold)",
    ),
    Mutation(
        "match_moves_backwards",
        "replication",
        PROGRESS,
        "        moved = index > self.match\n        if moved:\n            self.match = index",
        "        moved = index != self.match\n        if moved:\n            self.match = index",
        "matchIndex follows every (reordered, older) acknowledgement, backwards too",
    ),
    # --- commit ----------------------------------------------------------------------------------------------
    Mutation(
        "patch_commit_any_term",
        "commit",
        CORE,
        'if index < self._leader_term_start and self._mutation != "commit_any_term":',
        "if False:",
        "a leader commits earlier terms' entries by counting replicas (5.4.2, figure 8)",
    ),
    Mutation(
        "leader_term_start_off_by_one",
        "commit",
        CORE,
        "self._leader_term_start = last + 1",
        "self._leader_term_start = last",
        "off by one in where the leader's own term starts: the last entry of an earlier term counts (5.4.2)",
    ),
    Mutation(
        "quorum_index_off_by_one",
        "commit",
        QUORUM,
        "return ordered[quorum - 1]",
        "return ordered[quorum - 2]",
        "off by one in the commit index: one replica fewer than a majority commits",
    ),
    Mutation(
        "follower_commit_past_append",
        "commit",
        CORE,
        "self._commit_to(min(m.commit, last_new))",
        "self._commit_to(min(m.commit, self._log.last_index()))",
        "a follower commits up to its last index, past what the append verified (a stale suffix)",
    ),
    Mutation(
        "heartbeat_commit_unclamped",
        "commit",
        CORE,
        "commit = min(pr.match, self._commit)",
        "commit = self._commit",
        "a leader's heartbeat carries its commit past the follower's match",
    ),
    Mutation(
        "leader_counts_unstable_self",
        "persistence",
        CORE,
        "matches.append(self._log.stable_last())",
        "matches.append(self._log.last_index())",
        "a leader counts its own entries before they are durable (thesis 10.2.1)",
    ),
    # --- persistence -----------------------------------------------------------------------------------------
    Mutation(
        "vote_before_persist",
        "persistence",
        CORE,
        "            self._send(VoteResponse(self.id, m.src, m.term, True, m.pre_vote))",
        "            self._msgs.append(VoteResponse(self.id, m.src, m.term, True, m.pre_vote))",
        "a vote is granted before the vote is durable",
    ),
    Mutation(
        "ack_before_persist",
        "persistence",
        CORE,
        "            self._commit_to(min(m.commit, last_new))\n"
        "            self._send(AppendResponse(self.id, m.src, self._term, last_new, True))",
        "            self._commit_to(min(m.commit, last_new))\n"
        "            self._msgs.append(AppendResponse(self.id, m.src, self._term, last_new, True))",
        "an append is acknowledged before its entries are durable",
    ),
    Mutation(
        "everything_before_persist",
        "persistence",
        CORE,
        "        if self._role == Role.LEADER:\n            self._msgs.append(m)\n",
        "        if True:\n            self._msgs.append(m)\n",
        "every message leaves before the Ready is persisted (votes, acks, terms)",
    ),
    Mutation(
        "hard_state_drops_vote",
        "persistence",
        CORE,
        "hard = HardState(self._term, self._vote, self._commit)",
        "hard = HardState(self._term, 0, self._commit)",
        "the vote is never written to the hard state",
    ),
    Mutation(
        "driver_acks_before_write",
        "persistence",
        DRIVER,
        "        self._send(rd.messages)\n        after = rd.messages_after_persist\n",
        "        self._send(rd.messages + rd.messages_after_persist)\n        after: list[Message] = []\n",
        "the shared driver sends votes and acknowledgements before the write that backs them",
    ),
    Mutation(
        "driver_skips_wait_for_earlier_writes",
        "persistence",
        DRIVER,
        "        if not rd.must_persist and not self._pending:",
        "        if not rd.must_persist:",
        "the driver releases a Ready's acknowledgements while an earlier Ready's write is still pending",
    ),
    Mutation(
        "driver_reports_persisted_early",
        "persistence",
        DRIVER,
        "        self._pending.append(write)\n",
        "        self._pending.append(write)\n"
        "        if rd.entries:\n"
        "            self.core.persisted(rd.entries[-1].index, rd.entries[-1].term)\n",
        "the driver tells the core its entries are durable when the write starts, not when it completes",
    ),
    # --- recovery --------------------------------------------------------------------------------------------
    Mutation(
        "patch_recovering_votes",
        "recovery",
        CORE,
        'if self._recovery_term and self._mutation != "recovering_votes":',
        "if False:",
        "a node that lost its log votes as if it still had it",
    ),
    Mutation(
        "recovery_ends_on_older_term",
        "recovery",
        CORE,
        "if index > 0 and term is not None and term >= self._recovery_term:",
        "if index > 0 and term is not None and term >= self._recovery_term - 1:",
        "recovering mode ends on a committed entry of an older term than the recovery term",
    ),
    Mutation(
        "recovery_ends_on_unstable",
        "recovery",
        CORE,
        "index = min(self._commit, self._log.stable_last())",
        "index = self._commit",
        "recovering mode ends on a committed entry that is not yet durable here",
    ),
    Mutation(
        "recovering_campaigns",
        "recovery",
        CORE,
        "if self._recovery_term or not self._may_campaign():",
        "if not self._may_campaign():",
        "a recovering node campaigns when its election timer fires",
    ),
    # --- snapshot --------------------------------------------------------------------------------------------
    Mutation(
        "snapshot_older_than_commit",
        "snapshot",
        CORE,
        "        if m.index <= self._commit:\n"
        "            # we hold (and have committed) everything up to the snapshot: never move commit backwards\n"
        "            self._send(AppendResponse(self.id, m.src, self._term, self._commit, True))\n"
        "            return\n",
        "",
        "a follower installs a snapshot whose index is below its commit (taking the snapshot's index as its "
        "commit): commit and applied state move backwards",
        also=(
            (
                "        if snap.index <= self._commit:\n"
                '            raise InvariantError(f"snapshot at {snap.index} installed at or below commit '
                '{self._commit}")\n',
                "",
            ),
            ("self._commit = max(self._commit, snap.index)", "self._commit = snap.index"),
        ),
    ),
    Mutation(
        "snapshot_without_state",
        "snapshot",
        CORE,
        "self._install_snapshot(Snapshot(m.index, m.snap_term, bytes(buf), m.config))",
        'self._install_snapshot(Snapshot(m.index, m.snap_term, b"", m.config))',
        "a follower installs the snapshot's index and term without its state (the dedup table is lost)",
    ),
    Mutation(
        "snapshot_truncates_matching",
        "snapshot",
        CORE,
        "        if self._log.term(m.index) == m.snap_term:\n",
        "        if False:\n",
        "a follower whose log holds the snapshot's last entry installs it anyway, discarding the log above it "
        "(entries it may have acknowledged)",
    ),
    # --- transfer --------------------------------------------------------------------------------------------
    Mutation(
        "transfer_vote_skips_log_check",
        "transfer",
        CORE,
        "        if can_vote and up_to_date:\n",
        "        if can_vote and (up_to_date or m.transfer):\n",
        "a voter trusts a transfer election and skips the up-to-date check",
    ),
    Mutation(
        "timeout_now_to_lagging_target",
        "transfer",
        CORE,
        "        if self._progress[to].match == self._log.last_index():\n",
        "        if True:\n",
        "a leader sends TimeoutNow to a transfer target that has not caught up",
    ),
    Mutation(
        "timeout_now_while_recovering",
        "transfer",
        CORE,
        "elif isinstance(m, TimeoutNow) and not self._recovery_term and self._may_campaign():",
        "elif isinstance(m, TimeoutNow) and self._may_campaign():",
        "a recovering node campaigns on TimeoutNow",
    ),
    # --- membership (thesis chapter 4, single-server changes) -----------------------------------------------
    Mutation(
        "conf_on_commit",
        "membership",
        CORE,
        "        index, conf = self._configs[-1]  # in effect once appended, committed or not (thesis 4.1)\n",
        "        index, conf = next((c for c in reversed(self._configs) if c[0] <= self._commit), self._configs[0])\n",
        "a configuration takes effect when committed instead of when appended (single-server changes, 4.1)",
        also=(("        self._commit = index\n", "        self._commit = index\n        self._use_config()\n"),),
    ),
    Mutation(
        "two_changes_in_flight",
        "membership",
        CORE,
        "        if latest_index > self._commit:\n",
        "        if False:\n",
        "a membership change is accepted while the previous configuration entry is uncommitted (4.1)",
    ),
    Mutation(
        "learner_counts_for_commit",
        "membership",
        CORE,
        "        counted = self._counted\n        matches = ",
        "        counted = set(self._progress) | {self.id}\n        matches = ",
        "the leader counts every node it replicates to for commits, learners included",
    ),
    Mutation(
        "learner_vote_counts",
        "membership",
        CORE,
        "            if m.src not in self._counted:\n"
        "                return  # not a voter of our configuration (thesis 4.1): its answer does not count\n",
        "",
        "a candidate asks and counts the votes of learners as if they were voters",
        also=(
            ("votes = {p: g for p, g in self._votes.items() if p in self._counted}", "votes = dict(self._votes)"),
            (
                "            if p not in self._counted:\n"
                "                continue  # a learner's vote would not count\n",
                "",
            ),
        ),
    ),
    Mutation(
        "removed_leader_keeps_leading",
        "membership",
        CORE,
        "if self._role != Role.LEADER or self.id in self._voters or self._conf_index > self._commit:",
        "if True:",
        "a leader whose removal is committed keeps leading (4.2.2)",
    ),
    Mutation(
        "snapshot_config_ignored",
        "membership",
        CORE,
        "base = decode_membership(snap.config) if snap.config else self.membership_at_or_below(snap.index)",
        "base = self.membership_at_or_below(snap.index)",
        "an installed snapshot does not set the follower's configuration (it keeps the one it had)",
    ),
    Mutation(
        "truncated_config_kept",
        "membership",
        CORE,
        "        while len(configs) > 1 and configs[-1][0] >= first:\n"
        "            configs.pop()\n"
        "            changed = True\n",
        "",
        "a configuration entry replaced by a new leader's entry stays in effect (4.1)",
    ),
)
