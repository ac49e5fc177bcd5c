//! Slot directories in the scandir (SPEC §7): creating, updating in place, commanding.
//!
//! The scandir is root's tmpfs, not writable by `hermes`, so plain paths are safe here.
//! Invariants:
//! - a slot appears in the scan only complete: it is built under its dot-prefixed staging name
//!   (ignored by s6-svscan) and published with one `rename` that refuses to replace anything;
//! - a live slot directory is never replaced (s6 identifies services by inode): existing slots
//!   are changed file by file, each file replaced atomically;
//! - `supervise/` and `supervise/control` of the slot and of its logger exist with the rights of
//!   SPEC §9.1 before s6-supervise first starts, because it keeps whatever it finds: the group
//!   `$HERMES_RUN_AS` gets them; `event/` is s6-supervise's own, never the group's.

use crate::fsops::{self, Durability};
use crate::layout::slot::{DATA_DIR, DOWN_FILE, LOG_DIR, RECORD_FILE, SUPERVISE_CONTROL, SUPERVISE_DIR};
use crate::model::{ProfileName, SlotRecord};
use crate::plan::render::SlotFile;
use crate::s6::event::EVENT_MODE;
use crate::s6::{self, ControlError, SupervisorCommand};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat};
use nix::unistd::{Gid, UnlinkatFlags, fchown, getegid, geteuid, mkfifo, unlinkat};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, chown};
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

/// Whether an object just created with `mode` may lack some of its bits, so that a `chmod` must
/// set them: the umask clears permission bits, `mkdir` ignores set-group-ID, and set-user-ID or
/// set-group-ID on a file may be dropped. Skipping the `chmod` otherwise saves one system call
/// per object of a slot.
fn needs_chmod(mode: u32, dir: bool) -> bool {
    needs_chmod_under(mode, dir, fsops::umask())
}

/// [`needs_chmod`] under the umask `mask`.
fn needs_chmod_under(mode: u32, dir: bool, mask: u32) -> bool {
    let special = if dir { 0o2000 } else { 0o6000 };
    mode & 0o777 & mask != 0 || mode & special != 0
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
    if !content.is_empty() {
        f.write_all(content).map_err(io(path))?;
    }
    // The mode given to open is masked by the umask; scripts must be exactly what we say.
    if needs_chmod(mode, false) {
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    Ok(())
}

/// Replaces `path` atomically with exactly `mode` ([`fsops::replace`]). Not synced: the scandir
/// is rebuilt at every container start.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), SlotError> {
    fsops::replace(path, content, mode, Durability::Volatile).map_err(io(path))
}

