//! The volume watcher (SPEC §6.3). It only says *which* profiles may have changed;
//! the reconcile of a profile reads the current files, so lost, duplicated or reordered events
//! can never produce a wrong result, only a later one.
//!
//! Two backends: inotify, read on the event loop's own thread ([`super::inotify`]), and
//! notify's `PollWatcher` for homes on filesystems where inotify
//! misses changes made elsewhere (FUSE — Docker Desktop's gRPC-FUSE and virtiofs —, NFS,
//! CIFS/SMB, 9p; see [`backend_for_fs`]). Polling stats the watched directories' entries every
//! period (identity and times, never contents); an unchanged profile file is never parsed again
//! because the profile-file cache keys on the same identity.
//!
//! Watched, non-recursively: the home's parent (the home may be deleted and recreated), the
//! home, `profiles/`, the tombstone folder `profiles/.deleted`, the directories of the profiles
//! admitted by the capacity guard, and at most [`EXTRA_WATCHES`] minus the base watches other
//! directory entries of `profiles/` (marked or not: `SOUL.md` may arrive later), the most
//! recently seen first. So the watches never exceed the admitted profiles plus
//! [`EXTRA_WATCHES`] (SPEC §9.3: root's inotify budget is shared with the host), whatever
//! `hermes` creates; what is not watched is covered by the periodic re-list.
//!
//! The kernel is never asked for opens, reads or read-only closes ([`super::inotify::MASK`]),
//! so the daemon's own reads never wake the event loop.

use crate::config::WatchMode;
use crate::layout::home::CONFIG_FILE;
use crate::model::ProfileName;
use crate::observe::inotify::{Kernel, Shared};
use crate::observe::stat_base::{FileKey, StatBase};
use crate::observe::volume::{ENV_FILE, INTENT_FILE as ROOT_INTENT_FILE, MARKER_FILE};
use notify::event::{AccessKind, AccessMode, DataChange, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The backend in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Inotify,
    Poll,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Inotify => "inotify",
            Backend::Poll => "poll",
        }
    }
}

/// `statfs` magic numbers of filesystems where inotify does not see changes made by another
/// host or by the hypervisor's side of a share (linux/magic.h; SMB2 and CIFS from fs/smb).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const NFS_SUPER_MAGIC: i64 = 0x6969;
const SMB_SUPER_MAGIC: i64 = 0x517b;
const CIFS_MAGIC_NUMBER: i64 = 0xff53_4d42;
const SMB2_MAGIC_NUMBER: i64 = 0xfe53_4d42;
const V9FS_MAGIC: i64 = 0x0102_1997;

/// The backend `auto` picks for a filesystem of type `f_type` (`statfs`): polling on FUSE
/// (virtiofs included), NFS, CIFS/SMB and 9p, inotify on everything else. Pure.
pub fn backend_for_fs(f_type: i64) -> Backend {
    match f_type {
        FUSE_SUPER_MAGIC | NFS_SUPER_MAGIC | SMB_SUPER_MAGIC | CIFS_MAGIC_NUMBER | SMB2_MAGIC_NUMBER
        | V9FS_MAGIC => Backend::Poll,
        _ => Backend::Inotify,
    }
}

/// Resolves the configured mode for `home` (or, while it does not exist, its nearest existing
/// ancestor). `auto` falls back to inotify when `statfs` fails.
pub fn choose(mode: WatchMode, home: &Path) -> Backend {
    match mode {
        WatchMode::Inotify => Backend::Inotify,
        WatchMode::Poll => Backend::Poll,
        WatchMode::Auto => {
            let fs = home.ancestors().find_map(|p| nix::sys::statfs::statfs(p).ok());
            // `f_type` is `long` on the targets this runs on; the conversion is for the others.
            #[allow(clippy::useless_conversion)]
            fs.map_or(Backend::Inotify, |s| backend_for_fs(i64::from(s.filesystem_type().0)))
        }
    }
}

