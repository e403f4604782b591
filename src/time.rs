//! The node's one clock for data: wall-clock Unix milliseconds.
//!
//! Expiry is absolute (Unix ms) so it survives restarts and means the same on every node; the
//! engine never reads the clock itself, its callers pass this time in.

/// Wall-clock Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
