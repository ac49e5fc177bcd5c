//! What the scandir holds: the daemon's `gateway-*` slots, their files and bookkeeping, and
//! its own hidden staging or removal leftovers. Entries it does not own are not even read.

use crate::hashing::FastMap;
use crate::layout::slot::{DOWN_FILE, RECORD_FILE, RENDERED};
use crate::model::{KICK_ENTRY, ProfileName, SlotRecord, is_own_hidden_entry};
use crate::observe::drift_watch::DriftWatch;
use crate::observe::safe_read::read_bounded;
use crate::observe::stat_base::{FileKey, StatBase};
use crate::observe::supervisor_watch::{Followed, SupervisorWatch};
pub use crate::world::{ScandirObs, SlotObs};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest slot file read back for comparison; ours are far smaller.
const MAX_SLOT_FILE: u64 = 64 * 1024;

/// A slot file's identity when read, its content (`None`: unreadable) and the generation of
/// the last pass that used it.
type CachedSlotFile = (FileKey, Option<Arc<[u8]>>, u64);

/// The slot files read by earlier passes, so a re-list costs one `lstat` per unchanged file
/// instead of an open and a read (the daemon re-lists every slot every resync period).
/// Entries not used by a full pass are dropped at its end ([`SlotFileCache::end_pass`]).
///
/// With a [`DriftWatch`] (the daemon), a slot nothing touched since its last reading is not
/// even stat'ed: that reading stands, and only its supervisor is asked again.
#[derive(Debug, Default)]
pub struct SlotFileCache {
    /// By the path's bytes: hashing and comparing a `Path` goes component by component.
    entries: FastMap<OsString, CachedSlotFile>,
    generation: u64,
    /// The scandir, held open during a full re-list: slot files are stat'ed by their short
    /// paths relative to it ([`StatBase`]).
    base: Option<StatBase>,
    /// Which slots changed since their last reading (`None`: every slot is read every time).
    drift: Option<DriftWatch>,
    /// The supervisors of the standing readings, followed by their process (`None`: each
    /// re-list asks every lock).
    supervisors: Option<SupervisorWatch>,
    /// The last reading of each watched slot (its `supervised` is asked afresh each time), by
    /// slot directory.
    readings: FastMap<OsString, Reading>,
    /// How many more descriptors [`Reading::lock`] and [`Reading::holder`] may hold open
    /// (see [`lock_budget`]).
    locks_left: usize,
    /// The names of the slots listed, with the generation of the last pass that listed each:
    /// a re-list shares the name it made before instead of making one per slot.
    names: FastMap<ProfileName, u64>,
}

/// A slot's last reading, which stands while [`DriftWatch`] says nothing touched the slot.
#[derive(Debug)]
struct Reading {
    obs: SlotObs,
    /// Generation of the last pass that used it.
    used: u64,
    /// `supervise/lock`, held open while the reading stands: the file s6-supervise locks is
    /// the same until something replaces `supervise/`, which the slot's watch sees, so each
    /// re-list asks it with one `fcntl` ([`crate::s6::supervisor_by`]).
    lock: Option<std::fs::File>,
    /// The pidfd of the supervisor holding `lock`, followed by [`SupervisorWatch`]: while
    /// it is set, that process has not exited at the last drain, so the lock is still its
    /// and need not be asked.
    holder: Option<Followed>,
}

impl Reading {
    /// Descriptors it holds (against [`SlotFileCache::locks_left`]).
    fn fds(&self) -> usize {
        usize::from(self.lock.is_some()) + usize::from(self.holder.is_some())
    }
}

/// Lock files and pidfds held open at most: two thirds of what the caches may hold
/// ([`crate::observe::descriptor_budget`]; a soft limit of 1,024 gives 256: 128 slots with
/// both; slots past it are asked by path, or by their lock).
fn lock_budget() -> usize {
    crate::observe::descriptor_budget() / 3 * 2
}

