//! Profile files as last parsed, so a hostile volume cannot make every pass expensive
//! (SPEC §9.3): a file is parsed again only when its identity (device, inode, size, mtime,
//! ctime) changed, and a file hard-linked into many profiles is parsed at most once per pass.
//!
//! Invariants:
//! - only results computed from a regular file whose identity was the same before and after
//!   the read are kept, and only results (bounded: an intent with its warning, a prior exit, a
//!   flag), never file contents;
//! - a file whose mtime or ctime is within [`RACY_SECS`] of the read is not kept across passes
//!   (its timestamps may not yet tell a same-size rewrite in the same clock tick apart); it is
//!   still shared by its hard links within the pass;
//! - entries no full pass used are dropped at its end ([`ProfileFileCache::end_full_pass`]), so
//!   the cache holds at most one entry per admitted profile file.

use crate::hashing::FastMap;
use crate::layout::child;
use crate::layout::home::STATE_DIR;
use crate::model::PriorExit;
use crate::observe::safe_read::{MAX_STATE_FILE, ReadError, read_bounded};
use crate::observe::stat_base::FileKey;
use crate::observe::stat_base::StatBase;
use crate::observe::volume::{
    self, ENV_FILE, INTENT_FILE, IntentOutcome, IntentReading, LIFECYCLE_FILE, MAX_ENV_FILE,
};
use std::path::Path;

pub use super::identity::RACY_SECS;
use super::identity::is_racy;

/// A parsed result, with the identity of the file it was parsed from.
#[derive(Debug)]
struct Entry<T> {
    key: FileKey,
    value: T,
    /// The last full pass that used it.
    used: u64,
    /// The file, held open (`O_PATH`: no read or write access, no open of a FIFO) while its
    /// directory keeps the identity it had before the file was looked up: see [`Held`].
    held: Option<Held>,
}

/// A file kept open so that its identity is asked of the descriptor (`fstat`) instead of its
/// path: a lookup of two path components less for each profile at each re-list (issue 15).
///
/// Why that answers what the path would: making, removing or renaming an entry of a
/// directory changes the directory's mtime and ctime, and nobody can set a ctime back. The
/// descriptor was opened after `dir` was read from the directory and found it was not too
/// recent ([`RACY_SECS`]), and it named the file with the entry's identity. While the
/// directory still has identity `dir`, none of its entries changed since, so the file's name
/// still names the file held here. (A mount made over the file would not show; only root can
/// mount, and that is not a way to change a profile.)
#[derive(Debug)]
struct Held {
    fd: std::os::fd::OwnedFd,
    dir: FileKey,
}

/// Parsed results of one kind of file, by path and, within a pass, by inode.
#[derive(Debug)]
pub struct IdentityCache<T> {
    /// By the path's bytes: hashing and comparing a `Path` goes component by component.
    by_path: FastMap<std::ffi::OsString, Entry<T>>,
    /// This pass's results by (device, inode): hard links share them. Cleared after each pass.
    by_inode: FastMap<(u64, u64), (FileKey, T)>,
    generation: u64,
    /// Parses done (for tests and benchmarks).
    pub parses: u64,
    /// [`RACY_SECS`], but tests can make every file look old.
    racy_secs: i64,
    /// How many more files may be held open ([`Entry::held`]).
    held_left: usize,
    /// Held files let go since [`IdentityCache::take_released`] was last called, still
    /// open. At most [`MAX_RELEASED`]; past that, closed on the spot.
    released: Vec<std::os::fd::OwnedFd>,
}

/// Released descriptors a cache keeps for [`IdentityCache::take_released`] at most.
const MAX_RELEASED: usize = 1024;

impl<T> Default for IdentityCache<T> {
    fn default() -> Self {
        IdentityCache {
            by_path: FastMap::default(),
            by_inode: FastMap::default(),
            generation: 0,
            parses: 0,
            racy_secs: RACY_SECS,
            held_left: 0,
            released: Vec::new(),
        }
    }
}

impl<T: Clone> IdentityCache<T> {
    /// The result of `parse` on the bounded read of `path`, from the cache when the file's
    /// identity is unchanged. Anything that is not a regular file (missing, symlink, FIFO...)
    /// is never opened and costs one `lstat` and a refusal, so it is not cached.
    pub fn get(&mut self, path: &Path, limit: u64, parse: impl Fn(Result<Vec<u8>, ReadError>) -> T) -> T {
        self.get_at(None, path, limit, parse)
    }

