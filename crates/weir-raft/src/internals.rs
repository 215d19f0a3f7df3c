//! Every use of raft-rs state that goes past `RawNode`'s methods, in one place.
//!
//! The driver needs more than `RawNode`'s methods offer: the role, term and leader, the
//! commit and last index, each follower's progress, and a few writes (the rejoin rules,
//! forgetting a wiped peer). raft-rs exposes these as public fields of `RawNode::raft`
//! (`Raft`, its `RaftLog` and its `ProgressTracker`), which are not a stable interface:
//! hence raft is pinned at `=0.7.0` in the workspace manifest, and a raft-rs upgrade
//! checks this file against the new version, and no other.
//!
//! Each function states the raft-rs invariant it relies on and checks it where a check is
//! cheap.

#[cfg(feature = "testing")]
use raft::{eraftpb::Entry, GetEntriesContext};
use raft::{ProgressState, RawNode, StateRole};

/// What the driver knows of one replica of a shard, as its leader tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Replica {
    /// The replica's node id (this node's own included).
    pub(crate) id: u64,
    /// The last index known to be durable on the replica (raft-rs `Progress::matched`).
    pub(crate) matched: u64,
    /// Whether the replica was heard from within the last election timeout.
    pub(crate) recent_active: bool,
    /// Whether raft-rs waits for the replica to install a snapshot (`ProgressState::Snapshot`).
    pub(crate) snapshotting: bool,
}

/// The raft-rs state the driver reads and writes beyond `RawNode`'s own methods.
pub(crate) trait RawNodeExt {
    /// Whether this node leads the shard in its current term.
    fn is_leader(&self) -> bool;

    /// The leader of the current term as this node knows it, 0 when unknown.
    ///
    /// Relies on: a leader's `leader_id` is its own id (checked in debug builds).
    fn leader_id(&self) -> u64;

    /// The current term.
    fn term(&self) -> u64;

    /// Whom this node voted for in the current term, 0 for nobody. For the simulator's
    /// reports.
    #[cfg(feature = "testing")]
    fn vote(&self) -> u64;

    /// The commit index.
    ///
    /// Relies on: raft-rs never commits past its log (`committed <= last_index`, checked
    /// in debug builds; raft-rs itself panics on a commit index past the log).
    fn committed(&self) -> u64;

    /// The last index of the log as raft sees it: what is durable plus what it has handed
    /// to the driver and not yet seen persisted (raft-rs's unstable entries).
    ///
    /// Relies on: the log is never shorter than what was compacted
    /// (`last_index + 1 >= first_index`, checked in debug builds).
    fn last_index(&self) -> u64;

    /// The term of the entry at [`RawNodeExt::last_index`], 0 for an empty log.
    fn last_term(&self) -> u64;

    /// The term of the entry at `index`, `None` when it is compacted or not in the log.
    fn term_of(&self, index: u64) -> Option<u64>;

    /// The entries from `from` to the end of the log (raft-rs's unstable ones included),
    /// in index order. For the simulator's checks.
    ///
    /// # Errors
    /// raft-rs's storage error when `from` is compacted or past the log.
    #[cfg(feature = "testing")]
    fn entries_from(&self, from: u64) -> raft::Result<Vec<Entry>>;

    /// The index of the snapshot raft-rs took and has not handed to the driver yet (its
    /// pending snapshot), if any.
    fn pending_snapshot_index(&self) -> Option<u64>;

    /// The node this leader is handing leadership to, while a transfer runs.
    fn transferring_to(&self) -> Option<u64>;

    /// Every replica the shard's progress tracker knows (this node's own included), in
    /// raft-rs's order. Meaningful on a leader only: a follower's tracker holds what it
    /// knew when it last led.
    ///
    /// Relies on: a leader's replica never has more than the leader's log
    /// (`matched <= last_index`, checked in debug builds).
    fn replicas(&self) -> impl Iterator<Item = Replica> + '_;

    /// Replica `id`, as [`RawNodeExt::replicas`] has it.
    fn replica(&self, id: u64) -> Option<Replica>;

    /// Number of replicas the progress tracker knows (voters and learners).
    fn replica_count(&self) -> usize;

