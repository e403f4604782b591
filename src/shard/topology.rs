//! The metadata group seen from the router: registering this node (its addresses, and the
//! partition map if nobody has yet) and answering `Topology` from this replica's copy.
//! The keys and their encoding are `cluster::meta`'s.

use std::rc::Rc;
use std::time::Duration;

use corekv_schema::codec::{
    Condition, Consistency, ErrorCode, Op, PartitionInfo, Reply, TopologyInfo,
};

use super::{Core, Origin};
use crate::cluster::meta::{
    decode_map, decode_node, encode_map, encode_node, map_key, members_key, node_key, plan_key,
};
use crate::cluster::plan::{Member, Standing, encode_members};

/// How often registration retries while the metadata group has no quorum.
const RETRY: Duration = Duration::from_millis(200);

/// Writes this node's addresses and, if nobody has yet and this node is a founder, the members
/// and the partition map into the metadata group; retries until each is committed. Runs once
/// per start, beside the serving loop.
pub async fn register(core: Rc<Core>) {
    let Some(r) = core.cluster.as_ref() else { return };
    let me = loop {
        // The addresses are published once every core listens.
        if let Some(t) = core.node.topology.get() {
            break t.node(r.node).cloned().unwrap_or_default();
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    };
    let ring_map = encode_map(&r.map());
    let founders: Vec<Member> = r
        .config
        .nodes
        .iter()
        .map(|&(id, addr)| Member { id, addr, standing: Standing::Active })
        .collect();
    let mut writes = vec![
        (Op::set_if(members_key(), encode_members(&founders), Condition::IfAbsent), "members"),
        (Op::set_if(map_key(), ring_map.clone(), Condition::IfAbsent), "partition map"),
        (Op::set(node_key(r.node), encode_node(&me)), "addresses"),
    ];
    if !r.config.bootstrap {
        // A joining node founds nothing: the members and the map are the founders' to write
        // (it would otherwise count itself a member before anyone added it).
        writes.drain(..2);
    }
    for (op, what) in writes {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match core.cluster_op(op.clone(), Consistency::Strong, Origin::Client).await {
                Reply::Written { version } => {
                    tracing::info!(version, "metadata: {what} recorded");
                    break;
                }
                Reply::Error(e) if e.code == ErrorCode::ConditionFailed && what == "members" => {
                    // Recorded by another founder, or changed since: the recorded one holds.
                    break;
                }
                Reply::Error(e) if e.code == ErrorCode::ConditionFailed => {
                    // Another node recorded the map first; it must be the one this node uses,
                    // unless membership operations have changed it since.
                    // Read through the leader: this replica may not have applied it yet.
                    if moved_since(&core).await {
                        break;
                    }
                    match stored_map(&core, Consistency::Strong).await {
                        Some((m, _)) if encode_map(&m) == ring_map => break,
                        Some(_) => {
                            tracing::error!(
                                "metadata: the recorded partition map differs from this \
                                 node's; check that every node lists the same \
                                 --initial-cluster and --replication-factor"
                            );
                            break;
                        }
                        // Not readable yet (an election): ask again.
                        None => {}
                    }
                }
                Reply::Error(e) => {
                    // Quiet while the cluster is forming; loud if it stays without a quorum.
                    if tries.is_multiple_of(50) {
                        tracing::warn!(error = %e, tries, "metadata: {what} not recorded yet");
                    }
                }
                other => tracing::error!(reply = other.name(), "metadata: unexpected answer"),
            }
            glommio::timer::sleep(RETRY).await;
        }
    }
}

/// Whether a membership operation was ever recorded (the map is then no longer the ring's
/// over `--initial-cluster`).
async fn moved_since(core: &Rc<Core>) -> bool {
    let get = Op::get(plan_key());
    matches!(core.cluster_op(get, Consistency::Strong, Origin::Client).await, Reply::Value { .. })
}

/// The recorded map with its version (None: not recorded, or not readable at `consistency`).
async fn stored_map(core: &Rc<Core>, consistency: Consistency) -> Option<(Vec<Vec<u64>>, u64)> {
    match core.cluster_op(Op::get(map_key()), consistency, Origin::Client).await {
        Reply::Value { value, version, .. } => match decode_map(&value) {
            Ok(map) => Some((map, version)),
            Err(e) => {
                tracing::error!(error = %e, "metadata: unreadable partition map");
                None
            }
        },
        _ => None,
    }
}

/// The topology a client routes by: this replica's copy of the metadata (possibly a little
/// stale; the epoch tells a client which of two maps is newer), and the leader of each
/// partition this node holds. Before the map is recorded, the ring's map with epoch 0.
pub async fn topology(core: &Rc<Core>) -> Reply {
    let (Some(base), Some(r)) = (core.node.topology.get(), core.cluster.as_ref()) else {
        return Reply::error(ErrorCode::Unavailable, "node is still starting");
    };
    let partitions = core.partitions as usize;
    let (map, mut epoch) = match stored_map(core, Consistency::Eventual).await {
        Some((map, version)) if map.len() == partitions => (map, version),
        _ => (r.map(), 0),
    };
    let mut nodes = Vec::new();
    for (id, _) in super::membership::members_now(core) {
        let get = Op::get(node_key(id));
        if let Reply::Value { value, version, .. } =
            core.cluster_op(get, Consistency::Eventual, Origin::Client).await
            && let Some(address) = decode_node(id, &value)
        {
            epoch = epoch.max(version);
            nodes.push(address);
        }
    }
    let mut partition_map: Vec<PartitionInfo> =
        map.into_iter().map(|replicas| PartitionInfo { replicas, leader: 0 }).collect();
    if let Ok((groups, _)) = core.cluster_status().await {
        for g in groups {
            if let Some(p) = partition_map.get_mut(g.partition as usize) {
                p.leader = g.leader;
            }
        }
    }
    let t = TopologyInfo { node: r.node, epoch, nodes, partition_map, ..base.clone() };
    Reply::Topology(Box::new(t))
}
