//! The routes of the HTTP admin API. Bodies and answers are JSON; values are UTF-8 strings,
//! or base64 with `"encoding": "base64"` (in a request, it applies to the key and every value;
//! in an answer, a value that is not UTF-8 comes back as base64 with that field set).
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/set` `{key, value, ttl?, ttl_ms?, encoding?}` | `{success, version}` |
//! | `GET /api/get/{key}` | `{key, value, ttl, ttl_ms, version, encoding}`, 404 when absent |
//! | `DELETE /api/delete/{key}` | `{success}`, 404 when absent |
//! | `POST /api/compare_and_set` `{key, old_value, new_value, ttl?}` | `{success, version}` |
//! | `GET /api/nodes/status` | this node: cores, keys, memory, disk, health |
//! | `GET /api/metrics` | throughput and latency percentiles per operation |
//! | `GET /api/replication/status` | replication is off on a single node |
//! | `DELETE /api/nodes/remove/{id}` | 202 and the plan; 404/409 with the reason |
//! | `GET /api/rebalance` | the membership operation: state, target epoch, progress |
//! | `POST /api/nodes/add` `{node_id, cluster_addr}` | 202 and the plan; 4xx with the reason |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz`, `GET /readyz` | 200 or 503 (no credentials needed) |
//! | `GET /api/users` | the users, as `ACL LIST` shows them (admin) |
//! | `PUT /api/users/{name}` `{rules}` | as `ACL SETUSER name rules...` (admin) |
//! | `DELETE /api/users/{name}` | as `ACL DELUSER` (admin) |
//!
//! Every route but the probes takes `Authorization: Bearer USER:PASSWORD` (or `Bearer
//! PASSWORD` for the default user; `Basic` too): 401 without valid credentials when the node
//! requires them, 403 when the user may not (keys are checked as on the other ports). A
//! request whose `Origin` is not its `Host`, or whose `Host` is a name not in
//! `--http-allowed-hosts`, gets 403: a web page cannot drive the API.
//!
//! Keys in paths are percent-encoded. Malformed JSON gets 400 with the parser's reason.

use base64::Engine as _;
use bytes::Bytes;
use corekv_schema::codec::{
    Consistency, CoreStats, Durability, ErrorCode, Expected, Op, Reply, SetOp, TopologyInfo,
    WireError,
};
use corekv_schema::frame::SizeError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::prometheus;
use crate::auth::{Access, DEFAULT_USER, Denied, User};
use crate::cluster::plan::{Plan, PlanState};
use crate::cluster::replica::{GroupStatus, Replicas};
use crate::cluster::{health, meta};
use crate::shard::metrics::{OPS, RESULTS, Snapshot, op_index, result_index, rss_bytes};
use crate::shard::{Core, Origin, membership, users};
use crate::time::now_ms;

