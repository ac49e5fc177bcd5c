//! The daemon's event loop (SPEC §4, §6.3–6.5), shaped like mini-redis's `server::run`: it owns
//! its state and is handed what it reacts to — a stop request, SIGHUP's re-list requests, and
//! the readiness callback. `commands::run` only wires signals and the readiness fd.
//!
//! One thread, asleep unless a watcher event, a signal or a timer is due: there is no busy
//! polling. What is due when comes from [`super::schedule`] (pure); what a batch of watcher
//! events means comes from [`crate::observe::watch::interpret`] (pure).

use super::Daemon;
use crate::apply::Applier;
use crate::apply::runtime_record;
use crate::config::Config;
use crate::observe::container::ContainerMode;
use crate::plan::PassKind;
use crate::s6;
use crate::shutdown::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Readiness of a file descriptor owned elsewhere (the crash-loop status watch's inotify
/// descriptor, which lives as long as the daemon).
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Exit status of a daemon that stopped on request, or could not start.
pub const EXIT_OK: i32 = 0;

/// Is s6-svscan there to talk to? (Its control FIFO has a reader.)
fn s6_ready(scandir: &Path) -> Result<(), String> {
    if !scandir.is_dir() {
        return Err(format!("scandir {} does not exist", scandir.display()));
    }
    s6::rescan(scandir, false).map_err(|e| e.to_string())
}

/// Runs the daemon until `shutdown` is requested; returns the exit status.
///
/// Where blocking work runs, and why: every pass (reading the volume and the scandir, writing
/// slots, talking to s6-supervise through its FIFOs) runs synchronously on this one thread,
/// between two awaits, never on a thread pool. Passes must not overlap — each reads the world
/// the previous one left, and s6 state is written by exactly one writer — and a pass is short
/// (milliseconds; bounded waits for s6 inside). The price is that the loop does not poll its
/// signal stream during a pass; the stop flag, which the signal handler sets itself, covers
/// that: passes check it at their safe points and stop within a moment. inotify is read here,
/// between passes (one wake-up per change); the poll backend stats on notify's thread and only
/// queues events here.
pub async fn run(
    config: Config,
    applier: Applier,
    shutdown: Shutdown,
    mut hangups: mpsc::Receiver<()>,
    ready: impl FnOnce(),
) -> i32 {
    let (mode, warning) = runtime_record::settle(&config.runtime_dir, Path::new("/proc"));
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if mode == ContainerMode::Dashboard {
        tracing::info!("dashboard container: gateways are not supervised here; idling");
        ready();
        shutdown.wait().await;
        return EXIT_OK;
    }

    // SPEC §6.5: wait for s6 with backoff, reporting it once.
    let mut delay = Duration::from_millis(50);
    let mut reported = false;
    while let Err(why) = s6_ready(&config.scandir) {
        if !reported {
            tracing::warn!("waiting for s6-svscan: {why}");
            reported = true;
        }
        tokio::select! {
            _ = shutdown.wait() => return EXIT_OK,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    if reported {
        tracing::info!("s6-svscan is there; converging");
    }

    let (mut daemon, events) = Daemon::new(config, applier);
    daemon.full_pass(PassKind::Boot);
    if shutdown.requested() {
        tracing::info!("stopping during the first pass; the next start finishes it");
        return EXIT_OK;
    }
    ready();
    tracing::info!(profiles = daemon.world.profiles.len(), "ready");

    let mut events = events;
    // Crash-loop backoff (SPEC §6.8): slots' status rewrites. SAFETY: the descriptor belongs
    // to `daemon`, is never replaced and outlives `status_events` (declared after `daemon`,
    // so dropped first).
    let status_events = daemon.status_fd().and_then(|fd| {
        unsafe { AsyncFd::register_with_interest(Borrowed(fd), tokio::io::Interest::READABLE) }
            .inspect_err(|e| {
                tracing::warn!("cannot wait on slot status changes ({e}); no crash-loop backoff")
            })
            .ok()
    });
    loop {
        if shutdown.requested() {
            break;
        }
        let deadline = tokio::time::Instant::from_std(daemon.next_deadline(Instant::now()));
        let batch = async {
            match events.as_mut() {
                Some(e) => e.next_batch().await,
                None => std::future::pending().await,
            }
        };
        let status_readable = async {
            match &status_events {
                Some(fd) => fd.readable().await.map(|mut g| g.clear_ready()),
                None => std::future::pending().await,
            }
        };
        // Each branch's work is a synchronous pass (see above).
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: re-listing everything");
                daemon.full_pass(PassKind::Continuous);
            }
            b = batch => daemon.on_events(b, Instant::now()),
            _ = status_readable => daemon.on_status_events(Instant::now()),
            _ = tokio::time::sleep_until(deadline) => daemon.on_timer(Instant::now()),
        }
    }
    if daemon.pending_removals() > 0 {
        tracing::info!(
            pending = daemon.pending_removals(),
            "stopping with removals in flight; their hidden directories are cleared on the next start"
        );
    }
    tracing::info!("stopping; gateways keep running");
    EXIT_OK
}
