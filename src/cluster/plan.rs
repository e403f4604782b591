//! A membership operation as the metadata group records it: the cluster's members with their
//! cluster addresses and state, and the plan of the operation under way (which node, the
//! target map over the new member set, how far it got). Both are values of metadata keys
//! (`meta`), so any metadata leader resumes a plan another started: nothing of it lives in
//! a process.
//!
//! How a plan runs (driven from `shard/membership.rs`): every partition's leader moves its
//! group toward the plan's target replicas (`moves`) and records `done/<partition>` with the
//! plan's id when there; the metadata leader, once every partition is done, makes the target
//! the map, marks the node removed, and ends the plan, in one entry.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use corekv_schema::ring::Ring;
use serde::{Deserialize, Serialize};

/// A member's standing in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Holds replicas, or may be given some.
    Active,
    /// Being removed: its replicas move away; it is given none.
    Leaving,
    /// Removed for good: its id is never used again, and its links are refused.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// Where other nodes reach it (its --cluster-listen).
    pub addr: SocketAddr,
    pub standing: Standing,
}

/// Virtual nodes per node on the placement ring.
pub const RING_VNODES: u32 = 256;

/// The node ids that may hold replicas, lowest first.
pub fn active(members: &[Member]) -> Vec<u64> {
    let mut ids: Vec<u64> =
        members.iter().filter(|m| m.standing == Standing::Active).map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

/// The replicas of every data partition over `nodes` (the ring), then the metadata group's:
/// every one of them.
pub fn target_map(nodes: &[u64], partitions: u32, replication_factor: usize) -> Vec<Vec<u64>> {
    let mut map = Ring::new(nodes, RING_VNODES).map(partitions, replication_factor);
    map.push(nodes.to_vec());
    map
}

/// What a plan does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    Add { node: u64, addr: SocketAddr },
    Remove { node: u64 },
}

impl Operation {
    pub fn describe(&self) -> String {
        match self {
            Operation::Add { node, addr } => format!("add node {node} at {addr}"),
            Operation::Remove { node } => format!("remove node {node}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    Running,
    Failed,
    Done,
}

/// A membership operation and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's id: the metadata index of the map it started from (so a stale
    /// `done/<partition>` from an earlier plan never counts for this one).
    pub id: u64,
    pub operation: Operation,
    pub state: PlanState,
    /// Every partition's target replicas, the metadata group's last.
    pub target: Vec<Vec<u64>>,
    /// Partitions whose replicas change, and how many of them are done.
    pub moving: u32,
    pub moved: u32,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub error: String,
}

impl Plan {
    pub fn encode(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).expect("a plan encodes"))
    }

    pub fn decode(value: &[u8]) -> Result<Plan, String> {
        serde_json::from_slice(value).map_err(|e| format!("unreadable plan: {e}"))
    }
}

/// Members as JSON.
pub fn encode_members(members: &[Member]) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(members).expect("members encode"))
}

pub fn decode_members(value: &[u8]) -> Result<Vec<Member>, String> {
    serde_json::from_slice(value).map_err(|e| format!("unreadable members: {e}"))
}

/// Why `node` cannot be removed from `members` with `replication_factor` copies, if it
/// cannot.
pub fn refuse_removal(members: &[Member], node: u64, replication_factor: usize) -> Option<String> {
    let Some(m) = members.iter().find(|m| m.id == node) else {
        return Some(format!("node {node} is not a member of this cluster"));
    };
    // Leaving, with no plan running (the caller checks): a removal that failed, asked again.
    if m.standing == Standing::Removed {
        return Some(format!("node {node} was removed already"));
    }
    let left = active(members).iter().filter(|&&n| n != node).count();
    if left < replication_factor {
        return Some(format!(
            "removing node {node} would leave {left} nodes for a replication factor of \
             {replication_factor}; add a node first"
        ));
    }
    None
}

/// What this node knows of the metadata group's membership keys, as its metadata core last
/// read them: shared by every core (a few reads and writes a second, off the request path).
#[derive(Default, Debug)]
pub struct View {
    state: Mutex<Seen>,
}

/// One reading of the membership keys.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Seen {
    pub members: Vec<Member>,
    /// The map (data partitions) and its metadata version; empty before it is recorded.
    pub map: Vec<Vec<u64>>,
    pub map_version: u64,
    /// The newest plan, whatever its state, with its metadata version.
    pub plan: Option<Plan>,
    pub plan_version: u64,
    /// Partitions whose leader recorded the running plan done.
    pub done: Vec<u32>,
}

impl View {
    pub fn get(&self) -> Seen {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set(&self, seen: Seen) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = seen;
    }
}

impl Seen {
    /// The plan under way, if one is.
    pub fn running(&self) -> Option<&Plan> {
        self.plan.as_ref().filter(|p| p.state == PlanState::Running)
    }

    /// Whether `node` was removed from the cluster.
    pub fn removed(&self, node: u64) -> bool {
        self.members.iter().any(|m| m.id == node && m.standing == Standing::Removed)
    }
}