type Answer = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_answer(status: StatusCode, body: Value) -> Answer {
    respond(status, "application/json", body.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json_answer(status, json!({ "success": false, "error": message.into() }))
}

/// Why a request is refused before it reaches the data: a status and a reason.
type Refusal = (StatusCode, String);

fn refused((status, reason): Refusal) -> Answer {
    error(status, reason)
}

/// The HTTP status for a native error.
fn status_of(e: &WireError) -> StatusCode {
    match e.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::ConditionFailed => StatusCode::CONFLICT,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub async fn handle(core: &Core, request: Request<Incoming>) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Probes need no credentials and tell nothing; everything else is someone's, from this
    // site.
    let user = match parts.as_slice() {
        ["healthz" | "readyz"] => None,
        _ => match same_site(core, &request).and_then(|()| caller(core, &request)) {
            Ok(user) => Some(user),
            Err(answer) => return *answer,
        },
    };
    if let Some(user) = &user
        && let Err(answer) = permitted(user, &method, &parts)
    {
        return *answer;
    }
    let may = |access: Access, key: &[u8]| match &user {
        Some(u) => u.may(access, Some(key)).map_err(forbidden),
        None => Ok(()),
    };
    match (&method, parts.as_slice()) {
        (&Method::GET, ["healthz"]) => health(core).await,
        (&Method::GET, ["readyz"]) => ready(core),
        (&Method::GET, ["api", "users"]) => users_list(core),
        (&Method::PUT, ["api", "users", name]) => match body_json(request, core).await {
            Ok(body) => user_set(core, name, &body).await,
            Err(refusal) => refused(refusal),
        },
        (&Method::DELETE, ["api", "users", name]) => user_delete(core, name).await,
        (&Method::GET, ["metrics"]) => match core.node_metrics().await {
            Ok(s) => {
                let mut text =
                    prometheus::render(&s, uptime_s(core), rss_bytes(), disk_free(core).0);
                if let Some(r) = core.cluster.as_ref()
                    && let Ok((groups, counters)) = core.cluster_status().await
                {
                    let data = groups.iter().filter(|g| g.partition < core.partitions);
                    let led = data.clone().filter(|g| g.leader == r.node).count();
                    prometheus::render_raft(&mut text, &counters, led, data.count());
                }
                let refused = core.node.clients_refused.load(std::sync::atomic::Ordering::Relaxed);
                text += "# HELP corekv_connections_refused_total Client connections refused \
                         at --max-connections.\n# TYPE corekv_connections_refused_total counter\n";
                text += &format!("corekv_connections_refused_total {refused}\n");
                respond(StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            Err(reply) => error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
        },
        (&Method::POST, ["api", "set"]) => match body_json(request, core).await {
            Ok(body) => match field(&body, "key").map(|k| may(Access::Write, &k)) {
                Ok(Err(answer)) => *answer,
                _ => set(core, &body).await,
            },
            Err(refusal) => refused(refusal),
        },
        (&Method::POST, ["api", "compare_and_set"]) => match body_json(request, core).await {
            Ok(body) => {
                let allowed = field(&body, "key")
                    .map(|k| may(Access::Read, &k).and_then(|()| may(Access::Write, &k)));
                match allowed {
                    Ok(Err(answer)) => *answer,
                    _ => compare_and_set(core, &body).await,
                }
            }
            Err(refusal) => refused(refusal),
        },
        (&Method::GET, ["api", "get", key]) => match percent_decode(key) {
            Some(key) => match may(Access::Read, &key) {
                Ok(()) => get(core, key).await,
                Err(answer) => *answer,
            },
            None => error(StatusCode::BAD_REQUEST, "the key is not validly percent-encoded"),
        },
        (&Method::DELETE, ["api", "delete", key]) => match percent_decode(key) {
            Some(key) => match may(Access::Write, &key) {
                Ok(()) => delete(core, key).await,
                Err(answer) => *answer,
            },
            None => error(StatusCode::BAD_REQUEST, "the key is not validly percent-encoded"),
        },
        (&Method::GET, ["api", "nodes", "status"]) => status(core).await,
        (&Method::GET, ["api", "metrics"]) => match core.node_metrics().await {
            Ok(s) => json_answer(StatusCode::OK, metrics_json(&s, uptime_s(core))),
            Err(reply) => error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
        },
        (&Method::GET, ["api", "replication", "status"]) if core.cluster.is_some() => {
            replication_status(core).await
        }
        (&Method::GET, ["api", "replication", "status"]) => json_answer(
            StatusCode::OK,
            json!({
                "replication": "off",
                "reason": "this node runs without a cluster; every key has one copy",
                "node_id": node_id(core),
            }),
        ),
        (&Method::POST, ["api", "nodes", "add"])
        | (&Method::DELETE, ["api", "nodes", "remove", _])
            if core.cluster.is_none() =>
        {
            error(StatusCode::CONFLICT, "this node runs without a cluster: it has no members")
        }
        (&Method::DELETE, ["api", "nodes", "remove", id]) => match id.parse::<u64>() {
            Ok(id) => remove_node(core, id).await,
            Err(_) => error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id")),
        },
        (&Method::GET, ["api", "rebalance"]) => rebalance(core).await,
        (&Method::POST, ["api", "nodes", "add"]) => match body_json(request, core).await {
            Ok(body) => add_node(core, &body).await,
            Err(refusal) => refused(refusal),
        },
        (_, ["healthz" | "readyz" | "metrics"])
        | (_, ["api", "set" | "compare_and_set" | "get" | "delete", ..])
        | (_, ["api", "nodes" | "metrics" | "replication", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    }
}

/// 401, with the scheme to use.
fn unauthenticated(why: &str) -> Answer {
    let mut answer = error(StatusCode::UNAUTHORIZED, why);
    if let Ok(v) = "Bearer realm=\"corekv\"".parse() {
        answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
    }
    answer
}

/// An answer that ends a request early (boxed: a whole response in every `Result`).
type Stop = Box<Answer>;

fn forbidden(denied: Denied) -> Stop {
    Box::new(match denied {
        Denied::NoAuth => unauthenticated("authentication required"),
        Denied::NoPerm(why) => error(StatusCode::FORBIDDEN, why),
    })
}

/// Who sent `request`: `Authorization: Bearer USER:PASSWORD` (or `Bearer PASSWORD` for the
/// default user, or `Basic`), else the default user when it needs no password.
fn caller(core: &Core, request: &Request<Incoming>) -> Result<User, Stop> {
    let registry = &core.node.users;
    let users = registry.get();
    let Some(header) = request.headers().get(hyper::header::AUTHORIZATION) else {
        return match users.auth_required() {
            true => {
                let why = "authentication required: Authorization: Bearer USER:PASSWORD";
                Err(Box::new(unauthenticated(why)))
            }
            false => Ok(users.users.get(DEFAULT_USER).cloned().unwrap_or_default()),
        };
    };
    let text = header.to_str().unwrap_or_default();
    let token = if let Some(t) = text.strip_prefix("Bearer ") {
        t.trim().to_string()
    } else if let Some(b) = text.strip_prefix("Basic ") {
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(b.trim()).unwrap_or_default();
        String::from_utf8_lossy(&decoded).into_owned()
    } else {
        return Err(Box::new(unauthenticated("use Authorization: Bearer USER:PASSWORD")));
    };
    let (name, password) = token.split_once(':').unwrap_or((DEFAULT_USER, &token));
    users.verify(name, password.as_bytes()).ok_or_else(|| {
        Box::new(unauthenticated("invalid username-password pair or user is disabled"))
    })
}

/// The access a route needs beyond its keys (those are checked with the request).
fn permitted(user: &User, method: &Method, parts: &[&str]) -> Result<(), Stop> {
    let admin = matches!(
        (method, parts),
        (&Method::POST, ["api", "nodes", "add"])
            | (&Method::DELETE, ["api", "nodes", "remove", _])
            | (_, ["api", "users", ..])
    );
    let access = match parts {
        _ if admin => Access::Admin,
        ["api", "set" | "compare_and_set" | "get" | "delete", ..] => return Ok(()),
        _ => Access::Read,
    };
    user.may(access, None).map_err(forbidden)
}

/// Refuses what a browser sends for another site: an `Origin` that is not this `Host`, and
/// a `Host` that names something else than this node (DNS rebinding), unless allowed.
fn same_site(core: &Core, request: &Request<Incoming>) -> Result<(), Stop> {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(hyper::header::HOST).unwrap_or_default();
    let name = host
        .rsplit_once(':')
        .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let literal =
        name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.is_empty();
    let allowed =
        core.node.http_allowed_hosts.iter().any(|h| h == "*" || h.eq_ignore_ascii_case(name));
    if !literal && !allowed {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {name:?} is not this node's: give it in --http-allowed-hosts (names are \
                 refused by default, so a web page cannot reach the API by DNS rebinding)"
            ),
        )));
    }
    if let Some(origin) = header(hyper::header::ORIGIN) {
        let from = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !from.eq_ignore_ascii_case(host) {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                format!("cross-site request refused: Origin {origin} is not {host}"),
            )));
        }
    }
    Ok(())
}

