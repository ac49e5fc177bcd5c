//! Writes under `$HERMES_HOME`, which an agent running as `hermes` can write too (SPEC §9).
//!
//! Invariants: every write or unlink goes through directory handles opened with `O_NOFOLLOW`
//! below `$HERMES_HOME`, so a symlink planted by the agent can never redirect it outside; files
//! are opened with `O_NOFOLLOW | O_NONBLOCK` and checked to be regular before a byte is written;
//! files and directories the daemon creates are handed to `$HERMES_RUN_AS` when running as root.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Who owns what the daemon creates under the home: `None` leaves the creator's ownership.
pub type Owner = Option<(Uid, Gid)>;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: is not a regular file; refusing to write it")]
    NotRegular { path: PathBuf },
    #[error("{path}: is outside HERMES_HOME")]
    Outside { path: PathBuf },
}

fn io_err(path: &Path, e: impl Into<std::io::Error>) -> HomeError {
    HomeError::Io { path: path.to_path_buf(), source: e.into() }
}

/// Whether one unlink removed something.
pub type Unlinked = Result<bool, HomeError>;

/// Handle-based writer rooted at `$HERMES_HOME`.
#[derive(Clone, Debug)]
pub struct HomeWriter {
    pub home: PathBuf,
    pub owner: Owner,
}

