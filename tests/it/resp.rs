//! The Redis protocol against real Redis tools: raw RESP (pipelining, bad input, limits), a
//! differential test that sends one seeded random command stream to redis-server and to
//! corekv and requires identical replies, redis-cli, and redis-py (tests/it/resp_client.py).
//! tests/run.sh installs redis-server, redis-tools and redis-py when they are missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Node, Rng};
use crate::redis_server::RedisServer;

/// A raw RESP2 speaker: commands out as arrays of bulk strings, replies back as the exact
/// bytes received.
pub(crate) struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp {
    pub(crate) fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Resp { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.pipeline(&[args]);
    }

    /// Sends several commands in one write, so the server reads them together.
    pub(crate) fn pipeline(&mut self, commands: &[&[&[u8]]]) {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.writer.write_all(&out).unwrap();
    }

    pub(crate) fn reply(&mut self) -> String {
        let mut raw = Vec::new();
        self.read_one(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    fn read_one(&mut self, raw: &mut Vec<u8>) {
        let start = raw.len();
        self.reader.read_until(b'\n', raw).expect("reply line");
        assert!(
            raw.len() > start + 2,
            "connection closed mid-reply: {:?}",
            String::from_utf8_lossy(raw)
        );
        let line = String::from_utf8_lossy(&raw[start + 1..raw.len() - 2]).into_owned();
        match raw[start] {
            b'$' => {
                let n: i64 = line.parse().unwrap();
                if n >= 0 {
                    let mut body = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut body).unwrap();
                    raw.extend_from_slice(&body);
                }
            }
            b'*' | b'%' => {
                let n: i64 = line.parse().unwrap();
                let elements = if raw[start] == b'%' { 2 * n } else { n };
                for _ in 0..elements.max(0) {
                    self.read_one(raw);
                }
            }
            b'+' | b'-' | b':' | b'_' => {}
            other => panic!("not a RESP reply: {:?}", char::from(other)),
        }
    }

    pub(crate) fn call(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args);
        self.reply()
    }
}

