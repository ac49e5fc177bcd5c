//! The readings of one observation, kept so that a later re-list can ask the same questions
//! again instead of observing the world afresh (issue 15).
//!
//! A full re-list of a quiet volume makes about the system calls it cannot do without (a
//! `stat` per profile folder and intent file, an `fcntl` per slot lock, a few listings), and
//! between them builds a whole [`crate::world::Observed`] from their answers: names, paths,
//! hash maps, caches. When the last pass settled, that world is only compared with the one
//! before and thrown away. Measured at 400 profiles, the building cost three to four times
//! the system calls themselves, and more after 30 s asleep, when the megabytes of state it
//! walks have left the CPU's caches.
//!
//! A [`Tape`] is the sequence of what one observation read, each answer with its question:
//! every identity lookup (`stat`, `lstat`, `fstatat`) and its result, every directory listing
//! with the names and types it returned, every question to a lock file with the holder it
//! named, the process command lines read, and the inotify queues found empty. It is recorded
//! while the observation runs (the read sites write to a recorder of this thread) and
//! replayed by asking the same questions in the same order, stopping at the first answer
//! that differs. If none differs, the observation would have seen what it saw: it is a
//! function of these answers and of the daemon's memory, which nothing changed since (the
//! daemon keeps a tape only while nothing ran after the pass that recorded it).
//!
//! Invariants:
//! * every system call an observation makes to read the world goes through a site that
//!   either records its answer here or marks the recording [`opaque`]. Content read through
//!   a cache, a watch added or removed, a listing asked only for a few names: any of them
//!   makes the recording no tape (the next re-list observes in full, and records again);
//! * an identity too recent to tell apart from a change made in the same clock tick (times
//!   within [`crate::observe::profile_files::RACY_SECS`] of the recording) makes it opaque
//!   too: a file written again in that tick would answer the same;
//! * a replay only reads: it opens nothing for writing, changes no watch, drains no queue.

use super::stat_base::{Stat, StatBase};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where in the tape's byte arena a path, a name list or a content lies.
#[derive(Clone, Copy, Debug)]
struct Span {
    at: u32,
    len: u32,
}

/// What a lock question answered: the holder, none, or no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Alive(i32),
    Absent,
    Unknown,
}

impl From<&crate::s6::Liveness> for Holder {
    fn from(l: &crate::s6::Liveness) -> Self {
        match l {
            crate::s6::Liveness::Alive(pid) => Holder::Alive(*pid),
            crate::s6::Liveness::Absent => Holder::Absent,
            crate::s6::Liveness::Unknown(_) => Holder::Unknown,
        }
    }
}

/// Which lock was asked.
#[derive(Clone, Copy, Debug)]
enum LockAt {
    /// A lock file the slot cache holds open (its descriptor stays the same while the tape
    /// lives: only an observation closes or replaces it, and one drops the tape first).
    Held(RawFd),
    /// A service directory's `supervise/lock`, by its path relative to a base (or absolute).
    Service { base: Option<u16>, dir: Span },
    /// s6-svscan's lock in the scandir.
    Scanner { scandir: Span },
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// An identity lookup: `path` relative to `bases[base]`, or absolute.
    Stat {
        base: Option<u16>,
        path: Span,
        follow: bool,
        seen: Result<Stat, i32>,
    },
    /// A whole listing: each entry as `[name length: u16 LE][kind byte][name]`.
    List {
        dir: Span,
        entries: Span,
        failed: Option<i32>,
    },
    Lock {
        at: LockAt,
        seen: Holder,
    },
    /// A small file read whole (a process's command line).
    Read {
        path: Span,
        seen: Result<Span, i32>,
    },
    /// An inotify descriptor that had nothing queued.
    Quiet {
        fd: RawFd,
    },
}

/// What an observation read, in order (see the module's documentation).
#[derive(Debug, Default)]
pub struct Tape {
    steps: Vec<Step>,
    arena: Vec<u8>,
    /// The directories stats were made relative to, by their absolute paths.
    bases: Vec<PathBuf>,
}

/// Steps a tape holds at most: a recording past it is no tape (the next re-list observes in
/// full, as before there were tapes). An observation makes a few steps per profile folder:
/// about 1,200 at 400 profiles, 11,000 at 10,000 folders; the agent can make folders without
/// end, and a tape must not double what it costs in memory.
const MAX_STEPS: usize = 1 << 16;

/// Bytes of paths, names and listings a tape holds at most (same reason).
const MAX_ARENA: usize = 4 << 20;

struct Recorder {
    tape: Tape,
    /// Why this recording cannot be replayed, once something made it so.
    opaque: Option<&'static str>,
    /// An identity whose mtime or ctime (seconds) is at or past this is too recent.
    racy_from: i64,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Runs `f` (an observation) and returns what it read as a tape, or why it cannot serve as
/// one.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Result<Tape, &'static str>) {
    let racy_from = super::profile_files::now_secs().saturating_sub(super::profile_files::RACY_SECS);
    record_trusting(racy_from, f)
}

