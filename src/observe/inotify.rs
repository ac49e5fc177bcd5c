//! The inotify backend of the volume watcher, read on the daemon's own thread.
//!
//! Why not notify's inotify watcher: it reads inotify on a thread of its own and hands each
//! event over through a channel and an eventfd, so every change woke two threads before the
//! daemon could act on it. On an idle 2-core VM each wake-up, and the pages that thread
//! touches, cost a fraction of a millisecond of the intent path (issue 15: measured 0.4 ms
//! between notify's `read` and its eventfd `write` alone). Here the event loop waits on the
//! inotify descriptor itself ([`tokio::io::unix::AsyncFd`]) and reads it when it is readable:
//! one wake-up, on the thread that acts. notify still provides the polling backend and the
//! event vocabulary ([`notify::Event`]) that [`super::watch::interpret`] reads, so both
//! backends feed the same pure interpretation.
//!
//! Invariants:
//! - The kernel is asked only for the kinds of event the daemon acts on ([`MASK`]): opens,
//!   reads and read-only closes are never queued, so the daemon's own reads never wake it.
//! - One read of a batch takes at most [`BATCH`] records; the rest stays queued in the kernel
//!   and the descriptor stays readable, so a flood never holds the loop in one read.
//! - A kernel queue overflow is reported as a lost-events batch (the caller re-lists).

use crate::hashing::FastMap;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, InotifyEvent, WatchDescriptor};
use notify::event::{AccessKind, AccessMode, CreateKind, MetadataKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// What every watch asks the kernel for: creations and deletions (the entry's own included),
/// renames both ways (and of the watched directory itself), metadata changes and the close
/// after a write. Not `IN_MODIFY` (one per `write()`, always followed by the close).
pub const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_CLOSE_WRITE);

/// Most inotify records taken into one batch.
pub const BATCH: usize = 4096;

/// The events one inotify record stands for, in notify's vocabulary (a record may carry
/// several flags). Pure.
pub fn kinds(mask: AddWatchFlags) -> impl Iterator<Item = EventKind> {
    let dir = mask.contains(AddWatchFlags::IN_ISDIR);
    let table: [(AddWatchFlags, EventKind); 8] = [
        (AddWatchFlags::IN_MOVED_FROM, EventKind::Modify(ModifyKind::Name(RenameMode::From))),
        (AddWatchFlags::IN_MOVED_TO, EventKind::Modify(ModifyKind::Name(RenameMode::To))),
        // The watched directory itself was renamed: where it went is not known here.
        (AddWatchFlags::IN_MOVE_SELF, EventKind::Modify(ModifyKind::Name(RenameMode::From))),
        (
            AddWatchFlags::IN_CREATE,
            EventKind::Create(if dir { CreateKind::Folder } else { CreateKind::File }),
        ),
        (
            AddWatchFlags::IN_DELETE,
            EventKind::Remove(if dir { RemoveKind::Folder } else { RemoveKind::File }),
        ),
        // Only directories are watched. An unmount takes the watched directory away as well.
        (AddWatchFlags::IN_DELETE_SELF, EventKind::Remove(RemoveKind::Folder)),
        (AddWatchFlags::IN_UNMOUNT, EventKind::Remove(RemoveKind::Folder)),
        (AddWatchFlags::IN_CLOSE_WRITE, EventKind::Access(AccessKind::Close(AccessMode::Write))),
    ];
    let attrib = mask
        .contains(AddWatchFlags::IN_ATTRIB)
        .then_some(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)));
    table.into_iter().filter(move |(flag, _)| mask.contains(*flag)).map(|(_, k)| k).chain(attrib)
}

/// Which directory each watch descriptor stands for, both ways.
#[derive(Default)]
struct Table {
    by_wd: FastMap<WatchDescriptor, PathBuf>,
    by_path: FastMap<PathBuf, WatchDescriptor>,
}

impl Table {
    fn forget_wd(&mut self, wd: WatchDescriptor) {
        if let Some(p) = self.by_wd.remove(&wd)
            && self.by_path.get(&p) == Some(&wd)
        {
            self.by_path.remove(&p);
        }
    }
}

