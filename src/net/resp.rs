//! One Redis connection (RESP2, or RESP3 after `HELLO 3`): the native connection's loop
//! (`connection.rs`) with Redis commands in and Redis replies out.
//!
//! Every complete command already buffered (up to `CONNECTION_BATCH_REQUESTS_MAX`) is planned
//! and dispatched in order: single-key and batch operations become slots (local ones applied
//! at once, remote ones forwarded and run concurrently); a read-modify-write command runs to
//! completion in its place, so the commands after it see its effect. Replies are then
//! rendered in order and written with one call. Bytes that are not RESP get
//! `-ERR Protocol error: ...` and the connection closes, as Redis does; a command left
//! half-sent for `partial_frame_timeout_ms` is answered the same way.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{
    Condition, Consistency, Durability, ErrorCode, Op, Reply, SetOp, StatsInfo,
};

use super::connection::{READ_CHUNK_BYTES, ReadOutcome, fill, flush, flush_full, send};
use crate::auth::{Access, Denied, Login, Principal};
use crate::config::CONNECTION_BATCH_REQUESTS_MAX;
use crate::resp::command::Acl;
use crate::resp::command::{self, Plan, Render, Scan, Session, StatsView};
use crate::resp::out;
use crate::resp::parse::{self, ProtocolError};
use crate::resp::rmw::{self, Rmw, Step};
use crate::shard::metrics::{OP_OTHER, OP_RMW, op_index, result_index, rss_bytes};
use crate::shard::{Core, Origin, ScanStep, Slot};
use crate::shutdown::Shutdown;
use crate::time::now_ms;
use crate::tls::Stream;

