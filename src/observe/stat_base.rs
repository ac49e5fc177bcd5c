//! Identity checks by short paths (issue 15): a full re-list stats every profile and slot file
//! to see whether its cached parse still holds, and most of a `stat`'s cost is the kernel
//! walking the absolute path one component at a time. A [`StatBase`] holds a directory open
//! (`O_PATH`: nothing readable, and no inotify event for the watches on it) for one pass, so
//! each file under it is looked up by its path relative to it: one to three components
//! instead of six or more.
//!
//! Only identities come through here, never contents: a file is *read* only by its absolute
//! path through [`super::safe_read`] (bounded, `O_NOFOLLOW`, regular files only), and a parse
//! is kept only when the identity seen before the read matches the identity of the file read.
//!
//! Why a stat through the base is as safe as the absolute `lstat` it replaces: it follows
//! the same intermediate components (the base directory included, opened as the absolute path
//! would resolve it) and not the last one. If the volume's user swaps an intermediate
//! component for a symlink (or the base directory for another), the stat reaches another
//! file, whose identity (device, inode, size, mtime, ctime) differs from the cached one: the
//! cache then misses and the file goes through the secure read path above. At worst it reaches
//! a file that is unchanged since it was read safely, and returns that file's parse: never
//! content read through a symlink.

pub use super::identity::FileKey;
pub(crate) use super::identity::Stat;
use super::identity::of;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, fstatat};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

impl FileKey {
    /// The identity of whatever is at `path` (`lstat`: a symlink's own).
    pub(crate) fn of(path: &Path) -> Option<FileKey> {
        StatBase::lstat(None, path).ok().map(|s| s.key)
    }
}

/// A directory held open for stats relative to it.
#[derive(Debug)]
pub struct StatBase {
    prefix: PathBuf,
    fd: OwnedFd,
}

impl std::os::fd::AsFd for StatBase {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl StatBase {
    /// Opens `dir` (`None`: it cannot be opened; callers then stat absolute paths).
    pub fn open(dir: &Path) -> Option<StatBase> {
        let fd = open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        Some(StatBase { prefix: dir.to_path_buf(), fd })
    }

    /// The directory's absolute path, as opened.
    pub fn path(&self) -> &Path {
        &self.prefix
    }

    /// `lstat` of the absolute `path`: relative to `base` when `path` is under it.
    pub(crate) fn lstat(base: Option<&StatBase>, path: &Path) -> std::io::Result<Stat> {
        Self::stat_at(base, path, false)
    }

    /// `stat` (the last component followed too) of the absolute `path`, relative to `base`
    /// when under it.
    pub(crate) fn stat(base: Option<&StatBase>, path: &Path) -> std::io::Result<Stat> {
        Self::stat_at(base, path, true)
    }

    /// `stat` (symlinks followed) of the entry `name` of this directory, with no path built.
    pub(crate) fn stat_entry(&self, name: &str) -> std::io::Result<Stat> {
        debug_assert!(!name.is_empty() && !name.contains('/'));
        let seen = Self::stat_relative(Some(self), Path::new(name), true);
        super::tape::stat(Some(&self.prefix), Path::new(name), true, &seen);
        seen
    }

    /// The identity of the file `fd` is open on (recorded on a tape as such: the descriptor
    /// must stay the caller's, unchanged, while a tape recorded now may be replayed).
    pub(crate) fn fstat(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Stat> {
        let seen = nix::sys::stat::fstat(fd).map(|st| of(&st)).map_err(std::io::Error::from);
        super::tape::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &seen);
        seen
    }

    fn stat_at(base: Option<&StatBase>, path: &Path, follow: bool) -> std::io::Result<Stat> {
        // Relative to the base when under it; recorded as asked ([`super::tape`]).
        let (base, path) = match base.and_then(|b| Some((b, under(&b.prefix, path)?))) {
            Some((b, rel)) if !rel.as_os_str().is_empty() => (Some(b), rel),
            _ => (None, path),
        };
        let seen = Self::stat_relative(base, path, follow);
        super::tape::stat(base.map(|b| b.prefix.as_path()), path, follow, &seen);
        seen
    }

