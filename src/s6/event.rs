//! A service's `event/` directory (s6's "fifodir"), and why nobody else may write to it.
//!
//! s6-supervise announces each state change by opening every entry of `event/` whose name
//! starts with `ftrig1` write-only and non-blocking, *following symlinks*, and writing one byte
//! (measured on s6 2.11 and 2.13; S6-FACTS "Rights"). Subscribers (`s6-svwait`, `s6-svc -w…`)
//! make a FIFO there and read it. Whoever may add entries to `event/` can therefore make root
//! write a byte into any file it names (a symlink), into another service's
//! `supervise/control` (a hard link: a `d` or `x` stops it), or fill the tmpfs (a big file).
//!
//! Invariant (SPEC §9.1): `event/` of the daemon's slots and of their loggers belongs to the
//! daemon's own user and group with exactly s6's mode, [`EVENT_MODE`], so only that user (root in
//! a container) may add entries. This module only *reads*; `apply` closes a directory found
//! otherwise.

use crate::layout::slot::{EVENT_DIR, LOG_DIR};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Mode s6-supervise gives the `event/` it creates; the daemon uses the same, with its own user
/// and group as owner (root:root in a container).
pub const EVENT_MODE: u32 = 0o3730;

/// The `event/` directories of a slot: the service's and its logger's.
pub fn event_dirs(slot: &Path) -> [PathBuf; 2] {
    [slot.join(EVENT_DIR), slot.join(LOG_DIR).join(EVENT_DIR)]
}

/// Is this `event/` in the shape of the invariant? A missing one is (s6-supervise creates it
/// root's when it starts); anything else than a directory owned by `(uid, gid)` with exactly
/// [`EVENT_MODE`] is not, including a directory an older build made with group `hermes`.
pub fn is_closed(event_dir: &Path, uid: u32, gid: u32) -> bool {
    match std::fs::symlink_metadata(event_dir) {
        Ok(m) => m.is_dir() && m.uid() == uid && m.gid() == gid && m.mode() & 0o7777 == EVENT_MODE,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Whether any `event/` of the slot (service or logger) is not closed for the calling process's
/// effective user and group.
pub fn slot_events_open(slot: &Path) -> bool {
    // The process never changes its effective ids: asked once, not twice per slot per re-list.
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let (uid, gid) = *IDS.get_or_init(|| (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()));
    event_dirs(slot).iter().any(|d| !is_closed(d, uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_our_own_event_dir_with_s6s_mode_is_closed() {
        let t = tempfile::tempdir().unwrap();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let ev = t.path().join("event");
        assert!(is_closed(&ev, uid, gid), "missing: s6 makes it itself");
        std::fs::create_dir(&ev).unwrap();
        std::fs::set_permissions(&ev, std::fs::Permissions::from_mode(EVENT_MODE)).unwrap();
        assert!(is_closed(&ev, uid, gid));
        assert!(!is_closed(&ev, uid, gid.wrapping_add(1)), "another group (an older build's hermes)");
        assert!(!is_closed(&ev, uid.wrapping_add(1), gid), "another owner");
        std::fs::set_permissions(&ev, std::fs::Permissions::from_mode(0o3732)).unwrap();
        assert!(!is_closed(&ev, uid, gid), "writable by others");
        std::fs::remove_dir(&ev).unwrap();
        std::os::unix::fs::symlink(t.path(), &ev).unwrap();
        assert!(!is_closed(&ev, uid, gid), "a symlink is never one");
    }
}
