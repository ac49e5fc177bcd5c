//! `hermes-reconciler run`: wires the signals and the readiness fd to the daemon's event loop
//! ([`crate::daemon::run`]), which owns everything else.
//!
//! SIGTERM and SIGINT set the stop flag from the signal handler itself
//! ([`crate::shutdown::Shutdown::install`]), so a pass in progress stops at its next safe
//! point, never half-way through a slot; the loop then exits 0 and the next start finishes what
//! was left. The same signals and SIGHUP also arrive on a signal-hook-tokio stream, read by a
//! task that wakes the loop: a stop, or a full re-list for SIGHUP.

use super::EXIT_FAILURE;
use crate::apply::Applier;
use crate::config::Config;
use crate::shutdown::Shutdown;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use std::pin::Pin;
use tokio::sync::mpsc;

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

/// Forwards the signal stream: SIGTERM/SIGINT request the stop (the flag is already set by
/// the handler; this wakes the loop), SIGHUP asks for a re-list (at most one queued).
async fn forward(mut signals: Signals, shutdown: Shutdown, hangups: mpsc::Sender<()>) {
    use futures_core::Stream;
    while let Some(sig) = std::future::poll_fn(|cx| Pin::new(&mut signals).poll_next(cx)).await {
        match sig {
            SIGHUP => {
                let _ = hangups.try_send(());
            }
            _ => shutdown.request(),
        }
    }
}

/// Most descriptors the daemon asks for: enough for two per slot (a slot's lock file and its
/// supervisor's pidfd, [`crate::observe::slots`]) at any cap s6 allows, with room to spare.
const WANTED_DESCRIPTORS: u64 = 16_384;

/// Raises the soft limit on open descriptors toward the hard one. Container runtimes often
/// set the soft limit to 1,024, which leaves the slot cache room for lock files only: every
/// re-list would then ask every lock (issue 15). Raising it is safe here: the daemon never
/// uses `select(2)` and never starts a process that could inherit the limit. If it cannot
/// be raised, the slot cache fits in what there is.
fn raise_descriptor_limit() {
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write the struct they are given, nothing else.
    unsafe {
        if nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = WANTED_DESCRIPTORS.min(lim.rlim_max);
        if lim.rlim_cur < want {
            let was = lim.rlim_cur;
            lim.rlim_cur = want;
            if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = was, to = want, "raised the soft limit on open descriptors");
            }
        }
    }
}

pub fn run(config: Config, applier: Applier, notify_fd: Option<i32>) -> i32 {
    raise_descriptor_limit();
    let shutdown = applier.shutdown.clone();
    if let Err(e) = shutdown.install() {
        tracing::error!("cannot install signal handlers: {e}");
        return EXIT_FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the event loop: {e}");
            return EXIT_FAILURE;
        }
    };
    rt.block_on(async move {
        // Registered before anything waits: SIGHUP's default action would kill the daemon.
        let signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return EXIT_FAILURE;
            }
        };
        let handle = signals.handle();
        let (hup_tx, hup_rx) = mpsc::channel(1);
        let forwarder = tokio::spawn(forward(signals, shutdown.clone(), hup_tx));
        let code =
            crate::daemon::run(config, applier, shutdown, hup_rx, move || notify_ready(notify_fd)).await;
        handle.close();
        forwarder.abort();
        code
    })
}
