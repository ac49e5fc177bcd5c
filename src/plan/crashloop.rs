//! Crash-loop backoff (SPEC §6.8): a pure state machine per slot, fed with what each rewrite of
//! the slot's `supervise/status` shows, and with explicit instants (no clock is read here).
//!
//! How deaths are seen without polling: s6-supervise (root) rewrites `supervise/status`
//! atomically (rename) on every state change; the daemon watches each slot's `supervise/`
//! directory with inotify for that rename and reads the file (see
//! [`crate::observe::deaths`]). That needs no change to the slot, is level-triggered (a missed
//! event loses nothing but a death's count, never a state), and nobody but root can write
//! there: `supervise/` is root's, 0710 to the `hermes` group, so the agent can neither forge a
//! death of another profile nor make root write through a link, which a record written by the
//! `finish` script into the slot or the volume would risk. The agent *can* kill its own
//! gateways through the control FIFO, which it could do anyway.
//!
//! Measured on s6 2.11 (a service that exits 1): a death rewrites the status twice with the
//! same up/down timestamp (`finishing` with the finish script's pid, then down), and every
//! start gets a new timestamp. So one death is one new timestamp on a status that is not up;
//! the wait status is the gateway's own exit.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// The first hold; each later one doubles, up to the configured maximum.
pub const FIRST_HOLD: Duration = Duration::from_secs(10);

/// Default time up after which a gateway's death count starts again from zero.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The configured policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// This many abnormal deaths within `window` hold the gateway down.
    pub deaths: u32,
    pub window: Duration,
    pub max_hold: Duration,
    /// Up this long: the count (and the hold's step) start again from zero.
    pub reset_after: Duration,
}

pub use crate::world::{Exit, Seen};

/// A gateway held down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// When it is tried again.
    pub until: Instant,
    pub retry_in: Duration,
    /// Deaths counted within the window when it was held.
    pub deaths: u32,
    pub last_exit: Exit,
}

/// What the daemon must do after an observation or a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// Want the gateway down now (keeping `./down` in agreement) and report the hold.
    HoldDown(Hold),
    /// Someone else wanted it up while held (an operator's `s6-svc -u`): the hold is over.
    Released,
}

/// One slot's crash-loop state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Timestamps (s6's) of the abnormal deaths within the window.
    deaths: VecDeque<SystemTime>,
    /// Holds so far in this crash loop: the next one lasts `FIRST_HOLD * 2^step`.
    step: u32,
    pub hold: Option<Hold>,
    /// The last status timestamp seen (a rewrite with the same one changes only flags).
    last_since: Option<SystemTime>,
    /// When the current run started, if it is up.
    up_since: Option<SystemTime>,
    /// During a hold: the daemon's own want-down has been seen in a status.
    held_down_seen: bool,
}

impl Tracker {
    /// Feeds one status rewrite.
    pub fn observe(&mut self, seen: &Seen, now: Instant, policy: &Policy) -> Verdict {
        if self.hold.is_some() {
            // Held: the daemon wanted it down. Wanted up again by someone else ends the hold,
            // but only once the daemon's own `D` has shown (until then a want-up is the state
            // from before the hold: the death that caused it, or s6's restart racing the `D`).
            if !seen.want_up {
                self.held_down_seen = true;
            } else if self.held_down_seen {
                self.hold = None;
                self.last_since = Some(seen.since);
                self.up_since = seen.up.then_some(seen.since);
                return Verdict::Released;
            }
            self.last_since = Some(seen.since);
            self.up_since = seen.up.then_some(seen.since);
            return Verdict::Nothing;
        }
        if self.last_since == Some(seen.since) {
            return Verdict::Nothing;
        }
        self.last_since = Some(seen.since);
        if seen.up {
            self.up_since = Some(seen.since);
            return Verdict::Nothing;
        }
        // A death (or a stop). Up long enough before it: start counting afresh.
        if let Some(up) = self.up_since.take()
            && seen.since.duration_since(up).unwrap_or_default() >= policy.reset_after
        {
            self.deaths.clear();
            self.step = 0;
        }
        if !seen.want_up || !seen.exit.abnormal() {
            return Verdict::Nothing;
        }
        self.deaths.push_back(seen.since);
        while let Some(first) = self.deaths.front()
            && seen.since.duration_since(*first).unwrap_or_default() > policy.window
        {
            self.deaths.pop_front();
        }
        let count = u32::try_from(self.deaths.len()).unwrap_or(u32::MAX);
        if count < policy.deaths {
            return Verdict::Nothing;
        }
        let retry_in = FIRST_HOLD.saturating_mul(1u32 << self.step.min(20)).min(policy.max_hold);
        self.step = self.step.saturating_add(1);
        let hold = Hold { until: now + retry_in, retry_in, deaths: count, last_exit: seen.exit };
        self.held_down_seen = false;
        self.hold = Some(hold.clone());
        Verdict::HoldDown(hold)
    }

