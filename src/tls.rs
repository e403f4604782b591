//! TLS for every port: certificates and keys read from PEM files, the server side of the
//! client ports, the mutual TLS of node links (a node's certificate must name it:
//! `node-<id>`), reloading on SIGHUP, and [`Stream`], a socket with or without TLS.
//!
//! rustls with the ring provider over glommio's futures-io sockets (futures-rustls). Each
//! core holds its own configurations ([`Reloading`]) and rebuilds them when the process-wide
//! reload generation moves, so a handshake never takes a lock shared with other cores.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WantsClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, WantsVerifier,
};

/// The files of a port's certificate: `--tls-cert`, `--tls-key`, and with `--tls-client-ca`,
/// the CA that must have signed every client's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The files of node links: this node's certificate (naming `node-<id>`), its key, and the
/// CA every node's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

// rustls 0.23.48 deprecates ring's provider because it has no post-quantum key exchange;
// ring is the one this project chose (it builds with no cmake or C++ toolchain).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| at(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| at(&e))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable key: {e}", path.display()))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

impl ServerFiles {
    /// Reads the files and builds the configuration every handshake on the port uses.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| format!("{} with {}: {e}", self.cert.display(), self.key.display()))?;
        Ok(Arc::new(config))
    }
}

impl PeerFiles {
    /// The accepting side of node links: a certificate from the cluster's CA is required.
    pub fn server(&self) -> Result<Arc<ServerConfig>, String> {
        ServerFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: Some(self.ca.clone()),
        }
        .load()
    }

    /// The connecting side: the other node's certificate must come from the cluster's CA and
    /// name the node dialled; this node shows its own.
    pub fn client(&self) -> Result<Arc<ClientConfig>, String> {
        self.showing_own_cert(self.client_builder()?.with_webpki_verifier(self.ca_verifier()?))
    }

    /// The connecting side of a join: the member's id is not known yet, so any node's
    /// certificate from the cluster's CA will do (it is still checked to name a node).
    pub fn join_client(&self) -> Result<Arc<ClientConfig>, String> {
        let any_node = Arc::new(AnyNode(self.ca_verifier()?));
        let builder = self.client_builder()?.dangerous().with_custom_certificate_verifier(any_node);
        self.showing_own_cert(builder)
    }

    fn client_builder(&self) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, String> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
    }

    fn ca_verifier(&self) -> Result<Arc<WebPkiServerVerifier>, String> {
        WebPkiServerVerifier::builder_with_provider(read_roots(&self.ca)?, provider())
            .build()
            .map_err(|e| format!("{}: {e}", self.ca.display()))
    }

    fn showing_own_cert(
        &self,
        builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    ) -> Result<Arc<ClientConfig>, String> {
        let config =
            builder
                .with_client_auth_cert(read_certs(&self.cert)?, read_key(&self.key)?)
                .map_err(|e| format!("{} with {}: {e}", self.cert.display(), self.key.display()))?;
        Ok(Arc::new(config))
    }
}

/// Verifies a server certificate as any node's: the CA's check, for the node it names.
#[derive(Debug)]
struct AnyNode(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(node) = node_named(end_entity) else {
            return Err(rustls::Error::General("the certificate names no node-<id>".into()));
        };
        self.0.verify_server_cert(end_entity, intermediates, &node_name(node), ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The node a certificate names: its first DNS name `node-<id>`.
pub fn node_named(cert: &CertificateDer<'_>) -> Option<u64> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().find_map(|n| n.strip_prefix("node-")?.parse().ok())
}

/// The name a node's certificate carries (a DNS subject alternative name).
pub fn node_name(node: u64) -> ServerName<'static> {
    ServerName::try_from(format!("node-{node}")).expect("a valid DNS name")
}

/// Whether `cert` (already verified against the cluster's CA) names `node`.
pub fn names_node(cert: &CertificateDer<'_>, node: u64) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&node_name(node)).is_ok())
}

/// The process-wide reload generation: SIGHUP moves it, and every [`Reloading`] reads its
/// files again at its next use.
#[derive(Clone, Default)]
pub struct Reloads(Arc<AtomicU64>);

impl Reloads {
    /// Moves the generation on each SIGHUP, from a thread of its own.
    pub fn on_sighup(&self) -> io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let generation = self.0.clone();
        std::thread::Builder::new().name("corekv-sighup".into()).spawn(move || {
            for _ in signals.forever() {
                generation.fetch_add(1, Ordering::Relaxed);
                tracing::info!("SIGHUP: reading the TLS certificates and keys again");
            }
        })?;
        Ok(())
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One core's configuration of one kind (a port's, or a node link's), built from its files
/// and built again after a SIGHUP. A reload that fails keeps the configuration in use and
/// says why: a half-written certificate never takes a port down.
pub struct Reloading<T> {
    what: &'static str,
    load: Box<dyn Fn() -> Result<Arc<T>, String>>,
    current: RefCell<Arc<T>>,
    seen: Cell<u64>,
    reloads: Reloads,
}

impl<T> Reloading<T> {
    pub fn new(
        what: &'static str,
        reloads: &Reloads,
        load: impl Fn() -> Result<Arc<T>, String> + 'static,
    ) -> Result<Reloading<T>, String> {
        let first = load().map_err(|e| format!("{what}: {e}"))?;
        Ok(Reloading {
            what,
            load: Box::new(load),
            current: RefCell::new(first),
            seen: Cell::new(reloads.now()),
            reloads: reloads.clone(),
        })
    }

    /// Reads the files again if a SIGHUP came since the last look. Each core calls it on a
    /// timer ([`follow`]), so every core takes the files as they were at the signal, not at
    /// its next handshake (by then they may have changed again).
    pub fn refresh(&self) {
        let _ = self.get();
    }

    /// The configuration for the next handshake.
    pub fn get(&self) -> Arc<T> {
        let now = self.reloads.now();
        if now != self.seen.get() {
            self.seen.set(now);
            match (self.load)() {
                Ok(fresh) => *self.current.borrow_mut() = fresh,
                Err(e) => tracing::warn!(what = self.what, error = %e, "TLS reload failed; kept"),
            }
        }
        self.current.borrow().clone()
    }
}

/// Something [`follow`] keeps current.
pub trait Refresh {
    fn refresh(&self);
}

impl<T> Refresh for Reloading<T> {
    fn refresh(&self) {
        Reloading::refresh(self);
    }
}

/// How often a core looks for a SIGHUP.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Keeps one core's configurations current: a task for the life of the core.
pub async fn follow(configs: Vec<std::rc::Rc<dyn Refresh>>) {
    loop {
        glommio::timer::sleep(FOLLOW_EVERY).await;
        for c in &configs {
            c.refresh();
        }
    }
}

/// A connection: a plain socket, the server side of TLS (a client port, or a node link
/// accepted), or the client side (a node link dialled).
pub enum Stream {
    Plain(TcpStream),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }

    /// The certificate the other end showed (verified during the handshake), if any.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let certs = match self {
            Stream::Plain(_) => None,
            Stream::Server(s) => s.get_ref().1.peer_certificates(),
            Stream::Client(s) => s.get_ref().1.peer_certificates(),
        };
        certs.and_then(|c| c.first()).map(|c| c.clone().into_owned())
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Writes all of `bytes` and pushes them out: TLS holds written records until flushed.
pub async fn send_all(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    use futures_lite::AsyncWriteExt;
    stream.write_all(bytes).await?;
    stream.flush().await
}
