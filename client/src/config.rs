//! Client configuration: every limit the SDK enforces, with its unit last in the name.
//!
//! One [`ClientConfig`] drives both the async and the blocking client. [`ClientConfig::validate`]
//! runs on `connect`, so a zero or absurd limit fails there as [`Error::Usage`] rather than as a
//! hang later.

use std::path::Path;
use std::sync::Arc;

use corekv_schema::codec::{Consistency, Durability};
use corekv_schema::frame::{Limits, PAYLOAD_BYTES_MIN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Largest `pool_size`: more TCP connections than this per address only costs the server.
pub const POOL_SIZE_MAX: usize = 256;

/// Largest `max_in_flight`: bounded by what a tokio semaphore can hold, with a wide margin.
pub const IN_FLIGHT_MAX: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time allowed for one TCP connect, including the lazy re-connect of a dead connection.
    pub connect_timeout_ms: u64,
    /// Time allowed for one request, from the call to its answer: waiting for a window slot,
    /// queueing, the round trip and decoding all count.
    pub request_timeout_ms: u64,
    /// TCP connections per address (the node's port, and each core's port when shard-aware).
    /// Requests are spread over them round-robin.
    pub pool_size: usize,
    /// Pipelining window: requests sent on one connection and not yet answered. A caller beyond
    /// it waits (back-pressure), which counts against its `request_timeout_ms`.
    pub max_in_flight: usize,
    /// Largest frame payload (excluding the 4-byte length prefix) read from the server or sent
    /// to it. Should match the node's `frame_bytes_max`.
    pub frame_bytes_max: usize,
    /// Ask the node for its topology on connect and send each single-key operation straight to
    /// the core that owns the key, on that core's own port. Falls back to the node's port when
    /// the node reports no per-core ports or places keys with a hash this SDK does not know.
    pub shard_aware: bool,
    /// Ask the node for its topology on connect and, when it is a cluster node, send each
    /// single-key operation to its partition's leader, following `WrongNode` answers and
    /// retrying what provably did not apply (see the `cluster` module). Off: every request
    /// goes to the node connected to, which forwards it.
    pub cluster_routing: bool,
    /// Durability requested for writes (`Default` = the node's mode).
    pub durability: Durability,
    /// Consistency requested for reads and writes (`Default` = the node's setting).
    pub consistency: Consistency,
    /// TLS to every node (`None`: plaintext). See [`Tls::from_pem_files`].
    pub tls: Option<Tls>,
    /// Who to be on a node that requires authentication (`--requirepass`, ACL users): every
    /// connection sends `Authenticate` first and fails with
    /// `Error::Server { code: ErrorCode::Unauthenticated, .. }` when refused. `None`: the
    /// default user without a password.
    pub credentials: Option<Credentials>,
}

/// A user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// The `default` user with `password` (a node's `--requirepass`).
    pub fn password(password: &str) -> Credentials {
        Credentials { user: "default".into(), password: password.into() }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// TLS settings: the CA that signed the nodes' certificates, and optionally this client's
/// own certificate (for nodes started with `--tls-client-ca`). A node is checked against the
/// address dialled (its certificate must name that IP address) unless `server_name` names
/// what to check instead, such as the DNS name in its certificate.
#[derive(Clone, Debug)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: Option<String>,
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for Tls {}

// rustls 0.23.48 deprecates ring's provider for its lack of post-quantum key exchange;
// ring is the project's choice (it builds without cmake).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca`; with `client`, shows that
    /// certificate chain and key (PEM files).
    pub fn from_pem_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Tls> {
        let bad = |path: &Path, e: &dyn std::fmt::Display| {
            Error::Usage(format!("TLS: {}: {e}", path.display()))
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(path, &e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(path, &e))?;
            if certs.is_empty() {
                return Err(bad(path, &"no CERTIFICATE in the file"));
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(ca)? {
            roots.add(cert).map_err(|e| bad(ca, &e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
                builder.with_client_auth_cert(certs(cert)?, key_der).map_err(|e| bad(cert, &e))?
            }
        };
        Ok(Tls { config: Arc::new(config), server_name: None })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            pool_size: 4,
            max_in_flight: 1_024,
            frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
            shard_aware: false,
            cluster_routing: true,
            durability: Durability::Default,
            consistency: Consistency::Default,
            tls: None,
            credentials: None,
        }
    }
}

impl ClientConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<()> {
        let usage = |what: String| Err(Error::Usage(what));
        if self.connect_timeout_ms == 0 {
            return usage("connect_timeout_ms must be positive".into());
        }
        if self.request_timeout_ms == 0 {
            return usage("request_timeout_ms must be positive".into());
        }
        if !(1..=POOL_SIZE_MAX).contains(&self.pool_size) {
            return usage(format!("pool_size {} is outside 1..={POOL_SIZE_MAX}", self.pool_size));
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return usage(format!(
                "max_in_flight {} is outside 1..={IN_FLIGHT_MAX}",
                self.max_in_flight
            ));
        }
        // The upper bound is what a u32 length prefix can announce.
        let frame_bytes = PAYLOAD_BYTES_MIN..=u32::MAX as usize;
        if !frame_bytes.contains(&self.frame_bytes_max) {
            return usage(format!(
                "frame_bytes_max {} is outside {frame_bytes:?}",
                self.frame_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_not() {
        assert!(ClientConfig::default().validate().is_ok());
        let bad = [
            ClientConfig { pool_size: 0, ..ClientConfig::default() },
            ClientConfig { max_in_flight: 0, ..ClientConfig::default() },
            ClientConfig { request_timeout_ms: 0, ..ClientConfig::default() },
            ClientConfig { frame_bytes_max: 2, ..ClientConfig::default() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(Error::Usage(_))), "{config:?}");
        }
    }
}
