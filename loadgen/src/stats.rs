//! Latency and outcome accounting: one HdrHistogram per operation, and the summary built from them.
//!
//! A run keeps one [`Stats`] per phase (warmup, measured); connections buffer their samples and
//! record them here a few times a second. Histograms count microseconds at 3 significant digits
//! and grow on demand, so a latency of minutes (an open-loop backlog) keeps its true value.
//!
//! Vocabulary: a *hit* is a reply that did what was asked; a *miss* is a `NotFound` reply to a GET
//! or DEL (the key was absent, which a load test with deletes expects); an *error* is any other
//! error reply, a request lost with its connection, or one still unanswered after the grace period.
//! `count` is hits plus misses: every operation the server completed. Errors are counted apart.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Config;
use crate::workload::OpKind;

/// Significant digits kept by every histogram.
const HISTOGRAM_SIGFIG: u8 = 3;

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Error(String),
}

/// Outcomes of one operation kind.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Latency of hits and misses, in microseconds.
    pub latency_us: Histogram<u64>,
    pub misses: u64,
    pub errors: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency_us: Histogram::new(HISTOGRAM_SIGFIG).expect("3 significant digits is valid"),
            misses: 0,
            errors: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.latency_us.len()
    }
}

/// Outcomes of every operation kind, plus the first error message seen (for the final report).
#[derive(Clone, Debug)]
pub struct Stats {
    ops: [OpStats; 3],
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats { ops: [OpStats::new(), OpStats::new(), OpStats::new()], first_error: None }
    }
}

impl Stats {
    pub fn op(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind as usize]
    }

    /// Records a reply that arrived `latency` after its start time.
    pub fn record(&mut self, kind: OpKind, latency: Duration, outcome: Outcome) {
        let op = &mut self.ops[kind as usize];
        match outcome {
            Outcome::Hit => {}
            Outcome::Miss => op.misses += 1,
            Outcome::Error(message) => {
                op.errors += 1;
                self.first_error.get_or_insert(message);
                return;
            }
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // `record` grows the histogram; only a value beyond any histogram's range is clamped.
        if op.latency_us.record(us).is_err() {
            op.latency_us.saturating_record(us);
        }
    }

    /// Hits plus misses over all operations.
    pub fn count(&self) -> u64 {
        self.ops.iter().map(OpStats::count).sum()
    }

    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }

    /// Completed operations plus errors: every request accounted for.
    pub fn outcomes(&self) -> u64 {
        self.count() + self.errors()
    }

    /// The `q` quantile over all operations together, in microseconds.
    pub fn quantile_all_us(&self, q: f64) -> u64 {
        self.all().value_at_quantile(q)
    }

    /// The `q` quantile over all operations recorded since `earlier` (a copy of these
    /// statistics taken before); `None` when none were.
    pub fn quantile_since_us(&self, earlier: &Stats, q: f64) -> Option<u64> {
        let mut all = self.all();
        let before = earlier.all();
        if all.len() <= before.len() || all.subtract(&before).is_err() {
            return None;
        }
        Some(all.value_at_quantile(q))
    }

    fn all(&self) -> Histogram<u64> {
        let mut all = self.ops[0].latency_us.clone();
        for op in &self.ops[1..] {
            all.add(&op.latency_us).expect("auto-resizing histograms accept any addend");
        }
        all
    }

    pub fn summary(&self, config: &Config, duration: Duration) -> Summary {
        let secs = duration.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let op = |kind: OpKind| {
            let o = self.op(kind);
            let h = &o.latency_us;
            let q = |q: f64| {
                if h.is_empty() { 0 } else { h.value_at_quantile(q) }
            };
            OpSummary {
                count: o.count(),
                ops_per_sec: per_sec(o.count()),
                p50_us: q(0.5),
                p90_us: q(0.9),
                p99_us: q(0.99),
                p999_us: q(0.999),
                max_us: if h.is_empty() { 0 } else { h.max() },
                misses: o.misses,
                errors: o.errors,
            }
        };
        Summary {
            count: self.count(),
            ops_per_sec: per_sec(self.count()),
            errors: self.errors(),
            duration_secs: secs,
            first_error: self.first_error.clone(),
            ops: OpsSummary { get: op(OpKind::Get), set: op(OpKind::Set), del: op(OpKind::Del) },
            config: config.clone(),
        }
    }
}

/// One operation's line of the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpSummary {
    pub count: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub misses: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpsSummary {
    pub get: OpSummary,
    pub set: OpSummary,
    pub del: OpSummary,
}

impl OpsSummary {
    pub fn get(&self, kind: OpKind) -> &OpSummary {
        match kind {
            OpKind::Get => &self.get,
            OpKind::Set => &self.set,
            OpKind::Del => &self.del,
        }
    }
}

