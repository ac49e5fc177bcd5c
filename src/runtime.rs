//! The daemon's own runtime directory, `HERMES_RECONCILER_RUNTIME_DIR` (SPEC §9.4).
//!
//! It holds one record: the container mode (dashboard, legacy `gateway run`, normal) as first
//! judged in this container boot from root's processes ([`container::detect`]). Every later
//! start of `once` or `run` in the same boot reuses it, so nothing started later (an agent's
//! process whose argv imitates the container's main command, or the main process gone) can
//! change what the container is.
//!
//! Invariants:
//! * the directory is created `0700`, owned by the daemon's user, and trusted only while it is
//!   a real directory (no symlink followed) of that owner that no one else can enter; config
//!   keeps it out of the scandir and the home, which other users can write;
//! * the record is read with the same care as untrusted files: no symlink followed, only a
//!   regular single-link file of the daemon's user that no one else can write, bounded;
//! * the record names the boot it belongs to (the kernel's boot id and the start time of the
//!   namespace's pid 1), so it lives exactly one container boot even where the directory is not
//!   on a tmpfs that a container start empties;
//! * the first judgment wins: it is published with `linkat`, which fails if another start
//!   published one meanwhile, and that one is used instead.

use crate::fsops;
use crate::observe::container::{self, ContainerMode};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Uid, UnlinkatFlags, linkat, unlinkat};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use crate::layout::runtime::MODE_RECORD;

/// Largest record read; a real one is under 100 bytes.
const MAX_RECORD: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}; not trusted")]
    Untrusted { path: PathBuf, why: String },
}

fn io_err(path: &Path, e: impl Into<std::io::Error>) -> RuntimeError {
    RuntimeError::Io { path: path.to_path_buf(), source: e.into() }
}

fn mode_name(mode: ContainerMode) -> &'static str {
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

fn encode(boot: &str, mode: ContainerMode) -> String {
    format!("boot={boot}\nmode={}\n", mode_name(mode))
}

/// `(boot key, mode)` of a record's bytes, `None` if it is not exactly a record.
fn decode(bytes: &[u8]) -> Option<(String, ContainerMode)> {
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

/// Opens the runtime directory (creating it `0700` with `create`), then checks that it is
/// trustworthy: the daemon's user owns it and no one else has any access. `Ok(None)`: it does
/// not exist and `create` is false.
pub(crate) fn open_dir(dir: &Path, create: bool) -> Result<Option<OwnedFd>, RuntimeError> {
    let fd = match openat(AT_FDCWD, dir, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if create => {
            match mkdirat(AT_FDCWD, dir, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(dir, e)),
            }
            openat(AT_FDCWD, dir, DIR_FLAGS, Mode::empty()).map_err(|e| io_err(dir, e))?
        }
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err(dir, e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| io_err(dir, e))?;
    let me = Uid::effective().as_raw();
    if st.st_uid != me {
        let why = format!("owned by uid {}, not {me}", st.st_uid);
        return Err(RuntimeError::Untrusted { path: dir.to_path_buf(), why });
    }
    if st.st_mode & 0o077 != 0 {
        // Ours, but a umask or a hand may have opened it up: close it before trusting it again.
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700)).map_err(|e| io_err(dir, e))?;
        if st.st_mode & 0o022 != 0 {
            // Others could write in it until now: whatever it holds is not trusted.
            for record in [MODE_RECORD, crate::layout::runtime::STATUS_RECORD] {
                let _ = unlinkat(fd.as_fd(), record, UnlinkatFlags::NoRemoveDir);
            }
        }
    }
    Ok(Some(fd))
}

/// Reads the record: `Ok(None)` when there is none, `Err` when it is not a regular single-link
/// file of the daemon's user writable by it alone, or not a record.
fn read_record(dir: &OwnedFd, path: &Path) -> Result<Option<(String, ContainerMode)>, RuntimeError> {
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
    let fd = open_dir(dir, false).ok()??;
    let (boot, mode) = read_record(&fd, &dir.join(MODE_RECORD)).ok()??;
    (boot == boot_key(proc_root)).then_some(mode)
}

/// The container mode for a pass, without writing: the record of this boot, else a judgment
/// from root's processes now (used by `once --dry-run`, and if the record could not be made).
pub fn judged(dir: &Path, proc_root: &Path) -> ContainerMode {
    recorded(dir, proc_root).unwrap_or_else(|| container::detect(proc_root))
}

/// The container mode of this boot, settled once: the record if there is one for this boot,
/// else judged now from root's processes and recorded (the first judgment wins a race). The
/// warning says why nothing could be recorded; the mode is then judged at each start.
pub fn settle(dir: &Path, proc_root: &Path) -> (ContainerMode, Option<String>) {
    match settle_inner(dir, proc_root) {
        Ok(mode) => (mode, None),
        Err(e) => (
            container::detect(proc_root),
            Some(format!("container mode not recorded ({e}); it is judged again at each start")),
        ),
    }
}