    /// The hold's time has come: `true` if the gateway must be wanted up again now. The deaths
    /// stay counted within their window, so a gateway that goes on crashing is held again
    /// sooner, for twice as long.
    pub fn due(&mut self, now: Instant) -> bool {
        match &self.hold {
            Some(h) if now >= h.until => {
                self.hold = None;
                true
            }
            _ => false,
        }
    }

    /// The operator changed `desired_state`: the hold is over at once (the step is kept, so a
    /// later crash loop starts again from it).
    pub fn release(&mut self) -> bool {
        self.hold.take().is_some()
    }

    /// The step the next hold would start from (tests, status).
    pub fn step(&self) -> u32 {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            deaths: 5,
            window: Duration::from_secs(60),
            max_hold: Duration::from_secs(300),
            reset_after: RESET_AFTER,
        }
    }

    fn at(secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_secs_f64(secs)
    }

    /// A gateway started at `t` and dying at `t + 0.2` with `exit`, both rewrites fed twice
    /// (flags-only rewrites share the timestamp). Returns the verdict of the death.
    fn run_and_die(tr: &mut Tracker, t: f64, exit: Exit, now: Instant, p: &Policy) -> Verdict {
        let up = Seen { since: at(t), up: true, want_up: true, exit: Exit::Code(0) };
        assert_eq!(tr.observe(&up, now, p), Verdict::Nothing);
        let death = Seen { since: at(t + 0.2), up: false, want_up: true, exit };
        let v = tr.observe(&death, now, p);
        assert_eq!(tr.observe(&death, now, p), Verdict::Nothing, "same timestamp: one death");
        v
    }

    #[test]
    fn five_deaths_in_a_minute_hold_it_with_a_doubling_schedule() {
        let p = policy();
        let now = Instant::now();
        let mut tr = Tracker::default();
        let mut t = 0.0;
        let mut holds = Vec::new();
        for _round in 0..8 {
            loop {
                t += 1.2;
                if let Verdict::HoldDown(h) = run_and_die(&mut tr, t, Exit::Code(1), now, &p) {
                    holds.push((h.retry_in.as_secs(), h.deaths));
                    break;
                }
            }
            // Held: the daemon's own `D` shows as want-up cleared; nothing happens.
            let down = Seen { since: at(t + 0.2), up: false, want_up: false, exit: Exit::Code(1) };
            assert_eq!(tr.observe(&down, now, &p), Verdict::Nothing);
            assert!(!tr.due(now));
            assert!(tr.due(now + Duration::from_secs(300)));
            t += holds.last().unwrap().0 as f64;
        }
        let secs: Vec<u64> = holds.iter().map(|h| h.0).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(holds[0].1, 5);
    }

    #[test]
    fn clean_exits_asked_stops_and_slow_deaths_never_hold() {
        let p = policy();
        let now = Instant::now();
        for exit in [Exit::Code(0), Exit::Code(78), Exit::Signal(15)] {
            let mut tr = Tracker::default();
            for i in 0..20 {
                assert_eq!(
                    run_and_die(&mut tr, f64::from(i) * 1.5, exit, now, &p),
                    Verdict::Nothing,
                    "{exit:?}"
                );
            }
        }
        // Wanted down at its death (a `d` someone sent): not a crash.
        let mut tr = Tracker::default();
        for i in 0..20 {
            let s = Seen { since: at(f64::from(i)), up: false, want_up: false, exit: Exit::Signal(9) };
            assert_eq!(tr.observe(&s, now, &p), Verdict::Nothing);
        }
        // Four deaths a minute, forever: never five within 60 s.
        let mut tr = Tracker::default();
        for i in 0..40 {
            assert_eq!(run_and_die(&mut tr, f64::from(i) * 15.1, Exit::Code(1), now, &p), Verdict::Nothing);
        }
    }

    #[test]
    fn the_operator_wins_at_once_and_the_step_is_kept() {
        let p = policy();
        let now = Instant::now();
        let mut tr = Tracker::default();
        let mut t = 0.0;
        while !matches!(run_and_die(&mut tr, t, Exit::Signal(11), now, &p), Verdict::HoldDown(_)) {
            t += 1.0;
        }
        // The state from before the hold is not the operator.
        let racing = Seen { since: at(t + 1.0), up: true, want_up: true, exit: Exit::Signal(11) };
        assert_eq!(tr.observe(&racing, now, &p), Verdict::Nothing);
        let held = Seen { since: at(t + 1.1), up: false, want_up: false, exit: Exit::Signal(15) };
        assert_eq!(tr.observe(&held, now, &p), Verdict::Nothing);
        // An up command sent to the slot: want-up set again by someone else.
        let up = Seen { since: at(t + 2.0), up: true, want_up: true, exit: Exit::Signal(11) };
        assert_eq!(tr.observe(&up, now, &p), Verdict::Released);
        assert!(tr.hold.is_none() && !tr.due(now + Duration::from_secs(1000)));
        // It goes on crashing: held again, from the kept step.
        let mut t = t + 3.0;
        let h = loop {
            if let Verdict::HoldDown(h) = run_and_die(&mut tr, t, Exit::Code(2), now, &p) {
                break h;
            }
            t += 1.0;
        };
        assert_eq!(h.retry_in, Duration::from_secs(20));
        assert_eq!(h.last_exit.describe(), "exit_2");
        // A new desired_state value.
        assert!(tr.release());
        assert!(!tr.release());
    }

    #[test]
    fn up_for_the_reset_period_counts_from_zero() {
        let p = Policy { reset_after: Duration::from_secs(30), ..policy() };
        let now = Instant::now();
        let mut tr = Tracker::default();
        for i in 0..4 {
            assert_eq!(run_and_die(&mut tr, f64::from(i), Exit::Code(1), now, &p), Verdict::Nothing);
        }
        // Up 31 s, then dies: the count starts again.
        let up = Seen { since: at(10.0), up: true, want_up: true, exit: Exit::Code(1) };
        tr.observe(&up, now, &p);
        let d = Seen { since: at(41.0), up: false, want_up: true, exit: Exit::Code(1) };
        assert_eq!(tr.observe(&d, now, &p), Verdict::Nothing);
        for i in 0..3 {
            assert_eq!(run_and_die(&mut tr, 42.0 + f64::from(i), Exit::Code(1), now, &p), Verdict::Nothing);
        }
        assert!(matches!(run_and_die(&mut tr, 46.0, Exit::Code(1), now, &p), Verdict::HoldDown(_)));
    }

    proptest! {
        /// Whatever the sequence of rewrites, a hold needs `deaths` distinct abnormal deaths
        /// while wanted up within the window, and its length stays within [10 s, max].
        #[test]
        fn holds_need_enough_abnormal_deaths(
            events in proptest::collection::vec((0u32..3000, any::<bool>(), any::<bool>(), 0i32..4), 0..80),
        ) {
            let p = Policy { deaths: 3, window: Duration::from_secs(30), max_hold: Duration::from_secs(45), reset_after: RESET_AFTER };
            let now = Instant::now();
            let mut tr = Tracker::default();
            let mut sorted = events.clone();
            sorted.sort_by_key(|e| e.0);
            let mut abnormal: Vec<u32> = Vec::new();
            for (ds, up, want, code) in sorted {
                let exit = [Exit::Code(0), Exit::Code(78), Exit::Signal(15), Exit::Code(3)][code as usize];
                let seen = Seen { since: at(f64::from(ds) / 10.0), up, want_up: want, exit };
                let fresh = tr.hold.is_none() && !abnormal.contains(&ds);
                if !up && want && exit.abnormal() && fresh { abnormal.push(ds); }
                if let Verdict::HoldDown(h) = tr.observe(&seen, now, &p) {
                    let recent = abnormal.iter().filter(|&&d| ds - d <= 300).count();
                    prop_assert!(recent >= 3);
                    prop_assert!(h.retry_in >= FIRST_HOLD && h.retry_in <= p.max_hold);
                    prop_assert!(tr.due(now + h.retry_in));
                }
            }
        }
    }
}
