//! Client-facing sockets: accepting on the shared and per-core ports, and serving connections.
//!
//! Every core accepts on the shared port (SO_REUSEPORT: the kernel spreads connections over
//! cores) and, with `--shard-ports`, on its own port so shard-aware clients skip the
//! cross-core hop. `net` reaches data only through [`crate::shard::Core`]. Which protocol a
//! listener speaks is the [`Serve`] function `node` hands it.

pub mod connection;
pub mod peer;
pub mod resp;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};

use crate::shard::Core;
use crate::shutdown::Shutdown;

/// Serves one accepted connection until it closes or the node shuts down.
pub type Serve = fn(Rc<Core>, TcpStream, Rc<Shutdown>) -> Pin<Box<dyn Future<Output = ()>>>;

/// Accepts until shutdown, spawning one task per connection on this core.
pub async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    serve: Serve,
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
                glommio::spawn_local(serve(core.clone(), stream, shutdown.clone())).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(core = core.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