    /// [`IdentityCache::get`], its identity checked by a path relative to `base` when `path`
    /// is under it (see [`StatBase`] for why that is as safe); the file itself is still read,
    /// and its identity checked after the read, by its absolute path.
    pub fn get_at(
        &mut self,
        base: Option<&StatBase>,
        path: &Path,
        limit: u64,
        parse: impl Fn(Result<Vec<u8>, ReadError>) -> T,
    ) -> T {
        let key = match StatBase::lstat(base, path) {
            Ok(st) if st.regular => st.key,
            // Missing (the common case for optional files): what the bounded read would say,
            // without a second `lstat`.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let old = self.by_path.remove(path.as_os_str());
                self.let_go(old);
                return parse(Err(ReadError::Missing));
            }
            _ => {
                let old = self.by_path.remove(path.as_os_str());
                self.let_go(old);
                return parse(read_bounded(path, limit));
            }
        };
        if let Some(e) = self.by_path.get_mut(path.as_os_str())
            && e.key == key
        {
            e.used = self.generation;
            return e.value.clone();
        }
        if let Some((k, value)) = self.by_inode.get(&(key.dev, key.ino))
            && *k == key
        {
            let value = value.clone();
            self.remember(path, key, &value);
            return value;
        }
        let value = parse(read_bounded(path, limit));
        self.parses += 1;
        let after = StatBase::lstat(None, path).ok().filter(|s| s.regular).map(|s| s.key);
        if after == Some(key) {
            self.by_inode.insert((key.dev, key.ino), (key, value.clone()));
            self.remember(path, key, &value);
        } else {
            let old = self.by_path.remove(path.as_os_str());
            self.let_go(old);
        }
        value
    }

    fn remember(&mut self, path: &Path, key: FileKey, value: &T) {
        let old = if is_racy(&key, self.racy_secs) {
            self.by_path.remove(path.as_os_str())
        } else {
            let entry = Entry { key, value: value.clone(), used: self.generation, held: None };
            self.by_path.insert(path.as_os_str().to_owned(), entry)
        };
        self.let_go(old);
    }

    /// Gives an entry's held file (if any) back to the budget.
    fn let_go(&mut self, old: Option<Entry<T>>) {
        if let Some(h) = old.and_then(|e| e.held) {
            self.release(h);
        }
    }

    /// Gives a held file back to the budget; its descriptor waits for `take_released`.
    fn release(&mut self, h: Held) {
        self.held_left += 1;
        if self.released.len() < MAX_RELEASED {
            self.released.push(h.fd);
        }
    }

    /// The descriptors of held files let go since the last call, to be closed once the
    /// pass has written what it planned.
    ///
    /// Why not on the spot: an intent file the agent replaced the usual way (a temporary
    /// file renamed over it) has no name left, and the held descriptor is its last
    /// reference. Closing it frees the inode, in the thread that closes it: on ext4 the file is
    /// truncated and its blocks freed, and on a filesystem mounted with `discard` that may
    /// wait for the device (0.6 ms once in a lab trace, in the pass that read the new intent,
    /// before the control byte it asked for).
    pub fn take_released(&mut self) -> Vec<std::os::fd::OwnedFd> {
        std::mem::take(&mut self.released)
    }

    /// [`IdentityCache::get_at`] for a file of a directory whose identity `dir` was read
    /// before the file was looked up in this pass (`None`: unknown). While `dir` is the one
    /// the file was opened under, its identity is asked of the descriptor ([`Held`]); else
    /// by its path, as `get_at` does, after which it is opened and held when it may be.
    pub fn get_in(
        &mut self,
        base: Option<&StatBase>,
        dir: Option<FileKey>,
        path: &Path,
        limit: u64,
        parse: impl Fn(Result<Vec<u8>, ReadError>) -> T,
    ) -> T {
        if let Some(d) = dir
            && let Some(e) = self.by_path.get_mut(path.as_os_str())
            && let Some(h) = e.held.as_ref().filter(|h| h.dir == d)
        {
            match StatBase::fstat(std::os::fd::AsFd::as_fd(&h.fd)) {
                Ok(st) if st.regular && st.key == e.key => {
                    e.used = self.generation;
                    return e.value.clone();
                }
                // Changed in place (or no answer): by its path, as below.
                _ => {}
            }
        }
        let value = self.get_at(base, path, limit, parse);
        if let Some(d) = dir {
            self.hold(base, d, path);
        }
        value
    }

    /// Opens the file of the entry for `path` (just confirmed or made by a read in the
    /// directory whose identity is `dir`) and holds it, if it is not held under `dir` yet,
    /// the budget allows it, and what opened is the file the entry was parsed from.
    fn hold(&mut self, base: Option<&StatBase>, dir: FileKey, path: &Path) {
        let Some(e) = self.by_path.get_mut(path.as_os_str()) else { return };
        if e.held.as_ref().is_some_and(|h| h.dir == dir) {
            return;
        }
        if let Some(h) = e.held.take() {
            self.release(h);
        }
        if self.held_left == 0 {
            return;
        }
        let Some(e) = self.by_path.get_mut(path.as_os_str()) else { return };
        let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
        let opened = match base.and_then(|b| Some((b, super::stat_base::under(b.path(), path)?))) {
            Some((b, rel)) => nix::fcntl::openat(b, rel, flags, nix::sys::stat::Mode::empty()),
            None => nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()),
        };
        let Ok(fd) = opened else { return };
        // Not through `StatBase::fstat`: this only checks what was opened, it reads nothing
        // an observation depends on.
        if nix::sys::stat::fstat(&fd).is_ok_and(|st| super::identity::of(&st).key == e.key) {
            e.held = Some(Held { fd, dir });
            self.held_left -= 1;
        }
    }

    /// Files this cache may hold open at most (see [`Held`]); 0 until called.
    pub fn set_held_budget(&mut self, n: usize) {
        let held = self.by_path.values().filter(|e| e.held.is_some()).count();
        self.held_left = n.saturating_sub(held);
    }

    /// Ends a pass (full or partial): hard links are shared within a pass only.
    pub fn end_pass(&mut self) {
        self.by_inode.clear();
    }

    /// Ends a full pass: also forgets files no read used since the last full pass.
    pub fn end_full_pass(&mut self) {
        self.end_pass();
        let generation = self.generation;
        let unused: Vec<Held> =
            self.by_path.extract_if(|_, e| e.used != generation).filter_map(|(_, e)| e.held).collect();
        for h in unused {
            self.release(h);
        }
        self.generation += 1;
    }
}

