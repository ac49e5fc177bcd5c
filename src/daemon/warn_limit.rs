//! The daemon's warning filter (SPEC §9.3): the same warning about the same file is logged at
//! most once a minute while its cause persists, whatever its text.
//!
//! Warnings are recognised by their [`Warning::key`] (file or profile, and kind of problem),
//! never by their text, because a hostile agent controls the text (a JSON error's column, an
//! excerpt). Rules, for one key:
//! - first seen: logged;
//! - seen again with the same text while the cause persists: not logged again, ever;
//! - seen with another text, or again after its cause went away (a full pass without it):
//!   logged only if the last time it was logged is at least [`REPEAT_AFTER`] ago.
//!
//! Memory is bounded by the warnings of one full pass plus those logged in the last minute.

use crate::warning::Warning;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The shortest interval between two log lines for one key.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// The text last seen (logged or not).
    text: String,
    /// When it was last logged.
    logged_at: Instant,
    /// Seen since its cause was last found gone.
    active: bool,
}

impl Entry {
    /// Worth remembering at `now`: its cause persists, or it was logged too recently to be
    /// logged again (forgetting it then would let it repeat early).
    fn kept(&self, now: Instant) -> bool {
        self.active || now.saturating_duration_since(self.logged_at) < REPEAT_AFTER
    }
}

#[derive(Clone, Debug, Default)]
pub struct WarnLimiter {
    entries: HashMap<String, Entry>,
}

impl WarnLimiter {
    /// Should `w` be logged now? Records it either way.
    pub fn admit(&mut self, w: &Warning, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(&w.key) else {
            self.entries.insert(w.key.clone(), Entry { text: w.text.clone(), logged_at: now, active: true });
            return true;
        };
        if e.active && e.text == w.text {
            return false;
        }
        e.active = true;
        if e.text != w.text {
            e.text = w.text.clone();
        }
        if now.saturating_duration_since(e.logged_at) >= REPEAT_AFTER {
            e.logged_at = now;
            true
        } else {
            false
        }
    }

    /// A full pass saw exactly `seen` (by key): every other cause is gone. Entries gone and
    /// logged long enough ago are forgotten (they would be logged again anyway).
    pub fn end_full_pass<'a>(&mut self, seen: impl IntoIterator<Item = &'a Warning>, now: Instant) {
        let seen: HashSet<&str> = seen.into_iter().map(|w| w.key.as_str()).collect();
        self.entries.retain(|k, e| {
            if !seen.contains(k.as_str()) {
                e.active = false;
            }
            e.kept(now)
        });
    }

    /// A full pass saw the very warnings of the last full pass, all of them already admitted
    /// (nothing else was offered since): only forgets the entries gone long enough ago, as
    /// [`WarnLimiter::end_full_pass`] would. Hashes nothing, so a steady re-list with thousands
    /// of persisting warnings (folders over the cap) costs a walk of the table, not a lookup
    /// and a set of every key.
    pub fn end_same_full_pass(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.kept(now));
    }

    /// Keys remembered (for tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_error(path: &str, column: u32) -> Warning {
        Warning::about(path, "content", format!("{path} is not valid JSON (column {column})"))
    }

    #[test]
    fn a_changing_text_about_one_file_is_logged_once_a_minute() {
        let mut l = WarnLimiter::default();
        let t0 = Instant::now();
        let mut logged = 0;
        // A rewrite every 10 ms for 5 minutes, each with another column, with full passes.
        for i in 0..30_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            let w = json_error("/h/profiles/a/gateway_state.json", i);
            if l.admit(&w, now) {
                logged += 1;
            }
            if i % 100 == 0 {
                l.end_full_pass([&w], now);
            }
        }
        assert_eq!(logged, 5, "300 s of rewrites: one line a minute");
    }

    /// A re-list that finds the settled pass's warnings again may skip offering them: the
    /// filter ends where offering them all and ending the full pass would have left it, at
    /// every moment (entries of causes gone expire alike), and logs nothing either way.
    #[test]
    fn a_same_full_pass_is_the_full_pass_without_the_lookups() {
        let t0 = Instant::now();
        let persisting: Vec<Warning> = (0..50).map(|i| json_error(&format!("/h/p{i}/s.json"), i)).collect();
        let gone = json_error("/h/gone/s.json", 1);
        let mut l = WarnLimiter::default();
        assert!(l.admit(&gone, t0));
        l.end_full_pass([&gone], t0);
        let settled_at = t0 + Duration::from_secs(5);
        for w in &persisting {
            assert!(l.admit(w, settled_at));
        }
        l.end_full_pass(&persisting, settled_at);
        let (mut offered, mut skipped) = (l.clone(), l);
        for s in [6, 30, 64, 65, 200] {
            let now = t0 + Duration::from_secs(s);
            assert!(persisting.iter().all(|w| !offered.admit(w, now)), "nothing logged at {s} s");
            offered.end_full_pass(&persisting, now);
            skipped.end_same_full_pass(now);
            assert_eq!(offered.entries, skipped.entries, "at {s} s");
        }
        assert_eq!(skipped.len(), persisting.len(), "the cause gone for a minute is forgotten");
    }

    #[test]
    fn the_same_text_persisting_is_logged_once() {
        let mut l = WarnLimiter::default();
        let t0 = Instant::now();
        let w = json_error("/h/p/gateway_state.json", 3);
        assert!(l.admit(&w, t0));
        for m in 1..10 {
            let now = t0 + Duration::from_secs(60 * m);
            assert!(!l.admit(&w, now));
            l.end_full_pass([&w], now);
        }
    }

    #[test]
    fn a_cause_that_flaps_is_logged_at_most_once_a_minute() {
        let mut l = WarnLimiter::default();
        let t0 = Instant::now();
        let w = json_error("/h/p/gateway_state.json", 3);
        let mut logged = 0;
        for s in 0..120u64 {
            let now = t0 + Duration::from_secs(s);
            if s % 2 == 0 {
                logged += u32::from(l.admit(&w, now));
                l.end_full_pass([&w], now);
            } else {
                l.end_full_pass([], now);
            }
        }
        assert_eq!(logged, 2);
        // ... and comes back after a quiet minute: logged again.
        let later = t0 + Duration::from_secs(300);
        l.end_full_pass([], later);
        assert!(l.is_empty(), "forgotten once gone and a minute old");
        assert!(l.admit(&w, later));
    }

    #[test]
    fn different_files_and_kinds_are_separate() {
        let mut l = WarnLimiter::default();
        let now = Instant::now();
        assert!(l.admit(&json_error("/h/a/gateway_state.json", 1), now));
        assert!(l.admit(&json_error("/h/b/gateway_state.json", 1), now));
        assert!(l.admit(&Warning::about("/h/a/gateway_state.json", "too-large", "big".into()), now));
        assert!(!l.admit(&json_error("/h/a/gateway_state.json", 2), now));
        assert_eq!(l.len(), 3);
    }
}
