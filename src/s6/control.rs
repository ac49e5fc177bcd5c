//! Control FIFOs and the supervisor lock.
//!
//! s6-supervise reads one-byte commands from `<service>/supervise/control` and s6-svscan from
//! `<scandir>/.s6-svscan/control`; both are FIFOs that only the supervisor holds open for
//! reading. Writing the bytes ourselves is what `s6-svc`/`s6-svscanctl` do, without spawning a
//! process (~5 µs against ~350 µs).
//!
//! Invariants of every control write here:
//! - the open is write-only and non-blocking, so with no reader it fails at once with `ENXIO`
//!   (reported as [`ControlError::NoSupervisor`]) instead of blocking until a supervisor appears;
//! - the last path component is not followed if it is a symlink, and what was opened must be a
//!   FIFO (checked with `fstat` on the open descriptor, so nothing can be swapped in between):
//!   a command byte is never appended to a regular file or sent to a device;
//! - the whole command goes out in one `write(2)` of at most a few bytes (< `PIPE_BUF`), which
//!   the kernel makes atomic: the supervisor never sees half a command, and a full pipe fails
//!   with `EAGAIN` rather than writing part of it;
//! - the descriptor is close-on-exec and closed before returning, so no child ever inherits a
//!   writer that would keep the FIFO looking alive.

use crate::layout::slot::{SUPERVISE_CONTROL, SUPERVISE_LOCK};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

/// Control bytes of `supervise/control` that the daemon uses.
///
/// `Q` is deliberately absent: s6 2.15 ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorCommand {
    /// `U`: want up, and delete `./down`.
    UpPersist,
    /// `D`: want down, and create `./down`.
    DownPersist,
    /// `u`: want up (start now, restart when it dies); `./down` is left alone.
    Up,
    /// `d`: want down (SIGTERM then SIGCONT, no restart); `./down` is left alone.
    Down,
    /// `o`: start once if down, and do not restart it when it dies (clears want-up).
    Once,
    /// `t`: send SIGTERM to the service (it is restarted if wanted up).
    Term,
    /// `k`: send SIGKILL to the service, for one that ignores SIGTERM (it is restarted if
    /// wanted up; hide and prune the slot, or send `D` first, to keep it down).
    Kill,
    /// `x`: make s6-supervise exit once the service is down. s6-svscan starts a new supervisor
    /// at its next scan if the directory is still in the scandir.
    Exit,
}