/// Why `node` at `addr` cannot be added to `members`, if it cannot.
pub fn refuse_addition(members: &[Member], node: u64, addr: SocketAddr) -> Option<String> {
    if let Some(m) = members.iter().find(|m| m.id == node) {
        return Some(match m.standing {
            Standing::Removed => format!("node id {node} belonged to a removed node; use a new id"),
            _ => format!("node id {node} is a member already"),
        });
    }
    if let Some(m) = members.iter().find(|m| m.addr == addr && m.standing != Standing::Removed) {
        return Some(format!("{addr} is node {}'s cluster address", m.id));
    }
    None
}

/// Who should lead each partition of `map` (its replicas, preferred first) among the `up`
/// nodes: each partition goes to the replica that leads the fewest so far, ties going to the
/// one the ring lists first. Every node computes the same from the same inputs, and a dead
/// node's share spreads over the others rather than falling on one.
pub fn leaders(map: &[Vec<u64>], up: &[u64]) -> Vec<Option<u64>> {
    let mut led: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    map.iter()
        .map(|replicas| {
            let pick = replicas
                .iter()
                .filter(|r| up.contains(r))
                .min_by_key(|r| led.get(r).copied().unwrap_or(0))
                .copied();
            if let Some(n) = pick {
                *led.entry(n).or_default() += 1;
            }
            pick
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> Vec<Member> {
        (1..=n)
            .map(|id| Member {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
                standing: Standing::Active,
            })
            .collect()
    }

    #[test]
    fn removal_is_refused_below_the_replication_factor_and_for_strangers() {
        let four = members(4);
        assert_eq!(refuse_removal(&four, 4, 3), None);
        assert!(refuse_removal(&four, 9, 3).unwrap().contains("not a member"));
        assert!(refuse_removal(&members(3), 3, 3).unwrap().contains("add a node first"));
        let mut gone = four.clone();
        gone[3].standing = Standing::Removed;
        assert!(refuse_removal(&gone, 4, 3).unwrap().contains("removed already"));
        assert_eq!(active(&gone), vec![1, 2, 3]);
        // A removal that failed leaves its node leaving: asked again, it is taken, and the
        // count of what remains does not count it twice.
        let mut leaving = four.clone();
        leaving[3].standing = Standing::Leaving;
        assert_eq!(refuse_removal(&leaving, 4, 3), None);
        assert!(refuse_removal(&leaving, 3, 3).unwrap().contains("add a node first"));
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert!(refuse_addition(&gone, 4, addr(9)).unwrap().contains("use a new id"));
        assert!(refuse_addition(&gone, 2, addr(9)).unwrap().contains("a member already"));
        assert!(refuse_addition(&gone, 5, addr(7001)).unwrap().contains("node 1's"));
        assert_eq!(refuse_addition(&gone, 5, addr(9)), None);
    }

    #[test]
    fn leaders_spread_evenly_and_a_dead_nodes_share_is_spread_too() {
        let spread = |leaders: &[Option<u64>], nodes: &[u64]| {
            let count = |n| leaders.iter().filter(|l| **l == Some(n)).count();
            let counts: Vec<usize> = nodes.iter().map(|&n| count(n)).collect();
            (*counts.iter().min().unwrap(), *counts.iter().max().unwrap())
        };
        for partitions in [8, 16, 64] {
            let map = target_map(&[1, 2, 3], partitions, 3);
            let data = &map[..partitions as usize];
            let (min, max) = spread(&leaders(data, &[1, 2, 3]), &[1, 2, 3]);
            assert!(max - min <= 1, "{partitions} partitions: {min}..{max}");
            // Node 1 down: its partitions go to 2 and 3, evenly.
            let (min, max) = spread(&leaders(data, &[2, 3]), &[2, 3]);
            assert!(max - min <= 1, "{partitions} partitions, one down: {min}..{max}");
            let five = target_map(&[1, 2, 3, 4, 5], partitions, 3);
            let (min, max) =
                spread(&leaders(&five[..partitions as usize], &[1, 2, 3, 4, 5]), &[1, 2, 3, 4, 5]);
            assert!(max - min <= 2, "{partitions} partitions on five: {min}..{max}");
        }
        assert_eq!(leaders(&[vec![1, 2]], &[3]), vec![None], "no replica up, no leader");
    }

    #[test]
    fn plans_and_members_round_trip_and_targets_follow_the_ring() {
        let target = target_map(&[1, 2, 3], 8, 3);
        assert_eq!(target.len(), 9);
        assert!(target[..8].iter().all(|r| r.len() == 3));
        assert_eq!(target[8], vec![1, 2, 3]);
        let plan = Plan {
            id: 42,
            operation: Operation::Remove { node: 4 },
            state: PlanState::Running,
            target,
            moving: 6,
            moved: 1,
            started_ms: 5,
            finished_ms: 0,
            error: String::new(),
        };
        assert_eq!(Plan::decode(&plan.encode()).unwrap(), plan);
        assert_eq!(decode_members(&encode_members(&members(3))).unwrap(), members(3));
        assert!(Plan::decode(b"{").is_err());
    }
}