impl SlotFileCache {
    /// A cache that also watches the slots it reads, so that it re-reads only those something
    /// touched ([`DriftWatch`]); without inotify, a plain cache.
    pub fn watching() -> Self {
        let drift = DriftWatch::new()
            .map_err(|e| tracing::debug!("slots read at every re-list (no inotify for them: {e})"))
            .ok();
        let supervisors = SupervisorWatch::new()
            .map_err(|e| tracing::debug!("every lock asked at every re-list (no epoll: {e})"))
            .ok();
        SlotFileCache { drift, supervisors, locks_left: lock_budget(), ..Default::default() }
    }

    /// Takes in the changes queued since the last call: before any reading is trusted.
    fn drain(&mut self) {
        if let Some(d) = self.drift.as_mut() {
            d.drain();
        }
        let Some(w) = self.supervisors.as_ref() else { return };
        match w.deaths() {
            Ok(dead) if dead.is_empty() => {}
            Ok(dead) => {
                for r in self.readings.values_mut() {
                    if r.holder.as_ref().is_some_and(|f| dead.contains(&f.id())) {
                        r.holder = None;
                        self.locks_left += 1;
                    }
                }
            }
            // Trust no holder: each lock is asked again (and its holder followed anew).
            Err(_) => {
                for r in self.readings.values_mut() {
                    if r.holder.take().is_some() {
                        self.locks_left += 1;
                    }
                }
            }
        }
        // No followed supervisor has exited (the dead ones were just let go): a replay that
        // finds the set still quiet may trust every holder that was trusted here.
        super::tape::quiet(w.fd());
    }

    /// The last reading of the slot at `dir`, its supervisor asked afresh, if nothing touched
    /// the slot since.
    fn trusted(&mut self, dir: &Path) -> Option<SlotObs> {
        if !self.drift.as_ref().is_some_and(|d| d.trusted(dir)) {
            return None;
        }
        let generation = self.generation;
        let r = self.readings.get_mut(dir.as_os_str())?;
        r.used = generation;
        let supervised = match &r.lock {
            // The supervisor that held the lock has not exited (see `drain`).
            Some(_) if r.holder.is_some() => true,
            Some(lock) => {
                let liveness = crate::s6::supervisor_by(lock);
                super::tape::held_lock(std::os::fd::AsRawFd::as_raw_fd(lock), &liveness);
                if let crate::s6::Liveness::Alive(pid) = liveness
                    && self.locks_left > 0
                    && let Some(w) = self.supervisors.as_ref()
                {
                    r.holder = w.follow(pid, lock);
                    self.locks_left -= usize::from(r.holder.is_some());
                }
                liveness.maybe_alive()
            }
            None => {
                let (supervised, lock) = supervised(self.base.as_ref(), dir);
                if let Some(lock) = lock
                    && self.locks_left > 0
                {
                    self.locks_left -= 1;
                    self.readings.get_mut(dir.as_os_str())?.lock = Some(lock);
                }
                supervised
            }
        };
        let r = self.readings.get(dir.as_os_str())?;
        Some(SlotObs { supervised, ..r.obs.clone() })
    }

    /// The name of the profile whose slot is `gateway-<part>`: the one made before, if any
    /// (`None`: not a valid name).
    fn name(&mut self, part: &str) -> Option<ProfileName> {
        let generation = self.generation;
        if let Some((name, used)) = self.names.get_key_value(part) {
            let name = name.clone();
            if *used != generation {
                self.names.insert(name.clone(), generation);
            }
            return Some(name);
        }
        let name = ProfileName::parse_any(part).ok()?;
        self.names.insert(name.clone(), generation);
        Some(name)
    }

    /// Called before a slot is read: changes from now on are queued.
    fn watch(&mut self, dir: &Path) {
        if let Some(d) = self.drift.as_mut() {
            d.watch(dir);
        }
    }