/// What a batch of events amounts to. Produced by [`interpret`], a pure function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Profiles to reconcile (root included as `default`).
    pub dirty: BTreeSet<ProfileName>,
    /// Something only a full re-list can settle (overflow, `profiles/` replaced, home gone).
    pub relist: bool,
    /// Entries of `profiles/` that appeared (created, renamed to): to watch, afresh.
    pub appeared: BTreeSet<String>,
    /// Entries of `profiles/` that went away (deleted, renamed from): their watch is dropped.
    pub gone: BTreeSet<String>,
}

/// Is this event one the event loop must see? Opens, reads and read-only closes are not
/// changes (and the daemon's own reads cause them); a data change is always followed by the
/// close-after-write, which is kept, so inotify's per-`write()` modify events are dropped too.
/// The poll backend's data change (a content hash, off here) and times changes are kept.
///
/// A rename's `Both` event is dropped too (the inotify backend never makes one; the poll
/// backend sends no renames): the `From` and `To` ends say it all.
pub fn wanted(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(DataChange::Any)) => false,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
        _ => true,
    }
}

/// Interprets a batch of events under the home `home`. Pure: which profiles are dirty, whether
/// a full re-list is needed, which entries of `profiles/` appeared or went away.
pub fn interpret(home: &Path, events: &[Event]) -> Changes {
    let mut c = Changes::default();
    let profiles = home.join("profiles");
    let tombstones = profiles.join(".deleted");
    for ev in events {
        if ev.need_rescan() {
            c.relist = true;
            continue;
        }
        if !wanted(&ev.kind) {
            continue;
        }
        for (i, path) in ev.paths.iter().enumerate() {
            // A rename with both ends: the first path is where it came from.
            let (removed, added) = match ev.kind {
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => (false, true),
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (true, false),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => (i == 0, i != 0),
                EventKind::Modify(ModifyKind::Name(_)) => (true, true),
                _ => (false, false),
            };
            interpret_path(home, &profiles, &tombstones, path, removed, added, &mut c);
        }
    }
    c
}

fn interpret_path(
    home: &Path,
    profiles: &Path,
    tombstones: &Path,
    path: &Path,
    removed: bool,
    added: bool,
    c: &mut Changes,
) {
    let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    if path == home || path == profiles || path == tombstones {
        // The home, `profiles/` or the tombstones created, deleted, moved or changed: only a
        // listing can say what is there now.
        c.relist = true;
    } else if path.parent() == Some(home) {
        // Other files in the home (logs, the port record the daemon writes) do not matter:
        // ignoring them keeps the daemon's own writes from waking it.
        if matches!(name_of(path).as_deref(), Some(ROOT_INTENT_FILE) | Some(ENV_FILE) | Some(CONFIG_FILE)) {
            c.dirty.insert(ProfileName::root());
        }
    } else if path.parent() == Some(tombstones) {
        if let Some(n) = name_of(path) {
            c.dirty.extend(ProfileName::parse_named(&n).ok());
        }
    } else if path.parent() == Some(profiles) {
        let Some(n) = name_of(path) else { return };
        if n.starts_with('.') {
            return;
        }
        if removed {
            c.gone.insert(n.clone());
        }
        if added {
            c.appeared.insert(n.clone());
        }
        c.dirty.extend(ProfileName::parse_named(&n).ok());
    } else if let Some(dir) = path.parent()
        && dir.parent() == Some(profiles)
        && let Some(n) = name_of(dir)
        && !n.starts_with('.')
        && matches!(
            name_of(path).as_deref(),
            Some(MARKER_FILE) | Some(ROOT_INTENT_FILE) | Some(ENV_FILE) | Some(CONFIG_FILE)
        )
    {
        c.dirty.extend(ProfileName::parse_named(&n).ok());
    }
    // Anything else (the home's other siblings under its parent) is not ours.
}

/// Why a watch could not be added.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the inotify watch limit is exhausted (fs.inotify.max_user_watches)")]
    Limit,
    #[error("{path}: {source}")]
    Notify { path: PathBuf, source: notify::Error },
    #[error("{path}: inotify: {source}")]
    Inotify { path: PathBuf, source: nix::errno::Errno },
    #[error("cannot start the {backend} watcher: {source}")]
    Start { backend: &'static str, source: notify::Error },
}

