//! Replaying a [`Tape`]: the same questions, asked again in order (issue 15).
//!
//! Kept apart from the recorder so that the read sites, which record, and the replay, which
//! asks through those same sites' lookups, do not import each other.

use super::stat_base::StatBase;
use super::tape::{Holder, LockAt, Step, Tape, errno, recording};

impl Tape {
    /// Asks every question again, in order: `true` when each gets the answer it got when
    /// recorded. Stops at the first difference (the caller then observes in full).
    pub fn unchanged(&self) -> bool {
        debug_assert!(!recording(), "a replay is not an observation");
        let mut bases: Vec<Option<Option<StatBase>>> = (0..self.bases.len()).map(|_| None).collect();
        self.steps.iter().all(|step| self.same(step, &mut bases))
    }

    /// The base `i` opened (once per replay), `None` for an absolute path; `Err` when it
    /// cannot be opened now (it could when recorded).
    fn base<'b>(
        &self,
        i: Option<u16>,
        bases: &'b mut [Option<Option<StatBase>>],
    ) -> Result<Option<&'b StatBase>, ()> {
        let Some(i) = i else { return Ok(None) };
        let (slot, path) = bases.get_mut(usize::from(i)).zip(self.bases.get(usize::from(i))).ok_or(())?;
        slot.get_or_insert_with(|| StatBase::open(path)).as_ref().map(Some).ok_or(())
    }

    fn same(&self, step: &Step, bases: &mut [Option<Option<StatBase>>]) -> bool {
        match *step {
            Step::Stat { base: b, path, follow, seen } => {
                let Ok(b) = self.base(b, bases) else { return false };
                let now = StatBase::stat_relative(b, self.path(path), follow);
                now.as_ref().map(|s| *s).map_err(errno) == seen
            }
            Step::Fstat { fd, seen } => {
                // SAFETY: `fd` is a file a cache still holds open (see `tape::fstat`): it is
                // only borrowed for the call.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let now = nix::sys::stat::fstat(fd).map(|st| super::identity::of(&st));
                now.map_err(|e| e as i32) == seen
            }
            Step::List { dir, entries, failed } => {
                let want = self.get(entries);
                let mut at = 0usize;
                let mut same = true;
                let outcome = super::listing::each(self.path(dir), |name, kind| {
                    // As `tape::Listing::entry` wrote it: length, kind, name.
                    let end = at + 3 + name.len();
                    same &= u16::try_from(name.len()).is_ok_and(|len| {
                        want.get(at..at + 2) == Some(&len.to_le_bytes()[..])
                            && want.get(at + 2) == Some(&kind.byte())
                            && want.get(at + 3..end) == Some(name)
                    });
                    at = end;
                });
                same && at == want.len() && outcome.err().as_ref().map(errno) == failed
            }
            Step::Lock { at, seen } => {
                let now = match at {
                    LockAt::Held(fd) => {
                        // SAFETY: `fd` is a lock file the slot cache still holds open (see
                        // `LockAt::Held`); the `File` made here is never dropped, so the
                        // descriptor stays the cache's.
                        let file = std::mem::ManuallyDrop::new(unsafe {
                            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
                        });
                        Holder::from(&crate::s6::supervisor_by(&file))
                    }
                    LockAt::Service { base: b, dir } => {
                        let Ok(b) = self.base(b, bases) else { return false };
                        let at = b.map_or(nix::fcntl::AT_FDCWD, std::os::fd::AsFd::as_fd);
                        Holder::from(&crate::s6::supervisor_in(at, self.path(dir)).0)
                    }
                    LockAt::Scanner { scandir } => match crate::s6::scanner_pid(self.path(scandir)) {
                        Ok(Some(pid)) => Holder::Alive(pid),
                        Ok(None) => Holder::Absent,
                        Err(_) => Holder::Unknown,
                    },
                };
                now == seen
            }
            Step::Read { path, seen } => match (std::fs::read(self.path(path)), seen) {
                (Ok(now), Ok(was)) => now == self.get(was),
                (Err(e), Err(was)) => errno(&e) == was,
                _ => false,
            },
            Step::Quiet { fd } => {
                let mut p = nix::libc::pollfd { fd, events: nix::libc::POLLIN, revents: 0 };
                // SAFETY: one pollfd, on the stack, for the duration of the call.
                unsafe { nix::libc::poll(&mut p, 1, 0) == 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tape::{MAX_STEPS, RECORDER, opaque, record, record_trusting};
    use super::*;
    use crate::config::{Config, RawSettings};
    use crate::observe::profile_files::ProfileFileCache;
    use crate::observe::slots::SlotFileCache;
    use crate::world::Observed;
    use std::fs;

    /// A home with two profiles (one with `.env` and a lifecycle file), a folder without a
    /// marker, a tombstone directory, a port record, and a scandir with their slots and a
    /// foreign service.
    fn world() -> (tempfile::TempDir, Config) {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let profiles = home.join("profiles");
        for (name, state) in [("alpha", "running"), ("beta", "stopped")] {
            let dir = profiles.join(name);
            fs::create_dir_all(dir.join("state")).unwrap();
            fs::write(dir.join("SOUL.md"), "# soul\n").unwrap();
            fs::write(dir.join("gateway_state.json"), format!(r#"{{"desired_state":"{state}"}}"#)).unwrap();
        }
        fs::write(profiles.join("alpha/.env"), "OTHER=1\n").unwrap();
        fs::write(profiles.join("beta/state/gateway.lifecycle.json"), r#"{"phase":"exited"}"#).unwrap();
        fs::create_dir_all(profiles.join(".deleted")).unwrap();
        // A folder without a marker: no profile, until one is made.
        fs::create_dir_all(profiles.join("delta")).unwrap();
        fs::write(home.join("SOUL.md"), "# root\n").unwrap();
        fs::write(home.join(".gateway-ports.json"), r#"{"alpha":8650}"#).unwrap();
        let scandir = t.path().join("scandir");
        for slot in ["gateway-alpha", "gateway-beta", "other-service"] {
            // A slot is watched whole (itself, `data/`, `log/`) once read: then trusted.
            for sub in ["supervise", "data", "log"] {
                fs::create_dir_all(scandir.join(slot).join(sub)).unwrap();
            }
            fs::write(scandir.join(slot).join("run"), "#!/bin/sh\n").unwrap();
        }
        fs::remove_dir(scandir.join("other-service/log")).unwrap();
        let mut cfg = Config::resolve(&RawSettings::default()).unwrap();
        cfg.home = home;
        cfg.scandir = scandir;
        (t, cfg)
    }

    fn observe(cfg: &Config, slots: &mut SlotFileCache, files: &mut ProfileFileCache) -> Observed {
        // Each profile directory's identity, taken before its files are looked at (as the
        // watcher's): intents kept by identity are then held open and asked by descriptor.
        let profiles = cfg.home.join("profiles");
        let dir_key = |name: &str| crate::observe::stat_base::FileKey::of(&profiles.join(name));
        let w = crate::observe::observe_all_cached(cfg, None, slots, files, &dir_key);
        slots.end_pass();
        files.end_full_pass();
        w
    }

    /// A change to the world, made on a fresh one.
    enum Change {
        Nothing,
        /// A file written (made, or rewritten in place), by its path under the test's root.
        Write(&'static str, &'static str),
        Run(fn(&Config)),
    }

    impl Change {
        fn make(&self, c: &Config) {
            let root = c.home.parent().unwrap();
            match self {
                Change::Nothing => {}
                Change::Write(rel, content) => fs::write(root.join(rel), content).unwrap(),
                Change::Run(f) => f(c),
            }
        }
    }

    /// Each change to the world that a full observation sees.
    fn changes() -> Vec<(&'static str, Change)> {
        use Change::*;
        vec![
            ("nothing", Nothing),
            (
                "an intent rewritten in place, same size",
                Write("home/profiles/alpha/gateway_state.json", r#"{"desired_state":"stopped"}"#),
            ),
            (
                "an intent rewritten in place, same size, its mtime set back",
                Run(|c| {
                    use std::os::unix::fs::MetadataExt;
                    let f = c.home.join("profiles/alpha/gateway_state.json");
                    let m = fs::metadata(&f).unwrap();
                    fs::write(&f, r#"{"desired_state":"stopped"}"#).unwrap();
                    let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
                    nix::sys::stat::utimensat(
                        nix::fcntl::AT_FDCWD,
                        &f,
                        &t,
                        &t,
                        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                    )
                    .unwrap();
                }),
            ),
            (
                "an intent replaced by a rename",
                Run(|c| {
                    let tmp = c.home.join("profiles/beta/.tmp");
                    fs::write(&tmp, r#"{"desired_state":"running"}"#).unwrap();
                    fs::rename(tmp, c.home.join("profiles/beta/gateway_state.json")).unwrap();
                }),
            ),
            (
                "a profile made",
                Run(|c| {
                    fs::create_dir(c.home.join("profiles/gamma")).unwrap();
                    fs::write(c.home.join("profiles/gamma/SOUL.md"), "").unwrap();
                }),
            ),
            ("a profile removed", Run(|c| fs::remove_dir_all(c.home.join("profiles/beta")).unwrap())),
            ("a marker removed", Run(|c| fs::remove_file(c.home.join("profiles/alpha/SOUL.md")).unwrap())),
            ("a tombstone laid", Write("home/profiles/.deleted/alpha", "")),
            ("a marker made in a folder without one", Write("home/profiles/delta/SOUL.md", "")),
            ("a port set in .env", Write("home/profiles/alpha/.env", "API_SERVER_PORT=1\n")),
            ("an .env made", Write("home/profiles/beta/.env", "API_SERVER_PORT=1\n")),
            (
                "a lifecycle file made",
                Write("home/profiles/alpha/state/gateway.lifecycle.json", r#"{"phase":"running"}"#),
            ),
            (
                "a lifecycle file rewritten",
                Write("home/profiles/beta/state/gateway.lifecycle.json", r#"{"phase":"running"}"#),
            ),
            (
                "a config.yaml made",
                Write("home/profiles/alpha/config.yaml", "gateway:\n  standalone: true\n"),
            ),
            ("the port record rewritten", Write("home/.gateway-ports.json", r#"{"alpha":8651}"#)),
            ("the root's intent made", Write("home/gateway_state.json", r#"{"desired_state":"running"}"#)),
            ("a slot removed", Run(|c| fs::remove_dir_all(c.scandir.join("gateway-beta")).unwrap())),
            ("a slot's down file made", Write("scandir/gateway-alpha/down", "")),
            (
                "a dangling link in the scandir",
                Run(|c| std::os::unix::fs::symlink("/nonexistent", c.scandir.join("dangling")).unwrap()),
            ),
            (
                "a foreign service's logger made",
                Run(|c| fs::create_dir(c.scandir.join("other-service/log")).unwrap()),
            ),
            (
                "profiles/ replaced by a symlink to a copy",
                Run(|c| {
                    let copy = c.home.join("copy");
                    fs::rename(c.home.join("profiles"), &copy).unwrap();
                    std::os::unix::fs::symlink(&copy, c.home.join("profiles")).unwrap();
                }),
            ),
            ("a profile directory swapped for a symlink", Run(swap)),
        ]
    }

    fn swap(c: &Config) {
        let dir = c.home.join("profiles/alpha");
        let elsewhere = c.home.join("elsewhere");
        fs::rename(&dir, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    }

    /// The tape's promise, change by change: a replay finds every change a full observation
    /// sees, and an unchanged world replays unchanged. (Identities are kept however recent,
    /// as the tests write files just before: the racy rule has its own test.)
    #[test]
    fn a_replay_sees_every_change_an_observation_sees() {
        for (what, change) in changes() {
            let (_t, cfg) = world();
            let (mut slots, mut files) = (SlotFileCache::watching(), ProfileFileCache::trusting_recent());
            let first = observe(&cfg, &mut slots, &mut files);
            let (second, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
            assert_eq!(first, second, "{what}: the world is the same twice");
            let tape = tape.unwrap_or_else(|why| panic!("{what}: a settled observation is a tape: {why}"));
            assert!(tape.len() > 10, "{what}: {} steps", tape.len());
            assert_eq!(tape.fstats(), 2, "{what}: both intents asked by descriptor");
            assert!(tape.unchanged(), "{what}: nothing changed yet");
            if matches!(change, Change::Nothing) {
                assert!(tape.unchanged(), "a replay changes nothing itself");
                let listed: Vec<&[u8]> = tape
                    .steps
                    .iter()
                    .filter_map(|s| match *s {
                        Step::List { dir, .. } => Some(tape.get(dir)),
                        _ => None,
                    })
                    .collect();
                let distinct: std::collections::BTreeSet<&[u8]> = listed.iter().copied().collect();
                assert_eq!(listed.len(), distinct.len(), "a directory listed twice alike is one step");
                assert_eq!(observe(&cfg, &mut slots, &mut files), second);
                continue;
            }
            change.make(&cfg);
            let replayed = tape.unchanged();
            let now = observe(&cfg, &mut slots, &mut files);
            assert_ne!(now, second, "{what}: the change is one an observation sees");
            assert!(!replayed, "{what}: the replay missed it");
        }
    }

    #[test]
    fn a_recording_past_its_bound_is_no_tape_and_lets_go_of_its_memory() {
        let t = tempfile::tempdir().unwrap();
        let (_, tape) = record_trusting(i64::MAX, || {
            for _ in 0..=MAX_STEPS {
                let _ = StatBase::lstat(None, t.path());
            }
            RECORDER.with_borrow(|r| assert!(r.as_ref().unwrap().tape.steps.capacity() < MAX_STEPS));
        });
        assert!(tape.is_err_and(|why| why.contains("too much")));
    }

    #[test]
    fn content_reads_and_recent_identities_make_no_tape() {
        let (_t, cfg) = world();
        let (mut slots, mut files) = (SlotFileCache::watching(), ProfileFileCache::trusting_recent());
        // The first observation reads every file: no tape.
        let (_, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        assert!(tape.is_err(), "a first reading reads contents");
        // Files changed within the racy window: no tape either.
        let (_, tape) = record(|| observe(&cfg, &mut slots, &mut files));
        assert!(tape.is_err_and(|why| why.contains("recently")));
        // Outside any recording, nothing is recorded (and nothing breaks).
        assert!(!recording());
        opaque("ignored");
    }

    #[test]
    fn a_held_lock_is_replayed_and_its_release_seen() {
        let (_t, cfg) = world();
        let holder =
            crate::observe::test_lock::Holder::lock(&cfg.scandir.join("gateway-alpha/supervise/lock"));
        let (mut slots, mut files) = (SlotFileCache::watching(), ProfileFileCache::trusting_recent());
        let first = observe(&cfg, &mut slots, &mut files);
        let alpha = crate::model::ProfileName::parse_named("alpha").unwrap();
        assert!(first.scandir.slots[&alpha].supervised, "the held lock is seen");
        let (_, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        let tape = tape.unwrap();
        assert_eq!(held_locks(&tape), 1, "the lock is asked while its holder is not yet followed");
        assert!(tape.unchanged());
        // From now on its holder is followed: the lock is no longer asked.
        let (again, followed) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        let followed = followed.unwrap();
        assert!(again.scandir.slots[&alpha].supervised);
        assert_eq!(held_locks(&followed), 0, "a followed holder's lock is not asked");
        assert!(followed.unchanged());
        drop(holder);
        assert!(!tape.unchanged(), "the released lock is seen");
        assert!(!followed.unchanged(), "the holder's exit is seen");
        assert!(!observe(&cfg, &mut slots, &mut files).scandir.slots[&alpha].supervised);
    }

    fn held_locks(tape: &Tape) -> usize {
        tape.steps.iter().filter(|s| matches!(s, Step::Lock { at: LockAt::Held(_), .. })).count()
    }

    /// A supervisor that exits and is replaced (s6-svscan starts a new one) between two
    /// re-lists: the new holder is seen, and followed in its turn.
    #[test]
    fn a_replaced_supervisor_is_seen_and_followed_anew() {
        let (_t, cfg) = world();
        let lock = cfg.scandir.join("gateway-alpha/supervise/lock");
        let holder = crate::observe::test_lock::Holder::lock(&lock);
        let (mut slots, mut files) = (SlotFileCache::watching(), ProfileFileCache::trusting_recent());
        let alpha = crate::model::ProfileName::parse_named("alpha").unwrap();
        for _ in 0..2 {
            observe(&cfg, &mut slots, &mut files);
        }
        let (_, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        let tape = tape.unwrap();
        assert_eq!(held_locks(&tape), 0);
        drop(holder);
        let successor = crate::observe::test_lock::Holder::lock(&lock);
        assert!(!tape.unchanged(), "the first supervisor's exit is seen");
        let (seen, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        assert!(seen.scandir.slots[&alpha].supervised, "the successor holds the lock");
        assert_eq!(held_locks(&tape.unwrap()), 1, "its lock is asked once");
        let (_, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        let tape = tape.unwrap();
        assert_eq!(held_locks(&tape), 0, "then the successor is followed");
        drop(successor);
        assert!(!tape.unchanged());
        assert!(!observe(&cfg, &mut slots, &mut files).scandir.slots[&alpha].supervised);
    }
}