    /// Keeps `obs` (read after [`Self::watch`]) as the slot's reading, with its lock file,
    /// while nothing touches the slot; forgets the old one in any case.
    fn remember(&mut self, dir: &Path, obs: &SlotObs, lock: Option<std::fs::File>) {
        if let Some(old) = self.readings.remove(dir.as_os_str()) {
            self.locks_left += old.fds();
        }
        if !self.drift.as_ref().is_some_and(|d| d.trusted(dir)) {
            return;
        }
        let lock = lock.filter(|_| self.locks_left > 0);
        if lock.is_some() {
            self.locks_left -= 1;
        }
        self.readings.insert(
            dir.as_os_str().to_owned(),
            Reading { obs: obs.clone(), used: self.generation, lock, holder: None },
        );
    }

    /// Content of a slot file (bounded, no symlink followed), from the cache when unchanged.
    pub fn read(&mut self, path: &Path) -> Option<Arc<[u8]>> {
        let generation = self.generation;
        let Some(key) = StatBase::lstat(self.base.as_ref(), path).ok().map(|s| s.key) else {
            self.entries.remove(path.as_os_str());
            return None;
        };
        if let Some((k, content, used)) = self.entries.get_mut(path.as_os_str())
            && *k == key
        {
            *used = generation;
            return content.clone();
        }
        let content: Option<Arc<[u8]>> = read_bounded(path, MAX_SLOT_FILE).ok().map(Arc::from);
        // Only cache what was read from the file whose identity we checked.
        if FileKey::of(path) == Some(key) {
            self.entries.insert(path.as_os_str().to_owned(), (key, content.clone(), generation));
        }
        content
    }

    /// Stats files under `base` relative to it until the next call (`None`: absolute paths).
    pub fn set_base(&mut self, base: Option<StatBase>) {
        self.base = base;
    }

    /// Whether anything is at `path` (`lstat`), through the base.
    fn exists(&self, path: &Path) -> bool {
        StatBase::lstat(self.base.as_ref(), path).is_ok()
    }

    /// Forgets entries no read used since the last call (slots that are gone), and stops
    /// watching their slots. The files of a slot whose reading stood are forgotten too: the
    /// next reading of it (after a change) reads them again.
    pub fn end_pass(&mut self) {
        let generation = self.generation;
        self.names.retain(|_, used| *used == generation);
        self.entries.retain(|_, (_, _, used)| *used == generation);
        let mut freed = 0;
        self.readings.retain(|_, r| {
            let keep = r.used == generation;
            if !keep {
                freed += r.fds();
            }
            keep
        });
        self.locks_left += freed;
        if let Some(d) = self.drift.as_mut() {
            let readings = &self.readings;
            d.retain(|dir| readings.contains_key(dir));
        }
        self.generation += 1;
    }
}

pub fn slot_dir(scandir: &Path, name: &ProfileName) -> PathBuf {
    crate::layout::child(scandir, name.slot_name())
}

/// Reads one slot directory.
pub fn observe_slot(dir: &Path, cache: &mut SlotFileCache) -> SlotObs {
    cache.drain();
    observe_drained(dir, cache)
}

/// [`observe_slot`], the drift queue already taken in.
fn observe_drained(dir: &Path, cache: &mut SlotFileCache) -> SlotObs {
    if let Some(obs) = cache.trusted(dir) {
        return obs;
    }
    cache.watch(dir);
    let (supervised, lock) = supervised(cache.base.as_ref(), dir);
    let record = cache
        .read(&crate::layout::child(dir, RECORD_FILE))
        .and_then(|b| serde_json::from_slice::<SlotRecord>(&b).ok())
        .map(Arc::new);
    let files =
        Arc::new(RENDERED.iter().map(|rel| (*rel, cache.read(&crate::layout::child(dir, rel)))).collect());
    let has_down = cache.exists(&crate::layout::child(dir, DOWN_FILE));
    let event_open = crate::s6::event::slot_events_open(dir);
    let obs = SlotObs { record, files, has_down, supervised, event_open };
    cache.remember(dir, &obs, lock);
    obs
}

