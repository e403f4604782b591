//! corekv client SDK: async (tokio) and blocking, pipelined, pooled, shard-aware.
//!
//! This crate owns everything between a typed call such as [`Client::get`] and the node's port:
//! encoding with the shared protocol crate (`corekv-schema`), pipelining many requests on each
//! connection, pooling connections, routing keys to the core that owns them, timeouts, and the
//! mapping of replies to [`Result`]s. It keeps no data and retries nothing on its own: what to
//! do after a failure is the caller's choice, guided by [`Error::is_retryable`] and
//! [`Error::may_have_applied`].
//!
//! - [`Client`] (module [`aio`]): the async client, built on [`Connection`].
//! - [`blocking::Client`]: the same methods without `.await`, on a private runtime.
//! - [`ClientConfig`]: every limit (timeouts in ms, pool size, pipelining window, frame size).
//!
//! ```no_run
//! use corekv_client::{Client, ClientConfig, Error};
//!
//! #[tokio::main]
//! async fn main() -> corekv_client::Result<()> {
//!     let config = ClientConfig {
//!         shard_aware: true,
//!         ..ClientConfig::default()
//!     };
//!     let client = Client::connect("127.0.0.1:7379", config).await?;
//!
//!     let version = client.set("user:{42}:name", "ada").await?;
//!     if let Some(found) = client.get("user:{42}:name").await? {
//!         assert_eq!(found.value, "ada");
//!         assert_eq!(found.version, version);
//!     }
//!     match client.cas_version("user:{42}:name", version, "ada l.").await {
//!         Ok(_new_version) => {}
//!         Err(Error::ConditionFailed { current_version }) => {
//!             eprintln!("lost the race; the key is now at version {current_version}");
//!         }
//!         Err(e) => return Err(e),
//!     }
//!     assert!(client.delete("user:{42}:name").await?);
//!     Ok(())
//! }
//! ```
//!
//! The blocking client, for code without an async runtime:
//!
//! ```no_run
//! use corekv_client::{blocking, ClientConfig};
//!
//! let client = blocking::Client::connect("127.0.0.1:7379", ClientConfig::default())?;
//! client.set("greeting", "hello")?;
//! let greeting = client.get("greeting")?.map(|found| found.value);
//! println!("{greeting:?}");
//! # Ok::<(), corekv_client::Error>(())
//! ```

pub mod aio;
pub mod blocking;
mod cluster;
mod config;
mod connection;
mod error;
mod ops;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use aio::Client;
pub use bytes::Bytes;
pub use config::{ClientConfig, Credentials, IN_FLIGHT_MAX, POOL_SIZE_MAX, Tls};
pub use connection::{Connection, WRITE_COALESCE_BYTES_MAX};
pub use corekv_schema::codec::{
    Condition, Consistency, CoreStats, Durability, ErrorCode, Expected, NodeAddress, Op,
    PartitionInfo, Reply, SetOp, StatsInfo, TopologyInfo, WireError,
};
pub use error::{Error, Result, check};
pub use ops::{SetOptions, Value};
