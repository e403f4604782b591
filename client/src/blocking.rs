//! The blocking client: the async [`crate::Client`] driven by a private tokio runtime.
//!
//! [`Client`] owns a multi-threaded runtime with **one** worker thread (named
//! `corekv-client`), which runs the connections' reader and writer tasks between calls; each
//! method `block_on`s the matching async method. All pooling, pipelining, routing, timeouts and
//! error mapping are therefore the async client's. Any number of threads may share one
//! `Client` (it is `Clone`, `Send` and `Sync`): their calls are pipelined on the same
//! connections.
//!
//! It must not be called from inside a tokio runtime, where blocking the thread would stall
//! other tasks (and tokio forbids nested `block_on`). There every method returns
//! [`Error::Usage`] instead of blocking; use the async client. This includes `spawn_blocking`
//! threads, which tokio cannot tell apart cheaply. Dropping the last clone inside a runtime is
//! allowed: the runtime is then shut down in the background.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use corekv_schema::codec::{Consistency, Durability, Op, Reply, StatsInfo, TopologyInfo};
use tokio::net::ToSocketAddrs;
use tokio::runtime::Runtime;

use crate::aio;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::ops::{SetOptions, Value};

/// The runtime, shut down without blocking when the last clone is dropped inside another
/// runtime (where a blocking shutdown would panic).
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            runtime.shutdown_background();
        }
    }
}

fn refuse_inside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Usage(
            "the blocking client was called from inside a tokio runtime; \
             use the async corekv_client::Client there"
                .into(),
        ));
    }
    Ok(())
}

/// The blocking corekv client. Same methods as [`crate::Client`], without `.await`.
#[derive(Clone)]
pub struct Client {
    inner: aio::Client,
    // Declared last so it is dropped after the connections it runs.
    runtime: Arc<OwnedRuntime>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("blocking::Client").field(&self.inner).finish()
    }
}

impl Client {
    /// Starts the client's runtime and connects; see [`crate::Client::connect`].
    pub fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client> {
        refuse_inside_runtime()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("corekv-client")
            .enable_all()
            .build()?;
        let inner = runtime.block_on(aio::Client::connect(addr, config))?;
        Ok(Client { inner, runtime: Arc::new(OwnedRuntime(Some(runtime))) })
    }

    fn run<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        refuse_inside_runtime()?;
        match &self.runtime.0 {
            Some(runtime) => runtime.block_on(call),
            None => Err(Error::Closed),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        self.inner.config()
    }

    pub fn is_shard_aware(&self) -> bool {
        self.inner.is_shard_aware()
    }

    /// See [`crate::Client::cluster_epoch`].
    pub fn cluster_epoch(&self) -> Option<u64> {
        self.inner.cluster_epoch()
    }

    /// See [`crate::Client::with_durability`].
    pub fn with_durability(&self, durability: Durability) -> Client {
        Client { inner: self.inner.with_durability(durability), runtime: self.runtime.clone() }
    }

    /// See [`crate::Client::with_consistency`].
    pub fn with_consistency(&self, consistency: Consistency) -> Client {
        Client { inner: self.inner.with_consistency(consistency), runtime: self.runtime.clone() }
    }

    /// See [`crate::Client::request`].
    pub fn request(&self, op: Op) -> Result<Reply> {
        self.run(self.inner.request(op))
    }

    /// See [`crate::Client::get`].
    pub fn get(&self, key: impl Into<Bytes>) -> Result<Option<Value>> {
        self.run(self.inner.get(key))
    }

    /// See [`crate::Client::set`].
    pub fn set(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.run(self.inner.set(key, value))
    }

    /// See [`crate::Client::set_with`].
    pub fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<u64> {
        self.run(self.inner.set_with(key, value, options))
    }

    /// See [`crate::Client::set_if_absent`].
    pub fn set_if_absent(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.run(self.inner.set_if_absent(key, value))
    }

    /// See [`crate::Client::update`].
    pub fn update(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.run(self.inner.update(key, value))
    }

    /// See [`crate::Client::delete`].
    pub fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        self.run(self.inner.delete(key))
    }

    /// See [`crate::Client::cas`].
    pub fn cas(
        &self,
        key: impl Into<Bytes>,
        expected_value: impl Into<Bytes>,
        new_value: impl Into<Bytes>,
    ) -> Result<u64> {
        self.run(self.inner.cas(key, expected_value, new_value))
    }

    /// See [`crate::Client::cas_version`].
    pub fn cas_version(
        &self,
        key: impl Into<Bytes>,
        expected_version: u64,
        new_value: impl Into<Bytes>,
    ) -> Result<u64> {
        self.run(self.inner.cas_version(key, expected_version, new_value))
    }

    /// See [`crate::Client::batch`].
    pub fn batch(&self, ops: Vec<Op>) -> Result<Vec<Reply>> {
        self.run(self.inner.batch(ops))
    }

    /// See [`crate::Client::ping`].
    pub fn ping(&self) -> Result<()> {
        self.run(self.inner.ping())
    }

    /// See [`crate::Client::topology`].
    pub fn topology(&self) -> Result<TopologyInfo> {
        self.run(self.inner.topology())
    }

    /// See [`crate::Client::stats`].
    pub fn stats(&self) -> Result<StatsInfo> {
        self.run(self.inner.stats())
    }
}
