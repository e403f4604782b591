//! Read-modify-write commands, as pure steps: given the key's current value and TTL, what to
//! write (or delete) and what to answer. The connection runs a step between a `Get` and a
//! write conditioned on the version that `Get` saw (`IfVersion`; 0 = absent), and repeats
//! from the `Get` if another write came in between, so each command applies atomically.

use bytes::Bytes;

use super::out;

/// How a write changes the key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Keep,
    /// Expire at this Unix time in ms.
    At(i64),
    Clear,
}

impl Ttl {
    /// As a native write takes it: (ttl_ms, keep_ttl). A time already past still writes
    /// (Redis does, then expires it): 1 ms is the shortest TTL there is.
    pub fn native(self, now_ms: u64) -> (u64, bool) {
        match self {
            Ttl::Keep => (0, true),
            Ttl::Clear => (0, false),
            Ttl::At(at) => ((at - now_ms as i64).max(1) as u64, false),
        }
    }
}

/// When `EXPIRE` and friends apply: their NX, XX, GT, LT options, all of which must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct When {
    /// NX: only a key without a TTL.
    pub no_ttl: bool,
    /// XX: only a key with a TTL.
    pub has_ttl: bool,
    /// GT: only to a later time (no TTL counts as forever, so never).
    pub later: bool,
    /// LT: only to an earlier time (no TTL counts as forever, so always).
    pub sooner: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Rmw {
    IncrBy(i64),
    IncrByFloat(f64),
    Append(Bytes),
    SetRange(usize, Bytes),
    Expire { at_ms: i64, when: When },
    Persist,
    GetEx(Ttl),
}

/// What one attempt decided.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Answer without writing.
    Done(Vec<u8>),
    Write {
        value: Bytes,
        ttl: Ttl,
        reply: Vec<u8>,
    },
    Delete(Vec<u8>),
}

fn error(message: &str) -> Step {
    Step::Done(out::with(|o| out::error(o, message)))
}

pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub const NOT_A_FLOAT: &str = "ERR value is not a valid float";
pub const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// An integer as Redis reads one: optional `-`, digits, no leading zeros, no spaces or `+`.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && b.len() == 1));
    if !canonical {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A float as `INCRBYFLOAT` reads one: no spaces, not NaN.
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Formats a float result the way people read it: no exponent, no trailing zeros, and below
/// 10^15 at most 15 significant digits. Redis computes in long double and prints 17 digits,
/// so `0.1 + 0.2` is `0.3` there; in f64 it is 0.30000000000000004, and rounding to 15 digits
/// gives the same `0.3`. Larger values print exactly as the f64 holds them (Redis's long
/// double keeps more digits there: a known difference).
pub fn format_f64(v: f64) -> String {
    if v.abs() >= 1e15 && v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let shown = if v.abs() < 1e15 { format!("{v:.14e}").parse().unwrap_or(v) } else { v };
    if shown == 0.0 { "0".into() } else { shown.to_string() }
}

/// One attempt of `rmw` on the current state (`None`: the key is absent). `value_max`
/// bounds a value the command would build.
pub fn step(
    rmw: &Rmw,
    current: Option<(&Bytes, Option<u64>)>,
    now_ms: u64,
    value_max: usize,
) -> Step {
    let now = now_ms as i64;
    match rmw {
        Rmw::IncrBy(by) => {
            let old = match current {
                None => 0,
                Some((v, _)) => match parse_i64(v) {
                    Some(n) => n,
                    None => return error(NOT_AN_INTEGER),
                },
            };
            let Some(new) = old.checked_add(*by) else {
                return error("ERR increment or decrement would overflow");
            };
            let reply = out::with(|o| out::int(o, new));
            Step::Write { value: Bytes::from(new.to_string()), ttl: Ttl::Keep, reply }
        }
        Rmw::IncrByFloat(by) => {
            let old = match current {
                None => 0.0,
                Some((v, _)) => match parse_f64(v) {
                    Some(n) => n,
                    None => return error(NOT_A_FLOAT),
                },
            };
            let new = old + by;
            if !new.is_finite() {
                return error("ERR increment would produce NaN or Infinity");
            }
            let text = format_f64(new);
            let reply = out::with(|o| out::bulk(o, text.as_bytes()));
            Step::Write { value: Bytes::from(text), ttl: Ttl::Keep, reply }
        }
        Rmw::Append(tail) => {
            let old = current.map_or(&[][..], |(v, _)| &v[..]);
            if old.len() + tail.len() > value_max {
                return error(TOO_BIG);
            }
            let mut new = Vec::with_capacity(old.len() + tail.len());
            new.extend_from_slice(old);
            new.extend_from_slice(tail);
            let reply = out::with(|o| out::int(o, new.len() as i64));
            Step::Write { value: Bytes::from(new), ttl: Ttl::Keep, reply }
        }
        Rmw::SetRange(offset, part) => {
            let old = current.map_or(&[][..], |(v, _)| &v[..]);
            if part.is_empty() {
                return Step::Done(out::with(|o| out::int(o, old.len() as i64)));
            }
            let end = offset + part.len();
            if end > value_max {
                return error(TOO_BIG);
            }
            let mut new = old.to_vec();
            if new.len() < end {
                new.resize(end, 0);
            }
            new[*offset..end].copy_from_slice(part);
            let reply = out::with(|o| out::int(o, new.len() as i64));
            Step::Write { value: Bytes::from(new), ttl: Ttl::Keep, reply }
        }
        Rmw::Expire { at_ms, when } => {
            let Some((value, ttl)) = current else {
                return Step::Done(out::with(|o| out::int(o, 0)));
            };
            let current_at = ttl.map(|t| now.saturating_add(t as i64));
            let applies = (!when.no_ttl || current_at.is_none())
                && (!when.has_ttl || current_at.is_some())
                && (!when.later || current_at.is_some_and(|c| *at_ms > c))
                && (!when.sooner || current_at.is_none_or(|c| *at_ms < c));
            let one = out::with(|o| out::int(o, 1));
            if !applies {
                Step::Done(out::with(|o| out::int(o, 0)))
            } else if *at_ms <= now {
                Step::Delete(one)
            } else {
                Step::Write { value: value.clone(), ttl: Ttl::At(*at_ms), reply: one }
            }
        }
        Rmw::Persist => match current {
            Some((value, Some(_))) => Step::Write {
                value: value.clone(),
                ttl: Ttl::Clear,
                reply: out::with(|o| out::int(o, 1)),
            },
            _ => Step::Done(out::with(|o| out::int(o, 0))),
        },
        Rmw::GetEx(change) => {
            let Some((value, ttl)) = current else { return Step::Done(out::with(out::nil)) };
            let reply = out::with(|o| out::bulk(o, value));
            match change {
                Ttl::At(at) if *at <= now => Step::Delete(reply),
                Ttl::Keep => Step::Done(reply),
                Ttl::Clear if ttl.is_none() => Step::Done(reply),
                ttl => Step::Write { value: value.clone(), ttl: *ttl, reply },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn text(v: &[u8]) -> String {
        String::from_utf8_lossy(v).into_owned()
    }

    fn write(step: Step) -> (String, Ttl, String) {
        match step {
            Step::Write { value, ttl, reply } => (text(&value), ttl, text(&reply)),
            other => panic!("{other:?}"),
        }
    }

    fn done(step: Step) -> String {
        match step {
            Step::Done(reply) => text(&reply),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn integers_as_redis_reads_them() {
        for ok in ["0", "-1", "42", "9223372036854775807", "-9223372036854775808"] {
            assert!(parse_i64(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in ["", "-", "+1", " 1", "1 ", "01", "-0", "1.0", "9223372036854775808", "x"] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn incr_append_setrange() {
        assert_eq!(
            write(step(&Rmw::IncrBy(5), None, 0, 100)),
            ("5".into(), Ttl::Keep, ":5\r\n".into())
        );
        let v = b("10");
        assert_eq!(write(step(&Rmw::IncrBy(-11), Some((&v, None)), 0, 100)).0, "-1");
        let big = b("9223372036854775807");
        assert!(done(step(&Rmw::IncrBy(1), Some((&big, None)), 0, 100)).contains("overflow"));
        let word = b("abc");
        assert_eq!(
            done(step(&Rmw::IncrBy(1), Some((&word, None)), 0, 100)),
            format!("-{NOT_AN_INTEGER}\r\n")
        );
        let f = b("10.5");
        assert_eq!(write(step(&Rmw::IncrByFloat(0.1), Some((&f, None)), 0, 100)).0, "10.6");
        let f = b("0.1");
        assert_eq!(write(step(&Rmw::IncrByFloat(0.2), Some((&f, None)), 0, 100)).0, "0.3");
        assert_eq!(write(step(&Rmw::IncrByFloat(3.0), None, 0, 100)).0, "3");
        assert_eq!(format_f64(9223372036854775807.0 + 1.5), "9223372036854775808");
        assert_eq!(format_f64(-2.25), "-2.25");
        assert_eq!(write(step(&Rmw::Append(b("lo")), Some((&b("hel"), None)), 0, 100)).2, ":5\r\n");
        assert!(
            done(step(&Rmw::Append(b("lo")), Some((&b("hel"), None)), 0, 4)).contains("maximum")
        );
        let (v, ..) =
            write(step(&Rmw::SetRange(6, b("Redis")), Some((&b("Hello World"), None)), 0, 100));
        assert_eq!(v, "Hello Redis");
        assert_eq!(write(step(&Rmw::SetRange(2, b("x")), None, 0, 100)).0, "\0\0x");
        assert_eq!(done(step(&Rmw::SetRange(2, b("")), None, 0, 100)), ":0\r\n");
    }

    #[test]
    fn expire_conditions_and_past_times() {
        let v = b("v");
        let at = |at_ms, when| Rmw::Expire { at_ms, when };
        let always = When::default();
        let nx = When { no_ttl: true, ..always };
        let xx = When { has_ttl: true, ..always };
        let gt = When { later: true, ..always };
        let lt = When { sooner: true, ..always };
        let xx_lt = When { has_ttl: true, sooner: true, ..always };
        assert_eq!(done(step(&at(5_000, always), None, 1_000, 10)), ":0\r\n");
        assert_eq!(write(step(&at(5_000, always), Some((&v, None)), 1_000, 10)).1, Ttl::At(5_000));
        assert_eq!(
            step(&at(500, always), Some((&v, None)), 1_000, 10),
            Step::Delete(b":1\r\n".to_vec())
        );
        // No TTL: NX applies, XX does not, GT never does, LT always does, XX+LT does not.
        let plain = Some((&v, None));
        assert!(matches!(step(&at(5_000, nx), plain, 1_000, 10), Step::Write { .. }));
        assert_eq!(done(step(&at(5_000, xx), plain, 1_000, 10)), ":0\r\n");
        assert_eq!(done(step(&at(5_000, gt), plain, 1_000, 10)), ":0\r\n");
        assert!(matches!(step(&at(5_000, lt), plain, 1_000, 10), Step::Write { .. }));
        assert_eq!(done(step(&at(5_000, xx_lt), plain, 1_000, 10)), ":0\r\n");
        // TTL of 2 s at t=1 s: expires at 3 s.
        let ttl = Some((&v, Some(2_000)));
        assert_eq!(done(step(&at(5_000, nx), ttl, 1_000, 10)), ":0\r\n");
        assert!(matches!(step(&at(5_000, gt), ttl, 1_000, 10), Step::Write { .. }));
        assert_eq!(done(step(&at(2_000, gt), ttl, 1_000, 10)), ":0\r\n");
        assert!(matches!(step(&at(2_000, lt), ttl, 1_000, 10), Step::Write { .. }));
        assert!(matches!(step(&at(2_000, xx_lt), ttl, 1_000, 10), Step::Write { .. }));
        assert_eq!(done(step(&Rmw::Persist, Some((&v, None)), 0, 10)), ":0\r\n");
        assert_eq!(write(step(&Rmw::Persist, ttl, 0, 10)).1, Ttl::Clear);
        assert_eq!(done(step(&Rmw::GetEx(Ttl::Keep), Some((&v, None)), 0, 10)), "$1\r\nv\r\n");
        assert_eq!(done(step(&Rmw::GetEx(Ttl::At(9)), None, 0, 10)), "$-1\r\n");
    }
}
