//! Per-core request metrics: counts by operation and result, latency histograms
//! (HdrHistogram), bytes in and out. Plain cells on the core that owns them, no atomics on
//! the request path; a scrape asks every core for a [`Snapshot`] and merges them.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use corekv_schema::codec::{CoreStats, Op, Reply};
use hdrhistogram::Histogram;

/// Operation kinds metrics are kept for, by index.
pub const OPS: [&str; 7] = ["get", "set", "delete", "cas", "batch", "rmw", "other"];
pub const OP_RMW: usize = 5;
pub const OP_OTHER: usize = 6;
/// Results, by index: done; an expected miss (not found, condition failed); an error.
pub const RESULTS: [&str; 3] = ["ok", "miss", "error"];

pub use crate::storage::histogram;

pub fn op_index(op: &Op) -> usize {
    match op {
        Op::Get { .. } => 0,
        Op::Set(_) => 1,
        Op::Delete { .. } => 2,
        Op::Cas { .. } => 3,
        Op::Batch(_) => 4,
        _ => OP_OTHER,
    }
}

pub fn result_index(reply: &Reply) -> usize {
    match reply {
        Reply::Error(e) if e.code.is_miss() => 1,
        Reply::Error(_) => 2,
        _ => 0,
    }
}

#[derive(Debug)]
pub struct Metrics {
    latency: RefCell<Vec<Histogram<u64>>>,
    results: [[Cell<u64>; 3]; OPS.len()],
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            latency: RefCell::new(OPS.iter().map(|_| histogram()).collect()),
            results: Default::default(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }
}

impl Metrics {
    /// One request of kind `op` that started at `started` ended with result `result`.
    pub fn record(&self, op: usize, started: Instant, result: usize) {
        let us = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = self.latency.borrow_mut()[op].record(us);
        let c = &self.results[op][result];
        c.set(c.get() + 1);
    }

    pub fn add_in(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }

    pub fn add_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }

    pub fn snapshot(
        &self,
        stats: CoreStats,
        fsync_us: Histogram<u64>,
        batch: Histogram<u64>,
    ) -> Snapshot {
        Snapshot {
            latency_us: self.latency.borrow().clone(),
            results: self.results.iter().map(|r| [r[0].get(), r[1].get(), r[2].get()]).collect(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            fsync_us,
            batch_records: batch,
            cores: vec![stats],
        }
    }
}

/// Metrics of one core, or of several merged.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub latency_us: Vec<Histogram<u64>>,
    /// Per operation: [ok, miss, error].
    pub results: Vec<[u64; 3]>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Log: fdatasync duration, and records per flush.
    pub fsync_us: Histogram<u64>,
    pub batch_records: Histogram<u64>,
    pub cores: Vec<CoreStats>,
}

impl Snapshot {
    pub fn merge(&mut self, other: Snapshot) {
        for (a, b) in self.latency_us.iter_mut().zip(&other.latency_us) {
            let _ = a.add(b);
        }
        for (a, b) in self.results.iter_mut().zip(&other.results) {
            for i in 0..3 {
                a[i] += b[i];
            }
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        let _ = self.fsync_us.add(&other.fsync_us);
        let _ = self.batch_records.add(&other.batch_records);
        self.cores.extend(other.cores);
        self.cores.sort_by_key(|c| c.core);
    }

    /// A counter summed over cores.
    pub fn sum(&self, f: impl Fn(&CoreStats) -> u64) -> u64 {
        self.cores.iter().map(f).sum()
    }
}

/// This process's resident memory, from /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let (a, b) = (Metrics::default(), Metrics::default());
        let t = Instant::now();
        a.record(0, t, 0);
        a.record(0, t, 1);
        b.record(0, t, 2);
        b.record(1, t, 0);
        a.add_in(10);
        b.add_out(7);
        let mut s =
            a.snapshot(CoreStats { core: 0, ..Default::default() }, histogram(), histogram());
        s.merge(b.snapshot(CoreStats { core: 1, ..Default::default() }, histogram(), histogram()));
        assert_eq!(s.results[0], [1, 1, 1]);
        assert_eq!(s.results[1], [1, 0, 0]);
        assert_eq!(s.latency_us[0].len(), 3);
        assert_eq!((s.bytes_in, s.bytes_out, s.cores.len()), (10, 7, 2));
    }
}
