//! Per-profile exponential backoff for failed reconciles (SPEC §6.2). Pure arithmetic.

use std::time::{Duration, Instant};

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(30);

/// How often a profile has failed in a row, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
    pub due: Instant,
}

/// Delay before the next try after `failures` consecutive failures (1 → 100 ms, doubling,
/// capped at 30 s).
pub fn delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(1u32 << exp).min(MAX)
}

impl Backoff {
    /// The backoff after one more failure at `now`.
    pub fn after_failure(previous: Option<Backoff>, now: Instant) -> Backoff {
        let failures = previous.map_or(1, |b| b.failures.saturating_add(1));
        Backoff { failures, due: now + delay(failures) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        assert_eq!(delay(1), Duration::from_millis(100));
        assert_eq!(delay(2), Duration::from_millis(200));
        assert_eq!(delay(5), Duration::from_millis(1600));
        assert_eq!(delay(20), MAX);
        assert_eq!(delay(u32::MAX), MAX);
        let now = Instant::now();
        let a = Backoff::after_failure(None, now);
        let b = Backoff::after_failure(Some(a), now);
        assert_eq!((a.failures, b.failures), (1, 2));
        assert!(b.due > a.due);
    }
}
