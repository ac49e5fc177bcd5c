//! What identifies a file without reading it, and when that identity is too recent to trust.
//!
//! Plain data, shared by the lookups ([`super::stat_base`]), the caches kept by identity
//! ([`super::profile_files`]) and the tapes of what an observation read ([`super::tape`]).

use nix::sys::stat::{FileStat, SFlag};
use std::time::SystemTime;

/// A file changed this recently (seconds) is re-read by the next pass: its times cannot tell
/// a change made later in the same clock tick apart.
pub const RACY_SECS: i64 = 2;

/// What identifies a file's content without reading it: if none of these changed, neither
/// did the content (every write updates mtime and ctime; a replacement is a new inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// What a stat says: the file's identity and whether it is a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) key: FileKey,
    pub(crate) regular: bool,
    pub(crate) dir: bool,
    pub(crate) symlink: bool,
}

/// The identity and type a `stat` gave.
pub(crate) fn of(st: &FileStat) -> Stat {
    Stat {
        key: FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        },
        regular: SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG,
        dir: SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
        symlink: SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK,
    }
}

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Is `key`'s last change within `racy_secs` of now (too recent for its times to tell a
/// change made in the same clock tick apart)?
pub(crate) fn is_racy(key: &FileKey, racy_secs: i64) -> bool {
    key.mtime.0.max(key.ctime.0) >= now_secs().saturating_sub(racy_secs)
}
