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

use super::identity::Stat;
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where in the tape's byte arena a path, a name list or a content lies.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    pub(super) at: u32,
    pub(super) len: u32,
}

/// What a lock question answered: the holder, none, or no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
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
pub(super) enum LockAt {
    /// A lock file the slot cache holds open (its descriptor stays the same while the tape
    /// lives: only an observation closes or replaces it, and one drops the tape first).
    Held(RawFd),
    /// A service directory's `supervise/lock`, by its path relative to a base (or absolute).
    Service { base: Option<u16>, dir: Span },
    /// s6-svscan's lock in the scandir.
    Scanner { scandir: Span },
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    /// An identity lookup: `path` relative to `bases[base]`, or absolute.
    Stat {
        base: Option<u16>,
        path: Span,
        follow: bool,
        seen: Result<Stat, i32>,
    },
    /// An identity asked of a descriptor a cache holds (see [`fstat`]).
    Fstat {
        fd: RawFd,
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
    pub(super) steps: Vec<Step>,
    pub(super) arena: Vec<u8>,
    /// The directories stats were made relative to, by their absolute paths.
    pub(super) bases: Vec<PathBuf>,
}

/// Steps a tape holds at most: a recording past it is no tape (the next re-list observes in
/// full, as before there were tapes). An observation makes a few steps per profile folder:
/// about 1,200 at 400 profiles, 11,000 at 10,000 folders; the agent can make folders without
/// end, and a tape must not double what it costs in memory.
pub(super) const MAX_STEPS: usize = 1 << 16;

/// Bytes of paths, names and listings a tape holds at most (same reason).
const MAX_ARENA: usize = 4 << 20;

pub(super) struct Recorder {
    pub(super) tape: Tape,
    /// Why this recording cannot be replayed, once something made it so.
    opaque: Option<&'static str>,
    /// An identity whose mtime or ctime (seconds) is at or past this is too recent.
    racy_from: i64,
}

thread_local! {
    pub(super) static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Runs `f` (an observation) and returns what it read as a tape, or why it cannot serve as
/// one.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Result<Tape, &'static str>) {
    let racy_from = super::identity::now_secs().saturating_sub(super::identity::RACY_SECS);
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

    pub(super) fn get(&self, s: Span) -> &[u8] {
        self.arena.get(s.at as usize..(s.at as usize).saturating_add(s.len as usize)).unwrap_or(&[])
    }

    pub(super) fn path(&self, s: Span) -> &Path {
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

    /// Identities asked of descriptors (for tests).
    #[cfg(test)]
    pub(crate) fn fstats(&self) -> usize {
        self.steps.iter().filter(|s| matches!(s, Step::Fstat { .. })).count()
    }

    /// Steps recorded (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

pub(super) fn errno(e: &std::io::Error) -> i32 {
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

/// An identity asked of the descriptor `fd`, which a cache holds open (a file it keeps by
/// identity): the cache closes or replaces it only during an observation, and one drops the
/// tape first, as for [`held_lock`]. Recent identities make the recording opaque, as in
/// [`stat`].
pub(crate) fn fstat(fd: RawFd, seen: &std::io::Result<Stat>) {
    with(|r| {
        if let Ok(st) = seen
            && st.key.mtime.0.max(st.key.ctime.0) >= r.racy_from
        {
            r.opaque = Some("an identity changed too recently to tell a later change apart");
            return;
        }
        let seen = seen.as_ref().map(|s| *s).map_err(errno);
        r.tape.steps.push(Step::Fstat { fd, seen });
    });
}

/// A listing's entries, collected while it runs (only while recording: see [`recording`]).
#[derive(Default)]
pub(crate) struct Listing {
    pub(super) bytes: Vec<u8>,
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
