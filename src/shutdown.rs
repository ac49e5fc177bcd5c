//! A stop request (SIGTERM or SIGINT) seen in the middle of a pass (SPEC §6.4).
//!
//! Passes run synchronously inside the event loop, so the loop's own signal streams are only
//! read between passes. This flag is set from the signal handler itself (an atomic store, which
//! is async-signal-safe) and read at the safe points of the apply layer: between two profiles,
//! inside supervisor waits, between removal polls. A pass that sees it stops there: every slot
//! is then either still under a hidden name or fully published, and the next start finishes
//! the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared stop flag; clones see the same flag. Never set unless [`Shutdown::install`] ran or
/// [`Shutdown::request`] was called.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Has a stop been requested?
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Requests a stop (what the signal handler does).
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Sets the flag on SIGTERM and SIGINT, in addition to any other handler of those signals
    /// (the event loop's own streams keep working: the registry chains handlers).
    pub fn install(&self) -> std::io::Result<()> {
        for sig in [nix::libc::SIGTERM, nix::libc::SIGINT] {
            let flag = self.0.clone();
            // SAFETY: the action only stores to an atomic, which is async-signal-safe, and
            // captures nothing else.
            unsafe { signal_hook_registry::register(sig, move || flag.store(true, Ordering::Relaxed)) }?;
        }
        Ok(())
    }
}