/// Most watches beyond the admitted profiles' directories, base watches (home's parent, home,
/// `profiles/`, `profiles/.deleted`) included.
pub const EXTRA_WATCHES: usize = 64;

/// Base watches at most.
const BASE_WATCHES: usize = 4;

/// Events queued between the poll watcher's thread and the event loop; beyond it the batch is
/// dropped and a full re-list is asked for instead (a hostile flood costs memory no more than
/// this).
const QUEUE: usize = 4096;

/// The receiving end: what the event loop waits on.
pub enum EventStream {
    /// The poll watcher's events, queued by its thread.
    Queue { rx: tokio::sync::mpsc::Receiver<notify::Result<Event>>, overflowed: Arc<AtomicBool> },
    /// The inotify descriptor, registered with the event loop's reactor on first use (the
    /// stream may be made outside a runtime).
    Kernel { kernel: Arc<Kernel>, fd: Option<tokio::io::unix::AsyncFd<Shared>> },
}

/// One batch of what the watcher reported.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Events were dropped (queue full) or an error was reported: re-list.
    pub overflowed: bool,
}

impl EventStream {
    /// Waits for the next event, then takes every event already queued. Never returns when the
    /// watcher is gone (the loop then lives on its timers).
    pub async fn next_batch(&mut self) -> Batch {
        match self {
            EventStream::Queue { rx, overflowed } => Self::next_queued(rx, overflowed).await,
            EventStream::Kernel { kernel, fd } => Self::next_read(kernel, fd).await,
        }
    }

    /// The next batch of inotify events: waits until the descriptor is readable, then reads
    /// (a bounded batch; what is left keeps it readable). A read error is reported once as lost
    /// events (the caller re-lists); the stream then waits for the next readiness.
    async fn next_read(kernel: &Arc<Kernel>, fd: &mut Option<tokio::io::unix::AsyncFd<Shared>>) -> Batch {
        if fd.is_none() {
            // SAFETY: `Shared` holds the instance (and so its descriptor) for as long as the
            // registration lives, and always names the same descriptor.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    Shared(kernel.clone()),
                    tokio::io::Interest::READABLE,
                )
            };
            match registered {
                Ok(f) => *fd = Some(f),
                Err(e) => {
                    tracing::warn!("cannot wait on inotify ({}); changes are seen by re-listing only", e);
                    return std::future::pending().await;
                }
            }
        }
        let Some(fd) = fd.as_ref() else { return std::future::pending().await };
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("cannot wait on inotify ({e}); changes are seen by re-listing only");
                    return std::future::pending().await;
                }
            };
            let mut batch = Batch::default();
            match kernel.read() {
                Ok(r) => {
                    if r.drained {
                        guard.clear_ready();
                    }
                    if r.overflowed {
                        tracing::warn!("inotify queue overflowed; re-listing everything");
                    }
                    batch.events = r.events;
                    batch.overflowed = r.overflowed;
                }
                Err(e) => {
                    guard.clear_ready();
                    tracing::warn!("reading inotify failed ({e}); re-listing");
                    batch.overflowed = true;
                }
            }
            if batch.overflowed || !batch.events.is_empty() {
                return batch;
            }
        }
    }

    async fn next_queued(
        rx: &mut tokio::sync::mpsc::Receiver<notify::Result<Event>>,
        overflowed: &AtomicBool,
    ) -> Batch {
        let mut batch = Batch::default();
        let Some(first) = rx.recv().await else { return std::future::pending().await };
        let take = |r: notify::Result<Event>, b: &mut Batch| match r {
            Ok(e) => {
                if e.need_rescan() {
                    // notify's rescan flag: events were lost.
                    tracing::warn!("watcher lost events; re-listing everything");
                }
                b.events.push(e)
            }
            Err(e) => {
                if matches!(&e.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
                    || matches!(e.kind, notify::ErrorKind::PathNotFound)
                {
                    // An entry vanished during a scan: its parent's watch reports the removal.
                    tracing::debug!("watcher: {e}");
                } else {
                    tracing::warn!("watcher error ({e}); re-listing");
                    b.overflowed = true;
                }
            }
        };
        take(first, &mut batch);
        while let Ok(r) = rx.try_recv() {
            take(r, &mut batch);
        }
        if overflowed.swap(false, Ordering::Relaxed) {
            tracing::warn!("watcher queue overflowed; re-listing everything");
            batch.overflowed = true;
        }
        batch
    }
}

