//! Reads the container-mode record in the daemon's runtime directory,
//! `HERMES_RECONCILER_RUNTIME_DIR` (SPEC §9.4); `apply::runtime_record` creates the
//! directory and writes the record.
//!
//! The record holds the container mode (dashboard, legacy `gateway run`, normal) as first
//! judged in this container boot from root's processes ([`container::detect`]). Every later
//! start of `once` or `run` in the same boot reuses it, so nothing started later (an agent's
//! process whose argv imitates the container's main command, or the main process gone) can
//! change what the container is.
//!
//! Invariants (this half only reads: it never creates, fixes or removes anything):
//! * the directory is trusted only while it is a real directory (no symlink followed) owned by
//!   the daemon's user that no one else can enter; one that is too open is simply not trusted
//!   here (the writer closes it and drops what it held);
//! * the record is read with the same care as untrusted files: no symlink followed, only a
//!   regular single-link file of the daemon's user that no one else can write, bounded;
//! * the record names the boot it belongs to (the kernel's boot id and the start time of the
//!   namespace's pid 1), so it lives exactly one container boot even where the directory is not
//!   on a tmpfs that a container start empties.

use crate::observe::container::{self, ContainerMode};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::Uid;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use crate::layout::runtime::MODE_RECORD;

/// Largest record read; a real one is under 100 bytes.
const MAX_RECORD: u64 = 512;

/// Why the runtime directory or a record in it could not be used; shared by the reader here
/// and the writers in `apply`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}; not trusted")]
    Untrusted { path: PathBuf, why: String },
}

pub(crate) fn io_err(path: &Path, e: impl Into<std::io::Error>) -> RuntimeError {
    RuntimeError::Io { path: path.to_path_buf(), source: e.into() }
}

pub(crate) fn mode_name(mode: ContainerMode) -> &'static str {
    match mode {
        ContainerMode::Normal => "normal",
        ContainerMode::LegacyGatewayRun => "legacy-gateway-run",
        ContainerMode::Dashboard => "dashboard",
    }
}

fn mode_of(name: &str) -> Option<ContainerMode> {
    [ContainerMode::Normal, ContainerMode::LegacyGatewayRun, ContainerMode::Dashboard]
        .into_iter()
        .find(|m| mode_name(*m) == name)
}

/// Identifies this container boot: `<kernel boot id>/<start time of pid 1 in clock ticks>`, as
/// `<proc_root>` shows them (`unknown` for a part that cannot be read). Only hex digits, `-`,
/// digits and `/`, at most 80 bytes.
pub fn boot_key(proc_root: &Path) -> String {
    let small = |p: PathBuf| -> Option<String> {
        let mut s = String::new();
        std::fs::File::open(p).ok()?.take(1024).read_to_string(&mut s).ok()?;
        Some(s)
    };
    let boot_id = small(proc_root.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .filter(|s| (1..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .unwrap_or_else(|| "unknown".into());
    // Field 22 of stat; the command name (field 2) may hold spaces and ')', so count from the
    // last ')'.
    let start = small(proc_root.join("1/stat"))
        .and_then(|s| {
            s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19).map(String::from))
        })
        .filter(|s| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "unknown".into());
    format!("{boot_id}/{start}")
}

/// `(boot key, mode)` of a record's bytes, `None` if it is not exactly a record.
pub(crate) fn decode(bytes: &[u8]) -> Option<(String, ContainerMode)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.strip_suffix('\n')?.split('\n');
    let boot = lines.next()?.strip_prefix("boot=")?;
    let mode = mode_of(lines.next()?.strip_prefix("mode=")?)?;
    if lines.next().is_some() || boot.is_empty() || boot.len() > 80 {
        return None;
    }
    Some((boot.to_string(), mode))
}

