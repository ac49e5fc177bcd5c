//! The event loop's timers as a pure function of the daemon's state and an explicit `now`:
//! when the next timer-driven work is due ([`Timers::next_deadline`]) and what is due at a
//! given instant ([`Timers::due`]). No clock is read here, so every rule is tested with
//! explicit instants.

use super::backoff::Backoff;
use crate::model::ProfileName;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Re-list period while the watcher cannot see everything (no watcher, watch limit exhausted).
pub const FALLBACK_RELIST: Duration = Duration::from_secs(2);
/// How often pending removals are checked; only while one is pending.
pub const REMOVAL_POLL: Duration = Duration::from_millis(2);
/// ... and once every removal in flight has waited this long (a gateway slow to stop, or one
/// ignoring SIGTERM until the kill), checked less often.
pub const REMOVAL_POLL_SLOW_AFTER: Duration = Duration::from_millis(200);
pub const REMOVAL_POLL_SLOW: Duration = Duration::from_millis(100);
/// Shortest interval between two full re-lists asked for by events (overflow, `profiles/`
/// or `profiles/.deleted` created or removed, a watch lost): a hostile loop of such events
/// costs at most one re-list a second (SPEC §9.3). Dirty profiles are served meanwhile.
pub const RELIST_COALESCE: Duration = Duration::from_secs(1);

/// When a re-list asked for by events may run (SPEC §9.3): at once if the last full pass is
/// at least [`RELIST_COALESCE`] old, else as soon as it is.
pub fn relist_due_at(last_full: Instant, now: Instant) -> Instant {
    now.max(last_full + RELIST_COALESCE)
}

/// A view of the daemon's timer state.
pub struct Timers<'a> {
    pub last_full: Instant,
    pub resync: Duration,
    /// The watcher cannot see everything: re-list every [`FALLBACK_RELIST`] at most.
    pub fallback: bool,
    /// Events asked for a full re-list.
    pub relist_pending: bool,
    pub remove_grace: Duration,
    /// Slots whose profile is gone, and since when.
    pub absent: &'a BTreeMap<ProfileName, Instant>,
    pub retries: &'a BTreeMap<ProfileName, Backoff>,
    /// When each removal in flight started.
    pub removals: &'a [Instant],
    /// When each crash-loop hold ends (SPEC §6.8).
    pub holds: &'a BTreeMap<ProfileName, Instant>,
}

/// What is due at an instant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Removals in flight to poll.
    pub removals: bool,
    /// A full re-list (periodic, or asked for by events and no longer coalesced).
    pub full: bool,
    /// Profiles whose removal grace expired or whose retry is due (only without `full`, which
    /// covers them).
    pub profiles: BTreeSet<ProfileName>,
    /// Crash-looping gateways whose hold is over: to be wanted up again (independent of
    /// `full`: a pass never lifts a hold).
    pub holds: BTreeSet<ProfileName>,
}

