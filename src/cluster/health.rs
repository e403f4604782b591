//! Heartbeats between nodes, each carrying its sender's figures, and the board of what this
//! node last heard from every peer: the cluster-wide part of `/api/nodes/status`.
//!
//! Core 0 of every node sends a [`NodeReport`] to every peer every [`REPORT_INTERVAL`]. A peer
//! heard from within [`DOWN_AFTER`] is up; one not heard from since is down, whatever its
//! link's TCP state says (a paused process keeps its sockets open).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use corekv_schema::codec::CoreStats;
use corekv_schema::peer::NodeReport;

use super::replica::GroupStatus;

pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Silence after which a peer counts as down: four missed heartbeats.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);

/// What this node last heard from each peer. Written by whichever core's link received the
/// report and read by status requests; off the request path (a few writes a second), so a
/// lock costs nothing here.
#[derive(Default, Debug)]
pub struct Board {
    heard: Mutex<HashMap<u64, (Instant, NodeReport)>>,
}

impl Board {
    pub fn record(&self, report: NodeReport) {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.insert(report.from_node, (Instant::now(), report));
    }

    /// The last report from `peer` and how long ago it came.
    pub fn last(&self, peer: u64) -> Option<(Duration, NodeReport)> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.get(&peer).map(|(at, r)| (at.elapsed(), r.clone()))
    }
}

/// Free and total bytes of the file system holding `dir` (0, 0 when it cannot be read).
pub fn disk_space(dir: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => {
            let block = v.fragment_size();
            (v.blocks_available() * block, v.blocks() * block)
        }
        Err(_) => (0, 0),
    }
}

/// This node's own figures, as its peers are told them: `groups`, the Raft groups it holds
/// (data partitions are those below `partitions`); `stats`, every core's.
pub fn report(
    node: u64,
    partitions: u32,
    groups: &[GroupStatus],
    data_dir: &Path,
    started: Instant,
    stats: &[CoreStats],
) -> NodeReport {
    let data: Vec<_> = groups.iter().filter(|g| g.partition < partitions).collect();
    let (free, total) = disk_space(data_dir);
    let errors: Vec<String> = stats
        .iter()
        .filter(|c| !c.log_error.is_empty())
        .map(|c| format!("core {}: {}", c.core, c.log_error))
        .collect();
    NodeReport {
        from_node: node,
        uptime_ms: started.elapsed().as_millis() as u64,
        keys: stats.iter().map(|c| c.keys).sum(),
        log_bytes: stats.iter().map(|c| c.log_disk_bytes).sum(),
        disk_free_bytes: free,
        disk_total_bytes: total,
        replicas_held: data.len() as u32,
        partitions_led: data.iter().filter(|g| g.leader == node).map(|g| g.partition).collect(),
        log_error: errors.join("; "),
    }
}

/// How a node's health reads from a report heard `ago`: down after [`DOWN_AFTER`] of
/// silence, degraded while a core's log has failed.
pub fn health(report: &NodeReport, ago: Duration) -> &'static str {
    if ago >= DOWN_AFTER {
        "down"
    } else if report.log_error.is_empty() {
        "up"
    } else {
        "degraded"
    }
}