const DIR_FLAGS: OFlag =
    OFlag::O_DIRECTORY.union(OFlag::O_RDONLY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Opens the runtime directory without following a symlink and checks that the daemon's user
/// owns it; returns it with its permission bits. `Ok(None)`: it does not exist. Does not judge
/// the permission bits: that is the caller's (refused by [`open_dir`], closed by the writer).
pub(crate) fn open_owned(dir: &Path) -> Result<Option<(OwnedFd, u32)>, RuntimeError> {
    let fd = match openat(AT_FDCWD, dir, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err(dir, e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| io_err(dir, e))?;
    let me = Uid::effective().as_raw();
    if st.st_uid != me {
        let why = format!("owned by uid {}, not {me}", st.st_uid);
        return Err(RuntimeError::Untrusted { path: dir.to_path_buf(), why });
    }
    Ok(Some((fd, st.st_mode & 0o7777)))
}

/// Opens the runtime directory to read, trusted only while the daemon's user owns it and no one
/// else has any access. `Ok(None)`: it does not exist. Writes nothing: a directory open to
/// others is refused here, not fixed.
pub(crate) fn open_dir(dir: &Path) -> Result<Option<OwnedFd>, RuntimeError> {
    let Some((fd, mode)) = open_owned(dir)? else { return Ok(None) };
    if mode & 0o077 != 0 {
        let why = format!("mode {mode:o}: others have access");
        return Err(RuntimeError::Untrusted { path: dir.to_path_buf(), why });
    }
    Ok(Some(fd))
}

/// Reads the record: `Ok(None)` when there is none, `Err` when it is not a regular single-link
/// file of the daemon's user writable by it alone, or not a record.
pub(crate) fn read_record(
    dir: &OwnedFd,
    path: &Path,
) -> Result<Option<(String, ContainerMode)>, RuntimeError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(dir.as_fd(), MODE_RECORD, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(RuntimeError::Untrusted { path: path.to_path_buf(), why: "a symlink".into() });
        }
        Err(e) => return Err(io_err(path, e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| io_err(path, e))?;
    let untrusted = |why: &str| RuntimeError::Untrusted { path: path.to_path_buf(), why: why.to_string() };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(untrusted("not a regular file"));
    }
    if st.st_uid != Uid::effective().as_raw() || st.st_nlink != 1 || st.st_mode & 0o022 != 0 {
        return Err(untrusted("not a single-link file of the daemon's user writable by it alone"));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(MAX_RECORD + 1).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(untrusted("too large"));
    }
    decode(&bytes).map(Some).ok_or_else(|| untrusted("not a container-mode record"))
}

/// The container mode recorded for this boot, if a trustworthy record is there. Reads only.
pub fn recorded(dir: &Path, proc_root: &Path) -> Option<ContainerMode> {
    let fd = open_dir(dir).ok()??;
    let (boot, mode) = read_record(&fd, &dir.join(MODE_RECORD)).ok()??;
    (boot == boot_key(proc_root)).then_some(mode)
}

/// The container mode for a pass, without writing: the record of this boot, else a judgment
/// from root's processes now (used by `once --dry-run`, and if the record could not be made).
pub fn judged(dir: &Path, proc_root: &Path) -> ContainerMode {
    recorded(dir, proc_root).unwrap_or_else(|| container::detect(proc_root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn boot_key_of_the_real_proc() {
        let k = boot_key(Path::new("/proc"));
        assert!(!k.contains("unknown"), "{k}");
        assert_eq!(k, boot_key(Path::new("/proc")));
    }

    #[test]
    fn an_open_directory_is_not_trusted_and_left_as_it_is() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("rt");
        std::fs::create_dir(&dir).unwrap();
        let rec = format!("boot={}\nmode=dashboard\n", boot_key(Path::new("/proc")));
        std::fs::write(dir.join(MODE_RECORD), &rec).unwrap();
        std::fs::set_permissions(dir.join(MODE_RECORD), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(recorded(&dir, Path::new("/proc")), Some(ContainerMode::Dashboard));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(recorded(&dir, Path::new("/proc")), None);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o777);
        assert_eq!(std::fs::read_to_string(dir.join(MODE_RECORD)).unwrap(), rec);
    }
}