/// The three files of a profile the daemon reads, as last parsed.
#[derive(Debug, Default)]
pub struct ProfileFileCache {
    pub intent: IdentityCache<IntentOutcome>,
    pub prior: IdentityCache<PriorExit>,
    pub env: IdentityCache<bool>,
    pub yaml: IdentityCache<crate::observe::gateway_yaml::YamlOutcome>,
    /// The port record, as last parsed.
    pub ports: IdentityCache<crate::observe::PortsReading>,
    /// `profiles/`, held open during a full re-list: the files under it are stat'ed by their
    /// short relative paths.
    base: Option<StatBase>,
    /// The optional files found missing in each profile directory, while it is unchanged.
    absent: FastMap<std::ffi::OsString, Absent>,
    /// The identity of the directory whose files are being read, taken before they are looked
    /// at ([`ProfileFileCache::enter_dir`]); `None`: unknown, every file is looked at.
    dir_now: Option<FileKey>,
    /// What this reading of the directory found missing so far.
    missing: Missing,
    generation: u64,
    /// Tests make every directory look old enough to remember ([`RACY_SECS`] otherwise).
    racy_secs: Option<i64>,
    /// Folders of `profiles/` nobody watches (over the capacity cap), by name: the folder's
    /// identity when its `SOUL.md` was last looked up, whether a marker that is no symlink was
    /// there (`false`: none at all), and the last full pass that used it. While the folder
    /// keeps that identity the answer stands (the rule of [`Absent`]: making, removing or
    /// renaming an entry changes a directory's times), and discovery looks up the folder
    /// instead of its marker: one path component instead of two, for each of the thousands of
    /// folders a volume may hold over the cap. At most [`MAX_FOLDER_MARKS`].
    folder_marks: FastMap<std::ffi::OsString, (FileKey, bool, u64)>,
}

/// Folders whose marker is kept by identity at most: past it, the others' markers are looked
/// up at every re-list, as before (the agent can make folders without end).
const MAX_FOLDER_MARKS: usize = 1 << 16;

/// Optional files a profile directory lacked when it had identity `key` (times included).
/// A file made in a directory, or renamed into it, changes the directory's mtime and ctime:
/// while `key` holds, they are still missing, and a re-list need not look for them again
/// (issue 15: three failing lookups per profile at every re-list, for files most profiles
/// never have). The lifecycle file is under `state/`: only a missing `state/` counts.
#[derive(Clone, Copy, Debug)]
struct Absent {
    key: FileKey,
    missing: Missing,
    /// `SOUL.md` was there, and not a symlink: it still is.
    marker: bool,
    used: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Missing {
    env: bool,
    yaml: bool,
    /// No `state/` in the directory (then no lifecycle file either).
    state_dir: bool,
    /// The lifecycle file was missing (`state/` maybe there).
    lifecycle: bool,
}

impl ProfileFileCache {
    /// A cache that may hold up to `files` intent files open, to ask their identity of the
    /// descriptor ([`Held`]).
    pub fn holding(files: usize) -> Self {
        let mut c = ProfileFileCache::default();
        c.intent.set_held_budget(files);
        c
    }

    /// Closes the intent files let go since the last call: call it once a pass has applied
    /// what it planned, not before (see [`IdentityCache::take_released`]).
    pub fn close_released(&mut self) {
        drop(self.intent.take_released());
    }

    /// Before a full re-list reads the files of the profile at `dir`: the directory's identity
    /// as stat'ed *before* its files are looked at (the watcher's, at the start of the pass),
    /// or `None` (every file is looked at).
    pub fn enter_dir(&mut self, dir: &Path, key: Option<FileKey>) {
        self.missing = Missing::default();
        let racy = self.racy_secs.unwrap_or(RACY_SECS);
        self.dir_now = key
            .filter(|k| self.absent.get(dir.as_os_str()).is_some_and(|a| a.key == *k) || !is_racy(k, racy));
    }

