//! Moving a partition's replicas to a target set, one safe step at a time, as raft-rs's
//! membership changes allow: what the partition's leader does next, decided from what it has
//! applied ([`MoveView`]) and nothing else, so any leader can take over a move half done and
//! every step can be asked for again.
//!
//! The order, for target voters T over current voters V:
//! 1. each node of T that is not yet a member joins as a learner (one change each);
//! 2. wait until every such learner has caught up with the leader's log;
//! 3. if this leader is not in T, hand leadership to a caught-up voter of T first;
//! 4. one joint change promotes the learners of T and removes the voters not in T; the driver
//!    leaves the joint membership explicitly (`replica::leave_joint`);
//! 5. learners not in T are removed.
//!
//! A removed replica is told so by its leader (a tombstone) and deletes its data.

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

use super::group::{incarnation, node_of, replica_id};
use super::replica::MoveView;
use super::store::members;

/// A learner is caught up when its matched index is this close to the leader's last one and
/// it is not waiting for a snapshot.
pub const CAUGHT_UP_GAP: u64 = 64;

/// What the leader does next for a move; see the module doc.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The membership is the target.
    Done,
    /// Nothing to do until the group moves on: why.
    Wait(&'static str),
    /// Propose this membership change.
    Propose(ConfChangeV2),
    /// Hand leadership to this voter first (this leader leaves the group).
    Transfer(u64),
}

fn single(node: u64, kind: ConfChangeType) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(kind);
    c.node_id = node;
    c
}

fn simple(node: u64, kind: ConfChangeType) -> ConfChangeV2 {
    ConfChangeV2 { changes: vec![single(node, kind)].into(), ..Default::default() }
}

/// The replica id node `n` has in the group, or the one it gets when added: one past any
/// it ever had there, so that a node added back is never taken for the replica it was.
fn replica_of(view: &MoveView, n: u64) -> u64 {
    let mine = |id: &&u64| node_of(**id) == n;
    if let Some(&id) = members(&view.conf).iter().find(mine) {
        return id;
    }
    match view.removed.iter().filter(mine).map(|id| incarnation(*id)).max() {
        Some(last) => replica_id(n, last + 1),
        None => replica_id(n, 0),
    }
}

/// Whether a move has begun and not ended in `view`: a learner is in the group, or a
/// membership change is in flight or being left. A move that is not under way begins with
/// its first learner.
pub fn under_way(view: &MoveView) -> bool {
    view.pending || view.joint || !view.conf.learners.is_empty()
}