/// Client ids, unique in the process (CLIENT ID, HELLO).
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Longest inline command line (Redis's limit too).
const INLINE_BYTES_MAX: usize = 64 * 1024;
/// Attempts of a read-modify-write before giving up on a key that keeps changing.
const RMW_ATTEMPTS_MAX: usize = 1000;

/// A command on its way to a reply.
enum Pending {
    Ready(Vec<u8>),
    Slot(Slot, Render),
    Stats(Slot, StatsView),
}

/// A pending reply, whether it goes out in RESP3 (as of when the command was read), and the
/// operation kind and start time for metrics.
type Queued = (Pending, bool, usize, Instant);

pub async fn serve(core: Rc<Core>, mut stream: Stream, shutdown: Rc<Shutdown>) {
    let Some(_gauge) = crate::shard::ConnectionGauge::new(core.clone()) else {
        // Redis's words for it.
        let _ = crate::tls::send_all(&mut stream, b"-ERR max number of clients reached\r\n").await;
        return;
    };
    let limits = core.limits;
    let parse_limits = parse::Limits {
        bulk_bytes_max: limits.frame_bytes_max,
        // A key per argument, two for MSET, plus options.
        args_max: 2 * limits.batch_ops_max + 16,
        inline_bytes_max: INLINE_BYTES_MAX,
        command_bytes_max: limits.frame_bytes_max,
    };
    let mut session = Session {
        id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        addr: stream.tcp().peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        ..Session::default()
    };
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut pending: Vec<Queued> = Vec::with_capacity(64);
    let mut reply = Vec::new();
    let mut partial_since: Option<Instant> = None;
    let metrics = &core.metrics;
    let mut principal = Principal::connect(&core.node.users);
    loop {
        glommio::yield_if_needed().await;
        let mut close = false;
        while pending.len() < CONNECTION_BATCH_REQUESTS_MAX {
            let args = match parse::parse_command(&mut input, &parse_limits) {
                Ok(Some(args)) => args,
                Ok(None) => break,
                Err(ProtocolError(message)) => {
                    let reply =
                        out::with(|o| out::error(o, &format!("ERR Protocol error: {message}")));
                    pending.push((Pending::Ready(reply), session.resp3, OP_OTHER, Instant::now()));
                    close = true;
                    break;
                }
            };
            partial_since = None;
            if args.is_empty() {
                continue;
            }
            let now = now_ms();
            let started = Instant::now();
            let plan = command::plan(args, &mut session, &limits, now);
            if let Err(denied) = authorize(&core, &mut principal, &plan) {
                let reply = out::with(|o| out::error(o, &denied.message()));
                pending.push((Pending::Ready(reply), session.resp3, OP_OTHER, started));
                continue;
            }
            let (next, kind) = match plan {
                Plan::Reply(reply) => (Pending::Ready(reply), OP_OTHER),
                Plan::Hello(reply, resp3) => {
                    session.resp3 = resp3;
                    (Pending::Ready(reply), OP_OTHER)
                }
                Plan::Auth { user, password, then } => {
                    let name = String::from_utf8_lossy(&user);
                    let reply = match principal.authenticate(&core.node.users, &name, &password) {
                        Login::Accepted => match then {
                            Some((hello, resp3)) => {
                                session.resp3 = resp3;
                                hello
                            }
                            None => out::with(out::ok),
                        },
                        Login::Refused => out::with(|o| out::error(o, WRONGPASS)),
                        Login::TooMany(cap) => out::with(|o| {
                            let why = format!(
                                "ERR max number of connections reached for user {name} \
                                 (--max-connections-per-user {cap})"
                            );
                            out::error(o, &why)
                        }),
                    };
                    (Pending::Ready(reply), OP_OTHER)
                }
                Plan::Acl(acl) => {
                    (Pending::Ready(run_acl(&core, &mut principal, acl).await), OP_OTHER)
                }
                Plan::Op(op, render) => {
                    let kind = op_index(&op);
                    let slot = core
                        .dispatch(
                            op,
                            Durability::Default,
                            Consistency::Default,
                            Origin::Client,
                            now,
                        )
                        .await;
                    (Pending::Slot(slot, render), kind)
                }
                Plan::Rmw(key, rmw) => {
                    let reply = read_modify_write(&core, key, &rmw, limits.value_bytes_max).await;
                    (Pending::Ready(reply), OP_RMW)
                }
                Plan::Stats(view) => {
                    let slot = core
                        .dispatch(
                            Op::Stats,
                            Durability::Default,
                            Consistency::Default,
                            Origin::Client,
                            now,
                        )
                        .await;
                    (Pending::Stats(slot, view), OP_OTHER)
                }
                Plan::Flush => {
                    let reply = match core.flush_all().await {
                        Reply::AdminDone { .. } => out::with(out::ok),
                        other => out::with(|o| out::native_error(o, &other)),
                    };
                    (Pending::Ready(reply), OP_OTHER)
                }
                Plan::SetAllAbsent(sets) => {
                    let reply = match core.set_all_absent(sets).await {
                        Ok(set) => out::with(|o| out::int(o, i64::from(set))),
                        Err(other) => out::with(|o| out::native_error(o, &other)),
                    };
                    (Pending::Ready(reply), OP_OTHER)
                }
                Plan::Scan(scan) => (Pending::Ready(scan_step(&core, scan).await), OP_OTHER),
                Plan::Quit => {
                    let ok = Pending::Ready(out::with(out::ok));
                    pending.push((ok, session.resp3, OP_OTHER, started));
                    close = true;
                    break;
                }
            };
            pending.push((next, session.resp3, kind, started));
        }
        if !pending.is_empty() {
            for (p, resp3, kind, started) in pending.drain(..) {
                // RESP2 replies go straight into the output; RESP3 ones through a conversion.
                let into = if resp3 { &mut reply } else { &mut output };
                let result = match p {
                    Pending::Ready(r) => {
                        into.extend_from_slice(&r);
                        if r.first() == Some(&b'-') { 2 } else { 0 }
                    }
                    Pending::Slot(slot, render) => {
                        let native = core.resolve(slot).await;
                        let result = result_index(&native);
                        command::render(render, native, into);
                        result
                    }
                    Pending::Stats(slot, view) => {
                        let native = core.resolve(slot).await;
                        let result = result_index(&native);
                        render_stats(&core, &session, view, native, into);
                        result
                    }
                };
                metrics.record(kind, started, result);
                if resp3 {
                    out::to_resp3(&reply, &mut output);
                    reply.clear();
                }
                if !flush_full(&mut stream, &mut output, metrics).await {
                    return;
                }
            }
            if !flush(&mut stream, &mut output, metrics).await {
                return;
            }
            if close {
                return;
            }
            continue;
        }
        let timeout_ms = core.node.partial_frame_timeout_ms;
        let outcome =
            fill(&mut stream, &mut chunk, &mut input, &mut partial_since, timeout_ms, &shutdown)
                .await;
        match outcome {
            ReadOutcome::Data(n) => metrics.add_in(n),
            ReadOutcome::Closed => return,
            ReadOutcome::Shutdown if input.is_empty() => return,
            ReadOutcome::Shutdown | ReadOutcome::Stalled => {
                let message = if matches!(outcome, ReadOutcome::Shutdown) {
                    "ERR node is shutting down; the unfinished command was not run"
                } else {
                    "ERR Protocol error: command not completed in time"
                };
                send(&mut stream, &out::with(|o| out::error(o, message)), metrics).await;
                return;
            }
        }
    }
}

/// Runs a read-modify-write: read the key, compute, write on condition that the key still
/// has the version read; again from the read if it changed meanwhile.
async fn read_modify_write(core: &Core, key: Bytes, rmw: &Rmw, value_max: usize) -> Vec<u8> {
    for _ in 0..RMW_ATTEMPTS_MAX {
        let now = now_ms();
        let read = Op::Get { key: key.clone() };
        let (current, version) = match core
            .resolve(
                core.dispatch(read, Durability::Default, Consistency::Default, Origin::Client, now)
                    .await,
            )
            .await
        {
            Reply::Value { value, version, ttl_ms } => (Some((value, ttl_ms)), version),
            Reply::Error(e) if e.code == ErrorCode::NotFound => (None, 0),
            other => return out::with(|o| out::native_error(o, &other)),
        };
        let step = rmw::step(rmw, current.as_ref().map(|(v, t)| (v, *t)), now, value_max);
        let (write, reply) = match step {
            Step::Done(reply) => return reply,
            Step::Write { value, ttl, reply } => {
                let (ttl_ms, keep_ttl) = ttl.native(now);
                let condition = Condition::IfVersion(version);
                let set = SetOp { key: key.clone(), value, ttl_ms, keep_ttl, condition };
                (Op::Set(set), reply)
            }
            Step::Delete(reply) => {
                let delete =
                    Op::Delete { key: key.clone(), condition: Condition::IfVersion(version) };
                (delete, reply)
            }
        };
        match core
            .resolve(
                core.dispatch(
                    write,
                    Durability::Default,
                    Consistency::Default,
                    Origin::Client,
                    now,
                )
                .await,
            )
            .await
        {
            Reply::Written { .. } | Reply::Deleted { .. } => return reply,
            // Someone wrote the key in between: read it again.
            Reply::Error(e)
                if matches!(e.code, ErrorCode::ConditionFailed | ErrorCode::NotFound) => {}
            other => return out::with(|o| out::native_error(o, &other)),
        }
    }
    let message =
        format!("ERR the key changed {RMW_ATTEMPTS_MAX} times while this command ran; retry");
    out::with(|o| out::error(o, &message))
}

/// DBSIZE and INFO, from every core's stats.
fn render_stats(core: &Core, session: &Session, view: StatsView, reply: Reply, o: &mut Vec<u8>) {
    let stats = match reply {
        Reply::Stats(s) => s,
        other => return out::native_error(o, &other),
    };
    match view {
        StatsView::DbSize => out::int(o, stats.cores.iter().map(|c| c.keys).sum::<u64>() as i64),
        StatsView::Info(sections) => {
            let text = info(core, session, &stats, &sections);
            out::bulk(o, text.as_bytes());
        }
    }
}

/// The INFO text: `# Section` headers, `field:value` lines, CRLF line ends.
fn info(core: &Core, session: &Session, stats: &StatsInfo, sections: &[String]) -> String {
    let wanted = |name: &str| {
        sections.is_empty()
            || sections
                .iter()
                .any(|s| s == name || s == "all" || s == "everything" || s == "default")
    };
    let sum =
        |f: fn(&corekv_schema::codec::CoreStats) -> u64| -> u64 { stats.cores.iter().map(f).sum() };
    let mut text = String::new();
    let mut section = |name: &str, title: &str, fields: Vec<(&str, String)>| {
        if wanted(name) {
            if !text.is_empty() {
                text += "\r\n";
            }
            text += &format!("# {title}\r\n");
            for (k, v) in fields {
                text += &format!("{k}:{v}\r\n");
            }
        }
    };
    let rss = rss_bytes();
    section(
        "server",
        "Server",
        vec![
            ("redis_version", command::REDIS_VERSION.to_string()),
            ("corekv_version", env!("CARGO_PKG_VERSION").to_string()),
            ("redis_mode", "standalone".into()),
            ("os", std::env::consts::OS.into()),
            ("arch_bits", "64".into()),
            ("process_id", std::process::id().to_string()),
            ("uptime_in_seconds", (stats.uptime_ms / 1000).to_string()),
            ("cores", core.cores.to_string()),
        ],
    );
    section(
        "clients",
        "Clients",
        vec![
            ("connected_clients", sum(|c| c.connections).to_string()),
            ("client_id", session.id.to_string()),
        ],
    );
    section(
        "memory",
        "Memory",
        vec![
            ("used_memory", rss.to_string()),
            ("used_memory_human", format!("{:.2}M", rss as f64 / (1 << 20) as f64)),
            ("used_memory_rss", rss.to_string()),
            ("cached_value_bytes", sum(|c| c.cached_bytes).to_string()),
        ],
    );
    let log_error = stats.cores.iter().any(|c| !c.log_error.is_empty());
    section(
        "persistence",
        "Persistence",
        vec![
            ("loading", "0".into()),
            ("aof_enabled", u8::from(core.store.wal.is_some()).to_string()),
            ("aof_last_write_status", if log_error { "err" } else { "ok" }.into()),
            ("log_disk_bytes", sum(|c| c.log_disk_bytes).to_string()),
            ("log_live_bytes", sum(|c| c.log_live_bytes).to_string()),
            ("log_flushes", sum(|c| c.log_flushes).to_string()),
        ],
    );
    section(
        "stats",
        "Stats",
        vec![
            ("total_commands_processed", sum(|c| c.requests).to_string()),
            ("expired_keys", sum(|c| c.expired).to_string()),
            ("evicted_keys", "0".into()),
            ("forwarded_requests", sum(|c| c.forwarded_out).to_string()),
        ],
    );
    let keys = sum(|c| c.keys);
    let expires = sum(|c| c.ttl_keys);
    let db0 = if keys > 0 {
        vec![("db0", format!("keys={keys},expires={expires},avg_ttl=0"))]
    } else {
        Vec::new()
    };
    section("keyspace", "Keyspace", db0);
    text
}

/// Runs one SCAN call: the core the cursor names walks on from its position; when it is done
/// and fewer than COUNT keys were found, the next core starts, and so on. The reply is the
/// next cursor (0 when every core is done) and the keys.
async fn scan_step(core: &Core, scan: Scan) -> Vec<u8> {
    let Scan { core: mut target, mut position, count, pattern } = scan;
    if target >= core.cores {
        return out::with(|o| out::error(o, "ERR invalid cursor"));
    }
    let mut keys = Vec::new();
    let next = loop {
        let step = ScanStep { position, count: count - keys.len(), pattern: pattern.clone() };
        match core.scan(target, step).await {
            Err(reply) => return out::with(|o| out::native_error(o, &reply)),
            Ok((found, at)) => {
                keys.extend(found);
                match at {
                    // Stopped inside this core (enough keys, or enough positions looked at).
                    Some(at) => break Scan::cursor(target, at),
                    None if target + 1 == core.cores => break 0,
                    None => {
                        target += 1;
                        position = 0;
                        if keys.len() >= count {
                            break Scan::cursor(target, 0);
                        }
                    }
                }
            }
        }
    };
    out::with(|o| {
        out::array(o, 2);
        out::bulk(o, next.to_string().as_bytes());
        out::array(o, keys.len());
        for k in &keys {
            out::bulk(o, k);
        }
    })
}

/// Redis's answer to a wrong user or password (it does not say which).
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Whether this connection may run `plan`: NOAUTH before authenticating (AUTH and QUIT
/// excepted), NOPERM for what its user may not do.
fn authorize(core: &Core, principal: &mut Principal, plan: &Plan) -> Result<(), Denied> {
    if matches!(plan, Plan::Auth { .. } | Plan::Quit) {
        return Ok(());
    }
    let user = principal.user(&core.node.users)?;
    match plan {
        Plan::Op(op, _) => user.check(op),
        Plan::Rmw(key, _) => {
            user.may(Access::Read, Some(key))?;
            user.may(Access::Write, Some(key))
        }
        Plan::SetAllAbsent(sets) => {
            sets.iter().try_for_each(|s| user.may(Access::Write, Some(&s.key)))
        }
        Plan::Stats(_) => user.may(Access::Read, None),
        Plan::Flush => user.may(Access::Admin, None),
        Plan::Scan(_) if user.reads_every_key() => Ok(()),
        Plan::Scan(_) => Err(Denied::NoPerm(format!(
            "User {} has no permissions to run SCAN: it walks every key, so it needs read \
             access to all of them (~* or %R~*)",
            user.name
        ))),
        Plan::Acl(Acl::WhoAmI) | Plan::Reply(_) | Plan::Hello(..) | Plan::Auth { .. } => Ok(()),
        Plan::Quit => Ok(()),
        Plan::Acl(_) => user.may(Access::Admin, None),
    }
}

/// Runs an ACL command (already authorized) and renders its answer.
async fn run_acl(core: &Rc<Core>, principal: &mut Principal, acl: Acl) -> Vec<u8> {
    let changed = match acl {
        Acl::WhoAmI => return out::with(|o| out::bulk(o, principal.name.as_bytes())),
        Acl::List => {
            let users = core.node.users.get();
            return out::with(|o| {
                out::array(o, users.users.len());
                for u in users.users.values() {
                    out::bulk(o, u.describe().as_bytes());
                }
            });
        }
        Acl::SetUser(name, rules) => {
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            crate::shard::users::change(core, |users| users.set_user(&name, &rules))
                .await
                .map(|()| out::with(out::ok))
        }
        Acl::DelUser(names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            crate::shard::users::change(core, |users| users.delete(&names))
                .await
                .map(|n| out::with(|o| out::int(o, n as i64)))
        }
    };
    changed.unwrap_or_else(|e| out::with(|o| out::error(o, &e)))
}
