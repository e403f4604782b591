//! RESP2 request parsing: arrays of bulk strings (what every client sends) and inline
//! commands (what `telnet` and `redis-benchmark -t ping` send).
//!
//! [`parse`] looks at the start of a buffer and says: a whole command is there (its
//! arguments, and how many bytes it took), more bytes are needed, or the bytes are not RESP.
//! Lengths are checked against [`Limits`] before anything is sized by them, and a command is
//! only parsed once all of it has arrived, so a client announcing a huge bulk string costs
//! nothing until it sends it. Arguments are zero-copy slices of the received bytes.

use bytes::{Bytes, BytesMut};

/// What a request may be, in the units RESP counts in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (one argument).
    pub bulk_bytes_max: usize,
    /// Most arguments in one command.
    pub args_max: usize,
    /// Longest inline command line.
    pub inline_bytes_max: usize,
    /// Most bytes of one whole command (Redis caps a client's query buffer too).
    pub command_bytes_max: usize,
}

/// Bytes that are not a RESP request; Redis answers `-ERR Protocol error: ...` and closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Parses the command at the start of `buf`; `Ok(None)` when it has not fully arrived.
/// An empty inline line (a bare newline) is a command with no arguments.
fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let parsed =
        if first == b'*' { parse_multibulk(buf, limits)? } else { parse_inline(buf, limits)? };
    Ok(parsed.map(|(spans, used)| {
        let frozen = buf.split_to(used).freeze();
        spans.into_iter().map(|(from, to)| frozen.slice(from..to)).collect()
    }))
}

/// Argument spans (start, end) in the buffer, and the bytes the command took.
type Spans = (Vec<(usize, usize)>, usize);

/// The position of the `\r\n` ending the line that starts at `from`, if it has arrived.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// Parses a decimal length after a one-byte prefix (`*` or `$`) on the line at `at`.
fn length_line(
    buf: &[u8],
    at: usize,
    what: &str,
    max: usize,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    // A length line is short; if no CRLF within 32 bytes, it is not one.
    let Some(end) = line_end(buf, at) else {
        if buf.len() - at > 32 {
            return Err(ProtocolError(format!("invalid {what} length")));
        }
        return Ok(None);
    };
    let digits = std::str::from_utf8(&buf[at + 1..end]).ok();
    let n: i64 = digits
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {what} length")))?;
    if n > max as i64 {
        return Err(ProtocolError(format!("invalid {what} length")));
    }
    Ok(Some((n, end + 2)))
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Option<Spans>, ProtocolError> {
    let Some((count, mut at)) = length_line(buf, 0, "multibulk", limits.args_max)? else {
        return Ok(None);
    };
    // `*-1` and `*0` are empty commands: consumed, nothing to run.
    let count = usize::try_from(count.max(0)).unwrap_or(0);
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                char::from(buf[at]).escape_default()
            )));
        }
        let Some((len, body)) = length_line(buf, at, "bulk", limits.bulk_bytes_max)? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError("invalid bulk length".into()))?;
        if body + len > limits.command_bytes_max {
            return Err(ProtocolError("command larger than the node accepts".into()));
        }
        if buf.len() < body + len + 2 {
            return Ok(None);
        }
        if &buf[body + len..body + len + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not followed by CRLF".into()));
        }
        spans.push((body, body + len));
        at = body + len + 2;
    }
    Ok(Some((spans, at)))
}

/// An inline command: one line (ending in `\n`, with or without `\r`), arguments split on
/// spaces and tabs; `"double"` and `'single'` quotes group, with `\n`, `\t`, `\"`, `\\` and
/// `\xHH` escapes in double quotes, as redis-cli and Redis itself do.
fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Spans>, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.inline_bytes_max {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    if newline > limits.inline_bytes_max {
        return Err(ProtocolError("too big inline request".into()));
    }
    let end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
    let line = &buf[..end];
    if line.iter().any(|&b| b == b'"' || b == b'\'' || b == b'\\') {
        // Quoted arguments are rebuilt (unescaped), so they cannot be spans of the buffer:
        // the caller gets them through `split_quoted`.
        return Err(ProtocolError(QUOTED_MARKER.into()));
    }
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        let blank = b == b' ' || b == b'\t';
        match (start, blank) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    if spans.len() > limits.args_max {
        return Err(ProtocolError("invalid multibulk length".into()));
    }
    Ok(Some((spans, newline + 1)))
}

/// Internal signal from [`parse_inline`] that the line has quotes; not a protocol error.
const QUOTED_MARKER: &str = "\0quoted";

/// Parses the command at the start of `buf`, inline lines with quotes included.
pub fn parse_command(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match parse(buf, limits) {
        Err(ProtocolError(m)) if m == QUOTED_MARKER => {
            let newline = buf.iter().position(|&b| b == b'\n').expect("parse saw the newline");
            let line = buf.split_to(newline + 1);
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let args = split_quoted(text)?;
            if args.len() > limits.args_max {
                return Err(ProtocolError("invalid multibulk length".into()));
            }
            Ok(Some(args))
        }
        other => other,
    }
}