/// [`record`], with identities changed at or after `racy_from` (seconds since the epoch)
/// too recent to keep (tests pass `i64::MAX` to keep every one).
pub fn record_trusting<R>(racy_from: i64, f: impl FnOnce() -> R) -> (R, Result<Tape, &'static str>) {
    RECORDER.with_borrow_mut(|r| {
        debug_assert!(r.is_none(), "recordings do not nest");
        *r = Some(Recorder { tape: Tape::default(), opaque: None, racy_from });
    });
    let out = f();
    let rec = RECORDER.with_borrow_mut(Option::take).expect("the recorder set above");
    (out, rec.opaque.map_or(Ok(rec.tape), Err))
}

fn with(f: impl FnOnce(&mut Recorder)) {
    RECORDER.with_borrow_mut(|r| {
        if let Some(r) = r.as_mut()
            && r.opaque.is_none()
        {
            f(r);
            if r.tape.steps.len() > MAX_STEPS || r.tape.arena.len() > MAX_ARENA {
                r.opaque = Some("too much was read to keep it");
                r.tape = Tape::default();
            }
        }
    });
}

/// Whether an observation is being recorded on this thread (for sites whose record costs
/// work of its own).
pub(crate) fn recording() -> bool {
    RECORDER.with_borrow(|r| r.as_ref().is_some_and(|r| r.opaque.is_none()))
}

/// The read just made cannot be replayed: the recording is no tape.
pub(crate) fn opaque(why: &'static str) {
    with(|r| r.opaque = Some(why));
}

impl Tape {
    fn put(&mut self, bytes: &[u8]) -> Span {
        let at = u32::try_from(self.arena.len()).unwrap_or(u32::MAX);
        self.arena.extend_from_slice(bytes);
        Span { at, len: u32::try_from(bytes.len()).unwrap_or(u32::MAX) }
    }

    fn get(&self, s: Span) -> &[u8] {
        self.arena.get(s.at as usize..(s.at as usize).saturating_add(s.len as usize)).unwrap_or(&[])
    }

    fn path(&self, s: Span) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.get(s)))
    }

    fn intern_base(&mut self, base: &Path) -> Option<u16> {
        let i = match self.bases.iter().position(|b| b == base) {
            Some(i) => i,
            None => {
                self.bases.push(base.to_path_buf());
                self.bases.len() - 1
            }
        };
        u16::try_from(i).ok()
    }

    /// Steps recorded (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// An identity lookup: `path` relative to the directory `base` was opened on (absolute when
/// `base` is `None`), and its answer.
pub(crate) fn stat(base: Option<&Path>, path: &Path, follow: bool, seen: &std::io::Result<Stat>) {
    with(|r| {
        if let Ok(st) = seen
            && st.key.mtime.0.max(st.key.ctime.0) >= r.racy_from
        {
            r.opaque = Some("an identity changed too recently to tell a later change apart");
            return;
        }
        let base = match base {
            Some(b) => match r.tape.intern_base(b) {
                Some(i) => Some(i),
                None => {
                    r.opaque = Some("too many base directories");
                    return;
                }
            },
            None => None,
        };
        let path = r.tape.put(path.as_os_str().as_bytes());
        let seen = seen.as_ref().map(|s| *s).map_err(errno);
        r.tape.steps.push(Step::Stat { base, path, follow, seen });
    });
}

/// A listing's entries, collected while it runs (only while recording: see [`recording`]).
#[derive(Default)]
pub(crate) struct Listing {
    bytes: Vec<u8>,
    /// Past [`MAX_ARENA`]: the recording is opaque, and nothing more is kept.
    over: bool,
}

impl Listing {
    pub(crate) fn entry(&mut self, name: &[u8], kind: u8) {
        if self.over {
            return;
        }
        if self.bytes.len() + name.len() > MAX_ARENA {
            opaque("too much was read to keep it");
            (self.bytes, self.over) = (Vec::new(), true);
            return;
        }
        let Ok(len) = u16::try_from(name.len()) else {
            opaque("a name longer than a file system allows");
            return;
        };
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.push(kind);
        self.bytes.extend_from_slice(name);
    }

