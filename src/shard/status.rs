//! What this node tells about itself: the report its peers get as a heartbeat, and
//! `/api/nodes/status` renders for this node, gathered over every core.

use std::rc::Rc;

use corekv_schema::codec::CoreStats;
use corekv_schema::peer::{self, NodeReport, PeerMessage};

use super::Core;
use crate::cluster::health::{self, REPORT_INTERVAL};

impl Core {
    /// This node's own figures (`stats`: every core's, as `Core::node_stats` gives them), as
    /// its peers are told them.
    pub async fn node_report(&self, stats: &[CoreStats]) -> NodeReport {
        let node = self.cluster.as_ref().map_or(0, |r| r.node);
        let (groups, _) = self.cluster_status().await.unwrap_or_default();
        let started = self.node.started;
        health::report(node, self.partitions, &groups, &self.node.data_dir, started, stats)
    }
}

/// Sends this node's report to every peer, forever; runs on core 0.
pub async fn report_loop(core: Rc<Core>) {
    let Some(r) = core.cluster.as_ref() else { return };
    loop {
        glommio::timer::sleep(REPORT_INTERVAL).await;
        let stats = core.node_stats().await.unwrap_or_default();
        let frame = peer::encode(&PeerMessage::Report(core.node_report(&stats).await));
        // Every member, those added since this node started too.
        for (peer, _) in
            super::membership::members_now(&core).into_iter().filter(|(n, _)| *n != r.node)
        {
            // A peer whose link is down misses this one; the next goes out in 500 ms.
            r.links.send_frame(peer, frame.clone());
        }
    }
}
