//! The inotify watcher (SPEC §6.3). It only says *which* profiles may have changed; the
//! reconcile of a profile reads the current files, so lost, duplicated or reordered events can
//! never produce a wrong result, only a later one.
//!
//! Watched, non-recursively: `$HERMES_HOME`, `$HERMES_HOME/profiles`, the tombstone folder
//! `profiles/.deleted`, the directories of the profiles admitted by the capacity guard, and at
//! most [`EXTRA_WATCHES`] minus the base watches other directory entries of `profiles/` (marked
//! or not: `SOUL.md` may arrive later), the most recently seen first. So the watches never
//! exceed the admitted profiles plus [`EXTRA_WATCHES`] (SPEC §9.3: root's inotify budget is
//! shared with the host), whatever `hermes` creates; what is not watched is covered by the
//! periodic re-list. Only events that follow a change are asked for (no `IN_OPEN`/`IN_ACCESS`),
//! so the daemon's own reads never wake it up.

use crate::model::ProfileName;
use crate::observe::gateway_yaml::CONFIG_FILE;
use crate::observe::volume::{ENV_FILE, INTENT_FILE as ROOT_INTENT_FILE, MARKER_FILE};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// What one watch descriptor stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The parent of the home: only events naming the home matter.
    HomeParent,
    Home,
    Profiles,
    Tombstones,
    Profile(String),
}

/// What the events read amount to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Profiles to reconcile (root included as `default`).
    pub dirty: Vec<ProfileName>,
    /// Something only a full re-list can settle (overflow, `profiles/` replaced, watch lost).
    pub relist: bool,
}

/// Why a watch could not be added.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the inotify watch limit is exhausted (fs.inotify.max_user_watches)")]
    Limit,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: Errno },
}

/// Most watches beyond the admitted profiles' directories, base watches (home's parent, home,
/// `profiles/`, `profiles/.deleted`) included.
pub const EXTRA_WATCHES: usize = 64;

/// Base watches at most.
const BASE_WATCHES: usize = 4;

/// Events on the home and `profiles/` themselves.
fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

pub struct Watcher {
    inotify: Inotify,
    home: PathBuf,
    targets: HashMap<WatchDescriptor, Target>,
    profiles: HashMap<String, WatchDescriptor>,
    base: Vec<(Target, WatchDescriptor)>,
    /// Names of the profiles the capacity guard admitted (as of the last pass).
    admitted: HashSet<String>,
    /// Watched entries that are not admitted profiles, oldest first (may hold stale names).
    extras: VecDeque<String>,
}