const DIR_FLAGS: OFlag =
    OFlag::O_DIRECTORY.union(OFlag::O_RDONLY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl HomeWriter {
    pub fn new(home: PathBuf, owner: Owner) -> Self {
        HomeWriter { home, owner }
    }

    /// Opens `$HERMES_HOME` itself. The home path is configuration (trusted), so it may be
    /// reached through symlinks; everything below it is not.
    fn open_home(&self) -> Result<OwnedFd, HomeError> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        openat(nix::fcntl::AT_FDCWD, &self.home, flags, Mode::empty()).map_err(|e| io_err(&self.home, e))
    }

    /// Opens the directory `rel` (relative to the home) one component at a time without
    /// following symlinks; with `create`, missing components are made (and chowned).
    pub fn open_dir(&self, rel: &Path, create: bool) -> Result<OwnedFd, HomeError> {
        let mut fd = self.open_home()?;
        let mut path = self.home.clone();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(HomeError::Outside { path: self.home.join(rel) });
            };
            path.push(name);
            let next = match openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err(&path, e)),
                    }
                    let sub =
                        openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(|e| io_err(&path, e))?;
                    self.chown(&sub, &path)?;
                    sub
                }
                other => other.map_err(|e| io_err(&path, e))?,
            };
            fd = next;
        }
        Ok(fd)
    }

    fn chown(&self, fd: &OwnedFd, path: &Path) -> Result<(), HomeError> {
        if let Some((uid, gid)) = self.owner {
            fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }

    /// The directory of `path` relative to the home (the home itself gives an empty path).
    pub fn relative<'a>(&self, path: &'a Path) -> Result<&'a Path, HomeError> {
        path.strip_prefix(&self.home).map_err(|_| HomeError::Outside { path: path.to_path_buf() })
    }

    /// Appends `text` to `logs/<name>`, first renaming a file of `rotate_at` bytes or more to
    /// `<name>.1` (replacing the previous one). One `write` call, so lines are not interleaved.
    pub fn append_log(&self, name: &str, text: &str, rotate_at: u64) -> Result<(), HomeError> {
        let dir = self.open_dir(Path::new("logs"), true)?;
        let path = self.home.join("logs").join(name);
        if let Ok(st) = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            && st.st_size as u64 >= rotate_at
        {
            let rotated = format!("{name}.1");
            renameat(dir.as_fd(), name, dir.as_fd(), rotated.as_str()).map_err(|e| io_err(&path, e))?;
        }
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| io_err(&path, e))?;
        let st = fstat(fd.as_fd()).map_err(|e| io_err(&path, e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(HomeError::NotRegular { path });
        }
        if let Some((uid, gid)) = self.owner
            && (st.st_uid != uid.as_raw() || st.st_gid != gid.as_raw())
        {
            self.chown(&fd, &path)?;
        }
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes()).map_err(|e| io_err(&path, e))
    }

    /// Replaces `<rel_dir>/<name>` atomically: a new file next to it, then `renameat` over it.
    /// The target name is never opened, so a symlink there is replaced, not followed.
    pub fn write_atomic(&self, rel_dir: &Path, name: &str, content: &[u8]) -> Result<(), HomeError> {
        let dir = self.open_dir(rel_dir, false)?;
        let path = self.home.join(rel_dir).join(name);
        let tmp = format!(".{name}.hermes-reconciler-{}", std::process::id());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        // A stale temp file of ours (a crash mid-write) is in the way of O_EXCL: remove it.
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let fd = openat(dir.as_fd(), tmp.as_str(), flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| io_err(&path, e))?;
        let result = (|| {
            self.chown(&fd, &path)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(content).map_err(|e| io_err(&path, e))?;
            file.sync_data().map_err(|e| io_err(&path, e))?;
            renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name).map_err(|e| io_err(&path, e))
        })();
        if result.is_err() {
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Unlinks `<rel_dir>/<name>` if it exists (a symlink is removed, never followed).
    /// Returns whether something was removed.
    pub fn unlink(&self, rel_dir: &Path, name: &str) -> Result<bool, HomeError> {
        self.unlink_each(rel_dir, &[name])?.pop().map_or(Ok(false), |(_, r)| r)
    }

    /// [`HomeWriter::unlink`] for several names of one directory, opened once. `Err` when the
    /// directory itself cannot be opened (missing, or a symlink: never followed).
    pub fn unlink_each<'n>(
        &self,
        rel_dir: &Path,
        names: &[&'n str],
    ) -> Result<Vec<(&'n str, Unlinked)>, HomeError> {
        let dir = self.open_dir(rel_dir, false)?;
        Ok(names
            .iter()
            .map(|n| {
                let r = match unlinkat(dir.as_fd(), *n, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => Ok(true),
                    Err(Errno::ENOENT) => Ok(false),
                    Err(e) => Err(io_err(&self.home.join(rel_dir).join(n), e)),
                };
                (*n, r)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn writer() -> (tempfile::TempDir, HomeWriter) {
        let t = tempfile::tempdir().unwrap();
        let w = HomeWriter::new(t.path().to_path_buf(), None);
        (t, w)
    }

    #[test]
    fn append_creates_and_rotates() {
        let (t, w) = writer();
        w.append_log("x.log", "a\n", 4).unwrap();
        w.append_log("x.log", "b\n", 4).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "a\nb\n");
        w.append_log("x.log", "c\n", 4).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "c\n");
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log.1")).unwrap(), "a\nb\n");
    }

    #[test]
    fn symlinked_log_dir_or_file_is_refused() {
        let (t, w) = writer();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), t.path().join("logs")).unwrap();
        assert!(w.append_log("x.log", "a\n", 1 << 20).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        std::fs::remove_file(t.path().join("logs")).unwrap();
        std::fs::create_dir(t.path().join("logs")).unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        symlink(&target, t.path().join("logs/x.log")).unwrap();
        assert!(w.append_log("x.log", "a\n", 1 << 20).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn fifo_log_is_refused_without_blocking() {
        let (t, w) = writer();
        std::fs::create_dir(t.path().join("logs")).unwrap();
        nix::unistd::mkfifo(&t.path().join("logs/x.log"), Mode::from_bits_truncate(0o644)).unwrap();
        // O_NONBLOCK on a FIFO with no reader fails with ENXIO instead of blocking.
        assert!(w.append_log("x.log", "a\n", 1 << 20).is_err());
    }

    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_following_it() {
        let (t, w) = writer();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        symlink(&target, t.path().join("ports.json")).unwrap();
        w.write_atomic(Path::new(""), "ports.json", b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(t.path().join("ports.json")).unwrap(), "{}");
    }

    #[test]
    fn unlink_through_a_symlinked_directory_is_refused() {
        let (t, w) = writer();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("gateway.pid"), "1").unwrap();
        std::fs::create_dir(t.path().join("profiles")).unwrap();
        symlink(outside.path(), t.path().join("profiles/evil")).unwrap();
        assert!(w.unlink(Path::new("profiles/evil"), "gateway.pid").is_err());
        assert!(outside.path().join("gateway.pid").exists());
        assert!(w.relative(Path::new("/elsewhere")).is_err());
    }
}