/// Closes one `event/` directory (see [`crate::s6::event`]) and clears what others planted in it.
/// Returns how many entries were removed. A missing directory is left to s6-supervise (which
/// creates it root's); a symlink or anything but a directory in its place is an error.
///
/// Steps, each through descriptors that never follow a symlink:
/// 1. quarantine: owner and group become ours and the mode 0700, so from this moment nobody
///    else can add an entry (permission is checked at each creation, whatever they hold open);
/// 2. every entry except a FIFO with a single link is removed: subscribers' FIFOs are the only
///    thing s6 puts there, and a live subscriber (root's `s6-svwait`) must keep its own. A
///    symlink (root would write through it), a regular file (it fills the tmpfs), a directory, a
///    hard link to some other FIFO (another service's `supervise/control`: a `d` or `x` byte
///    there stops it) or a device is removed. A planted directory is made ours and 0700 before
///    it is deleted, so that its planter cannot keep filling it;
/// 3. s6's mode, [`EVENT_MODE`], is set last: a failure before it leaves the directory in
///    quarantine, which the next pass sees as not closed and finishes.
fn close_event_dir(ev: &Path) -> Result<usize, SlotError> {
    let e = |errno: nix::errno::Errno| io(ev)(errno.into());
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(ev, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(0),
        Err(errno) => return Err(e(errno)),
    };
    let (uid, gid) = (geteuid(), getegid());
    fchown(&fd, Some(uid), Some(gid)).map_err(e)?;
    fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(e)?;
    let mut dir = Dir::from_fd(fd).map_err(e)?;
    // A listing error stops here, in quarantine: nothing unseen may stay behind s6's mode.
    let names = dir
        .iter()
        .map(|entry| entry.map(|en| en.file_name().to_owned()))
        .collect::<Result<Vec<std::ffi::CString>, _>>()
        .map_err(e)?;
    let names = names.iter().filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..");
    let mut removed = 0;
    for name in names {
        let path = ev.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let st = match fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => continue, // a subscriber went away
            Err(errno) => return Err(io(&path)(errno.into())),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO && st.st_nlink == 1 {
            continue;
        }
        if kind == SFlag::S_IFDIR {
            let sub =
                openat(&dir, name.as_c_str(), dir_flags, Mode::empty()).map_err(|x| io(&path)(x.into()))?;
            fchown(&sub, Some(uid), Some(gid)).map_err(|x| io(&path)(x.into()))?;
            fchmod(&sub, Mode::from_bits_truncate(0o700)).map_err(|x| io(&path)(x.into()))?;
            drop(sub);
            fs::remove_dir_all(&path).map_err(io(&path))?;
        } else {
            match unlinkat(&dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(errno) => return Err(io(&path)(errno.into())),
            }
        }
        removed += 1;
    }
    fchmod(&dir, Mode::from_bits_truncate(EVENT_MODE)).map_err(e)?;
    Ok(removed)
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

    /// Creates the directory `path` with exactly `mode` (given the group when `group`). Inside
    /// a staging directory whose own mode was set exactly (so it passes on no set-group-ID),
    /// the `chmod` is needed only when [`needs_chmod`] says so.
    fn mkdir(&self, path: &Path, mode: u32, group: bool) -> Result<(), SlotError> {
        self.mkdir_in(path, mode, group, true)
    }

    fn mkdir_in(&self, path: &Path, mode: u32, group: bool, staged: bool) -> Result<(), SlotError> {
        fs::DirBuilder::new().mode(mode).create(path).map_err(io(path))?;
        if !staged || needs_chmod(mode, true) {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
        }
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

    /// Whether the scandir passes its set-group-ID bit on to the directories made in it (one
    /// `stat`; a pass asks once, see [`SlotWriter::create`]). An unreadable scandir is taken to.
    pub fn scandir_is_setgid(&self) -> bool {
        fs::metadata(&self.scandir).map_or(true, |m| std::os::unix::fs::MetadataExt::mode(&m) & 0o2000 != 0)
    }

    /// Builds the slot under its staging name and publishes it. Does not ask s6 to rescan:
    /// the caller batches that. `setgid_scandir`: what [`SlotWriter::scandir_is_setgid`] said
    /// in this pass.
    pub fn create(
        &self,
        name: &ProfileName,
        files: &[SlotFile],
        up: bool,
        record: &SlotRecord,
        setgid_scandir: bool,
    ) -> Result<(), SlotError> {
        let staging = self.scandir.join(name.staging_name());
        let target = self.slot_dir(name);
        // The staging directory's mode must be exact and carry no set-group-ID bit from the
        // scandir (its subdirectories then need no `chmod`): a `chmod` only when the umask or
        // the scandir's bit would spoil it.
        let exact = !setgid_scandir;
        let made = match self.mkdir_in(&staging, 0o755, false, exact) {
            // A leftover staging directory was never scanned (dot name): nothing runs in it.
            Err(SlotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                fs::remove_dir_all(&staging).map_err(io(&staging))?;
                self.mkdir_in(&staging, 0o755, false, exact)
            }
            other => other,
        };
        let built = made.and_then(|()| self.build(&staging, files, up, record));
        let published = built.and_then(|()| {
            fsops::rename_noreplace(&staging, &target).map_err(|e| {
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

    /// Fills the staging directory `dir` (made by the caller).
    fn build(&self, dir: &Path, files: &[SlotFile], up: bool, record: &SlotRecord) -> Result<(), SlotError> {
        self.mkdir(&dir.join(LOG_DIR), 0o755, false)?;
        self.mkdir(&dir.join(DATA_DIR), 0o755, false)?;
        for f in files {
            write_new(&dir.join(f.rel), f.content.as_bytes(), f.mode)?;
        }
        write_new(&dir.join(RECORD_FILE), &record_bytes(record), 0o644)?;
        if !up {
            write_new(&dir.join(DOWN_FILE), b"", 0o644)?;
        }
        self.supervise_skeleton(dir)?;
        self.supervise_skeleton(&dir.join(LOG_DIR))
    }

    /// Pre-creates what s6-supervise would otherwise create root-only, with the rights of
    /// SPEC §9.1, in a service directory (the slot, or its `log/`):
    /// - `supervise/` 0710 and the FIFO `supervise/control` 0660, group `$HERMES_RUN_AS`: the
    ///   group may send commands and read `supervise/status` (s6-supervise makes that 0644);
    ///
    /// `event/` is left to s6-supervise, which makes it 03730 with its own user and group
    /// (root:root in a container; measured on 2.11, 2.13.1 and 2.15.1) when it first starts:
    /// exactly SPEC §9.1's rights, and *not* the group's. s6-supervise writes one byte into
    /// every `event/ftrig1*` entry at each state change, opening it as root and following
    /// symlinks, so whoever may add entries there may make root write into any file. Until
    /// s6-supervise starts nobody else can make it: the slot directory is ours and 0755. Tools
    /// running as `hermes` therefore cannot subscribe (`s6-svwait`); they poll
    /// `supervise/status` instead.
    fn supervise_skeleton(&self, service: &Path) -> Result<(), SlotError> {
        let supervise = service.join(SUPERVISE_DIR);
        self.mkdir(&supervise, 0o710, true)?;
        let control = service.join(SUPERVISE_CONTROL);
        mkfifo(&control, Mode::from_bits_truncate(0o660)).map_err(|e| io(&control)(e.into()))?;
        if needs_chmod(0o660, false) {
            fs::set_permissions(&control, fs::Permissions::from_mode(0o660)).map_err(io(&control))?;
        }
        self.give_group(&control)
    }

    /// Closes the `event/` of the slot and of its logger (slots made by older builds had it
    /// group-writable by `$HERMES_RUN_AS`) and removes what was planted there; see
    /// [`close_event_dir`]. Returns how many entries were removed.
    pub fn close_event(&self, name: &ProfileName) -> Result<usize, SlotError> {
        let mut removed = 0;
        for ev in s6::event::event_dirs(&self.slot_dir(name)) {
            removed += close_event_dir(&ev)?;
        }
        Ok(removed)
    }

    /// Replaces the given files of a live slot, each atomically.
    pub fn write_files(&self, name: &ProfileName, files: &[SlotFile]) -> Result<(), SlotError> {
        let dir = self.slot_dir(name);
        for f in files {
            let path = dir.join(f.rel);
            if let Some(parent) = path.parent()
                && !parent.is_dir()
            {
                self.mkdir_in(parent, 0o755, false, false)?;
            }
            write_file(&path, f.content.as_bytes(), f.mode)?;
        }
        Ok(())
    }

    pub fn write_record(&self, name: &ProfileName, record: &SlotRecord) -> Result<(), SlotError> {
        let dir = self.slot_dir(name);
        let data = dir.join(DATA_DIR);
        if !data.is_dir() {
            self.mkdir_in(&data, 0o755, false, false)?;
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
                let down = dir.join(DOWN_FILE);
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
        for d in [dir.clone(), dir.join(LOG_DIR)] {
            // Unknown is an error for the caller to report: the leftover stays.
            match s6::supervisor(&d) {
                s6::Liveness::Absent => {}
                s6::Liveness::Alive(_) => return Ok(false),
                s6::Liveness::Unknown(e) => return Err(e.into()),
            }
        }
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn chmod_only_what_creation_gets_wrong() {
        // The usual umask: scripts, dirs, records and supervise/ come out exact; the control
        // FIFO loses its group write bit; mkdir drops event/'s set-group-ID.
        for (mode, dir) in [(0o755, false), (0o644, false), (0o755, true), (0o710, true)] {
            assert!(!needs_chmod_under(mode, dir, 0o022), "{mode:o}");
        }
        assert!(needs_chmod_under(0o660, false, 0o022));
        assert!(needs_chmod_under(EVENT_MODE, true, 0));
        assert!(needs_chmod_under(0o4755, false, 0));
        // A stricter umask: everything the group or others may use is set again.
        assert!(needs_chmod_under(0o755, true, 0o077));
        assert!(needs_chmod_under(0o644, false, 0o077));
        assert!(!needs_chmod_under(0o660, false, 0));
    }

    #[test]
    fn closing_event_keeps_single_link_fifos_and_removes_everything_else() {
        let t = tempfile::tempdir().unwrap();
        let ev = t.path().join("event");
        fs::create_dir(&ev).unwrap();
        // Writable by others, as an older build left it open to a group.
        fs::set_permissions(&ev, fs::Permissions::from_mode(0o3777)).unwrap();
        let outside = t.path().join("victim");
        fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, ev.join("ftrig1:@400000006b0ccbdc1f0a52a1:AAAAAA")).unwrap();
        fs::write(ev.join("ftrig1big"), vec![0u8; 4096]).unwrap();
        fs::create_dir_all(ev.join("ftrig1dir/deeper")).unwrap();
        fs::write(ev.join("ftrig1dir/deeper/x"), "x").unwrap();
        let other_fifo = t.path().join("control");
        mkfifo(&other_fifo, Mode::from_bits_truncate(0o600)).unwrap();
        fs::hard_link(&other_fifo, ev.join("ftrig1:@400000006b0ccbdc1f0a52a2:BBBBBB")).unwrap();
        let subscriber = ev.join("ftrig1:@400000006b0ccbdc1f0a52a3:CCCCCC");
        mkfifo(&subscriber, Mode::from_bits_truncate(0o600)).unwrap();

        assert_eq!(close_event_dir(&ev).unwrap(), 4);
        let left: Vec<_> = fs::read_dir(&ev).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![subscriber.file_name().unwrap().to_owned()]);
        assert!(fs::symlink_metadata(&subscriber).unwrap().file_type().is_fifo());
        let m = fs::symlink_metadata(&ev).unwrap();
        assert_eq!(m.mode() & 0o7777, EVENT_MODE);
        assert_eq!((m.uid(), m.gid()), (geteuid().as_raw(), getegid().as_raw()));
        assert!(crate::s6::event::is_closed(&ev, m.uid(), m.gid()));
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        assert!(other_fifo.exists(), "the hard link's other name stays");
        // Idempotent, and a missing directory is left to s6.
        assert_eq!(close_event_dir(&ev).unwrap(), 0);
        assert_eq!(close_event_dir(&t.path().join("missing")).unwrap(), 0);
        // A symlink in its place is refused, not followed.
        let link = t.path().join("event-link");
        std::os::unix::fs::symlink(&ev, &link).unwrap();
        assert!(close_event_dir(&link).is_err());
    }
}
