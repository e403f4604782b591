//! Client-facing sockets: accepting on the shared and per-core ports, and serving connections.
//!
//! Every core accepts on the shared port (SO_REUSEPORT: the kernel spreads connections over
//! cores) and, with `--shard-ports`, on its own port so shard-aware clients skip the
//! cross-core hop. `net` reaches data only through [`crate::shard::Core`].

pub mod connection;
pub mod resp;

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::TcpListener;

use crate::shard::Core;
use crate::shutdown::Shutdown;

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Resp,
    Http,
    /// Links from other nodes of the cluster.
    Peer,
}

/// Accepts until shutdown, spawning one task per connection on this core.
pub async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    protocol: Protocol,
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
                let (core, shutdown) = (core.clone(), shutdown.clone());
                match protocol {
                    Protocol::Native => {
                        glommio::spawn_local(connection::serve(core, stream, shutdown)).detach();
                    }
                    Protocol::Resp => {
                        glommio::spawn_local(resp::serve(core, stream, shutdown)).detach();
                    }
                    Protocol::Peer => {
                        let serve = crate::cluster::transport::serve(core, stream, shutdown);
                        glommio::spawn_local(serve).detach();
                    }
                    Protocol::Http => {
                        let serve = crate::admin::serve(core, stream, shutdown);
                        glommio::spawn_local(serve).detach();
                    }
                }
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(core = core.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
