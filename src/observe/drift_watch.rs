//! Which slots may have drifted since the daemon last read them (issue 15): one inotify
//! instance watching each slot directory and its `data/` and `log/`, so that a full re-list
//! re-reads only the slots something touched, instead of stat'ing every file of every slot.
//!
//! What may touch those three directories: root (the daemon's own writes, an operator's hand
//! edits, `rm -rf`), and s6-supervise creating `supervise/` once. `hermes` cannot: they are
//! root's 0755, and what `hermes` may reach in a slot (`supervise/control`, read access) is
//! outside them or raises no event asked for here (opens and reads are not asked for, so the
//! daemon's own reads and a reader in a loop never mark anything).
//!
//! Invariants:
//! - a slot is *trusted* (its last reading stands) only while its three watches are held, no
//!   event named it since that reading, and the queue never overflowed since: the watches are
//!   added *before* the reading (see [`DriftWatch::watch`]), so a change made during or after
//!   it is queued;
//! - the queue is drained before every trust decision ([`DriftWatch::drain`]): the kernel
//!   queues an event before the write that raised it returns, so the daemon's own writes of a
//!   pass are always seen by the reading that follows them;
//! - the instance is never polled by the event loop: nothing here wakes the daemon. Events
//!   wait in the kernel's queue (bounded by `max_queued_events`; an overflow distrusts every
//!   slot) until the next reading.

use crate::hashing::FastMap;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::layout::slot::SUPERVISE_DIR;

/// The directories watched in a slot, relative to it: the slot itself (its rendered files,
/// `down`, `event/`), `data/` (the daemon's record) and `log/` (the logger's run script and
/// `event/`).
const WATCHED: [&str; 3] = ["", crate::layout::slot::DATA_DIR, crate::layout::slot::LOG_DIR];

/// What changes a slot's reading: entries made, removed, renamed or written, and attributes
/// (modes of `event/`). Never opens or reads.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// One slot's watches, and whether its last reading still stands.
#[derive(Debug)]
struct Slot {
    wds: [WatchDescriptor; 3],
    /// Something touched the slot since its last reading.
    stale: bool,
    /// A watched directory went, moved or was replaced: watch afresh before the next reading.
    rewatch: bool,
}

/// Watches on the slots' directories, by slot directory path.
pub struct DriftWatch {
    inotify: Inotify,
    slots: FastMap<OsString, Slot>,
    by_wd: FastMap<WatchDescriptor, OsString>,
}

impl std::fmt::Debug for DriftWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftWatch").field("slots", &self.slots.len()).finish_non_exhaustive()
    }
}

impl DriftWatch {
    pub fn new() -> Result<Self, Errno> {
        Ok(DriftWatch {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            slots: FastMap::default(),
            by_wd: FastMap::default(),
        })
    }