    /// The lookup itself, not recorded: `path` relative to `base` (absolute without one).
    pub(crate) fn stat_relative(base: Option<&StatBase>, path: &Path, follow: bool) -> std::io::Result<Stat> {
        use nix::fcntl::AtFlags;
        let flags = if follow { AtFlags::empty() } else { AtFlags::AT_SYMLINK_NOFOLLOW };
        let st = match base {
            Some(b) => fstatat(&b.fd, path, flags),
            None if follow => nix::sys::stat::stat(path),
            None => nix::sys::stat::lstat(path),
        };
        Ok(of(&st.map_err(std::io::Error::from)?))
    }
}

/// `path` relative to `prefix` when it lies under it, compared as bytes: the paths here are
/// built by joining names onto the prefix, and `Path::strip_prefix`, which compares component
/// by component, was a tenth of a re-list's work. A path spelled otherwise (`.` or `..`
/// components) is not under: it is then stat'ed by its absolute path, which is only slower.
pub(crate) fn under<'p>(prefix: &Path, path: &'p Path) -> Option<&'p Path> {
    use std::os::unix::ffi::OsStrExt;
    let rest = path.as_os_str().as_bytes().strip_prefix(prefix.as_os_str().as_bytes())?;
    let rest = match rest.first() {
        Some(b'/') => rest,
        _ if prefix.as_os_str().as_bytes().ends_with(b"/") => rest,
        _ => return None,
    };
    let rel = &rest[rest.iter().take_while(|&&b| b == b'/').count()..];
    let plain = rel.split(|&b| b == b'/').all(|seg| seg != b"." && seg != b"..");
    plain.then(|| Path::new(std::ffi::OsStr::from_bytes(rel)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn under_takes_only_paths_below_the_prefix_spelled_plainly() {
        use super::under;
        use std::path::Path;
        let p = Path::new("/opt/data/profiles");
        assert_eq!(under(p, Path::new("/opt/data/profiles/a/SOUL.md")), Some(Path::new("a/SOUL.md")));
        assert_eq!(under(p, Path::new("/opt/data/profiles//a")), Some(Path::new("a")));
        assert_eq!(under(Path::new("/opt/"), Path::new("/opt/a")), Some(Path::new("a")));
        assert_eq!(under(p, Path::new("/opt/data/profiles")), None, "the base itself: by its path");
        assert_eq!(under(p, Path::new("/opt/data/profilesX/a")), None);
        assert_eq!(under(p, Path::new("/opt/data/profiles/../etc/passwd")), None);
        assert_eq!(under(p, Path::new("/opt/data/profiles/a/./b")), None);
        assert_eq!(under(p, Path::new("/opt/data")), None);
    }

    use super::*;

    #[test]
    fn relative_and_absolute_stats_agree_and_the_last_component_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("p")).unwrap();
        std::fs::write(d.join("p/f"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("p/f"), d.join("p/l")).unwrap();
        let base = StatBase::open(&d).unwrap();
        for f in ["p/f", "p/l", "p"] {
            assert_eq!(
                StatBase::lstat(Some(&base), &d.join(f)).unwrap(),
                StatBase::lstat(None, &d.join(f)).unwrap(),
                "{f}"
            );
            assert_eq!(
                StatBase::stat(Some(&base), &d.join(f)).unwrap(),
                StatBase::stat(None, &d.join(f)).unwrap(),
                "{f}"
            );
        }
        assert!(StatBase::stat(Some(&base), &d.join("p/l")).unwrap().regular, "stat follows the last one");
        assert!(StatBase::stat(Some(&base), &d.join("p")).unwrap().dir);
        assert!(StatBase::lstat(Some(&base), &d.join("p/f")).unwrap().regular);
        assert!(!StatBase::lstat(Some(&base), &d.join("p/l")).unwrap().regular, "a symlink is not followed");
        let missing = StatBase::lstat(Some(&base), &d.join("p/none")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        // Outside the base: the absolute path.
        assert!(StatBase::lstat(Some(&base), t.path()).is_ok());
    }

    #[test]
    fn a_component_swapped_for_a_symlink_shows_another_identity() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("p")).unwrap();
        std::fs::write(d.join("p/f"), "x").unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("f"), "x").unwrap();
        let base = StatBase::open(&d).unwrap();
        let before = StatBase::lstat(Some(&base), &d.join("p/f")).unwrap();
        std::fs::rename(d.join("p"), t.path().join("old")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join("p")).unwrap();
        let after = StatBase::lstat(Some(&base), &d.join("p/f")).unwrap();
        assert_ne!(before.key, after.key);
    }
}