#[test]
fn commands_edge_cases_and_errors() {
    let node = Node::start(&["--cores", "2"]);
    let mut r = Resp::connect(node.resp);
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "+PONG\r\n"),
        (&["ping", "hi"], "$2\r\nhi\r\n"),
        (&["SET", "k", "v"], "+OK\r\n"),
        (&["SET", "k", "w", "NX"], "$-1\r\n"),
        (&["SET", "k", "w", "XX", "GET"], "$1\r\nv\r\n"),
        (&["SET", "k", "x", "IFEQ", "nope"], "$-1\r\n"),
        (&["SET", "k", "x", "IFEQ", "w"], "+OK\r\n"),
        (&["SET", "k", "y", "NX", "XX"], "-ERR syntax error\r\n"),
        (&["SET", "k", "y", "EX", "0"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["DEL", "k", "k", "missing"], ":1\r\n"),
        (&["TTL", "k"], ":-2\r\n"),
        (&["SET", "k", "1"], "+OK\r\n"),
        (&["TTL", "k"], ":-1\r\n"),
        (&["EXPIRE", "missing", "10"], ":0\r\n"),
        (&["EXPIRE", "k", "100"], ":1\r\n"),
        (&["TTL", "k"], ":100\r\n"),
        (&["INCR", "k"], ":2\r\n"),
        (&["TTL", "k"], ":100\r\n"),
        (&["SET", "s", "abc"], "+OK\r\n"),
        (&["INCR", "s"], "-ERR value is not an integer or out of range\r\n"),
        (&["GET"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&["NOSUCH", "a"], "-ERR unknown command 'NOSUCH', with args beginning with: 'a' \r\n"),
        (&["MSET", "a", "1", "b", "2"], "+OK\r\n"),
        (&["MGET", "a", "b", "zz"], "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
        (&["EXISTS", "a", "a", "zz"], ":2\r\n"),
        (&["GETRANGE", "s", "-2", "-1"], "$2\r\nbc\r\n"),
        (&["SETRANGE", "s", "5", "!"], ":6\r\n"),
        (&["GET", "s"], "$6\r\nabc\0\0!\r\n"),
        (&["HELLO", "4"], "-NOPROTO sorry, this protocol version is not supported\r\n"),
        (&["SELECT", "0"], "+OK\r\n"),
        (&["SELECT", "1"], "-ERR DB index is out of range\r\n"),
        (&["CLIENT", "SETNAME", "tester"], "+OK\r\n"),
        (&["CLIENT", "GETNAME"], "$6\r\ntester\r\n"),
        (&["TYPE", "a"], "+string\r\n"),
        (&["DBSIZE"], ":4\r\n"),
        (&["SET", "", "v"], "-ERR empty keys are not supported by corekv\r\n"),
        (&["KEYS", "*"], "-ERR 'keys' is not supported by corekv yet\r\n"),
        (&["FLUSHDB", "NOW"], "-ERR syntax error\r\n"),
        (
            &["PSETEX", "k", "9223372036854775807", "v"],
            "-ERR invalid expire time in 'psetex' command\r\n",
        ),
        (&["SETRANGE", "s", "99999999", ""], ":6\r\n"),
        (&["INCRBYFLOAT", "f", "inf"], "-ERR increment would produce NaN or Infinity\r\n"),
    ];
    for (args, want) in cases {
        assert_eq!(r.call(args), *want, "{args:?}");
    }
    // Pipelined: 500 commands in one write, replies in order.
    let mut out = Vec::new();
    for i in 0..500 {
        let (k, v) = (format!("p{}", i % 7), i.to_string());
        for a in [["SET", &k, &v], ["GET", &k, ""]] {
            let a: Vec<&str> = a.iter().copied().filter(|x| !x.is_empty()).collect();
            out.extend_from_slice(format!("*{}\r\n", a.len()).as_bytes());
            for x in a {
                out.extend_from_slice(format!("${}\r\n{x}\r\n", x.len()).as_bytes());
            }
        }
    }
    r.writer.write_all(&out).unwrap();
    for i in 0..500 {
        assert_eq!(r.reply(), "+OK\r\n");
        let v = i.to_string();
        assert_eq!(r.reply(), format!("${}\r\n{v}\r\n", v.len()), "pipelined GET {i}");
    }
    // Inline commands, as telnet sends them.
    r.writer.write_all(b"SET inline \"two words\"\r\nGET inline\n").unwrap();
    assert_eq!(r.reply(), "+OK\r\n");
    assert_eq!(r.reply(), "$9\r\ntwo words\r\n");
    // RESP3 after HELLO 3: a map for HELLO, `_` for a missing value, the rest as in RESP2.
    assert!(r.call(&["HELLO", "3"]).starts_with("%7\r\n$6\r\nserver\r\n"));
    assert_eq!(r.call(&["GET", "nothing"]), "_\r\n");
    assert_eq!(r.call(&["MGET", "nothing", "a"]), "*2\r\n_\r\n$1\r\n1\r\n");
    assert!(r.call(&["HELLO", "2"]).starts_with("*14\r\n"));
    assert_eq!(r.call(&["GET", "nothing"]), "$-1\r\n");
    // QUIT answers, then closes.
    assert_eq!(r.call(&["QUIT"]), "+OK\r\n");
    let mut rest = Vec::new();
    assert_eq!(r.reader.read_to_end(&mut rest).unwrap(), 0);
}

/// FLUSHDB empties every core, durably: a restart does not bring the keys back, and keys
/// written after it stay.
#[test]
fn flushdb_empties_every_core_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_at(dir.path(), &["--cores", "2"]);
    let mut r = Resp::connect(node.resp);
    for i in 0..200 {
        assert_eq!(r.call(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    assert_eq!(r.call(&["DBSIZE"]), ":200\r\n");
    assert_eq!(r.call(&["FLUSHALL", "SYNC"]), "+OK\r\n");
    assert_eq!(r.call(&["DBSIZE"]), ":0\r\n");
    assert_eq!(r.call(&["SET", "after", "1"]), "+OK\r\n");
    node.terminate();
    let node = Node::start_at(dir.path(), &["--cores", "2"]);
    let mut r = Resp::connect(node.resp);
    assert_eq!(r.call(&["DBSIZE"]), ":1\r\n");
    assert_eq!(r.call(&["GET", "k7"]), "$-1\r\n");
    assert_eq!(r.call(&["GET", "after"]), "$1\r\n1\r\n");
}

#[test]
fn bad_input_gets_a_protocol_error_and_the_node_keeps_serving() {
    let node = Node::start(&["--cores", "2", "--value-bytes-max", "1024"]);
    for bad in
        [&b"*2\r\n$3\r\nGET\r\n:1\r\n"[..], b"*-x\r\n", b"*1\r\n$99999999999\r\n", b"GET \"open\n"]
    {
        let mut r = Resp::connect(node.resp);
        r.writer.write_all(bad).unwrap();
        let reply = r.reply();
        assert!(reply.starts_with("-ERR Protocol error"), "{bad:?}: {reply}");
        let mut rest = Vec::new();
        assert_eq!(r.reader.read_to_end(&mut rest).unwrap(), 0, "closed after {bad:?}");
    }
    let mut r = Resp::connect(node.resp);
    let big = "x".repeat(2000);
    let reply = r.call(&["SET", "k", &big]);
    assert!(reply.starts_with("-ERR value of 2000 bytes exceeds value_bytes_max 1024"), "{reply}");
    assert_eq!(r.call(&["PING"]), "+PONG\r\n");
}

/// One random command over a small key and value space, with options, and sometimes a
/// mistake (bad arity, bad option) so error replies are compared too. Only what behaves the
/// same on any Redis 7 and is deterministic in time (TTLs are long, or already past).
/// Parses a SCAN reply: the next cursor and the keys.
fn scan_reply(raw: &str) -> (u64, Vec<String>) {
    let mut lines = raw.split("\r\n");
    assert_eq!(lines.next(), Some("*2"), "{raw:?}");
    lines.next(); // the cursor's length
    let cursor = lines.next().unwrap().parse().unwrap();
    let n: usize = lines.next().unwrap().strip_prefix('*').unwrap().parse().unwrap();
    let keys = (0..n)
        .map(|_| {
            lines.next();
            lines.next().unwrap().to_string()
        })
        .collect();
    (cursor, keys)
}

/// Walks a whole SCAN; every key once (Redis may repeat keys, so its walk is deduplicated by
/// the caller), each call within COUNT for corekv.
fn scan_all(r: &mut Resp, pattern: &str, count: usize, strict: bool) -> Vec<String> {
    let mut cursor = 0;
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let (next, found) = scan_reply(&r.call(&[
            "SCAN",
            &cursor.to_string(),
            "MATCH",
            pattern,
            "COUNT",
            &count.to_string(),
        ]));
        if strict {
            assert!(found.len() <= count, "{} keys for COUNT {count}", found.len());
        }
        keys.extend(found);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
    panic!("SCAN {pattern} COUNT {count} did not end");
}

#[test]
fn scan_walks_every_core_and_matches_like_redis() {
    let redis = RedisServer::start();
    let node = Node::start(&["--cores", "2"]);
    let (mut a, mut b) = (Resp::connect(redis.addr), Resp::connect(node.resp));
    for i in 0..400 {
        let key = match i % 4 {
            0 => format!("user:{i}"),
            1 => format!("order:{i}:x"),
            2 => format!("o*der:{i}"),
            _ => format!("[{i}]"),
        };
        assert_eq!(a.call(&["SET", &key, "v"]), "+OK\r\n");
        assert_eq!(b.call(&["SET", &key, "v"]), "+OK\r\n");
    }
    let patterns = [
        "*",
        "user:*",
        "user:1?",
        "*[0-3]",
        "o\\*der:*",
        "[^uo]*",
        "order:*:?",
        "\\[1*",
        "nothing*",
    ];
    for pattern in patterns {
        for count in [1, 7, 1000] {
            let mut want = scan_all(&mut a, pattern, count, false);
            want.dedup();
            let got = scan_all(&mut b, pattern, count, true);
            assert_eq!(got, want, "SCAN MATCH {pattern} COUNT {count}");
        }
    }
    assert_eq!(scan_all(&mut b, "*", 10, true).len(), 400);
    for bad in [
        vec!["SCAN", "x"],
        vec!["SCAN", "0", "COUNT", "0"],
        vec!["SCAN", "0", "COUNT", "abc"],
        vec!["SCAN", "0", "MATCH"],
        vec!["SCAN", "0", "NOPE", "1"],
        vec!["SCAN"],
    ] {
        assert_eq!(a.call(&bad), b.call(&bad), "{bad:?}");
    }
    // TYPE: every key is a string; any other type finds nothing.
    let mut cursor = 0;
    let mut strings = 0;
    loop {
        let (next, found) =
            scan_reply(&b.call(&["SCAN", &cursor.to_string(), "COUNT", "50", "TYPE", "string"]));
        strings += found.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(strings, 400);
    for (cursor, kind) in [("0", "hash"), ("65536", "list")] {
        let reply = b.call(&["SCAN", cursor, "TYPE", kind]);
        assert_eq!(reply, "*2\r\n$1\r\n0\r\n*0\r\n", "TYPE {kind}");
    }
    assert_eq!(b.call(&["SCAN", "281474976710655"]), "-ERR invalid cursor\r\n");
}

/// MSETNX over keys on both cores, raced by writers with overlapping key sets while readers
/// watch: at most one of two overlapping MSETNX wins, a winner's keys all hold its values, and
/// a reader that sees one key of a group set then finds every other key of it set too.
#[test]
fn msetnx_is_all_or_nothing_across_cores() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const GROUPS: usize = 300;
    let node = Node::start(&["--cores", "2"]);
    let addr = node.resp;
    // Group g has keys g:0..g:4; writer A takes 0..3, writer B takes 2..5: they overlap in
    // g:2 and g:3, so at most one of them may succeed.
    let key = |g: usize, i: usize| format!("g{g}:{i}");
    // The group being written now: readers watch it, where a partial state would show.
    let current = Arc::new(AtomicUsize::new(0));
    let writer = |from: usize, tag: &'static str| {
        let current = current.clone();
        std::thread::spawn(move || {
            let mut r = Resp::connect(addr);
            let mut won = Vec::new();
            for g in 0..GROUPS {
                current.store(g, Ordering::Relaxed);
                let mut cmd = vec!["MSETNX".to_string()];
                for i in from..from + 3 {
                    cmd.extend([format!("g{g}:{i}"), tag.to_string()]);
                }
                let args: Vec<&str> = cmd.iter().map(|s| s.as_str()).collect();
                match r.call(&args).as_str() {
                    ":1\r\n" => won.push(true),
                    ":0\r\n" => won.push(false),
                    other => panic!("MSETNX answered {other:?}"),
                }
            }
            won
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let reverse = n % 2;
            let stop = stop.clone();
            let current = current.clone();
            std::thread::spawn(move || {
                let mut r = Resp::connect(addr);
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = current.load(Ordering::Relaxed);
                    // Read one end of each writer's triple, then the rest of it.
                    for from in [0, 2] {
                        let mut order: Vec<usize> = (from..from + 3).collect();
                        if reverse == 1 {
                            order.reverse();
                        }
                        let first = r.call(&["GET", &format!("g{g}:{}", order[0])]);
                        // Shared keys may hold the other writer's tag: only this writer's
                        // tag says its triple was set.
                        let tag = if from == 0 { "$1\r\nA\r\n" } else { "$1\r\nB\r\n" };
                        if first != tag {
                            continue;
                        }
                        for &i in &order[1..] {
                            let got = r.call(&["GET", &format!("g{g}:{i}")]);
                            assert_eq!(
                                got, first,
                                "group {g}: saw g{g}:{} set, g{g}:{i} not",
                                order[0]
                            );
                            checks += 1;
                        }
                    }
                }
                checks
            })
        })
        .collect();
    let (a, b) = (writer(0, "A"), writer(2, "B"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    let checks: u64 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    let mut r = Resp::connect(addr);
    let mut wins = [0, 0];
    for g in 0..GROUPS {
        assert!(!(a[g] && b[g]), "group {g}: both overlapping MSETNX succeeded");
        wins[0] += usize::from(a[g]);
        wins[1] += usize::from(b[g]);
        // The winner's keys hold its values; the loser wrote nothing.
        for i in 0..5 {
            let want = match (a[g], b[g]) {
                (true, _) if i < 3 => "$1\r\nA\r\n",
                (_, true) if i >= 2 => "$1\r\nB\r\n",
                _ => "$-1\r\n",
            };
            assert_eq!(r.call(&["GET", &key(g, i)]), want, "g{g}:{i}");
        }
    }
    assert!(wins[0] + wins[1] >= GROUPS, "every group has a winner: {wins:?}");
    assert!(checks > 0, "the readers saw groups being set");
}

fn random_command(rng: &mut Rng) -> Vec<String> {
    let keys = ["k0", "k1", "k2", "k3", "{t}a", "{t}b"];
    let values = ["0", "1", "-5", "10", "abc", "", "hello world", "9223372036854775807", "3.5"];
    let pick = |rng: &mut Rng, from: &[&str]| {
        from[rng.range(0, from.len() as u64 - 1) as usize].to_string()
    };
    let value = |rng: &mut Rng| pick(rng, &values);
    let key = |rng: &mut Rng| pick(rng, &keys);
    let mut c: Vec<String> = Vec::new();
    match rng.range(0, 27) {
        0 | 1 => c.extend(["GET".into(), key(rng)]),
        2 | 3 => {
            c.extend(["SET".into(), key(rng), value(rng)]);
            for opt in [["NX", "XX", "", ""], ["GET", "", "", ""], ["EX", "PX", "KEEPTTL", ""]] {
                let o = pick(rng, &opt);
                match o.as_str() {
                    "" => {}
                    "EX" => c.extend([o, rng.range(100, 1000).to_string()]),
                    "PX" => c.extend([o, rng.range(100_000, 1_000_000).to_string()]),
                    _ => c.push(o),
                }
            }
        }
        4 => c.extend(["SETNX".into(), key(rng), value(rng)]),
        5 => c.extend(["GETSET".into(), key(rng), value(rng)]),
        6 => c.extend(["GETDEL".into(), key(rng)]),
        7 => {
            c.push(pick(rng, &["DEL", "UNLINK", "EXISTS", "MGET"]));
            for _ in 0..rng.range(1, 3) {
                c.push(key(rng));
            }
        }
        8 => {
            c.push(pick(rng, &["MSET", "MSETNX"]));
            for _ in 0..rng.range(1, 3) {
                c.extend([key(rng), value(rng)]);
            }
        }
        9 | 10 => c.extend([pick(rng, &["INCR", "DECR"]), key(rng)]),
        11 => c.extend([
            pick(rng, &["INCRBY", "DECRBY"]),
            key(rng),
            pick(rng, &["1", "-7", "100", "x"]),
        ]),
        // Floats on their own key: corekv computes in f64, Redis in long double, so sums of
        // huge values can differ in their last digits (README: differences from Redis).
        12 => match rng.range(0, 3) {
            0 => c.extend(["GET".into(), "fl".into()]),
            1 => c.extend(["SET".into(), "fl".into(), pick(rng, &["1", "2.5", "-0.75", "x"])]),
            _ => c.extend([
                "INCRBYFLOAT".into(),
                "fl".into(),
                pick(rng, &["0.5", "-2.25", "1.5", "nan", "x"]),
            ]),
        },
        13 => c.extend(["APPEND".into(), key(rng), value(rng)]),
        14 => c.extend(["STRLEN".into(), key(rng)]),
        15 => c.extend([
            "GETRANGE".into(),
            key(rng),
            (rng.range(0, 20) as i64 - 10).to_string(),
            (rng.range(0, 20) as i64 - 10).to_string(),
        ]),
        16 => c.extend(["SETRANGE".into(), key(rng), rng.range(0, 12).to_string(), value(rng)]),
        17 | 18 => {
            c.extend(["EXPIRE".into(), key(rng), pick(rng, &["100", "500", "-1", "0", "x"])]);
            for _ in 0..rng.range(0, 2) {
                c.push(pick(rng, &["NX", "XX", "GT", "LT"]));
            }
        }
        19 => c.extend(["PEXPIRE".into(), key(rng), pick(rng, &["200000", "-5"])]),
        20 => c.extend(["EXPIREAT".into(), key(rng), "1".into()]),
        21 => c.extend(["TTL".into(), key(rng)]),
        22 => c.extend(["PERSIST".into(), key(rng)]),
        23 => c.extend(["TYPE".into(), key(rng)]),
        24 => c.extend(["SETEX".into(), key(rng), pick(rng, &["100", "0", "-1"]), value(rng)]),
        25 => {
            c.extend(["GETEX".into(), key(rng)]);
            match rng.range(0, 2) {
                0 => {}
                1 => c.push("PERSIST".into()),
                _ => c.extend(["EX".into(), "300".into()]),
            }
        }
        26 => c.push(if rng.range(0, 20) == 0 { "FLUSHDB" } else { "DBSIZE" }.into()),
        _ => {
            // Mistakes: wrong arity, and an option that does not exist.
            let wrong = [
                vec!["GET"],
                vec!["SET", "k0"],
                vec!["INCRBY", "k0"],
                vec!["EXPIRE", "k0", "5", "ZZ"],
            ];
            c.extend(wrong[rng.range(0, 3) as usize].iter().map(|s| s.to_string()));
        }
    }
    c
}

#[test]
fn same_replies_as_redis_server_for_a_random_command_stream() {
    let redis = RedisServer::start();
    let node = Node::start(&["--cores", "2"]);
    let mut rng = Rng::seeded("same_replies_as_redis_server_for_a_random_command_stream");
    let (mut a, mut b) = (Resp::connect(redis.addr), Resp::connect(node.resp));
    let mut history: Vec<String> = Vec::new();
    for i in 0..4000 {
        let cmd = random_command(&mut rng);
        let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
        a.send(&args);
        b.send(&args);
        let (want, got) = (a.reply(), b.reply());
        history.push(format!("{cmd:?} -> {want:?}"));
        // A TTL read a moment apart may round differently by one second.
        let int = |s: &str| s.strip_prefix(':').and_then(|n| n.trim().parse::<i64>().ok());
        let close_ttls = cmd[0] == "TTL"
            && matches!((int(&want), int(&got)), (Some(x), Some(y)) if (x - y).abs() <= 1);
        if want != got && !close_ttls {
            let recent = history[history.len().saturating_sub(15)..].join("\n  ");
            panic!(
                "command {i} {cmd:?}: redis {want:?}, corekv {got:?}\nlast commands:\n  {recent}"
            );
        }
    }
}

#[test]
fn redis_cli_works_against_the_node() {
    let node = Node::start(&["--cores", "2"]);
    let port = node.resp.port().to_string();
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli (tests/run.sh installs it: apt-get install redis-tools)");
        assert!(out.status.success(), "redis-cli {args:?}: {:?}", out);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["INCRBY", "n", "41"]), "41");
    assert_eq!(cli(&["SET", "greeting", "x", "NX"]), "");
    assert_eq!(
        cli(&["INFO", "keyspace"]).lines().last().unwrap_or(""),
        "db0:keys=2,expires=0,avg_ttl=0"
    );
    // Interactive use: commands on stdin, one reply per line, as a person at the prompt.
    let mut child = Command::new("redis-cli")
        .args(["-p", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"set a 1\nincr a\nget a\nttl a\nexists a zz\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n2\n2\n-1\n1\n");
    // --pipe: the mass-insertion mode, raw RESP on stdin.
    let mut input = Vec::new();
    for i in 0..1000 {
        input.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\nbulk{i}\r\n$1\r\nv\r\n", 4 + i.to_string().len())
                .as_bytes(),
        );
    }
    let mut child = Command::new("redis-cli")
        .args(["-p", &port, "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0, replies: 1000"), "{text}");
    assert_eq!(cli(&["DBSIZE"]), "1003", "greeting, n, a and the 1000 bulk keys");
}

#[test]
fn redis_py_works_against_the_node() {
    let node = Node::start(&["--cores", "2"]);
    crate::harness::python_checks(
        "resp_client.py",
        node.resp.port(),
        "redis-py: all checks passed",
    );
}
