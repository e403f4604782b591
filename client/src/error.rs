//! The SDK's one error type, shaped by what the caller does next.
//!
//! Three families, each with its own next step:
//!
//! - **The server answered** ([`Error::NotFound`], [`Error::ConditionFailed`], [`Error::Server`]):
//!   the request reached a node and was *not* applied — except `OutcomeUnknown`, a cluster
//!   write whose leader was lost before it learned the outcome. One variant per [`ErrorCode`],
//!   the two that callers branch on every day lifted out with their data.
//! - **The transport failed** ([`Error::Timeout`], [`Error::Io`], [`Error::Closed`],
//!   [`Error::Protocol`]): the outcome is *unknown*; the request may or may not have been applied.
//!   [`Error::Connect`] is the exception: nothing was sent, so anything may be resent.
//! - **The caller misused the SDK** ([`Error::RequestTooLarge`], [`Error::Usage`]): retrying the
//!   same call fails the same way; fix the call or the configuration.
//!
//! Retry guidance lives in [`Error::is_retryable`] and [`Error::may_have_applied`].

use std::net::SocketAddr;

use corekv_schema::codec::{ErrorCode, Reply, WireError};

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist (or has expired). Typed methods turn this into `Ok(None)` or
    /// `Ok(false)` where absence is an ordinary answer.
    #[error("key not found")]
    NotFound,

    /// A conditional write (`set_if_absent`, `update`, `cas`, `cas_version`, a
    /// [`Condition`](corekv_schema::codec::Condition)) did not hold. Nothing was written.
    /// `current_version` is the key's version now, 0 when the key is absent: read it back, decide,
    /// try again.
    #[error("condition failed (current version {current_version})")]
    ConditionFailed { current_version: u64 },

    /// Any other typed refusal by the server: `TooLarge`, `BadRequest`, `Overloaded`,
    /// `WrongNode`, `ShuttingDown`, `Unavailable`, `Unauthorized`, `Internal`: the request was
    /// not applied. And `OutcomeUnknown`: a cluster write that may or may not have been applied
    /// (see [`Error::may_have_applied`]).
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },

    /// No answer within `request_timeout_ms`. The request may still be applied later.
    #[error("no response within {after_ms} ms")]
    Timeout { after_ms: u64 },

    /// Opening a TCP connection failed or took longer than `connect_timeout_ms` (kind
    /// `TimedOut`). Nothing was sent on it.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing the connection failed. The connection is dropped and re-opened on the
    /// next call; requests that were in flight on it have unknown outcomes.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// The server sent something that is not a well-formed answer to the request in front of the
    /// queue (bad frame, id mismatch, reply of the wrong kind). The connection is dropped.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The connection closed (server hung up) before this request was answered.
    #[error("connection closed")]
    Closed,

    /// Refused locally before sending: the encoded request exceeds `frame_bytes_max`. A node would
    /// close the whole connection on such a frame, failing every pipelined neighbour with it.
    #[error("request frame of {frame_bytes} bytes exceeds frame_bytes_max {frame_bytes_max}")]
    RequestTooLarge { frame_bytes: usize, frame_bytes_max: usize },

    /// The SDK was used in a way that cannot work: an invalid
    /// [`ClientConfig`](crate::ClientConfig), or the blocking client called from inside a tokio
    /// runtime.
    #[error("usage error: {0}")]
    Usage(String),
}

impl Error {
    /// True when sending the same request again can succeed: the failure was transient
    /// (timeout, I/O, closed connection, failed connect, or the server said `Overloaded`,
    /// `ShuttingDown`, `Unavailable`, `WrongNode` or `OutcomeUnknown`).
    ///
    /// For **reads** (`get`, `ping`, `topology`, `stats`) that is the whole story: retry.
    ///
    /// For **writes**, check [`Error::may_have_applied`] too. A timeout or a dropped connection
    /// does not prove the write was *not* applied, so a blind retry may apply it twice: harmless
    /// for a plain `set` of the same value (it does bump the version), wrong for `cas`, a
    /// conditional write, or a delete whose "not found" you act on. Resend a write only when
    /// `is_retryable() && !may_have_applied()`; otherwise read the key back first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Io(_) | Error::Closed | Error::Connect { .. } => true,
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::Overloaded
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Unavailable
                    | ErrorCode::WrongNode
                    | ErrorCode::OutcomeUnknown
            ),
            Error::NotFound
            | Error::ConditionFailed { .. }
            | Error::Protocol(_)
            | Error::RequestTooLarge { .. }
            | Error::Usage(_) => false,
        }
    }

    /// True when the request may have taken effect even though this call failed: the request
    /// left the client but no answer was read (timeout, I/O error, closed connection, garbled
    /// answer), or a cluster node said `OutcomeUnknown`. False for the other typed server
    /// answers (refused, not applied) and for errors raised before anything was sent.
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Io(_) | Error::Closed | Error::Protocol(_) => true,
            Error::Server { code, .. } => *code == ErrorCode::OutcomeUnknown,
            _ => false,
        }
    }

    /// The protocol error code this error corresponds to, if any ([`Error::RequestTooLarge`]
    /// maps to `TooLarge`, as the server would have answered).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::NotFound => Some(ErrorCode::NotFound),
            Error::ConditionFailed { .. } => Some(ErrorCode::ConditionFailed),
            Error::Server { code, .. } => Some(*code),
            Error::RequestTooLarge { .. } => Some(ErrorCode::TooLarge),
            Error::Timeout { .. }
            | Error::Connect { .. }
            | Error::Io(_)
            | Error::Protocol(_)
            | Error::Closed
            | Error::Usage(_) => None,
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e.code {
            ErrorCode::NotFound => Error::NotFound,
            ErrorCode::ConditionFailed => {
                Error::ConditionFailed { current_version: e.current_version }
            }
            code => Error::Server { code, message: e.message.into_owned() },
        }
    }
}

/// Turns a server error reply into `Err`, passing every other reply through. Handy on the
/// per-operation replies of a batch.
pub fn check(reply: Reply) -> Result<Reply> {
    match reply {
        Reply::Error(e) => Err(e.into()),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_map_one_to_one() {
        for code in ErrorCode::ALL {
            let err = Error::from(WireError { current_version: 7, ..WireError::new(code, "m") });
            assert_eq!(err.code(), Some(code));
            assert_eq!(err.may_have_applied(), code == ErrorCode::OutcomeUnknown, "{code}");
        }
        let err = Error::from(WireError {
            current_version: 7,
            ..WireError::new(ErrorCode::ConditionFailed, "")
        });
        assert!(matches!(err, Error::ConditionFailed { current_version: 7 }));
    }

    #[test]
    fn retry_guidance() {
        let timeout = Error::Timeout { after_ms: 5 };
        assert!(timeout.is_retryable() && timeout.may_have_applied());
        let connect = Error::Connect {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(connect.is_retryable() && !connect.may_have_applied());
        let overloaded = Error::Server { code: ErrorCode::Overloaded, message: String::new() };
        assert!(overloaded.is_retryable() && !overloaded.may_have_applied());
        assert!(!Error::ConditionFailed { current_version: 1 }.is_retryable());
        assert!(!Error::Protocol("x".into()).is_retryable());
    }
}
