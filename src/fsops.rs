//! The filesystem operations every writer shares, written once (issue 11 item 5): an
//! unpredictable temporary name, an atomic replacement, and a rename that never replaces.
//! No policy lives here (who may own what, which directory is trusted): callers decide that and
//! pass an open directory. Used by [`crate::apply`] (the runtime directory's records among them).

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// The file-mode creation mask the commands set at start ([`set_process_umask`]). Every file and
/// directory the daemon makes is created with an explicit mode, none of which has the write bit
/// for others; this mask clears only that bit, so each of those modes is what the kernel gives,
/// with no `chmod` after (`supervise/control` 0660 included, which the common 022 would make
/// 0640). It is also the safety net of anything created without a mode (never world-writable).
pub const PROCESS_UMASK: u32 = 0o002;

static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the process's umask to [`PROCESS_UMASK`]. Called once, first thing, by the executable
/// (before any thread exists), so no file is ever created under another mask.
pub fn set_process_umask() {
    nix::sys::stat::umask(Mode::from_bits_truncate(PROCESS_UMASK));
    let _ = UMASK.set(PROCESS_UMASK);
}

/// The process's file-mode creation mask: [`PROCESS_UMASK`] once [`set_process_umask`] ran,
/// else (a library user, the unit tests) read once from the kernel.
pub fn umask() -> u32 {
    *UMASK.get_or_init(|| {
        // Linux says it in /proc/self/status; elsewhere reading the mask means setting it: the
        // strictest one stands for the instant between the two calls, so a file another thread
        // creates meanwhile is never more open.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let listed = status.lines().find_map(|l| l.strip_prefix("Umask:"));
        if let Some(mask) = listed.and_then(|m| u32::from_str_radix(m.trim(), 8).ok()) {
            return mask;
        }
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o777));
        nix::sys::stat::umask(old);
        old.bits()
    })
}

/// How many new random temporary names are tried after the first one is taken.
const TEMP_ATTEMPTS: usize = 8;

/// 16 hex digits from the kernel's random source (`getrandom(2)`): a temporary name no other
/// user can predict, so it can only be taken by chance (then a new one is drawn).
pub fn random_suffix() -> std::io::Result<String> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which lives
        // across the call; getrandom writes at most that many bytes.
        let n = unsafe { nix::libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(format!("{:016x}", u64::from_ne_bytes(buf)))
}

/// Creates a new file `.<name>.<random>` in `dir` with `O_EXCL | O_NOFOLLOW` (nothing planted
/// there is opened; a new random name on `EEXIST`, up to 8 more times). The mode given is
/// masked by the umask, as any `open`. Returns the temporary name and the open file.
pub fn create_temp(dir: BorrowedFd<'_>, name: &str, mode: u32) -> std::io::Result<(String, OwnedFd)> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut attempt = 0;
    loop {
        let tmp = format!(".{name}.{}", random_suffix()?);
        match openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(mode)) {
            Ok(fd) => return Ok((tmp, fd)),
            Err(Errno::EEXIST) if attempt < TEMP_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a replacement must reach the disk before it is visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` the new content before the rename: after a crash the name holds either the
    /// old or the new content, never an empty file. For records on the volume that outlive the
    /// container (port assignments, the legacy migration record).
    Synced,
    /// No sync: for files on a tmpfs or rebuilt at every start (slot files, the status record).
    Volatile,
}

/// Replaces `dir/name` atomically with `content`: a new temporary file ([`create_temp`]),
/// `prepare` run on it (e.g. `fchown`, `fchmod`), the content written, synced per
/// `durability`, then renamed over `name`. The target name is never opened, so a symlink or
/// anything else there is replaced, not followed. On failure the temporary file is removed.
pub fn replace_at(
    dir: BorrowedFd<'_>,
    name: &str,
    content: &[u8],
    mode: u32,
    durability: Durability,
    prepare: impl FnOnce(&OwnedFd) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (tmp, fd) = create_temp(dir, name, mode)?;
    let result = (|| {
        prepare(&fd)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content)?;
        if durability == Durability::Synced {
            file.sync_data()?;
        }
        renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from)
    })();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// [`replace_at`] by path, in a directory the caller trusts (the parent is opened normally; only
/// the last component is never followed), with exactly `mode` (not masked by the umask).
pub fn replace(path: &Path, content: &[u8], mode: u32, durability: Durability) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: no UTF-8 file name", path.display()),
        )
    })?;
    let dir =
        openat(AT_FDCWD, parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    replace_at(dir.as_fd(), name, content, mode, durability, |fd| {
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(std::io::Error::from)
    })
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`): `EEXIST` then,
/// and nothing moves. What publishes, hides and re-publishes slots, so that a name taken
/// meanwhile (by another daemon or a planted entry) is never replaced.
pub fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn random_suffixes_differ() {
        let a = random_suffix().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_suffix().unwrap());
    }

    #[test]
    fn replace_puts_new_content_over_a_symlink_without_following_it() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let f = t.path().join("f");
        std::os::unix::fs::symlink(&target, &f).unwrap();
        replace(&f, b"new", 0o640, Durability::Synced).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::symlink_metadata(&f).unwrap().permissions().mode() & 0o7777, 0o640);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2);
    }

    #[test]
    fn rename_noreplace_refuses_a_taken_name() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        assert_eq!(rename_noreplace(&a, &b), Err(Errno::EEXIST));
        assert!(a.is_dir());
        std::fs::remove_dir(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(b.is_dir() && !a.exists());
    }
}
