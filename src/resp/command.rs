//! Redis commands: each one planned over native operations, and native replies rendered the
//! way Redis answers (the Redis command docs are the spec; differences are listed in the
//! README).
//!
//! Names are matched case-insensitively; wrong arity, syntax and type errors use Redis's
//! wording, since clients and scripts match on it. Keys and values are checked against the
//! node's limits here, before anything is dispatched.

use bytes::Bytes;
use corekv_schema::codec::{Condition, Op, Reply, SetOp};
use corekv_schema::frame::Limits;

use super::out;
use super::rmw::{self, Rmw, Ttl, When};

/// What one connection remembers between commands.
#[derive(Debug, Default)]
pub struct Session {
    pub id: u64,
    pub name: Option<Bytes>,
    pub addr: String,
    /// The client switched to RESP3 with `HELLO 3`.
    pub resp3: bool,
}

/// What a command asks the node for.
#[derive(Debug)]
pub enum Plan {
    /// Answered already (encoded).
    Reply(Vec<u8>),
    /// One native operation (often a `Batch`), rendered by `Render`.
    Op(Op, Render),
    /// A read-modify-write on one key.
    Rmw(Bytes, Rmw),
    /// Answered from the node's stats.
    Stats(StatsView),
    /// Answer `+OK`, then close the connection.
    Quit,
    /// FLUSHDB / FLUSHALL: delete every key on every core.
    Flush,
    /// SCAN: one step of a walk over every core's keys.
    Scan(Scan),
    /// MSETNX: these sets, all or none (`:1` or `:0`).
    SetAllAbsent(Vec<SetOp>),
    /// AUTH, or HELLO with AUTH: become `user` (`default` when not named) if `password` is
    /// its; then answer `then` (HELLO's reply) and take `resp3`, or `+OK` for AUTH.
    Auth { user: Bytes, password: Bytes, then: Option<(Vec<u8>, bool)> },
    /// ACL SETUSER, DELUSER, LIST, WHOAMI.
    Acl(Acl),
    /// HELLO without AUTH: its answer, and whether the connection speaks RESP3 from then on
    /// (taken only if the connection may run it: Redis keeps the protocol on NOAUTH).
    Hello(Vec<u8>, bool),
}

/// The ACL subcommands this node knows.
#[derive(Debug)]
pub enum Acl {
    SetUser(String, Vec<String>),
    DelUser(Vec<String>),
    List,
    WhoAmI,
}

/// A SCAN call. The cursor names a core (its low 16 bits) and a position in that core's key
/// order (the rest); 0 starts a walk and comes back when it is over.
#[derive(Debug)]
pub struct Scan {
    pub core: u16,
    pub position: u64,
    pub count: usize,
    /// Shared by the steps on every core the call visits.
    pub pattern: Option<std::sync::Arc<super::glob::Glob>>,
}

impl Scan {
    pub const CORE_BITS: u32 = 16;

    pub fn cursor(core: u16, position: u64) -> u64 {
        (position << Scan::CORE_BITS) | u64::from(core)
    }
}

/// SCAN's default COUNT, as Redis's.
const SCAN_COUNT_DEFAULT: usize = 10;

#[derive(Debug)]
pub enum StatsView {
    DbSize,
    /// `INFO` with the sections asked for (lowercase; empty: the default set).
    Info(Vec<String>),
}

/// How a native reply becomes a Redis reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// The value, or nil.
    Bulk,
    /// `+OK`, or nil when the condition (NX, XX, IFEQ) failed.
    SetOk,
    /// `:1` written, `:0` condition failed.
    Bool,
    /// `Batch[Get, Set]`: the old value or nil (SET ... GET, GETSET).
    OldValue,
    /// `Delete` or `Batch` of them: how many existed.
    Deleted,
    /// `Batch` of `Get`: how many exist.
    Existing,
    /// `Batch` of `Get`: an array of values or nils.
    Values,
    /// `Batch` of `Set`: `+OK`.
    AllOk,
    Strlen,
    Range(i64, i64),
    Ttl {
        ms: bool,
    },
    Type,
}