/// Whether a supervisor holds the lock of the slot at `dir` (by its short path when the
/// scandir is held), and the lock file when it was opened that way.
fn supervised(base: Option<&StatBase>, dir: &Path) -> (bool, Option<std::fs::File>) {
    // A lock that cannot be read counts as supervised: plan then leaves the slot alone rather
    // than re-publishing it under a supervisor that may be alive.
    match base.and_then(|b| Some((b, crate::observe::stat_base::under(b.path(), dir)?))) {
        Some((b, rel)) => {
            let (liveness, lock) = crate::s6::supervisor_in(std::os::fd::AsFd::as_fd(b), rel);
            super::tape::service_lock(Some(b.path()), rel, &liveness);
            (liveness.maybe_alive(), lock)
        }
        // No scandir held (a reading outside a full re-list): the absolute path, still
        // keeping the lock file for the re-lists that trust this reading.
        _ => {
            let (liveness, lock) = crate::s6::supervisor_in(nix::fcntl::AT_FDCWD, dir);
            super::tape::service_lock(None, dir, &liveness);
            (liveness.maybe_alive(), lock)
        }
    }
}

/// Lists the scandir. A scandir that cannot be listed is reported as absent.
pub fn observe_scandir(scandir: &Path, cache: &mut SlotFileCache) -> ScandirObs {
    use crate::observe::listing::{self, Kind};
    use std::os::unix::ffi::OsStrExt;
    let mut obs = ScandirObs { exists: true, ..Default::default() };
    // Listed first, read after: the listing holds its buffer while it calls back. A known
    // slot's name is shared, not made again (issue 15: nothing allocated per untouched slot).
    let mut listed: Vec<(ProfileName, Kind)> = Vec::new();
    let mut any = false;
    let done = listing::each(scandir, |raw, kind| {
        any = true;
        let Ok(entry) = std::str::from_utf8(raw) else { return };
        if is_own_hidden_entry(entry) {
            obs.hidden.push(entry.to_owned());
        } else if entry == KICK_ENTRY {
            obs.kick_leftover = true;
        } else if let Some(part) = ProfileName::slot_name_part(entry)
            && matches!(kind, Kind::Dir | Kind::Unknown)
            && let Some(name) = cache.name(part)
        {
            listed.push((name, kind));
        }
    });
    if done.is_err() && !any {
        return ScandirObs::default();
    }
    cache.drain();
    // One path buffer for every slot: `<scandir>/gateway-<name>`.
    let mut dir: Vec<u8> = scandir.as_os_str().as_bytes().to_vec();
    if !dir.ends_with(b"/") {
        dir.push(b'/');
    }
    let base_len = dir.len();
    for (profile, kind) in listed {
        dir.truncate(base_len);
        dir.extend_from_slice(crate::model::SLOT_PREFIX.as_bytes());
        dir.extend_from_slice(profile.as_str().as_bytes());
        let path = Path::new(std::ffi::OsStr::from_bytes(&dir));
        // A slot is a real directory; a symlink or file named gateway-* is not one of ours.
        if !kind.resolved(path).is_ok_and(|k| k == Kind::Dir) {
            continue;
        }
        let slot = observe_drained(path, cache);
        obs.slots.insert(profile, slot);
    }
    obs.hidden.sort();
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_rereads_only_changed_files_and_forgets_unused_ones() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("run");
        std::fs::write(&f, "one").unwrap();
        let mut c = SlotFileCache::default();
        assert_eq!(c.read(&f).as_deref(), Some(&b"one"[..]));
        // Replaced atomically (new inode): seen.
        let tmp = t.path().join(".run.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(c.read(&f).as_deref(), Some(&b"two"[..]));
        // Edited in place with another size: seen.
        std::fs::write(&f, "three").unwrap();
        assert_eq!(c.read(&f).as_deref(), Some(&b"three"[..]));
        // Gone: none, and forgotten.
        std::fs::remove_file(&f).unwrap();
        assert_eq!(c.read(&f), None);
        assert!(c.entries.is_empty());
        std::fs::write(&f, "four").unwrap();
        c.read(&f);
        c.end_pass();
        assert_eq!(c.entries.len(), 1);
        c.end_pass();
        assert!(c.entries.is_empty(), "an entry unused for a whole pass is dropped");
    }
}
