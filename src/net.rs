//! Client-facing sockets: accepting on the shared and per-core ports, and serving connections.
//!
//! Every core accepts on the shared port (SO_REUSEPORT: the kernel spreads connections over
//! cores) and, with `--shard-ports`, on its own port so shard-aware clients skip the
//! cross-core hop. `net` reaches data only through [`crate::shard::Core`]. Which protocol a
//! listener speaks is the [`Serve`] function `node` hands it; with TLS on the port, the
//! handshake runs in the connection's own task before the protocol sees a byte.

pub mod connection;
pub mod peer;
pub mod resp;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::TcpListener;
use rustls::ServerConfig;

use crate::shard::Core;
use crate::shutdown::Shutdown;
use crate::tls::{Reloading, Stream};

/// Serves one accepted connection until it closes or the node shuts down.
pub type Serve = fn(Rc<Core>, Stream, Rc<Shutdown>) -> Pin<Box<dyn Future<Output = ()>>>;

/// Accepts until shutdown, spawning one task per connection on this core. With `tls`, a
/// connection that does not complete its handshake within the partial-frame timeout is
/// closed (logged at debug level) and never reaches `serve`.
pub async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    serve: Serve,
    tls: Option<Rc<Reloading<ServerConfig>>>,
    shutdown: Rc<Shutdown>,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                let Some(tls) = &tls else {
                    let served = serve(core.clone(), Stream::Plain(stream), shutdown.clone());
                    glommio::spawn_local(served).detach();
                    continue;
                };
                let acceptor = futures_rustls::TlsAcceptor::from(tls.get());
                let (core, shutdown) = (core.clone(), shutdown.clone());
                glommio::spawn_local(async move {
                    let limit = Duration::from_millis(core.node.partial_frame_timeout_ms);
                    let handshake = async { Some(acceptor.accept(stream).await) };
                    let late = async {
                        glommio::timer::sleep(limit).await;
                        None
                    };
                    match future::or(handshake, late).await {
                        Some(Ok(tls)) => serve(core, Stream::Server(Box::new(tls)), shutdown).await,
                        Some(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        None => tracing::debug!("TLS handshake timed out"),
                    }
                })
                .detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(core = core.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