    /// The listing of `dir` ended (`failed`: with this error).
    pub(crate) fn done(self, dir: &Path, failed: Option<&std::io::Error>) {
        with(|r| {
            // A directory listed again with the same answer (an observation lists `profiles/`
            // and the scandir twice) is one step: a replay that gets that answer once would
            // get it for both, and one that does not fails either way.
            let failed = failed.map(errno);
            let t = &r.tape;
            let again = t.steps.iter().any(|s| {
                matches!(*s, Step::List { dir: d, entries: e, failed: f }
                    if f == failed && t.get(d) == dir.as_os_str().as_bytes() && t.get(e) == &self.bytes[..])
            });
            if again {
                return;
            }
            let dir = r.tape.put(dir.as_os_str().as_bytes());
            let entries = r.tape.put(&self.bytes);
            r.tape.steps.push(Step::List { dir, entries, failed });
        });
    }
}

/// A question to the lock the slot cache holds open as `fd`.
pub(crate) fn held_lock(fd: RawFd, seen: &crate::s6::Liveness) {
    with(|r| r.tape.steps.push(Step::Lock { at: LockAt::Held(fd), seen: seen.into() }));
}

/// A question to the lock of the service directory `dir` (relative to `base`, or absolute).
pub(crate) fn service_lock(base: Option<&Path>, dir: &Path, seen: &crate::s6::Liveness) {
    with(|r| {
        let Some(base) = base.map(|b| r.tape.intern_base(b)).map_or(Some(None), |i| i.map(Some)) else {
            r.opaque = Some("too many base directories");
            return;
        };
        let dir = r.tape.put(dir.as_os_str().as_bytes());
        r.tape.steps.push(Step::Lock { at: LockAt::Service { base, dir }, seen: seen.into() });
    });
}

/// The question to s6-svscan's lock.
pub(crate) fn scanner_lock(scandir: &Path, seen: Option<i32>, failed: bool) {
    with(|r| {
        let scandir = r.tape.put(scandir.as_os_str().as_bytes());
        let seen = match (seen, failed) {
            (_, true) => Holder::Unknown,
            (Some(pid), _) => Holder::Alive(pid),
            (None, _) => Holder::Absent,
        };
        r.tape.steps.push(Step::Lock { at: LockAt::Scanner { scandir }, seen });
    });
}

/// A small file read whole.
pub(crate) fn read(path: &Path, seen: &std::io::Result<Vec<u8>>) {
    with(|r| {
        let p = r.tape.put(path.as_os_str().as_bytes());
        let seen = match seen {
            Ok(bytes) => Ok(r.tape.put(bytes)),
            Err(e) => Err(errno(e)),
        };
        r.tape.steps.push(Step::Read { path: p, seen });
    });
}

