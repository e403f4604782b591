//! The Redis protocol (RESP2): requests in, replies out, and what each command means here.
//!
//! corekv speaks the Redis string commands on `--resp-listen`, accepted on every core like the
//! native port, so redis-cli, redis-benchmark and every Redis client work. [`parse`] (in the
//! schema crate) turns
//! bytes into commands; [`command`] turns a command into a plan over the native operations
//! (`Get`, `Set` with conditions and TTLs, `Delete`, `Batch`, `Stats`) and renders their
//! replies the way Redis would; [`rmw`] does the read-modify-write commands (`INCR`,
//! `APPEND`, `EXPIRE`, ...) as a read followed by a write conditioned on the version read,
//! retried if another write came in between, so they are atomic without new engine
//! operations. The connection loop is `net::resp`.

pub mod command;
pub mod glob;
pub mod rmw;

/// Request parsing lives with the other wire formats, in the schema crate (and is fuzzed
/// there: `fuzz/fuzz_targets/resp.rs`).
pub use corekv_schema::resp as parse;

/// RESP2 reply encoding, appended to an output buffer.
pub mod out {
    use std::io::Write as _;

    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// An error line; `message` starts with its code (`ERR ...`, `WRONGTYPE ...`). Line
    /// breaks in it would end the reply early, so they become spaces.
    pub fn error(out: &mut Vec<u8>, message: &str) {
        out.push(b'-');
        out.extend(message.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }

    // Numbers are formatted straight into the buffer (writing to a Vec cannot fail).
    pub fn int(out: &mut Vec<u8>, n: i64) {
        let _ = write!(out, ":{n}\r\n");
    }

    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        let _ = write!(out, "${}\r\n", b.len());
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    pub fn array(out: &mut Vec<u8>, len: usize) {
        let _ = write!(out, "*{len}\r\n");
    }

    pub fn ok(out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK\r\n");
    }

    /// Re-encodes one RESP2 `reply` for a RESP3 client: the string commands answer the same
    /// in both, except that RESP3 has one null (`_`) where RESP2 has `$-1` and `*-1`.
    /// Returns the bytes of `reply` it used (one whole reply).
    pub fn to_resp3(reply: &[u8], o: &mut Vec<u8>) -> usize {
        debug_assert!(reply.len() >= 3, "a reply is at least a type byte and CRLF");
        if reply.len() < 3 {
            o.extend_from_slice(reply);
            return reply.len();
        }
        let line_end = reply.windows(2).position(|w| w == b"\r\n").map_or(reply.len(), |p| p + 2);
        let n = || -> i64 {
            std::str::from_utf8(&reply[1..line_end.saturating_sub(2)])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        match reply.first() {
            Some(b'$' | b'*') if n() < 0 => {
                o.extend_from_slice(b"_\r\n");
                line_end
            }
            Some(b'$') => {
                let used = (line_end + n() as usize + 2).min(reply.len());
                o.extend_from_slice(&reply[..used]);
                used
            }
            // Arrays, and maps (HELLO's reply in RESP3 is already one): n or 2n elements.
            Some(kind @ (b'*' | b'%')) => {
                o.extend_from_slice(&reply[..line_end]);
                let mut at = line_end;
                let elements = if *kind == b'%' { 2 * n() } else { n() };
                for _ in 0..elements {
                    at += to_resp3(&reply[at..], o);
                }
                at
            }
            _ => {
                o.extend_from_slice(&reply[..line_end]);
                line_end
            }
        }
    }

    /// A native reply a command did not expect, as a Redis error: the node's own error text
    /// (a failed log, a size limit), or which reply kind came instead.
    pub fn native_error(out: &mut Vec<u8>, reply: &corekv_schema::codec::Reply) {
        match reply {
            corekv_schema::codec::Reply::Error(e) => error(out, &format!("ERR {}", e.message)),
            other => error(out, &format!("ERR unexpected reply {}", other.name())),
        }
    }

    /// Encodes with one of the functions above into a fresh buffer.
    pub fn with(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }
}
