//! Slot directories in the scandir (SPEC §7): creating, updating in place, commanding.
//!
//! The scandir is root's tmpfs, not writable by `hermes`, so plain paths are safe here.
//! Invariants:
//! - a slot appears in the scan only complete: it is built under its dot-prefixed staging name
//!   (ignored by s6-svscan) and published with one `rename` that refuses to replace anything;
//! - a live slot directory is never replaced (s6 identifies services by inode): existing slots
//!   are changed file by file, each file replaced atomically;
//! - `supervise/`, `supervise/control` and `event/` exist with the group rights of SPEC §9 before
//!   s6-supervise first starts, because it keeps whatever it finds.

use crate::model::{ProfileName, SlotRecord};
use crate::observe::scandir::RECORD_FILE;
use crate::plan::render::SlotFile;
use crate::s6::{self, ControlError, SupervisorCommand};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, mkfifo};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists; a live slot is never replaced")]
    Exists(PathBuf),
    #[error(transparent)]
    Control(#[from] ControlError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io { path: path.to_path_buf(), source }
}

/// Writes slots into one scandir.
#[derive(Clone, Debug)]
pub struct SlotWriter {
    pub scandir: PathBuf,
    /// Group given control of the slots (`$HERMES_RUN_AS`'s group); `None`: leave ownership.
    pub group: Option<Gid>,
}

/// Creates `path` (which must not exist) with exactly `mode` and `content`. Used inside a
/// staging directory, which nothing else sees, so no temp file is needed.
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), SlotError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))?;
    f.write_all(content).map_err(io(path))?;
    // The mode given to open is masked by the umask; scripts must be exactly what we say.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Replaces `path` atomically: a sibling temp file, then rename over it.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), SlotError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.hermes-reconciler.tmp"));
    let created = match write_new(&tmp, content, mode) {
        // A temp file left by an interrupted write: replace it.
        Err(SlotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(io(&tmp))?;
            write_new(&tmp, content, mode)
        }
        other => other,
    };
    created.and_then(|()| fs::rename(&tmp, path).map_err(io(path)))
}

fn record_bytes(record: &SlotRecord) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(record).expect("a record always serialises");
    v.push(b'\n');
    v
}

impl SlotWriter {
    pub fn slot_dir(&self, name: &ProfileName) -> PathBuf {
        self.scandir.join(name.slot_name())
    }

    fn mkdir(&self, path: &Path, mode: u32, group: bool) -> Result<(), SlotError> {
        fs::create_dir(path).map_err(io(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
        if group {
            self.give_group(path)?;
        }
        Ok(())
    }

    fn give_group(&self, path: &Path) -> Result<(), SlotError> {
        if let Some(gid) = self.group {
            chown(path, None, Some(gid.as_raw())).map_err(io(path))?;
        }
        Ok(())
    }

    /// Builds the slot under its staging name and publishes it. Does not ask s6 to rescan:
    /// the caller batches that.
    pub fn create(
        &self,
        name: &ProfileName,
        files: &[SlotFile],
        up: bool,
        record: &SlotRecord,
    ) -> Result<(), SlotError> {
        let staging = self.scandir.join(name.staging_name());
        let target = self.slot_dir(name);
        // A leftover staging directory was never scanned (dot name): nothing runs in it.
        if fs::symlink_metadata(&staging).is_ok() {
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        let built = self.build(&staging, files, up, record);
        let published = built.and_then(|()| {
            renameat2(AT_FDCWD, &staging, AT_FDCWD, &target, RenameFlags::RENAME_NOREPLACE).map_err(|e| {
                if e == nix::errno::Errno::EEXIST {
                    SlotError::Exists(target.clone())
                } else {
                    io(&target)(e.into())
                }
            })
        });
        if published.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        published
    }

    fn build(&self, dir: &Path, files: &[SlotFile], up: bool, record: &SlotRecord) -> Result<(), SlotError> {
        self.mkdir(dir, 0o755, false)?;
        self.mkdir(&dir.join("log"), 0o755, false)?;
        self.mkdir(&dir.join("data"), 0o755, false)?;
        for f in files {
            write_new(&dir.join(f.rel), f.content.as_bytes(), f.mode)?;
        }
        write_new(&dir.join(RECORD_FILE), &record_bytes(record), 0o644)?;
        if !up {
            write_new(&dir.join("down"), b"", 0o644)?;
        }
        let supervise = dir.join("supervise");
        self.mkdir(&supervise, 0o710, true)?;
        let control = supervise.join("control");
        mkfifo(&control, Mode::from_bits_truncate(0o660)).map_err(|e| io(&control)(e.into()))?;
        fs::set_permissions(&control, fs::Permissions::from_mode(0o660)).map_err(io(&control))?;
        self.give_group(&control)?;
        self.mkdir(&dir.join("event"), 0o3730, true)?;
        Ok(())
    }

    /// Replaces the given files of a live slot, each atomically.
    pub fn write_files(&self, name: &ProfileName, files: &[SlotFile]) -> Result<(), SlotError> {
        let dir = self.slot_dir(name);
        for f in files {
            let path = dir.join(f.rel);
            if let Some(parent) = path.parent()
                && !parent.is_dir()
            {
                self.mkdir(parent, 0o755, false)?;
            }
            write_file(&path, f.content.as_bytes(), f.mode)?;
        }
        Ok(())
    }

    pub fn write_record(&self, name: &ProfileName, record: &SlotRecord) -> Result<(), SlotError> {
        let dir = self.slot_dir(name);
        let data = dir.join("data");
        if !data.is_dir() {
            self.mkdir(&data, 0o755, false)?;
        }
        write_file(&dir.join(RECORD_FILE), &record_bytes(record), 0o644)
    }

    /// Wants the slot up or down. With a supervisor, `U`/`D` set the live flag and `./down`
    /// together; without one (s6-svscan not running yet) `./down` alone is what the next
    /// supervisor will read.
    pub fn command(&self, name: &ProfileName, up: bool) -> Result<(), SlotError> {
        let dir = self.slot_dir(name);
        let cmd = if up { SupervisorCommand::UpPersist } else { SupervisorCommand::DownPersist };
        match s6::send_command(&dir, cmd) {
            Ok(()) => Ok(()),
            Err(ControlError::NoSupervisor(_)) => {
                let down = dir.join("down");
                if up {
                    match fs::remove_file(&down) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&down)(e)),
                        _ => Ok(()),
                    }
                } else {
                    write_file(&down, b"", 0o644)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes one of the daemon's own hidden leftovers, unless a supervisor still runs in it
    /// (an interrupted removal): that one is left for a later pass. Returns whether it went.
    pub fn clear_hidden(&self, entry: &str) -> Result<bool, SlotError> {
        let dir = self.scandir.join(entry);
        for d in [dir.clone(), dir.join("log")] {
            if s6::supervisor_pid(&d)?.is_some() {
                return Ok(false);
            }
        }
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
        Ok(true)
    }
}
