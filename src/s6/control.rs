//! Control FIFOs and the supervisor lock.

use std::path::Path;

/// Control bytes of `supervise/control` that the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorCommand {
    /// `U`: want up, and delete `./down`.
    UpPersist,
    /// `D`: want down, and create `./down`.
    DownPersist,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no supervisor is listening on {0}")]
    NoSupervisor(std::path::PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Writes one control byte into `<service_dir>/supervise/control` (write-only, non-blocking).
pub fn send_command(_service_dir: &Path, _cmd: SupervisorCommand) -> Result<(), ControlError> {
    todo!()
}

/// Asks s6-svscan to rescan (`a`) and, with `prune`, to prune services that are gone (`an`).
pub fn rescan(_scandir: &Path, _prune: bool) -> Result<(), ControlError> {
    todo!()
}

/// Pid of the s6-supervise holding `<service_dir>/supervise/lock`, if any.
pub fn supervisor_pid(_service_dir: &Path) -> Result<Option<i32>, ControlError> {
    todo!()
}