fn users_list(core: &Core) -> Answer {
    let users = core.node.users.get();
    let lines: Vec<String> = users.users.values().map(User::describe).collect();
    json_answer(StatusCode::OK, json!({ "users": lines }))
}

/// `PUT /api/users/{name}` with `{"rules": "on >secret ~app:* +@read"}` (or a list): as
/// `ACL SETUSER`.
async fn user_set(core: &Core, name: &str, body: &Value) -> Answer {
    let rules: Vec<String> = match body.get("rules") {
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).map(String::from).collect()
        }
        _ => {
            return error(StatusCode::BAD_REQUEST, "'rules' must be a string or a list of strings");
        }
    };
    let Some(core) = core.rc() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
    };
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    match users::change(&core, |u| u.set_user(name, &rules)).await {
        Ok(()) => json_answer(StatusCode::OK, json!({ "success": true })),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn user_delete(core: &Core, name: &str) -> Answer {
    let Some(core) = core.rc() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
    };
    match users::change(&core, |u| u.delete(&[name])).await {
        Ok(0) => error(StatusCode::NOT_FOUND, format!("no user {name}")),
        Ok(_) => json_answer(StatusCode::OK, json!({ "success": true })),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Reads a JSON object body, at most a frame's worth of bytes, within the partial-frame
/// timeout (a client that trickles a body does not hold the connection).
async fn body_json(request: Request<Incoming>, core: &Core) -> Result<Value, Refusal> {
    let limit = core.limits.frame_bytes_max;
    let timeout = std::time::Duration::from_millis(core.node.partial_frame_timeout_ms);
    let read = async { Some(Limited::new(request.into_body(), limit).collect().await) };
    let late = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    let bytes = match futures_lite::future::or(read, late).await {
        Some(Ok(collected)) => collected.to_bytes(),
        Some(Err(e)) => {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("body refused: {e}")));
        }
        None => {
            let why = format!("the body did not arrive within {} ms", timeout.as_millis());
            return Err((StatusCode::REQUEST_TIMEOUT, why));
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err((StatusCode::BAD_REQUEST, "the body must be a JSON object".into())),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))),
    }
}