/// The inotify descriptor `fd` was read until empty.
pub(crate) fn quiet(fd: RawFd) {
    with(|r| r.tape.steps.push(Step::Quiet { fd }));
}

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
            Step::List { dir, entries, failed } => {
                let want = self.get(entries);
                let mut at = 0usize;
                let mut same = true;
                let outcome = super::listing::each(self.path(dir), |name, kind| {
                    // As [`Listing::entry`] wrote it: length, kind, name.
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
    use super::*;
    use crate::config::{Config, RawSettings};
    use crate::observe::profile_files::ProfileFileCache;
    use crate::observe::slots::SlotFileCache;
    use crate::world::Observed;
    use std::fs;

    /// A home with two profiles (one with `.env` and a lifecycle file), a tombstone
    /// directory, a port record, and a scandir with their slots and a foreign service.
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
        let w = crate::observe::observe_all_cached(cfg, None, slots, files, &|_| None);
        slots.end_pass();
        files.end_full_pass();
        w
    }

    /// Each change to the world that a full observation sees, one per fresh world; `None`:
    /// the world as it was.
    #[allow(clippy::type_complexity)]
    fn changes() -> Vec<(&'static str, Option<fn(&Config)>)> {
        let mut v: Vec<(&'static str, Option<fn(&Config)>)> = vec![
            ("nothing", None),
            (
                "an intent rewritten in place, same size",
                Some(|c| {
                    fs::write(
                        c.home.join("profiles/alpha/gateway_state.json"),
                        r#"{"desired_state":"stopped"}"#,
                    )
                    .unwrap()
                }),
            ),
            (
                "an intent replaced by a rename",
                Some(|c| {
                    let tmp = c.home.join("profiles/beta/.tmp");
                    fs::write(&tmp, r#"{"desired_state":"running"}"#).unwrap();
                    fs::rename(tmp, c.home.join("profiles/beta/gateway_state.json")).unwrap();
                }),
            ),
            (
                "a profile made",
                Some(|c| {
                    fs::create_dir(c.home.join("profiles/gamma")).unwrap();
                    fs::write(c.home.join("profiles/gamma/SOUL.md"), "").unwrap();
                }),
            ),
            ("a profile removed", Some(|c| fs::remove_dir_all(c.home.join("profiles/beta")).unwrap())),
            ("a marker removed", Some(|c| fs::remove_file(c.home.join("profiles/alpha/SOUL.md")).unwrap())),
            ("a tombstone laid", Some(|c| fs::write(c.home.join("profiles/.deleted/alpha"), "").unwrap())),
            (
                "a port set in .env",
                Some(|c| fs::write(c.home.join("profiles/alpha/.env"), "API_SERVER_PORT=1\n").unwrap()),
            ),
            (
                "an .env made",
                Some(|c| fs::write(c.home.join("profiles/beta/.env"), "API_SERVER_PORT=1\n").unwrap()),
            ),
            (
                "a lifecycle file made",
                Some(|c| {
                    fs::write(
                        c.home.join("profiles/alpha/state/gateway.lifecycle.json"),
                        r#"{"phase":"running"}"#,
                    )
                    .unwrap()
                }),
            ),
            (
                "a lifecycle file rewritten",
                Some(|c| {
                    fs::write(
                        c.home.join("profiles/beta/state/gateway.lifecycle.json"),
                        r#"{"phase":"running"}"#,
                    )
                    .unwrap()
                }),
            ),
            (
                "a config.yaml made",
                Some(|c| {
                    fs::write(c.home.join("profiles/alpha/config.yaml"), "gateway:\n  standalone: true\n")
                        .unwrap()
                }),
            ),
            (
                "the port record rewritten",
                Some(|c| fs::write(c.home.join(".gateway-ports.json"), r#"{"alpha":8651}"#).unwrap()),
            ),
            (
                "the root's intent made",
                Some(|c| {
                    fs::write(c.home.join("gateway_state.json"), r#"{"desired_state":"running"}"#).unwrap()
                }),
            ),
            ("a slot removed", Some(|c| fs::remove_dir_all(c.scandir.join("gateway-beta")).unwrap())),
            (
                "a slot's down file made",
                Some(|c| fs::write(c.scandir.join("gateway-alpha/down"), "").unwrap()),
            ),
            (
                "a dangling link in the scandir",
                Some(|c| std::os::unix::fs::symlink("/nonexistent", c.scandir.join("dangling")).unwrap()),
            ),
            (
                "a foreign service's logger made",
                Some(|c| fs::create_dir(c.scandir.join("other-service/log")).unwrap()),
            ),
            (
                "profiles/ replaced by a symlink to a copy",
                Some(|c| {
                    let copy = c.home.join("copy");
                    fs::rename(c.home.join("profiles"), &copy).unwrap();
                    std::os::unix::fs::symlink(&copy, c.home.join("profiles")).unwrap();
                }),
            ),
        ];
        v.push(("a profile directory swapped for a symlink", Some(swap)));
        v
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
            assert!(tape.unchanged(), "{what}: nothing changed yet");
            let Some(change) = change else {
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
            };
            change(&cfg);
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

    /// A child process holding a POSIX write lock on `path` (as s6-supervise does), killed
    /// when dropped.
    struct Holder(nix::unistd::Pid);

    impl Holder {
        fn lock(path: &Path) -> Holder {
            use nix::libc;
            let file = fs::File::options().create(true).truncate(false).write(true).open(path).unwrap();
            let (r, w) = nix::unistd::pipe().unwrap();
            // SAFETY: the child makes only async-signal-safe system calls (fcntl, write,
            // pause) on descriptors it inherited, then waits to be killed.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => unsafe {
                    use std::os::fd::AsRawFd;
                    let mut fl: libc::flock = std::mem::zeroed();
                    fl.l_type = libc::F_WRLCK as libc::c_short;
                    fl.l_whence = libc::SEEK_SET as libc::c_short;
                    libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl);
                    libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                    loop {
                        libc::pause();
                    }
                },
                nix::unistd::ForkResult::Parent { child } => {
                    drop(w);
                    let mut b = [0u8; 1];
                    assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 1, "the child holds the lock");
                    Holder(child)
                }
            }
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.0, None);
        }
    }

    #[test]
    fn a_held_lock_is_replayed_and_its_release_seen() {
        let (_t, cfg) = world();
        let holder = Holder::lock(&cfg.scandir.join("gateway-alpha/supervise/lock"));
        let (mut slots, mut files) = (SlotFileCache::watching(), ProfileFileCache::trusting_recent());
        let first = observe(&cfg, &mut slots, &mut files);
        let alpha = crate::model::ProfileName::parse_named("alpha").unwrap();
        assert!(first.scandir.slots[&alpha].supervised, "the held lock is seen");
        let (_, tape) = record_trusting(i64::MAX, || observe(&cfg, &mut slots, &mut files));
        let tape = tape.unwrap();
        assert!(tape.unchanged());
        drop(holder);
        assert!(!tape.unchanged(), "the released lock is seen");
        assert!(!observe(&cfg, &mut slots, &mut files).scandir.slots[&alpha].supervised);
    }
}
