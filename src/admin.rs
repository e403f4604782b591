//! The HTTP admin API (`--http-listen`): hyper's HTTP/1 server over glommio sockets, on every
//! core like the other listeners. Routes are in [`http`]; Prometheus text in [`prometheus`].
//!
//! hyper runs on glommio through a small adapter ([`Io`]) from futures-io to `hyper::rt`, and
//! a timer ([`LocalTimer`]) so that a client that sends a request's headers slower than
//! `--partial-frame-timeout-ms` is cut off, as on the other ports. Each request body is capped.

pub mod http;
pub mod prometheus;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::timer::TimerActionOnce;

use crate::shard::Core;
use crate::shutdown::Shutdown;
use crate::tls::Stream;

/// A glommio socket (with or without TLS) as hyper's I/O.
struct Io(Stream);

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

/// hyper's timer, on glommio's. hyper wants `Send + Sync` sleeps; glommio's timers belong to
/// one executor. So a sleep ([`Alarm`]) is a shared flag that a glommio timer action sets,
/// and the action itself stays in a per-thread table, cancelled when the sleep is dropped
/// (hyper drops most of them early: a header timeout per request). hyper creates and polls
/// its sleeps on the connection's own executor thread.
#[derive(Clone, Copy)]
struct LocalTimer;

thread_local! {
    static ALARMS: RefCell<HashMap<u64, TimerActionOnce<()>>> = RefCell::new(HashMap::new());
    static NEXT_ALARM: Cell<u64> = const { Cell::new(0) };
}

/// Whether the alarm went off, and who to wake when it does. Only ever touched from one
/// thread, so the mutex is never contended; it is what makes the sleep `Send + Sync`.
#[derive(Default)]
struct AlarmState {
    fired: bool,
    waker: Option<Waker>,
}

struct Alarm {
    id: u64,
    state: Arc<Mutex<AlarmState>>,
}

impl Alarm {
    fn new(after: Duration) -> Alarm {
        let id = NEXT_ALARM.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        let state = Arc::new(Mutex::new(AlarmState::default()));
        let fire = state.clone();
        let action = TimerActionOnce::do_in(after, async move {
            ALARMS.with(|a| a.borrow_mut().remove(&id));
            let mut s = fire.lock().unwrap_or_else(|e| e.into_inner());
            s.fired = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        ALARMS.with(|a| a.borrow_mut().insert(id, action));
        Alarm { id, state }
    }
}

impl Future for Alarm {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.fired {
            return Poll::Ready(());
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some(action) = ALARMS.with(|a| a.borrow_mut().remove(&self.id)) {
            action.destroy();
        }
    }
}

impl hyper::rt::Sleep for Alarm {}

impl hyper::rt::Timer for LocalTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Alarm::new(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Serves one HTTP connection (keep-alive) until the client closes or the node shuts down.
pub async fn serve(core: Rc<Core>, stream: Stream, shutdown: Rc<Shutdown>) {
    let Some(_gauge) = crate::shard::ConnectionGauge::new(core.clone()) else {
        let mut stream = stream;
        let body = r#"{"success":false,"error":"max number of clients reached"}"#;
        let refusal = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = crate::tls::send_all(&mut stream, refusal.as_bytes()).await;
        return;
    };
    let header_timeout = Duration::from_millis(core.node.partial_frame_timeout_ms);
    let service = hyper::service::service_fn(move |request| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(http::handle(&core, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(LocalTimer)
        .header_read_timeout(header_timeout)
        .serve_connection(Io(stream), service);
    let served = async {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "http connection ended with an error");
        }
    };
    futures_lite::future::or(served, shutdown.wait()).await;
}