/// Commands this node knows, with Redis's arity (negative: at least that many arguments,
/// the name included). `COMMAND` and `COMMAND COUNT` answer from this table.
pub const COMMANDS: &[(&str, i64)] = &[
    ("acl", -2),
    ("append", 3),
    ("auth", -2),
    ("client", -2),
    ("command", -1),
    ("dbsize", 1),
    ("decr", 2),
    ("decrby", 3),
    ("del", -2),
    ("echo", 2),
    ("exists", -2),
    ("expire", -3),
    ("expireat", -3),
    ("flushall", -1),
    ("flushdb", -1),
    ("get", 2),
    ("getdel", 2),
    ("getex", -2),
    ("getrange", 4),
    ("getset", 3),
    ("hello", -1),
    ("incr", 2),
    ("incrby", 3),
    ("incrbyfloat", 3),
    ("info", -1),
    ("mget", -2),
    ("mset", -3),
    ("msetnx", -3),
    ("persist", 2),
    ("pexpire", -3),
    ("pexpireat", -3),
    ("ping", -1),
    ("psetex", 4),
    ("pttl", 2),
    ("quit", -1),
    ("scan", -2),
    ("select", 2),
    ("set", -3),
    ("setex", 4),
    ("setnx", 3),
    ("setrange", 4),
    ("strlen", 2),
    ("ttl", 2),
    ("type", 2),
    ("unlink", -2),
];

/// Commands of Redis's string and keyspace families that this version does not run yet.
const NOT_YET: &[&str] = &["keys", "rename"];

fn reply_error(message: &str) -> Plan {
    Plan::Reply(out::with(|o| out::error(o, message)))
}

fn syntax() -> Plan {
    reply_error("ERR syntax error")
}

fn not_integer() -> Plan {
    reply_error(rmw::NOT_AN_INTEGER)
}