/// A string field of `body`, decoded per the body's `encoding`.
fn field(body: &Value, name: &str) -> Result<Bytes, Refusal> {
    let Some(text) = body.get(name).and_then(Value::as_str) else {
        return Err((StatusCode::BAD_REQUEST, format!("'{name}' must be a string")));
    };
    match body.get("encoding").and_then(Value::as_str) {
        None | Some("utf8" | "utf-8") => Ok(Bytes::copy_from_slice(text.as_bytes())),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("'{name}' is not base64: {e}"))),
        Some(other) => {
            Err((StatusCode::BAD_REQUEST, format!("unknown encoding '{other}' (utf8 or base64)")))
        }
    }
}

/// `ttl` (seconds) or `ttl_ms`; 0 or absent: no expiry.
fn ttl_ms(body: &Value) -> Result<u64, Refusal> {
    let bad =
        |name: &str| (StatusCode::BAD_REQUEST, format!("'{name}' must be a non-negative integer"));
    match (body.get("ttl"), body.get("ttl_ms")) {
        (Some(_), Some(_)) => {
            Err((StatusCode::BAD_REQUEST, "give 'ttl' or 'ttl_ms', not both".into()))
        }
        (Some(v), None) if !v.is_null() => {
            v.as_u64().map(|s| s.saturating_mul(1000)).ok_or_else(|| bad("ttl"))
        }
        (None, Some(v)) if !v.is_null() => v.as_u64().ok_or_else(|| bad("ttl_ms")),
        _ => Ok(0),
    }
}

fn check_sizes(core: &Core, key: &[u8], value: &[u8]) -> Result<(), Refusal> {
    let l = &core.limits;
    l.check_key(key).and_then(|()| l.check_value(value)).map_err(|e| match e {
        SizeError::EmptyKey => (StatusCode::BAD_REQUEST, e.to_string()),
        _ => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    })
}

/// Runs one operation, counted in the metrics like one from any other protocol.
async fn run(core: &Core, op: Op) -> Reply {
    let (kind, started) = (op_index(&op), std::time::Instant::now());
    let reply = core
        .resolve(
            core.dispatch(op, Durability::Default, Consistency::Default, Origin::Client, now_ms())
                .await,
        )
        .await;
    core.metrics.record(kind, started, result_index(&reply));
    reply
}

