//! Bounded waits and soft assertions. Every wait for s6 or the daemon goes through [`poll`] or
//! [`wait_until`] with a generous bound ([`super::WAIT`]): the bound only stops a hang, it never
//! checks a speed.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::world::World;

/// Polls `f` until it returns true, for at most `timeout`; panics naming `desc` otherwise.
pub fn wait_until(desc: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {desc}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Ok`, for at most `timeout`; returns the last `Err` otherwise.
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    poll_every(timeout, Duration::from_millis(20), f)
}

/// [`poll`] with a chosen pause between attempts (the benchmarks poll finer than the tests).
pub fn poll_every<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(step),
        }
    }
}

/// Soft assertions: collects every failed check of a test, then fails once listing them all.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.failures.push(msg.into());
        }
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub fn ok<T>(&mut self, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.push(e);
                None
            }
        }
    }

    /// Panics listing every failed check, if any.
    /// Checks the `(profile, prior_state, action)` of every `container-boot.log` line.
    pub fn boot_lines_are(&mut self, w: &World, want: &[(&str, &str, &str)]) {
        match w.boot_lines() {
            Err(e) => self.check(false, e),
            Ok(lines) => {
                let got: Vec<(&str, &str, &str)> = lines
                    .iter()
                    .map(|l| (l.profile.as_str(), l.prior_state.as_str(), l.action.as_str()))
                    .collect();
                self.eq("boot-log lines", got, want.to_vec());
            }
        }
    }

    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!("{} check(s) failed:\n  - {}", self.failures.len(), self.failures.join("\n  - "));
        }
    }
}