impl Timers<'_> {
    fn period(&self) -> Duration {
        if self.fallback { FALLBACK_RELIST.min(self.resync) } else { self.resync }
    }

    /// When the next timer-driven work is due.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.last_full + self.period();
        if self.relist_pending {
            next = next.min(relist_due_at(self.last_full, now));
        }
        for since in self.absent.values() {
            next = next.min(*since + self.remove_grace);
        }
        for b in self.retries.values() {
            next = next.min(b.due);
        }
        for until in self.holds.values() {
            next = next.min(*until);
        }
        if let Some(youngest) = self.removals.iter().map(|s| now.saturating_duration_since(*s)).min() {
            let poll = if youngest < REMOVAL_POLL_SLOW_AFTER { REMOVAL_POLL } else { REMOVAL_POLL_SLOW };
            next = next.min(now + poll);
        }
        next
    }

    /// What is due at `now`.
    pub fn due(&self, now: Instant) -> Due {
        let full = now >= self.last_full + self.period()
            || (self.relist_pending && relist_due_at(self.last_full, now) <= now);
        let mut profiles = BTreeSet::new();
        if !full {
            profiles.extend(
                self.absent
                    .iter()
                    .filter(|(_, since)| now >= **since + self.remove_grace)
                    .map(|(n, _)| n.clone()),
            );
            profiles.extend(self.retries.iter().filter(|(_, b)| now >= b.due).map(|(n, _)| n.clone()));
        }
        let holds = self.holds.iter().filter(|(_, until)| now >= **until).map(|(n, _)| n.clone()).collect();
        Due { removals: !self.removals.is_empty(), full, profiles, holds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProfileName {
        ProfileName::parse_named(s).unwrap()
    }

    struct State {
        t0: Instant,
        absent: BTreeMap<ProfileName, Instant>,
        retries: BTreeMap<ProfileName, Backoff>,
        removals: Vec<Instant>,
        holds: BTreeMap<ProfileName, Instant>,
    }

    impl State {
        fn new() -> Self {
            State {
                t0: Instant::now(),
                absent: BTreeMap::new(),
                retries: BTreeMap::new(),
                removals: Vec::new(),
                holds: BTreeMap::new(),
            }
        }
        fn timers(&self, pending: bool, fallback: bool) -> Timers<'_> {
            Timers {
                last_full: self.t0,
                resync: Duration::from_secs(30),
                fallback,
                relist_pending: pending,
                remove_grace: Duration::from_secs(2),
                absent: &self.absent,
                retries: &self.retries,
                removals: &self.removals,
                holds: &self.holds,
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
    }

    #[test]
    fn idle_sleeps_until_the_resync_and_then_relists() {
        let s = State::new();
        let t = s.timers(false, false);
        assert_eq!(t.next_deadline(s.at(10)), s.at(30_000));
        assert_eq!(t.due(s.at(29_999)), Due::default());
        assert!(t.due(s.at(30_000)).full);
        // Without a complete watch, every two seconds.
        let t = s.timers(false, true);
        assert_eq!(t.next_deadline(s.at(10)), s.at(2_000));
        assert!(t.due(s.at(2_000)).full);
    }

    #[test]
    fn a_relist_asked_for_by_events_waits_a_second_after_the_last_one() {
        let s = State::new();
        let t = s.timers(true, false);
        assert_eq!(t.next_deadline(s.at(100)), s.at(1_000));
        assert!(!t.due(s.at(999)).full);
        assert!(t.due(s.at(1_000)).full);
        // Long after the last re-list: at once.
        assert_eq!(t.next_deadline(s.at(5_000)), s.at(5_000));
    }

    #[test]
    fn graces_and_retries_fall_due_per_profile() {
        let mut s = State::new();
        s.absent.insert(name("gone"), s.at(500));
        s.retries.insert(name("failing"), Backoff { due: s.at(1_200), ..Backoff::after_failure(None, s.t0) });
        let t = s.timers(false, false);
        assert_eq!(t.next_deadline(s.at(0)), s.at(1_200));
        assert_eq!(t.due(s.at(1_200)).profiles, [name("failing")].into());
        assert_eq!(t.due(s.at(2_500)).profiles, [name("failing"), name("gone")].into());
        // A full re-list covers them.
        let d = t.due(s.at(30_000));
        assert!(d.full && d.profiles.is_empty());
    }

    #[test]
    fn a_crash_loop_hold_wakes_the_loop_when_it_ends_even_during_a_full_relist() {
        let mut s = State::new();
        s.holds.insert(name("looping"), s.at(4_000));
        let t = s.timers(false, false);
        assert_eq!(t.next_deadline(s.at(0)), s.at(4_000));
        assert!(t.due(s.at(3_999)).holds.is_empty());
        assert_eq!(t.due(s.at(4_000)).holds, [name("looping")].into());
        // A full re-list does not cover a hold: the gateway is wanted up by the hold's end.
        let d = t.due(s.at(30_000));
        assert!(d.full && d.holds == [name("looping")].into());
    }

    #[test]
    fn removals_are_polled_fast_then_slowly() {
        let mut s = State::new();
        s.removals.push(s.at(0));
        let t = s.timers(false, false);
        assert_eq!(t.next_deadline(s.at(10)), s.at(10) + REMOVAL_POLL);
        assert_eq!(t.next_deadline(s.at(300)), s.at(300) + REMOVAL_POLL_SLOW);
        assert!(t.due(s.at(300)).removals);
    }

    /// The event loop's use of [`relist_due_at`]: a request runs the re-list when due, else
    /// leaves it pending for the timer, which runs it when due.
    #[test]
    fn a_storm_of_relist_requests_gives_at_most_one_relist_a_second() {
        let t0 = Instant::now();
        let mut last_full = t0;
        let mut pending = false;
        let mut runs = Vec::new();
        // A request every 5 ms for 10 s (a mkdir/rmdir loop), the timer checked every 1 ms.
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms % 5 == 0 {
                pending = true;
            }
            if pending && relist_due_at(last_full, now) <= now {
                runs.push(now);
                last_full = now;
                pending = false;
            }
        }
        assert_eq!(runs.len(), 9, "{runs:?}");
        assert!(runs.windows(2).all(|w| w[1] - w[0] >= RELIST_COALESCE));
        let later = last_full + Duration::from_secs(5);
        assert_eq!(relist_due_at(last_full, later), later);
    }
}