/// Splits an inline line with quotes into unescaped arguments.
fn split_quoted(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let unbalanced = || ProtocolError("unbalanced quotes in request".into());
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let &b = line.get(i).ok_or_else(unbalanced)?;
                    i += 1;
                    match b {
                        b'"' => break,
                        b'\\' => {
                            let &e = line.get(i).ok_or_else(unbalanced)?;
                            i += 1;
                            let hex = |c: u8| char::from(c).to_digit(16);
                            match e {
                                b'n' => arg.push(b'\n'),
                                b'r' => arg.push(b'\r'),
                                b't' => arg.push(b'\t'),
                                b'b' => arg.push(8),
                                b'a' => arg.push(7),
                                b'x' if i + 1 < line.len()
                                    && hex(line[i]).is_some()
                                    && hex(line[i + 1]).is_some() =>
                                {
                                    let v = hex(line[i]).unwrap_or(0) * 16
                                        + hex(line[i + 1]).unwrap_or(0);
                                    arg.push(v as u8);
                                    i += 2;
                                }
                                other => arg.push(other),
                            }
                        }
                        other => arg.push(other),
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let &b = line.get(i).ok_or_else(unbalanced)?;
                    i += 1;
                    match b {
                        b'\'' => break,
                        b'\\' if line.get(i) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 1;
                        }
                        other => arg.push(other),
                    }
                }
            }
            _ => {
                while i < line.len() && line[i] != b' ' && line[i] != b'\t' {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        // A closing quote must be followed by a space or the end of the line.
        if i < line.len()
            && line[i] != b' '
            && line[i] != b'\t'
            && matches!(line[i - 1], b'"' | b'\'')
        {
            return Err(unbalanced());
        }
        args.push(Bytes::from(arg));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutated and truncated commands never panic the parser, and every call either consumes
    /// bytes, waits, or fails (no loop without progress). The fuzz target does more of this.
    #[test]
    fn mutated_commands_never_panic() {
        let seeds: &[&[u8]] = &[
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
            b"set k \"a\\x41 b\" 'c d'\r\n",
            b"*1\r\n$4\r\nPING\r\n*0\r\n\n",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut bytes = seeds[(next() % seeds.len() as u64) as usize].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, b"*$\r\n-0129\"'\\x "[(next() % 14) as usize]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                let before = buf.len();
                match parse_command(&mut buf, &LIMITS) {
                    Ok(Some(_)) => assert!(buf.len() < before, "no progress on {bytes:?}"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    const LIMITS: Limits = Limits {
        bulk_bytes_max: 1024,
        args_max: 16,
        inline_bytes_max: 256,
        command_bytes_max: 2048,
    };

    fn all(input: &[u8]) -> (Vec<Vec<String>>, Result<(), ProtocolError>, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match parse_command(&mut buf, &LIMITS) {
                Ok(Some(args)) => {
                    out.push(args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
                }
                Ok(None) => return (out, Ok(()), buf.len()),
                Err(e) => return (out, Err(e), buf.len()),
            }
        }
    }

    #[test]
    fn multibulk_and_inline() {
        let (cmds, end, left) = all(
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset  a\t'b c' \"d\\x41\\n\"\n*1\r\n$4\r\nPI",
        );
        assert_eq!(cmds, [vec!["GET", "k"], vec!["PING"], vec!["set", "a", "b c", "dA\n"]]);
        assert_eq!((end, left), (Ok(()), 10), "the partial command waits");
    }

    #[test]
    fn binary_bulk_strings_and_empty_commands() {
        let (cmds, end, left) = all(b"*0\r\n\r\n*2\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n");
        assert_eq!(cmds, [vec![], vec![], vec!["SET", "a\r\nb"]]);
        assert_eq!((end, left), (Ok(()), 0));
    }

    #[test]
    fn every_split_point_waits_then_parses() {
        let input = b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(parse_command(&mut buf, &LIMITS), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&input[cut..]);
            let args = parse_command(&mut buf, &LIMITS).unwrap().unwrap();
            assert_eq!(args, ["SET", "hello", "world"]);
        }
    }

    #[test]
    fn bad_input_is_a_protocol_error() {
        for bad in [
            &b"*x\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$2000\r\n",
            b"*100\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"set \"unbalanced\n",
            b"set \"a\"b\n",
        ] {
            let (_, end, _) = all(bad);
            assert!(end.is_err(), "{:?} was accepted", String::from_utf8_lossy(bad));
        }
        // Arguments each within bounds, together over the command limit (2048 here).
        let part = format!("$1000\r\n{}\r\n", "a".repeat(1000));
        assert!(all(format!("*3\r\n{part}{part}{part}").as_bytes()).1.is_err());
        // A length line that never ends, and an inline line longer than allowed.
        assert!(all(&[b'*'; 40]).1.is_err());
        assert!(all(&[b'a'; 300]).1.is_err());
    }
}