impl SupervisorCommand {
    /// The byte s6-supervise understands for this command.
    pub const fn byte(self) -> u8 {
        match self {
            SupervisorCommand::UpPersist => b'U',
            SupervisorCommand::DownPersist => b'D',
            SupervisorCommand::Up => b'u',
            SupervisorCommand::Down => b'd',
            SupervisorCommand::Once => b'o',
            SupervisorCommand::Term => b't',
            SupervisorCommand::Kill => b'k',
            SupervisorCommand::Exit => b'x',
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no supervisor is listening on {0}")]
    NoSupervisor(std::path::PathBuf),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// Path of the control FIFO of a service directory.
pub fn control_path(service_dir: &Path) -> PathBuf {
    service_dir.join(SUPERVISE_CONTROL)
}

/// Path of s6-svscan's control FIFO in a scandir.
pub fn scanner_control_path(scandir: &Path) -> PathBuf {
    scandir.join(".s6-svscan").join("control")
}

/// Path of the lock s6-supervise holds for as long as it runs on a service directory.
pub fn lock_path(service_dir: &Path) -> PathBuf {
    service_dir.join(SUPERVISE_LOCK)
}

/// Writes one control byte into `<service_dir>/supervise/control` (write-only, non-blocking).
///
/// `Err(NoSupervisor)` when the FIFO does not exist (no supervisor ever ran there, or
/// `supervise/` is gone) or nobody reads it (the supervisor exited). Success means the byte is in
/// the pipe; s6-supervise acts on it asynchronously, so callers that need the effect must watch
/// `supervise/status` (or the `down` file, for `U`/`D`).
pub fn send_command(service_dir: &Path, cmd: SupervisorCommand) -> Result<(), ControlError> {
    write_control(&control_path(service_dir), &[cmd.byte()])
}

/// Asks s6-svscan to rescan (`a`) and, with `prune`, to prune services that are gone (`an`).
///
/// Both bytes go out in one write, so the scan and the prune are queued together. s6-svscan
/// scans only when asked (s6-overlay configures no periodic scan): a service renamed into the
/// scandir is not supervised until this is called, and a service renamed to a dot name keeps its
/// supervisor until a pruning rescan. `Err(NoSupervisor)` when s6-svscan is not running there.
pub fn rescan(scandir: &Path, prune: bool) -> Result<(), ControlError> {
    let bytes: &[u8] = if prune { b"an" } else { b"a" };
    write_control(&scanner_control_path(scandir), bytes)
}

fn write_control(path: &Path, bytes: &[u8]) -> Result<(), ControlError> {
    let io_err = |source: std::io::Error| ControlError::Io { path: path.to_path_buf(), source };
    // std always adds O_CLOEXEC.
    let mut fifo =
        match File::options().write(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENOENT)) => {
                return Err(ControlError::NoSupervisor(path.to_path_buf()));
            }
            Err(e) => return Err(io_err(e)),
        };
    if !fifo.metadata().map_err(io_err)?.file_type().is_fifo() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "control file is not a FIFO; refusing to write to it",
        )));
    }
    loop {
        match fifo.write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // Cannot happen for a write below PIPE_BUF to a pipe; reported rather than retried
            // so that a command is never sent twice.
            Ok(n) => {
                return Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes", bytes.len()),
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The reader went away between open and write.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                return Err(ControlError::NoSupervisor(path.to_path_buf()));
            }
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Pid of the s6-supervise holding `<service_dir>/supervise/lock`, if any. This is the one
/// answer to "is a supervisor present?" everywhere in the daemon (observing slots, confirming
/// publications, removals, clearing leftovers, `status`).
///
/// s6-supervise takes a POSIX (`fcntl`) write lock on the whole file, non-blocking, at start and
/// holds it until it exits; the kernel drops it when the process dies, however it dies. So
/// `Some` means a supervisor is alive on this directory *now*, and `None` means none is (the lock
/// file is missing, or no write lock is held). This is the test to wait on after hiding a
/// service and asking s6-svscan to prune: the directory may be deleted only once this is `None`.
///
/// Only a *write* lock counts (SPEC §9.1). The file is 0644, so anyone who reaches it (the group
/// `hermes`, through `supervise/` 0710) can take a *read* lock — not while the supervisor holds
/// its write lock, but the moment it exits — and a read lock counted as a supervisor would pin
/// a removal forever. So the query is `F_GETLK` with `l_type = F_RDLCK` ("could a read lock be
/// placed?"), which only a write lock conflicts with; read locks of others are not reported.
///
/// It is queried on a descriptor opened read-only, non-blocking, close-on-exec and without
/// following a symlink in the last component; taking no lock ourselves, it cannot disturb the
/// supervisor.
///
/// The pid is the kernel's translation into the caller's pid namespace. If the lock holder lives
/// in a pid namespace the caller cannot see (e.g. the caller runs in a child namespace of the
/// supervisor's), the kernel reports pid 0: this function then returns `Some(0)`, meaning "a
/// supervisor is alive, pid unknown" — never treat 0 as a pid to signal. A lock held by the
/// calling process itself is not reported (POSIX locks never conflict with their owner's).
pub fn supervisor_pid(service_dir: &Path) -> Result<Option<i32>, ControlError> {
    lock_holder(lock_path(service_dir))
}

/// Whether a supervisor is alive on a service directory: the one liveness query (issue 11
/// item 5). [`supervisor_pid`] answers it; this names its three outcomes so that each caller
/// says, where it asks, what a lock it cannot read means for it.
#[derive(Debug)]
pub enum Liveness {
    /// An s6-supervise holds the lock now; its pid in our namespace (0: not visible from here).
    Alive(i32),
    /// No supervisor: the lock file is missing or no write lock is held.
    Absent,
    /// The lock could not be queried (permissions, I/O error): the caller decides.
    Unknown(ControlError),
}

impl Liveness {
    /// Unknown counts as alive: for callers that must not act under a live supervisor
    /// (deleting, re-publishing, counting units against s6-svscan's limit).
    pub fn maybe_alive(&self) -> bool {
        !matches!(self, Liveness::Absent)
    }

    /// Unknown counts as absent: for display (`status` shows only what it knows).
    pub fn surely_alive(&self) -> bool {
        matches!(self, Liveness::Alive(_))
    }
}

/// The liveness of the supervisor of `service_dir` (see [`supervisor_pid`]).
pub fn supervisor(service_dir: &Path) -> Liveness {
    match supervisor_pid(service_dir) {
        Ok(Some(pid)) => Liveness::Alive(pid),
        Ok(None) => Liveness::Absent,
        Err(e) => Liveness::Unknown(e),
    }
}

/// Pid of the s6-svscan holding `<scandir>/.s6-svscan/lock`, if any (same rules as
/// [`supervisor_pid`]).
pub fn scanner_pid(scandir: &Path) -> Result<Option<i32>, ControlError> {
    lock_holder(scandir.join(".s6-svscan").join("lock"))
}

/// [`supervisor`] of the service directory `rel` under the directory `base` is open on
/// (the scandir, held for a pass): the lock is opened by its short relative path instead of
/// the absolute one, with the same flags. `base` is only ever a directory the caller opened
/// itself, so the last component is still never followed. (An absolute `rel` ignores `base`,
/// as `openat` does: pass `AT_FDCWD`.)
///
/// The lock file, when it could be opened, comes back with the answer: a caller that knows
/// the file is still the service's (nothing replaced `supervise/` since) may ask it again
/// with [`supervisor_by`], one `fcntl` instead of a path walk, an open and a close.
pub fn supervisor_in(base: std::os::fd::BorrowedFd<'_>, rel: &Path) -> (Liveness, Option<File>) {
    let lock = rel.join(SUPERVISE_LOCK);
    let flags = nix::fcntl::OFlag::O_RDONLY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_CLOEXEC;
    match nix::fcntl::openat(base, &lock, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => {
            let file = File::from(fd);
            (liveness(query_lock(&lock, Ok(&file))), Some(file))
        }
        Err(e) => (liveness(query_lock(&lock, Err(std::io::Error::from(e)))), None),
    }
}

/// [`supervisor`], asked through a lock file [`supervisor_in`] opened earlier.
pub fn supervisor_by(lock: &File) -> Liveness {
    liveness(query_lock(Path::new(SUPERVISE_LOCK), Ok(lock)))
}

fn liveness(r: Result<Option<i32>, ControlError>) -> Liveness {
    match r {
        Ok(Some(pid)) => Liveness::Alive(pid),
        Ok(None) => Liveness::Absent,
        Err(e) => Liveness::Unknown(e),
    }
}

fn lock_holder(path: PathBuf) -> Result<Option<i32>, ControlError> {
    match File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) {
        Ok(file) => query_lock(&path, Ok(&file)),
        Err(e) => query_lock(&path, Err(e)),
    }
}

