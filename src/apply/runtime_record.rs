//! Creates the daemon's runtime directory, `HERMES_RECONCILER_RUNTIME_DIR` (SPEC §9.4), and
//! writes its container-mode record; [`crate::observe::runtime_record`] reads it (what the record
//! means and how a read trusts it are described there).
//!
//! Invariants:
//! * the directory is created `0700`, owned by the daemon's user; config keeps it out of the
//!   scandir and the home, which other users can write. One of ours that a umask or a hand
//!   opened up is closed again before use, and if others could write in it, the records it
//!   holds are dropped: nothing in it is trusted;
//! * the first judgment wins: it is published with `linkat`, which fails if another start
//!   published one meanwhile, and that one is used instead.

use crate::fsops;
use crate::observe::container::{self, ContainerMode};
use crate::observe::runtime_record::{
    MODE_RECORD, RuntimeError, boot_key, io_err, mode_name, open_owned, read_record,
};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, renameat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

fn encode(boot: &str, mode: ContainerMode) -> String {
    format!("boot={boot}\nmode={}\n", mode_name(mode))
}

/// Opens the runtime directory, creating it `0700` if it is missing, and makes it trustworthy:
/// the daemon's user must own it (else `Untrusted`), and no one else keeps any access.
pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd, RuntimeError> {
    let (fd, mode) = match open_owned(dir)? {
        Some(found) => found,
        None => {
            match mkdirat(AT_FDCWD, dir, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(dir, e)),
            }
            open_owned(dir)?.ok_or_else(|| io_err(dir, Errno::ENOENT))?
        }
    };
    if mode & 0o077 != 0 {
        // Ours, but a umask or a hand may have opened it up: close it before trusting it again.
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700)).map_err(|e| io_err(dir, e))?;
        if mode & 0o022 != 0 {
            // Others could write in it until now: whatever it holds is not trusted.
            for record in [MODE_RECORD, crate::layout::runtime::STATUS_RECORD] {
                let _ = unlinkat(fd.as_fd(), record, UnlinkatFlags::NoRemoveDir);
            }
        }
    }
    Ok(fd)
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
    let fd = open_dir(dir)?;
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
    use crate::observe::runtime_record::{decode, judged};
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
}