/// Who holds the watches.
enum Holder {
    Kernel(Arc<Kernel>),
    Poll(Box<dyn notify::Watcher + Send>),
}

/// The watches, and what holds them.
pub struct Watcher {
    inner: Holder,
    backend: Backend,
    home: PathBuf,
    /// Watched entries of `profiles/`: the device and inode are those of what was watched;
    /// the times are what the last [`Watcher::establish`] (or the watch, if later) saw of it
    /// (see [`Watcher::dir_key`]).
    profiles: crate::hashing::FastMap<String, FileKey>,
    /// Names of the profiles the capacity guard admitted (as of the last pass).
    admitted: crate::hashing::FastSet<String>,
    /// Watched entries that are not admitted profiles, oldest first (may hold stale names).
    extras: VecDeque<String>,
    /// The base watches (home's parent, home, `profiles/`, `profiles/.deleted`) held, and the
    /// directory each one was added on (device, inode, ctime).
    bases: crate::hashing::FastMap<PathBuf, BaseId>,
}

/// Device, inode and ctime of a base directory.
type BaseId = (u64, u64, i64, i64);

/// [`BaseId`] of the directory at `path` (symlinks followed), if it is one.
fn base_identity(path: &Path) -> Option<BaseId> {
    let k = StatBase::stat(None, path).ok().filter(|s| s.dir)?.key;
    Some((k.dev, k.ino, k.ctime.0, k.ctime.1))
}

/// Identity of the directory at `path` (symlinks followed), if it is one.
fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    dir_identity_at(None, path)
}

/// [`dir_identity`], stat'ed relative to `base` when under it (a listing of `profiles/`).
fn dir_identity_at(base: Option<&StatBase>, path: &Path) -> Option<(u64, u64)> {
    dir_key_at(base, path).map(|k| (k.dev, k.ino))
}

/// The full identity (times included) of the directory at `path` (symlinks followed).
fn dir_key_at(base: Option<&StatBase>, path: &Path) -> Option<FileKey> {
    StatBase::stat(base, path).ok().filter(|s| s.dir).map(|s| s.key)
}

impl Watcher {
    /// Starts the watcher of the given backend. inotify is read by the returned stream on the
    /// event loop's thread; notify's poll watcher stats on its own thread every `poll` and
    /// queues what changed (bounded) for the stream.
    pub fn new(home: &Path, backend: Backend, poll: Duration) -> Result<(Self, EventStream), WatchError> {
        let (inner, stream) = match backend {
            Backend::Inotify => {
                let kernel = Kernel::new().map_err(|e| WatchError::Start {
                    backend: "inotify",
                    source: notify::Error::io(std::io::Error::from(e)),
                })?;
                (Holder::Kernel(kernel.clone()), EventStream::Kernel { kernel, fd: None })
            }
            Backend::Poll => {
                let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
                let overflowed = Arc::new(AtomicBool::new(false));
                let flag = overflowed.clone();
                let handler = move |r: notify::Result<Event>| {
                    if let Ok(e) = &r
                        && !e.need_rescan()
                        && !wanted(&e.kind)
                    {
                        return;
                    }
                    if tx.try_send(r).is_err() {
                        flag.store(true, Ordering::Relaxed);
                    }
                };
                let w = notify::PollWatcher::new(
                    handler,
                    // Entries are compared by their own metadata (lstat): following a link
                    // `hermes` planted would only cost a readlink and a second stat per entry.
                    notify::Config::default().with_poll_interval(poll).with_follow_symlinks(false),
                )
                .map_err(|source| WatchError::Start { backend: "poll", source })?;
                (Holder::Poll(Box::new(w)), EventStream::Queue { rx, overflowed })
            }
        };
        let w = Watcher {
            inner,
            backend,
            home: home.to_path_buf(),
            profiles: Default::default(),
            admitted: Default::default(),
            extras: VecDeque::new(),
            bases: Default::default(),
        };
        Ok((w, stream))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Watches `path` (non-recursively); `Ok(false)` when it is not a directory.
    fn add(&mut self, path: &Path) -> Result<bool, WatchError> {
        if dir_identity(path).is_none() {
            return Ok(false);
        }
        super::tape::opaque("a watch was added");
        let poll = match &mut self.inner {
            Holder::Kernel(k) => {
                return match k.watch(path) {
                    Ok(()) => Ok(true),
                    Err(nix::errno::Errno::ENOSPC) => Err(WatchError::Limit),
                    Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => Ok(false),
                    Err(source) => Err(WatchError::Inotify { path: path.to_path_buf(), source }),
                };
            }
            Holder::Poll(p) => p,
        };
        match poll.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => Ok(true),
            Err(e) => match e.kind {
                notify::ErrorKind::MaxFilesWatch => Err(WatchError::Limit),
                notify::ErrorKind::PathNotFound => Ok(false),
                notify::ErrorKind::Io(ref io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    Ok(false)
                }
                _ => Err(WatchError::Notify { path: path.to_path_buf(), source: e }),
            },
        }
    }