/// One inotify instance and its watches. Shared by the [`super::watch::Watcher`], which adds
/// and drops watches, and the event stream, which reads; both live on the event loop's thread
/// (the lock is never contended; it makes the sharing sound, not faster).
pub struct Kernel {
    fd: nix::sys::inotify::Inotify,
    table: Mutex<Table>,
}

/// What one [`Kernel::read`] found.
#[derive(Debug, Default)]
pub struct Reading {
    /// Events of watched directories, in the order the kernel queued them.
    pub events: Vec<Event>,
    /// The kernel's queue overflowed: events were lost.
    pub overflowed: bool,
    /// Nothing is left to read (the descriptor is no longer readable).
    pub drained: bool,
}

impl Kernel {
    pub fn new() -> Result<Arc<Self>, Errno> {
        let fd = nix::sys::inotify::Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Arc::new(Kernel { fd, table: Mutex::new(Table::default()) }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding it cannot leave the maps half-updated in a way that matters:
        // a stale entry only names a path for a descriptor the kernel no longer reports.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the directory at `path` (a symlink to one is followed; anything else is
    /// refused by the kernel with `ENOTDIR`).
    pub fn watch(&self, path: &Path) -> Result<(), Errno> {
        let wd = self.fd.add_watch(path, MASK | AddWatchFlags::IN_ONLYDIR)?;
        let mut t = self.table();
        // The same directory under another name keeps one descriptor: the newest name wins.
        if let Some(old) = t.by_wd.insert(wd, path.to_path_buf())
            && old != path
        {
            t.by_path.remove(&old);
        }
        if let Some(prev) = t.by_path.insert(path.to_path_buf(), wd)
            && prev != wd
        {
            // `path` now names another directory: the old one's watch is not wanted.
            t.by_wd.remove(&prev);
            let _ = self.fd.rm_watch(prev);
        }
        Ok(())
    }

    /// Drops the watch of `path`, if any. The kernel may have dropped it already (the
    /// directory was deleted): not an error.
    pub fn unwatch(&self, path: &Path) {
        let mut t = self.table();
        if let Some(wd) = t.by_path.remove(path) {
            t.by_wd.remove(&wd);
            let _ = self.fd.rm_watch(wd);
        }
    }

    /// Reads what is queued, up to [`BATCH`] records (and what the last read brought beyond).
    /// Events of descriptors no longer known (dropped while queued) are skipped.
    pub fn read(&self) -> Result<Reading, Errno> {
        let mut r = Reading::default();
        let mut records_taken = 0;
        while records_taken < BATCH {
            let records = match self.fd.read_events() {
                Ok(v) => v,
                Err(Errno::EAGAIN) => {
                    r.drained = true;
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            };
            records_taken += records.len();
            let mut t = self.table();
            for rec in records {
                self.take(&mut t, rec, &mut r);
            }
        }
        Ok(r)
    }

    fn take(&self, t: &mut Table, rec: InotifyEvent, r: &mut Reading) {
        if rec.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            r.overflowed = true;
            return;
        }
        if rec.mask.contains(AddWatchFlags::IN_IGNORED) {
            // The kernel dropped the watch (its directory is gone, or it was removed).
            t.forget_wd(rec.wd);
            return;
        }
        let Some(dir) = t.by_wd.get(&rec.wd) else { return };
        let path = match &rec.name {
            Some(name) => dir.join(name),
            None => dir.clone(),
        };
        for kind in kinds(rec.mask) {
            r.events.push(Event::new(kind).add_path(path.clone()));
        }
    }

    /// Number of watches held.
    pub fn len(&self) -> usize {
        self.table().by_wd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRawFd for Kernel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

/// The shared instance, as tokio's reactor needs it (a descriptor it does not own).
pub struct Shared(pub Arc<Kernel>);

impl AsRawFd for Shared {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flag_becomes_the_event_notify_would_report() {
        let one = |m: AddWatchFlags| kinds(m).collect::<Vec<_>>();
        assert_eq!(one(AddWatchFlags::IN_CREATE), [EventKind::Create(CreateKind::File)]);
        assert_eq!(
            one(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ISDIR),
            [EventKind::Create(CreateKind::Folder)]
        );
        assert_eq!(
            one(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ISDIR),
            [EventKind::Remove(RemoveKind::Folder)]
        );
        assert_eq!(one(AddWatchFlags::IN_MOVED_TO), [EventKind::Modify(ModifyKind::Name(RenameMode::To))]);
        assert_eq!(
            one(AddWatchFlags::IN_MOVED_FROM),
            [EventKind::Modify(ModifyKind::Name(RenameMode::From))]
        );
        assert_eq!(one(AddWatchFlags::IN_MOVE_SELF), [EventKind::Modify(ModifyKind::Name(RenameMode::From))]);
        assert_eq!(one(AddWatchFlags::IN_DELETE_SELF), [EventKind::Remove(RemoveKind::Folder)]);
        assert_eq!(
            one(AddWatchFlags::IN_CLOSE_WRITE),
            [EventKind::Access(AccessKind::Close(AccessMode::Write))]
        );
        assert_eq!(
            one(AddWatchFlags::IN_ATTRIB),
            [EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))]
        );
        // Never asked for, so never reported.
        assert!(
            one(AddWatchFlags::IN_OPEN | AddWatchFlags::IN_CLOSE_NOWRITE | AddWatchFlags::IN_ACCESS)
                .is_empty()
        );
        // Every kind reported is one the interpretation keeps.
        for flag in MASK.iter() {
            for k in kinds(flag) {
                assert!(super::super::watch::wanted(&k), "{flag:?} → {k:?}");
            }
        }
    }

    #[test]
    fn the_kernel_reports_changes_in_a_watched_directory_and_nothing_for_reads() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kernel::new().unwrap();
        k.watch(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let _ = std::fs::read(dir.path().join("a")).unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let r = k.read().unwrap();
        assert!(r.drained && !r.overflowed);
        let seen: Vec<(EventKind, PathBuf)> = r.events.iter().map(|e| (e.kind, e.paths[0].clone())).collect();
        let p = |n: &str| dir.path().join(n);
        assert_eq!(
            seen,
            [
                (EventKind::Create(CreateKind::File), p("a")),
                (EventKind::Access(AccessKind::Close(AccessMode::Write)), p("a")),
                (EventKind::Modify(ModifyKind::Name(RenameMode::From)), p("a")),
                (EventKind::Modify(ModifyKind::Name(RenameMode::To)), p("b")),
                (EventKind::Create(CreateKind::Folder), p("d")),
            ]
        );
        // A file is refused (only directories are watched); a dropped watch reports nothing.
        assert_eq!(k.watch(&p("b")), Err(Errno::ENOTDIR));
        k.unwatch(dir.path());
        std::fs::write(p("c"), b"x").unwrap();
        let r = k.read().unwrap();
        assert!(r.events.is_empty(), "{:?}", r.events);
        assert!(k.is_empty());
    }

    /// `hermes` floods a watched profile with new files while the daemon is busy: a batch
    /// stays bounded, and when the kernel's queue overflows the reader says events were lost
    /// (the daemon then re-lists) instead of reading on forever.
    #[test]
    fn a_flood_is_read_in_bounded_batches_and_an_overflow_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kernel::new().unwrap();
        k.watch(dir.path()).unwrap();
        let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Two events a file (its creation and the close after writing), past the queue.
        for i in 0..queue / 2 + 64 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let (mut batches, mut overflowed, mut drained) = (0, false, false);
        while !drained {
            let r = k.read().unwrap();
            // One read brings at most a 4 KiB buffer's worth past the bound.
            assert!(r.events.len() < BATCH + 4096, "{} events in one batch", r.events.len());
            overflowed |= r.overflowed;
            drained = r.drained;
            batches += 1;
            assert!(batches <= queue / BATCH + 2, "the reader never drained");
        }
        assert!(overflowed, "the kernel's queue of {queue} overflowed and the reader said so");
        assert!(batches > 1, "a full queue takes more than one batch");
    }

    #[test]
    fn a_deleted_directory_loses_its_watch_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("p");
        std::fs::create_dir(&sub).unwrap();
        let k = Kernel::new().unwrap();
        k.watch(&sub).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        let r = k.read().unwrap();
        assert!(
            r.events.iter().any(|e| e.kind == EventKind::Remove(RemoveKind::Folder) && e.paths[0] == sub)
        );
        assert!(k.is_empty(), "IN_IGNORED forgets the descriptor");
    }
}