impl Watcher {
    pub fn new(home: &Path) -> Result<Self, Errno> {
        Ok(Watcher {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            home: home.to_path_buf(),
            targets: HashMap::new(),
            profiles: HashMap::new(),
            base: Vec::new(),
            admitted: HashSet::new(),
            extras: VecDeque::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    fn add(&mut self, path: &Path, target: Target) -> Result<Option<WatchDescriptor>, WatchError> {
        match self.inotify.add_watch(path, dir_mask()) {
            Ok(wd) => {
                // The same inode watched again returns the same descriptor (a profile renamed
                // `a` → `b`): it now stands for the new name only.
                if let Some(Target::Profile(old)) = self.targets.insert(wd, target)
                    && self.profiles.get(&old) == Some(&wd)
                {
                    self.profiles.remove(&old);
                }
                Ok(Some(wd))
            }
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
            Err(Errno::ENOSPC) => Err(WatchError::Limit),
            Err(e) => Err(WatchError::Io { path: path.to_path_buf(), source: e }),
        }
    }

    /// (Re-)establishes the watches on the home, `profiles/` and `profiles/.deleted`, and on
    /// every directory entry of `profiles/`. Called before every full re-list, so anything
    /// created before a watch existed is still seen by the listing that follows.
    pub fn establish(&mut self) -> Result<(), WatchError> {
        let home = self.home.clone();
        let profiles = home.join("profiles");
        let mut base = Vec::new();
        // The home's parent too, always: the home may be deleted while a logger keeps it open
        // (then no IN_DELETE_SELF arrives) and recreated later; only the parent sees both.
        if let Some(parent) = home.parent()
            && let Some(wd) = self.add(parent, Target::HomeParent)?
        {
            base.push((Target::HomeParent, wd));
        }
        for (path, target) in [
            (home.clone(), Target::Home),
            (profiles.clone(), Target::Profiles),
            (profiles.join(".deleted"), Target::Tombstones),
        ] {
            if let Some(wd) = self.add(&path, target.clone())? {
                base.push((target, wd));
            }
        }
        self.base = base;
        let mut seen = HashSet::new();
        let mut room = self.extra_budget().saturating_sub(self.extra_count());
        if let Ok(entries) = std::fs::read_dir(&profiles) {
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
                if name.starts_with('.') {
                    continue;
                }
                // Admitted profiles always; other entries only while there is room, without
                // evicting (a listing has no notion of "newest").
                if !self.profiles.contains_key(&name) {
                    let admitted = self.admitted.contains(&name);
                    if admitted || room > 0 {
                        self.watch_profile(&name)?;
                        if !admitted && self.profiles.contains_key(&name) {
                            room -= 1;
                        }
                    }
                }
                seen.insert(name);
            }
        }
        // Forget watches of entries that are gone (their IN_IGNORED may still be queued).
        let stale: Vec<String> = self.profiles.keys().filter(|n| !seen.contains(*n)).cloned().collect();
        for name in stale {
            self.unwatch(&name);
        }
        Ok(())
    }

    fn unwatch(&mut self, name: &str) {
        if let Some(wd) = self.profiles.remove(name) {
            let _ = self.inotify.rm_watch(wd);
            self.targets.remove(&wd);
        }
    }

    /// How many non-admitted profile entries may be watched.
    fn extra_budget(&self) -> usize {
        EXTRA_WATCHES - BASE_WATCHES
    }

    fn extra_count(&self) -> usize {
        self.profiles.keys().filter(|n| !self.admitted.contains(*n)).count()
    }

    /// Records which profiles the capacity guard admits now, watches those not watched yet and
    /// drops extra watches beyond the budget. Returns the admitted profiles that were not
    /// watched before: a change made to them before their watch existed is seen only by
    /// reading them again.
    pub fn set_admitted(&mut self, admitted: &BTreeSet<ProfileName>) -> Result<Vec<ProfileName>, WatchError> {
        self.admitted = admitted.iter().filter(|n| !n.is_root()).map(|n| n.as_str().to_owned()).collect();
        let mut fresh = Vec::new();
        for name in admitted.iter().filter(|n| !n.is_root()) {
            if !self.profiles.contains_key(name.as_str()) {
                self.watch_profile(name.as_str())?;
                if self.profiles.contains_key(name.as_str()) {
                    fresh.push(name.clone());
                }
            }
        }
        while self.extra_count() > self.extra_budget() {
            if !self.evict_oldest_extra() {
                break;
            }
        }
        Ok(fresh)
    }

    /// Drops the oldest watch of a non-admitted entry; `false` when there is none.
    fn evict_oldest_extra(&mut self) -> bool {
        while let Some(name) = self.extras.pop_front() {
            if self.profiles.contains_key(&name) && !self.admitted.contains(&name) {
                self.unwatch(&name);
                return true;
            }
        }
        // Extras watched before they were tracked in order (none expected): any one.
        let any = self.profiles.keys().find(|n| !self.admitted.contains(*n)).cloned();
        match any {
            Some(name) => {
                self.unwatch(&name);
                true
            }
            None => false,
        }
    }

    /// Watches `profiles/<name>` if it is a directory (a symlink to one is followed). A name
    /// that is not an admitted profile takes an extra watch: within the budget, or in place of
    /// the oldest extra when `evict` (a new entry is likelier to become a profile than an old
    /// one), else not at all.
    fn watch_entry(&mut self, name: &str, evict: bool) -> Result<(), WatchError> {
        if self.profiles.contains_key(name) {
            return Ok(());
        }
        if !self.admitted.contains(name)
            && self.extra_count() >= self.extra_budget()
            && (!evict || !self.evict_oldest_extra())
        {
            return Ok(());
        }
        let path = self.home.join("profiles").join(name);
        if let Some(wd) = self.add(&path, Target::Profile(name.to_string()))? {
            self.profiles.insert(name.to_string(), wd);
            if !self.admitted.contains(name) {
                self.extras.push_back(name.to_string());
                if self.extras.len() > 4 * EXTRA_WATCHES {
                    self.extras.retain(|n| self.profiles.contains_key(n) && !self.admitted.contains(n));
                }
            }
        }
        Ok(())
    }

    /// Watches `profiles/<name>` if it is a directory and the budget allows (see
    /// [`Watcher::watch_entry`]); never evicts.
    pub fn watch_profile(&mut self, name: &str) -> Result<(), WatchError> {
        self.watch_entry(name, false)
    }

    /// Number of watches held (for `status` and benchmarks).
    pub fn watch_count(&self) -> usize {
        self.targets.len()
    }

    /// Reads every queued event without blocking and says what changed.
    pub fn read(&mut self) -> Changes {
        let mut changes = Changes::default();
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for ev in events {
                        self.interpret(ev, &mut changes);
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("reading inotify events failed ({e}); re-listing");
                    changes.relist = true;
                    break;
                }
            }
        }
        changes.dirty.sort();
        changes.dirty.dedup();
        changes
    }