async fn set(core: &Core, body: &Value) -> Answer {
    let parsed = (|| {
        let (key, value) = (field(body, "key")?, field(body, "value")?);
        check_sizes(core, &key, &value)?;
        Ok::<_, Refusal>((key, value, ttl_ms(body)?))
    })();
    let (key, value, ttl_ms) = match parsed {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    match run(core, Op::Set(SetOp { key, value, ttl_ms, ..SetOp::default() })).await {
        Reply::Written { version } => {
            json_answer(StatusCode::OK, json!({ "success": true, "version": version }))
        }
        other => failed(other),
    }
}

async fn compare_and_set(core: &Core, body: &Value) -> Answer {
    let parsed = (|| {
        let (key, old, new) =
            (field(body, "key")?, field(body, "old_value")?, field(body, "new_value")?);
        check_sizes(core, &key, &new)?;
        Ok::<_, Refusal>((key, old, new, ttl_ms(body)?))
    })();
    let (key, old, new, ttl_ms) = match parsed {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    let op = Op::Cas { key, expected: Expected::Value(old), new_value: new, ttl_ms };
    match run(core, op).await {
        Reply::Written { version } => {
            json_answer(StatusCode::OK, json!({ "success": true, "version": version }))
        }
        Reply::Error(e) if e.code == ErrorCode::ConditionFailed => json_answer(
            StatusCode::OK,
            json!({
                "success": false,
                "reason": "the current value is not old_value (or the key is absent)",
                "current_version": e.current_version,
            }),
        ),
        other => failed(other),
    }
}

/// A string for JSON: UTF-8 as is, anything else base64 (and the encoding says so).
fn text_or_base64(b: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(b), "base64"),
    }
}

async fn get(core: &Core, key: Bytes) -> Answer {
    match run(core, Op::Get { key: key.clone() }).await {
        Reply::Value { value, version, ttl_ms } => {
            let (value, value_encoding) = text_or_base64(&value);
            let (key, key_encoding) = text_or_base64(&key);
            let encoding = if value_encoding == "base64" || key_encoding == "base64" {
                "base64"
            } else {
                "utf8"
            };
            let (key, value) = if encoding == "base64" {
                let b = base64::engine::general_purpose::STANDARD;
                let raw_key = if key_encoding == "base64" { key } else { b.encode(key.as_bytes()) };
                let raw_value =
                    if value_encoding == "base64" { value } else { b.encode(value.as_bytes()) };
                (raw_key, raw_value)
            } else {
                (key, value)
            };
            json_answer(
                StatusCode::OK,
                json!({
                    "key": key,
                    "value": value,
                    "encoding": encoding,
                    "version": version,
                    "ttl": ttl_ms.map(|t| t.div_ceil(1000)),
                    "ttl_ms": ttl_ms,
                }),
            )
        }
        other => failed(other),
    }
}

async fn delete(core: &Core, key: Bytes) -> Answer {
    let op = Op::Delete { key, condition: corekv_schema::codec::Condition::Always };
    match run(core, op).await {
        Reply::Deleted { version } => {
            json_answer(StatusCode::OK, json!({ "success": true, "version": version }))
        }
        other => failed(other),
    }
}

fn node_id(core: &Core) -> String {
    core.node.topology.get().map(|t| t.node_id.clone()).unwrap_or_default()
}

fn uptime_s(core: &Core) -> f64 {
    core.node.started.elapsed().as_secs_f64()
}

/// The answer for a reply an operation did not expect: its error with the status the code
/// maps to, or a 500 naming what came instead.
fn failed(reply: Reply) -> Answer {
    match reply {
        Reply::Error(e) => error(status_of(&e), e.message.to_string()),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, reply_text(&other)),
    }
}

fn reply_text(reply: &Reply) -> String {
    match reply {
        Reply::Error(e) => e.message.to_string(),
        other => format!("unexpected reply {}", other.name()),
    }
}

