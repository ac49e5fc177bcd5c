//! A stop request (SIGTERM or SIGINT) seen in the middle of a pass (SPEC §6.4).
//!
//! Passes run synchronously inside the event loop, so the loop's own signal stream is only
//! read between passes. This flag is set from the signal handler itself (an atomic store, which
//! is async-signal-safe; `signal_hook::flag`) and read at the safe points of the apply layer:
//! between two profiles, inside supervisor waits, between removal polls. A pass that sees it
//! stops there: every slot is then either still under a hidden name or fully published, and the
//! next start finishes the rest. The event loop waits on [`Shutdown::wait`], which the signal
//! stream's task wakes through [`Shutdown::request`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared stop flag; clones see the same flag. Never set unless [`Shutdown::install`] ran or
/// [`Shutdown::request`] was called.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Shutdown {
    /// Has a stop been requested?
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Requests a stop and wakes [`Shutdown::wait`].
    pub fn request(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// Returns once a stop is requested (at once if it already was).
    pub async fn wait(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request between the two is not missed.
            notified.as_mut().enable();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }

    /// Sets the flag on SIGTERM and SIGINT from the signal handler itself, in addition to any
    /// other handler of those signals (the event loop's signal stream keeps working: the
    /// registry chains handlers).
    pub fn install(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, self.flag.clone())?;
        }
        Ok(())
    }
}