    fn interpret(&mut self, ev: InotifyEvent, changes: &mut Changes) {
        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!("inotify queue overflowed; re-listing everything");
            changes.relist = true;
            return;
        }
        let name = ev.name.as_ref().and_then(|n| n.to_str()).map(str::to_owned);
        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
            // The watched directory is gone (or the watch was removed).
            if let Some(target) = self.targets.remove(&ev.wd) {
                match target {
                    Target::Profile(n) => {
                        if self.profiles.get(&n) == Some(&ev.wd) {
                            self.profiles.remove(&n);
                        }
                        changes.dirty.extend(ProfileName::parse_named(&n).ok());
                    }
                    _ => changes.relist = true,
                }
            }
            return;
        }
        let Some(target) = self.targets.get(&ev.wd).cloned() else { return };
        match target {
            Target::HomeParent => {
                if name.as_deref().map(Path::new) == self.home.file_name().map(Path::new) {
                    changes.relist = true;
                }
            }
            Target::Home => match name.as_deref() {
                Some("profiles") => changes.relist = true,
                Some(ROOT_INTENT_FILE) | Some(ENV_FILE) | Some(CONFIG_FILE) => {
                    changes.dirty.push(ProfileName::root())
                }
                None => {
                    if ev.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
                        changes.relist = true;
                    }
                }
                // Other files in the home (logs, the port record the daemon writes) do not
                // matter: ignoring them keeps the daemon's own writes from waking it.
                Some(_) => {}
            },
            Target::Profiles => match name {
                Some(n) if n == ".deleted" => changes.relist = true,
                Some(n) if n.starts_with('.') => {}
                Some(n) => {
                    if ev.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                        && let Err(e) = self.watch_entry(&n, true)
                    {
                        tracing::warn!("profiles/{n}: not watched: {e}; re-listing");
                        changes.relist = true;
                    }
                    changes.dirty.extend(ProfileName::parse_named(&n).ok());
                }
                None => {
                    if ev.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
                        changes.relist = true;
                    }
                }
            },
            Target::Tombstones => match name {
                Some(n) => changes.dirty.extend(ProfileName::parse_named(&n).ok()),
                None => changes.relist = true,
            },
            Target::Profile(n) => {
                let relevant = match name.as_deref() {
                    None => true,
                    Some(f) => [MARKER_FILE, ROOT_INTENT_FILE, ENV_FILE, CONFIG_FILE].contains(&f),
                };
                if relevant {
                    changes.dirty.extend(ProfileName::parse_named(&n).ok());
                }
            }
        }
    }
}

impl std::os::fd::AsRawFd for Watcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}
