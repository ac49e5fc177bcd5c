//! Writes under `$HERMES_HOME`, which an agent running as `hermes` can write too (SPEC §9).
//!
//! Invariants: every write or unlink goes through directory handles opened with `O_NOFOLLOW`
//! below `$HERMES_HOME`, so a symlink planted by the agent can never redirect it outside; files
//! are opened with `O_NOFOLLOW | O_NONBLOCK` and checked to be regular before a byte is written;
//! files and directories the daemon creates are handed to `$HERMES_RUN_AS` when running as root.

use crate::fsops::{self, Durability};
use crate::layout::home::LOGS_DIR;
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

/// What [`HomeWriter::append_log`] found at the log's name.
enum Appendable {
    /// A file it may append to, opened, with its size.
    Yes(OwnedFd, u64),
    /// Something it must not write through: replace it.
    Replace,
    /// Nothing there.
    Missing,
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
                    // Only a directory made here is chowned: one that appeared meanwhile is
                    // someone else's, and the daemon never chowns what it did not create.
                    let made = match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => true,
                        Err(Errno::EEXIST) => false,
                        Err(e) => return Err(io_err(&path, e)),
                    };
                    let sub =
                        openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(|e| io_err(&path, e))?;
                    if made {
                        self.chown(&sub, &path)?;
                    }
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
    ///
    /// Invariants (SPEC §9.2): it writes only into a regular file with exactly one link whose
    /// owner is [`HomeWriter::file_owner_uid`] (the user files it creates belong to), checked on
    /// the open descriptor and re-checked to still be the file at `logs/<name>` (so a hard link
    /// to a file elsewhere, swapped in and out around the open, is never written through).
    /// Anything else at that name (a hard link, a symlink, a FIFO, a file of another user) is
    /// replaced by a new file: created under an unpredictable name with `O_EXCL`, then renamed
    /// over. Only files it has just created with `O_EXCL` are chowned. Rotation is a rename in
    /// the directory (never an open of `<name>.1`) and only of a file it would append to.
    pub fn append_log(&self, name: &str, text: &str, rotate_at: u64) -> Result<(), HomeError> {
        let dir = self.open_dir(Path::new(LOGS_DIR), true)?;
        let path = self.home.join(LOGS_DIR).join(name);
        // Every round either writes or meets a race (the name changed under it); the agent
        // cannot win forever against the final replacement, which needs no existing file.
        for _ in 0..3 {
            match self.open_appendable(&dir, name, &path)? {
                Appendable::Yes(fd, size) if size >= rotate_at => {
                    drop(fd);
                    let rotated = format!("{name}.1");
                    if renameat(dir.as_fd(), name, dir.as_fd(), rotated.as_str()).is_err() {
                        // Something that cannot be renamed over (a directory planted at
                        // `<name>.1`) must not stop the log: start it afresh instead.
                        return self.replace_in(&dir, name, &path, text.as_bytes(), Durability::Volatile);
                    }
                }
                Appendable::Yes(fd, _) => {
                    let mut file = std::fs::File::from(fd);
                    return file.write_all(text.as_bytes()).map_err(|e| io_err(&path, e));
                }
                Appendable::Replace => {
                    return self.replace_in(&dir, name, &path, text.as_bytes(), Durability::Volatile);
                }
                Appendable::Missing => {}
            }
            let flags = OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            match openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o644)) {
                Ok(fd) => {
                    self.chown(&fd, &path)?;
                    let mut file = std::fs::File::from(fd);
                    return file.write_all(text.as_bytes()).map_err(|e| io_err(&path, e));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        self.replace_in(&dir, name, &path, text.as_bytes(), Durability::Volatile)
    }

    /// The owner of every file this writer creates, and the only owner of a file it appends to.
    pub fn file_owner_uid(&self) -> u32 {
        self.owner.map_or_else(|| Uid::effective().as_raw(), |(uid, _)| uid.as_raw())
    }

    /// Opens `name` in `dir` for appending if it may be appended to (see
    /// [`HomeWriter::append_log`]). The name is looked at without following a symlink and
    /// without opening anything but a regular file, so a FIFO or device is never opened.
    fn open_appendable(&self, dir: &OwnedFd, name: &str, path: &Path) -> Result<Appendable, HomeError> {
        let before = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Appendable::Missing),
            Err(e) => return Err(io_err(path, e)),
        };
        if !self.may_append(&before) {
            return Ok(Appendable::Replace);
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(dir.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Appendable::Missing),
            // A symlink or a FIFO without reader swapped in since the look: replace it.
            Err(Errno::ELOOP | Errno::ENXIO) => return Ok(Appendable::Replace),
            Err(e) => return Err(io_err(path, e)),
        };
        let st = fstat(fd.as_fd()).map_err(|e| io_err(path, e))?;
        let still = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let same = still.is_some_and(|s| s.st_dev == st.st_dev && s.st_ino == st.st_ino);
        if self.may_append(&st) && same {
            Ok(Appendable::Yes(fd, st.st_size as u64))
        } else {
            Ok(Appendable::Replace)
        }
    }

    fn may_append(&self, st: &nix::sys::stat::FileStat) -> bool {
        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
            && st.st_nlink == 1
            && st.st_uid == self.file_owner_uid()
    }

    /// Replaces `<rel_dir>/<name>` atomically: a new file next to it, then `renameat` over it.
    /// The target name is never opened, so a symlink there is replaced, not followed.
    pub fn write_atomic(&self, rel_dir: &Path, name: &str, content: &[u8]) -> Result<(), HomeError> {
        let dir = self.open_dir(rel_dir, false)?;
        let path = self.home.join(rel_dir).join(name);
        self.replace_in(&dir, name, &path, content, Durability::Synced)
    }

    /// Writes `content` to a new file `.<name>.<random>` in `dir` (see [`fsops::create_temp`]:
    /// nothing planted there is opened, and a planted file or directory cannot block the
    /// write), hands it to the owner, then renames it over `name` ([`fsops::replace_at`]).
    fn replace_in(
        &self,
        dir: &OwnedFd,
        name: &str,
        path: &Path,
        content: &[u8],
        durability: Durability,
    ) -> Result<(), HomeError> {
        fsops::replace_at(dir.as_fd(), name, content, 0o644, durability, |fd| match self.owner {
            Some((uid, gid)) => fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(std::io::Error::from),
            None => Ok(()),
        })
        .map_err(|e| io_err(path, e))
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
        Ok(self.unlink_in(&dir, rel_dir, names))
    }

    /// [`HomeWriter::unlink_each`] opening `rel_dir` relative to its parent's handle kept in
    /// `held` (opened on first use, kept for the next call with the same parent): sweeping every
    /// profile of a pass opens `profiles/` once, then each profile directory with `O_NOFOLLOW`
    /// once. The held handle was opened without following any symlink below the home; if the
    /// agent moves that directory meanwhile, the handle follows it, still on the volume and
    /// never through a symlink.
    pub fn unlink_each_held<'n>(
        &self,
        held: &mut HeldDir,
        rel_dir: &Path,
        names: &[&'n str],
    ) -> Result<Vec<(&'n str, Unlinked)>, HomeError> {
        let (Some(parent), Some(last)) = (rel_dir.parent(), rel_dir.file_name()) else {
            return self.unlink_each(rel_dir, names);
        };
        if held.fd.is_none() || held.rel != parent {
            held.fd = Some(self.open_dir(parent, false)?);
            held.rel = parent.to_path_buf();
        }
        let parent_fd = held.fd.as_ref().expect("held above");
        let dir = openat(parent_fd.as_fd(), last, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(&self.home.join(rel_dir), e))?;
        Ok(self.unlink_in(&dir, rel_dir, names))
    }

    fn unlink_in<'n>(&self, dir: &OwnedFd, rel_dir: &Path, names: &[&'n str]) -> Vec<(&'n str, Unlinked)> {
        names
            .iter()
            .map(|n| {
                let r = match unlinkat(dir.as_fd(), *n, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => Ok(true),
                    Err(Errno::ENOENT) => Ok(false),
                    Err(e) => Err(io_err(&self.home.join(rel_dir).join(n), e)),
                };
                (*n, r)
            })
            .collect()
    }
}