fn settle_inner(dir: &Path, proc_root: &Path) -> Result<ContainerMode, RuntimeError> {
    let fd = open_dir(dir, true)?.ok_or_else(|| io_err(dir, Errno::ENOENT))?;
    let path = dir.join(MODE_RECORD);
    let boot = boot_key(proc_root);
    let previous = match read_record(&fd, &path) {
        Ok(Some((b, mode))) if b == boot => return Ok(mode),
        Ok(None) => false,
        // Another boot's record, or one not to be trusted: judged anew and replaced.
        Ok(Some(_)) | Err(RuntimeError::Untrusted { .. }) => true,
        Err(e) => return Err(e),
    };
    let mode = container::detect(proc_root);
    let tmp = write_temp(&fd, &path, encode(&boot, mode).as_bytes())?;
    let published = if previous {
        renameat(fd.as_fd(), tmp.as_str(), fd.as_fd(), MODE_RECORD).map_err(|e| io_err(&path, e))
    } else {
        let linked = linkat(fd.as_fd(), tmp.as_str(), fd.as_fd(), MODE_RECORD, AtFlags::empty());
        let _ = unlinkat(fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        match linked {
            Ok(()) => Ok(()),
            // Another start judged first: its judgment stands.
            Err(Errno::EEXIST) => match read_record(&fd, &path)? {
                Some((b, theirs)) if b == boot => return Ok(theirs),
                _ => return Err(RuntimeError::Untrusted { path, why: "replaced meanwhile".into() }),
            },
            Err(e) => Err(io_err(&path, e)),
        }
    };
    if published.is_err() {
        let _ = unlinkat(fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    published.map(|()| mode)
}

/// Writes `content` to a new `0600` file under a random name in `dir` ([`fsops::create_temp`]);
/// returns the name.
fn write_temp(dir: &OwnedFd, path: &Path, content: &[u8]) -> Result<String, RuntimeError> {
    let (tmp, fd) = fsops::create_temp(dir.as_fd(), MODE_RECORD, 0o600).map_err(|e| io_err(path, e))?;
    if let Err(e) = std::fs::File::from(fd).write_all(content) {
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(io_err(path, e));
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake `/proc` whose pid 10 runs `main-wrapper.sh <main>` as root.
    fn fake_proc(main: &str, start: &str) -> tempfile::TempDir {
        let p = tempfile::tempdir().unwrap();
        let d = p.path().join("10");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cmdline"), format!("sh\0main-wrapper.sh\0{main}\0")).unwrap();
        std::fs::write(d.join("status"), "Uid:\t0\t0\t0\t0\n").unwrap();
        std::fs::create_dir_all(p.path().join("1")).unwrap();
        std::fs::write(
            p.path().join("1/stat"),
            format!("1 (s6 svscan) S 0 1 1 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1 1\n"),
        )
        .unwrap();
        p
    }

    #[test]
    fn first_judgment_is_recorded_and_reused_within_a_boot() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("rt");
        let p = fake_proc("dashboard", "4242");
        assert_eq!(settle(&dir, p.path()), (ContainerMode::Dashboard, None));
        let st = std::fs::metadata(&dir).unwrap();
        assert_eq!(st.permissions().mode() & 0o777, 0o700);
        let rec = std::fs::read_to_string(dir.join(MODE_RECORD)).unwrap();
        assert_eq!(rec, "boot=unknown/4242\nmode=dashboard\n");
        // The main process is gone: the record stands.
        std::fs::remove_dir_all(p.path().join("10")).unwrap();
        assert_eq!(settle(&dir, p.path()).0, ContainerMode::Dashboard);
        assert_eq!(judged(&dir, p.path()), ContainerMode::Dashboard);
        // A new boot (pid 1 started at another time) judges again.
        std::fs::write(p.path().join("1/stat"), "1 (x) S 0 1 1 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 99 1 1\n")
            .unwrap();
        assert_eq!(judged(&dir, p.path()), ContainerMode::Normal);
        assert_eq!(settle(&dir, p.path()).0, ContainerMode::Normal);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "temporary files left");
    }

    #[test]
    fn untrusted_directory_or_record_is_not_believed() {
        let run = tempfile::tempdir().unwrap();
        let p = fake_proc("gateway\0run", "7");
        // A symlinked directory is refused: judged live, with a warning.
        let real = run.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join(MODE_RECORD), "boot=unknown/7\nmode=dashboard\n").unwrap();
        let link = run.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (mode, warning) = settle(&link, p.path());
        assert_eq!(mode, ContainerMode::LegacyGatewayRun);
        assert!(warning.is_some());
        assert_eq!(judged(&link, p.path()), ContainerMode::LegacyGatewayRun);
        // A group-writable directory loses its record; a symlinked record is replaced.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(settle(&real, p.path()), (ContainerMode::LegacyGatewayRun, None));
        assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o700);
        let other = run.path().join("other");
        std::fs::write(&other, "boot=unknown/7\nmode=dashboard\n").unwrap();
        std::fs::remove_file(real.join(MODE_RECORD)).unwrap();
        std::os::unix::fs::symlink(&other, real.join(MODE_RECORD)).unwrap();
        assert_eq!(judged(&real, p.path()), ContainerMode::LegacyGatewayRun);
        assert_eq!(settle(&real, p.path()), (ContainerMode::LegacyGatewayRun, None));
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "boot=unknown/7\nmode=dashboard\n");
    }

    #[test]
    fn record_round_trip_and_garbage() {
        for m in [ContainerMode::Normal, ContainerMode::LegacyGatewayRun, ContainerMode::Dashboard] {
            assert_eq!(decode(encode("a-1/2", m).as_bytes()), Some(("a-1/2".into(), m)));
        }
        for bad in [
            "",
            "boot=x\nmode=dashboard",
            "boot=x\nmode=Dashboard\n",
            "mode=normal\nboot=x\n",
            "boot=\nmode=normal\n",
            "boot=x\nmode=normal\nx\n",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn boot_key_of_the_real_proc() {
        let k = boot_key(Path::new("/proc"));
        assert!(!k.contains("unknown"), "{k}");
        assert_eq!(k, boot_key(Path::new("/proc")));
    }
}