/// (free, total) bytes of the data directory's filesystem.
fn disk_free(core: &Core) -> (u64, u64) {
    health::disk_space(&core.node.data_dir)
}

/// Log failures on any core, as "core N: why".
fn log_errors(cores: &[CoreStats]) -> Vec<String> {
    cores
        .iter()
        .filter(|c| !c.log_error.is_empty())
        .map(|c| format!("core {}: {}", c.core, c.log_error))
        .collect()
}

async fn health(core: &Core) -> Answer {
    match core.node_stats().await {
        Ok(s) => {
            let errors = log_errors(&s);
            if errors.is_empty() {
                json_answer(StatusCode::OK, json!({ "status": "ok" }))
            } else {
                json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "status": "degraded",
                        "reason": "writes are refused",
                        "errors": errors,
                    }),
                )
            }
        }
        Err(reply) => error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
    }
}

fn ready(core: &Core) -> Answer {
    if core.node.topology.get().is_some() {
        json_answer(StatusCode::OK, json!({ "status": "ready" }))
    } else {
        json_answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "starting" }))
    }
}

/// Cluster mode: this node's view of every partition it holds a replica of. Followers' lag
/// is known where this node leads (the leader tracks each follower's matched index).
async fn add_node(core: &Core, body: &Value) -> Answer {
    let Some(node) = body
        .get("node_id")
        .and_then(Value::as_u64)
        .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
    else {
        return error(StatusCode::BAD_REQUEST, "'node_id' must be an integer from 1 to 4294967295");
    };
    let Some(text) = body.get("cluster_addr").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "'cluster_addr' must be a string HOST:PORT");
    };
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(text).map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("'cluster_addr' {text:?} is not HOST:PORT"),
            );
        }
    };
    let Some(core) = core.rc() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
    };
    match membership::add(&core, node, addr).await {
        Ok(plan) => json_answer(StatusCode::ACCEPTED, plan_json(&plan, 0)),
        Err((status, why)) => {
            error(StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT), why)
        }
    }
}

async fn remove_node(core: &Core, id: u64) -> Answer {
    let Some(core) = core.rc() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
    };
    match membership::remove(&core, id).await {
        Ok(plan) => json_answer(StatusCode::ACCEPTED, plan_json(&plan, 0)),
        Err((status, why)) => {
            error(StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT), why)
        }
    }
}

/// A plan as `/api/rebalance` shows it; `done` partitions have reached its target.
fn plan_json(p: &Plan, done: usize) -> Value {
    let state = match p.state {
        PlanState::Running => "running",
        PlanState::Failed => "failed",
        PlanState::Done => "idle",
    };
    let moved =
        if p.state == PlanState::Done { p.moving } else { done.min(p.moving as usize) as u32 };
    json!({
        "state": state,
        "operation": p.operation.describe(),
        "plan": p.id,
        "target_epoch": p.id,
        "partitions_moved": moved,
        "partitions_total": p.moving,
        "partitions_done": done,
        "started_ms": p.started_ms,
        "finished_ms": p.finished_ms,
        "error": p.error,
    })
}

async fn rebalance(core: &Core) -> Answer {
    if core.cluster.is_none() {
        return error(StatusCode::NOT_FOUND, "not in cluster mode");
    }
    let seen = core.node.view.get();
    let (_, counters) = match core.cluster_status().await {
        Ok(got) => got,
        Err(reply) => return error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
    };
    let mut body = match &seen.plan {
        Some(p) => plan_json(p, seen.done.len()),
        None => {
            json!({"state": "idle", "operation": null, "plan": 0, "target_epoch": seen.map_version})
        }
    };
    body["map_epoch"] = json!(seen.map_version);
    body["members"] = json!(seen.members);
    // What this node streamed to followers since it started (every node reports its own).
    body["snapshots_sent_here"] = json!(counters.snapshots_sent);
    body["bytes_streamed_here"] = json!(counters.snapshot_bytes_sent);
    json_answer(StatusCode::OK, body)
}

