//! The typed answers and per-call options of the high-level methods, shared by the async and
//! the blocking client, and the one place where a [`Reply`] becomes a typed result.
//!
//! Every reply of an unexpected kind (say, `Pong` to a `get`) is an [`Error::Protocol`]: the
//! server broke the protocol, and guessing would hide it.

use bytes::Bytes;
use corekv_schema::codec::{Condition, Reply, StatsInfo, TopologyInfo};

use crate::error::{Error, Result};

/// A value read by `get`, with its version for a later `cas_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub value: Bytes,
    /// Bumped by every write of the key; the `expected_version` of a compare-and-set.
    pub version: u64,
    /// Remaining time to live; `None` when the key does not expire.
    pub ttl_ms: Option<u64>,
}

/// Options of [`Client::set_with`](crate::Client::set_with). The default is a plain `set`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Time to live in milliseconds; 0 = never expires.
    pub ttl_ms: u64,
    /// Keep the key's current expiry and ignore `ttl_ms`.
    pub keep_ttl: bool,
    /// Write only if this holds; otherwise [`Error::ConditionFailed`].
    pub condition: Condition,
}

fn unexpected(op: &str, reply: &Reply) -> Error {
    Error::Protocol(format!("{op} was answered with a {} reply", reply.name()))
}

/// `get`: a miss is `Ok(None)`.
pub(crate) fn value(reply: Reply) -> Result<Option<Value>> {
    match reply {
        Reply::Value { value, version, ttl_ms } => Ok(Some(Value { value, version, ttl_ms })),
        Reply::Error(e) => match Error::from(e) {
            Error::NotFound => Ok(None),
            e => Err(e),
        },
        other => Err(unexpected("get", &other)),
    }
}

/// Writes (`set*`, `update`, `cas*`): the new version.
pub(crate) fn written(op: &str, reply: Reply) -> Result<u64> {
    match reply {
        Reply::Written { version } => Ok(version),
        Reply::Error(e) => Err(e.into()),
        other => Err(unexpected(op, &other)),
    }
}

/// `delete`: `false` when there was nothing to delete.
pub(crate) fn deleted(reply: Reply) -> Result<bool> {
    match reply {
        Reply::Deleted { .. } => Ok(true),
        Reply::Error(e) => match Error::from(e) {
            Error::NotFound => Ok(false),
            e => Err(e),
        },
        other => Err(unexpected("delete", &other)),
    }
}

/// `batch`: one reply per operation, in operation order.
pub(crate) fn batch(reply: Reply, ops_count: usize) -> Result<Vec<Reply>> {
    match reply {
        Reply::Batch(replies) if replies.len() == ops_count => Ok(replies),
        Reply::Batch(replies) => Err(Error::Protocol(format!(
            "batch of {ops_count} operations was answered with {} replies",
            replies.len()
        ))),
        Reply::Error(e) => Err(e.into()),
        other => Err(unexpected("batch", &other)),
    }
}

pub(crate) fn pong(reply: Reply) -> Result<()> {
    match reply {
        Reply::Pong { .. } => Ok(()),
        Reply::Error(e) => Err(e.into()),
        other => Err(unexpected("ping", &other)),
    }
}

pub(crate) fn topology(reply: Reply) -> Result<TopologyInfo> {
    match reply {
        Reply::Topology(info) => Ok(*info),
        Reply::Error(e) => Err(e.into()),
        other => Err(unexpected("topology", &other)),
    }
}

pub(crate) fn stats(reply: Reply) -> Result<StatsInfo> {
    match reply {
        Reply::Stats(info) => Ok(info),
        Reply::Error(e) => Err(e.into()),
        other => Err(unexpected("stats", &other)),
    }
}
