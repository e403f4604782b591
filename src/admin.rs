//! The HTTP admin API (`--http-listen`): hyper's HTTP/1 server over glommio sockets, on every
//! core like the other listeners. Routes are in [`http`]; Prometheus text in [`prometheus`].
//!
//! hyper runs on glommio through a small adapter ([`Io`]) from futures-io to `hyper::rt`.
//! hyper gets no timer (glommio's is not `Send`), so it has no header-read timeout of its own:
//! a connection is closed when the node shuts down, and each request body is capped.

pub mod http;
pub mod prometheus;

use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::shard::Core;
use crate::shutdown::Shutdown;

/// A glommio socket as hyper's I/O.
struct Io(TcpStream);

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Safe code cannot hand hyper's uninitialised buffer to the socket: read through a
        // small buffer (the admin API is not on the hot path).
        let mut chunk = [0u8; 8192];
        let want = buf.remaining().min(chunk.len());
        match Pin::new(&mut self.0).poll_read(cx, &mut chunk[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&chunk[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Serves one HTTP connection (keep-alive) until the client closes or the node shuts down.
pub async fn serve(core: Rc<Core>, stream: TcpStream, shutdown: Rc<Shutdown>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(http::handle(&core, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(Io(stream), service);
    let served = async {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "http connection ended with an error");
        }
    };
    futures_lite::future::or(served, shutdown.wait()).await;
}