    /// (Re-)establishes the watches on the home's parent, the home, `profiles/` and
    /// `profiles/.deleted`, and on the directory entries of `profiles/`. Called before every
    /// full re-list, so anything created before a watch existed is still seen by the listing
    /// that follows.
    pub fn establish(&mut self) -> Result<(), WatchError> {
        let home = self.home.clone();
        let profiles = home.join("profiles");
        // The home's parent too, always: the home may be deleted while a logger keeps it open
        // (then no delete-self event arrives) and recreated later; only the parent sees both.
        // A base watch is added again only when its directory may be new (another inode, or a
        // new ctime: an inode number can be reused at once by a directory made again); a
        // watch held is not asked for again at every re-list.
        let mut paths: Vec<PathBuf> = home.parent().map(Path::to_path_buf).into_iter().collect();
        paths.extend([home.clone(), profiles.clone(), profiles.join(".deleted")]);
        for path in paths {
            match base_identity(&path) {
                Some(id) if self.bases.get(&path) == Some(&id) => {}
                Some(id) if self.add(&path)? => {
                    self.bases.insert(path, id);
                }
                _ => {
                    self.bases.remove(&path);
                }
            }
        }
        // Watches of entries gone, or whose directory was replaced while events were lost,
        // are dropped first: notify knows a watch by its path, and the inode of a lost rename
        // `a` → `b` must not lose `b`'s new watch when `a`'s is dropped. Only watched entries
        // are looked at (a stat each, by name relative to `profiles/`): with 10,000 folders and
        // a cap of 400, the others cost the listing alone. An entry gone fails its stat.
        let mut stale: Vec<String> = Vec::new();
        if let Some(base) = StatBase::open(&profiles) {
            for (n, key) in self.profiles.iter_mut() {
                match base.stat_entry(n).ok().filter(|s| s.dir).map(|s| s.key) {
                    Some(k) if (k.dev, k.ino) == (key.dev, key.ino) => *key = k,
                    _ => stale.push(n.clone()),
                }
            }
        } else {
            stale.extend(self.profiles.keys().cloned());
        }
        for name in stale {
            self.unwatch(&name);
        }
        // Then the listing, after the stale watches are gone: an entry replaced under the same
        // name is watched again below. Only names not watched yet are kept, in one buffer
        // (with 10,000 folders and a cap of 400, a String each was most of a re-list's
        // allocations, for entries that mostly find no room).
        let mut arena: Vec<u8> = Vec::new();
        let mut listed: Vec<std::ops::Range<usize>> = Vec::new();
        let _ = crate::observe::listing::each(&profiles, |name, _| {
            if let Ok(name) = std::str::from_utf8(name)
                && !name.starts_with('.')
                && !self.profiles.contains_key(name)
            {
                let start = arena.len();
                arena.extend_from_slice(name.as_bytes());
                listed.push(start..arena.len());
            }
        });
        let mut room = self.extra_budget().saturating_sub(self.extra_count());
        for range in listed {
            // Valid UTF-8: checked when listed.
            let Ok(name) = std::str::from_utf8(&arena[range]) else { continue };
            // Admitted profiles always; other entries only while there is room, without
            // evicting (a listing has no notion of "newest").
            if !self.profiles.contains_key(name) {
                let admitted = self.admitted.contains(name);
                if admitted || room > 0 {
                    self.watch_entry(name, false)?;
                    if !admitted && self.profiles.contains_key(name) {
                        room -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The identity (times included) the watched directory `profiles/<name>` had when the
    /// last [`Watcher::establish`] stat'ed it, or when it was watched since: taken *before*
    /// the listing that follows, so a file made in it after that changes its times.
    pub fn dir_key(&self, name: &str) -> Option<FileKey> {
        self.profiles.get(name).copied()
    }

    /// Drops the watch of `profiles/<name>`. The kernel may already have dropped it (the
    /// entry was deleted): that is not an error.
    fn unwatch(&mut self, name: &str) {
        super::tape::opaque("a watch was dropped");
        if self.profiles.remove(name).is_some() {
            let path = self.home.join("profiles").join(name);
            match &mut self.inner {
                Holder::Kernel(k) => k.unwatch(&path),
                Holder::Poll(p) => {
                    let _ = p.unwatch(&path);
                }
            }
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
                self.watch_entry(name.as_str(), false)?;
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
        let Some(key) = dir_key_at(None, &path) else { return Ok(()) };
        if self.add(&path)? {
            self.profiles.insert(name.to_string(), key);
            if !self.admitted.contains(name) {
                self.extras.push_back(name.to_string());
                if self.extras.len() > 4 * EXTRA_WATCHES {
                    self.extras.retain(|n| self.profiles.contains_key(n) && !self.admitted.contains(n));
                }
            }
        }
        Ok(())
    }

    /// Applies what a batch says about the entries of `profiles/`: watches of entries gone are
    /// dropped, entries that appeared are watched afresh (a directory renamed `a` → `b` is
    /// watched as `b` before `b` is read, so a later change inside it is attributed to `b`).
    /// `Err` when a watch could not be added (the caller re-lists).
    pub fn follow(&mut self, changes: &Changes) -> Result<(), WatchError> {
        for name in &changes.gone {
            self.unwatch(name);
        }
        for name in &changes.appeared {
            // A name that came back is a new directory: never trust an older watch of it.
            self.unwatch(name);
            self.watch_entry(name, true)?;
        }
        Ok(())
    }

    /// Number of watches held (for benchmarks and tests).
    pub fn watch_count(&self) -> usize {
        self.bases.len() + self.profiles.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, MetadataKind, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        paths.iter().fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn dirty(v: &[&str]) -> BTreeSet<ProfileName> {
        v.iter()
            .map(|s| if *s == "default" { ProfileName::root() } else { ProfileName::parse_named(s).unwrap() })
            .collect()
    }

    const HOME: &str = "/data/home";

    #[test]
    fn auto_polls_only_where_inotify_misses_remote_changes() {
        for poll in [0x6573_5546_i64, 0x6969, 0x517b, 0xff53_4d42, 0xfe53_4d42, 0x0102_1997] {
            assert_eq!(backend_for_fs(poll), Backend::Poll, "{poll:#x}");
        }
        // ext4, tmpfs, overlay, xfs, btrfs.
        for local in [0xef53_i64, 0x0102_1994, 0x794c_7630, 0x5846_5342, 0x9123_683e] {
            assert_eq!(backend_for_fs(local), Backend::Inotify, "{local:#x}");
        }
        assert_eq!(choose(WatchMode::Poll, Path::new("/")), Backend::Poll);
        assert_eq!(choose(WatchMode::Inotify, Path::new("/")), Backend::Inotify);
    }

    #[test]
    fn a_rename_is_gone_then_appeared_and_both_names_are_dirty() {
        let c = interpret(
            Path::new(HOME),
            &[
                ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &["/data/home/profiles/a"]),
                ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &["/data/home/profiles/b"]),
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &["/data/home/profiles/a", "/data/home/profiles/b"],
                ),
            ],
        );
        assert_eq!(c.gone, names(&["a"]));
        assert_eq!(c.appeared, names(&["b"]));
        assert_eq!(c.dirty, dirty(&["a", "b"]));
        assert!(!c.relist);
    }

    #[test]
    fn only_the_files_that_matter_mark_a_profile_dirty() {
        let c = interpret(
            Path::new(HOME),
            &[
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &["/data/home/profiles/a/SOUL.md"],
                ),
                ev(
                    EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                    &["/data/home/profiles/b/notes.md"],
                ),
                ev(EventKind::Create(CreateKind::File), &["/data/home/profiles/c/gateway_state.json"]),
                ev(EventKind::Create(CreateKind::File), &["/data/home/gateway_state.json"]),
                ev(EventKind::Create(CreateKind::File), &["/data/home/gateway_ports.json"]),
                ev(EventKind::Remove(RemoveKind::File), &["/data/home/profiles/.deleted/d"]),
                ev(EventKind::Create(CreateKind::Folder), &["/data/home/profiles/.hidden"]),
                ev(EventKind::Create(CreateKind::Folder), &["/data/other"]),
            ],
        );
        assert_eq!(c.dirty, dirty(&["a", "c", "d", "default"]));
        assert!(c.appeared.is_empty() && c.gone.is_empty() && !c.relist, "{c:?}");
    }

    #[test]
    fn a_config_yaml_marks_its_profile_dirty_and_the_roots_marks_the_root() {
        // SPEC §6.7: `gateway.standalone` and the root's `gateway.multiplex_profiles` pick the
        // topology, so a rewritten `config.yaml` is a change of the profile.
        let c = interpret(
            Path::new(HOME),
            &[
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    &["/data/home/profiles/a/config.yaml"],
                ),
                ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/data/home/config.yaml"]),
                ev(EventKind::Create(CreateKind::File), &["/data/home/profiles/b/config.yml"]),
            ],
        );
        assert_eq!(c.dirty, dirty(&["a", "default"]));
        assert!(c.appeared.is_empty() && c.gone.is_empty() && !c.relist, "{c:?}");
    }

    #[test]
    fn reads_and_opens_are_not_changes() {
        let c = interpret(
            Path::new(HOME),
            &[
                ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["/data/home/profiles/a/SOUL.md"]),
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Read)),
                    &["/data/home/profiles/a/SOUL.md"],
                ),
                ev(EventKind::Access(AccessKind::Read), &["/data/home/profiles"]),
            ],
        );
        assert_eq!(c, Changes::default());
        assert!(!wanted(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(wanted(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(!wanted(&EventKind::Modify(ModifyKind::Name(RenameMode::Both))));
        assert!(wanted(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
    }

    #[test]
    fn the_home_or_profiles_replaced_and_overflow_ask_for_a_relist() {
        for path in ["/data/home", "/data/home/profiles", "/data/home/profiles/.deleted"] {
            for kind in [EventKind::Create(CreateKind::Folder), EventKind::Remove(RemoveKind::Folder)] {
                assert!(interpret(Path::new(HOME), &[ev(kind, &[path])]).relist, "{path}");
            }
        }
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(interpret(Path::new(HOME), &[rescan]).relist);
    }

    #[test]
    fn an_entry_deleted_and_created_again_is_both_gone_and_appeared() {
        let c = interpret(
            Path::new(HOME),
            &[
                ev(EventKind::Remove(RemoveKind::Folder), &["/data/home/profiles/a"]),
                ev(EventKind::Create(CreateKind::Folder), &["/data/home/profiles/a"]),
            ],
        );
        assert_eq!((c.gone, c.appeared), (names(&["a"]), names(&["a"])));
    }
}