    /// Reads every queued event (never blocks) and marks the slots they name.
    pub fn drain(&mut self) {
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => {
                    super::tape::quiet(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
                        &self.inotify,
                    )));
                    break;
                }
                Ok(events) => {
                    for ev in events {
                        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            for s in self.slots.values_mut() {
                                s.stale = true;
                            }
                            continue;
                        }
                        // s6-supervise making its own `supervise/` (in the slot or in `log/`)
                        // changes nothing a reading holds: the lock file is opened then
                        // ([`crate::observe::slots`]). Removing or replacing it is not ignored.
                        if ev.name.as_deref().is_some_and(|n| n == OsStr::new(SUPERVISE_DIR))
                            && ev.mask.contains(AddWatchFlags::IN_ISDIR)
                            && !ev.mask.intersects(
                                AddWatchFlags::IN_DELETE
                                    | AddWatchFlags::IN_MOVED_FROM
                                    | AddWatchFlags::IN_MOVED_TO,
                            )
                        {
                            continue;
                        }
                        let Some(dir) = self.by_wd.get(&ev.wd) else { continue };
                        let Some(s) = self.slots.get_mut(dir) else { continue };
                        s.stale = true;
                        if ev.mask.intersects(
                            AddWatchFlags::IN_IGNORED
                                | AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF,
                        ) {
                            s.rewatch = true;
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                // EAGAIN: empty. Anything else: distrust everything rather than guess.
                Err(Errno::EAGAIN) => {
                    super::tape::quiet(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
                        &self.inotify,
                    )));
                    break;
                }
                Err(_) => {
                    for s in self.slots.values_mut() {
                        s.stale = true;
                    }
                    break;
                }
            }
        }
    }

    /// Whether the last reading of the slot at `dir` still stands (call [`Self::drain`] first).
    pub fn trusted(&self, dir: &Path) -> bool {
        self.slots.get(dir.as_os_str()).is_some_and(|s| !s.stale)
    }

    /// Watches the slot at `dir` (again, if a watched directory was replaced) before it is
    /// read; the reading that follows stands until an event names the slot. A slot that cannot
    /// be watched whole (a directory missing, the watch limit) is not trusted: read every time.
    pub fn watch(&mut self, dir: &Path) {
        // A slot read again (and maybe watched again): nothing a replay could stand for.
        super::tape::opaque("a slot was read again");
        if let Some(s) = self.slots.get_mut(dir.as_os_str())
            && !s.rewatch
        {
            s.stale = false;
            return;
        }
        self.forget(dir.as_os_str());
        let mut wds = Vec::with_capacity(WATCHED.len());
        for rel in WATCHED {
            let path = if rel.is_empty() { dir.to_path_buf() } else { dir.join(rel) };
            match self.inotify.add_watch(&path, mask()) {
                Ok(wd) => wds.push(wd),
                Err(e) => {
                    if e != Errno::ENOENT {
                        tracing::debug!(slot = %crate::escape::Escaped::new(dir), "slot not watched: {e}");
                    }
                    for wd in wds {
                        let _ = self.inotify.rm_watch(wd);
                    }
                    return;
                }
            }
        }
        let wds: [WatchDescriptor; 3] = wds.try_into().expect("three watches");
        let key = dir.as_os_str().to_owned();
        for wd in wds {
            self.by_wd.insert(wd, key.clone());
        }
        self.slots.insert(key, Slot { wds, stale: false, rewatch: false });
    }

    /// Stops watching the slot at `dir` (it is gone, or no longer the daemon's).
    pub fn forget(&mut self, dir: &OsStr) {
        if let Some(s) = self.slots.remove(dir) {
            for wd in s.wds {
                // Two watched paths can be one inode (a hand-made link): never drop a wd
                // another slot now owns.
                if self.by_wd.get(&wd).is_some_and(|d| d.as_os_str() == dir) {
                    self.by_wd.remove(&wd);
                    let _ = self.inotify.rm_watch(wd);
                }
            }
        }
    }

    /// Forgets every slot not in `keep` (slots that left the scandir).
    pub fn retain(&mut self, keep: impl Fn(&OsStr) -> bool) {
        let gone: Vec<OsString> = self.slots.keys().filter(|d| !keep(d)).cloned().collect();
        for d in gone {
            self.forget(&d);
        }
    }

    /// Slots watched now.
    pub fn watched(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn slot(root: &Path, name: &str) -> std::path::PathBuf {
        let d = root.join(name);
        fs::create_dir_all(d.join("data")).unwrap();
        fs::create_dir_all(d.join("log")).unwrap();
        fs::write(d.join("run"), "run").unwrap();
        fs::write(d.join("data/reconciler.json"), "{}").unwrap();
        fs::write(d.join("log/run"), "log").unwrap();
        d
    }

    fn settled(w: &mut DriftWatch, d: &Path) -> bool {
        w.drain();
        w.trusted(d)
    }

    #[test]
    fn a_slot_is_trusted_after_its_reading_until_something_touches_it() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (slot(t.path(), "gateway-a"), slot(t.path(), "gateway-b"));
        let mut w = DriftWatch::new().unwrap();
        assert!(!settled(&mut w, &a), "never read: not trusted");
        w.watch(&a);
        w.watch(&b);
        assert!(settled(&mut w, &a) && settled(&mut w, &b));
        // Reads and opens for reading mark nothing.
        for _ in 0..3 {
            fs::read(a.join("run")).unwrap();
            fs::read(a.join("log/run")).unwrap();
            let _ = fs::read_dir(&a).unwrap().count();
        }
        assert!(settled(&mut w, &a));
        let touch: [&dyn Fn(&Path); 7] = [
            &|d| fs::write(d.join("run"), "edited").unwrap(),
            &|d| fs::write(d.join("data/reconciler.json"), "{\"x\":1}").unwrap(),
            &|d| fs::write(d.join("log/run"), "edited").unwrap(),
            &|d| fs::write(d.join("down"), "").unwrap(),
            &|d| fs::remove_file(d.join("down")).unwrap(),
            &|d| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(d.join("run"), fs::Permissions::from_mode(0o700)).unwrap()
            },
            &|d| fs::create_dir(d.join("event")).unwrap(),
        ];
        for (i, f) in touch.iter().enumerate() {
            f(&a);
            assert!(!settled(&mut w, &a), "change {i} marks the slot");
            assert!(settled(&mut w, &b), "change {i} marks no other slot");
            w.watch(&a);
            assert!(settled(&mut w, &a), "read again after change {i}: trusted");
        }
    }

    #[test]
    fn s6_making_its_supervise_dir_marks_nothing_but_removing_it_does() {
        let t = tempfile::tempdir().unwrap();
        let a = slot(t.path(), "gateway-a");
        let mut w = DriftWatch::new().unwrap();
        w.watch(&a);
        fs::create_dir(a.join("supervise")).unwrap();
        fs::create_dir(a.join("log/supervise")).unwrap();
        fs::write(a.join("supervise/lock"), "").unwrap();
        assert!(settled(&mut w, &a));
        fs::remove_dir_all(a.join("supervise")).unwrap();
        assert!(!settled(&mut w, &a));
        w.watch(&a);
        // Not a directory: a file made under that name is a change like any other.
        fs::write(a.join("supervise"), "").unwrap();
        assert!(!settled(&mut w, &a));
        w.watch(&a);
        // Nor is a directory renamed in under that name.
        fs::create_dir(a.join("elsewhere")).unwrap();
        fs::remove_file(a.join("supervise")).unwrap();
        w.drain();
        w.watch(&a);
        assert!(settled(&mut w, &a));
        fs::rename(a.join("elsewhere"), a.join("supervise")).unwrap();
        assert!(!settled(&mut w, &a));
    }

    #[test]
    fn a_replaced_slot_is_watched_afresh() {
        let t = tempfile::tempdir().unwrap();
        let a = slot(t.path(), "gateway-a");
        let mut w = DriftWatch::new().unwrap();
        w.watch(&a);
        // Renamed away and another renamed in under its name.
        fs::rename(&a, t.path().join(".gateway-a.rm-1")).unwrap();
        let fresh = slot(t.path(), ".gateway-a.new");
        fs::rename(&fresh, &a).unwrap();
        assert!(!settled(&mut w, &a));
        w.watch(&a);
        assert!(settled(&mut w, &a));
        // The new directory's files are the watched ones now; the old one's are not.
        fs::write(t.path().join(".gateway-a.rm-1/run"), "old").unwrap();
        assert!(settled(&mut w, &a), "the slot that went away no longer counts");
        fs::write(a.join("log/run"), "new").unwrap();
        assert!(!settled(&mut w, &a));
        // Removed whole: not trusted, and a missing slot is not watched.
        fs::remove_dir_all(&a).unwrap();
        w.drain();
        w.watch(&a);
        assert!(!settled(&mut w, &a));
        assert_eq!(w.watched(), 0);
    }

    #[test]
    fn forgotten_slots_drop_their_watches() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (slot(t.path(), "gateway-a"), slot(t.path(), "gateway-b"));
        let mut w = DriftWatch::new().unwrap();
        w.watch(&a);
        w.watch(&b);
        w.retain(|d| d == b.as_os_str());
        assert_eq!(w.watched(), 1);
        assert!(!settled(&mut w, &a) && settled(&mut w, &b));
        assert!(w.by_wd.len() == 3);
    }
}