/// A directory handle kept across [`HomeWriter::unlink_each_held`] calls of one pass.
#[derive(Debug, Default)]
pub struct HeldDir {
    rel: PathBuf,
    fd: Option<OwnedFd>,
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
    fn symlinked_log_dir_is_refused_and_a_symlinked_log_is_replaced() {
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
        w.append_log("x.log", "a\n", 1 << 20).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let md = std::fs::symlink_metadata(t.path().join("logs/x.log")).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "a\n");
    }

    #[test]
    fn hard_linked_log_is_replaced_not_written_through_nor_rotated() {
        let (t, w) = writer();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::fs::create_dir(t.path().join("logs")).unwrap();
        std::fs::hard_link(&target, t.path().join("logs/x.log")).unwrap();
        // Rotation threshold below the victim's size: it must not matter.
        w.append_log("x.log", "a\n", 2).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "a\n");
        assert!(!t.path().join("logs/x.log.1").exists());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&target).unwrap().nlink(), 1);
        // Only the log and nothing left over from the replacement.
        assert_eq!(std::fs::read_dir(t.path().join("logs")).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_at_the_rotated_name_does_not_stop_the_log() {
        let (t, w) = writer();
        std::fs::create_dir_all(t.path().join("logs/x.log.1/sub")).unwrap();
        w.append_log("x.log", "a\n", 2).unwrap();
        w.append_log("x.log", "b\n", 2).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "b\n");
    }

    #[test]
    fn fifo_log_is_replaced_without_blocking() {
        let (t, w) = writer();
        std::fs::create_dir(t.path().join("logs")).unwrap();
        nix::unistd::mkfifo(&t.path().join("logs/x.log"), Mode::from_bits_truncate(0o644)).unwrap();
        w.append_log("x.log", "a\n", 1 << 20).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("logs/x.log")).unwrap(), "a\n");
    }

    #[test]
    fn planted_temporary_names_do_not_block_an_atomic_write() {
        let (t, w) = writer();
        for n in [
            ".ports.json.hermes-reconciler-1",
            &format!(".ports.json.hermes-reconciler-{}", std::process::id()),
        ] {
            std::fs::create_dir(t.path().join(n)).unwrap();
        }
        w.write_atomic(Path::new(""), "ports.json", b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("ports.json")).unwrap(), "{}");
        let a = crate::fsops::random_suffix().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, crate::fsops::random_suffix().unwrap());
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
