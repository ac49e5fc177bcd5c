//! Status rewrites of the slots, for crash-loop backoff (SPEC §6.8; why this source of deaths
//! and not another: see [`crate::plan::crashloop`]).
//!
//! One inotify instance with one watch per slot's `supervise/` directory, for `IN_MOVED_TO`
//! only: s6-supervise publishes `supervise/status` by renaming a fresh file over it on every
//! state change, so the daemon wakes once per change of a gateway and never on a timer, and
//! never on its own reads (no access or open events are asked for). `supervise/` is root's
//! (0710, group `hermes` may only traverse it): nobody else can create or rename in it.

use crate::model::ProfileName;
use crate::world::{Exit, Seen};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

/// The file s6-supervise rewrites.
const STATUS: &str = "status";

/// Watches on the slots' `supervise/` directories.
pub struct StatusWatch {
    inotify: Inotify,
    by_wd: HashMap<WatchDescriptor, ProfileName>,
    by_name: BTreeMap<ProfileName, WatchDescriptor>,
}

impl StatusWatch {
    pub fn new() -> Result<Self, Errno> {
        Ok(StatusWatch {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            by_wd: HashMap::new(),
            by_name: BTreeMap::new(),
        })
    }

    /// Watches the `supervise/` directory of each of these slots and forgets the others. A
    /// slot without one yet (not published, or a supervisor that never ran) is tried again at
    /// the next call.
    pub fn sync<'a>(&mut self, scandir: &Path, names: impl Iterator<Item = &'a ProfileName>) {
        let want: BTreeSet<&ProfileName> = names.collect();
        let gone: Vec<ProfileName> = self.by_name.keys().filter(|n| !want.contains(n)).cloned().collect();
        for n in gone {
            if let Some(wd) = self.by_name.remove(&n) {
                self.by_wd.remove(&wd);
                let _ = self.inotify.rm_watch(wd);
            }
        }
        for n in want {
            if self.by_name.contains_key(n) {
                continue;
            }
            let dir = scandir.join(n.slot_name()).join(crate::layout::slot::SUPERVISE_DIR);
            // ONLYDIR + DONT_FOLLOW: a symlink planted there is never watched through.
            let mask = AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR | AddWatchFlags::IN_DONT_FOLLOW;
            match self.inotify.add_watch(&dir, mask) {
                Ok(wd) => {
                    self.by_wd.insert(wd, n.clone());
                    self.by_name.insert(n.clone(), wd);
                }
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {}
                Err(e) => tracing::debug!(slot = %n.slot_name(), "supervise/ not watched: {e}"),
            }
        }
    }

    /// The slots whose status was rewritten since the last call (never blocks).
    pub fn read(&mut self) -> BTreeSet<ProfileName> {
        let mut out = BTreeSet::new();
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for ev in events {
                        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                            // The directory went (slot removed): watch it again if it comes back.
                            if let Some(n) = self.by_wd.remove(&ev.wd) {
                                self.by_name.remove(&n);
                            }
                            continue;
                        }
                        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            // Level-triggered: read them all.
                            out.extend(self.by_name.keys().cloned());
                            continue;
                        }
                        if ev.name.as_deref().and_then(|n| n.to_str()) == Some(STATUS)
                            && let Some(n) = self.by_wd.get(&ev.wd)
                        {
                            out.insert(n.clone());
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        out
    }

    pub fn watched(&self) -> usize {
        self.by_name.len()
    }
}

impl AsRawFd for StatusWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

/// A slot's status as the crash-loop tracker reads it (`None`: no readable status).
pub fn seen(slot_dir: &Path) -> Option<Seen> {
    let st = crate::s6::read_status(slot_dir).ok().flatten()?;
    let exit = match (st.exit_code(), st.signal()) {
        (_, Some(sig)) => Exit::Signal(sig),
        (Some(code), None) => Exit::Code(code),
        (None, None) => Exit::Code(0),
    };
    Some(Seen { since: st.since, up: st.is_up(), want_up: st.want_up, exit })
}
