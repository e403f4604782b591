//! Graceful shutdown: one process-wide flag set by SIGINT/SIGTERM, one local notifier per core.
//!
//! The signal handler only sets an `AtomicBool` (async-signal-safe). Each core polls it on a
//! timer, a few times a second, which costs nothing on the request path, and then fires its
//! local [`Shutdown`]: listeners stop accepting, idle connections close, and connections that
//! hold parsed requests answer them first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_listener::Event;

/// How often a core looks at the process-wide flag.
pub const POLL_INTERVAL_MS: u64 = 20;

#[derive(Default)]
pub struct Shutdown {
    fired: std::cell::Cell<bool>,
    event: Event,
}

impl Shutdown {
    pub fn fire(&self) {
        self.fired.set(true);
        self.event.notify(usize::MAX);
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once [`Shutdown::fire`] has been called (at once if it already was).
    pub async fn wait(&self) {
        loop {
            if self.fired.get() {
                return;
            }
            let listener = self.event.listen();
            if self.fired.get() {
                return;
            }
            listener.await;
        }
    }
}

/// Fires `local` once `flag` is set; run as a task on each core.
pub async fn watch(flag: Arc<AtomicBool>, local: std::rc::Rc<Shutdown>) {
    while !flag.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    local.fire();
}