/// The holder of a write lock on the opened lock file `path` (see [`supervisor_pid`]).
fn query_lock(path: &Path, opened: std::io::Result<&File>) -> Result<Option<i32>, ControlError> {
    let io_err = |source: std::io::Error| ControlError::Io { path: path.to_path_buf(), source };
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    // A read lock conflicts only with a write lock: readers (anyone may read-lock a 0644
    // file) are not reported.
    let mut query = libc::flock {
        l_type: libc::F_RDLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end of the file, however long: the whole file
        l_pid: 0,
    };
    fcntl(file.as_fd(), FcntlArg::F_GETLK(&mut query))
        .map_err(|errno| io_err(std::io::Error::from(errno)))?;
    if query.l_type == libc::F_UNLCK as libc::c_short { Ok(None) } else { Ok(Some(query.l_pid)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s6_command_bytes() {
        use SupervisorCommand::*;
        let all = [UpPersist, DownPersist, Up, Down, Once, Term, Kill, Exit];
        let bytes: Vec<u8> = all.iter().map(|c| c.byte()).collect();
        assert_eq!(bytes, b"UDudotkx");
        assert!(!bytes.contains(&b'Q'));
    }

    #[test]
    fn s6_paths() {
        let d = Path::new("/run/service/gateway-a");
        assert_eq!(control_path(d), Path::new("/run/service/gateway-a/supervise/control"));
        assert_eq!(lock_path(d), Path::new("/run/service/gateway-a/supervise/lock"));
        assert_eq!(
            scanner_control_path(Path::new("/run/service")),
            Path::new("/run/service/.s6-svscan/control")
        );
    }
}