    /// After the files of the profile at `dir` were read: what was missing stands while the
    /// directory keeps the identity given to [`Self::enter_dir`] (unless that is too recent
    /// to tell a later change apart).
    pub fn leave_dir(&mut self, dir: &Path, marker_plain: bool) {
        let Some(key) = self.dir_now.take() else {
            self.absent.remove(dir.as_os_str());
            return;
        };
        let mut missing = self.missing;
        if let Some(a) = self.absent.get_mut(dir.as_os_str())
            && a.key == key
        {
            a.used = self.generation;
            return;
        }
        // Is it `state/` that is missing, or only the file in it?
        missing.state_dir = missing.lifecycle
            && StatBase::lstat(self.base.as_ref(), &child(dir, STATE_DIR))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        if is_racy(&key, self.racy_secs.unwrap_or(RACY_SECS)) {
            self.absent.remove(dir.as_os_str());
        } else {
            let entry = Absent { key, missing, marker: marker_plain, used: self.generation };
            self.absent.insert(dir.as_os_str().to_owned(), entry);
        }
    }

    /// Is the profile directory `dir`, whose identity is `key` now (taken before it is
    /// looked at), known to hold its `SOUL.md`? Then discovery need not look it up.
    pub fn marker_known(&self, dir: &Path, key: Option<FileKey>) -> bool {
        key.is_some_and(|k| self.absent.get(dir.as_os_str()).is_some_and(|a| a.key == k && a.marker))
    }

    /// Does the entry `name` of `profiles/` (a real directory, not watched: no identity of
    /// it is known from this pass) hold its `SOUL.md`? The folder is looked up first (its
    /// identity taken before anything in it), then its marker unless the folder kept the
    /// identity it had when the marker was last looked up. `Some(true)`: a marker that is no
    /// symlink; `Some(false)`: no marker at all; `None`: discovery looks for itself, with its
    /// own rules for a symlinked marker or a lookup that failed.
    pub fn folder_marker(&mut self, name: &std::ffi::OsStr) -> Option<bool> {
        let base = self.base.as_ref()?;
        let key = base.stat_entry(name.to_str()?).ok().filter(|s| s.dir)?.key;
        let generation = self.generation;
        if let Some((k, there, used)) = self.folder_marks.get_mut(name)
            && *k == key
        {
            *used = generation;
            return Some(*there);
        }
        let marker = child(&child(base.path(), name), crate::layout::home::MARKER_FILE);
        let there = match StatBase::lstat(Some(base), &marker) {
            Ok(st) if !st.symlink => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            _ => return None,
        };
        if !is_racy(&key, self.racy_secs.unwrap_or(RACY_SECS))
            && (self.folder_marks.len() < MAX_FOLDER_MARKS || self.folder_marks.contains_key(name))
        {
            self.folder_marks.insert(name.to_owned(), (key, there, generation));
        }
        Some(there)
    }

    /// What the directory being read lacked when it last had its present identity.
    fn known_missing(&self, dir: &Path) -> Missing {
        match (self.dir_now, self.absent.get(dir.as_os_str())) {
            (Some(now), Some(a)) if a.key == now => a.missing,
            _ => Missing::default(),
        }
    }

    /// Stats files under `base` relative to it until the next call (`None`: absolute paths).
    pub fn set_base(&mut self, base: Option<StatBase>) {
        self.base = base;
    }

    /// `<dir>/gateway_state.json` (SPEC §5.2).
    pub fn intent(&mut self, dir: &Path) -> IntentReading {
        let path = child(dir, INTENT_FILE);
        self.intent
            .get_in(self.base.as_ref(), self.dir_now, &path, MAX_STATE_FILE, volume::intent_outcome)
            .at(&path)
    }

    /// `<dir>/state/gateway.lifecycle.json` (SPEC §5.3).
    pub fn prior_exit(&mut self, dir: &Path) -> PriorExit {
        if self.known_missing(dir).state_dir {
            self.missing.lifecycle = true;
            return PriorExit::Unknown;
        }
        let gone = std::cell::Cell::new(false);
        let exit = self.prior.get_at(self.base.as_ref(), &child(dir, LIFECYCLE_FILE), MAX_STATE_FILE, |r| {
            gone.set(matches!(r, Err(ReadError::Missing)));
            r.map_or(PriorExit::Unknown, |b| volume::parse_prior_exit(&b))
        });
        self.missing.lifecycle = gone.get();
        exit
    }

    /// Does `<dir>/.env` set `API_SERVER_PORT` (SPEC §7.4)?
    pub fn env_sets_port(&mut self, dir: &Path) -> bool {
        if self.known_missing(dir).env {
            self.missing.env = true;
            return false;
        }
        let gone = std::cell::Cell::new(false);
        let sets = self.env.get_at(self.base.as_ref(), &child(dir, ENV_FILE), MAX_ENV_FILE, |r| {
            gone.set(matches!(r, Err(ReadError::Missing)));
            r.is_ok_and(|b| volume::parse_env_sets_port(&b))
        });
        self.missing.env = gone.get();
        sets
    }

