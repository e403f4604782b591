//! Open-loop schedule arithmetic: when each request was *meant* to be sent.
//!
//! With `--rate R` over `C` connections, the run's requests are numbered `k = 0, 1, 2, ...` and
//! request `k` is due `k / R` seconds after the run starts (warmup included). Connection `c` owns
//! every `C`-th request starting at `k = c`, so the connections interleave evenly and together
//! offer exactly `R` requests per second whatever `C` is.
//!
//! A connection measures latency from this intended time, not from when it actually wrote the
//! request. When the server falls behind and the pipeline window is full, due requests wait; the
//! wait is part of their latency. This is the correction for coordinated omission: a stalled
//! server cannot hide its stall by slowing down the client that measures it.
//!
//! Times are exact integer nanoseconds (`k * 1e9 / R`, rounded down) so no drift accumulates.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The intended send times of one connection's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    rate_ops_per_sec: u64,
    connections: u64,
    connection: u64,
}

impl Schedule {
    pub fn new(rate_ops_per_sec: u64, connections: u64, connection: u64) -> Schedule {
        assert!(rate_ops_per_sec > 0, "an open loop needs a positive rate");
        assert!(connection < connections, "connection {connection} of {connections}");
        Schedule { rate_ops_per_sec, connections, connection }
    }

    /// Time from the run start at which this connection's request `seq` is due.
    pub fn intended_offset(&self, seq: u64) -> Duration {
        let k = u128::from(self.connection) + u128::from(seq) * u128::from(self.connections);
        let nanos = k * NANOS_PER_SEC / u128::from(self.rate_ops_per_sec);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_at_the_global_rate() {
        // 1000 ops/s over 4 connections: one request per ms overall, each connection every 4 ms.
        let c1 = Schedule::new(1000, 4, 1);
        let offsets: Vec<_> = (0..3).map(|s| c1.intended_offset(s)).collect();
        assert_eq!(
            offsets,
            [1, 5, 9].map(Duration::from_millis).to_vec(),
            "connection 1 starts 1 ms in, then every 4 ms"
        );
        assert_eq!(Schedule::new(1000, 4, 0).intended_offset(0), Duration::ZERO);
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|c| {
                let s = Schedule::new(1000, 4, c);
                (0..250).map(move |seq| s.intended_offset(seq))
            })
            .collect();
        all.sort();
        let expected: Vec<Duration> = (0..1000).map(Duration::from_millis).collect();
        assert_eq!(all, expected, "every ms of the first second, exactly once");
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        let s = Schedule::new(3, 1, 0);
        assert_eq!(s.intended_offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.intended_offset(2), Duration::from_nanos(666_666_666));
        assert_eq!(s.intended_offset(3), Duration::from_secs(1));
        assert_eq!(s.intended_offset(3_000_000), Duration::from_secs(1_000_000));
        // Per connection 7 ops/s over 3 connections: request 7 overall lands on 1 s exactly.
        assert_eq!(Schedule::new(7, 3, 1).intended_offset(2), Duration::from_secs(1));
    }

    #[test]
    fn count_due_within_a_window_matches_the_rate() {
        // 50_000 ops/s over 50 connections, window [2 s, 12 s): 500_000 requests in total.
        let (rate, conns) = (50_000, 50);
        let (start, end) = (Duration::from_secs(2), Duration::from_secs(12));
        let mut due = 0u64;
        for c in 0..conns {
            let s = Schedule::new(rate, conns, c);
            let mut seq = 0;
            while s.intended_offset(seq) < end {
                if s.intended_offset(seq) >= start {
                    due += 1;
                }
                seq += 1;
            }
        }
        assert_eq!(due, 500_000);
    }

    #[test]
    fn huge_sequence_numbers_saturate_instead_of_wrapping() {
        let s = Schedule::new(1, 1000, 999);
        assert_eq!(s.intended_offset(u64::MAX), Duration::from_nanos(u64::MAX));
    }
}
