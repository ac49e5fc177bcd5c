//! `hermes-reconciler run`: the daemon's event loop (SPEC §4, §6.3–6.5).
//!
//! One thread, asleep unless an inotify event, a signal or a timer is due: there is no busy
//! polling. Passes run between two awaits; SIGTERM/SIGINT also set a flag
//! ([`crate::shutdown::Shutdown`]) that a pass checks at its safe points (between profiles,
//! inside supervisor waits), so it stops within a moment, never half-way through a slot (a
//! slot is either still hidden under its staging name or fully published), and the loop
//! exits 0. The next start finishes what was left.

use super::{EXIT_FAILURE, EXIT_OK};
use crate::apply::Applier;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::observe::container::ContainerMode;
use crate::plan::PassKind;
use crate::runtime;
use crate::s6;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

/// Readiness of a file descriptor owned elsewhere (the watcher's inotify descriptor, which
/// lives as long as the daemon).
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Writes the readiness newline to `fd` and closes it (s6 `notification-fd`).
fn notify_ready(fd: Option<i32>) {
    let Some(fd) = fd else { return };
    if nix::fcntl::fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, nix::fcntl::FcntlArg::F_GETFD)
        .is_err()
    {
        tracing::warn!("--notify-fd {fd} is not an open file descriptor; readiness not signalled");
        return;
    }
    // SAFETY: the descriptor was handed to us for exactly this use and is open (checked
    // above); nothing else in the process uses it, and it is closed once here.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    if let Err(e) = std::io::Write::write_all(&mut file, b"\n") {
        tracing::warn!("readiness not signalled on fd {fd}: {e}");
    }
}

/// Is s6-svscan there to talk to? (Its control FIFO has a reader.)
fn s6_ready(scandir: &Path) -> Result<(), String> {
    if !scandir.is_dir() {
        return Err(format!("scandir {} does not exist", scandir.display()));
    }
    s6::rescan(scandir, false).map_err(|e| e.to_string())
}

pub fn run(config: Config, applier: Applier, notify_fd: Option<i32>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the event loop: {e}");
            return EXIT_FAILURE;
        }
    };
    rt.block_on(main_loop(config, applier, notify_fd))
}

async fn main_loop(config: Config, applier: Applier, notify_fd: Option<i32>) -> i32 {
    let stop = applier.shutdown.clone();
    if let Err(e) = stop.install() {
        tracing::error!("cannot install signal handlers: {e}");
        return EXIT_FAILURE;
    }
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return EXIT_FAILURE;
        }
    };

    let (mode, warning) = runtime::settle(&config.runtime_dir, Path::new("/proc"));
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if mode == ContainerMode::Dashboard {
        tracing::info!("dashboard container: gateways are not supervised here; idling");
        notify_ready(notify_fd);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
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
            _ = term.recv() => return EXIT_OK,
            _ = int.recv() => return EXIT_OK,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    if reported {
        tracing::info!("s6-svscan is there; converging");
    }

    let mut daemon = Daemon::new(config, applier);
    daemon.full_pass(PassKind::Boot);
    if stop.requested() {
        tracing::info!("stopping during the first pass; the next start finishes it");
        return EXIT_OK;
    }
    notify_ready(notify_fd);
    tracing::info!(profiles = daemon.world.profiles.len(), "ready");

    // SAFETY: the descriptor belongs to `daemon.watcher`, which is never replaced and outlives
    // `events` (declared after `daemon`, so dropped first): it stays open and the same.
    let events = match daemon.watcher.as_ref().map(|w| unsafe {
        AsyncFd::register_with_interest(Borrowed(w.as_raw_fd()), tokio::io::Interest::READABLE)
    }) {
        Some(Ok(fd)) => Some(fd),
        Some(Err(e)) => {
            tracing::warn!("cannot wait on inotify ({e}); re-listing periodically");
            daemon.polling_fallback = true;
            None
        }
        None => None,
    };
    // Crash-loop backoff (SPEC §6.8): slots' status rewrites. SAFETY: as above, the
    // descriptor belongs to `daemon`, is never replaced and outlives `status_events`.
    let status_events = daemon.status_fd().and_then(|fd| {
        unsafe { AsyncFd::register_with_interest(Borrowed(fd), tokio::io::Interest::READABLE) }
            .inspect_err(|e| {
                tracing::warn!("cannot wait on slot status changes ({e}); no crash-loop backoff")
            })
            .ok()
    });
    loop {
        if stop.requested() {
            break;
        }
        let status_readable = async {
            match &status_events {
                Some(fd) => fd.readable().await.map(|mut g| g.clear_ready()),
                None => std::future::pending().await,
            }
        };
        let deadline = tokio::time::Instant::from_std(daemon.next_deadline());
        let readable = async {
            match &events {
                Some(fd) => fd.readable().await.map(|mut g| g.clear_ready()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-listing everything");
                daemon.full_pass(PassKind::Continuous);
            }
            r = readable => {
                if let Err(e) = r {
                    tracing::warn!("inotify wait failed ({e}); re-listing");
                    daemon.request_relist();
                    continue;
                }
                let changes = match daemon.watcher.as_mut() {
                    Some(w) => w.read(),
                    None => continue,
                };
                // Dirty profiles first, then the (coalesced) re-list: a storm of re-list events
                // never delays a profile's own change (SPEC §9.3).
                if !changes.dirty.is_empty() {
                    daemon.partial_pass(changes.dirty.into_iter().collect::<BTreeSet<_>>());
                }
                if changes.relist {
                    daemon.request_relist();
                }
            }
            _ = status_readable => daemon.on_status_events(),
            _ = tokio::time::sleep_until(deadline) => daemon.on_timer(),
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