/// The result of a measured run, as printed and as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Completed operations (hits plus misses) started inside the measured window.
    pub count: u64,
    pub ops_per_sec: f64,
    pub errors: u64,
    /// Length of the measured window (warmup excluded).
    pub duration_secs: f64,
    /// The first error seen, to say what the errors were.
    pub first_error: Option<String>,
    pub ops: OpsSummary,
    pub config: Config,
}

impl Summary {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a summary is plain data")
    }

    /// The human table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<5} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "op",
            "count",
            "ops/s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p99.9_us",
            "max_us",
            "misses",
            "errors"
        );
        for kind in OpKind::ALL {
            let o = self.ops.get(kind);
            let misses = match kind {
                OpKind::Set => "-".to_owned(),
                OpKind::Get | OpKind::Del => o.misses.to_string(),
            };
            let _ = writeln!(
                t,
                "{:<5} {:>12} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
                kind.name(),
                o.count,
                o.ops_per_sec,
                o.p50_us,
                o.p90_us,
                o.p99_us,
                o.p999_us,
                o.max_us,
                misses,
                o.errors
            );
        }
        let _ = writeln!(
            t,
            "{:<5} {:>12} {:>12.1} {:>72}",
            "total", self.count, self.ops_per_sec, self.errors
        );
        let _ = writeln!(
            t,
            "{:.1} ops/s over {:.1} s, {} errors",
            self.ops_per_sec, self.duration_secs, self.errors
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(t, "first error: {e}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn config() -> Config {
        Config::from_cli(&crate::config::Cli::parse_from(["corekv-loadgen"])).unwrap()
    }

    #[test]
    fn misses_are_counted_and_timed_errors_are_not_timed() {
        let mut s = Stats::default();
        s.record(OpKind::Get, Duration::from_micros(100), Outcome::Hit);
        s.record(OpKind::Get, Duration::from_micros(300), Outcome::Miss);
        s.record(OpKind::Del, Duration::from_micros(5), Outcome::Miss);
        s.record(OpKind::Set, Duration::from_micros(7), Outcome::Error("overloaded: x".into()));
        s.record(OpKind::Set, Duration::ZERO, Outcome::Error("connection lost".into()));
        assert_eq!(s.count(), 3);
        assert_eq!(s.errors(), 2);
        assert_eq!(s.outcomes(), 5);
        assert_eq!(s.op(OpKind::Get).misses, 1);
        assert_eq!(s.op(OpKind::Set).count(), 0);
        assert_eq!(s.first_error.as_deref(), Some("overloaded: x"));
    }

    #[test]
    fn summary_has_the_documented_json_shape() {
        let mut s = Stats::default();
        for us in 1..=1000 {
            s.record(OpKind::Get, Duration::from_micros(us), Outcome::Hit);
        }
        s.record(OpKind::Del, Duration::from_micros(50), Outcome::Miss);
        let summary = s.summary(&config(), Duration::from_secs(2));
        let get = &summary.ops.get;
        assert_eq!(get.count, 1000);
        assert_eq!(get.ops_per_sec, 500.0);
        assert_eq!((get.p50_us, get.p99_us, get.max_us), (500, 990, 1000));
        assert!((999..=1000).contains(&get.p999_us));
        assert_eq!(summary.count, 1001);

        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        for field in ["ops_per_sec", "errors", "duration_secs", "count", "config", "ops"] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["duration_secs"], 2.0);
        for op in ["get", "set", "del"] {
            for field in [
                "count",
                "ops_per_sec",
                "p50_us",
                "p90_us",
                "p99_us",
                "p999_us",
                "max_us",
                "misses",
            ] {
                assert!(json["ops"][op][field].is_number(), "ops.{op}.{field}");
            }
        }
        assert_eq!(json["ops"]["del"]["misses"], 1);
        assert_eq!(json["ops"]["set"]["count"], 0);
        assert_eq!(json["config"]["mix"]["get"], 80);
        assert_eq!(json["config"]["duration_secs"], 10.0);
        assert_eq!(json["config"]["addr"], "127.0.0.1:7379");
        assert!(json["config"]["rate_ops_per_sec"].is_null());

        let table = summary.table();
        assert!(table.lines().any(|l| l.starts_with("get") && l.contains("1000")));
        assert!(table.contains("p99.9_us"));
    }

    #[test]
    fn minute_long_latencies_are_kept() {
        let mut s = Stats::default();
        s.record(OpKind::Set, Duration::from_secs(90), Outcome::Hit);
        let max = s.summary(&config(), Duration::from_secs(1)).ops.set.max_us;
        assert!(max.abs_diff(90_000_000) < 90_000_000 / 500, "{max}");
    }
}