fn invalid_expire(cmd: &str) -> Plan {
    reply_error(&format!("ERR invalid expire time in '{cmd}' command"))
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn plan_scan(args: &[Bytes], limits: &Limits) -> Plan {
    let cursor = std::str::from_utf8(&args[1]).ok().and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else { return reply_error("ERR invalid cursor") };
    let mut scan = Scan {
        core: (cursor & ((1 << Scan::CORE_BITS) - 1)) as u16,
        position: cursor >> Scan::CORE_BITS,
        count: SCAN_COUNT_DEFAULT,
        pattern: None,
    };
    let mut only_strings = true;
    let mut at = 2;
    while at < args.len() {
        let Some(value) = args.get(at + 1) else { return syntax() };
        match lower(&args[at]).as_str() {
            "match" => scan.pattern = Some(std::sync::Arc::new(super::glob::Glob::new(value))),
            "count" => match rmw::parse_i64(value) {
                Some(n) if n >= 1 => {
                    // A COUNT beyond one batch would build one huge reply: capped, as COUNT
                    // is only a hint.
                    scan.count = usize::try_from(n).unwrap_or(usize::MAX).min(limits.batch_ops_max)
                }
                Some(_) => return syntax(),
                None => return not_integer(),
            },
            "type" => only_strings = value.eq_ignore_ascii_case(b"string"),
            _ => return syntax(),
        }
        at += 2;
    }
    if !only_strings {
        // Every key is a string: a walk for any other type is over before it starts.
        return Plan::Reply(out::with(|o| {
            out::array(o, 2);
            out::bulk(o, b"0");
            out::array(o, 0);
        }));
    }
    Plan::Scan(scan)
}

/// Plans one command. `args[0]` is the name.
pub fn plan(args: Vec<Bytes>, session: &mut Session, limits: &Limits, now_ms: u64) -> Plan {
    let Some(first) = args.first() else { return Plan::Reply(Vec::new()) };
    // No allocation on the way: the name is matched in place, case-insensitively.
    let Some(&(name, arity)) =
        COMMANDS.iter().find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(first))
    else {
        if let Some(name) = NOT_YET.iter().find(|n| n.as_bytes().eq_ignore_ascii_case(first)) {
            return reply_error(&format!("ERR '{name}' is not supported by corekv yet"));
        }
        let mut message =
            format!("ERR unknown command '{}', with args beginning with: ", lossy(first));
        for a in args.iter().skip(1).take(8) {
            message += &format!("'{}' ", lossy(a));
        }
        return reply_error(&message);
    };
    let n = args.len() as i64;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        return reply_error(&format!("ERR wrong number of arguments for '{name}' command"));
    }
    // Keys are the arguments a command names as keys; check them (and values) up front.
    if let Some(problem) = check_sizes(name, &args, limits) {
        return reply_error(&problem);
    }
    let key = || args[1].clone();
    match name {
        "ping" => match args.len() {
            1 => Plan::Reply(out::with(|o| out::simple(o, "PONG"))),
            2 => Plan::Reply(out::with(|o| out::bulk(o, &args[1]))),
            _ => reply_error("ERR wrong number of arguments for 'ping' command"),
        },
        "echo" => Plan::Reply(out::with(|o| out::bulk(o, &args[1]))),
        "quit" => Plan::Quit,
        "select" => match rmw::parse_i64(&args[1]) {
            Some(0) => Plan::Reply(out::with(out::ok)),
            Some(_) => reply_error("ERR DB index is out of range"),
            None => not_integer(),
        },
        "hello" => hello(&args, session),
        "auth" => match args.len() {
            2 => Plan::Auth { user: Bytes::from_static(b"default"), password: key(), then: None },
            3 => Plan::Auth { user: key(), password: args[2].clone(), then: None },
            _ => syntax(),
        },
        "acl" => acl(&args),
        "command" => command(&args),
        "client" => client(&args, session),
        "info" => Plan::Stats(StatsView::Info(args[1..].iter().map(|a| lower(a)).collect())),
        "dbsize" => Plan::Stats(StatsView::DbSize),
        "scan" => plan_scan(&args, limits),
        // ASYNC and SYNC both flush before answering (there is no lazy freeing here).
        "flushdb" | "flushall" => match args.get(1).map(|a| lower(a)).as_deref() {
            None | Some("async" | "sync") if args.len() <= 2 => Plan::Flush,
            _ => syntax(),
        },
        "get" => Plan::Op(Op::Get { key: key() }, Render::Bulk),
        "type" => Plan::Op(Op::Get { key: key() }, Render::Type),
        "strlen" => Plan::Op(Op::Get { key: key() }, Render::Strlen),
        "ttl" | "pttl" => Plan::Op(Op::Get { key: key() }, Render::Ttl { ms: name == "pttl" }),
        "getrange" => match (rmw::parse_i64(&args[2]), rmw::parse_i64(&args[3])) {
            (Some(s), Some(e)) => Plan::Op(Op::Get { key: key() }, Render::Range(s, e)),
            _ => not_integer(),
        },
        "set" => set(&args, now_ms),
        "setnx" => {
            let op = Op::set_if(key(), args[2].clone(), Condition::IfAbsent);
            Plan::Op(op, Render::Bool)
        }
        "setex" | "psetex" => {
            let Some(t) = rmw::parse_i64(&args[2]) else { return not_integer() };
            let unit = if name == "setex" { "ex" } else { "px" };
            match expiry(unit, t, now_ms) {
                Some(at) => {
                    let set = SetOp {
                        key: key(),
                        value: args[3].clone(),
                        ttl_ms: Ttl::At(at).native(now_ms).0,
                        ..SetOp::default()
                    };
                    Plan::Op(Op::Set(set), Render::SetOk)
                }
                None => invalid_expire(name),
            }
        }
        "getset" => Plan::Op(
            Op::Batch(vec![Op::Get { key: key() }, Op::set(key(), args[2].clone())]),
            Render::OldValue,
        ),
        "getdel" => Plan::Op(
            Op::Batch(vec![
                Op::Get { key: key() },
                Op::Delete { key: key(), condition: Condition::Always },
            ]),
            Render::OldValue,
        ),
        "getex" => getex(&args, now_ms),
        "del" | "unlink" => {
            let ops = args[1..]
                .iter()
                .map(|k| Op::Delete { key: k.clone(), condition: Condition::Always })
                .collect();
            Plan::Op(Op::Batch(ops), Render::Deleted)
        }
        "exists" => {
            let ops = args[1..].iter().map(|k| Op::Get { key: k.clone() }).collect();
            Plan::Op(Op::Batch(ops), Render::Existing)
        }
        "mget" => {
            let ops = args[1..].iter().map(|k| Op::Get { key: k.clone() }).collect();
            Plan::Op(Op::Batch(ops), Render::Values)
        }
        "msetnx" => {
            if args.len().is_multiple_of(2) {
                return reply_error("ERR wrong number of arguments for 'msetnx' command");
            }
            let sets = args[1..]
                .chunks(2)
                .map(|kv| SetOp { key: kv[0].clone(), value: kv[1].clone(), ..SetOp::default() })
                .collect();
            Plan::SetAllAbsent(sets)
        }
        "mset" => {
            if args.len().is_multiple_of(2) {
                return reply_error("ERR wrong number of arguments for 'mset' command");
            }
            let ops = args[1..].chunks(2).map(|kv| Op::set(kv[0].clone(), kv[1].clone())).collect();
            Plan::Op(Op::Batch(ops), Render::AllOk)
        }
        "incr" => Plan::Rmw(key(), Rmw::IncrBy(1)),
        "decr" => Plan::Rmw(key(), Rmw::IncrBy(-1)),
        "incrby" | "decrby" => match rmw::parse_i64(&args[2]) {
            Some(by) if name == "incrby" => Plan::Rmw(key(), Rmw::IncrBy(by)),
            Some(by) => match by.checked_neg() {
                Some(neg) => Plan::Rmw(key(), Rmw::IncrBy(neg)),
                None => reply_error("ERR decrement would overflow"),
            },
            None => not_integer(),
        },
        "incrbyfloat" => match rmw::parse_f64(&args[2]) {
            // An infinite increment is a float; the step refuses the infinite result.
            Some(by) => Plan::Rmw(key(), Rmw::IncrByFloat(by)),
            _ => reply_error(rmw::NOT_A_FLOAT),
        },
        "append" => Plan::Rmw(key(), Rmw::Append(args[2].clone())),
        "setrange" => match rmw::parse_i64(&args[2]) {
            Some(offset) if offset >= 0 => {
                // An empty part writes nothing, at any offset (Redis answers the length).
                let end = offset as u64 + args[3].len() as u64;
                if !args[3].is_empty() && end > limits.value_bytes_max as u64 {
                    return reply_error(rmw::TOO_BIG);
                }
                Plan::Rmw(key(), Rmw::SetRange(offset as usize, args[3].clone()))
            }
            Some(_) => reply_error("ERR offset is out of range"),
            None => not_integer(),
        },
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(name, &args, now_ms),
        "persist" => Plan::Rmw(key(), Rmw::Persist),
        other => reply_error(&format!("ERR command '{other}' is listed but not planned")),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Which arguments are keys and which are values, per command; the first size problem.
/// Where a command's keys are: whether there are many (to the last argument) or one (the
/// first), the step between them, and where each key's value is, as an offset from it.
/// `None`: the command names no key. COMMAND INFO and the size checks both read this.
fn key_layout(name: &str) -> Option<(bool, usize, Option<usize>)> {
    Some(match name {
        "get" | "type" | "strlen" | "ttl" | "pttl" | "getrange" | "getdel" | "getex" | "incr"
        | "decr" | "incrby" | "decrby" | "incrbyfloat" | "persist" | "expire" | "pexpire"
        | "expireat" | "pexpireat" | "setrange" => (false, 1, None),
        "set" | "setnx" | "getset" | "append" => (false, 1, Some(1)),
        "setex" | "psetex" => (false, 1, Some(2)),
        "del" | "unlink" | "exists" | "mget" => (true, 1, None),
        "mset" | "msetnx" => (true, 2, Some(1)),
        _ => return None,
    })
}

fn check_sizes(name: &str, args: &[Bytes], limits: &Limits) -> Option<String> {
    let (many, step, value_offset) = key_layout(name)?;
    let keys = if many { &args[1..] } else { &args[1..2] };
    let count = keys.len().div_ceil(step);
    if count > limits.batch_ops_max {
        return Some(format!(
            "ERR {count} keys in one command; at most {} (batch_ops_max)",
            limits.batch_ops_max
        ));
    }
    for at in (0..keys.len()).step_by(step) {
        let value = value_offset.and_then(|o| args.get(1 + at + o));
        let checked = limits.check_key(&keys[at]).and_then(|()| match value {
            Some(v) => limits.check_value(v),
            None => Ok(()),
        });
        if let Err(e) = checked {
            return Some(format!("ERR {e}"));
        }
    }
    None
}

/// `SET key value [NX | XX | IFEQ v] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]`.
fn set(args: &[Bytes], now_ms: u64) -> Plan {
    let mut condition = Condition::Always;
    let mut get = false;
    let mut ttl: Option<Ttl> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = lower(&args[i]);
        let arg = args.get(i + 1);
        match opt.as_str() {
            "nx" | "xx" if condition == Condition::Always => {
                condition = if opt == "nx" { Condition::IfAbsent } else { Condition::IfPresent };
            }
            "ifeq" if condition == Condition::Always && arg.is_some() => {
                condition = Condition::IfValue(args[i + 1].clone());
                i += 1;
            }
            "get" if !get => get = true,
            "keepttl" if ttl.is_none() => ttl = Some(Ttl::Keep),
            "ex" | "px" | "exat" | "pxat" if ttl.is_none() && arg.is_some() => {
                let Some(t) = rmw::parse_i64(&args[i + 1]) else { return not_integer() };
                match expiry(&opt, t, now_ms) {
                    Some(at) => ttl = Some(Ttl::At(at)),
                    None => return invalid_expire("set"),
                }
                i += 1;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    let (ttl_ms, keep_ttl) = ttl.unwrap_or(Ttl::Clear).native(now_ms);
    let set = SetOp { key: args[1].clone(), value: args[2].clone(), ttl_ms, keep_ttl, condition };
    if get {
        let read = Op::Get { key: args[1].clone() };
        Plan::Op(Op::Batch(vec![read, Op::Set(set)]), Render::OldValue)
    } else {
        Plan::Op(Op::Set(set), Render::SetOk)
    }
}

/// The absolute expiry (Unix ms) of `EX s`, `PX ms`, `EXAT s`, `PXAT ms`; `None` if it is not
/// positive or overflows.
fn expiry(unit: &str, t: i64, now_ms: u64) -> Option<i64> {
    if t <= 0 {
        return None;
    }
    let now = now_ms as i64;
    match unit {
        "ex" => t.checked_mul(1000)?.checked_add(now),
        "px" => t.checked_add(now),
        "exat" => t.checked_mul(1000),
        _ => Some(t),
    }
}

/// `GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]`.
fn getex(args: &[Bytes], now_ms: u64) -> Plan {
    let key = args[1].clone();
    match args.len() {
        2 => Plan::Op(Op::Get { key }, Render::Bulk),
        3 if lower(&args[2]) == "persist" => Plan::Rmw(key, Rmw::GetEx(Ttl::Clear)),
        4 => {
            let unit = lower(&args[2]);
            if !matches!(unit.as_str(), "ex" | "px" | "exat" | "pxat") {
                return syntax();
            }
            let Some(t) = rmw::parse_i64(&args[3]) else { return not_integer() };
            match expiry(&unit, t, now_ms) {
                Some(at) => Plan::Rmw(key, Rmw::GetEx(Ttl::At(at))),
                None => invalid_expire("getex"),
            }
        }
        _ => syntax(),
    }
}

/// `EXPIRE key seconds [NX | XX | GT | LT]` and its ms and absolute-time forms. Options are
/// checked before the time, as Redis does.
fn expire(name: &str, args: &[Bytes], now_ms: u64) -> Plan {
    let mut when = When::default();
    for opt in &args[3..] {
        match lower(opt).as_str() {
            "nx" => when.no_ttl = true,
            "xx" => when.has_ttl = true,
            "gt" => when.later = true,
            "lt" => when.sooner = true,
            _ => return reply_error(&format!("ERR Unsupported option {}", lossy(opt))),
        }
    }
    if when.no_ttl && (when.has_ttl || when.later || when.sooner) {
        return reply_error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if when.later && when.sooner {
        return reply_error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(t) = rmw::parse_i64(&args[2]) else { return not_integer() };
    let now = now_ms as i64;
    let at = match name {
        "expire" => t.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        "pexpire" => t.checked_add(now),
        "expireat" => t.checked_mul(1000),
        _ => Some(t),
    };
    let Some(at_ms) = at else { return invalid_expire(name) };
    Plan::Rmw(args[1].clone(), Rmw::Expire { at_ms, when })
}

/// `HELLO [2|3 [AUTH user pass] [SETNAME name]]`. RESP3 differs from RESP2 for these
/// commands only in its null and in this reply (a map); see `out::to_resp3`.
/// `ACL SETUSER name rules...`, `ACL DELUSER name...`, `ACL LIST`, `ACL WHOAMI`.
fn acl(args: &[Bytes]) -> Plan {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match (lower(&args[1]).as_str(), args.len()) {
        ("setuser", n) if n >= 3 => {
            Plan::Acl(Acl::SetUser(text(&args[2]), args[3..].iter().map(text).collect()))
        }
        ("deluser", n) if n >= 3 => Plan::Acl(Acl::DelUser(args[2..].iter().map(text).collect())),
        ("list", 2) => Plan::Acl(Acl::List),
        ("whoami", 2) => Plan::Acl(Acl::WhoAmI),
        ("setuser" | "deluser" | "list" | "whoami", _) => {
            let sub = lower(&args[1]);
            reply_error(&format!("ERR wrong number of arguments for 'acl|{sub}' command"))
        }
        (other, _) => reply_error(&format!(
            "ERR unknown subcommand '{other}'. This node knows ACL SETUSER, DELUSER, LIST and \
             WHOAMI"
        )),
    }
}

fn hello(args: &[Bytes], session: &mut Session) -> Plan {
    let mut resp3 = session.resp3;
    if let Some(v) = args.get(1) {
        match rmw::parse_i64(v) {
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return reply_error("NOPROTO sorry, this protocol version is not supported"),
            None => return reply_error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    let mut auth = None;
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "setname" if i + 1 < args.len() => {
                session.name = Some(args[i + 1].clone());
                i += 2;
            }
            "auth" if i + 2 < args.len() => {
                auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            }
            _ => return syntax(),
        }
    }
    let reply = out::with(|o| {
        if resp3 {
            o.extend_from_slice(b"%7\r\n");
        } else {
            out::array(o, 14);
        }
        for (k, v) in [("server", "corekv"), ("version", REDIS_VERSION)] {
            out::bulk(o, k.as_bytes());
            out::bulk(o, v.as_bytes());
        }
        out::bulk(o, b"proto");
        out::int(o, if resp3 { 3 } else { 2 });
        out::bulk(o, b"id");
        out::int(o, session.id as i64);
        for (k, v) in [("mode", "standalone"), ("role", "master")] {
            out::bulk(o, k.as_bytes());
            out::bulk(o, v.as_bytes());
        }
        out::bulk(o, b"modules");
        out::array(o, 0);
    });
    match auth {
        Some((user, password)) => Plan::Auth { user, password, then: Some((reply, resp3)) },
        None => Plan::Hello(reply, resp3),
    }
}

/// The Redis version whose string-command behaviour this node follows; reported where
/// clients look for one (HELLO, INFO `redis_version`).
pub const REDIS_VERSION: &str = "7.0.0";

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO name...`.
fn command(args: &[Bytes]) -> Plan {
    let entry = |o: &mut Vec<u8>, name: &str, arity: i64| {
        out::array(o, 6);
        out::bulk(o, name.as_bytes());
        out::int(o, arity);
        out::array(o, 0);
        let (first, last, step) = match key_layout(name) {
            Some((many, step, _)) => (1, if many { -1 } else { 1 }, step as i64),
            None => (0, 0, 0),
        };
        out::int(o, first);
        out::int(o, last);
        out::int(o, step);
    };
    match args.get(1).map(|a| lower(a)).as_deref() {
        None => Plan::Reply(out::with(|o| {
            out::array(o, COMMANDS.len());
            for (name, arity) in COMMANDS {
                entry(o, name, *arity);
            }
        })),
        Some("count") => Plan::Reply(out::with(|o| out::int(o, COMMANDS.len() as i64))),
        // No documentation to offer: an empty map (redis-cli then shows no hints).
        Some("docs") => Plan::Reply(out::with(|o| out::array(o, 0))),
        Some("info") => Plan::Reply(out::with(|o| {
            out::array(o, args.len() - 2);
            for a in &args[2..] {
                let name = lower(a);
                match COMMANDS.iter().find(|(n, _)| *n == name) {
                    Some((n, arity)) => entry(o, n, *arity),
                    None => out::nil(o),
                }
            }
        })),
        Some(other) => reply_error(&format!("ERR unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// `CLIENT SETNAME | GETNAME | ID | INFO | SETINFO`.
fn client(args: &[Bytes], session: &mut Session) -> Plan {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                return reply_error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            session.name = (!args[2].is_empty()).then(|| args[2].clone());
            Plan::Reply(out::with(out::ok))
        }
        ("getname", 2) => Plan::Reply(out::with(|o| match &session.name {
            Some(n) => out::bulk(o, n),
            None => out::nil(o),
        })),
        ("id", 2) => Plan::Reply(out::with(|o| out::int(o, session.id as i64))),
        ("info", 2) => {
            let name = session.name.as_ref().map(|n| lossy(n)).unwrap_or_default();
            let line = format!(
                "id={} addr={} name={} db=0 cmd=client|info resp={}\n",
                session.id,
                session.addr,
                name,
                if session.resp3 { 3 } else { 2 }
            );
            Plan::Reply(out::with(|o| out::bulk(o, line.as_bytes())))
        }
        // Client libraries announce themselves (redis-py does on connect).
        ("setinfo", 4) => Plan::Reply(out::with(out::ok)),
        _ => reply_error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            lossy(&args[1])
        )),
    }
}

/// Renders the native `reply` as Redis would answer the command.
pub fn render(how: Render, reply: Reply, o: &mut Vec<u8>) {
    let value = |r: &Reply| match r {
        Reply::Value { value, .. } => Some(value.clone()),
        _ => None,
    };
    // An error inside a batch (a failed log, a failed read) is the command's error, as Redis
    // would report a failed write, not a count or a nil.
    let unexpected = |r: &Reply| matches!(r, Reply::Error(e) if !e.code.is_miss());
    if let Reply::Batch(replies) = &reply
        && let Some(failed) = replies.iter().find(|r| unexpected(r))
    {
        return out::native_error(o, failed);
    }
    if unexpected(&reply) {
        return out::native_error(o, &reply);
    }
    match (how, reply) {
        (Render::Bulk, r) => match value(&r) {
            Some(v) => out::bulk(o, &v),
            None => out::nil(o),
        },
        (Render::SetOk, Reply::Written { .. }) => out::ok(o),
        (Render::SetOk, _) => out::nil(o),
        (Render::Bool, Reply::Written { .. }) => out::int(o, 1),
        (Render::Bool, _) => out::int(o, 0),
        // The batch-wide check above answered a failed write already.
        (Render::OldValue, Reply::Batch(replies)) => match replies.first().and_then(value) {
            Some(v) => out::bulk(o, &v),
            None => out::nil(o),
        },
        (Render::Deleted, r) => out::int(o, count(&r, |r| matches!(r, Reply::Deleted { .. }))),
        (Render::Existing, r) => out::int(o, count(&r, |r| matches!(r, Reply::Value { .. }))),
        (Render::Values, Reply::Batch(replies)) => {
            out::array(o, replies.len());
            for r in &replies {
                match value(r) {
                    Some(v) => out::bulk(o, &v),
                    None => out::nil(o),
                }
            }
        }
        // Unconditional sets fail only with an unexpected error, answered above.
        (Render::AllOk, Reply::Batch(_)) => out::ok(o),
        (Render::Strlen, r) => out::int(o, value(&r).map_or(0, |v| v.len() as i64)),
        (Render::Range(start, end), r) => {
            let v = value(&r).unwrap_or_default();
            out::bulk(o, range(&v, start, end));
        }
        (Render::Ttl { ms }, Reply::Value { ttl_ms, .. }) => match ttl_ms {
            None => out::int(o, -1),
            Some(t) if ms => out::int(o, t as i64),
            Some(t) => out::int(o, (t as i64).saturating_add(500) / 1000),
        },
        (Render::Ttl { .. }, _) => out::int(o, -2),
        (Render::Type, Reply::Value { .. }) => out::simple(o, "string"),
        (Render::Type, _) => out::simple(o, "none"),
        (how, other) => {
            out::error(o, &format!("ERR unexpected reply {} for {how:?}", other.name()));
        }
    }
}

/// How many replies (of a batch, or the one reply) match.
fn count(reply: &Reply, hit: impl Fn(&Reply) -> bool) -> i64 {
    match reply {
        Reply::Batch(rs) => rs.iter().filter(|r| hit(r)).count() as i64,
        r => i64::from(hit(r)),
    }
}

/// `GETRANGE` on `v`: inclusive, negative offsets count from the end.
fn range(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    // Both counted from the end and in the wrong order: empty (Redis 7), before clamping.
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let (mut s, mut e) = (start, end);
    if s < 0 {
        s += len;
    }
    if e < 0 {
        e += len;
    }
    let s = s.max(0);
    let e = e.max(0).min(len - 1);
    if s > e {
        return &[];
    }
    &v[s as usize..=e as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command in the table has a plan: its name with enough arguments never reaches
    /// the "listed but not planned" fallback.
    #[test]
    fn every_listed_command_is_planned() {
        for (name, arity) in COMMANDS {
            let n = arity.unsigned_abs().max(2) as usize;
            let mut args = vec![Bytes::from(name.to_string())];
            args.extend(
                (1..n).map(|i| Bytes::from(if i == 1 { "k".into() } else { i.to_string() })),
            );
            let plan = plan(args, &mut Session::default(), &Limits::DEFAULT, 1_000);
            if let Plan::Reply(r) = plan {
                let text = String::from_utf8_lossy(&r).into_owned();
                assert!(!text.contains("not planned"), "{name}: {text}");
            }
        }
    }

    #[test]
    fn getrange_offsets() {
        let v = b"Hello";
        for (start, end, want) in [
            (0, 3, "Hell"),
            (-3, -1, "llo"),
            (0, -1, "Hello"),
            (10, 20, ""),
            (-100, 1, "He"),
            (-1, -3, ""),
            (3, 1, ""),
        ] {
            assert_eq!(range(v, start, end), want.as_bytes(), "{start} {end}");
        }
        assert_eq!(range(b"", 0, -1), b"");
    }
}