/// The next step of moving to voters `target` (node ids), for the leader on node `me` seeing
/// `view`.
pub fn next_step(me: u64, view: &MoveView, target: &[u64]) -> Step {
    if view.pending {
        return Step::Wait("a membership change is in flight");
    }
    if view.joint {
        return Step::Wait("leaving the joint membership");
    }
    let nodes = |ids: &[u64]| ids.iter().map(|id| node_of(*id)).collect::<Vec<u64>>();
    let voters = nodes(&view.conf.voters);
    let learners = nodes(&view.conf.learners);
    if let Some(&new) = target.iter().find(|t| !voters.contains(t) && !learners.contains(t)) {
        return Step::Propose(simple(replica_of(view, new), ConfChangeType::AddLearnerNode));
    }
    let same = voters.len() == target.len() && voters.iter().all(|v| target.contains(v));
    if same {
        return match learners.first() {
            Some(&stray) => {
                Step::Propose(simple(replica_of(view, stray), ConfChangeType::RemoveNode))
            }
            None => Step::Done,
        };
    }
    let caught_up = |n: u64| {
        view.progress.iter().any(|&(id, matched, replicating)| {
            node_of(id) == n && replicating && matched + CAUGHT_UP_GAP >= view.last_index
        })
    };
    let promote: Vec<u64> = target.iter().copied().filter(|t| learners.contains(t)).collect();
    if !promote.iter().all(|&n| caught_up(n)) {
        return Step::Wait("a new replica is catching up");
    }
    if !target.contains(&me) {
        let heir = target.iter().copied().find(|&t| voters.contains(&t) && caught_up(t));
        match heir {
            Some(to) => return Step::Transfer(to),
            // No voter of the target yet: this leader stays through the joint membership and
            // steps down when it is left.
            None if target.iter().any(|t| voters.contains(t)) => {
                return Step::Wait("a voter to hand leadership to is catching up");
            }
            None => {}
        }
    }
    let mut changes: Vec<ConfChangeSingle> =
        promote.iter().map(|&n| single(replica_of(view, n), ConfChangeType::AddNode)).collect();
    changes.extend(
        voters
            .iter()
            .filter(|v| !target.contains(v))
            .map(|&v| single(replica_of(view, v), ConfChangeType::RemoveNode)),
    );
    let mut change = ConfChangeV2 { changes: changes.into(), ..Default::default() };
    change.set_transition(ConfChangeTransition::Explicit);
    Step::Propose(change)
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::ConfState;

    use super::*;

    fn view(voters: &[u64], learners: &[u64], progress: &[(u64, u64, bool)]) -> MoveView {
        MoveView {
            conf: ConfState {
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                ..Default::default()
            },
            pending: false,
            joint: false,
            last_index: 1000,
            progress: progress.to_vec(),
            removed: Vec::new(),
        }
    }

    fn kinds(step: &Step) -> Vec<(ConfChangeType, u64)> {
        let Step::Propose(c) = step else { panic!("not a proposal: {step:?}") };
        c.changes.iter().map(|c| (c.get_change_type(), c.node_id)).collect()
    }

    #[test]
    fn a_move_goes_learner_catch_up_joint_then_done() {
        use ConfChangeType::*;
        let target = [1, 2, 4];
        let step = next_step(1, &view(&[1, 2, 3], &[], &[]), &target);
        assert_eq!(kinds(&step), vec![(AddLearnerNode, 4)]);
        let behind = view(&[1, 2, 3], &[4], &[(4, 10, false)]);
        assert_eq!(next_step(1, &behind, &target), Step::Wait("a new replica is catching up"));
        let ready = view(&[1, 2, 3], &[4], &[(2, 1000, true), (4, 990, true)]);
        let step = next_step(1, &ready, &target);
        assert_eq!(kinds(&step), vec![(AddNode, 4), (RemoveNode, 3)]);
        let Step::Propose(c) = step else { unreachable!() };
        assert_eq!(c.get_transition(), ConfChangeTransition::Explicit);
        let mut joint = view(&[1, 2, 4], &[], &[]);
        joint.joint = true;
        assert!(matches!(next_step(1, &joint, &target), Step::Wait(_)));
        assert_eq!(next_step(1, &view(&[1, 2, 4], &[], &[]), &target), Step::Done);
        let mut pending = view(&[1, 2, 4], &[], &[]);
        pending.pending = true;
        assert!(matches!(next_step(1, &pending, &target), Step::Wait(_)));
    }

    #[test]
    fn an_outgoing_leader_hands_over_first_and_strays_are_removed() {
        let target = [2, 3, 4];
        let ready = view(&[1, 2, 3], &[4], &[(2, 1000, true), (3, 400, true), (4, 1000, true)]);
        assert_eq!(next_step(1, &ready, &target), Step::Transfer(2));
        let stray = view(&[2, 3, 4], &[1], &[]);
        assert_eq!(kinds(&next_step(2, &stray, &target)), vec![(ConfChangeType::RemoveNode, 1)]);
        // Replacing every voter: no heir exists, the leader stays through the joint change.
        let all_new = view(&[1], &[5], &[(5, 1000, true)]);
        assert!(matches!(next_step(1, &all_new, &[5]), Step::Propose(_)));
        // Node 3 added back, after two earlier replicas there: a third replica id.
        let mut back = view(&[1, 2, 4], &[], &[]);
        back.removed = vec![3, replica_id(3, 1)];
        let added = kinds(&next_step(1, &back, &[1, 2, 3]));
        assert_eq!(added, vec![(ConfChangeType::AddLearnerNode, replica_id(3, 2))]);
        // Moves name replicas by node: a replica id's node is what the target lists.
        let again = view(&[1, 2, 4], &[replica_id(3, 2)], &[(replica_id(3, 2), 1000, true)]);
        let step = kinds(&next_step(1, &again, &[1, 2, 3]));
        let want =
            vec![(ConfChangeType::AddNode, replica_id(3, 2)), (ConfChangeType::RemoveNode, 4)];
        assert_eq!(step, want);
    }
}