/// The nodes of some replica ids.
fn nodes_of(replicas: &[u64]) -> Vec<u64> {
    replicas.iter().map(|r| crate::cluster::group::node_of(*r)).collect()
}

async fn replication_status(core: &Core) -> Answer {
    let Some(r) = core.cluster.as_ref() else {
        return error(StatusCode::NOT_FOUND, "not in cluster mode");
    };
    let (groups, counters) = match core.cluster_status().await {
        Ok(got) => got,
        Err(reply) => return error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
    };
    let group_json = |g: &GroupStatus| {
        let followers: Vec<Value> = g
            .matched
            .iter()
            .filter(|(id, _)| *id != r.node)
            .map(|(id, matched)| {
                let lag = g.commit.saturating_sub(*matched);
                json!({"node": id, "matched": matched, "lag": lag})
            })
            .collect();
        json!({
            "partition": g.partition,
            "replicas": g.replicas,
            // Replicas being added (sent their data, not voting yet), and while a membership
            // change is half done, the voters it replaces.
            "learners": nodes_of(&g.conf.learners),
            "outgoing": nodes_of(&g.conf.voters_outgoing),
            "leader": g.leader,
            "term": g.term,
            "commit": g.commit,
            "applied": g.applied,
            "role": if g.leader == r.node { "leader" } else { "follower" },
            "followers": followers,
        })
    };
    let (data, metadata): (Vec<GroupStatus>, Vec<GroupStatus>) =
        groups.into_iter().partition(|g| g.partition < core.partitions);
    let partitions: Vec<Value> = data.iter().map(group_json).collect();
    let metadata = metadata.first().map_or(Value::Null, group_json);
    let links = peer_links(core, r, "up");
    let commit_mean = counters.commit_us_sum.checked_div(counters.commits).unwrap_or(0);
    json_answer(
        StatusCode::OK,
        json!({
            "replication": "raft",
            "node": r.node,
            "replication_factor": r.config.replication_factor,
            "partitions_total": core.partitions,
            "links": links,
            "partitions": partitions,
            "metadata": metadata,
            "raft": {
                "proposals": counters.proposals,
                "proposals_failed": counters.proposals_failed,
                "leader_changes": counters.leader_changes,
                "elections_won": counters.elections_won,
                "snapshots_sent": counters.snapshots_sent,
                "snapshots_installed": counters.snapshots_installed,
                "read_indexes": counters.read_indexes,
                "commits": counters.commits,
                "commit_latency_us_mean": commit_mean,
            },
        }),
    )
}

async fn status(core: &Core) -> Answer {
    let cores = match core.node_stats().await {
        Ok(cores) => cores,
        Err(reply) => return error(StatusCode::SERVICE_UNAVAILABLE, reply_text(&reply)),
    };
    let sum = |f: fn(&CoreStats) -> u64| cores.iter().map(f).sum::<u64>();
    let (free, total) = disk_free(core);
    let errors = log_errors(&cores);
    let cluster = match core.cluster.as_ref() {
        None => Value::Null,
        Some(r) => cluster_nodes(core, r, &cores).await,
    };
    json_answer(
        StatusCode::OK,
        json!({
            "node_id": node_id(core),
            "cluster": cluster,
            "cores": core.cores,
            "uptime_s": uptime_s(core),
            "durability": core.node.durability,
            "keys": sum(|c| c.keys),
            "memory": {
                "resident_bytes": rss_bytes(),
                "cached_value_bytes": sum(|c| c.cached_bytes),
                "key_and_value_bytes": sum(|c| c.value_bytes),
            },
            "disk": {
                "data_dir": core.node.data_dir.display().to_string(),
                "log_bytes": sum(|c| c.log_disk_bytes),
                "live_bytes": sum(|c| c.log_live_bytes),
                "free_bytes": free,
                "total_bytes": total,
            },
            "connections": sum(|c| c.connections),
            "health": if errors.is_empty() { "ok" } else { "degraded" },
            "errors": errors,
        }),
    )
}