    /// `<dir>/config.yaml` (SPEC §6.7): the topology settings, and a warning naming the file
    /// when it was ignored.
    pub fn gateway_yaml(
        &mut self,
        dir: &Path,
    ) -> (crate::observe::gateway_yaml::GatewayYaml, Option<crate::warning::Warning>) {
        use crate::observe::gateway_yaml::{CONFIG_FILE, MAX_CONFIG_FILE, outcome};
        if self.known_missing(dir).yaml {
            self.missing.yaml = true;
            return (outcome(Err(ReadError::Missing)).settings, None);
        }
        let path = child(dir, CONFIG_FILE);
        let gone = std::cell::Cell::new(false);
        let o = self.yaml.get_at(self.base.as_ref(), &path, MAX_CONFIG_FILE, |r| {
            gone.set(matches!(r, Err(ReadError::Missing)));
            outcome(r)
        });
        self.missing.yaml = gone.get();
        let warning = o.problem.map(|why| {
            let shown = crate::escape::Escaped::new(&path).to_string();
            crate::warning::Warning::about(&shown, "config", format!("{shown} {why}"))
        });
        (o.settings, warning)
    }

    /// `$HERMES_HOME/.gateway-ports.json`, parsed again only when its identity changed (it
    /// is the volume's user's file like the others: SPEC §9.3).
    pub fn ports(&mut self, home: &Path) -> crate::observe::PortsReading {
        let path = home.join(crate::layout::home::PORTS_FILE);
        self.ports.get(&path, MAX_STATE_FILE, |r| crate::observe::ports_outcome(&path, r))
    }

    pub fn end_pass(&mut self) {
        self.ports.end_pass();
        self.yaml.end_pass();
        self.intent.end_pass();
        self.prior.end_pass();
        self.env.end_pass();
    }

    pub fn end_full_pass(&mut self) {
        let generation = self.generation;
        self.absent.retain(|_, a| a.used == generation);
        self.folder_marks.retain(|_, (_, _, used)| *used == generation);
        self.generation += 1;
        self.ports.end_full_pass();
        self.yaml.end_full_pass();
        self.intent.end_full_pass();
        self.prior.end_full_pass();
        self.env.end_full_pass();
    }

    /// A cache that keeps files however recently they changed (tests write files just
    /// before they read them).
    #[cfg(test)]
    pub(crate) fn trusting_recent() -> Self {
        let racy_secs = -1_000_000;
        ProfileFileCache {
            intent: IdentityCache { racy_secs, held_left: 64, ..Default::default() },
            prior: IdentityCache { racy_secs, ..Default::default() },
            env: IdentityCache { racy_secs, ..Default::default() },
            yaml: IdentityCache { racy_secs, ..Default::default() },
            ports: IdentityCache { racy_secs, ..Default::default() },
            racy_secs: Some(racy_secs),
            ..Default::default()
        }
    }

    /// Parses done so far, all kinds together.
    pub fn parses(&self) -> u64 {
        self.intent.parses + self.prior.parses + self.env.parses + self.yaml.parses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;
    use std::time::Duration;

    fn counting(c: &std::cell::Cell<u32>) -> impl Fn(Result<Vec<u8>, ReadError>) -> String + '_ {
        move |r| {
            c.set(c.get() + 1);
            r.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|e| e.to_string())
        }
    }

    /// A cache for which no file is too recent to keep.
    fn no_racy<T>() -> IdentityCache<T> {
        IdentityCache { racy_secs: -1_000_000, ..Default::default() }
    }

