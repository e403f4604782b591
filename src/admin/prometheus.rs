//! Prometheus text exposition (version 0.0.4) of a merged metrics snapshot.

use std::fmt::Write as _;

use crate::shard::metrics::{OPS, RESULTS, Snapshot};

/// Quantiles exported for each latency summary.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// One unlabelled sample per family, each with its header.
fn families<V: std::fmt::Display + Copy>(out: &mut String, kind: &str, items: &[(&str, &str, V)]) {
    for &(name, help, v) in items {
        header(out, name, kind, help);
        sample(out, name, "", v);
    }
}

/// A histogram of microseconds as a Prometheus summary in seconds.
fn summary_seconds(out: &mut String, name: &str, labels: &str, h: &hdrhistogram::Histogram<u64>) {
    summary(out, name, labels, h, 1e6);
}

/// A histogram as a Prometheus summary, each value divided by `scale`. An empty histogram
/// reads 0 at every quantile (hdrhistogram's own answer).
fn summary(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &hdrhistogram::Histogram<u64>,
    scale: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for q in QUANTILES {
        let v = h.value_at_quantile(q) as f64 / scale;
        sample(out, name, &format!("{labels}{sep}quantile=\"{q}\""), v);
    }
    sample(out, &format!("{name}_sum"), labels, h.mean() * h.len() as f64 / scale);
    sample(out, &format!("{name}_count"), labels, h.len());
}

/// Cluster mode's Raft families, appended to the node's exposition.
pub fn render_raft(out: &mut String, c: &crate::cluster::CounterValues, led: usize, held: usize) {
    let counters: [(&str, &str, u64); 10] = [
        (
            "corekv_raft_proposals_total",
            "Writes proposed to a Raft group this node leads.",
            c.proposals,
        ),
        (
            "corekv_raft_proposals_failed_total",
            "Proposals not committed in time (outcome unknown to the client).",
            c.proposals_failed,
        ),
        (
            "corekv_raft_elections_won_total",
            "Elections this node won (any partition).",
            c.elections_won,
        ),
        (
            "corekv_raft_leader_changes_total",
            "Leader changes seen by this node's replicas.",
            c.leader_changes,
        ),
        (
            "corekv_raft_snapshots_sent_total",
            "Partition snapshots sent to followers.",
            c.snapshots_sent,
        ),
        (
            "corekv_raft_snapshots_installed_total",
            "Partition snapshots installed from a leader.",
            c.snapshots_installed,
        ),
        ("corekv_raft_read_index_total", "Strong reads confirmed by ReadIndex.", c.read_indexes),
        (
            "corekv_raft_link_frames_dropped_total",
            "Raft frames dropped because a node link was down or full.",
            c.link_frames_dropped,
        ),
        (
            "corekv_raft_messages_refused_total",
            "Peers' Raft messages refused (malformed or hostile), each logged.",
            c.messages_refused,
        ),
        (
            "corekv_raft_inbox_dropped_total",
            "Peers' Raft messages dropped because a core's inbox was full (Raft resends).",
            c.inbox_dropped,
        ),
    ];
    families(out, "counter", &counters);
    let name = "corekv_raft_commit_seconds";
    header(out, name, "summary", "Time from proposal to apply on the leader.");
    sample(out, &format!("{name}_sum"), "", c.commit_us_sum as f64 / 1e6);
    sample(out, &format!("{name}_count"), "", c.commits);
    let gauges: [(&str, &str, usize); 2] = [
        ("corekv_raft_partitions_led", "Partitions this node leads.", led),
        ("corekv_raft_replicas", "Partition replicas this node holds.", held),
    ];
    families(out, "gauge", &gauges);
}

/// The whole exposition. `rss` and the disk figures come from the caller (process-wide).
pub fn render(s: &Snapshot, uptime_s: f64, rss: u64, disk_free: u64) -> String {
    let mut out = String::new();
    let name = "corekv_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests by operation and result (miss: not found or condition failed).",
    );
    for (i, op) in OPS.iter().enumerate() {
        for (j, result) in RESULTS.iter().enumerate() {
            sample(&mut out, name, &format!("op=\"{op}\",result=\"{result}\""), s.results[i][j]);
        }
    }
    let name = "corekv_request_duration_seconds";
    header(&mut out, name, "summary", "Request latency by operation, measured by the node.");
    for (i, op) in OPS.iter().enumerate() {
        summary_seconds(&mut out, name, &format!("op=\"{op}\""), &s.latency_us[i]);
    }
    let counters: [(&str, &str, u64); 8] = [
        ("corekv_received_bytes_total", "Bytes read from client connections.", s.bytes_in),
        ("corekv_sent_bytes_total", "Bytes written to client connections.", s.bytes_out),
        (
            "corekv_forwarded_requests_total",
            "Requests sent to the core that owns the key.",
            s.sum(|c| c.forwarded_out),
        ),
        (
            "corekv_backpressure_events_total",
            "Times a connection waited on a full mesh or log.",
            s.sum(|c| c.backpressure_events),
        ),
        (
            "corekv_expired_keys_total",
            "Keys removed because their TTL passed.",
            s.sum(|c| c.expired),
        ),
        (
            "corekv_evicted_values_total",
            "Values dropped from the cache (still on disk).",
            s.sum(|c| c.evicted),
        ),
        (
            "corekv_disk_reads_total",
            "Values read back from the log with direct I/O.",
            s.sum(|c| c.fetches),
        ),
        (
            "corekv_compacted_bytes_total",
            "Log bytes moved by compaction.",
            s.sum(|c| c.compacted_bytes),
        ),
    ];
    families(&mut out, "counter", &counters);
    let name = "corekv_log_fsync_duration_seconds";
    header(&mut out, name, "summary", "fdatasync duration of the write-ahead log.");
    summary_seconds(&mut out, name, "", &s.fsync_us);
    let name = "corekv_log_sync_records";
    header(&mut out, name, "summary", "Records made durable by one fdatasync (group commit size).");
    summary(&mut out, name, "", &s.batch_records, 1.0);
    let gauges: [(&str, &str, u64); 8] = [
        ("corekv_keys", "Keys stored.", s.sum(|c| c.keys)),
        ("corekv_connections", "Open client connections.", s.sum(|c| c.connections)),
        ("corekv_cached_value_bytes", "Bytes of values held in memory.", s.sum(|c| c.cached_bytes)),
        (
            "corekv_log_disk_bytes",
            "Record bytes in the log's segments.",
            s.sum(|c| c.log_disk_bytes),
        ),
        (
            "corekv_log_live_bytes",
            "Log bytes that are current values.",
            s.sum(|c| c.log_live_bytes),
        ),
        ("corekv_resident_memory_bytes", "Resident memory of the node process.", rss),
        ("corekv_disk_free_bytes", "Space left on the data directory's filesystem.", disk_free),
        (
            "corekv_log_failed_cores",
            "Cores whose log failed (writes refused until restart).",
            s.cores.iter().filter(|c| !c.log_error.is_empty()).count() as u64,
        ),
    ];
    families(&mut out, "gauge", &gauges);
    let name = "corekv_uptime_seconds";
    header(&mut out, name, "gauge", "Seconds since the node started.");
    sample(&mut out, name, "", uptime_s);
    out
}