    /// Lets the time since a leader was last heard pass without running the election
    /// timer, for a shard that must never campaign: raft-rs's `tick` would start an
    /// election at the timeout, but a lease that never ages would make raft-rs ignore every
    /// candidate (its leader lease check).
    fn age_leader_lease(&mut self);

    /// Moves to `term` as a follower of no known leader, with the vote of that term cast
    /// for `me` (a vote for itself grants no one anything). raft-rs persists the new term
    /// and vote with the next Ready's hard state.
    ///
    /// # Panics
    /// If `term` is not above the current term: raft-rs would not reset the vote, and
    /// overwriting it could vote twice in one term.
    fn enter_term_voting_for_self(&mut self, term: u64, me: u64);

    /// Leader: replica `id` lost its data, so what it acknowledged no longer counts.
    /// Its `matched` drops to 0 and it is probed from `probe_from` (the leader's rejection
    /// handling backs off from there). Returns the `matched` it had, `None` for a replica
    /// the tracker does not know.
    fn forget_replica(&mut self, id: u64, probe_from: u64) -> Option<u64>;
}

impl<S: raft::Storage> RawNodeExt for RawNode<S> {
    fn is_leader(&self) -> bool {
        self.raft.state == StateRole::Leader
    }

    fn leader_id(&self) -> u64 {
        debug_assert!(
            !self.is_leader() || self.raft.leader_id == self.raft.id,
            "a leader names itself the leader"
        );
        self.raft.leader_id
    }

    fn term(&self) -> u64 {
        self.raft.term
    }

    #[cfg(feature = "testing")]
    fn vote(&self) -> u64 {
        self.raft.vote
    }

    fn committed(&self) -> u64 {
        let committed = self.raft.raft_log.committed;
        debug_assert!(
            committed <= self.raft.raft_log.last_index(),
            "commit index {committed} past the last index {}",
            self.raft.raft_log.last_index()
        );
        committed
    }

    fn last_index(&self) -> u64 {
        let log = &self.raft.raft_log;
        let last = log.last_index();
        debug_assert!(
            last + 1 >= log.first_index(),
            "last index {last} below the first index {} - 1",
            log.first_index()
        );
        last
    }

    fn last_term(&self) -> u64 {
        self.raft.raft_log.last_term()
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        self.raft.raft_log.term(index).ok()
    }

    #[cfg(feature = "testing")]
    fn entries_from(&self, from: u64) -> raft::Result<Vec<Entry>> {
        self.raft
            .raft_log
            .entries(from, None, GetEntriesContext::empty(false))
    }

    fn pending_snapshot_index(&self) -> Option<u64> {
        self.raft
            .raft_log
            .unstable_snapshot()
            .as_ref()
            .map(|s| s.get_metadata().index)
    }

    fn transferring_to(&self) -> Option<u64> {
        self.raft.lead_transferee
    }

    fn replicas(&self) -> impl Iterator<Item = Replica> + '_ {
        let leader = self.is_leader();
        let last = self.raft.raft_log.last_index();
        self.raft.prs().iter().map(move |(id, p)| {
            debug_assert!(
                !leader || p.matched <= last,
                "replica {id} matched {} past the leader's last index {last}",
                p.matched
            );
            Replica {
                id: *id,
                matched: p.matched,
                recent_active: p.recent_active,
                snapshotting: p.state == ProgressState::Snapshot,
            }
        })
    }

    fn replica(&self, id: u64) -> Option<Replica> {
        self.replicas().find(|r| r.id == id)
    }

    fn replica_count(&self) -> usize {
        self.raft.prs().iter().len()
    }

    fn age_leader_lease(&mut self) {
        let raft = &mut self.raft;
        raft.election_elapsed = raft.election_elapsed.saturating_add(1);
    }

    fn enter_term_voting_for_self(&mut self, term: u64, me: u64) {
        let raft = &mut self.raft;
        assert!(
            term > raft.term,
            "moving to term {term} from term {}: the vote of the current term stands",
            raft.term
        );
        raft.become_follower(term, raft::INVALID_ID);
        raft.vote = me;
    }

    fn forget_replica(&mut self, id: u64, probe_from: u64) -> Option<u64> {
        let pr = self.raft.mut_prs().get_mut(id)?;
        let matched = pr.matched;
        pr.matched = 0;
        pr.become_probe();
        pr.next_idx = probe_from;
        Some(matched)
    }
}