    #[test]
    fn files_are_parsed_again_only_when_their_identity_changes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, "one").unwrap();
        let mut c = no_racy::<String>();
        let n = std::cell::Cell::new(0);
        for _pass in 0..3 {
            assert_eq!(c.get(&f, 100, counting(&n)), "one");
            c.end_full_pass();
        }
        assert_eq!(n.get(), 1);
        // Rewritten in place, same size: mtime/ctime move, re-read.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&f, "two").unwrap();
        assert_eq!(c.get(&f, 100, counting(&n)), "two");
        assert_eq!(n.get(), 2);
        // Replaced by rename: a new inode, re-read.
        let tmp = t.path().join("tmp");
        fs::write(&tmp, "three").unwrap();
        fs::rename(&tmp, &f).unwrap();
        assert_eq!(c.get(&f, 100, counting(&n)), "three");
        assert_eq!(n.get(), 3);
        // Gone: missing, and forgotten.
        fs::remove_file(&f).unwrap();
        assert_eq!(c.get(&f, 100, counting(&n)), "does not exist");
        assert!(c.by_path.is_empty());
        // Entries unused for a whole full pass are dropped.
        fs::write(&f, "four").unwrap();
        c.get(&f, 100, counting(&n));
        c.end_full_pass();
        assert_eq!(c.by_path.len(), 1);
        c.end_full_pass();
        assert!(c.by_path.is_empty());
    }

    #[test]
    fn a_file_changed_just_now_is_read_again_by_the_next_pass() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, "one").unwrap();
        let mut c = IdentityCache::<String>::default();
        let n = std::cell::Cell::new(0);
        c.get(&f, 100, counting(&n));
        c.get(&f, 100, counting(&n));
        assert_eq!(n.get(), 1, "shared within the pass");
        c.end_pass();
        c.get(&f, 100, counting(&n));
        assert_eq!(n.get(), 2, "not trusted across passes while its timestamps are this fresh");
    }

    #[test]
    fn hard_links_are_parsed_once_per_pass() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("big");
        fs::write(&f, "x".repeat(4096)).unwrap();
        let links: Vec<PathBuf> = (0..50).map(|i| t.path().join(format!("l{i}"))).collect();
        for l in &links {
            fs::hard_link(&f, l).unwrap();
        }
        let mut c = no_racy::<String>();
        let n = std::cell::Cell::new(0);
        for _pass in 0..3 {
            for l in &links {
                assert_eq!(c.get(l, 1 << 20, counting(&n)).len(), 4096);
            }
            c.end_pass();
        }
        assert_eq!(n.get(), 1, "50 links over 3 passes");
        // Touched: every link's identity changed; parsed once for all of them.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&f, "y".repeat(4096)).unwrap();
        for l in &links {
            assert!(c.get(l, 1 << 20, counting(&n)).starts_with('y'));
        }
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn refused_files_are_not_opened_or_cached() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut c = IdentityCache::<String>::default();
        let n = std::cell::Cell::new(0);
        assert_eq!(c.get(&p, 100, counting(&n)), "is a FIFO, not a regular file");
        assert!(c.by_path.is_empty() && c.by_inode.is_empty());
    }

    /// Reads the optional files of `dir` as a full re-list does, its directory's identity
    /// given as `key`.
    fn optional(c: &mut ProfileFileCache, dir: &Path, key: Option<FileKey>) -> (bool, PriorExit, bool) {
        c.enter_dir(dir, key);
        let env = c.env_sets_port(dir);
        let prior = c.prior_exit(dir);
        let yaml = c.gateway_yaml(dir).1.is_some();
        c.leave_dir(dir, true);
        (env, prior, yaml)
    }

    #[test]
    fn missing_optional_files_are_not_looked_for_while_their_directory_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(INTENT_FILE), "{}").unwrap();
        let mut c = ProfileFileCache { racy_secs: Some(-1_000_000), ..Default::default() };
        let old = FileKey::of(&dir).unwrap();
        assert_eq!(optional(&mut c, &dir, Some(old)), (false, PriorExit::Unknown, false));
        // Files made since: the directory's identity moved on. Given the identity it had
        // before (what a pass that stat'ed it just before they were made holds), they are
        // not looked for: the proof that nothing was looked up.
        fs::write(dir.join(ENV_FILE), "API_SERVER_PORT=1\n").unwrap();
        fs::write(dir.join("config.yaml"), "gateway: [\n").unwrap();
        fs::create_dir(dir.join(STATE_DIR)).unwrap();
        fs::write(dir.join(LIFECYCLE_FILE), r#"{"phase":"exited"}"#).unwrap();
        assert_eq!(optional(&mut c, &dir, Some(old)), (false, PriorExit::Unknown, false));
        // With its identity now, every file is seen.
        let now = FileKey::of(&dir).unwrap();
        assert_ne!(now, old);
        let (env, prior, yaml) = optional(&mut c, &dir, Some(now));
        assert!(env && yaml && prior != PriorExit::Unknown, "{env} {prior:?} {yaml}");
        // Without an identity (a partial pass), every file is looked at, and nothing is kept.
        assert!(optional(&mut c, &dir, None).0);
        assert!(c.absent.is_empty());
    }

    /// `hermes` owns the profile directory: making `.env` and then setting the directory's
    /// mtime back does not hide it (its ctime moves on, and nobody can set that).
    #[test]
    fn a_file_made_behind_a_directory_mtime_set_back_is_still_seen() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        let mut c = ProfileFileCache { racy_secs: Some(-1_000_000), ..Default::default() };
        let before = FileKey::of(&dir).unwrap();
        assert!(!optional(&mut c, &dir, Some(before)).0);
        let mtime = fs::metadata(&dir).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(dir.join(ENV_FILE), "API_SERVER_PORT=1\n").unwrap();
        fs::File::open(&dir).unwrap().set_modified(mtime).unwrap();
        let after = FileKey::of(&dir).unwrap();
        assert_eq!(after.mtime, before.mtime, "the mtime was set back");
        assert!(optional(&mut c, &dir, Some(after)).0, "the ctime tells the change");
    }

    #[test]
    fn a_plain_marker_is_known_while_its_directory_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        let mut c = ProfileFileCache { racy_secs: Some(-1_000_000), ..Default::default() };
        let key = FileKey::of(&dir);
        assert!(!c.marker_known(&dir, key), "never read");
        c.enter_dir(&dir, key);
        c.leave_dir(&dir, true);
        assert!(c.marker_known(&dir, key));
        assert!(!c.marker_known(&dir, None), "identity unknown");
        fs::write(dir.join("x"), "").unwrap();
        assert!(!c.marker_known(&dir, FileKey::of(&dir)), "the directory changed");
        let key = FileKey::of(&dir);
        c.enter_dir(&dir, key);
        c.leave_dir(&dir, false);
        assert!(!c.marker_known(&dir, key), "a symlinked marker is looked at every time");
    }

    /// A folder nobody watches: its marker is looked up once, then known from the folder's
    /// identity alone (one lookup instead of two) until the folder changes, there or not; a
    /// recent folder is not remembered; a symlinked marker is left to discovery.
    #[test]
    fn an_unwatched_folder_keeps_its_marker_by_its_own_identity() {
        use crate::observe::tape::record_trusting;
        let t = tempfile::tempdir().unwrap();
        let profiles = t.path().join("profiles");
        fs::create_dir_all(profiles.join("p")).unwrap();
        fs::write(profiles.join("p/SOUL.md"), "").unwrap();
        fs::create_dir_all(profiles.join("bare")).unwrap();
        fs::create_dir_all(profiles.join("linked")).unwrap();
        std::os::unix::fs::symlink("../p/SOUL.md", profiles.join("linked/SOUL.md")).unwrap();
        let lookups = |c: &mut ProfileFileCache, name: &str| {
            let (known, tape) = record_trusting(i64::MAX, || c.folder_marker(std::ffi::OsStr::new(name)));
            (known, tape.unwrap().len())
        };
        // Changed just now: looked up each time, not remembered.
        let mut fresh = ProfileFileCache::default();
        fresh.set_base(StatBase::open(&profiles));
        assert_eq!(lookups(&mut fresh, "p"), (Some(true), 2));
        assert_eq!(lookups(&mut fresh, "p"), (Some(true), 2), "a recent folder is not remembered");
        let mut c = ProfileFileCache { racy_secs: Some(-1_000_000), ..Default::default() };
        c.set_base(StatBase::open(&profiles));
        assert_eq!(lookups(&mut c, "p"), (Some(true), 2), "the folder, then its marker");
        assert_eq!(lookups(&mut c, "p"), (Some(true), 1), "the folder alone");
        assert_eq!(lookups(&mut c, "bare"), (Some(false), 2));
        assert_eq!(lookups(&mut c, "bare"), (Some(false), 1), "no marker: known too");
        assert_eq!(lookups(&mut c, "linked"), (None, 2), "a symlinked marker is discovery's to judge");
        assert_eq!(lookups(&mut c, "linked"), (None, 2));
        assert_eq!(lookups(&mut c, "gone"), (None, 1));
        fs::remove_file(profiles.join("p/SOUL.md")).unwrap();
        assert_eq!(lookups(&mut c, "p"), (Some(false), 2), "the folder changed: its marker looked up");
        fs::write(profiles.join("bare/SOUL.md"), "").unwrap();
        assert_eq!(lookups(&mut c, "bare"), (Some(true), 2), "a marker made changes the folder");
        // Forgotten by a full pass that did not use it.
        c.end_full_pass();
        c.end_full_pass();
        assert!(c.folder_marks.is_empty());
    }

    #[test]
    fn a_lifecycle_file_made_in_an_existing_state_dir_is_seen() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir_all(dir.join(STATE_DIR)).unwrap();
        let mut c = ProfileFileCache { racy_secs: Some(-1_000_000), ..Default::default() };
        let key = FileKey::of(&dir).unwrap();
        assert_eq!(optional(&mut c, &dir, Some(key)).1, PriorExit::Unknown);
        // Made inside `state/`: the profile directory's identity does not move.
        fs::write(dir.join(LIFECYCLE_FILE), r#"{"phase":"exited"}"#).unwrap();
        assert_eq!(FileKey::of(&dir).unwrap(), key);
        assert_ne!(optional(&mut c, &dir, Some(key)).1, PriorExit::Unknown);
    }

    #[test]
    fn a_directory_changed_just_now_is_not_remembered() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        let mut c = ProfileFileCache::default();
        optional(&mut c, &dir, FileKey::of(&dir));
        assert!(c.absent.is_empty(), "its times cannot yet tell a change in the same tick apart");
    }

    #[test]
    fn profile_files_share_a_hard_linked_intent_but_name_each_path() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("state.json");
        fs::write(&big, format!("{{\"desired_state\":\"{}\"}}", "x".repeat(100_000))).unwrap();
        let mut cache = ProfileFileCache::default();
        let mut warnings = Vec::new();
        // (Each new link changes the inode's ctime: link them all first.)
        let dirs: Vec<PathBuf> = (0..20).map(|i| t.path().join(format!("p{i}"))).collect();
        for dir in &dirs {
            fs::create_dir(dir).unwrap();
            fs::hard_link(&big, dir.join(INTENT_FILE)).unwrap();
        }
        for dir in &dirs {
            let r = cache.intent(dir);
            assert_eq!(r.intent.desired_state.as_deref(), Some("invalid"));
            let w = r.warning.expect("warning");
            assert!(w.text.starts_with(&dir.join(INTENT_FILE).display().to_string()), "{}", w.text);
            assert!(w.text.len() < 400, "bounded warning: {}", w.text.len());
            warnings.push(w.key);
        }
        assert_eq!(cache.intent.parses, 1);
        warnings.dedup();
        assert_eq!(warnings.len(), 20, "one key per file");
    }

    /// An intent kept by identity is held open while its directory keeps its identity, and
    /// then asked by descriptor: a rewrite in place, a replacement and a hostile swap for a
    /// FIFO or a symlink are each seen, as they would be by path.
    #[test]
    fn a_held_file_answers_as_its_path_would() {
        let (t, dir, f, mut c) = held_world(1);
        let n = std::cell::Cell::new(0);
        let dkey = || FileKey::of(&dir);
        assert_eq!(c.get_in(None, dkey(), &f, 64, counting(&n)), "one");
        assert_eq!(c.held_left, 0, "held once read");
        // Asked again: by descriptor (the recording shows no lookup of the path), not parsed.
        let d = dkey();
        let (v, tape) =
            crate::observe::tape::record_trusting(i64::MAX, || c.get_in(None, d, &f, 64, counting(&n)));
        assert_eq!((v.as_str(), n.get()), ("one", 1));
        let tape = tape.unwrap();
        assert_eq!(tape.fstats(), 1);
        assert_eq!(tape.len(), 1, "one question: the descriptor's");
        assert!(tape.unchanged());
        // Rewritten in place (the directory is unchanged): the descriptor sees it.
        fs::write(&f, "two!").unwrap();
        assert!(!tape.unchanged(), "a replay sees it");
        assert_eq!(dkey(), dkey());
        assert_eq!(c.get_in(None, dkey(), &f, 64, counting(&n)), "two!");
        assert_eq!(c.held_left, 0, "still held: the same file");
        assert_eq!(c.take_released().len(), 1, "opened again with its new reading");
        // Replaced by a rename (the directory changes): by path, then held anew.
        let replaced = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&f).unwrap());
        let tmp = dir.join(".tmp");
        fs::write(&tmp, "three").unwrap();
        fs::rename(&tmp, &f).unwrap();
        assert_eq!(c.get_in(None, dkey(), &f, 64, counting(&n)), "three");
        assert_eq!(c.held_left, 0);
        // The replaced file was let go, but not closed during the pass (its close frees it).
        let released = c.take_released();
        assert_eq!(released.len(), 1);
        let st = nix::sys::stat::fstat(&released[0]).unwrap();
        assert_eq!((st.st_ino, st.st_nlink), (replaced, 0), "the replaced file, still open");
        assert!(c.take_released().is_empty(), "handed over once");
        // Swapped for a FIFO, then a symlink: refused, as by path, and no longer held.
        fs::remove_file(&f).unwrap();
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(c.get_in(None, dkey(), &f, 64, counting(&n)).contains("not a regular file"));
        assert_eq!(c.held_left, 1, "the old file let go");
        assert_eq!(c.take_released().len(), 1);
        fs::remove_file(&f).unwrap();
        fs::write(t.path().join("elsewhere"), "four").unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &f).unwrap();
        assert!(!c.get_in(None, dkey(), &f, 64, counting(&n)).contains("four"));
        assert_eq!(c.held_left, 1);
        // Without a directory identity nothing is held; unused entries give their file back.
        fs::remove_file(&f).unwrap();
        fs::write(&f, "five").unwrap();
        assert_eq!(c.get_in(None, None, &f, 64, counting(&n)), "five");
        assert_eq!(c.held_left, 1);
        assert_eq!(c.get_in(None, dkey(), &f, 64, counting(&n)), "five");
        assert_eq!(c.held_left, 0);
        c.end_full_pass();
        c.end_full_pass();
        assert_eq!(c.held_left, 1, "dropped with its entry");
        assert_eq!(c.take_released().len(), 1);
    }

    /// A directory `p` holding an intent file with `one`, and a cache that may hold `budget`
    /// files and finds no file too recent.
    fn held_world(budget: usize) -> (tempfile::TempDir, PathBuf, PathBuf, IdentityCache<String>) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        let f = dir.join(INTENT_FILE);
        fs::write(&f, "one").unwrap();
        let mut c: IdentityCache<String> = no_racy();
        c.set_held_budget(budget);
        (t, dir, f, c)
    }

    /// A held file is only trusted under the directory identity it was opened under: once
    /// the directory changed (the held file moved away under another name, a new one put in
    /// its place), the name is asked by path.
    #[test]
    fn a_held_file_is_asked_by_path_once_its_directory_changed() {
        let (_t, dir, f, mut c) = held_world(4);
        let n = std::cell::Cell::new(0);
        let before = FileKey::of(&dir);
        assert_eq!(c.get_in(None, before, &f, 64, counting(&n)), "one");
        // Moved away and another file put in its place: the directory changed.
        fs::rename(&f, dir.join("old")).unwrap();
        fs::write(&f, "two").unwrap();
        let after = FileKey::of(&dir);
        assert_ne!(before, after);
        assert_eq!(c.get_in(None, after, &f, 64, counting(&n)), "two");
        assert_eq!(n.get(), 2, "asked by path, and read");
    }
}