/// Each other node's cluster address and whether this core's link to it is up (as `field`).
fn peer_links(core: &Core, r: &Replicas, field: &str) -> Vec<Value> {
    let members = membership::members_now(core);
    let others = members.iter().filter(|(n, _)| *n != r.node);
    others.map(|(n, a)| json!({"node": n, "addr": a.to_string(), field: r.link_up(*n)})).collect()
}

/// The cluster section of `/api/nodes/status`: every node, this one from its own figures and
/// the others from their last heartbeat (up when heard within `health::DOWN_AFTER`).
async fn cluster_nodes(core: &Core, r: &Replicas, cores: &[CoreStats]) -> Value {
    let mine = core.node_report(cores).await;
    let topology = match core.rc() {
        Some(me) => match crate::shard::topology::topology(&me).await {
            Reply::Topology(t) => *t,
            _ => TopologyInfo::default(),
        },
        None => TopologyInfo::default(),
    };
    let mut nodes = Vec::new();
    for id in meta::replicas(&membership::members_now(core)) {
        let heard = if id == r.node {
            Some((std::time::Duration::ZERO, mine.clone()))
        } else {
            core.node.peers.last(id)
        };
        let mut entry = match heard {
            Some((ago, rep)) => json!({
                "health": health::health(&rep, ago),
                "last_heartbeat_ms": ago.as_millis() as u64,
                "uptime_s": rep.uptime_ms / 1000,
                "keys": rep.keys,
                "log_bytes": rep.log_bytes,
                "disk_free_bytes": rep.disk_free_bytes,
                "disk_total_bytes": rep.disk_total_bytes,
                "replicas_held": rep.replicas_held,
                "partitions_led": rep.partitions_led,
                "errors": if rep.log_error.is_empty() { vec![] } else { vec![rep.log_error] },
            }),
            None => json!({ "health": "down", "last_heartbeat_ms": Value::Null }),
        };
        let addresses = topology.node(id).cloned().unwrap_or_default();
        entry["node"] = json!(id);
        entry["this_node"] = json!(id == r.node);
        entry["native"] = json!(addresses.native);
        entry["resp"] = json!(addresses.resp);
        entry["http"] = json!(addresses.http);
        if id != r.node {
            entry["link_up"] = json!(r.link_up(id));
        }
        nodes.push(entry);
    }
    // Kept for scripts written against the first cluster release: link state per peer.
    let peers = peer_links(core, r, "link_up");
    json!({
        "node": r.node,
        "epoch": topology.epoch,
        "replicas_held": mine.replicas_held,
        "partitions_led": mine.partitions_led,
        "nodes": nodes,
        "peers": peers,
    })
}

fn metrics_json(s: &Snapshot, uptime_s: f64) -> Value {
    let mut ops = serde_json::Map::new();
    for (i, op) in OPS.iter().enumerate() {
        let h = &s.latency_us[i];
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        let mut entry = json!({
            "count": h.len(),
            "ops_per_sec": h.len() as f64 / uptime_s.max(1e-9),
            "p50_us": q(0.5),
            "p90_us": q(0.9),
            "p99_us": q(0.99),
            "p999_us": q(0.999),
            "max_us": h.max(),
        });
        for (j, result) in RESULTS.iter().enumerate() {
            entry[*result] = json!(s.results[i][j]);
        }
        ops.insert(op.to_string(), entry);
    }
    let f = &s.fsync_us;
    json!({
        "uptime_s": uptime_s,
        "operations": ops,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "log": {
            "fsyncs": f.len(),
            "fsync_p50_us": if f.is_empty() { 0 } else { f.value_at_quantile(0.5) },
            "fsync_p99_us": if f.is_empty() { 0 } else { f.value_at_quantile(0.99) },
            "records_per_sync_mean": s.batch_records.mean(),
        },
    })
}

/// Decodes `%XX` escapes (and nothing else) into bytes.
fn percent_decode(s: &str) -> Option<Bytes> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc").unwrap(), Bytes::from_static(b"a b/c"));
        assert_eq!(percent_decode("%00%ff").unwrap(), Bytes::from_static(b"\0\xff"));
        assert!(percent_decode("%2").is_none() && percent_decode("%zz").is_none());
    }
}
